//! `Tags`: names for stored objects (the builder keeps images under them).
//! The store checks names and that the object exists; this file translates.

use strata_proto::Digest;
use strata_proto::v1::tags_server::Tags;
use strata_proto::v1::{GetTagRequest, GetTagResponse, SetTagRequest, SetTagResponse};
use tonic::{Request, Response, Status};

use super::{blocking, status_of};
use crate::store::Store;

pub struct TagsService {
    store: Store,
}

impl TagsService {
    pub fn new(store: Store) -> Self {
        TagsService { store }
    }
}

#[tonic::async_trait]
impl Tags for TagsService {
    async fn set_tag(
        &self,
        request: Request<SetTagRequest>,
    ) -> Result<Response<SetTagResponse>, Status> {
        let request = request.into_inner();
        let digest = Digest::from_slice(&request.digest)
            .map_err(|e| Status::invalid_argument(format!("tagged digest: {e}")))?;
        self.store
            .set_tag(request.name, digest)
            .await
            .map_err(status_of)?;
        Ok(Response::new(SetTagResponse {}))
    }

    async fn get_tag(
        &self,
        request: Request<GetTagRequest>,
    ) -> Result<Response<GetTagResponse>, Status> {
        let name = request.into_inner().name;
        let store = self.store.clone();
        let found = blocking(move || store.get_tag(&name)).await?;
        Ok(Response::new(GetTagResponse {
            found: found.is_some(),
            digest: found.map(|d| d.to_vec()).unwrap_or_default(),
        }))
    }
}
