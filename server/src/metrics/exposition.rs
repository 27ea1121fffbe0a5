//! The `/metrics` page: the live counters of [`Metrics`] and the store's
//! figures ([`StoreStats`]) in the Prometheus text format (version 0.0.4),
//! written by `prometheus-client`'s encoder. Every name starts `strata_`;
//! counters end `_total`, byte figures `_bytes`, durations `_seconds`.
//!
//! Figures are read when scraped, so nothing here keeps state of its own:
//! one [`Collector`] reads both sources and describes each figure once.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Metrics, TRACKED_CLIENTS, get};
use crate::store::StoreStats;

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The whole page for one scrape.
pub fn encode(metrics: &Arc<Metrics>, store: StoreStats) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("strata");
    registry.register_collector(Box::new(Exposition {
        metrics: metrics.clone(),
        store,
    }));
    let mut page = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut page, &registry)?;
    Ok(page)
}

/// How to read one of a client's figures.
type ClientFigure = fn(&super::ClientFigures) -> u64;

#[derive(Debug)]
struct Exposition {
    metrics: Arc<Metrics>,
    store: StoreStats,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge<N>(e: &mut DescriptorEncoder, name: &str, help: &str, v: N) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        self.encode_live(&mut e)?;
        self.encode_rpcs(&mut e)?;
        self.encode_clients(&mut e)?;
        self.encode_store(&mut e)
    }
}

impl Exposition {
    fn encode_live(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let m = &self.metrics;
        gauge(
            e,
            "uptime_seconds",
            "Seconds since the server started; every counter not named strata_store_* counts from then",
            m.started.elapsed().as_secs_f64(),
        )?;
        counter(
            e,
            "request_bytes",
            "gRPC message bytes received from clients, all calls",
            get(&m.request_bytes),
        )?;
        counter(
            e,
            "response_bytes",
            "gRPC message bytes sent to clients, all calls",
            get(&m.response_bytes),
        )?;
        counter(
            e,
            "upload_chunks_received",
            "Chunks received in uploads (PutChunks)",
            get(&m.upload_chunks_received),
        )?;
        counter(
            e,
            "upload_received_bytes",
            "Bytes of the chunks received in uploads, as sent (compressed)",
            get(&m.upload_bytes_received),
        )?;
        counter(
            e,
            "upload_chunks_stored",
            "Uploaded chunks that were new and stored",
            get(&m.upload_chunks_stored),
        )?;
        counter(
            e,
            "upload_stored_bytes",
            "Stored (compressed) bytes of the uploaded chunks that were new",
            get(&m.upload_bytes_stored),
        )?;
        counter(
            e,
            "dedup_chunks",
            "Chunks clients did not need to send because the server held them (FindMissing, FindObject) or sent though held",
            get(&m.dedup_chunks),
        )?;
        counter(
            e,
            "dedup_bytes",
            "Decoded bytes of those chunks",
            get(&m.dedup_bytes),
        )?;
        counter(
            e,
            "step_lookups",
            "Step keys looked up (LookupSteps)",
            get(&m.step_lookups),
        )?;
        counter(
            e,
            "step_hits",
            "Step keys looked up that had a result (of any signer)",
            get(&m.step_hits),
        )?;
        counter(
            e,
            "step_misses",
            "Step keys looked up that had no result",
            get(&m.step_misses),
        )
    }

    fn encode_rpcs(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let rpcs = &self.metrics.rpcs;
        let mut durations = e.encode_descriptor(
            "rpc_duration_seconds",
            "Duration of finished calls, from request to the end of the response, per RPC (other: paths the server does not serve)",
            None,
            MetricType::Histogram,
        )?;
        for r in rpcs.iter() {
            let labels = [("rpc", r.path)];
            r.duration.encode(durations.encode_family(&labels)?)?;
        }
        let mut errors = e.encode_descriptor(
            "rpc_errors",
            "Finished calls whose status was not OK (or that ended without one), per RPC",
            None,
            MetricType::Counter,
        )?;
        for r in rpcs.iter() {
            let labels = [("rpc", r.path)];
            ConstCounter::new(get(&r.errors)).encode(errors.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn encode_clients(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let (mut clients, other) = self.metrics.clients().busiest(TRACKED_CLIENTS);
        clients.push(("other".to_owned(), other));
        let figures: [(&str, &str, ClientFigure); 3] = [
            (
                "client_calls",
                "Finished calls per client (a token's name, else the peer address; other: clients past the tracked few)",
                |f| f.calls,
            ),
            (
                "client_received_bytes",
                "gRPC message bytes received per client",
                |f| f.bytes_received,
            ),
            (
                "client_sent_bytes",
                "gRPC message bytes sent per client",
                |f| f.bytes_sent,
            ),
        ];
        for (name, help, value) in figures {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (client, f) in &clients {
                let labels = [("client", client.as_str())];
                ConstCounter::new(value(f)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_store(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let s = &self.store;
        let dedup_ratio = if s.chunk_bytes == 0 {
            1.0
        } else {
            s.logical_bytes as f64 / s.chunk_bytes as f64
        };
        let gauges: [(&str, &str, u64); 13] = [
            ("store_objects", "Objects (manifests) held", s.manifests),
            ("store_chunks", "Distinct chunks held", s.chunks),
            (
                "store_logical_bytes",
                "Total length of every object held: what was pushed",
                s.logical_bytes,
            ),
            (
                "store_unique_bytes",
                "Decoded bytes of the distinct chunks held",
                s.chunk_bytes,
            ),
            (
                "store_stored_bytes",
                "Stored (compressed) bytes of the distinct chunks held",
                s.stored_bytes,
            ),
            ("store_segments", "Segment files", s.segments),
            (
                "store_segment_bytes",
                "Bytes of segment files, record headers included",
                s.segment_bytes,
            ),
            ("store_step_results", "Step results held", s.step_results),
            (
                "store_rotten_chunks",
                "Chunks found rotten that no push has healed yet",
                s.rotten_chunks,
            ),
            (
                "store_manifests_unverified",
                "Manifests not yet verified by the background verifier",
                s.manifests_unverified,
            ),
            (
                "store_manifests_refuted",
                "Manifests whose SHA-256 claim the verifier found false",
                s.manifests_refuted,
            ),
            (
                "store_max_bytes",
                "The size cap (--max-bytes); 0 when there is none",
                s.max_bytes,
            ),
            (
                "store_used_bytes",
                "Bytes counted against the cap: segment files plus the index",
                s.bytes_used,
            ),
        ];
        for (name, help, v) in gauges {
            gauge(e, name, help, v)?;
        }
        gauge(
            e,
            "store_dedup_ratio",
            "Logical bytes over unique bytes: how many times over the held content was pushed",
            dedup_ratio,
        )?;
        let counters: [(&str, &str, u64); 12] = [
            (
                "store_step_divergences",
                "Step results refused because their key already had a different outcome",
                s.step_divergences,
            ),
            (
                "store_chunks_verified",
                "Uploaded chunks decoded and hashed since the store opened",
                s.chunks_verified,
            ),
            (
                "gc_rounds",
                "Garbage collections, over the store's life",
                s.gc_rounds,
            ),
            (
                "gc_objects_evicted",
                "Objects evicted by garbage collection, over the store's life",
                s.objects_evicted,
            ),
            (
                "gc_step_results_evicted",
                "Step results evicted by garbage collection, over the store's life",
                s.step_results_evicted,
            ),
            (
                "gc_tags_evicted",
                "Tags evicted by garbage collection, over the store's life",
                s.tags_evicted,
            ),
            (
                "gc_chunks_freed",
                "Chunks freed by garbage collection, over the store's life",
                s.chunks_freed,
            ),
            (
                "gc_compacted_bytes",
                "Bytes of segment files reclaimed by compaction, over the store's life",
                s.bytes_compacted,
            ),
            (
                "scrub_passes",
                "Background scrub passes completed since the store opened",
                s.scrub_passes,
            ),
            (
                "scrub_chunks_checked",
                "Chunks the background scrub read and verified since the store opened",
                s.scrub_chunks_checked,
            ),
            (
                "scrub_rotten_found",
                "Rotten chunks the background scrub found (and dropped) since the store opened",
                s.scrub_rotten_found,
            ),
            (
                "scrub_read_bytes",
                "Stored bytes the background scrub read since the store opened",
                s.scrub_bytes_read,
            ),
        ];
        for (name, help, v) in counters {
            counter(e, name, help, v)?;
        }
        gauge(
            e,
            "scrub_last_pass_seconds",
            "How long the background scrub's last completed pass took",
            s.scrub_last_pass_ms as f64 / 1000.0,
        )
    }
}
