//! `ManifestStore`: put, get and stat of object manifests, and lookups by
//! content (chunk list, or whole-object BLAKE3). A manifest is accepted
//! only when every chunk it names is already stored; it is found by content
//! only once the store's verifier has proved its SHA-256.

use strata_proto::v1::manifest_store_server::ManifestStore;
use strata_proto::v1::{
    FindManifestRequest, FindManifestResponse, FindObjectRequest, GetManifestRequest,
    GetManifestResponse, PutManifestRequest, PutManifestResponse, StatManifestRequest,
    StatManifestResponse,
};
use strata_proto::{Digest, Manifest, ManifestError};
use tonic::{Request, Response, Status};

use super::{ServerConfig, blocking, status_of};
use crate::store::{Store, StoreError};

pub struct ManifestService {
    store: Store,
    config: ServerConfig,
}

impl ManifestService {
    pub fn new(store: Store, config: ServerConfig) -> Self {
        ManifestService { store, config }
    }
}

fn parse_digest(raw: &[u8]) -> Result<Digest, Status> {
    Digest::from_slice(raw).map_err(|e| Status::invalid_argument(format!("manifest digest: {e}")))
}

/// A lookup's answer: the manifest and its digest, or empty for a miss.
fn found_response(found: Option<(Digest, Manifest)>) -> FindManifestResponse {
    match found {
        Some((digest, manifest)) => FindManifestResponse {
            digest: digest.to_vec(),
            manifest: Some(manifest.to_wire()),
        },
        None => FindManifestResponse::default(),
    }
}

#[tonic::async_trait]
impl ManifestStore for ManifestService {
    async fn find_manifest(
        &self,
        request: Request<FindManifestRequest>,
    ) -> Result<Response<FindManifestResponse>, Status> {
        let key = Digest::from_slice(&request.into_inner().content_key)
            .map_err(|e| Status::invalid_argument(format!("content key: {e}")))?;
        let store = self.store.clone();
        let found = blocking(move || store.find_manifest(&key)).await?;
        Ok(Response::new(found_response(found)))
    }

    async fn find_object(
        &self,
        request: Request<FindObjectRequest>,
    ) -> Result<Response<FindManifestResponse>, Status> {
        let request = request.into_inner();
        let media_type = request.media_type;
        if media_type.len() > 255 {
            return Err(status_of(StoreError::BadManifest(
                ManifestError::MediaTypeTooLong(media_type.len()),
            )));
        }
        let store = self.store.clone();
        let found = match (request.blake3.is_empty(), request.sha256.is_empty()) {
            (false, true) => {
                let object = Digest::from_slice(&request.blake3)
                    .map_err(|e| Status::invalid_argument(format!("object BLAKE3: {e}")))?;
                blocking(move || store.find_object(&object, &media_type)).await?
            }
            (true, false) => {
                let sha256: [u8; 32] = request.sha256.as_slice().try_into().map_err(|_| {
                    Status::invalid_argument(format!(
                        "object SHA-256: expected 32 bytes, got {}",
                        request.sha256.len()
                    ))
                })?;
                blocking(move || store.find_object_by_sha256(&sha256, &media_type)).await?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "FindObject takes exactly one of blake3 and sha256",
                ));
            }
        };
        if let Some((_, manifest)) = &found {
            // The asker will not send (or fetch elsewhere) any of it.
            self.config
                .metrics
                .count_dedup(manifest.chunks().len() as u64, manifest.total_length());
        }
        Ok(Response::new(found_response(found)))
    }

    async fn put_manifest(
        &self,
        request: Request<PutManifestRequest>,
    ) -> Result<Response<PutManifestResponse>, Status> {
        let wire = request
            .into_inner()
            .manifest
            .ok_or_else(|| Status::invalid_argument("PutManifest without a manifest"))?;
        let manifest =
            Manifest::from_wire(wire).map_err(|e| status_of(StoreError::BadManifest(e)))?;
        let digest = self.store.put_manifest(manifest).await.map_err(status_of)?;
        Ok(Response::new(PutManifestResponse {
            digest: digest.to_vec(),
        }))
    }

    async fn get_manifest(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<GetManifestResponse>, Status> {
        let digest = parse_digest(&request.into_inner().digest)?;
        let store = self.store.clone();
        let manifest = blocking(move || store.get_manifest(&digest)).await?;
        Ok(Response::new(GetManifestResponse {
            manifest: Some(manifest.to_wire()),
        }))
    }

    async fn stat_manifest(
        &self,
        request: Request<StatManifestRequest>,
    ) -> Result<Response<StatManifestResponse>, Status> {
        let digest = parse_digest(&request.into_inner().digest)?;
        let store = self.store.clone();
        let found = blocking(move || match store.get_manifest(&digest) {
            Ok(m) => Ok(Some(m)),
            Err(StoreError::ManifestNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .await?;
        Ok(Response::new(match found {
            Some(m) => StatManifestResponse {
                exists: true,
                total_length: m.total_length(),
                chunk_count: m.chunks().len() as u64,
            },
            None => StatManifestResponse::default(),
        }))
    }
}
