//! `strata`: the cache server, and the client commands that push, pull and
//! inspect objects in it. Every failure ends with one line on stderr saying
//! what failed and why, and a non-zero exit status.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use strata_builder::build::{BuildError, BuildOptions, BuildReport, Event, StepStatus};
use strata_builder::progress::{ProgressLine, human_bytes};
use strata_builder::target::Target;
use strata_client::{ChunkerConfig, ClientConfig, ClientError, Progress};
use strata_proto::Digest;
use strata_sandbox as sandbox;
use strata_server::{FsyncPolicy, ServerConfig, Store, StoreConfig};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Content-addressed build cache and layer store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cache server in the foreground.
    Serve(ServeArgs),
    /// Store a file (or stdin) and print its digest.
    Push(PushArgs),
    /// Write a stored object to a file (or stdout).
    Pull(PullArgs),
    /// Show the store's figures, or one object's size.
    Stat(StatArgs),
    /// Build an OCI image from a Dockerfile, asking the cache before each step.
    Build(BuildArgs),
    /// Measure push, pull, lookups, dedup and settings, each beside a
    /// baseline from the same run (see BENCHMARKS.md).
    Bench(strata_benches::BenchArgs),
}

#[derive(Args)]
struct ServerArg {
    /// Cache server URL (http://host:port). Without it, and without
    /// STRATA_SERVER, the embedded store in the user's cache directory is used.
    #[arg(long, env = "STRATA_SERVER", global = true)]
    server: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7171")]
    listen: String,
    /// Directory holding the segments and the index.
    #[arg(long)]
    data: PathBuf,
    /// When appended records are synced to disk before being acknowledged.
    #[arg(long, value_enum, default_value_t = Fsync::Always)]
    fsync: Fsync,
    /// Rebuild the index from the segment files before serving.
    #[arg(long)]
    rebuild_index: bool,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, default_value_t = ServerConfig::default().max_message_bytes)]
    max_message_bytes: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fsync {
    /// Sync every commit group: an acknowledged chunk survives power loss.
    Always,
    /// Leave syncing to the OS: faster, survives a crash of the process only.
    Never,
}

#[derive(Args)]
struct TransferArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Average chunk size in KiB (every client of a cache should agree).
    #[arg(long, default_value_t = 64)]
    chunk_kib: u32,
    /// zstd level for new chunks.
    #[arg(long, default_value_t = 1)]
    zstd_level: i32,
}

impl TransferArgs {
    fn client_config(&self) -> Result<ClientConfig> {
        let avg = self
            .chunk_kib
            .checked_mul(1024)
            .context("--chunk-kib is too large")?;
        Ok(ClientConfig {
            chunking: ChunkerConfig::with_average(avg),
            zstd_level: self.zstd_level,
            ..ClientConfig::default()
        })
    }
}

#[derive(Args)]
struct PushArgs {
    /// File to store; `-` reads stdin.
    file: PathBuf,
    /// Print one JSON object with the transfer figures instead of the digest.
    #[arg(long)]
    json: bool,
    /// Media type recorded in the manifest.
    #[arg(long, default_value = "application/octet-stream")]
    media_type: String,
    #[command(flatten)]
    transfer: TransferArgs,
}

#[derive(Args)]
struct PullArgs {
    /// Object digest, `b3:<hex>`.
    digest: String,
    /// Output file; `-` writes to stdout.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    transfer: TransferArgs,
}

#[derive(Args)]
struct BuildArgs {
    /// The build context directory.
    context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    dockerfile: Option<PathBuf>,
    /// A build argument, NAME=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    build_args: Vec<String>,
    /// Write the image to an OCI layout: oci:DIR[:TAG] (tag default "latest").
    #[arg(long, value_name = "oci:DIR[:TAG]")]
    output: Option<String>,
    /// Keep the image in the cache as NAME[:TAG] (tag default "latest"),
    /// for `FROM NAME[:TAG]` in later builds, here or on any client of the
    /// same server.
    #[arg(long, value_name = "NAME[:TAG]")]
    tag: Option<String>,
    /// Compute the keys, look them up and print the plan; run and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print a JSON report (per step: key, cached or executed, seconds, bytes).
    #[arg(long)]
    json: bool,
    /// Time limit of one RUN step, in seconds.
    #[arg(long, default_value_t = 3600)]
    step_timeout: u64,
    /// Let `RUN --network=host` steps run (they are marked non-hermetic).
    #[arg(long)]
    allow_host_network: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
struct StatArgs {
    /// An object digest; without it, the whole store's figures.
    digest: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

fn main() -> ExitCode {
    // A sandbox stage must start before any thread does (user namespaces
    // need a single-threaded process): dispatch it before anything else.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == sandbox::REEXEC_ARG)
    {
        sandbox::reexec_main();
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: error: {}", one_line(&e));
            // A failed RUN ends the build with the step's own exit code.
            let code = e
                .downcast_ref::<BuildError>()
                .map_or(1, BuildError::exit_code);
            ExitCode::from(u8::try_from(code).ok().filter(|&c| c != 0).unwrap_or(1))
        }
    }
}

/// `context: cause: cause`, without repeating a cause its parent quoted.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Push(args) => push(args).await,
        Command::Pull(args) => pull(args).await,
        Command::Stat(args) => stat(args).await,
        Command::Build(args) => build_cmd(args).await,
        Command::Bench(args) => strata_benches::run_cli(args).await,
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let addr: SocketAddr = tokio::net::lookup_host(&args.listen)
        .await
        .with_context(|| format!("cannot resolve listen address {:?}", args.listen))?
        .next()
        .with_context(|| format!("listen address {:?} resolves to nothing", args.listen))?;
    // Bind before opening the store: a taken port should not cost a recovery scan.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let config = StoreConfig {
        fsync: match args.fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Never => FsyncPolicy::Never,
        },
        rebuild_index: args.rebuild_index,
        ..StoreConfig::default()
    };
    let data = args.data.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data, config))
        .await
        .context("opening the store")??;
    let stats = store.stats();
    let local = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        data = %args.data.display(),
        chunks = stats.chunks,
        objects = stats.manifests,
        "store open"
    );
    // Tests and scripts read this line to learn the port of `--listen :0`.
    eprintln!("strata: listening on {local}");
    let server_config = ServerConfig {
        max_message_bytes: args.max_message_bytes,
        ..ServerConfig::default()
    };
    strata_server::serve(store, server_config, listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

async fn push(args: PushArgs) -> Result<()> {
    let config = args.transfer.client_config()?;
    let progress = Arc::new(Progress::new());
    let file = if args.file == Path::new("-") {
        None
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        if let Ok(meta) = file.metadata() {
            progress.set_total(meta.len());
        }
        Some(file)
    };
    let target = Target::open(args.transfer.server.server.as_deref(), config).await?;
    let start = Instant::now();
    let line = ProgressLine::start("pushing", progress.clone());
    let client = &target.client;
    let report = match file {
        // Regular files can be re-read, so their SHA-256 is computed only if needed.
        Some(f) if f.metadata().is_ok_and(|m| m.is_file()) => {
            client.push_file(f, &args.media_type, &progress).await
        }
        Some(f) => client.push(f, &args.media_type, &progress).await,
        None => {
            client
                .push(std::io::stdin(), &args.media_type, &progress)
                .await
        }
    };
    line.finish().await;
    let report = report.context("push failed")?;
    target.close().await?;
    let digest = report.digest.context("push finished without a digest")?;
    if args.json {
        let json = serde_json::json!({
            "digest": digest.to_string(),
            "total_bytes": report.total_bytes,
            "sent_bytes": report.sent_bytes,
            "chunks": report.chunks,
            "reused_chunks": report.reused_chunks,
            "stored_chunks": report.stored_chunks,
            "seconds": start.elapsed().as_secs_f64(),
        });
        println!("{json}");
    } else {
        println!("{digest}");
    }
    Ok(())
}

fn parse_digest(text: &str) -> Result<Digest> {
    text.parse()
        .with_context(|| format!("{text:?} is not an object digest (expected b3:<64 hex digits>)"))
}

async fn pull(args: PullArgs) -> Result<()> {
    let digest = parse_digest(&args.digest)?;
    let config = args.transfer.client_config()?;
    let target = Target::open(args.transfer.server.server.as_deref(), config).await?;
    let progress = Arc::new(Progress::new());
    let line = ProgressLine::start("pulling", progress.clone());
    let result = if args.output == Path::new("-") {
        target
            .client
            .pull(&digest, std::io::stdout(), &progress)
            .await
            .map(|_| ())
    } else {
        pull_to_file(&target, &digest, &args.output, &progress).await
    };
    line.finish().await;
    let closed = target.close().await;
    match result {
        Err(ClientError::NotFound(_)) => {
            bail!("unknown digest {digest}: the cache does not hold it")
        }
        r => r.with_context(|| format!("pull of {digest} failed"))?,
    }
    closed
}

/// Pulls into a temporary file beside `output`, renamed into place only
/// once every byte is verified: a failed pull leaves no partial file.
async fn pull_to_file(
    target: &Target,
    digest: &Digest,
    output: &Path,
    progress: &Progress,
) -> Result<(), ClientError> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io_err = |what: &str, e| ClientError::Io {
        what: format!("{what} {}", output.display()),
        source: e,
    };
    let temp = tempfile::Builder::new()
        .prefix(".strata-pull-")
        .tempfile_in(dir)
        .map_err(|e| io_err("cannot create a file beside", e))?;
    let file = temp
        .reopen()
        .map_err(|e| io_err("cannot create a file beside", e))?;
    target
        .client
        .pull(
            digest,
            std::io::BufWriter::with_capacity(1 << 20, file),
            progress,
        )
        .await?;
    temp.persist(output)
        .map_err(|e| io_err("cannot write", e.error))?;
    Ok(())
}

async fn stat(args: StatArgs) -> Result<()> {
    let target = Target::open(args.server.server.as_deref(), ClientConfig::default()).await?;
    let result = match &args.digest {
        Some(text) => stat_object(&target, parse_digest(text)?, args.json).await,
        None => stat_store(&target, args.json).await,
    };
    target.close().await?;
    result
}

async fn stat_object(target: &Target, digest: Digest, json: bool) -> Result<()> {
    let manifest = match target.client.get_manifest(&digest).await {
        Err(ClientError::NotFound(_)) => {
            bail!("unknown digest {digest}: the cache does not hold it")
        }
        r => r.context("stat failed")?,
    };
    let sha256: String = manifest
        .sha256()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if json {
        let value = serde_json::json!({
            "digest": digest.to_string(),
            "total_bytes": manifest.total_length(),
            "chunks": manifest.chunks().len(),
            "sha256": format!("sha256:{sha256}"),
            "media_type": manifest.media_type(),
        });
        println!("{value}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "digest      {digest}")?;
        writeln!(
            out,
            "size        {} ({} bytes)",
            human_bytes(manifest.total_length()),
            manifest.total_length()
        )?;
        writeln!(out, "chunks      {}", manifest.chunks().len())?;
        writeln!(out, "sha256      sha256:{sha256}")?;
        writeln!(out, "media type  {}", manifest.media_type())?;
    }
    Ok(())
}

async fn stat_store(target: &Target, json: bool) -> Result<()> {
    let s = target.client.stats().await.context("stat failed")?;
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let dedup = ratio(s.logical_bytes, s.chunk_bytes);
    let compression = ratio(s.chunk_bytes, s.stored_bytes);
    if json {
        let value = serde_json::json!({
            "objects": s.manifests,
            "chunks": s.chunks,
            "logical_bytes": s.logical_bytes,
            "chunk_bytes": s.chunk_bytes,
            "stored_bytes": s.stored_bytes,
            "segments": s.segments,
            "segment_bytes": s.segment_bytes,
            "dedup_ratio": dedup,
            "compression_ratio": compression,
        });
        println!("{value}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "objects            {}", s.manifests)?;
        writeln!(out, "chunks             {}", s.chunks)?;
        writeln!(
            out,
            "logical bytes      {} (all objects, as pushed)",
            human_bytes(s.logical_bytes)
        )?;
        writeln!(
            out,
            "unique bytes       {} (distinct chunks)",
            human_bytes(s.chunk_bytes)
        )?;
        writeln!(
            out,
            "stored bytes       {} (compressed)",
            human_bytes(s.stored_bytes)
        )?;
        writeln!(out, "dedup ratio        {dedup:.2}x")?;
        writeln!(out, "compression ratio  {compression:.2}x")?;
        writeln!(
            out,
            "segments           {} ({})",
            s.segments,
            human_bytes(s.segment_bytes)
        )?;
    }
    Ok(())
}

async fn build_cmd(args: BuildArgs) -> Result<()> {
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
    let output = args.output.as_deref().map(parse_oci_output).transpose()?;
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => 0,
    };
    let opts = BuildOptions {
        dockerfile,
        context: args.context.clone(),
        build_args,
        output,
        tag: args.tag.as_deref().map(|t| {
            if t.rsplit_once(':')
                .is_some_and(|(_, tag)| !tag.contains('/'))
            {
                t.to_string()
            } else {
                format!("{t}:latest")
            }
        }),
        dry_run: args.dry_run,
        epoch,
        step_timeout: Some(std::time::Duration::from_secs(args.step_timeout)),
        allow_host_network: args.allow_host_network,
        scratch: std::env::temp_dir(),
        sandbox_helper: None,
    };
    let target = Target::open(args.server.server.as_deref(), ClientConfig::default()).await?;
    let result = strata_builder::build::build(&target.client, &opts, &mut show_event).await;
    target.close().await?;
    let report = result?;
    print_build_report(&report, args.json, args.dry_run)
}

/// `oci:DIR[:TAG]`, the tag after the last `:` of the part after `oci:`.
fn parse_oci_output(text: &str) -> Result<(PathBuf, String)> {
    let rest = text
        .strip_prefix("oci:")
        .with_context(|| format!("--output {text:?}: expected oci:DIR[:TAG]"))?;
    let (dir, tag) = match rest.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => (dir, tag),
        _ => (rest, "latest"),
    };
    if dir.is_empty() {
        bail!("--output {text:?}: the directory is missing");
    }
    Ok((PathBuf::from(dir), tag.to_string()))
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
            writeln!(
                err,
                "[{}] {status} in {:.2} s{layer}, uploaded {}, downloaded {}  key {}",
                r.index,
                r.seconds,
                human_bytes(r.uploaded_bytes),
                human_bytes(r.downloaded_bytes),
                r.key
            )
        }
        Event::Output(_, bytes) => err.write_all(bytes),
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
        }
    } else if let Some(d) = &report.manifest_digest {
        writeln!(out, "{d}")?;
    }
    Ok(())
}
