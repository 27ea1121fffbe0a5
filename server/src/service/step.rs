//! `StepCache`: batched lookups of build-step results by step key, and
//! recording of new ones. The store decides what is accepted (a valid
//! signature, a held layer; each signer's first result under a key stands)
//! and which signer's result answers; this file only translates.

use strata_proto::v1::step_cache_server::StepCache;
use strata_proto::v1::{
    LookupStepsRequest, LookupStepsResponse, RecordStepRequest, RecordStepResponse, StepHit,
};
use strata_proto::{Digest, StepResult};
use tonic::{Request, Response, Status};

use super::{ServerConfig, blocking, parse_digests, parse_signers, status_of};
use crate::store::{RecordOutcome, Store, StoreError};

pub struct StepCacheService {
    store: Store,
    config: ServerConfig,
}

impl StepCacheService {
    pub fn new(store: Store, config: ServerConfig) -> Self {
        StepCacheService { store, config }
    }
}

#[tonic::async_trait]
impl StepCache for StepCacheService {
    async fn lookup_steps(
        &self,
        request: Request<LookupStepsRequest>,
    ) -> Result<Response<LookupStepsResponse>, Status> {
        let request = request.into_inner();
        let keys = parse_digests(&request.keys, self.config.max_digests_per_request)?;
        let trusted = parse_signers(&request.trusted_signers)?;
        let store = self.store.clone();
        let results = blocking(move || store.lookup_steps(&keys, &trusted)).await?;
        let found = results.iter().filter(|r| r.is_some()).count();
        self.config
            .metrics
            .count_step_lookups(results.len() as u64, found as u64);
        let hits = results
            .into_iter()
            .map(|r| StepHit {
                found: r.is_some(),
                result: r.map(|r| r.to_wire()),
            })
            .collect();
        Ok(Response::new(LookupStepsResponse { hits }))
    }

    async fn record_step(
        &self,
        request: Request<RecordStepRequest>,
    ) -> Result<Response<RecordStepResponse>, Status> {
        let request = request.into_inner();
        let key = Digest::from_slice(&request.key)
            .map_err(|e| Status::invalid_argument(format!("step key: {e}")))?;
        let wire = request
            .result
            .ok_or_else(|| Status::invalid_argument("RecordStep without a result"))?;
        let result = StepResult::from_wire(wire).map_err(|e| status_of(StoreError::from(e)))?;
        let outcome = self
            .store
            .record_step(key, result)
            .await
            .map_err(status_of)?;
        Ok(Response::new(RecordStepResponse {
            created: outcome == RecordOutcome::Created,
        }))
    }
}
