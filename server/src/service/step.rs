//! `StepCache`: batched lookups of build-step results by step key, and
//! recording of new ones. The store decides what is accepted (a valid
//! signature, a held layer; each signer's first result under a key stands)
//! and which signer's result answers; this file only translates.

use std::collections::HashSet;

use prost::Message;
use strata_proto::v1::step_cache_server::StepCache;
use strata_proto::v1::{
    self, LookupStepsRequest, LookupStepsResponse, RecordStepRequest, RecordStepResponse, StepHit,
};
use strata_proto::{Digest, StepResult};
use tonic::{Request, Response, Status};

use super::{ServerConfig, blocking, parse_digests, parse_signers, status_of};
use crate::store::{RecordOutcome, Store, StoreError};

/// Encoded manifest bytes one lookup response carries at most: far under
/// any client's message limit, and a few large layers' worth (a 1 GiB
/// layer's manifest is about 0.7 MiB).
const LOOKUP_MANIFEST_BYTES: usize = 4 << 20;

/// Which layer manifests a lookup response still has room for: each layer
/// once, until [`LOOKUP_MANIFEST_BYTES`].
struct ManifestBudget {
    left: usize,
    sent: HashSet<Digest>,
}

impl ManifestBudget {
    fn new(enabled: bool) -> Self {
        ManifestBudget {
            left: if enabled { LOOKUP_MANIFEST_BYTES } else { 0 },
            sent: HashSet::new(),
        }
    }

    /// The manifest of `layer` to send with this hit, if there is room and
    /// it was not sent with an earlier one. A layer the store no longer
    /// holds is sent without (the client's GetManifest says NOT_FOUND).
    fn take(&mut self, store: &Store, layer: &Digest) -> Result<Option<v1::Manifest>, StoreError> {
        if self.left == 0 || self.sent.contains(layer) {
            return Ok(None);
        }
        let wire = match store.get_manifest(layer) {
            Ok(m) => m.to_wire(),
            Err(StoreError::ManifestNotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = wire.encoded_len();
        if size > self.left {
            self.left = 0;
            return Ok(None);
        }
        self.left -= size;
        self.sent.insert(*layer);
        Ok(Some(wire))
    }
}

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
        let with_manifests = request.include_layer_manifests;
        let store = self.store.clone();
        let hits = blocking(move || {
            let results = store.lookup_steps(&keys, &trusted)?;
            let mut manifests = ManifestBudget::new(with_manifests);
            results
                .into_iter()
                .map(|r| {
                    let layer_manifest = match r.as_ref().and_then(|r| r.layer.as_ref()) {
                        Some(layer) => manifests.take(&store, layer)?,
                        None => None,
                    };
                    Ok(StepHit {
                        found: r.is_some(),
                        result: r.map(|r| r.to_wire()),
                        layer_manifest,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
        let found = hits.iter().filter(|h| h.found).count();
        self.config
            .metrics
            .count_step_lookups(hits.len() as u64, found as u64);
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
