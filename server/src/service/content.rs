//! `ContentStore`: FindMissing, the chunk upload stream and the chunk
//! download stream.
//!
//! Uploads are verified (decoded and hashed) on the blocking pool, one
//! message at a time per stream, while earlier messages of the same stream
//! commit: verification of message N overlaps the group commit of N-1.
//! Downloads read stored bytes as they are and never recompress.

use std::collections::VecDeque;

use strata_proto::v1::content_store_server::ContentStore;
use strata_proto::v1::{
    Chunk, FindMissingRequest, FindMissingResponse, GetChunksRequest, GetChunksResponse,
    PutChunksRequest, PutChunksResponse,
};
use strata_proto::{Codec, Digest, with_thread_decoder};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{ServerConfig, blocking, parse_digests, status_of};
use crate::store::{PutOutcome, Store, StoreError, VerifiedChunk};

/// Commits of one upload stream that may be in flight while the next
/// message is verified; bounds the memory one stream can pin.
const MAX_INFLIGHT_COMMITS: usize = 4;

/// Response messages a download may buffer ahead of a slow reader.
const GET_STREAM_QUEUE: usize = 4;

pub struct ContentService {
    store: Store,
    config: ServerConfig,
}

impl ContentService {
    pub fn new(store: Store, config: ServerConfig) -> Self {
        ContentService { store, config }
    }
}

/// Decodes and hashes every chunk of one upload message.
fn verify_message(chunks: Vec<Chunk>) -> Result<Vec<VerifiedChunk>, Status> {
    with_thread_decoder(|decoder| {
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let digest = Digest::from_slice(&c.digest)
                    .map_err(|e| Status::invalid_argument(format!("chunk {i} of message: {e}")))?;
                let codec = Codec::from_wire(c.codec)
                    .map_err(|e| Status::invalid_argument(format!("chunk {digest}: {e}")))?;
                VerifiedChunk::verify(decoder, digest, codec, c.raw_length, c.data)
                    .map_err(|e| Status::invalid_argument(format!("refused upload: {e}")))
            })
            .collect()
    })
    .map_err(|e| Status::internal(format!("creating a zstd decoder: {e}")))?
}

#[tonic::async_trait]
impl ContentStore for ContentService {
    async fn find_missing(
        &self,
        request: Request<FindMissingRequest>,
    ) -> Result<Response<FindMissingResponse>, Status> {
        let digests = parse_digests(
            &request.into_inner().digests,
            self.config.max_digests_per_request,
        )?;
        let store = self.store.clone();
        let missing = blocking(move || store.find_missing(&digests)).await?;
        Ok(Response::new(FindMissingResponse {
            missing: missing.iter().map(Digest::to_vec).collect(),
        }))
    }

    async fn put_chunks(
        &self,
        request: Request<Streaming<PutChunksRequest>>,
    ) -> Result<Response<PutChunksResponse>, Status> {
        let mut stream = request.into_inner();
        let mut commits = VecDeque::with_capacity(MAX_INFLIGHT_COMMITS + 1);
        let mut total = PutOutcome::default();
        let finish = |c: tokio::task::JoinHandle<Result<PutOutcome, StoreError>>| async move {
            c.await
                .map_err(|e| Status::internal(format!("commit task failed: {e}")))?
                .map_err(status_of)
        };
        while let Some(message) = stream.message().await? {
            let verified = tokio::task::spawn_blocking(move || verify_message(message.chunks))
                .await
                .map_err(|e| Status::internal(format!("verify task failed: {e}")))??;
            let store = self.store.clone();
            commits.push_back(tokio::spawn(
                async move { store.put_chunks(verified).await },
            ));
            if commits.len() > MAX_INFLIGHT_COMMITS
                && let Some(c) = commits.pop_front()
            {
                total += finish(c).await?;
            }
        }
        for c in commits {
            total += finish(c).await?;
        }
        Ok(Response::new(PutChunksResponse {
            chunks_received: total.received,
            chunks_stored: total.stored,
            bytes_stored: total.bytes_stored,
        }))
    }

    type GetChunksStream = ReceiverStream<Result<GetChunksResponse, Status>>;

    async fn get_chunks(
        &self,
        request: Request<GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let digests = parse_digests(
            &request.into_inner().digests,
            self.config.max_digests_per_request,
        )?;
        let (tx, rx) = mpsc::channel(GET_STREAM_QUEUE);
        let store = self.store.clone();
        let batch_bytes = self.config.get_batch_bytes;
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::new();
            let mut size = 0usize;
            for d in digests {
                let chunk = match store.read_chunk(&d) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(status_of(e)));
                        return;
                    }
                };
                size += chunk.data.len();
                batch.push(Chunk {
                    digest: d.to_vec(),
                    codec: chunk.codec.to_wire(),
                    raw_length: chunk.raw_len,
                    data: chunk.data,
                });
                if size >= batch_bytes {
                    size = 0;
                    let chunks = std::mem::take(&mut batch);
                    if tx.blocking_send(Ok(GetChunksResponse { chunks })).is_err() {
                        return; // the client went away
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.blocking_send(Ok(GetChunksResponse { chunks: batch }));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
