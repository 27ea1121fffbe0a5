//! `Tags`: signed names for stored objects (the builder keeps images under
//! them). The store checks names, signatures and that the object exists;
//! this file translates.

use strata_proto::SignedTag;
use strata_proto::v1::tags_server::Tags;
use strata_proto::v1::{GetTagRequest, GetTagResponse, SetTagRequest, SetTagResponse};
use tonic::{Request, Response, Status};

use super::{blocking, parse_signers, status_of};
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
        let tag = SignedTag::from_wire(request.into_inner().tag)
            .map_err(|e| Status::invalid_argument(format!("SetTag: {e}")))?;
        self.store.set_tag(tag).await.map_err(status_of)?;
        Ok(Response::new(SetTagResponse {}))
    }

    async fn get_tag(
        &self,
        request: Request<GetTagRequest>,
    ) -> Result<Response<GetTagResponse>, Status> {
        let request = request.into_inner();
        let trusted = parse_signers(&request.trusted_signers)?;
        let store = self.store.clone();
        let found = blocking(move || store.get_tag(&request.name, &trusted)).await?;
        Ok(Response::new(GetTagResponse {
            found: found.is_some(),
            tag: found.map(|t| t.to_wire()),
        }))
    }
}
