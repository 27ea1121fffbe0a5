//! `strata bench push` and `strata bench pull`: end-to-end throughput over
//! gRPC, each beside the baseline for the same bytes measured in the same
//! run — push of new data vs `zstd -1 -T0`, re-push of stored data and of
//! the same file with 1 MiB changed in its middle vs `b3sum`, pull (to a
//! sink and to a file) vs `zstd -d` — as min/median/max over repeats, with
//! the ratio of medians. Run as `strata bench`, each mode also reports the
//! peak RSS of the `strata` CLI pushing or pulling the data as a user runs
//! it (its own process, against the bench's server), at the full size and a
//! quarter of it: memory that does not grow with the object is the goal.
//!
//! Repeats interleave contenders (baseline, then Strata, each repeat) so
//! that drift in the machine's load touches both alike.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use strata_client::Progress;

use crate::corpus::host_tar;
use crate::data::{random_bytes, realistic_corpus};
use crate::run::{BenchContext, fresh_salt, human, timed_push, write_salted};
use crate::stats::{Spread, mb_per_s};
use crate::tools::{Baselines, ensure_baseline_tools, peak_rss_of, time_command};

/// Bytes rewritten in the middle of the input for the changed-file re-push.
const CHANGED_BYTES: usize = 1 << 20;

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

/// Peak memory of one `strata` CLI process moving `bytes`.
#[derive(Clone, Debug, Serialize)]
pub struct RssRow {
    pub operation: &'static str,
    pub bytes: u64,
    pub peak_rss_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TransferReport {
    pub data: DataKind,
    pub bytes: u64,
    pub repeats: usize,
    pub rows: Vec<TransferRow>,
    /// Empty when not run as the `strata` binary (see the notes).
    pub peak_rss: Vec<RssRow>,
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
    let (mut changed, mut b3_changed) = (Samples::default(), Samples::default());
    let (mut pull_file, mut zstd_d_file) = (Samples::default(), Samples::default());
    let changed_input = work.path().join("input-changed");
    let pulled = work.path().join("pulled");
    let decompressed = work.path().join("decompressed");
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
                // The same file with fresh bytes in its middle: a re-push
                // that must find and send only what changed.
                write_changed_copy(&input, &changed_input, size, repeat as u64)?;
                b3_changed
                    .times
                    .push(time_command("b3sum", &[&changed_input.to_string_lossy()])?);
                let (third, t) = timed_push(&client, &changed_input).await?;
                changed.times.push(t);
                changed.sent.push(third.sent_bytes);
                drop(client);
                server.stop().await;
            }
            Direction::Pull => {
                zstd_d.times.push(baselines.zstd_decompress()?);
                if pull_source.is_none() {
                    let server = ctx.start_server().await?;
                    let client = server.client(ctx.client.clone()).await?;
                    let (report, _) = timed_push(&client, &input).await?;
                    // Untimed: the server's verifier reads the new object
                    // back (decode, SHA-256, BLAKE3) on the same cores;
                    // pulls timed meanwhile would measure that too.
                    server.settle_verification().await?;
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
                    zstd_d_file
                        .times
                        .push(baselines.zstd_decompress_to(&decompressed)?);
                    let start = Instant::now();
                    let report = client
                        .pull_to_file(digest, &pulled, &Progress::new())
                        .await?;
                    pull_file.times.push(start.elapsed());
                    pull_file.sent.push(report.received_bytes);
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
            changed.row("push, 1 MiB changed", size, "b3sum", &b3_changed),
        ],
        Direction::Pull => vec![
            pull.row("pull", size, "zstd -d", &zstd_d),
            pull_file.row("pull to a file", size, "zstd -d -o", &zstd_d_file),
        ],
    };
    let peak_rss = if ctx.out_of_time() {
        notes.push("time budget reached: peak RSS not measured".into());
        Vec::new()
    } else {
        cli_peak_rss(ctx, direction, &bytes, work.path(), &mut notes).await?
    };
    Ok((
        TransferReport {
            data: opts.data,
            bytes: size,
            repeats: new.times.len().max(pull.times.len()),
            rows,
            peak_rss,
        },
        notes,
    ))
}

/// Copies `input` to `output` with `CHANGED_BYTES` of fresh noise in the
/// middle (different per `attempt`, so each repeat's change is new).
fn write_changed_copy(input: &Path, output: &Path, size: u64, attempt: u64) -> Result<()> {
    std::fs::copy(input, output)?;
    let len = CHANGED_BYTES.min(usize::try_from(size)?);
    let at = (size - len as u64) / 2;
    let noise = random_bytes(len, (u64::from(fresh_salt(attempt)) << 32) | attempt);
    std::fs::OpenOptions::new()
        .write(true)
        .open(output)?
        .write_all_at(&noise, at)?;
    Ok(())
}

/// Peak RSS of the `strata` CLI (this very binary) pushing new data, or
/// pulling it to a file, at a quarter of the size and the full size, each
/// against a fresh server. Only when run as `strata bench`: another
/// binary (a test) cannot be asked to push.
async fn cli_peak_rss(
    ctx: &BenchContext,
    direction: Direction,
    bytes: &[u8],
    work: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<RssRow>> {
    let exe = std::env::current_exe()?;
    if exe.file_name().is_none_or(|n| n != "strata") {
        notes.push(format!(
            "peak RSS not measured: {} is not the strata binary",
            exe.display()
        ));
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    let file = work.join("rss-input");
    let out = work.join("rss-output");
    for len in [bytes.len() / 4, bytes.len()] {
        let server = ctx.start_server().await?;
        let salt = if server.is_local() {
            0
        } else {
            fresh_salt(len as u64)
        };
        write_salted(&file, &bytes[..len], salt)?;
        let file_arg = file.to_string_lossy();
        let (push_rss, stdout) = peak_rss_of(
            &exe,
            &["push", "--server", &server.url, "--json", &file_arg],
        )?;
        let json: serde_json::Value = serde_json::from_str(stdout.trim())?;
        let Some(digest) = json["digest"].as_str().map(str::to_owned) else {
            bail!("strata push --json printed no digest: {stdout}");
        };
        match direction {
            Direction::Push => rows.push(RssRow {
                operation: "strata push, new data",
                bytes: len as u64,
                peak_rss_bytes: push_rss,
            }),
            Direction::Pull => {
                let (pull_rss, _) = peak_rss_of(
                    &exe,
                    &[
                        "pull",
                        "--server",
                        &server.url,
                        &digest,
                        "-o",
                        &out.to_string_lossy(),
                    ],
                )?;
                rows.push(RssRow {
                    operation: "strata pull to a file",
                    bytes: len as u64,
                    peak_rss_bytes: pull_rss,
                });
            }
        }
        server.stop().await;
    }
    Ok(rows)
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
            "{:<22} {:>24} {:>9.0}  {:<12} {:>24} {:>9.0} {:>6.2}x {:>5.0}%  sent {}",
            r.operation,
            s(&r.seconds),
            r.mb_per_s,
            r.baseline,
            s(&r.baseline_seconds),
            r.baseline_mb_per_s,
            r.time_ratio,
            r.noise * 100.0,
            human(r.sent_bytes)
        );
    }
    for r in &report.peak_rss {
        println!(
            "peak RSS, {} of {}: {}",
            r.operation,
            human(r.bytes),
            human(r.peak_rss_bytes)
        );
    }
}
