//! `Admin`: store figures, index rebuild from the segments, integrity scrub.

use strata_proto::Digest;
use strata_proto::v1::admin_server::Admin;
use strata_proto::v1::{
    RebuildIndexRequest, RebuildIndexResponse, ScrubRequest, ScrubResponse, StatsRequest,
    StatsResponse,
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
}
