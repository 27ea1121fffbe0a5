//! Which stages a build needs: the target and, transitively, the stages it
//! names in `FROM` or `COPY --from`. Stages nothing needs are not planned,
//! looked up or run, so an unused stage that would fail cannot fail the
//! build (as BuildKit behaves).

use std::collections::BTreeSet;

use strata_dockerfile::{Dockerfile, Instruction, StageRef, expand};

/// The stages `target` needs, itself included, in file order.
///
/// Stage references are read with the global ARGs in scope; a `--from`
/// that names its stage through an ARG set inside a stage is found only if
/// the globals already give it that value (the plan then says so).
pub(crate) fn needed_stages(
    df: &Dockerfile,
    target: usize,
    globals: &[(String, String)],
) -> Vec<usize> {
    let globals = globals.to_vec();
    let mut needed = BTreeSet::new();
    let mut pending = vec![target];
    while let Some(stage) = pending.pop() {
        if !needed.insert(stage) {
            continue;
        }
        let from = &df.stages[stage].from.image;
        if let Ok(name) = expand(from, df.escape, &globals)
            && let Some(StageRef(j)) = df.stage_named(&name, stage)
        {
            pending.push(j);
        }
        for step in &df.stages[stage].steps {
            if let Instruction::Copy {
                from: Some(reference),
                ..
            } = &step.instruction
                && let Ok(name) = expand(reference, df.escape, &globals)
                && let Some(StageRef(j)) = df.copy_source_stage(&name, stage)
            {
                pending.push(j);
            }
        }
    }
    needed.into_iter().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_stages_the_target_reaches_are_needed() {
        let df = strata_dockerfile::parse(
            "Dockerfile",
            "ARG FROM_STAGE=deps\nFROM scratch AS deps\nRUN a\nFROM scratch AS unused\nRUN exit 3\n\
             FROM deps AS build\nRUN b\nFROM scratch AS tools\nFROM scratch\n\
             COPY --from=build /x /x\nCOPY --from=${FROM_STAGE} /y /y\n",
        )
        .unwrap();
        assert_eq!(needed_stages(&df, 4, &[]), vec![0, 2, 4]);
        assert_eq!(needed_stages(&df, 3, &[]), vec![3]);
        assert_eq!(needed_stages(&df, 2, &[]), vec![0, 2]);
        assert_eq!(needed_stages(&df, 1, &[]), vec![1]);
    }
}
