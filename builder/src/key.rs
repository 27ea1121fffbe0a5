//! Step keys: BLAKE3 over a versioned, canonical text of everything a
//! step's result depends on — the parent step's key, the instruction, the
//! environment and build args in scope, workdir, user, platform, network
//! mode and, for COPY/ADD, the digest of the selected files.
//!
//! The text is kept (it goes into the step's provenance as `key_inputs`),
//! so "why did this step miss?" has an answer: diff the two texts. Nothing
//! host-specific enters it: no paths on the host, no mtimes, no host ids.

use std::fmt::Write;

use strata_proto::Digest;

use crate::image::{RuntimeConfig, platform};
use strata_dockerfile::{Command, Instruction, Network};

/// Bumped whenever the encoding below or the meaning of a step's result
/// changes: old cache entries then simply stop matching.
/// v2: COPY of a file onto an existing image directory lands inside it, and
/// WORKDIR creates its directory.
pub const KEY_VERSION: &str = "strata-step-key-v2";

/// A step key and the text it hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepKey {
    pub digest: Digest,
    pub inputs: String,
}

/// What identifies the image a build starts from.
pub fn base_key(base_identity: &str) -> StepKey {
    let inputs = format!("{KEY_VERSION}\nbase {base_identity}\n");
    StepKey {
        digest: Digest::of(inputs.as_bytes()),
        inputs,
    }
}

/// The key of one step.
///
/// `config` is the runtime config before the step, `build_args` the ARG
/// values in scope (sorted by name), `files` the digest of COPY/ADD
/// sources. `instruction` is the expanded instruction.
pub fn step_key(
    parent: &Digest,
    instruction: &Instruction,
    config: &RuntimeConfig,
    build_args: &[(String, String)],
    files: Option<&Digest>,
) -> StepKey {
    let (os, arch) = platform();
    let mut t = String::new();
    let _ = writeln!(t, "{KEY_VERSION}");
    let _ = writeln!(t, "parent {parent}");
    let _ = writeln!(t, "platform {os}/{arch}");
    let _ = writeln!(t, "instruction {}", canonical_instruction(instruction));
    if let Some(f) = files {
        let _ = writeln!(t, "files {f}");
    }
    for e in &config.env {
        let _ = writeln!(t, "env {}", quote(e));
    }
    for (k, v) in build_args {
        let _ = writeln!(t, "arg {}", quote(&format!("{k}={v}")));
    }
    let _ = writeln!(t, "workdir {}", quote(config.cwd()));
    // The shell a shell-form RUN runs under changes what it does.
    if !config.shell.is_empty() {
        let _ = writeln!(
            t,
            "shell {}",
            serde_json::to_string(&config.shell).unwrap_or_default()
        );
    }
    let _ = writeln!(t, "user {}", quote(&config.user));
    if let Instruction::Run { network, .. } = instruction {
        let _ = writeln!(
            t,
            "network {}",
            match network {
                Network::None => "none",
                Network::Host => "host",
            }
        );
    }
    StepKey {
        digest: Digest::of(t.as_bytes()),
        inputs: t,
    }
}

/// JSON string quoting: unambiguous whatever the value holds.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn command(c: &Command) -> String {
    match c {
        Command::Exec(argv) => format!("exec {}", serde_json::to_string(argv).unwrap_or_default()),
        Command::Shell(s) => format!("shell {}", quote(s)),
    }
}

fn pairs(kv: &[strata_dockerfile::KeyValue]) -> String {
    kv.iter()
        .map(|p| quote(&format!("{}={}", p.key, p.value)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line per instruction, every field in a fixed order.
fn canonical_instruction(i: &Instruction) -> String {
    let opt = |o: &Option<String>| o.as_deref().map_or("-".to_string(), quote);
    let mode = |m: &Option<u32>| m.map_or("-".to_string(), |m| format!("{m:o}"));
    match i {
        Instruction::Run { command: c, .. } => format!("RUN {}", command(c)),
        // `--from` enters the key as the source stage's key (the `files`
        // line), not as its name: renaming a stage moves no key.
        Instruction::Copy {
            sources,
            dest,
            chown,
            chmod,
            from: _,
            heredocs,
        } => {
            // The heredocs' contents enter through the `files` digest.
            let inline = if heredocs.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = heredocs.iter().map(|h| h.name.as_str()).collect();
                format!(
                    " heredocs={}",
                    serde_json::to_string(&names).unwrap_or_default()
                )
            };
            format!(
                "COPY sources={} dest={} chown={} chmod={}{inline}",
                serde_json::to_string(sources).unwrap_or_default(),
                quote(dest),
                opt(chown),
                mode(chmod)
            )
        }
        Instruction::Add {
            sources,
            dest,
            chown,
            chmod,
            checksum,
        } => format!(
            "ADD sources={} dest={} chown={} chmod={} checksum={}",
            serde_json::to_string(&sources.iter().map(|s| s.as_str()).collect::<Vec<_>>())
                .unwrap_or_default(),
            quote(dest),
            opt(chown),
            mode(chmod),
            checksum.as_ref().map_or("-".into(), |c| c.to_string())
        ),
        Instruction::Env(kv) => format!("ENV {}", pairs(kv)),
        Instruction::Label(kv) => format!("LABEL {}", pairs(kv)),
        Instruction::Arg(args) => format!(
            "ARG {}",
            args.iter()
                .map(|a| quote(&a.name))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Instruction::Workdir(d) => format!("WORKDIR {}", quote(d)),
        Instruction::User(u) => format!("USER {}", quote(u)),
        Instruction::Cmd(c) => format!("CMD {}", command(c)),
        Instruction::Entrypoint(c) => format!("ENTRYPOINT {}", command(c)),
        Instruction::Expose(p) => format!("EXPOSE {}", p.join(" ")),
        Instruction::Shell(argv) => {
            format!("SHELL {}", serde_json::to_string(argv).unwrap_or_default())
        }
        Instruction::Volume(paths) => format!(
            "VOLUME {}",
            serde_json::to_string(paths).unwrap_or_default()
        ),
        Instruction::StopSignal(signal) => format!("STOPSIGNAL {}", quote(signal)),
        Instruction::Maintainer(name) => format!("MAINTAINER {}", quote(name)),
        Instruction::Healthcheck(check) => format!(
            "HEALTHCHECK command={} interval={} timeout={} start-period={} start-interval={} retries={}",
            check.command.as_ref().map_or("NONE".into(), command),
            check.interval_ns,
            check.timeout_ns,
            check.start_period_ns,
            check.start_interval_ns,
            check.retries
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: &str) -> Instruction {
        Instruction::Run {
            command: Command::Shell(cmd.into()),
            network: Network::None,
        }
    }

    #[test]
    fn every_input_changes_the_key() {
        let parent = base_key("scratch").digest;
        let config = RuntimeConfig::default();
        let k = step_key(&parent, &run("make"), &config, &[], None);
        assert_eq!(k, step_key(&parent, &run("make"), &config, &[], None));

        let other_parent = base_key("oci sha256:00").digest;
        assert_ne!(
            k.digest,
            step_key(&other_parent, &run("make"), &config, &[], None).digest
        );
        assert_ne!(
            k.digest,
            step_key(&parent, &run("make all"), &config, &[], None).digest
        );
        let mut env = config.clone();
        env.set_env("CC", "clang");
        assert_ne!(
            k.digest,
            step_key(&parent, &run("make"), &env, &[], None).digest
        );
        let args = [("V".to_string(), "1".to_string())];
        assert_ne!(
            k.digest,
            step_key(&parent, &run("make"), &config, &args, None).digest
        );
        let mut wd = config.clone();
        wd.workdir = "/src".into();
        assert_ne!(
            k.digest,
            step_key(&parent, &run("make"), &wd, &[], None).digest
        );
        let host = Instruction::Run {
            command: Command::Shell("make".into()),
            network: Network::Host,
        };
        assert_ne!(
            k.digest,
            step_key(&parent, &host, &config, &[], None).digest
        );
        let files = Digest::of(b"files");
        assert_ne!(
            k.digest,
            step_key(&parent, &run("make"), &config, &[], Some(&files)).digest
        );
    }

    #[test]
    fn the_key_text_names_its_inputs_without_host_paths() {
        let k = step_key(
            &base_key("scratch").digest,
            &run("echo \"hi\""),
            &RuntimeConfig::default(),
            &[],
            None,
        );
        assert!(k.inputs.starts_with(KEY_VERSION));
        assert!(
            k.inputs.contains(r#"instruction RUN shell "echo \"hi\"""#),
            "{}",
            k.inputs
        );
        assert!(k.inputs.contains("network none"));
    }

    /// Known answer: the key text written out by hand and its address
    /// computed by `b3sum`. A failure means every cached step of every
    /// user has moved: bump `KEY_VERSION` on purpose instead.
    #[test]
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn one_step_key_is_pinned() {
        let base = base_key("scratch");
        assert_eq!(base.inputs, "strata-step-key-v2\nbase scratch\n");
        assert_eq!(
            base.digest.to_string(),
            "b3:604817a166195a4ceaea751ab6a1bb7b119f1c37f9d7334231c73376fed14b9e"
        );
        let k = step_key(
            &base.digest,
            &run("echo \"hi\""),
            &RuntimeConfig::default(),
            &[],
            None,
        );
        assert_eq!(
            k.inputs,
            concat!(
                "strata-step-key-v2\n",
                "parent b3:604817a166195a4ceaea751ab6a1bb7b119f1c37f9d7334231c73376fed14b9e\n",
                "platform linux/amd64\n",
                "instruction RUN shell \"echo \\\"hi\\\"\"\n",
                "workdir \"/\"\n",
                "user \"\"\n",
                "network none\n"
            )
        );
        assert_eq!(
            k.digest.to_string(),
            "b3:babbc625be57a93daa08af45d5de3346fd87f8f2445b57d54254b3f8170537d6"
        );
    }
}
