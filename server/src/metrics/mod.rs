//! What the server has done since it started, counted as it happens: bytes
//! in and out, uploads and what they deduplicated, step lookups, and per
//! RPC and per client figures. The `Stats` RPC hands a [`MetricsSnapshot`]
//! to `strata top`; the `/metrics` endpoint (`http.rs`, `strata serve
//! --metrics-listen`) encodes the same counters, with the store's own
//! figures, as Prometheus text (`exposition.rs`). `layer.rs` is the tower
//! layer in front of every service that times each call and counts its
//! bytes; `clients.rs` the bounded table of the busiest clients.
//!
//! Counting is a few relaxed atomic adds per call or per message, and one
//! short lock per message for the client table; nothing here waits.
//!
//! *Invariant:* every label value comes from a bounded set — the RPC paths
//! of the server's access table (any other path counts as `other`) and the
//! client table's entries — so no client can grow what is exported; and
//! nothing exported names a file or carries a token (clients are named by
//! their token's *name* or their address).

mod clients;
mod exposition;
pub mod http;
mod layer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;

pub use clients::{ClientFigures, ClientKey, TRACKED_CLIENTS};
pub(crate) use layer::{CallMeter, MetricsLayer};

use crate::service::auth::RPC_ACCESS;
use clients::ClientTable;

/// Upper bounds of the per-RPC latency buckets, in seconds: from a cached
/// lookup (well under a millisecond) to a long upload or download stream
/// (minutes).
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    60.0, 300.0,
];

/// The label of calls to a path the server does not serve.
const OTHER_RPC: &str = "other";

/// Clients a [`MetricsSnapshot`] lists by name (the rest are summed).
pub const SNAPSHOT_CLIENTS: usize = 10;

/// One RPC's figures.
#[derive(Debug)]
struct RpcMeter {
    path: &'static str,
    duration: Histogram,
    calls: AtomicU64,
    errors: AtomicU64,
    micros: AtomicU64,
}

/// The server's live counters; one per server, shared by its services,
/// the metrics layer, `Stats` and the `/metrics` endpoint.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    upload_chunks_received: AtomicU64,
    upload_bytes_received: AtomicU64,
    upload_chunks_stored: AtomicU64,
    upload_bytes_stored: AtomicU64,
    dedup_chunks: AtomicU64,
    dedup_bytes: AtomicU64,
    step_lookups: AtomicU64,
    step_hits: AtomicU64,
    step_misses: AtomicU64,
    /// One per entry of the access table, in its order, then `other`.
    rpcs: Box<[RpcMeter]>,
    clients: Mutex<ClientTable>,
}

impl Default for Metrics {
    fn default() -> Self {
        let rpcs = RPC_ACCESS
            .iter()
            .map(|(path, _)| *path)
            .chain([OTHER_RPC])
            .map(|path| RpcMeter {
                path,
                duration: Histogram::new(LATENCY_BUCKETS),
                calls: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                micros: AtomicU64::new(0),
            })
            .collect();
        Metrics {
            started: Instant::now(),
            request_bytes: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            upload_chunks_received: AtomicU64::new(0),
            upload_bytes_received: AtomicU64::new(0),
            upload_chunks_stored: AtomicU64::new(0),
            upload_bytes_stored: AtomicU64::new(0),
            dedup_chunks: AtomicU64::new(0),
            dedup_bytes: AtomicU64::new(0),
            step_lookups: AtomicU64::new(0),
            step_hits: AtomicU64::new(0),
            step_misses: AtomicU64::new(0),
            rpcs,
            clients: Mutex::new(ClientTable::default()),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// The index of `path` among the RPC meters (`other` if unknown).
    fn rpc_index(&self, path: &str) -> usize {
        self.rpcs
            .iter()
            .position(|r| r.path == path)
            .unwrap_or(self.rpcs.len() - 1)
    }

    /// The client table; a panic elsewhere while it was held leaves only
    /// figures behind, so a poisoned lock is used as it is.
    fn clients(&self) -> MutexGuard<'_, ClientTable> {
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes of a request received from `client`.
    fn received(&self, client: &ClientKey, bytes: u64) {
        add(&self.request_bytes, bytes);
        self.clients().add(
            client,
            ClientFigures {
                bytes_received: bytes,
                ..ClientFigures::default()
            },
        );
    }

    /// Bytes of a response sent to `client`.
    fn sent(&self, client: &ClientKey, bytes: u64) {
        add(&self.response_bytes, bytes);
        self.clients().add(
            client,
            ClientFigures {
                bytes_sent: bytes,
                ..ClientFigures::default()
            },
        );
    }

    /// A call has ended, after `elapsed`, well or not.
    fn finished(&self, rpc: usize, client: &ClientKey, elapsed: Duration, ok: bool) {
        if let Some(meter) = self.rpcs.get(rpc) {
            meter.duration.observe(elapsed.as_secs_f64());
            add(&meter.calls, 1);
            add(
                &meter.micros,
                u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            );
            if !ok {
                add(&meter.errors, 1);
            }
        }
        self.clients().add(
            client,
            ClientFigures {
                calls: 1,
                ..ClientFigures::default()
            },
        );
    }

    /// An upload message: chunks received and their bytes as sent.
    pub(crate) fn count_upload_received(&self, chunks: u64, bytes: u64) {
        add(&self.upload_chunks_received, chunks);
        add(&self.upload_bytes_received, bytes);
    }

    /// Chunks of an upload that were new, and their stored bytes.
    pub(crate) fn count_upload_stored(&self, chunks: u64, bytes: u64) {
        add(&self.upload_chunks_stored, chunks);
        add(&self.upload_bytes_stored, bytes);
    }

    /// Chunks a client did not need to send (or sent for nothing), and
    /// their decoded bytes.
    pub(crate) fn count_dedup(&self, chunks: u64, bytes: u64) {
        add(&self.dedup_chunks, chunks);
        add(&self.dedup_bytes, bytes);
    }

    /// A step lookup of `keys` keys, `hits` of which had a result.
    pub(crate) fn count_step_lookups(&self, keys: u64, hits: u64) {
        add(&self.step_lookups, keys);
        add(&self.step_hits, hits);
        add(&self.step_misses, keys.saturating_sub(hits));
    }

    /// Every figure as it stands.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let (busiest, other) = self.clients().busiest(SNAPSHOT_CLIENTS);
        MetricsSnapshot {
            uptime: self.started.elapsed(),
            request_bytes: get(&self.request_bytes),
            response_bytes: get(&self.response_bytes),
            upload_chunks_received: get(&self.upload_chunks_received),
            upload_bytes_received: get(&self.upload_bytes_received),
            upload_chunks_stored: get(&self.upload_chunks_stored),
            upload_bytes_stored: get(&self.upload_bytes_stored),
            dedup_chunks: get(&self.dedup_chunks),
            dedup_bytes: get(&self.dedup_bytes),
            step_lookups: get(&self.step_lookups),
            step_hits: get(&self.step_hits),
            step_misses: get(&self.step_misses),
            rpcs: self
                .rpcs
                .iter()
                .map(|r| RpcSnapshot {
                    rpc: r.path,
                    calls: get(&r.calls),
                    errors: get(&r.errors),
                    total: Duration::from_micros(get(&r.micros)),
                })
                .collect(),
            busiest,
            other,
        }
    }
}

/// The figures of [`Metrics`] at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub uptime: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upload_chunks_received: u64,
    pub upload_bytes_received: u64,
    pub upload_chunks_stored: u64,
    pub upload_bytes_stored: u64,
    pub dedup_chunks: u64,
    pub dedup_bytes: u64,
    pub step_lookups: u64,
    pub step_hits: u64,
    pub step_misses: u64,
    /// Every RPC the server serves, then `other`.
    pub rpcs: Vec<RpcSnapshot>,
    /// At most [`SNAPSHOT_CLIENTS`] clients, busiest first.
    pub busiest: Vec<(String, ClientFigures)>,
    /// Every other client, summed.
    pub other: ClientFigures,
}

/// One RPC's figures at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcSnapshot {
    pub rpc: &'static str,
    pub calls: u64,
    pub errors: u64,
    pub total: Duration,
}
