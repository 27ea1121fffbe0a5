//! The upload pipeline: read → cut and hash → ask which chunks are missing →
//! compress those → stream them over several uploads → record the manifest.
//!
//! ```text
//!  reader ─► [cut thread] ─► BLAKE3 (2 batches, blocking) ─► FindMissing (2
//!                │             in flight) ─► compress (2 batches, blocking)
//!                └─► [sha-256 thread]                              │
//!                                       upload streams ◄── round robin
//! ```
//!
//! Every queue is bounded, so a slow server pushes back all the way to the
//! reader and memory stays at a few blocks whatever the input size.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use strata_proto::v1::{
    Chunk, FindManifestRequest, FindMissingRequest, PutChunksRequest, PutChunksResponse,
    PutManifestRequest,
};
use strata_proto::{ChunkEncoder, ChunkRef, Digest, Manifest, content_key};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{Chunker, Client, ClientError, CutBatch, HashedChunk, Progress, whole_object, within};
use std::time::Duration;

/// What one push did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// The object's address.
    pub digest: Digest,
    /// SHA-256 of the whole object (computed, or taken from a stored object
    /// with the same chunks): an OCI layer's digest without another call.
    pub sha256: [u8; 32],
    /// Bytes read from the input.
    pub total_bytes: u64,
    /// Chunk bytes sent to the server, as sent (compressed where it paid).
    pub sent_bytes: u64,
    /// Chunks in the object, repeats included.
    pub chunks: u64,
    /// Chunks not sent because the server already had them or this push had
    /// already sent them.
    pub reused_chunks: u64,
    /// Chunks the server stored as new (less than those sent when another
    /// client uploaded the same chunk at the same time).
    pub stored_chunks: u64,
}

/// A push's figures, counted as it goes; a [`PushReport`] once the object
/// has its address.
#[derive(Default)]
struct Figures {
    total_bytes: u64,
    sent_bytes: u64,
    chunks: u64,
    reused_chunks: u64,
    stored_chunks: u64,
}

impl Figures {
    fn report(self, digest: Digest, sha256: [u8; 32]) -> PushReport {
        PushReport {
            digest,
            sha256,
            total_bytes: self.total_bytes,
            sent_bytes: self.sent_bytes,
            chunks: self.chunks,
            reused_chunks: self.reused_chunks,
            stored_chunks: self.stored_chunks,
        }
    }
}

/// Batches of chunks a stage may hold ahead of the next.
const STAGE_DEPTH: usize = 2;
/// Messages queued per upload stream.
const STREAM_QUEUE: usize = 2;

thread_local! {
    /// One zstd compressor per blocking thread, reused across batches.
    static ENCODER: RefCell<Option<(i32, ChunkEncoder)>> = const { RefCell::new(None) };
}

impl Client {
    /// Pushes everything `reader` yields as one object of `media_type`.
    pub async fn push<R: Read + Send + 'static>(
        &self,
        reader: R,
        media_type: &str,
        progress: &Progress,
    ) -> Result<PushReport, ClientError> {
        self.push_with(reader, None, media_type, progress).await
    }

    /// Pushes a regular file. First the whole file is BLAKE3-hashed on
    /// every core and the server asked once for a verified object with that
    /// hash (`FindObject`): an unchanged file is then pushed without being
    /// chunked at all. Otherwise it is pushed as a stream is, except that
    /// its SHA-256 is computed by a second, positional reader, and only when
    /// needed: when the file's chunks already form a stored object, the
    /// known SHA-256 is reused.
    ///
    /// A push the server breaks off (it restarts, the connection drops) is
    /// started again, up to [`ClientConfig::retries`](crate::ClientConfig)
    /// times: what the server stored before is found, not sent again.
    pub async fn push_file(
        &self,
        file: std::fs::File,
        media_type: &str,
        progress: &Progress,
    ) -> Result<PushReport, ClientError> {
        let file = &file;
        self.retrying("push", progress, move || async move {
            let mut again = file
                .try_clone()
                .map_err(|e| ClientError::io("reopening the input", e))?;
            std::io::Seek::seek(&mut again, std::io::SeekFrom::Start(0))
                .map_err(|e| ClientError::io("rewinding the input", e))?;
            self.push_file_once(again, media_type, progress).await
        })
        .await
    }

    async fn push_file_once(
        &self,
        file: std::fs::File,
        media_type: &str,
        progress: &Progress,
    ) -> Result<PushReport, ClientError> {
        if let Some(report) = self.push_known_file(&file, media_type, progress).await? {
            return Ok(report);
        }
        let second = file
            .try_clone()
            .map_err(|e| ClientError::io("reopening the input", e))?;
        self.push_with(file, Some(Arc::new(second)), media_type, progress)
            .await
    }

    async fn push_with<R: Read + Send + 'static>(
        &self,
        reader: R,
        file: Option<Arc<std::fs::File>>,
        media_type: &str,
        progress: &Progress,
    ) -> Result<PushReport, ClientError> {
        let (batch_tx, batch_rx) = mpsc::channel::<std::io::Result<CutBatch>>(STAGE_DEPTH);
        // A stream is hashed as it is cut; a file lazily, by `ShaOfFile`.
        let (sha_tx, mut sha_rx) = mpsc::channel::<Bytes>(STAGE_DEPTH * 2);
        let sha_tx = file.is_none().then_some(sha_tx);
        let chunking = self.config.chunking;
        let chunker = tokio::task::spawn_blocking(move || {
            let mut chunker = Chunker::new(reader, chunking);
            loop {
                let next = chunker.next_cuts().transpose();
                let Some(batch) = next else { return };
                if let (Ok(b), Some(sha_tx)) = (&batch, &sha_tx)
                    && sha_tx.blocking_send(b.covered.clone()).is_err()
                {
                    return;
                }
                let failed = batch.is_err();
                if batch_tx.blocking_send(batch).is_err() || failed {
                    return;
                }
            }
        });
        let stream_sha = file.is_none().then(|| {
            tokio::task::spawn_blocking(move || {
                let mut h = Sha256::new();
                while let Some(bytes) = sha_rx.blocking_recv() {
                    h.update(&bytes);
                }
                <[u8; 32]>::from(h.finalize())
            })
        });

        let mut report = Figures::default();
        let mut refs: Vec<ChunkRef> = Vec::new();
        let mut seen: HashSet<Digest> = HashSet::new();
        let mut uploads = Uploads::new(self);
        let mut sent_bytes = 0u64;
        let mut file_sha = ShaOfFile::new(file);
        {
            let content = self.content.clone();
            let level = self.config.zstd_level;
            let idle = self.config.idle_timeout;
            let message_bytes = self.config.message_bytes;
            let mut messages = ReceiverStream::new(batch_rx)
                .map(|cuts| async move {
                    let cuts = cuts.map_err(|e| ClientError::io("reading the input", e))?;
                    tokio::task::spawn_blocking(|| cuts.hash())
                        .await
                        .map_err(|e| ClientError::io("hashing", std::io::Error::other(e)))
                })
                .buffered(STAGE_DEPTH)
                .map(|batch| {
                    let batch = batch?;
                    report.total_bytes += batch.covered.len() as u64;
                    report.chunks += batch.chunks.len() as u64;
                    progress.advance(batch.covered.len() as u64);
                    refs.extend(batch.chunks.iter().map(|c| ChunkRef {
                        digest: c.digest,
                        length: c.data.len() as u32,
                    }));
                    let fresh: Vec<HashedChunk> = batch
                        .chunks
                        .into_iter()
                        .filter(|c| seen.insert(c.digest))
                        .collect();
                    Ok(find_missing(content.clone(), fresh, idle))
                })
                .try_buffered(STAGE_DEPTH)
                .map_ok(|missing| compress(missing, level, message_bytes))
                .try_buffered(STAGE_DEPTH);
            while let Some(batch_messages) = messages.try_next().await? {
                // New content: the whole-object SHA-256 will be needed.
                if !batch_messages.is_empty() {
                    file_sha.start();
                }
                for message in batch_messages {
                    sent_bytes += message
                        .chunks
                        .iter()
                        .map(|c| c.data.len() as u64)
                        .sum::<u64>();
                    uploads.send(message).await?;
                }
            }
        }
        // The chunker ended (the stream is drained); a panic there is a bug.
        chunker
            .await
            .map_err(|e| ClientError::io("chunking", std::io::Error::other(e)))?;
        let outcome = uploads.finish().await?;
        report.sent_bytes = sent_bytes;
        report.stored_chunks = outcome.chunks_stored;
        // The server's count is not trusted to be sane.
        report.reused_chunks = report
            .chunks
            .checked_sub(outcome.chunks_received)
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "the server says it received {} chunks of a push that has {}",
                    outcome.chunks_received, report.chunks
                ))
            })?;
        let sha256 = match stream_sha {
            Some(task) => task
                .await
                .map_err(|e| ClientError::io("hashing", std::io::Error::other(e)))?,
            None => {
                if !file_sha.started()
                    && let Some((digest, sha256)) = self
                        .find_known(&refs, report.total_bytes, media_type)
                        .await?
                {
                    return Ok(report.report(digest, sha256));
                }
                file_sha.start();
                file_sha.finish(report.total_bytes).await?
            }
        };

        let manifest = Manifest::new(refs, report.total_bytes, sha256, media_type.to_owned())
            .map_err(|e| ClientError::Config(format!("building the manifest: {e}")))?;
        let digest = manifest.digest();
        let mut manifests = self.manifests.clone();
        let put = manifests.put_manifest(PutManifestRequest {
            manifest: Some(manifest.to_wire()),
        });
        let response = within(self.config.idle_timeout, "put manifest", put)
            .await?
            .map_err(|s| ClientError::from_status("put manifest", s))?
            .into_inner();
        if response.digest != digest.to_vec() {
            return Err(ClientError::Integrity(format!(
                "the server recorded object {digest} under a different digest"
            )));
        }
        Ok(report.report(digest, sha256))
    }
}

impl Client {
    /// The report of a push of `file` if the server holds it already as a
    /// verified object, found by its whole-object BLAKE3; `None` to push it.
    async fn push_known_file(
        &self,
        file: &std::fs::File,
        media_type: &str,
        progress: &Progress,
    ) -> Result<Option<PushReport>, ClientError> {
        let metadata = file
            .metadata()
            .map_err(|e| ClientError::io("reading the input's metadata", e))?;
        if !metadata.is_file() {
            return Ok(None);
        }
        let len = metadata.len();
        let hashed = file
            .try_clone()
            .map_err(|e| ClientError::io("reopening the input", e))?;
        let object = tokio::task::spawn_blocking(move || whole_object::hash_file(&hashed, len))
            .await
            .map_err(|e| ClientError::io("hashing", std::io::Error::other(e)))?
            .map_err(|e| ClientError::io("reading the input", e))?;
        let Some(known) = self.find_object(&object, len, media_type).await? else {
            return Ok(None);
        };
        progress.advance(len);
        let chunks = known.manifest.chunks().len() as u64;
        Ok(Some(PushReport {
            digest: known.digest,
            sha256: *known.manifest.sha256(),
            total_bytes: len,
            sent_bytes: 0,
            chunks,
            reused_chunks: chunks,
            stored_chunks: 0,
        }))
    }

    /// The digest and SHA-256 of a stored object with exactly this content,
    /// if any.
    async fn find_known(
        &self,
        refs: &[ChunkRef],
        total_length: u64,
        media_type: &str,
    ) -> Result<Option<(Digest, [u8; 32])>, ClientError> {
        let key = content_key(refs, total_length, media_type);
        let mut manifests = self.manifests.clone();
        let find = manifests.find_manifest(FindManifestRequest {
            content_key: key.to_vec(),
        });
        let found = within(self.config.idle_timeout, "find manifest", find)
            .await?
            .map_err(|s| ClientError::from_status("find manifest", s))?
            .into_inner();
        let Some(wire) = found.manifest else {
            return Ok(None);
        };
        let manifest = Manifest::from_wire(wire)
            .map_err(|e| ClientError::Integrity(format!("found manifest: {e}")))?;
        // Trust only what can be checked here: same chunks, same length, and
        // a digest that really is the manifest's.
        let digest = manifest.digest();
        let same = manifest.chunks() == refs
            && manifest.total_length() == total_length
            && manifest.media_type() == media_type
            && found.digest == digest.to_vec();
        Ok(same.then_some((digest, *manifest.sha256())))
    }
}

/// A SHA-256 and the number of bytes it covers.
type HashedLength = ([u8; 32], u64);

/// SHA-256 of a file read by positional reads on its own thread, started
/// only once it is known to be needed.
struct ShaOfFile {
    file: Option<Arc<std::fs::File>>,
    task: Option<JoinHandle<std::io::Result<HashedLength>>>,
}

impl ShaOfFile {
    fn new(file: Option<Arc<std::fs::File>>) -> Self {
        ShaOfFile { file, task: None }
    }

    fn started(&self) -> bool {
        self.task.is_some()
    }

    fn start(&mut self) {
        let Some(file) = &self.file else { return };
        if self.task.is_some() {
            return;
        }
        let file = file.clone();
        self.task = Some(tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0u64;
            loop {
                match file.read_at(&mut buf, at) {
                    Ok(0) => return Ok((<[u8; 32]>::from(h.finalize()), at)),
                    Ok(n) => {
                        h.update(&buf[..n]);
                        at += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }));
    }

    /// The hash, checked to cover exactly the `expected` bytes chunked.
    async fn finish(self, expected: u64) -> Result<[u8; 32], ClientError> {
        let Some(task) = self.task else {
            return Err(ClientError::io(
                "hashing",
                std::io::Error::other("not started"),
            ));
        };
        let (sha, len) = task
            .await
            .map_err(|e| ClientError::io("hashing", std::io::Error::other(e)))?
            .map_err(|e| ClientError::io("reading the input", e))?;
        if len != expected {
            return Err(ClientError::io(
                "reading the input",
                std::io::Error::other(format!(
                    "the file changed while being pushed ({expected} bytes chunked, {len} hashed)"
                )),
            ));
        }
        Ok(sha)
    }
}

/// The chunks of `candidates` the server does not hold.
async fn find_missing(
    mut content: strata_proto::v1::content_store_client::ContentStoreClient<crate::AuthChannel>,
    candidates: Vec<HashedChunk>,
    idle: Duration,
) -> Result<Vec<HashedChunk>, ClientError> {
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let digests = candidates.iter().map(|c| c.digest.to_vec()).collect();
    let missing = within(
        idle,
        "find missing",
        content.find_missing(FindMissingRequest { digests }),
    )
    .await?
    .map_err(|s| ClientError::from_status("find missing", s))?
    .into_inner()
    .missing;
    let missing: HashSet<&[u8]> = missing.iter().map(Vec::as_slice).collect();
    Ok(candidates
        .into_iter()
        .filter(|c| missing.contains(&c.digest.as_bytes()[..]))
        .collect())
}

/// Compresses `chunks` on a blocking thread into upload messages of about
/// `message_bytes` each.
async fn compress(
    chunks: Vec<HashedChunk>,
    level: i32,
    message_bytes: usize,
) -> Result<Vec<PutChunksRequest>, ClientError> {
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    tokio::task::spawn_blocking(move || {
        ENCODER.with_borrow_mut(|slot| {
            let encoder = match slot {
                Some((l, e)) if *l == level => e,
                _ => {
                    let encoder = ChunkEncoder::new(level)
                        .map_err(|e| ClientError::io("creating a zstd compressor", e))?;
                    &mut slot.insert((level, encoder)).1
                }
            };
            let mut messages = Vec::new();
            let mut current = Vec::new();
            let mut size = 0usize;
            for c in chunks {
                let (codec, stored) = encoder.encode(&c.data);
                let data = if codec == strata_proto::Codec::Raw {
                    c.data.clone()
                } else {
                    Bytes::copy_from_slice(stored)
                };
                size += data.len();
                current.push(Chunk {
                    digest: c.digest.to_vec(),
                    codec: codec.to_wire(),
                    raw_length: c.data.len() as u32,
                    data,
                });
                if size >= message_bytes {
                    messages.push(PutChunksRequest {
                        chunks: std::mem::take(&mut current),
                    });
                    size = 0;
                }
            }
            if !current.is_empty() {
                messages.push(PutChunksRequest { chunks: current });
            }
            Ok(messages)
        })
    })
    .await
    .map_err(|e| ClientError::io("compressing", std::io::Error::other(e)))?
}

/// One open upload: its message queue and the task awaiting the reply.
type UploadStream = (
    mpsc::Sender<PutChunksRequest>,
    JoinHandle<Result<PutChunksResponse, Status>>,
);

/// Upload streams, opened on first use and fed round robin.
struct Uploads<'a> {
    client: &'a Client,
    streams: Vec<UploadStream>,
    next: usize,
}

impl<'a> Uploads<'a> {
    fn new(client: &'a Client) -> Self {
        Uploads {
            client,
            streams: Vec::new(),
            next: 0,
        }
    }

    async fn send(&mut self, message: PutChunksRequest) -> Result<(), ClientError> {
        if self.streams.len() < self.client.config.upload_streams {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            let mut content = self.client.content.clone();
            let task = tokio::spawn(async move {
                content
                    .put_chunks(ReceiverStream::new(rx))
                    .await
                    .map(tonic::Response::into_inner)
            });
            self.streams.push((tx, task));
        }
        let i = self.next % self.streams.len();
        self.next += 1;
        // A server that stops reading stops this send: bounded like any wait.
        let idle = self.client.config.idle_timeout;
        if within(idle, "upload chunks", self.streams[i].0.send(message))
            .await?
            .is_err()
        {
            // The stream ended early: its task holds the reason.
            let (_, task) = self.streams.swap_remove(i);
            return Err(match task.await {
                Ok(Err(status)) => ClientError::from_status("upload chunks", status),
                Ok(Ok(_)) => ClientError::Unavailable {
                    what: "upload chunks",
                    message: "the server closed the upload early".into(),
                },
                Err(e) => ClientError::io("upload task", std::io::Error::other(e)),
            });
        }
        Ok(())
    }

    /// Closes every stream and sums what the server reports.
    async fn finish(self) -> Result<PutChunksResponse, ClientError> {
        let mut total = PutChunksResponse::default();
        let idle = self.client.config.idle_timeout;
        for (tx, task) in self.streams {
            drop(tx);
            let r = within(idle, "upload chunks", task)
                .await?
                .map_err(|e| ClientError::io("upload task", std::io::Error::other(e)))?
                .map_err(|s| ClientError::from_status("upload chunks", s))?;
            total.chunks_received += r.chunks_received;
            total.chunks_stored += r.chunks_stored;
            total.bytes_stored += r.bytes_stored;
        }
        Ok(total)
    }
}
