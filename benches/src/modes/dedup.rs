//! `strata bench dedup`: push a generated corpus's builds in order and show,
//! per build, the bytes offered, the bytes sent, the bytes the store newly
//! holds, and the dedup and compression ratios: how much a shared cache
//! saves as an image evolves.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use strata_client::Client;

use crate::corpus::{Corpus, CorpusSpec};
use crate::run::{BenchContext, human, timed_push, write_salted};
use crate::stats::mb_per_s;

/// One build's figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BuildRow {
    pub build: usize,
    /// Bytes of the build's layer tars.
    pub offered_bytes: u64,
    /// Chunk bytes sent over the wire (compressed).
    pub sent_bytes: u64,
    /// Raw bytes of chunks the store did not hold before this build.
    pub new_bytes: u64,
    /// Bytes the store wrote for them (compressed).
    pub stored_bytes: u64,
    /// Offered over new: how many times over the build's bytes were already held.
    pub dedup_ratio: f64,
    /// New raw bytes over stored bytes.
    pub compression_ratio: f64,
    /// Sent over offered.
    pub sent_fraction: f64,
    pub push_seconds: f64,
    pub mb_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DedupReport {
    pub seed: u64,
    pub builds: Vec<BuildRow>,
    pub total_offered_bytes: u64,
    pub total_stored_bytes: u64,
    /// Everything offered over everything stored.
    pub overall_ratio: f64,
}

/// Pushes every layer of the corpus's builds in order; `salt` XORs the
/// bytes (see [`write_salted`]) so a remote server starts from nothing.
pub async fn push_corpus(
    ctx: &BenchContext,
    client: &Client,
    spec: CorpusSpec,
    salt: u8,
) -> Result<(Vec<BuildRow>, Vec<String>)> {
    let work = tempfile::Builder::new().prefix("strata-bench-").tempdir()?;
    let builds_wanted = spec.builds;
    let mut corpus = Corpus::new(spec)?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    while let Some(build) = corpus.next_build() {
        if build.index > 0 && ctx.out_of_time() {
            notes.push(format!(
                "time budget reached: {} of {builds_wanted} builds pushed",
                build.index
            ));
            break;
        }
        let before = client.stats().await?;
        let (mut sent, mut took) = (0u64, Duration::ZERO);
        for layer in &build.layers {
            let path = work.path().join(layer.name);
            write_salted(&path, &layer.tar, salt)?;
            let (report, t) = timed_push(client, &path).await?;
            sent += report.sent_bytes;
            took += t;
        }
        let after = client.stats().await?;
        let offered = build.bytes();
        let new_bytes = after.chunk_bytes.saturating_sub(before.chunk_bytes);
        let stored = after.stored_bytes.saturating_sub(before.stored_bytes);
        let row = BuildRow {
            build: build.index,
            offered_bytes: offered,
            sent_bytes: sent,
            new_bytes,
            stored_bytes: stored,
            dedup_ratio: offered as f64 / new_bytes.max(1) as f64,
            compression_ratio: new_bytes as f64 / stored.max(1) as f64,
            sent_fraction: sent as f64 / offered.max(1) as f64,
            push_seconds: took.as_secs_f64(),
            mb_per_s: mb_per_s(offered, took.as_secs_f64()),
        };
        ctx.say(format!(
            "build {}: offered {}, sent {} ({:.1}%), stored {}",
            row.build,
            human(offered),
            human(sent),
            row.sent_fraction * 100.0,
            human(stored)
        ));
        rows.push(row);
    }
    Ok((rows, notes))
}

pub async fn run(ctx: &BenchContext, spec: CorpusSpec) -> Result<(DedupReport, Vec<String>)> {
    let server = ctx.start_server().await?;
    let client = server.client(ctx.client.clone()).await?;
    let seed = spec.seed;
    let salt = if server.is_local() {
        0
    } else {
        crate::run::fresh_salt(seed)
    };
    let (builds, mut notes) = push_corpus(ctx, &client, spec, salt).await?;
    if !server.is_local() {
        notes.push(
            "remote server: 'new' and 'stored' are the server's growth during each build, which includes other clients' writes".into(),
        );
    }
    drop(client);
    server.stop().await;
    let total_offered_bytes = builds.iter().map(|b| b.offered_bytes).sum();
    let total_stored_bytes = builds.iter().map(|b| b.stored_bytes).sum();
    Ok((
        DedupReport {
            seed,
            total_offered_bytes,
            total_stored_bytes,
            overall_ratio: total_offered_bytes as f64 / total_stored_bytes.max(1) as f64,
            builds,
        },
        notes,
    ))
}

pub fn print_table(report: &DedupReport) {
    println!(
        "{:>5} {:>11} {:>11} {:>7} {:>11} {:>11} {:>8} {:>8} {:>8}",
        "build", "offered", "sent", "sent %", "new", "stored", "dedup", "compr.", "MB/s"
    );
    for b in &report.builds {
        println!(
            "{:>5} {:>11} {:>11} {:>6.1}% {:>11} {:>11} {:>7.1}x {:>7.2}x {:>8.0}",
            b.build,
            human(b.offered_bytes),
            human(b.sent_bytes),
            b.sent_fraction * 100.0,
            human(b.new_bytes),
            human(b.stored_bytes),
            b.dedup_ratio,
            b.compression_ratio,
            b.mb_per_s
        );
    }
    println!(
        "all builds: offered {}, stored {}: {:.1}x smaller",
        human(report.total_offered_bytes),
        human(report.total_stored_bytes),
        report.overall_ratio
    );
}
