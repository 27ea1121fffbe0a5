//! `strata build`: Dockerfile and context in, OCI image out, asking the
//! cache before running anything.
//!
//! 1. Parse the Dockerfile; resolve the base image.
//! 2. Key every step up front: keys depend only on the Dockerfile, the
//!    build args, the context files and the parent key, never on results.
//! 3. Look all keys up in one batched round trip.
//! 4. Walk the steps. A hit takes the recorded result: no run, and no layer
//!    download unless a later step that must run needs the file system. A
//!    miss runs (RUN in the sandbox, COPY from the context), snapshots its
//!    changes as a deterministic layer, stores it, and records the result
//!    with its provenance.
//! 5. Choose each layer's blob: a base layer keeps its own; a layer this
//!    build made is compressed once, its blob kept in the cache by content
//!    (`compressed.rs`), so a cached rebuild compresses nothing.
//! 6. Write the image: its config and manifest are computed from layer
//!    digests alone; layer bytes move only into an output directory or
//!    registry that lacks them.
//!
//! The working root filesystem (the image state a RUN step starts from) is
//! materialised lazily, in a temporary directory, and removed at the end.

mod archive;
mod base;
mod compressed;
mod copy;
mod error;
mod output;
mod plan;
mod pull_through;
mod run_step;
mod runner;
mod stages;
mod stored;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use strata_client::{Client, ClientError, Distrust, StepLookup};
use strata_dockerfile::ImageRef;
use strata_proto::{Digest, StepResult};
use strata_sandbox::Stream;

pub use error::BuildError;
pub use output::OutputTarget;
pub use stored::MEDIA_TYPE_STORED_IMAGE;

use crate::context::BuildContext;
use crate::image::{
    Compression, HistoryEntry, LayerRef, RuntimeConfig, encode_image, platform_args,
};
use base::{Base, BuiltLayer, resolve_image};
use error::Site;
use plan::{CopySource, PlanBase, Planned, plan, provenance};
use pull_through::Registries;
use runner::Runner;
use stages::needed_stages;
use strata_dockerfile::{BaseImage, StageRef};

/// What to build and how.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub dockerfile: PathBuf,
    pub context: PathBuf,
    pub build_args: Vec<(String, String)>,
    /// `--output oci:DIR[:TAG]` or `--output registry://REPO[:TAG]`.
    pub output: Option<OutputTarget>,
    /// `--tag NAME[:TAG]`: keep the image in the store under this name.
    pub tag: Option<ImageRef>,
    /// Memory, process and CPU limits of each RUN step.
    pub limits: strata_sandbox::Limits,
    /// `--target STAGE`: the stage to build (name or number; default the
    /// last). Only the stages it needs are built.
    pub target: Option<String>,
    /// Plan only: compute keys, look them up, run and write nothing.
    pub dry_run: bool,
    /// mtime of every layer entry (SOURCE_DATE_EPOCH, else 0).
    pub epoch: u64,
    /// The image's `created` and its steps' history times, seconds since
    /// the epoch (see [`crate::source_date`]).
    pub created: u64,
    /// How the layers this build makes are compressed in the image (base
    /// layers keep their blobs).
    pub compression: Compression,
    /// Time limit of one RUN step.
    pub step_timeout: Option<Duration>,
    /// Which networks RUN steps may have.
    pub network: NetworkPolicy,
    /// Where working file systems are made (a temporary directory inside).
    pub scratch: PathBuf,
    /// How to reach registries for `FROM` images not kept in the cache.
    pub registry: strata_registry::RegistryOptions,
    /// The executable that serves as sandbox stage (None: this one).
    pub sandbox_helper: Option<PathBuf>,
}

/// Which networks the build's RUN steps may have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkPolicy {
    /// None at all: a `RUN --network=host` is refused (the default).
    #[default]
    Hermetic,
    /// `RUN --network=host` steps get the host's (`--allow-host-network`).
    AllowHost,
    /// Every RUN step gets the host's (`strata build --network=host`, as
    /// Docker's flag): each is keyed and recorded as non-hermetic.
    AllHost,
}

/// How a step was satisfied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Cached,
    Executed,
    /// `--dry-run`: a miss that a real build would run.
    WouldRun,
}

/// One step of the report.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub index: usize,
    pub line: usize,
    pub instruction: String,
    pub key: String,
    pub status: StepStatus,
    pub seconds: f64,
    /// Size of the step's layer tar, if it has one.
    pub layer_bytes: Option<u64>,
    pub uploaded_bytes: u64,
    pub downloaded_bytes: u64,
    /// For an executed RUN or COPY: seconds spent turning its changes into
    /// a stored layer (diff, layer tar, push) — the step's time less the
    /// command's own.
    pub snapshot_seconds: Option<f64>,
    /// A result was recorded under the step's key, but not by a trusted
    /// signer (or its signature does not verify): the step ran (or would
    /// run) instead of taking it.
    pub untrusted: Option<UntrustedResult>,
}

/// A cached result this build would not use, and why.
#[derive(Clone, Debug, Serialize)]
pub struct UntrustedResult {
    /// The signer it names (`ed25519:…`), if any.
    pub signer: Option<String>,
    pub reason: String,
}

impl From<&Distrust> for UntrustedResult {
    fn from(d: &Distrust) -> Self {
        UntrustedResult {
            signer: d.signer().map(|k| k.to_string()),
            reason: d.to_string(),
        }
    }
}

/// What a build did.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    /// `sha256:…` of the image manifest (none for a dry run).
    pub manifest_digest: Option<String>,
    pub steps: Vec<StepReport>,
    pub seconds: f64,
    pub uploaded_bytes: u64,
    pub downloaded_bytes: u64,
    /// Layer bytes written into the output directory, or uploaded to the
    /// output registry (blobs it already held are not sent).
    pub output_bytes: u64,
    /// `REGISTRY/REPO@sha256:…`: the image pushed by `--output registry://`.
    pub pushed: Option<String>,
    /// Base-image blob bytes fetched from registries (layers the cache
    /// already held are taken from it instead).
    pub registry_bytes: u64,
    /// Each stage's base image, pinned (see `Event::Base`), in build order.
    pub base_images: Vec<String>,
    /// Layers this build compressed (a layer is compressed once and its
    /// blob kept in the cache, so a cached rebuild compresses none).
    pub compressed_layers: usize,
    /// Things the user should know that did not fail the build (a token
    /// without `result-write`, say), each said once.
    pub notes: Vec<String>,
}

/// Progress events, for the CLI to show as it likes.
#[derive(Debug)]
pub enum Event<'a> {
    StepStarted {
        index: usize,
        total: usize,
        text: &'a str,
    },
    StepFinished(&'a StepReport),
    Output(Stream, &'a [u8]),
    /// Something that does not fail the build, said once.
    Note(&'a str),
    /// A `FROM` image resolved: as written, and pinned (a registry image by
    /// its manifest digest).
    Base {
        image: &'a str,
        pinned: &'a str,
    },
}

/// Most keys in one lookup request (well under the server's limit).
const LOOKUP_BATCH: usize = 4096;

/// Runs a build (or, with `dry_run`, plans it).
pub async fn build(
    client: &Client,
    opts: &BuildOptions,
    events: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&opts.dockerfile).map_err(BuildError::io(format!(
        "reading {}",
        opts.dockerfile.display()
    )))?;
    let file_name = opts.dockerfile.display().to_string();
    let df = strata_dockerfile::parse(&file_name, &text)?;
    let mut notes = Vec::new();
    for directive in &df.ignored_directives {
        let note = format!(
            "{file_name}: `# {directive}` is ignored: Strata reads Dockerfiles itself (no \
             BuildKit frontend or lint rules)"
        );
        events(Event::Note(&note));
        notes.push(note);
    }
    let context = BuildContext::open(&opts.context)?;
    let target = df
        .target_stage(opts.target.as_deref())
        .map_err(BuildError::Usage)?;
    // Declared global ARGs shadow the platform ones (the last match wins).
    let globals = [platform_args(), df.global_scope(&opts.build_args)?].concat();
    let needed = needed_stages(&df, target, &globals);

    // Plan every needed stage; an image base is resolved once.
    let registries = Registries::new(opts.registry.clone());
    let mut base_images = Vec::new();
    let mut copy_images: Vec<(String, Base)> = Vec::new();
    let mut stages: Vec<Option<StagePlan>> = (0..df.stages.len()).map(|_| None).collect();
    for &index in &needed {
        let stage_keys: Vec<Option<Digest>> = stages
            .iter()
            .map(|p| p.as_ref().map(StagePlan::final_key))
            .collect();
        if let Some(platform) = df.base_platform(index, &globals)? {
            let site = Site {
                file: df.file_name.clone(),
                line: df.stages[index].from.line,
            };
            check_platform(&platform).map_err(|message| site.error(message))?;
        }
        let base = match df.base_image(index, &globals)? {
            BaseImage::Stage(StageRef(j)) => StageBase::Stage(j),
            image => {
                let site = Site {
                    file: df.file_name.clone(),
                    line: df.stages[index].from.line,
                };
                let base =
                    resolve_announced(client, &registries, site, image, opts.dry_run, events)
                        .await?;
                base_images.push(base.name.clone());
                StageBase::Image(Box::new(base))
            }
        };
        // Images a COPY --from names, each resolved once.
        for (name, site) in copy_images_named(&df, index, &globals)? {
            if !copy_images.iter().any(|(known, _)| *known == name) {
                let image = BaseImage::Named(
                    ImageRef::parse(&name).map_err(|e| site.error(e.to_string()))?,
                );
                let base =
                    resolve_announced(client, &registries, site, image, opts.dry_run, events)
                        .await?;
                copy_images.push((name, base));
            }
        }
        let copy_image_keys: Vec<(String, Digest)> = copy_images
            .iter()
            .map(|(name, base)| (name.clone(), base.key.digest))
            .collect();
        let (base_key, base_config, base_name) = match &base {
            StageBase::Image(b) => (b.key.digest, b.config.clone(), b.name.clone()),
            // needed_stages lists a stage after those it names.
            StageBase::Stage(j) => match &stages[*j] {
                Some(earlier) => (
                    earlier.final_key(),
                    earlier.final_config().clone(),
                    format!("stage {j}"),
                ),
                None => {
                    return Err(BuildError::Usage(format!(
                        "stage {index} builds on stage {j}, which was not planned"
                    )));
                }
            },
        };
        let steps = plan(
            &df,
            index,
            &context,
            &opts.build_args,
            &globals,
            opts.network,
            PlanBase {
                key: base_key,
                config: &base_config,
                name: &base_name,
            },
            &stage_keys,
            &copy_image_keys,
        )?;
        stages[index] = Some(StagePlan {
            base,
            base_key,
            base_config,
            steps,
        });
    }
    let order: Vec<&StagePlan> = needed.iter().filter_map(|&i| stages[i].as_ref()).collect();
    let all_steps: Vec<&Planned> = order.iter().flat_map(|p| p.steps.iter()).collect();
    let mut hits = look_up(client, &all_steps).await?.into_iter();
    // Results are recorded only with a key to sign them: without one, the
    // build still builds and shares layers.
    let mut recording = client.trust().signing_key().is_some();
    if !recording && !opts.dry_run {
        notes.push(
            "step results are not recorded: no signing key (`--signing-key FILE`, \
             `STRATA_SIGNING_KEY`); this build stores layers but leaves no cache hits"
                .to_string(),
        );
    }

    let mut report = BuildReport {
        manifest_digest: None,
        steps: Vec::new(),
        seconds: 0.0,
        uploaded_bytes: 0,
        downloaded_bytes: 0,
        output_bytes: 0,
        pushed: None,
        registry_bytes: 0,
        base_images,
        compressed_layers: 0,
        notes,
    };
    if opts.dry_run {
        for (i, (s, hit)) in all_steps.iter().zip(hits).enumerate() {
            let status = if matches!(hit, StepLookup::Hit(_)) {
                StepStatus::Cached
            } else {
                StepStatus::WouldRun
            };
            let mut r = StepReport::new(i, s, status);
            if let StepLookup::Untrusted(d) = &hit {
                r.untrusted = Some(d.into());
            }
            events(Event::StepFinished(&r));
            report.steps.push(r);
        }
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let total = all_steps.len();
    // Base layers fetched from registries, for as long as the build runs.
    let downloads = tempfile::Builder::new()
        .prefix("strata-base-")
        .tempdir_in(&opts.scratch)
        .map_err(BuildError::io(format!(
            "making a directory in {}",
            opts.scratch.display()
        )))?;
    let mut runners: Vec<Option<Runner>> = (0..df.stages.len()).map(|_| None).collect();
    // Working roots of the images COPY --from names, made when first needed.
    let mut image_runners: Vec<Option<Runner>> = copy_images.iter().map(|_| None).collect();
    let mut index = 0;
    let mut downloaded = 0;
    for &stage in &needed {
        let Some(plan) = stages[stage].as_ref() else {
            continue;
        };
        let (layers, history) = match &plan.base {
            StageBase::Image(b) => (
                base_layers(client, &registries, b, &downloads, &mut report, events).await?,
                b.history.clone(),
            ),
            StageBase::Stage(j) => match &runners[*j] {
                Some(r) => (r.layers.clone(), r.history.clone()),
                None => (Vec::new(), Vec::new()),
            },
        };
        let mut runner = Runner::new(client, opts, layers, history)?;
        for s in &plan.steps {
            let (hit, untrusted) = match hits.next() {
                Some(StepLookup::Hit(result)) => (Some(result), None),
                Some(StepLookup::Untrusted(d)) => (None, Some(UntrustedResult::from(&d))),
                Some(StepLookup::Miss) | None => (None, None),
            };
            index += 1;
            events(Event::StepStarted {
                index,
                total,
                text: &s.text,
            });
            let step_started = Instant::now();
            let downloaded_before = runner.downloaded;
            let mut r = match hit {
                Some(result) => {
                    let mut r = StepReport::new(index - 1, s, StepStatus::Cached);
                    if let Some(layer) = result.layer {
                        r.layer_bytes = Some(runner.adopt_stored_layer(layer).await?);
                    }
                    r
                }
                None => {
                    let mut r = StepReport::new(index - 1, s, StepStatus::Executed);
                    r.untrusted = untrusted;
                    let source = match s.copy_from {
                        Some(CopySource::Stage(j)) => runners[j].as_mut(),
                        Some(CopySource::Image(k)) => {
                            if image_runners[k].is_none() {
                                let base = &copy_images[k].1;
                                let layers = base_layers(
                                    client,
                                    &registries,
                                    base,
                                    &downloads,
                                    &mut report,
                                    events,
                                )
                                .await?;
                                image_runners[k] =
                                    Some(Runner::new(client, opts, layers, base.history.clone())?);
                            }
                            image_runners[k].as_mut()
                        }
                        None => None,
                    };
                    let from_root = match source {
                        Some(source) => Some(source.materialise().await?),
                        None => None,
                    };
                    let executed = runner.execute(s, from_root.as_deref(), events).await?;
                    if executed.layer.is_some() {
                        let spent = step_started.elapsed().saturating_sub(executed.command_time);
                        r.snapshot_seconds = Some(spent.as_secs_f64());
                    }
                    r.layer_bytes = executed.layer.map(|(_, size)| size);
                    r.uploaded_bytes = executed.uploaded;
                    let result = StepResult {
                        layer: executed.layer.map(|(d, _)| d),
                        config: s.config_after.to_json(),
                        provenance: provenance(s, step_started.elapsed(), executed.sandbox),
                        seal: None,
                    };
                    if recording {
                        match client.record_step(&s.key.digest, &result).await {
                            Ok(_) => {}
                            // A token without `result-write` may build and
                            // share layers, but not results: say so once,
                            // record nothing more, go on.
                            Err(ClientError::PermissionDenied { message, .. }) => {
                                recording = false;
                                let note = format!(
                                    "step results are not recorded: {message}; this build \
                                     stores layers but leaves no cache hits for others"
                                );
                                events(Event::Note(&note));
                                report.notes.push(note);
                            }
                            Err(e) => {
                                return Err(BuildError::cache("recording the step result")(e));
                            }
                        }
                    }
                    r
                }
            };
            runner
                .history
                .push(HistoryEntry::step(&s.text, r.layer_bytes.is_none()));
            r.downloaded_bytes = runner.downloaded - downloaded_before;
            r.seconds = step_started.elapsed().as_secs_f64();
            report.uploaded_bytes += r.uploaded_bytes;
            events(Event::StepFinished(&r));
            report.steps.push(r);
        }
        downloaded += runner.downloaded;
        runners[stage] = Some(runner);
    }

    let (Some(plan), Some(runner)) = (stages[target].as_ref(), runners[target].as_mut()) else {
        return Err(BuildError::Usage("the target stage was not built".into()));
    };
    let config = plan.final_config().clone();
    let chosen = compressed::choose_blobs(
        client,
        &runner.layers,
        opts.compression,
        runner.scratch.path(),
    )
    .await?;
    report.uploaded_bytes += chosen.uploaded;
    report.compressed_layers = chosen.compressed;
    downloaded += chosen.downloaded;
    let layers: Vec<LayerRef> = chosen.layers.iter().map(|l| l.layer.clone()).collect();
    let (config_blob, manifest_blob) =
        encode_image(&config, &layers, &runner.history, opts.created);
    let written = match &opts.output {
        Some(OutputTarget::Layout(layout)) => Some(
            output::write_output(
                client,
                &chosen.layers,
                layout,
                &config_blob.bytes,
                &manifest_blob.bytes,
            )
            .await?,
        ),
        Some(OutputTarget::Registry(target)) => Some(
            output::push_output(
                client,
                &registries,
                &chosen.layers,
                target,
                &config_blob.bytes,
                &manifest_blob.bytes,
                downloads.path(),
            )
            .await?,
        ),
        None => None,
    };
    if let Some(written) = written {
        report.output_bytes = written.layer_bytes;
        report.pushed = written.pushed;
        downloaded += written.downloaded;
    }
    if let Some(name) = &opts.tag {
        report.uploaded_bytes += stored::keep_in_store(
            client,
            &chosen.layers,
            name,
            &config_blob.bytes,
            &manifest_blob.bytes,
        )
        .await?;
    }
    report.downloaded_bytes = downloaded;
    report.manifest_digest = Some(manifest_blob.digest);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Resolves a `FROM` or `COPY --from` image and tells the user what it
/// pinned.
async fn resolve_announced(
    client: &Client,
    registries: &Registries,
    site: Site,
    image: BaseImage,
    dry_run: bool,
    events: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<Base, BuildError> {
    let written = base::as_written(&image);
    let named = matches!(image, BaseImage::Named(_));
    let base = match resolve_image(client, registries, site, image).await {
        Ok(base) => base,
        // A dry run never needs the network: an image it cannot resolve is
        // shown as such, and the steps on it as would run.
        Err(e) if dry_run && named => {
            let note = format!("{e}; a dry run goes on without it: its steps would run");
            events(Event::Note(&note));
            Base::unresolved(&written)
        }
        Err(e) => return Err(e),
    };
    events(Event::Base {
        image: &written,
        pinned: &base.name,
    });
    Ok(base)
}

/// A `FROM --platform` is honoured when it names the platform Strata
/// builds for, the host's (`$BUILDPLATFORM` and `$TARGETPLATFORM` always
/// do); another is refused, since a step of it could only run emulated.
fn check_platform(platform: &str) -> Result<(), String> {
    let (os, arch) = crate::image::platform();
    let mut parts = platform.split('/');
    let (wanted_os, wanted_arch, variant) = (parts.next(), parts.next(), parts.next());
    let arch_alias = |a: &str| match a {
        "x86_64" | "x86-64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        other => other.to_ascii_lowercase(),
    };
    let same_arch = wanted_arch.is_some_and(|a| arch_alias(a) == arch);
    // amd64 has no variant but its v1 baseline; arm64's is v8.
    let same_variant = match (arch, variant) {
        (_, None) => true,
        ("amd64", Some(v)) => v == "v1",
        ("arm64", Some(v)) => v == "v8",
        _ => false,
    };
    if wanted_os.is_some_and(|o| o.eq_ignore_ascii_case(os))
        && same_arch
        && same_variant
        && parts.next().is_none()
    {
        Ok(())
    } else {
        Err(format!(
            "FROM --platform={platform}: Strata builds for the host platform, {os}/{arch}, \
             and does not emulate another (--platform=$BUILDPLATFORM names it)"
        ))
    }
}

/// The images (not stages) stage `index`'s `COPY --from` steps name, with
/// their lines, read with the global ARGs in scope (as stage references
/// are; a name made by an ARG set inside the stage is refused when planned).
fn copy_images_named(
    df: &strata_dockerfile::Dockerfile,
    index: usize,
    globals: &[(String, String)],
) -> Result<Vec<(String, Site)>, BuildError> {
    let mut named = Vec::new();
    for step in &df.stages[index].steps {
        let strata_dockerfile::Instruction::Copy {
            from: Some(reference),
            ..
        } = &step.instruction
        else {
            continue;
        };
        let site = Site {
            file: df.file_name.clone(),
            line: step.line,
        };
        let Ok(name) = strata_dockerfile::expand(reference, df.escape, &globals.to_vec()) else {
            continue;
        };
        match df.copy_source(&name, index) {
            Ok(BaseImage::Stage(_)) => {}
            Ok(_) => named.push((name, site)),
            Err(message) => return Err(site.error(message)),
        }
    }
    Ok(named)
}

/// The layers of an image base, with where their bytes are: a registry
/// image's are fetched now (from the cache where it holds them).
async fn base_layers(
    client: &Client,
    registries: &Registries,
    base: &Base,
    downloads: &tempfile::TempDir,
    report: &mut BuildReport,
    events: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<Vec<BuiltLayer>, BuildError> {
    let Some(registry) = &base.registry else {
        return Ok(base.layers.clone());
    };
    let fetched = registry
        .fetch_layers(client, registries, downloads.path())
        .await?;
    report.registry_bytes += fetched.registry_bytes;
    report.uploaded_bytes += fetched.uploaded_bytes;
    if let Some(note) = fetched.not_kept
        && !report.notes.contains(&note)
    {
        events(Event::Note(&note));
        report.notes.push(note);
    }
    Ok(fetched.layers)
}

/// What a stage starts from.
enum StageBase {
    Image(Box<Base>),
    /// An earlier stage's result.
    Stage(usize),
}

/// A planned stage.
struct StagePlan {
    base: StageBase,
    base_key: Digest,
    base_config: RuntimeConfig,
    steps: Vec<Planned>,
}

impl StagePlan {
    /// The key of the stage's result: its last step's, or its base's.
    fn final_key(&self) -> Digest {
        self.steps.last().map_or(self.base_key, |s| s.key.digest)
    }

    fn final_config(&self) -> &RuntimeConfig {
        self.steps
            .last()
            .map_or(&self.base_config, |s| &s.config_after)
    }
}

/// Every step's key looked up and judged by the client's trust policy, in
/// as few round trips as the batch limit allows.
async fn look_up(client: &Client, steps: &[&Planned]) -> Result<Vec<StepLookup>, BuildError> {
    let keys: Vec<Digest> = steps.iter().map(|s| s.key.digest).collect();
    let mut hits = Vec::with_capacity(keys.len());
    for batch in keys.chunks(LOOKUP_BATCH) {
        hits.extend(
            client
                .lookup_steps_judged(batch)
                .await
                .map_err(BuildError::cache("looking up step keys"))?,
        );
    }
    Ok(hits)
}

impl StepReport {
    fn new(i: usize, s: &Planned, status: StepStatus) -> StepReport {
        StepReport {
            index: i + 1,
            line: s.site.line,
            instruction: s.text.clone(),
            key: s.key.digest.to_string(),
            status,
            seconds: 0.0,
            layer_bytes: None,
            uploaded_bytes: 0,
            downloaded_bytes: 0,
            snapshot_seconds: None,
            untrusted: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_platform;

    #[test]
    fn from_platform_is_honoured_for_the_host_and_refused_for_any_other() {
        let (os, arch) = crate::image::platform();
        for host in [
            format!("{os}/{arch}"),
            format!("{}/{}", os.to_uppercase(), arch),
        ] {
            assert_eq!(check_platform(&host), Ok(()), "{host}");
        }
        if arch == "amd64" {
            for alias in ["linux/x86_64", "linux/amd64/v1"] {
                assert_eq!(check_platform(alias), Ok(()), "{alias}");
            }
        }
        for other in [
            "linux/s390x",
            "windows/amd64",
            "linux",
            "",
            "linux/amd64/v3/x",
            "linux/amd64/v3",
        ] {
            let err = check_platform(other).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "FROM --platform={other}: Strata builds for the host"
                )) && err.contains("$BUILDPLATFORM"),
                "{err}"
            );
        }
    }
}
