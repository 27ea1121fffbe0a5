//! `Admin`: store figures, index rebuild from the segments, integrity
//! scrub, garbage collection now.

use std::sync::Arc;
use strata_proto::Digest;
use strata_proto::v1::admin_server::Admin;

use strata_proto::v1::{
    ClientFigures, GcRequest, GcResponse, RebuildIndexRequest, RebuildIndexResponse, RpcFigures,
    ScrubRequest, ScrubResponse, StatsRequest, StatsResponse,
};
use tonic::{Request, Response, Status};

use super::{blocking, status_of};
use crate::metrics::{self, Metrics};
use crate::store::Store;

pub struct AdminService {
    store: Store,
    metrics: Arc<Metrics>,
}

impl AdminService {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Self {
        AdminService { store, metrics }
    }
}

/// A client's figures as `Stats` carries them.
fn client_figures(client: String, f: metrics::ClientFigures) -> ClientFigures {
    ClientFigures {
        client,
        calls: f.calls,
        bytes_received: f.bytes_received,
        bytes_sent: f.bytes_sent,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let s = self.store.stats();
        let m = self.metrics.snapshot();
        let mut clients: Vec<ClientFigures> = m
            .busiest
            .into_iter()
            .map(|(name, f)| client_figures(name, f))
            .collect();
        clients.push(client_figures("other".to_owned(), m.other));
        Ok(Response::new(StatsResponse {
            chunks: s.chunks,
            chunk_bytes: s.chunk_bytes,
            stored_bytes: s.stored_bytes,
            manifests: s.manifests,
            logical_bytes: s.logical_bytes,
            segments: s.segments,
            segment_bytes: s.segment_bytes,
            step_results: s.step_results,
            step_divergences: s.step_divergences,
            recovery_skipped_records: s.recovery_skipped_records,
            recovery_skipped_bytes: s.recovery_skipped_bytes,
            recovery_tail_bytes_cut: s.recovery_tail_bytes_cut,
            rotten_chunks: s.rotten_chunks,
            manifests_unverified: s.manifests_unverified,
            manifests_refuted: s.manifests_refuted,
            max_bytes: s.max_bytes,
            bytes_used: s.bytes_used,
            index_bytes: s.index_bytes,
            objects_evicted: s.objects_evicted,
            step_results_evicted: s.step_results_evicted,
            tags_evicted: s.tags_evicted,
            chunks_freed: s.chunks_freed,
            bytes_compacted: s.bytes_compacted,
            gc_rounds: s.gc_rounds,
            scrub_passes: s.scrub_passes,
            scrub_chunks_checked: s.scrub_chunks_checked,
            scrub_rotten_found: s.scrub_rotten_found,
            scrub_bytes_read: s.scrub_bytes_read,
            scrub_last_pass_ms: s.scrub_last_pass_ms,
            uptime_ms: u64::try_from(m.uptime.as_millis()).unwrap_or(u64::MAX),
            request_bytes: m.request_bytes,
            response_bytes: m.response_bytes,
            upload_chunks_received: m.upload_chunks_received,
            upload_bytes_received: m.upload_bytes_received,
            upload_chunks_stored: m.upload_chunks_stored,
            upload_bytes_stored: m.upload_bytes_stored,
            dedup_chunks: m.dedup_chunks,
            dedup_bytes: m.dedup_bytes,
            step_lookups: m.step_lookups,
            step_hits: m.step_hits,
            step_misses: m.step_misses,
            rpcs: m
                .rpcs
                .into_iter()
                .map(|r| RpcFigures {
                    rpc: r.rpc.to_owned(),
                    calls: r.calls,
                    errors: r.errors,
                    total_micros: u64::try_from(r.total.as_micros()).unwrap_or(u64::MAX),
                })
                .collect(),
            clients,
        }))
    }

    async fn rebuild_index(
        &self,
        _: Request<RebuildIndexRequest>,
    ) -> Result<Response<RebuildIndexResponse>, Status> {
        let r = self.store.rebuild_index().await.map_err(status_of)?;
        Ok(Response::new(RebuildIndexResponse {
            chunks_indexed: r.chunks_indexed,
            records_scanned: r.records_scanned,
            bytes_truncated: r.bytes_truncated,
        }))
    }

    async fn scrub(&self, _: Request<ScrubRequest>) -> Result<Response<ScrubResponse>, Status> {
        let store = self.store.clone();
        let r = blocking(move || store.scrub()).await?;
        Ok(Response::new(ScrubResponse {
            chunks_checked: r.chunks_checked,
            corrupt: r.corrupt.iter().map(Digest::to_vec).collect(),
        }))
    }

    async fn gc(&self, _: Request<GcRequest>) -> Result<Response<GcResponse>, Status> {
        let store = self.store.clone();
        let r = blocking(move || store.gc()).await?;
        Ok(Response::new(GcResponse {
            objects_evicted: r.objects_evicted,
            step_results_evicted: r.step_results_evicted,
            tags_evicted: r.tags_evicted,
            chunks_freed: r.chunks_freed,
            bytes_freed: r.bytes_freed,
            segments_compacted: r.segments_compacted,
            bytes_compacted: r.bytes_compacted,
            bytes_before: r.bytes_before,
            bytes_after: r.bytes_after,
        }))
    }
}
