//! The plan: every step expanded and keyed before anything runs. Keys
//! depend only on the Dockerfile, the build args, the context files and the
//! parent key, never on results, so all of them can be looked up at once.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_dockerfile::{AddSource, Checksum, Dockerfile, Instruction, Network, Scope, StageRef};
use strata_proto::Digest;
use strata_proto::v1::Provenance;

use super::NetworkPolicy;
use super::error::{BuildError, Site};
use crate::context::{BuildContext, CopyEntry, EntryKind, digest_entries};
use crate::image::RuntimeConfig;
use crate::key::{StepKey, step_key};

/// One step once planned: expanded, keyed, with the config it leaves.
pub(crate) struct Planned {
    pub site: Site,
    pub text: String,
    pub instruction: Instruction,
    pub key: StepKey,
    pub parent: Digest,
    pub config_before: RuntimeConfig,
    pub config_after: RuntimeConfig,
    /// The stage's base, pinned (`Base::name`, or `stage N`).
    pub base_image: String,
    pub args: BTreeMap<String, String>,
    /// For COPY and ADD from the context: the entries selected.
    pub copy: Option<Vec<CopyEntry>>,
    /// For `COPY --from`: the earlier stage or image it copies from.
    pub copy_from: Option<CopySource>,
    /// For `ADD <url> --checksum=…`: what to fetch into its one copy
    /// entry's host path when the step runs (never on a hit or dry run:
    /// the key pins the checksum, not the bytes of today's download).
    pub fetch: Option<UrlFetch>,
}

/// An `ADD` URL source and the checksum that pins it.
#[derive(Clone, Debug)]
pub(crate) struct UrlFetch {
    pub url: String,
    pub checksum: Checksum,
}

/// What a `COPY --from` copies from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopySource {
    /// An earlier stage, by index.
    Stage(usize),
    /// An image, by its index among the images the build's COPY steps name.
    Image(usize),
}

/// What a stage starts from, as the plan needs it: a key and a config.
pub(crate) struct PlanBase<'a> {
    pub key: Digest,
    pub config: &'a RuntimeConfig,
    /// The base, pinned, for provenance.
    pub name: &'a str,
}

/// The variables a step sees: the image's env over the ARGs in scope.
struct StepScope<'a> {
    config: &'a RuntimeConfig,
    args: &'a BTreeMap<String, String>,
}

impl Scope for StepScope<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.config
            .env_value(name)
            .or_else(|| self.args.get(name).map(String::as_str))
    }
}

/// Expands and keys every step; refuses a host-network step the user did
/// not allow. `globals` are the ARGs in scope before `FROM` (the platform
/// ones included): a bare `ARG NAME` in the stage takes its value from
/// there, as Docker's does.
///
/// `stage_keys[j]` is the final key of earlier stage `j`, if it is planned:
/// a `COPY --from` of it is keyed by that key. `copy_images` are the images
/// `COPY --from` names, with their base keys (pinned digests), keyed alike.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    df: &Dockerfile,
    stage: usize,
    context: &BuildContext,
    build_args: &[(String, String)],
    globals: &[(String, String)],
    network: NetworkPolicy,
    base: PlanBase<'_>,
    stage_keys: &[Option<Digest>],
    copy_images: &[(String, Digest)],
) -> Result<Vec<Planned>, BuildError> {
    let build_args_map: BTreeMap<String, String> = build_args.iter().cloned().collect();
    // In order, so a declared global shadows a platform ARG of its name.
    let globals: BTreeMap<String, String> = globals.iter().cloned().collect();
    let mut config = base.config.clone();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut parent = base.key;
    let mut planned = Vec::new();
    for step in &df.stages[stage].steps {
        let site = Site {
            file: df.file_name.clone(),
            line: step.line,
        };
        let instruction = df.expand_step(
            step,
            &StepScope {
                config: &config,
                args: &args,
            },
        )?;
        let instruction = apply_network_policy(instruction, network, &site)?;
        let copy_from = copy_source(df, stage, &instruction, stage_keys, copy_images, &site)?;
        let fetch = add_url(&instruction);
        let (copy, files) = match (copy_from, &fetch) {
            (Some((_, key)), _) => (
                None,
                Some(Digest::of(format!("copy-from {key}").as_bytes())),
            ),
            (None, Some(fetch)) => {
                let entry = url_entry(&instruction, fetch, context, &config)
                    .map_err(|e| site.error(format!("ADD {}: {e}", fetch.url)))?;
                let files = Digest::of(
                    format!(
                        "add-url {} dest {} mode {:o}",
                        fetch.checksum, entry.dest, entry.mode
                    )
                    .as_bytes(),
                );
                (Some(vec![entry]), Some(files))
            }
            (None, None) => {
                let copy = select_copy_sources(&instruction, context, &config, &site)?;
                let files = copy
                    .as_deref()
                    .map(digest_entries)
                    .transpose()
                    .map_err(|e| site.error(format!("{}: {e}", instruction_name(&instruction))))?;
                (copy, files)
            }
        };
        let key = step_key(
            &parent,
            &instruction,
            &config,
            &args_in_scope(&args),
            files.as_ref(),
        );
        let config_before = config.clone();
        config.apply(&instruction);
        if let Instruction::Arg(decls) = &instruction {
            for a in decls {
                let value = build_args_map
                    .get(&a.name)
                    .cloned()
                    .or_else(|| a.default.clone())
                    .or_else(|| globals.get(&a.name).cloned());
                if let Some(v) = value {
                    args.insert(a.name.clone(), v);
                }
            }
        }
        let next_parent = key.digest;
        planned.push(Planned {
            site,
            text: step.source_text.clone(),
            parent,
            key,
            config_before,
            config_after: config.clone(),
            base_image: base.name.to_owned(),
            args: args.clone(),
            instruction,
            copy,
            copy_from: copy_from.map(|(source, _)| source),
            fetch,
        });
        parent = next_parent;
    }
    Ok(planned)
}

/// What a `COPY --from` names, with its key: an earlier stage's final key,
/// or an image's base key (its pinned digest).
fn copy_source(
    df: &Dockerfile,
    stage: usize,
    instruction: &Instruction,
    stage_keys: &[Option<Digest>],
    copy_images: &[(String, Digest)],
    site: &Site,
) -> Result<Option<(CopySource, Digest)>, BuildError> {
    let Instruction::Copy {
        from: Some(from), ..
    } = instruction
    else {
        return Ok(None);
    };
    let Some(StageRef(index)) = df.copy_source_stage(from, stage) else {
        return match copy_images.iter().position(|(name, _)| name == from) {
            Some(k) => Ok(Some((CopySource::Image(k), copy_images[k].1))),
            None => Err(site.error(match df.copy_source(from, stage) {
                Err(message) => message,
                Ok(_) => format!(
                    "COPY --from={from}: an image named through an ARG set inside a stage is \
                     not supported; declare the ARG before the first FROM"
                ),
            })),
        };
    };
    match stage_keys.get(index).copied().flatten() {
        Some(key) => Ok(Some((CopySource::Stage(index), key))),
        None => Err(site.error(format!(
            "COPY --from={from}: stage {index} was not planned (a stage named through an ARG set inside a stage is not supported)"
        ))),
    }
}

fn instruction_name(instruction: &Instruction) -> &'static str {
    match instruction {
        Instruction::Add { .. } => "ADD",
        _ => "COPY",
    }
}

/// Network is opt-in twice: the Dockerfile asks and the user allows, or
/// the user gives every step the host's (then the instruction says so, and
/// so its key and provenance do).
fn apply_network_policy(
    instruction: Instruction,
    policy: NetworkPolicy,
    site: &Site,
) -> Result<Instruction, BuildError> {
    match (instruction, policy) {
        (Instruction::Run { command, .. }, NetworkPolicy::AllHost) => Ok(Instruction::Run {
            command,
            network: Network::Host,
        }),
        (
            Instruction::Run {
                network: Network::Host,
                ..
            },
            NetworkPolicy::Hermetic,
        ) => Err(site.error(
            "RUN --network=host needs --allow-host-network (or strata build --network=host): \
             the step would not be hermetic",
        )),
        (instruction, _) => Ok(instruction),
    }
}

/// An `ADD` of a URL (the parser allows one, with its checksum).
fn add_url(instruction: &Instruction) -> Option<UrlFetch> {
    let Instruction::Add {
        sources,
        checksum: Some(checksum),
        ..
    } = instruction
    else {
        return None;
    };
    match sources.as_slice() {
        [AddSource::Url(url)] => Some(UrlFetch {
            url: url.clone(),
            checksum: checksum.clone(),
        }),
        _ => None,
    }
}

/// Where an `ADD <url>` puts its file: `dest/NAME` for a directory
/// destination (NAME the URL path's last segment), else `dest`; mode 0600
/// unless `--chmod`, as Docker's. Never unpacked, as Docker's URL sources
/// are not.
fn url_entry(
    instruction: &Instruction,
    fetch: &UrlFetch,
    context: &BuildContext,
    config: &RuntimeConfig,
) -> Result<CopyEntry, String> {
    let Instruction::Add { dest, chmod, .. } = instruction else {
        return Err("not an ADD".to_owned());
    };
    let path = fetch
        .url
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .splitn(4, '/')
        .nth(3)
        .unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    let into_dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
    let name = match name {
        "" | "." | ".." if into_dir => {
            return Err(
                "the URL names no file; give the destination as a file path (no trailing /)"
                    .to_owned(),
            );
        }
        "" | "." | ".." => "download",
        name => name,
    };
    let dest_abs = crate::image::resolve_path(config.cwd(), dest);
    let dest = if into_dir {
        crate::image::resolve_path(&dest_abs, name)
    } else {
        dest_abs
    };
    let host = context
        .download_path(fetch.checksum.sha256_hex(), name)
        .map_err(|e| e.to_string())?;
    Ok(CopyEntry {
        host,
        dest,
        kind: EntryKind::File,
        mode: chmod.unwrap_or(0o600),
        into_existing_dir: !into_dir,
        named: false,
    })
}

/// The context entries a COPY or ADD takes (`None` for other steps).
fn select_copy_sources(
    instruction: &Instruction,
    context: &BuildContext,
    config: &RuntimeConfig,
    site: &Site,
) -> Result<Option<Vec<CopyEntry>>, BuildError> {
    let (name, sources, dest, chmod) = match instruction {
        Instruction::Copy {
            dest,
            chmod,
            heredocs,
            ..
        } if !heredocs.is_empty() => {
            return context
                .select_inline(heredocs, dest, config.cwd(), *chmod)
                .map(Some)
                .map_err(|e| site.error(format!("COPY: {e}")));
        }
        Instruction::Copy {
            sources,
            dest,
            chmod,
            ..
        } => ("COPY", sources.clone(), dest, chmod),
        Instruction::Add {
            sources,
            dest,
            chmod,
            ..
        } => {
            let mut paths = Vec::new();
            for s in sources {
                match s {
                    AddSource::Path(p) => paths.push(p.clone()),
                    // With its checksum, the parser's only form: `add_url`.
                    AddSource::Url(u) => {
                        return Err(site.error(format!(
                            "ADD {u}: a URL source needs --checksum=sha256:<hex> and no other source"
                        )));
                    }
                }
            }
            ("ADD", paths, dest, chmod)
        }
        _ => return Ok(None),
    };
    context
        .select(&sources, dest, config.cwd(), *chmod)
        .map(Some)
        .map_err(|e| site.error(format!("{name}: {e}")))
}

fn args_in_scope(args: &BTreeMap<String, String>) -> Vec<(String, String)> {
    args.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// What made a step's result: recorded with it, so a reader can decide
/// whether to trust it and a miss can be explained.
pub(crate) fn provenance(s: &Planned, took: Duration, sandbox: String) -> Provenance {
    let network = match s.instruction {
        Instruction::Run {
            network: Network::Host,
            ..
        } => "host",
        _ => "none",
    };
    Provenance {
        builder: concat!("strata ", env!("CARGO_PKG_VERSION")).into(),
        instruction: s.text.clone(),
        parent_key: s.parent.to_vec(),
        network: network.into(),
        hermetic: network == "none",
        key_inputs: s.key.inputs.clone(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        duration_seconds: took.as_secs_f64(),
        sandbox,
        base_image: s.base_image.clone(),
    }
}
