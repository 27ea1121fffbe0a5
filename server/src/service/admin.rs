//! `Admin`: store figures, index rebuild from the segments, integrity
//! scrub, garbage collection now.

use strata_proto::Digest;
use strata_proto::v1::admin_server::Admin;
use strata_proto::v1::{
    GcRequest, GcResponse, RebuildIndexRequest, RebuildIndexResponse, ScrubRequest, ScrubResponse,
    StatsRequest, StatsResponse,
};
use tonic::{Request, Response, Status};

use super::{blocking, status_of};
use crate::store::Store;

pub struct AdminService {
    store: Store,
}

impl AdminService {
    pub fn new(store: Store) -> Self {
        AdminService { store }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let s = self.store.stats();
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
