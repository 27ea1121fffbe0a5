//! `strata bench`'s command line: the modes, their flags, and the one
//! function the `strata` binary calls.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use strata_client::{ChunkerConfig, ClientConfig};
use strata_server::FsyncPolicy;

use crate::corpus::{BaseSource, CorpusSpec};
use crate::modes::{dedup, lookup, remote_build, sweep, transfer};
use crate::plot::sweep_svg;
use crate::run::{BenchContext, Document, parse_size};
use crate::server::ServerChoice;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: BenchMode,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Server to measure (http://host:port). Without it, a fresh server is
    /// started in this process on 127.0.0.1 over a temporary store, and
    /// removed afterwards.
    #[arg(long, env = "STRATA_SERVER", global = true)]
    pub server: Option<String>,
    /// Bearer token for a --server started with --tokens (needs read,
    /// cas-write and, for `lookup`, result-write).
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM file of the CA of an https:// --server (default: system roots).
    #[arg(long, value_name = "FILE", env = "STRATA_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Stop starting new work after this many seconds (what has been
    /// measured is reported, with a note).
    #[arg(long, default_value_t = 900, global = true)]
    pub max_seconds: u64,
    /// Sync policy of the local server.
    #[arg(long, value_enum, default_value_t = Fsync::Always, global = true)]
    pub fsync: Fsync,
    /// Average chunk size in KiB (sweep: see its own --chunk-kib).
    #[arg(long, default_value_t = 64, global = true)]
    pub chunk_kib: u32,
    /// zstd level for new chunks.
    #[arg(long, default_value_t = 1, global = true)]
    pub zstd_level: i32,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1, global = true)]
    pub seed: u64,
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Fsync {
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub enum BenchMode {
    /// Push new and already-stored data vs `zstd -1 -T0` and `b3sum`.
    Push(TransferArgs),
    /// Pull vs `zstd -d`.
    Pull(TransferArgs),
    /// Step-key lookups/s and latency at several concurrencies.
    Lookup(LookupArgs),
    /// Push a generated series of image builds; dedup per build.
    Dedup(CorpusArgs),
    /// The corpus across chunk sizes and zstd levels; names the best.
    Sweep(SweepArgs),
    /// A fully cached build from a fresh client across a slow link (a
    /// delaying proxy on loopback): seconds and round trips waited for.
    RemoteBuild(RemoteBuildArgs),
}

#[derive(Args, Debug)]
pub struct RemoteBuildArgs {
    /// Round trip time the link adds, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub rtt_ms: u64,
    /// Timed builds over each link.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    /// Bytes to move, e.g. 1GiB, 256MiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,
    #[arg(long, value_enum, default_value_t = transfer::DataKind::Usr)]
    pub data: transfer::DataKind,
    /// Timed repeats of each operation.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

#[derive(Args, Debug)]
pub struct LookupArgs {
    /// Step results recorded before measuring.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Concurrent callers, one measurement per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 256])]
    pub concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
}

#[derive(Args, Debug)]
pub struct CorpusArgs {
    /// Builds in the series [dedup: 10, sweep: 5].
    #[arg(long)]
    pub builds: Option<usize>,
    /// Bytes per build: 75% base layer, 20% dependencies, 5% application
    /// [dedup: 256MiB, sweep: 128MiB].
    #[arg(long, value_parser = parse_size)]
    pub build_size: Option<u64>,
    /// Directory whose files make the base layer.
    #[arg(long, default_value = "/usr", conflicts_with = "synthetic_base")]
    pub base_dir: PathBuf,
    /// Generate the base layer instead of reading host files.
    #[arg(long)]
    pub synthetic_base: bool,
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub corpus: CorpusArgs,
    /// Average chunk sizes to try, KiB.
    #[arg(long = "chunk-sizes", value_delimiter = ',', default_values_t = [16u32, 32, 64, 128, 256])]
    pub chunk_sizes: Vec<u32>,
    /// zstd levels to try.
    #[arg(long, value_delimiter = ',', default_values_t = [1i32, 3, 9])]
    pub levels: Vec<i32>,
    /// Only settings at least this fraction of the fastest one's speed can
    /// be recommended.
    #[arg(long, default_value_t = 0.5)]
    pub min_speed: f64,
    /// Write the throughput-vs-reduction chart here (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

impl CorpusArgs {
    /// The corpus, with the mode's defaults for what was not given.
    fn spec(&self, seed: u64, builds: usize, build_size: u64) -> CorpusSpec {
        let base = if self.synthetic_base {
            BaseSource::Synthetic
        } else {
            BaseSource::Host(self.base_dir.clone())
        };
        CorpusSpec::sized(
            seed,
            self.builds.unwrap_or(builds),
            self.build_size.unwrap_or(build_size),
            base,
        )
    }
}

/// A throwaway signing key for the step results a benchmark records (and
/// looks up, verifying each hit as a build does). Not secret: it is made
/// from the time, and nothing outside the run trusts it.
fn bench_signer() -> strata_client::TrustPolicy {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = strata_proto::Digest::of(format!("strata bench signer {nanos}").as_bytes());
    let key = strata_proto::SigningKey::from_seed(seed.as_bytes()).ok();
    strata_client::TrustPolicy::new(key, [])
}

/// Runs one `strata bench` invocation: measures, prints a table or JSON.
pub async fn run(args: BenchArgs) -> Result<()> {
    let c = &args.common;
    let client = ClientConfig {
        chunking: ChunkerConfig::with_average(
            c.chunk_kib
                .checked_mul(1024)
                .context("--chunk-kib is too large")?,
        ),
        zstd_level: c.zstd_level,
        token: c
            .token
            .as_deref()
            .map(strata_client::BearerToken::new)
            .transpose()?,
        tls_ca: c.tls_ca.clone(),
        trust: bench_signer(),
        ..ClientConfig::default()
    };
    client.validate()?;
    let server = match &c.server {
        Some(url) if url.contains("://") => ServerChoice::Remote(url.clone()),
        Some(url) => ServerChoice::Remote(format!("http://{url}")),
        None => ServerChoice::Local {
            fsync: match c.fsync {
                Fsync::Always => FsyncPolicy::Always,
                Fsync::Never => FsyncPolicy::Never,
            },
        },
    };
    let mut ctx = BenchContext::new(server, client, Duration::from_secs(c.max_seconds));
    ctx.progress = !c.quiet;

    match &args.mode {
        BenchMode::Push(t) | BenchMode::Pull(t) => {
            let direction = if matches!(args.mode, BenchMode::Push(_)) {
                transfer::Direction::Push
            } else {
                transfer::Direction::Pull
            };
            let opts = transfer::TransferOptions {
                size: t.size,
                data: t.data,
                repeats: t.repeats,
                seed: c.seed,
            };
            let (report, notes) = transfer::run(&ctx, &opts, direction).await?;
            let mode = if direction == transfer::Direction::Push {
                "push"
            } else {
                "pull"
            };
            emit(&ctx, c.json, mode, report, notes, transfer::print_table)
        }
        BenchMode::Lookup(l) => {
            let opts = lookup::LookupOptions {
                keys: l.keys,
                concurrency: l.concurrency.clone(),
                seconds: l.seconds,
                seed: c.seed,
            };
            let (report, notes) = lookup::run(&ctx, &opts).await?;
            emit(&ctx, c.json, "lookup", report, notes, lookup::print_table)
        }
        BenchMode::Dedup(d) => {
            let (report, notes) = dedup::run(&ctx, d.spec(c.seed, 10, 256 << 20)).await?;
            emit(&ctx, c.json, "dedup", report, notes, dedup::print_table)
        }
        BenchMode::Sweep(s) => {
            let opts = sweep::SweepOptions {
                chunk_kib: s.chunk_sizes.clone(),
                levels: s.levels.clone(),
                min_speed: s.min_speed,
            };
            let spec = s.corpus.spec(c.seed, 5, 128 << 20);
            let spec_size = spec.base_bytes + spec.deps_bytes + spec.app_bytes;
            let (report, notes) = sweep::run(&ctx, spec, &opts).await?;
            if let Some(path) = &s.plot {
                let title = format!(
                    "strata bench sweep: {} builds of {} MiB",
                    report.builds,
                    spec_size >> 20
                );
                std::fs::write(path, sweep_svg(&report, &title))
                    .with_context(|| format!("writing the plot to {}", path.display()))?;
                ctx.say(format!("plot written to {}", path.display()));
            }
            emit(&ctx, c.json, "sweep", report, notes, sweep::print_table)
        }
        BenchMode::RemoteBuild(r) => {
            let opts = remote_build::RemoteBuildOptions {
                rtt: Duration::from_millis(r.rtt_ms),
                repeats: r.repeats,
            };
            let (report, notes) = remote_build::run(&ctx, &opts).await?;
            emit(
                &ctx,
                c.json,
                "remote-build",
                report,
                notes,
                remote_build::print_table,
            )
        }
    }
}

fn emit<T: serde::Serialize>(
    ctx: &BenchContext,
    json: bool,
    mode: &'static str,
    report: T,
    notes: Vec<String>,
    table: fn(&T),
) -> Result<()> {
    if json {
        return Document::new(ctx, mode, report, notes).print_json();
    }
    table(&report);
    for n in notes {
        println!("note: {n}");
    }
    Ok(())
}
