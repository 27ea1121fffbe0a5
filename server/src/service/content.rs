//! `ContentStore`: FindMissing, the chunk upload stream and the chunk
//! download stream.
//!
//! Uploads are verified (decoded and hashed) on the blocking pool, one
//! message at a time per stream, while earlier messages of the same stream
//! commit: verification of message N overlaps the group commit of N-1. A
//! chunk already verified earlier in the same upload is not verified again
//! (nor stored again): its later copies are dropped unread, so a request of
//! many copies of one small-compressing chunk costs one decompression, not
//! one per copy. Each message's bytes go back to the upload budget once it
//! is stored.
//!
//! Downloads read stored bytes as they are and never recompress; the
//! blocking pool reads one batch at a time, and no thread waits on a slow
//! reader.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::content_store_server::ContentStore;
use strata_proto::v1::{
    Chunk, FindMissingRequest, FindMissingResponse, GetChunksRequest, GetChunksResponse,
    PutChunksRequest, PutChunksResponse,
};
use strata_proto::{Codec, Digest, with_thread_decoder};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::budget::CallBytes;
use super::{ServerConfig, blocking, chunk_refusal, internal, parse_digests, status_of};
use crate::store::{PutOutcome, Store, StoreError, VerifiedChunk};

/// Commits of one upload stream that may be in flight while the next
/// message is verified; bounds the memory one stream can pin.
const MAX_INFLIGHT_COMMITS: usize = 4;

/// Response messages a download may buffer ahead of a slow reader.
const GET_STREAM_QUEUE: usize = 4;

/// Digests one upload stream remembers as verified, so later copies are
/// dropped unread. 4,096 (about 200 KiB): copies are sent close together
/// when they are sent to waste the server's time; past the bound the
/// memory starts afresh, and a copy is at worst verified once per 4,096
/// distinct chunks.
const REMEMBERED_DIGESTS: usize = 4096;

pub struct ContentService {
    store: Store,
    config: ServerConfig,
}

impl ContentService {
    pub fn new(store: Store, config: ServerConfig) -> Self {
        ContentService { store, config }
    }
}

/// Digests verified earlier in one upload.
#[derive(Default)]
struct VerifiedDigests(HashSet<Digest>);

impl VerifiedDigests {
    fn contains(&self, digest: &Digest) -> bool {
        self.0.contains(digest)
    }

    fn insert(&mut self, digest: Digest) {
        if self.0.len() >= REMEMBERED_DIGESTS {
            self.0.clear();
        }
        self.0.insert(digest);
    }
}

/// One upload message, verified: the chunks to store, and how many copies
/// of chunks verified earlier in the upload were dropped.
struct VerifiedMessage {
    chunks: Vec<VerifiedChunk>,
    copies_dropped: u64,
}

/// Decodes and hashes every chunk of one upload message that this upload
/// has not verified before.
fn verify_message(
    store: &Store,
    chunks: Vec<Chunk>,
    seen: &mut VerifiedDigests,
) -> Result<VerifiedMessage, Status> {
    with_thread_decoder(|decoder| {
        let mut verified = VerifiedMessage {
            chunks: Vec::with_capacity(chunks.len()),
            copies_dropped: 0,
        };
        for (i, c) in chunks.into_iter().enumerate() {
            let digest = Digest::from_slice(&c.digest)
                .map_err(|e| Status::invalid_argument(format!("chunk {i} of message: {e}")))?;
            if seen.contains(&digest) {
                verified.copies_dropped += 1;
                continue;
            }
            let codec = Codec::from_wire(c.codec)
                .map_err(|e| Status::invalid_argument(format!("chunk {digest}: {e}")))?;
            let chunk = store
                .verify_chunk(decoder, digest, codec, c.raw_length, c.data)
                .map_err(chunk_refusal)?;
            seen.insert(digest);
            verified.chunks.push(chunk);
        }
        Ok(verified)
    })
    .map_err(|e| internal("creating a zstd decoder failed", &e))?
}

/// Sends the chunks named by `digests` to `tx`, batch by batch, reading
/// each batch on the blocking pool.
///
/// A message is sent only when two slots of the queue are free, so one
/// always stays free for the error that ends the download: a store error,
/// or a reader that took no message for `reader_timeout`.
async fn send_chunks(
    store: Store,
    digests: Vec<Digest>,
    batch_bytes: usize,
    reader_timeout: Duration,
    tx: mpsc::Sender<Result<GetChunksResponse, Status>>,
) {
    let digests = Arc::new(digests);
    let mut next = 0;
    while next < digests.len() {
        let mut slots = match tokio::time::timeout(reader_timeout, tx.reserve_many(2)).await {
            Ok(Ok(slots)) => slots,
            Ok(Err(_)) => return, // the client went away
            Err(_) => {
                let _ = tx.try_send(Err(Status::deadline_exceeded(format!(
                    "the client took no chunk message for {}s (the server's message_timeout)",
                    reader_timeout.as_secs()
                ))));
                return;
            }
        };
        let (store, batch) = (store.clone(), digests.clone());
        let read =
            tokio::task::spawn_blocking(move || read_batch(&store, &batch, next, batch_bytes))
                .await
                .map_err(|e| internal("a chunk read task failed", &e));
        let answer = match read {
            Ok(Ok((chunks, end))) => {
                next = end;
                Ok(GetChunksResponse { chunks })
            }
            Ok(Err(e)) => Err(status_of(e)),
            Err(status) => Err(status),
        };
        let failed = answer.is_err();
        if let Some(slot) = slots.next() {
            slot.send(answer);
        }
        if failed {
            return;
        }
    }
}

/// Reads chunks from `digests[start..]` until about `batch_bytes` are read;
/// returns them and where the next batch starts.
fn read_batch(
    store: &Store,
    digests: &[Digest],
    start: usize,
    batch_bytes: usize,
) -> Result<(Vec<Chunk>, usize), StoreError> {
    let mut batch = Vec::new();
    let mut size = 0usize;
    let mut next = start;
    while next < digests.len() && (batch.is_empty() || size < batch_bytes) {
        let d = digests[next];
        let chunk = store.read_chunk(&d)?;
        size += chunk.data.len();
        batch.push(Chunk {
            digest: d.to_vec(),
            codec: chunk.codec.to_wire(),
            raw_length: chunk.raw_len,
            data: chunk.data,
        });
        next += 1;
    }
    Ok((batch, next))
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
        let found = blocking(move || store.find_missing_counted(&digests)).await?;
        self.config
            .metrics
            .count_dedup(found.held_chunks, found.held_bytes);
        Ok(Response::new(FindMissingResponse {
            missing: found.missing.iter().map(Digest::to_vec).collect(),
        }))
    }

    async fn put_chunks(
        &self,
        request: Request<Streaming<PutChunksRequest>>,
    ) -> Result<Response<PutChunksResponse>, Status> {
        // Absent when the service runs without the request limits in front.
        let budget = request.extensions().get::<Arc<CallBytes>>().cloned();
        let mut stream = request.into_inner();
        let mut commits = VecDeque::with_capacity(MAX_INFLIGHT_COMMITS + 1);
        let mut total = PutOutcome::default();
        let mut seen = VerifiedDigests::default();
        let finish = |c: tokio::task::JoinHandle<Result<PutOutcome, StoreError>>| async move {
            c.await
                .map_err(|e| internal("a commit task failed", &e))?
                .map_err(status_of)
        };
        let mut index = 0u64;
        let metrics = self.config.metrics.clone();
        while let Some(message) = stream.message().await? {
            metrics.count_upload_received(
                message.chunks.len() as u64,
                message.chunks.iter().map(|c| c.data.len() as u64).sum(),
            );
            let store = self.store.clone();
            let (verified, remembered) = tokio::task::spawn_blocking(move || {
                let verified = verify_message(&store, message.chunks, &mut seen);
                (verified, seen)
            })
            .await
            .map_err(|e| internal("a verify task failed", &e))?;
            seen = remembered;
            let verified = verified?;
            total.received += verified.copies_dropped;
            // Copies dropped unread were sent for nothing: deduplicated
            // (their bytes are not counted, being unverified).
            metrics.count_dedup(verified.copies_dropped, 0);
            let store = self.store.clone();
            let budget = budget.clone();
            let metrics = metrics.clone();
            commits.push_back(tokio::spawn(async move {
                let (chunks, raw_bytes) = (
                    verified.chunks.len() as u64,
                    verified
                        .chunks
                        .iter()
                        .map(|c| u64::from(c.raw_len()))
                        .sum::<u64>(),
                );
                let outcome = store.put_chunks(verified.chunks).await;
                if let Ok(o) = &outcome {
                    metrics.count_upload_stored(o.stored, o.bytes_stored);
                    // Sent and verified, but another upload stored them first.
                    metrics.count_dedup(
                        chunks.saturating_sub(o.stored),
                        raw_bytes.saturating_sub(o.raw_bytes_stored),
                    );
                }
                // Stored (or failed): its bytes are no longer needed, even
                // before this stream gets round to awaiting the outcome.
                if let Some(budget) = budget {
                    budget.release(index);
                }
                outcome
            }));
            index += 1;
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
        // One slot more than the queue: see `send_chunks`.
        let (tx, rx) = mpsc::channel(GET_STREAM_QUEUE + 1);
        tokio::spawn(send_chunks(
            self.store.clone(),
            digests,
            self.config.get_batch_bytes,
            self.config.message_timeout,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
