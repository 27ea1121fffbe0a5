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
//! 5. Write the image: its config and manifest are computed from layer
//!    digests alone; layer bytes move only into an output directory that
//!    lacks them.
//!
//! The working root filesystem (the image state a RUN step starts from) is
//! materialised lazily, in a temporary directory, and removed at the end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use strata_client::{Client, Progress};
use strata_proto::v1::Provenance;
use strata_proto::{Digest, StepResult};

use crate::context::{BuildContext, CopyEntry, EntryKind, digest_entries};
use crate::image::{
    HistoryEntry, LayerRef, MEDIA_TYPE_LAYER, RuntimeConfig, command_argv, encode_image,
};
use crate::key::{StepKey, base_key, step_key};
use crate::oci::OciLayout;
use strata_dockerfile::{self as dockerfile, BaseImage, Command, Instruction, Network, Scope};
use strata_layer::{
    self as layer, ApplyOptions, CopyItem, IdMap, IdRange, LayerPath, WriteOptions,
};
use strata_sandbox::{self as sandbox, IdMapping, RootfsSpec, RunSpec, Stream};

/// What to build and how.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub dockerfile: PathBuf,
    pub context: PathBuf,
    pub build_args: Vec<(String, String)>,
    /// `--output oci:DIR[:TAG]`.
    pub output: Option<(PathBuf, String)>,
    /// `--tag NAME[:TAG]`: keep the image in the store under this name.
    pub tag: Option<String>,
    /// Plan only: compute keys, look them up, run and write nothing.
    pub dry_run: bool,
    /// mtime of every layer entry and the image's `created` (SOURCE_DATE_EPOCH).
    pub epoch: u64,
    /// Time limit of one RUN step.
    pub step_timeout: Option<Duration>,
    /// Whether `RUN --network=host` may run.
    pub allow_host_network: bool,
    /// Where working file systems are made (a temporary directory inside).
    pub scratch: PathBuf,
    /// The executable that serves as sandbox stage (None: this one).
    pub sandbox_helper: Option<PathBuf>,
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
    /// Layer bytes written into the output directory.
    pub output_bytes: u64,
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
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] dockerfile::ParseError),
    #[error("{file}:{line}: {message}")]
    Step {
        file: String,
        line: usize,
        message: String,
    },
    #[error(
        "{file}:{line}: RUN failed with {exit}\n--- last output ---\n{tail}--- nothing was recorded for this step ---"
    )]
    RunFailed {
        file: String,
        line: usize,
        exit: String,
        tail: String,
        code: i32,
    },
    #[error("{0}")]
    Other(String),
}

impl BuildError {
    /// The exit status the CLI should end with.
    pub fn exit_code(&self) -> i32 {
        match self {
            BuildError::RunFailed { code, .. } => *code,
            _ => 1,
        }
    }
}

fn other(what: &str) -> impl FnOnce(String) -> BuildError + '_ {
    move |e| BuildError::Other(format!("{what}: {e}"))
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

/// One step once planned: expanded, keyed, with the config it leaves.
struct Planned {
    line: usize,
    text: String,
    instruction: Instruction,
    key: StepKey,
    parent: Digest,
    config_before: RuntimeConfig,
    config_after: RuntimeConfig,
    args: BTreeMap<String, String>,
    copy: Option<Vec<CopyEntry>>,
}

/// The image a build starts from.
struct Base {
    key: StepKey,
    config: RuntimeConfig,
    /// Layers with where their bytes are.
    layers: Vec<BuiltLayer>,
    history: Vec<HistoryEntry>,
}

/// A layer of the image being built.
#[derive(Clone, Debug)]
struct BuiltLayer {
    oci: LayerRef,
    source: LayerSource,
}

#[derive(Clone, Debug)]
enum LayerSource {
    /// A blob file of the base image's layout.
    File(PathBuf),
    /// An object in the store.
    Store(Digest),
}

async fn resolve_base(
    client: &Client,
    df: &dockerfile::Dockerfile,
    globals: &[(String, String)],
) -> Result<Base, BuildError> {
    let from_err = |message: String| BuildError::Step {
        file: df.file_name.clone(),
        line: df.from.line,
        message,
    };
    match df.base_image(&globals.to_vec())? {
        BaseImage::Scratch => Ok(Base {
            key: base_key("scratch"),
            config: RuntimeConfig::default(),
            layers: Vec::new(),
            history: Vec::new(),
        }),
        BaseImage::OciLayout { dir, tag } => {
            let err = |e: crate::oci::OciError| BuildError::Step {
                file: df.file_name.clone(),
                line: df.from.line,
                message: format!("FROM oci:{dir}: {e}"),
            };
            let layout = OciLayout::open(Path::new(&dir)).map_err(err)?;
            let image = layout.read_image(tag.as_deref()).map_err(err)?;
            Ok(Base {
                key: base_key(&format!("oci {}", image.manifest_digest)),
                config: image.config,
                layers: image
                    .layers
                    .into_iter()
                    .map(|(oci, path)| BuiltLayer {
                        oci,
                        source: LayerSource::File(path),
                    })
                    .collect(),
                history: image.history,
            })
        }
        BaseImage::Stored { name, tag } => {
            let full = format!("{name}:{}", tag.as_deref().unwrap_or("latest"));
            let digest = client
                .get_tag(&full)
                .await
                .map_err(|e| from_err(format!("FROM {full}: {e}")))?
                .ok_or_else(|| {
                    from_err(format!(
                        "FROM {full}: the cache has no image tagged {full} (build one with --tag {full})"
                    ))
                })?;
            let bytes = client
                .pull_to_vec(&digest)
                .await
                .map_err(|e| from_err(format!("FROM {full}: {e}")))?;
            let image = StoredImage::decode(&bytes)
                .map_err(|e| from_err(format!("FROM {full}: stored image {digest}: {e}")))?;
            Ok(Base {
                key: base_key(&format!("stored {}", image.manifest_digest)),
                config: image.config,
                layers: image.layers,
                history: image.history,
            })
        }
    }
}

/// The media type of an image kept in the store under a tag.
pub const MEDIA_TYPE_STORED_IMAGE: &str = "application/vnd.strata.image.v1+json";

/// An image kept in the store: the OCI manifest and config (as JSON), and
/// the store object of each layer, in order.
struct StoredImage {
    manifest_digest: String,
    config: RuntimeConfig,
    history: Vec<HistoryEntry>,
    layers: Vec<BuiltLayer>,
}

impl StoredImage {
    fn encode(manifest: &[u8], config: &[u8], layers: &[Digest]) -> Vec<u8> {
        // The exact bytes, as strings: their SHA-256 is the image's identity.
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let value = serde_json::json!({
            "schema": "strata-image-v1",
            "manifest": text(manifest),
            "config": text(config),
            "layers": layers.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&value).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<StoredImage, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        if v["schema"] != "strata-image-v1" {
            return Err(format!("unknown schema {}", v["schema"]));
        }
        let manifest_bytes = v["manifest"].as_str().unwrap_or_default().as_bytes();
        let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes)
            .map_err(|e| format!("its OCI manifest is not JSON: {e}"))?;
        let config: serde_json::Value =
            serde_json::from_slice(v["config"].as_str().unwrap_or_default().as_bytes())
                .map_err(|e| format!("its OCI config is not JSON: {e}"))?;
        let oci_layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let stored = v["layers"].as_array().cloned().unwrap_or_default();
        if oci_layers.len() != stored.len() {
            return Err("its OCI manifest and its layer list disagree".into());
        }
        let layers = oci_layers
            .iter()
            .zip(&stored)
            .map(|(l, d)| {
                let digest: Digest = d
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| format!("layer digest: {e}"))?;
                Ok(BuiltLayer {
                    oci: LayerRef {
                        sha256: l["digest"].as_str().unwrap_or_default().to_string(),
                        size: l["size"].as_u64().unwrap_or(0),
                    },
                    source: LayerSource::Store(digest),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(StoredImage {
            manifest_digest: crate::image::sha256_digest(manifest_bytes),
            config: crate::oci::runtime_config_of(&config["config"]),
            history: crate::oci::history_of(&config),
            layers,
        })
    }
}

/// Expands and keys every step.
fn plan(
    df: &dockerfile::Dockerfile,
    context: &BuildContext,
    build_args: &[(String, String)],
    base: &Base,
) -> Result<Vec<Planned>, BuildError> {
    let build_args_map: BTreeMap<String, String> = build_args.iter().cloned().collect();
    let globals: BTreeMap<String, String> =
        df.global_scope(&build_args.to_vec())?.into_iter().collect();
    let mut config = base.config.clone();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut parent = base.key.digest;
    let mut planned = Vec::new();
    for step in &df.steps {
        let instruction = df.expand_step(
            step,
            &StepScope {
                config: &config,
                args: &args,
            },
        )?;
        let step_err = |message: String| BuildError::Step {
            file: df.file_name.clone(),
            line: step.line,
            message,
        };
        let mut copy = None;
        let files = match &instruction {
            Instruction::Copy {
                sources,
                dest,
                chmod,
                ..
            } => {
                let entries = context
                    .select(sources, dest, config.cwd(), *chmod)
                    .map_err(|e| step_err(format!("COPY: {e}")))?;
                let d = digest_entries(&entries).map_err(|e| step_err(format!("COPY: {e}")))?;
                copy = Some(entries);
                Some(d)
            }
            Instruction::Add {
                sources,
                dest,
                chmod,
                ..
            } => {
                let mut paths = Vec::new();
                for s in sources {
                    match s {
                        dockerfile::AddSource::Path(p) => paths.push(p.clone()),
                        dockerfile::AddSource::Url(u) => {
                            return Err(step_err(format!(
                                "ADD {u}: fetching URLs is not supported yet (the build has no network); download it into the context and COPY it"
                            )));
                        }
                    }
                }
                let entries = context
                    .select(&paths, dest, config.cwd(), *chmod)
                    .map_err(|e| step_err(format!("ADD: {e}")))?;
                let d = digest_entries(&entries).map_err(|e| step_err(format!("ADD: {e}")))?;
                copy = Some(entries);
                Some(d)
            }
            _ => None,
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
        planned.push(Planned {
            line: step.line,
            text: step.source_text.clone(),
            parent,
            key: key.clone(),
            config_before,
            config_after: config.clone(),
            args: args.clone(),
            instruction,
            copy,
        });
        parent = key.digest;
    }
    Ok(planned)
}

fn args_in_scope(args: &BTreeMap<String, String>) -> Vec<(String, String)> {
    args.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
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
    let text = std::fs::read_to_string(&opts.dockerfile)
        .map_err(|e| BuildError::Other(format!("reading {}: {e}", opts.dockerfile.display())))?;
    let file_name = opts.dockerfile.display().to_string();
    let df = dockerfile::parse(&file_name, &text)?;
    let context =
        BuildContext::open(&opts.context).map_err(|e| BuildError::Other(e.to_string()))?;
    let globals = df.global_scope(&opts.build_args)?;
    let base = resolve_base(client, &df, &globals).await?;
    let steps = plan(&df, &context, &opts.build_args, &base)?;

    for s in &steps {
        if let Instruction::Run {
            network: Network::Host,
            ..
        } = s.instruction
            && !opts.allow_host_network
        {
            return Err(BuildError::Step {
                file: df.file_name.clone(),
                line: s.line,
                message:
                    "RUN --network=host needs --allow-host-network: the step would not be hermetic"
                        .into(),
            });
        }
    }

    let keys: Vec<Digest> = steps.iter().map(|s| s.key.digest).collect();
    let mut hits: Vec<Option<StepResult>> = Vec::with_capacity(keys.len());
    for batch in keys.chunks(LOOKUP_BATCH) {
        hits.extend(
            client
                .lookup_steps(batch)
                .await
                .map_err(|e| other("looking up step keys")(e.to_string()))?,
        );
    }

    let mut report = BuildReport {
        manifest_digest: None,
        steps: Vec::new(),
        seconds: 0.0,
        uploaded_bytes: 0,
        downloaded_bytes: 0,
        output_bytes: 0,
    };
    if opts.dry_run {
        for (i, (s, hit)) in steps.iter().zip(&hits).enumerate() {
            let r = StepReport {
                index: i + 1,
                line: s.line,
                instruction: s.text.clone(),
                key: s.key.digest.to_string(),
                status: if hit.is_some() {
                    StepStatus::Cached
                } else {
                    StepStatus::WouldRun
                },
                seconds: 0.0,
                layer_bytes: None,
                uploaded_bytes: 0,
                downloaded_bytes: 0,
                snapshot_seconds: None,
            };
            events(Event::StepFinished(&r));
            report.steps.push(r);
        }
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let mut runner = Runner::new(client, opts, &base)?;
    let total = steps.len();
    for (i, (s, hit)) in steps.iter().zip(hits).enumerate() {
        events(Event::StepStarted {
            index: i + 1,
            total,
            text: &s.text,
        });
        let step_started = Instant::now();
        let mut r = StepReport {
            index: i + 1,
            line: s.line,
            instruction: s.text.clone(),
            key: s.key.digest.to_string(),
            status: StepStatus::Cached,
            seconds: 0.0,
            layer_bytes: None,
            uploaded_bytes: 0,
            downloaded_bytes: 0,
            snapshot_seconds: None,
        };
        let downloaded_before = runner.downloaded;
        match hit {
            Some(result) => {
                if let Some(layer) = result.layer {
                    let size = runner.adopt_stored_layer(layer).await?;
                    r.layer_bytes = Some(size);
                }
            }
            None => {
                r.status = StepStatus::Executed;
                let (layer, uploaded, command_time) = runner.execute(&df, s, events).await?;
                if layer.is_some() {
                    let spent = step_started.elapsed().saturating_sub(command_time);
                    r.snapshot_seconds = Some(spent.as_secs_f64());
                }
                r.layer_bytes = layer.as_ref().map(|(_, size)| *size);
                r.uploaded_bytes = uploaded;
                let result = StepResult {
                    layer: layer.map(|(d, _)| d),
                    config: s.config_after.to_json(),
                    provenance: provenance(s, step_started.elapsed()),
                };
                client
                    .record_step(&s.key.digest, &result)
                    .await
                    .map_err(|e| other("recording the step result")(e.to_string()))?;
            }
        }
        runner.history.push(HistoryEntry {
            created_by: s.text.clone(),
            empty_layer: r.layer_bytes.is_none(),
        });
        r.downloaded_bytes = runner.downloaded - downloaded_before;
        r.seconds = step_started.elapsed().as_secs_f64();
        report.uploaded_bytes += r.uploaded_bytes;
        events(Event::StepFinished(&r));
        report.steps.push(r);
    }

    let config = steps
        .last()
        .map_or_else(|| base.config.clone(), |s| s.config_after.clone());
    let layers: Vec<LayerRef> = runner.layers.iter().map(|l| l.oci.clone()).collect();
    let (config_blob, manifest_blob) = encode_image(&config, &layers, &runner.history, opts.epoch);
    if let Some((dir, tag)) = &opts.output {
        report.output_bytes = runner
            .write_output(dir, tag, &config_blob.bytes, &manifest_blob.bytes)
            .await?;
    }
    if let Some(name) = &opts.tag {
        report.uploaded_bytes += runner
            .keep_in_store(name, &config_blob.bytes, &manifest_blob.bytes)
            .await?;
    }
    report.downloaded_bytes = runner.downloaded;
    report.manifest_digest = Some(manifest_blob.digest);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn provenance(s: &Planned, took: Duration) -> Provenance {
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
    }
}

/// The state of a running build: layers so far, and the working rootfs
/// once something needed it.
struct Runner<'a> {
    client: &'a Client,
    opts: &'a BuildOptions,
    scratch: tempfile::TempDir,
    ids: IdMapping,
    layer_ids: IdMap,
    layers: Vec<BuiltLayer>,
    history: Vec<HistoryEntry>,
    /// The working rootfs and how many of `layers` it holds.
    rootfs: Option<(PathBuf, usize)>,
    downloaded: u64,
}

impl<'a> Runner<'a> {
    fn new(client: &'a Client, opts: &'a BuildOptions, base: &Base) -> Result<Self, BuildError> {
        std::fs::create_dir_all(&opts.scratch)
            .map_err(|e| other("creating the scratch directory")(e.to_string()))?;
        let scratch = tempfile::Builder::new()
            .prefix("strata-build-")
            .tempdir_in(&opts.scratch)
            .map_err(|e| other("creating the scratch directory")(e.to_string()))?;
        let ids =
            IdMapping::detect().map_err(|e| other("choosing the sandbox's ids")(e.to_string()))?;
        let layer_ids = layer_idmap(&ids)?;
        Ok(Runner {
            client,
            opts,
            scratch,
            ids,
            layer_ids,
            layers: base.layers.clone(),
            history: base.history.clone(),
            rootfs: None,
            downloaded: 0,
        })
    }

    /// Takes a cached layer: only its manifest is fetched (for the OCI
    /// digest and size), never its bytes.
    async fn adopt_stored_layer(&mut self, digest: Digest) -> Result<u64, BuildError> {
        let manifest = self
            .client
            .get_manifest(&digest)
            .await
            .map_err(|e| other("fetching a layer's manifest")(e.to_string()))?;
        let size = manifest.total_length();
        self.layers.push(BuiltLayer {
            oci: LayerRef {
                sha256: format!("sha256:{}", hex(manifest.sha256())),
                size,
            },
            source: LayerSource::Store(digest),
        });
        Ok(size)
    }

    /// Makes the working rootfs hold every layer so far, downloading what
    /// it lacks.
    async fn materialise(&mut self) -> Result<PathBuf, BuildError> {
        let (root, have) = match self.rootfs.take() {
            Some(r) => r,
            None => {
                let root = self.scratch.path().join("rootfs");
                std::fs::create_dir_all(&root)
                    .map_err(|e| other("creating the rootfs")(e.to_string()))?;
                (root, 0)
            }
        };
        let pending = self.layers[have..].to_vec();
        for layer in pending {
            let path = match &layer.source {
                LayerSource::File(p) => p.clone(),
                LayerSource::Store(d) => {
                    let tmp = self.scratch.path().join("download.tar");
                    let file = File::create(&tmp)
                        .map_err(|e| other("creating a download file")(e.to_string()))?;
                    let (report, mut w) = self
                        .client
                        .pull(d, BufWriter::new(file), &Progress::new())
                        .await
                        .map_err(|e| other("downloading a parent layer")(e.to_string()))?;
                    w.flush()
                        .map_err(|e| other("writing a downloaded layer")(e.to_string()))?;
                    self.downloaded += report.total_bytes;
                    tmp
                }
            };
            self.apply(&path, &root)?;
        }
        let n = self.layers.len();
        self.rootfs = Some((root.clone(), n));
        Ok(root)
    }

    fn apply(&self, layer_tar: &Path, root: &Path) -> Result<(), BuildError> {
        let file = File::open(layer_tar).map_err(|e| other("opening a layer")(e.to_string()))?;
        layer::apply_layer(
            std::io::BufReader::new(file),
            root,
            &self.layer_ids,
            &ApplyOptions {
                skip_device_nodes: true,
            },
        )
        .map_err(|e| other("applying a layer")(e.to_string()))?;
        Ok(())
    }

    /// Runs one missed step; returns its layer (manifest digest and size),
    /// the bytes uploaded, and how long its command ran.
    async fn execute(
        &mut self,
        df: &dockerfile::Dockerfile,
        s: &Planned,
        events: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> Result<(Option<(Digest, u64)>, u64, Duration), BuildError> {
        let step_err = |message: String| BuildError::Step {
            file: df.file_name.clone(),
            line: s.line,
            message,
        };
        let mut command_time = Duration::ZERO;
        let changes = match &s.instruction {
            Instruction::Run { command, network } => {
                let root = self.materialise().await?;
                let (changes, took) = self.run_step(df, s, command, *network, &root, events)?;
                command_time = took;
                changes
            }
            Instruction::Copy { chown, .. } | Instruction::Add { chown, .. } => {
                let root = self.materialise().await?;
                let owner = chown_ids(chown.as_deref(), &root).map_err(step_err)?;
                let items =
                    copy_items(s.copy.as_deref().unwrap_or_default(), owner).map_err(step_err)?;
                layer::copy_changes(&items, &root).map_err(|e| step_err(format!("COPY: {e}")))?
            }
            _ => return Ok((None, 0, Duration::ZERO)),
        };
        let tar_path = self
            .scratch
            .path()
            .join(format!("layer-{}.tar", self.layers.len()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tar_path)
            .map_err(|e| other("creating the layer file")(e.to_string()))?;
        let mut w = BufWriter::new(&mut file);
        let summary = layer::write_layer(
            &changes,
            &mut w,
            &WriteOptions {
                epoch: self.opts.epoch,
                preserve_hardlinks: true,
            },
        )
        .map_err(|e| step_err(format!("snapshotting the step: {e}")))?;
        w.flush()
            .map_err(|e| other("writing the layer file")(e.to_string()))?;
        drop(w);
        file.rewind()
            .map_err(|e| other("rewinding the layer")(e.to_string()))?;
        let pushed = self
            .client
            .push_file(file, MEDIA_TYPE_LAYER, &Progress::new())
            .await
            .map_err(|e| other("storing the layer")(e.to_string()))?;
        let (Some(digest), Some(sha256)) = (pushed.digest, pushed.sha256) else {
            return Err(BuildError::Other(
                "storing the layer returned no digest".into(),
            ));
        };
        // The working rootfs does not hold this layer yet: the next step
        // that needs a file system applies it (`materialise`), and a last
        // step never pays for it.
        self.layers.push(BuiltLayer {
            oci: LayerRef {
                sha256: format!("sha256:{}", hex(&sha256)),
                size: summary.bytes,
            },
            source: LayerSource::File(tar_path),
        });
        Ok((
            Some((digest, summary.bytes)),
            pushed.sent_bytes,
            command_time,
        ))
    }

    /// Runs a RUN step in the sandbox on an overlay (or a copy) of the
    /// working rootfs and returns its changes.
    fn run_step(
        &self,
        df: &dockerfile::Dockerfile,
        s: &Planned,
        command: &Command,
        network: Network,
        root: &Path,
        events: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> Result<(Vec<layer::Change>, Duration), BuildError> {
        let n = self.layers.len();
        let overlay = sandbox::overlay_supported(
            self.opts.sandbox_helper.as_deref(),
            self.scratch.path(),
            &self.ids,
        );
        let (rootfs, upper) = if overlay {
            let spec = sandbox::prepare_overlay(
                &self.scratch.path().join(format!("step-{n}")),
                vec![root.to_path_buf()],
                &self.ids,
            )
            .map_err(|e| other("preparing the overlay")(e.to_string()))?;
            let upper = match &spec {
                RootfsSpec::Overlay { upper, .. } => upper.clone(),
                RootfsSpec::Copy { root } => root.clone(),
            };
            (spec, upper)
        } else {
            let copy = self.scratch.path().join(format!("step-{n}"));
            sandbox::copy_tree(root, &copy)
                .map_err(|e| other("copying the rootfs")(e.to_string()))?;
            (RootfsSpec::Copy { root: copy.clone() }, copy)
        };
        let argv = command_argv(command).unwrap_or_default();
        let mut env: Vec<(String, String)> = s
            .args
            .iter()
            .filter(|(k, _)| s.config_before.env_value(k).is_none())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(s.config_before.env.iter().filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        }));
        let spec = RunSpec {
            rootfs,
            argv,
            env,
            cwd: s.config_before.cwd().to_string(),
            user: (!s.config_before.user.is_empty()).then(|| s.config_before.user.clone()),
            network: match network {
                Network::None => sandbox::Network::None,
                Network::Host => sandbox::Network::Host,
            },
            timeout: self.opts.step_timeout,
            hostname: "strata".into(),
        };
        let mut tail = OutputTail::default();
        // The sandbox blocks until the step ends; keep the runtime's other
        // tasks (an embedded server's, say) running meanwhile.
        let outcome = tokio::task::block_in_place(|| {
            sandbox::run(
                &spec,
                &self.ids,
                self.opts.sandbox_helper.as_deref(),
                |stream, bytes| {
                    tail.push(bytes);
                    events(Event::Output(stream, bytes));
                },
            )
        })
        .map_err(|e| BuildError::Step {
            file: df.file_name.clone(),
            line: s.line,
            message: format!("RUN could not start: {e}"),
        })?;
        if !outcome.exit.success() {
            return Err(BuildError::RunFailed {
                file: df.file_name.clone(),
                line: s.line,
                exit: exit_text(&outcome.exit),
                tail: tail.text(),
                code: exit_code(&outcome.exit),
            });
        }
        let mut changes = if overlay {
            layer::diff_overlay(root, &upper, &self.layer_ids)
        } else {
            layer::diff_trees(root, &upper, &self.layer_ids)
        }
        .map_err(|e| BuildError::Step {
            file: df.file_name.clone(),
            line: s.line,
            message: format!("snapshotting the step: {e}"),
        })?;
        let created: Vec<LayerPath> = outcome
            .created_mountpoints
            .iter()
            .filter_map(|p| LayerPath::from_image_path(Path::new(p)).ok())
            .collect();
        changes.retain(|c| !created.contains(&c.path));
        Ok((changes, outcome.duration))
    }

    /// Keeps the image in the store under tag `name`: every layer as a
    /// store object (base layers from a layout are pushed; the store dedups
    /// them), then the image record, then the tag. Returns bytes sent.
    async fn keep_in_store(
        &mut self,
        name: &str,
        config: &[u8],
        manifest: &[u8],
    ) -> Result<u64, BuildError> {
        let mut sent = 0;
        let mut objects = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            match &layer.source {
                LayerSource::Store(d) => objects.push(*d),
                LayerSource::File(p) => {
                    let file =
                        File::open(p).map_err(|e| other("reading a layer")(e.to_string()))?;
                    let pushed = self
                        .client
                        .push_file(file, MEDIA_TYPE_LAYER, &Progress::new())
                        .await
                        .map_err(|e| other("storing a layer")(e.to_string()))?;
                    sent += pushed.sent_bytes;
                    objects.push(pushed.digest.ok_or_else(|| {
                        BuildError::Other("storing a layer returned no digest".into())
                    })?);
                }
            }
        }
        let record = StoredImage::encode(manifest, config, &objects);
        let pushed = self
            .client
            .push(
                std::io::Cursor::new(record),
                MEDIA_TYPE_STORED_IMAGE,
                &Progress::new(),
            )
            .await
            .map_err(|e| other("storing the image")(e.to_string()))?;
        sent += pushed.sent_bytes;
        let digest = pushed
            .digest
            .ok_or_else(|| BuildError::Other("storing the image returned no digest".into()))?;
        self.client
            .set_tag(name, &digest)
            .await
            .map_err(|e| BuildError::Other(format!("tagging the image {name}: {e}")))?;
        Ok(sent)
    }

    /// Writes the image into an OCI layout, copying only the layer blobs the
    /// directory lacks. Returns the layer bytes written.
    async fn write_output(
        &mut self,
        dir: &Path,
        tag: &str,
        config: &[u8],
        manifest: &[u8],
    ) -> Result<u64, BuildError> {
        let out = OciLayout::create(dir)
            .map_err(|e| other("creating the output layout")(e.to_string()))?;
        let mut written = 0;
        for layer in self.layers.clone() {
            if out.has_blob(&layer.oci.sha256, layer.oci.size) {
                continue;
            }
            let tmp = out
                .temp_blob()
                .map_err(|e| other("writing the output")(e.to_string()))?;
            let tmp = match &layer.source {
                LayerSource::File(p) => {
                    let mut w = tmp;
                    let mut r =
                        File::open(p).map_err(|e| other("reading a layer")(e.to_string()))?;
                    std::io::copy(&mut r, &mut w)
                        .map_err(|e| other("writing the output")(e.to_string()))?;
                    w
                }
                LayerSource::Store(d) => {
                    let (report, w) = self
                        .client
                        .pull(d, tmp, &Progress::new())
                        .await
                        .map_err(|e| other("downloading a layer for the output")(e.to_string()))?;
                    self.downloaded += report.total_bytes;
                    w
                }
            };
            out.commit_blob(tmp, &layer.oci.sha256)
                .map_err(|e| other("writing the output")(e.to_string()))?;
            written += layer.oci.size;
        }
        out.put_blob(config)
            .map_err(|e| other("writing the output")(e.to_string()))?;
        let digest = out
            .put_blob(manifest)
            .map_err(|e| other("writing the output")(e.to_string()))?;
        out.set_tag(tag, &digest, manifest.len() as u64)
            .map_err(|e| other("writing the output")(e.to_string()))?;
        Ok(written)
    }
}

/// The sandbox's id mapping in the layer module's terms.
fn layer_idmap(ids: &IdMapping) -> Result<IdMap, BuildError> {
    let ranges = |extents: &[sandbox::IdExtent]| {
        extents
            .iter()
            .map(|e| IdRange {
                container: e.container,
                host: e.host,
                len: e.count,
            })
            .collect::<Vec<_>>()
    };
    IdMap::new(ranges(ids.uids()), ranges(ids.gids()))
        .map_err(|e| other("mapping ids")(e.to_string()))
}

/// `--chown=user[:group]`: numbers as they are (a lone uid is also the
/// gid, as Docker does), names through the image's `/etc/passwd` and
/// `/etc/group`. Those are read only if they are regular files in `root`:
/// a symlink there could point at the host's.
fn chown_ids(chown: Option<&str>, root: &Path) -> Result<Option<(u32, u32)>, String> {
    let Some(spec) = chown else { return Ok(None) };
    let numeric = |s: &str| s.parse::<u32>().ok();
    match spec.split_once(':') {
        None if numeric(spec).is_some() => return Ok(numeric(spec).map(|u| (u, u))),
        Some((u, g)) if numeric(u).is_some() && numeric(g).is_some() => {
            return Ok(numeric(u).zip(numeric(g)));
        }
        _ => {}
    }
    let read = |name: &str| -> String {
        let path = root.join("etc").join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => std::fs::read_to_string(&path).unwrap_or_default(),
            _ => String::new(),
        }
    };
    sandbox::resolve_owner(spec, &read("passwd"), &read("group"))
        .map(Some)
        .map_err(|e| format!("COPY --chown={spec}: {e}"))
}

/// One layer-module copy item per selected entry (the selection already
/// honours `.dockerignore`, so nothing is walked again).
fn copy_items(entries: &[CopyEntry], chown: Option<(u32, u32)>) -> Result<Vec<CopyItem>, String> {
    entries
        .iter()
        .map(|e| {
            Ok(CopyItem {
                source: e.host.clone(),
                dest: LayerPath::from_image_path(Path::new(&e.dest))
                    .map_err(|p| format!("COPY destination {}: {p}", e.dest))?,
                chown,
                chmod: match e.kind {
                    EntryKind::Symlink(_) => None,
                    _ => Some(e.mode),
                },
                recursive: false,
            })
        })
        .collect()
}

fn exit_text(exit: &sandbox::ExitKind) -> String {
    match exit {
        sandbox::ExitKind::Code(c) => format!("exit code {c}"),
        sandbox::ExitKind::Signal(s) => format!("signal {s}"),
        sandbox::ExitKind::TimedOut(d) => {
            format!(
                "the time limit ({:.0} s); every process of the step was killed",
                d.as_secs_f64()
            )
        }
    }
}

/// The build's exit status for a failed RUN: the step's own code, 128 +
/// signal for a signal (as shells report it), 124 for a time-out (as
/// `timeout` does).
fn exit_code(exit: &sandbox::ExitKind) -> i32 {
    match exit {
        sandbox::ExitKind::Code(c) => *c,
        sandbox::ExitKind::Signal(s) => 128 + s,
        sandbox::ExitKind::TimedOut(_) => 124,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last lines of a step's output, for the error when it fails.
#[derive(Default)]
struct OutputTail {
    buf: Vec<u8>,
}

/// Output kept for a failed step's error message.
const TAIL_BYTES: usize = 4096;
const TAIL_LINES: usize = 20;

impl OutputTail {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * TAIL_BYTES {
            self.buf.drain(..self.buf.len() - TAIL_BYTES);
        }
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.buf);
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(TAIL_LINES);
        let mut out = lines[start..].join("\n");
        out.push('\n');
        out
    }
}
