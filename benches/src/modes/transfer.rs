//! `strata bench push` and `strata bench pull`: end-to-end throughput over
//! gRPC, each beside the baseline for the same bytes measured in the same
//! run — push of new data vs `zstd -1 -T0`, re-push of stored data vs
//! `b3sum`, pull vs `zstd -d` — as min/median/max over repeats, with the
//! ratio of medians.
//!
//! Repeats interleave contenders (baseline, then Strata, each repeat) so
//! that drift in the machine's load touches both alike.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use strata_client::Progress;

use crate::corpus::host_tar;
use crate::data::{random_bytes, realistic_corpus};
use crate::run::{BenchContext, fresh_salt, human, timed_push, write_salted};
use crate::stats::{Spread, mb_per_s};
use crate::tools::{Baselines, ensure_baseline_tools};

/// What bytes to move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataKind {
    /// A tar of /usr: real binaries, libraries and text, like a base layer.
    Usr,
    /// Generated layer-like bytes (text, tables, noise, repeats).
    Corpus,
    /// Incompressible noise.
    Random,
    /// All zeros.
    Zero,
}

impl std::fmt::Display for DataKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

/// Which operations a run times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Push,
    Pull,
}

#[derive(Clone, Debug)]
pub struct TransferOptions {
    pub size: u64,
    pub data: DataKind,
    pub repeats: usize,
    pub seed: u64,
}

/// One operation beside its baseline.
#[derive(Clone, Debug, Serialize)]
pub struct TransferRow {
    pub operation: &'static str,
    pub seconds: Spread,
    /// MB/s (10^6 bytes) at the median time.
    pub mb_per_s: f64,
    pub baseline: &'static str,
    pub baseline_seconds: Spread,
    pub baseline_mb_per_s: f64,
    /// Strata's median time over the baseline's: below 1 is faster.
    pub time_ratio: f64,
    /// The larger of the two spreads' noise (half range over median): two
    /// runs agree when their ratios differ by less than about this much.
    pub noise: f64,
    /// Chunk bytes sent per run (compressed), median.
    pub sent_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TransferReport {
    pub data: DataKind,
    pub bytes: u64,
    pub repeats: usize,
    pub rows: Vec<TransferRow>,
}

/// Samples of one contender.
#[derive(Default)]
struct Samples {
    times: Vec<Duration>,
    sent: Vec<u64>,
}

impl Samples {
    fn row(
        &self,
        operation: &'static str,
        bytes: u64,
        baseline: &'static str,
        base: &Samples,
    ) -> TransferRow {
        let seconds = Spread::of(&self.times);
        let baseline_seconds = Spread::of(&base.times);
        let mut sent = self.sent.clone();
        sent.sort_unstable();
        TransferRow {
            operation,
            seconds,
            mb_per_s: mb_per_s(bytes, seconds.median),
            baseline,
            baseline_seconds,
            baseline_mb_per_s: mb_per_s(bytes, baseline_seconds.median),
            time_ratio: seconds.median / baseline_seconds.median,
            noise: seconds.noise().max(baseline_seconds.noise()),
            sent_bytes: sent.get(sent.len() / 2).copied().unwrap_or(0),
        }
    }
}

/// Generates the input bytes.
fn input_bytes(opts: &TransferOptions) -> Result<Vec<u8>> {
    let len = usize::try_from(opts.size)?;
    Ok(match opts.data {
        DataKind::Usr => {
            let mut tar = host_tar(std::path::Path::new("/usr"), opts.size)?;
            tar.truncate(len);
            tar
        }
        DataKind::Corpus => realistic_corpus(len, opts.seed),
        DataKind::Random => random_bytes(len, opts.seed),
        DataKind::Zero => vec![0; len],
    })
}

pub async fn run(
    ctx: &BenchContext,
    opts: &TransferOptions,
    direction: Direction,
) -> Result<(TransferReport, Vec<String>)> {
    if opts.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    ensure_baseline_tools()?;
    let work = tempfile::Builder::new().prefix("strata-bench-").tempdir()?;
    let input: PathBuf = work.path().join("input");
    let compressed = work.path().join("input.zst");
    ctx.say(format!(
        "preparing {} of {} data",
        human(opts.size),
        opts.data
    ));
    let bytes = input_bytes(opts)?;
    let size = bytes.len() as u64;
    write_salted(&input, &bytes, 0)?;
    let baselines = Baselines {
        input: &input,
        compressed: &compressed,
    };
    baselines.prepare()?;
    // Read once so every contender starts from the page cache.
    baselines.b3sum()?;

    let mut notes = Vec::new();
    let (mut zstd_c, mut b3, mut zstd_d) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut new, mut again, mut pull) =
        (Samples::default(), Samples::default(), Samples::default());
    // The pull direction pushes once, untimed, and pulls that object.
    let mut pull_source = None;
    for repeat in 0..opts.repeats {
        if repeat > 0 && ctx.out_of_time() {
            notes.push(format!(
                "time budget reached: {repeat} of {} repeats run",
                opts.repeats
            ));
            break;
        }
        let started = Instant::now();
        match direction {
            Direction::Push => {
                zstd_c.times.push(baselines.zstd_compress()?);
                b3.times.push(baselines.b3sum()?);
                let server = ctx.start_server().await?;
                let client = server.client(ctx.client.clone()).await?;
                if !server.is_local() {
                    // The data must be new to this server: salt it.
                    write_salted(&input, &bytes, fresh_salt(repeat as u64))?;
                }
                let (first, t) = timed_push(&client, &input).await?;
                if first.sent_bytes == 0 && size > 0 {
                    notes.push(format!(
                        "repeat {repeat}: the server already held this data; its push-new time is not of new data"
                    ));
                }
                new.times.push(t);
                new.sent.push(first.sent_bytes);
                // Untimed: the server proves the object before a re-push
                // can find it whole.
                server.settle_verification().await?;
                let (second, t) = timed_push(&client, &input).await?;
                again.times.push(t);
                again.sent.push(second.sent_bytes);
                drop(client);
                server.stop().await;
            }
            Direction::Pull => {
                zstd_d.times.push(baselines.zstd_decompress()?);
                if pull_source.is_none() {
                    let server = ctx.start_server().await?;
                    let client = server.client(ctx.client.clone()).await?;
                    let (report, _) = timed_push(&client, &input).await?;
                    let digest = report.digest;
                    pull_source = Some((server, client, digest));
                }
                if let Some((_, client, digest)) = &pull_source {
                    let start = Instant::now();
                    let (report, _) = client
                        .pull(digest, std::io::sink(), &Progress::new())
                        .await?;
                    pull.times.push(start.elapsed());
                    pull.sent.push(report.received_bytes);
                }
            }
        }
        ctx.say(format!(
            "repeat {}/{} done in {:.1} s",
            repeat + 1,
            opts.repeats,
            started.elapsed().as_secs_f64()
        ));
    }
    if let Some((server, client, _)) = pull_source {
        drop(client);
        server.stop().await;
    }

    let rows = match direction {
        Direction::Push => vec![
            new.row("push, new data", size, "zstd -1 -T0", &zstd_c),
            again.row("push, already stored", size, "b3sum", &b3),
        ],
        Direction::Pull => vec![pull.row("pull", size, "zstd -d", &zstd_d)],
    };
    Ok((
        TransferReport {
            data: opts.data,
            bytes: size,
            repeats: new.times.len().max(pull.times.len()),
            rows,
        },
        notes,
    ))
}

/// The table `strata bench push|pull` prints.
pub fn print_table(report: &TransferReport) {
    println!(
        "{} of {} data, {} repeats; seconds as min / median / max; ratio of medians (below 1: faster than the baseline)",
        human(report.bytes),
        report.data,
        report.repeats
    );
    println!(
        "{:<22} {:>24} {:>9}  {:<12} {:>24} {:>9} {:>7} {:>6}",
        "operation", "strata s", "MB/s", "baseline", "baseline s", "MB/s", "ratio", "noise"
    );
    for r in &report.rows {
        let s = |x: &Spread| format!("{:.3} {:.3} {:.3}", x.min, x.median, x.max);
        println!(
            "{:<22} {:>24} {:>9.0}  {:<12} {:>24} {:>9.0} {:>6.2}x {:>5.0}%",
            r.operation,
            s(&r.seconds),
            r.mb_per_s,
            r.baseline,
            s(&r.baseline_seconds),
            r.baseline_mb_per_s,
            r.time_ratio,
            r.noise * 100.0
        );
    }
}
