//! `strata bench lookup`: step-key lookups per second and their latency
//! percentiles at several numbers of concurrent callers, half hits and half
//! misses, each beside the same callers making an empty gRPC call (the
//! standard health check) in the same run: the floor of any RPC on this
//! machine and connection.
//!
//! Every answer is checked: a hit that comes back as a miss, or the
//! reverse, fails the bench rather than flattering it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use strata_client::{Client, Progress};
use strata_proto::v1::Provenance;
use strata_proto::{Digest, StepResult};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::data::random_bytes;
use crate::run::BenchContext;
use crate::stats::Percentiles;

#[derive(Clone, Debug)]
pub struct LookupOptions {
    /// Step results recorded before measuring.
    pub keys: usize,
    /// Numbers of concurrent callers, one measurement each.
    pub concurrency: Vec<usize>,
    /// Seconds per measurement.
    pub seconds: f64,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LookupRow {
    pub callers: usize,
    pub lookups: u64,
    pub lookups_per_s: f64,
    pub hit_fraction: f64,
    pub latency: Percentiles,
    pub baseline_calls_per_s: f64,
    pub baseline_latency: Percentiles,
    /// Lookup throughput over the empty call's.
    pub throughput_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LookupReport {
    pub recorded_keys: usize,
    pub seconds_per_level: f64,
    pub rows: Vec<LookupRow>,
}

/// Callers sharing one HTTP/2 connection: a builder host has one; more
/// callers than this get more connections, like more hosts.
const CALLERS_PER_CONNECTION: usize = 64;

/// Step results recorded at once while filling the cache.
const RECORDS_IN_FLIGHT: usize = 64;

/// What a caller measures.
#[derive(Clone, Copy)]
enum Call {
    Lookup,
    Health,
}

pub async fn run(ctx: &BenchContext, opts: &LookupOptions) -> Result<(LookupReport, Vec<String>)> {
    if opts.keys == 0 || opts.concurrency.contains(&0) {
        bail!("--keys and every --concurrency level must be at least 1");
    }
    let server = ctx.start_server().await?;
    let client = server.client(ctx.client.clone()).await?;
    let keys = Arc::new(fill(ctx, &client, opts).await?);

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let window = Duration::from_secs_f64(opts.seconds);
    for &callers in &opts.concurrency {
        if ctx.out_of_time() {
            notes.push(format!(
                "time budget reached before {callers} callers were measured"
            ));
            break;
        }
        let clients = connections(&server.url, ctx, callers).await?;
        let (mut base_lat, base_calls, _) =
            measure(&clients, &keys, callers, window, Call::Health).await?;
        let (mut lat, calls, hits) =
            measure(&clients, &keys, callers, window, Call::Lookup).await?;
        let lookups_per_s = calls as f64 / window.as_secs_f64();
        let baseline_calls_per_s = base_calls as f64 / window.as_secs_f64();
        ctx.say(format!(
            "{callers} callers: {lookups_per_s:.0} lookups/s, empty call {baseline_calls_per_s:.0}/s"
        ));
        rows.push(LookupRow {
            callers,
            lookups: calls,
            lookups_per_s,
            hit_fraction: hits as f64 / calls.max(1) as f64,
            latency: Percentiles::of(&mut lat),
            baseline_calls_per_s,
            baseline_latency: Percentiles::of(&mut base_lat),
            throughput_ratio: lookups_per_s / baseline_calls_per_s,
        });
    }
    drop(client);
    server.stop().await;
    Ok((
        LookupReport {
            recorded_keys: opts.keys,
            seconds_per_level: opts.seconds,
            rows,
        },
        notes,
    ))
}

/// The keys probed: `(key, recorded?)`, recorded and never-recorded ones
/// alternating. Records a result (naming one small stored layer) under
/// each recorded key; keys are salted per run so a remote server's earlier
/// results do not turn misses into hits.
async fn fill(
    ctx: &BenchContext,
    client: &Client,
    opts: &LookupOptions,
) -> Result<Vec<(Digest, bool)>> {
    ctx.say(format!("recording {} step results", opts.keys));
    let layer = client
        .push(
            std::io::Cursor::new(random_bytes(64 << 10, opts.seed)),
            "application/vnd.oci.image.layer.v1.tar",
            &Progress::new(),
        )
        .await?
        .digest;
    let run_salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = |i: usize, recorded: bool| {
        Digest::of(format!("bench step {run_salt} {i} {recorded}").as_bytes())
    };
    let result = StepResult {
        layer: Some(layer),
        config: br#"{"env":["PATH=/usr/bin:/bin"]}"#.to_vec(),
        provenance: Provenance {
            builder: concat!("strata bench ", env!("CARGO_PKG_VERSION")).into(),
            instruction: "RUN make".into(),
            network: "none".into(),
            hermetic: true,
            ..Default::default()
        },
        seal: None,
    };
    let recorded: Vec<Digest> = (0..opts.keys).map(|i| key(i, true)).collect();
    for batch in recorded.chunks(RECORDS_IN_FLIGHT) {
        let calls = batch.iter().map(|k| client.record_step(k, &result));
        for outcome in futures_util::future::join_all(calls).await {
            outcome?;
        }
    }
    Ok(recorded
        .into_iter()
        .enumerate()
        .flat_map(|(i, k)| [(k, true), (key(i, false), false)])
        .collect())
}

async fn connections(url: &str, ctx: &BenchContext, callers: usize) -> Result<Vec<Client>> {
    let n = callers.div_ceil(CALLERS_PER_CONNECTION);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Client::connect(url, ctx.client.clone()).await?);
    }
    Ok(clients)
}

/// Runs `callers` loops of `call` for `window`; returns every latency, the
/// number of calls and of hits.
async fn measure(
    clients: &[Client],
    keys: &Arc<Vec<(Digest, bool)>>,
    callers: usize,
    window: Duration,
    call: Call,
) -> Result<(Vec<Duration>, u64, u64)> {
    let end = Instant::now() + window;
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let client = clients[caller % clients.len()].clone();
        let mut health = HealthClient::new(client.channel());
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut hits = 0u64;
            // Each caller walks the key list from its own offset.
            let mut i = caller.wrapping_mul(7919) % keys.len();
            while Instant::now() < end {
                let (key, recorded) = keys[i];
                i = (i + 1) % keys.len();
                let start = Instant::now();
                match call {
                    Call::Lookup => {
                        let found = client.lookup_steps(&[key]).await?;
                        let hit = found.first().is_some_and(Option::is_some);
                        if hit != recorded {
                            bail!(
                                "step key {key}: expected a {}",
                                if recorded { "hit" } else { "miss" }
                            );
                        }
                        hits += u64::from(hit);
                    }
                    Call::Health => {
                        health
                            .check(HealthCheckRequest {
                                service: String::new(),
                            })
                            .await?;
                    }
                }
                latencies.push(start.elapsed());
            }
            Ok((latencies, hits))
        }));
    }
    let mut all = Vec::new();
    let mut hits = 0;
    for t in tasks {
        let (lat, h) = t.await??;
        all.extend(lat);
        hits += h;
    }
    let calls = all.len() as u64;
    Ok((all, calls, hits))
}

pub fn print_table(report: &LookupReport) {
    println!(
        "step-key lookups, {} recorded keys, half hits and half misses, {:.0} s per level; latency in µs (p50 / p99 / p999)",
        report.recorded_keys, report.seconds_per_level
    );
    println!(
        "{:>7} {:>12} {:>22}  {:>14} {:>22} {:>7}",
        "callers", "lookups/s", "latency", "empty call/s", "empty call latency", "ratio"
    );
    for r in &report.rows {
        let p = |x: &Percentiles| format!("{:.0} {:.0} {:.0}", x.p50_us, x.p99_us, x.p999_us);
        println!(
            "{:>7} {:>12.0} {:>22}  {:>14.0} {:>22} {:>6.2}x",
            r.callers,
            r.lookups_per_s,
            p(&r.latency),
            r.baseline_calls_per_s,
            p(&r.baseline_latency),
            r.throughput_ratio
        );
    }
}
