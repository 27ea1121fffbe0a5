//! `strata build`: a Dockerfile and its context to an OCI image, asking the
//! cache before each step; progress on stderr, the manifest digest (or a
//! report) on stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use strata_builder::build::{
    BuildOptions, BuildReport, Event, NetworkPolicy, OutputTarget, StepStatus,
};
use strata_builder::image::Compression;
use strata_builder::progress::human_bytes;
use strata_builder::source_date::image_created;
use strata_builder::target::Target;
use strata_client::ClientConfig;
use strata_dockerfile::ImageRef;
use strata_registry::RegistryOptions;
use strata_sandbox::Limits;

use super::signing::TrustArgs;
use super::{ChunkingArgs, ServerArg};

#[derive(Args)]
pub struct BuildArgs {
    /// The build context directory.
    context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    dockerfile: Option<PathBuf>,
    /// A build argument, NAME=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    build_args: Vec<String>,
    /// Write the image to an OCI layout, oci:DIR[:TAG] (tag default
    /// "latest"; the directory ends at the first `:`, as skopeo reads it),
    /// or push it to a registry, registry://[HOST[:PORT]/]REPO[:TAG].
    #[arg(long, value_name = "oci:DIR[:TAG]|registry://REPO[:TAG]", value_parser = OutputTarget::parse)]
    output: Option<OutputTarget>,
    /// Keep the image in the cache as NAME[:TAG] (tag default "latest"),
    /// for `FROM NAME[:TAG]` in later builds, here or on any client of the
    /// same server. Names are lower-case, as Docker's are.
    #[arg(long, value_name = "NAME[:TAG]", value_parser = ImageRef::parse_tag_name)]
    tag: Option<ImageRef>,
    /// The stage to build, by name or number (default: the last). Only the
    /// stages it needs are built.
    #[arg(long)]
    target: Option<String>,
    /// Compute the keys, look them up and print the plan; run and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print a JSON report (per step: key, cached or executed, seconds, bytes).
    #[arg(long)]
    json: bool,
    /// Time limit of one RUN step, in seconds.
    #[arg(long, default_value_t = 3600)]
    step_timeout: u64,
    /// Memory of each RUN step: 512m, 2g, or bytes (default: half the
    /// host's memory); `none` for no limit.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Processes of each RUN step at once (default 4096); 0 for no limit.
    #[arg(long, value_name = "N")]
    pids_limit: Option<u64>,
    /// CPUs each RUN step may use, e.g. 1.5 (default: all; needs a cgroup).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// How the layers this build makes are compressed in the image: gzip
    /// (read by every tool), zstd (smaller, faster; needs newer tools) or
    /// none. Deterministic; base-image layers keep their own blobs.
    #[arg(long, value_name = "gzip|zstd|none", default_value = "gzip", value_parser = Compression::parse)]
    compression: Compression,
    /// Let `RUN --network=host` steps run (they are marked non-hermetic).
    #[arg(long)]
    allow_host_network: bool,
    /// The network of every RUN step: none (hermetic, the default) or host
    /// (as Docker's flag; each step is keyed and recorded as non-hermetic).
    #[arg(long, value_name = "none|host", default_value = "none", value_parser = ["none", "host"])]
    network: String,
    /// Registry credentials: a Docker config file (`auths`, `credHelpers`,
    /// `credsStore`) read instead of `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`.
    #[arg(long, value_name = "FILE")]
    registry_auth: Option<PathBuf>,
    /// A mirror (HOST[:PORT]) asked first for docker.io images; Docker Hub
    /// itself is asked when the mirror fails or lacks the image.
    #[arg(long, value_name = "HOST[:PORT]")]
    registry_mirror: Option<String>,
    /// A registry (HOST[:PORT]) spoken to over plain HTTP (repeatable).
    /// Loopback registries always are, as Docker does.
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    #[command(flatten)]
    chunking: ChunkingArgs,
    #[command(flatten)]
    server: ServerArg,
    #[command(flatten)]
    trust: TrustArgs,
}

pub async fn run(args: BuildArgs) -> Result<()> {
    let dockerfile = args
        .dockerfile
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let build_args = args
        .build_args
        .iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--build-arg {a:?}: expected NAME=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    let source_date_epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
    let (created, _) = image_created(source_date_epoch.as_deref(), &args.context, &dockerfile)
        .map_err(anyhow::Error::msg)?;
    // Layer mtimes: SOURCE_DATE_EPOCH or 0, never the commit time, so a
    // layer's digest does not change with every commit.
    let epoch = if source_date_epoch.is_some() {
        created
    } else {
        0
    };
    let limits = step_limits(args.memory.as_deref(), args.pids_limit, args.cpus)?;
    let opts = BuildOptions {
        dockerfile,
        context: args.context.clone(),
        build_args,
        output: args.output,
        tag: args.tag,
        target: args.target,
        limits,
        dry_run: args.dry_run,
        epoch,
        created,
        compression: args.compression,
        step_timeout: Some(std::time::Duration::from_secs(args.step_timeout)),
        network: match (args.network.as_str(), args.allow_host_network) {
            ("host", _) => NetworkPolicy::AllHost,
            (_, true) => NetworkPolicy::AllowHost,
            _ => NetworkPolicy::Hermetic,
        },
        scratch: std::env::temp_dir(),
        sandbox_helper: None,
        registry: RegistryOptions {
            docker_config: args.registry_auth,
            docker_io_mirror: args.registry_mirror,
            insecure_registries: args.insecure_registry,
            ..RegistryOptions::default()
        },
    };
    let mut trust_notes = Vec::new();
    let trust = args.trust.policy(&mut trust_notes)?;
    for note in &trust_notes {
        show_event(Event::Note(note));
    }
    let config = ClientConfig {
        trust,
        ..args.server.connection(args.chunking.client_config()?)?
    };
    let target = Target::open(args.server.server.as_deref(), config).await?;
    let result = strata_builder::build::build(&target.client, &opts, &mut show_event).await;
    target.close().await?;
    let mut report = result?;
    // A missing default key was said once already; the build's own note
    // about it would say it again.
    if !trust_notes.is_empty() {
        report.notes.retain(|n| !n.contains("no signing key"));
        report.notes.extend(trust_notes);
    }
    print_build_report(&report, args.json, args.dry_run)
}

/// The sandbox's default limits with the flags' overrides.
fn step_limits(memory: Option<&str>, pids: Option<u64>, cpus: Option<f64>) -> Result<Limits> {
    let mut limits = Limits::default();
    if let Some(text) = memory {
        limits.memory = match text {
            "none" | "0" => None,
            _ => Some(parse_size(text).with_context(|| {
                format!("--memory {text:?}: expected a size like 512m, 2g or a number of bytes")
            })?),
        };
    }
    if let Some(n) = pids {
        limits.pids = (n > 0).then_some(n);
    }
    if let Some(cpus) = cpus {
        if !(cpus > 0.0 && cpus <= 4096.0) {
            anyhow::bail!("--cpus {cpus}: expected a number of CPUs above 0, like 1.5");
        }
        limits.cpu_millis = Some((cpus * 1000.0).round() as u32);
    }
    Ok(limits)
}

/// `512m`, `2g`, `64k` or bytes (binary units, as Docker's --memory).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, shift) = match text.strip_suffix(['b']).unwrap_or(&text) {
        t if t.ends_with('k') => (&t[..t.len() - 1], 10),
        t if t.ends_with('m') => (&t[..t.len() - 1], 20),
        t if t.ends_with('g') => (&t[..t.len() - 1], 30),
        t => (t, 0),
    };
    digits
        .parse::<u64>()
        .ok()?
        .checked_mul(1 << shift)
        .filter(|&n| n > 0)
}

/// Build progress on stderr: a line as each step starts and ends, and the
/// steps' own output as it comes.
fn show_event(event: Event<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = match event {
        Event::StepStarted { index, total, text } => {
            writeln!(err, "[{index}/{total}] {text}")
        }
        Event::StepFinished(r) => {
            let status = match r.status {
                StepStatus::Cached => "cached",
                StepStatus::Executed => "executed",
                StepStatus::WouldRun => "would run",
            };
            let layer = r
                .layer_bytes
                .map(|b| format!(", layer {}", human_bytes(b)))
                .unwrap_or_default();
            let untrusted = r
                .untrusted
                .as_ref()
                .map(|u| {
                    format!(
                        "\n[{}] untrusted: a cached result is {}; not used",
                        r.index, u.reason
                    )
                })
                .unwrap_or_default();
            writeln!(
                err,
                "[{}] {status} in {:.2} s{layer}, uploaded {}, downloaded {}  key {}{untrusted}",
                r.index,
                r.seconds,
                human_bytes(r.uploaded_bytes),
                human_bytes(r.downloaded_bytes),
                r.key
            )
        }
        Event::Output(_, bytes) => err.write_all(bytes),
        Event::Note(note) => writeln!(err, "strata: note: {note}"),
        Event::Base { image, pinned } if image != pinned => {
            writeln!(err, "FROM {image}: {pinned}")
        }
        Event::Base { .. } => Ok(()),
    };
}

fn print_build_report(report: &BuildReport, json: bool, dry_run: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
    } else if dry_run {
        for s in &report.steps {
            let status = if s.status == StepStatus::Cached {
                "cached   "
            } else {
                "would run"
            };
            writeln!(
                out,
                "{status}  {}  line {}: {}",
                s.key, s.line, s.instruction
            )?;
            if let Some(u) = &s.untrusted {
                writeln!(out, "           untrusted: a cached result is {}", u.reason)?;
            }
        }
    } else if let Some(d) = &report.manifest_digest {
        if let Some(pushed) = &report.pushed {
            eprintln!("strata: pushed {pushed}");
        }
        writeln!(out, "{d}")?;
    }
    Ok(())
}
