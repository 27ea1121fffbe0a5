//! The download pipeline: manifest → windows of chunks fetched a few at a
//! time → each window decoded and verified on a blocking thread straight
//! into one reused buffer → (for a file) written there at its offset with
//! `pwrite` → handed in order to one thread that computes the whole
//! object's SHA-256 (and, for a stream, writes it).
//!
//! ```text
//!  GetChunks ×4 ─► decode + BLAKE3 into a window buffer ─► pwrite (file)
//!                      (blocking pool, all cores)               │
//!                                in manifest order ◄────────────┘
//!                                      └─► [sha-256 thread] (─► writer, stream)
//! ```
//!
//! Decoding, verifying and writing run on every core; only the SHA-256 is
//! serial, and it overlaps them. A chunk that appears twice in a window is
//! decoded once and copied. Memory is bounded by the window size times the
//! windows in flight, whatever the object size.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use strata_proto::v1::content_store_client::ContentStoreClient;
use strata_proto::v1::{Chunk, GetChunksRequest};
use strata_proto::{ChunkRef, Codec, Digest, with_thread_decoder};
use tokio::sync::mpsc;

use crate::block_pool::BlockPool;
use crate::{Client, ClientError, Progress, within};

/// What one pull did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    pub total_bytes: u64,
    pub chunks: u64,
    /// Chunk bytes received, as sent (compressed where stored so).
    pub received_bytes: u64,
}

/// Most digests in one download request (well under the server's limit).
const MAX_WINDOW_CHUNKS: usize = 4096;
/// Verified windows queued for the in-order (SHA-256) thread. One is
/// enough to keep it busy; each more costs a window of memory.
const ORDERED_QUEUE: usize = 1;

/// A run of manifest entries and where its bytes start in the object.
struct WindowPlan {
    offset: u64,
    chunks: Vec<ChunkRef>,
}

/// A verified window: the object's bytes for a run of manifest entries, in
/// one buffer (which goes back to the pool once hashed and written).
struct Window {
    bytes: Bytes,
    received_bytes: u64,
}

/// Where verified windows go besides the SHA-256.
enum Sink<W> {
    /// Written in order by the SHA-256 thread.
    Stream(W),
    /// Written at each window's offset by the thread that decoded it.
    File(Arc<std::fs::File>),
}

impl Client {
    /// Writes object `digest` to `out`, verifying every chunk and the whole
    /// object's SHA-256, and hands `out` back. Every chunk is verified before
    /// its bytes reach `out`; the SHA-256 can only be checked at the end, so
    /// on error what was written may be a prefix: write to a temporary file
    /// and keep it only on success (as [`Client::pull_to_file`] does).
    pub async fn pull<W: Write + Send + 'static>(
        &self,
        digest: &Digest,
        out: W,
        progress: &Progress,
    ) -> Result<(PullReport, W), ClientError> {
        let (report, sink) = self.pull_into(digest, Sink::Stream(out), progress).await?;
        match sink {
            Sink::Stream(out) => Ok((report, out)),
            Sink::File(_) => Err(ClientError::io(
                "pulling",
                std::io::Error::other("the output changed kind during the pull"),
            )),
        }
    }

    /// Pulls object `digest` into memory (small objects, tests).
    /// Retried as [`Client::pull_to_file`] is.
    pub async fn pull_to_vec(&self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        let progress = Progress::new();
        let progress = &progress;
        self.retrying("pull", progress, move || async move {
            Ok(self.pull(digest, Vec::new(), progress).await?.1)
        })
        .await
    }

    /// Pulls into a temporary file beside `output`, renamed into place only
    /// once every byte is verified: a failed pull leaves no partial file.
    /// An `output` that is a device or a pipe is written in order instead.
    /// Windows are written at their offsets as soon as they are verified,
    /// in any order, by the threads that decoded them.
    /// The file is not fsynced (as `zstd -d`, curl or tar do not): the cache
    /// holds the bytes durably, and a sync would cost more than the pull.
    ///
    /// A pull the server breaks off is started again, up to
    /// [`ClientConfig::retries`](crate::ClientConfig) times.
    pub async fn pull_to_file(
        &self,
        digest: &Digest,
        output: &Path,
        progress: &Progress,
    ) -> Result<PullReport, ClientError> {
        self.retrying("pull", progress, move || async move {
            self.pull_to_file_once(digest, output, progress).await
        })
        .await
    }

    async fn pull_to_file_once(
        &self,
        digest: &Digest,
        output: &Path,
        progress: &Progress,
    ) -> Result<PullReport, ClientError> {
        // A device or a pipe (`-o /dev/null`, a FIFO) is written in place,
        // as a stream: a temporary file renamed over it would replace it.
        if std::fs::metadata(output).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
            let out = std::fs::OpenOptions::new()
                .write(true)
                .open(output)
                .map_err(|e| ClientError::io(format!("cannot write {}", output.display()), e))?;
            return Ok(self.pull(digest, out, progress).await?.0);
        }
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let beside = |e| {
            ClientError::io(
                format!("cannot create a file beside {}", output.display()),
                e,
            )
        };
        let temp = tempfile::Builder::new()
            .prefix(".strata-pull-")
            .tempfile_in(dir)
            .map_err(beside)?;
        let file = temp.reopen().map_err(beside)?;
        let sink: Sink<std::io::Sink> = Sink::File(Arc::new(file));
        let (report, _) = self.pull_into(digest, sink, progress).await?;
        let write_err = |e| ClientError::io(format!("cannot write {}", output.display()), e);
        temp.persist(output).map_err(|e| write_err(e.error))?;
        Ok(report)
    }

    async fn pull_into<W: Write + Send + 'static>(
        &self,
        digest: &Digest,
        sink: Sink<W>,
        progress: &Progress,
    ) -> Result<(PullReport, Sink<W>), ClientError> {
        let manifest = self.get_manifest(digest).await?;
        progress.set_total(manifest.total_length());
        let expected_sha = *manifest.sha256();

        let file = match &sink {
            Sink::File(file) => Some(file.clone()),
            Sink::Stream(_) => None,
        };
        let (tx, mut rx) = mpsc::channel::<Bytes>(ORDERED_QUEUE);
        let ordered = tokio::task::spawn_blocking(move || {
            let mut sink = sink;
            let mut sha = Sha256::new();
            let mut length = 0u64;
            while let Some(bytes) = rx.blocking_recv() {
                sha.update(&bytes);
                length += bytes.len() as u64;
                if let Sink::Stream(out) = &mut sink {
                    out.write_all(&bytes)
                        .map_err(|e| ClientError::io("writing the output", e))?;
                }
            }
            if let Sink::Stream(out) = &mut sink {
                out.flush()
                    .map_err(|e| ClientError::io("writing the output", e))?;
            }
            Ok::<_, ClientError>((<[u8; 32]>::from(sha.finalize()), length, sink))
        });

        let windows = split_windows(manifest.chunks(), self.config.download_window_bytes);
        let mut report = PullReport {
            total_bytes: manifest.total_length(),
            chunks: manifest.chunks().len() as u64,
            received_bytes: 0,
        };
        let pool = BlockPool::default();
        let idle = self.config.idle_timeout;
        let mut fetched = futures_util::stream::iter(windows)
            .map(|w| fetch_window(self.content.clone(), w, idle, pool.clone(), file.clone()))
            .buffered(self.config.downloads_in_flight);
        let mut failure = None;
        while let Some(window) = fetched.next().await {
            match window {
                Ok(w) => {
                    report.received_bytes += w.received_bytes;
                    progress.advance(w.bytes.len() as u64);
                    if tx.send(w.bytes).await.is_err() {
                        break; // the writer failed; its result says why
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(fetched);
        drop(tx);
        let finished = ordered
            .await
            .map_err(|e| ClientError::io("writer task", std::io::Error::other(e)))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let (sha, length, sink) = finished?;
        if length != manifest.total_length() {
            return Err(ClientError::Integrity(format!(
                "object {digest}: {length} bytes assembled, the manifest says {}",
                manifest.total_length()
            )));
        }
        if sha != expected_sha {
            return Err(ClientError::Integrity(format!(
                "object {digest}: the assembled bytes do not match the manifest's SHA-256"
            )));
        }
        Ok((report, sink))
    }
}

/// Cuts the manifest into runs of about `window_bytes`, each with the
/// offset of its first byte.
fn split_windows(chunks: &[ChunkRef], window_bytes: usize) -> Vec<WindowPlan> {
    let mut windows = Vec::new();
    let mut current = Vec::new();
    let mut size = 0usize;
    let mut offset = 0u64;
    for c in chunks {
        current.push(*c);
        size += c.length as usize;
        if size >= window_bytes || current.len() >= MAX_WINDOW_CHUNKS {
            windows.push(WindowPlan {
                offset,
                chunks: std::mem::take(&mut current),
            });
            offset += size as u64;
            size = 0;
        }
    }
    if !current.is_empty() {
        windows.push(WindowPlan {
            offset,
            chunks: current,
        });
    }
    windows
}

/// Fetches the distinct chunks of one window, decodes and verifies them
/// into one buffer in manifest order and, for a file, writes it at the
/// window's offset. Each wait on the server is bounded by `idle`.
async fn fetch_window(
    mut content: ContentStoreClient<crate::AuthChannel>,
    window: WindowPlan,
    idle: Duration,
    pool: BlockPool,
    file: Option<Arc<std::fs::File>>,
) -> Result<Window, ClientError> {
    let mut wanted: Vec<Digest> = Vec::with_capacity(window.chunks.len());
    let mut first: HashMap<Digest, usize> = HashMap::with_capacity(window.chunks.len());
    for (i, c) in window.chunks.iter().enumerate() {
        first.entry(c.digest).or_insert_with(|| {
            wanted.push(c.digest);
            i
        });
    }
    let call = content.get_chunks(GetChunksRequest {
        digests: wanted.iter().map(Digest::to_vec).collect(),
    });
    let mut stream = within(idle, "download chunks", call)
        .await?
        .map_err(|s| ClientError::from_status("download chunks", s))?
        .into_inner();
    let mut received: Vec<Chunk> = Vec::with_capacity(wanted.len());
    while let Some(message) = within(idle, "download chunks", stream.try_next())
        .await?
        .map_err(|s| ClientError::from_status("download chunks", s))?
    {
        received.extend(message.chunks);
        if received.len() > wanted.len() {
            return Err(ClientError::Integrity(format!(
                "the server sent more than the {} chunks asked for",
                wanted.len()
            )));
        }
    }
    if received.len() != wanted.len() {
        return Err(ClientError::Integrity(format!(
            "the server sent {} of {} chunks and ended the stream",
            received.len(),
            wanted.len()
        )));
    }
    tokio::task::spawn_blocking(move || {
        let received_bytes = received.iter().map(|c| c.data.len() as u64).sum();
        let bytes = decode_window(&window.chunks, &first, received, &pool)?;
        if let Some(file) = file {
            file.write_all_at(&bytes, window.offset)
                .map_err(|e| ClientError::io("writing the output", e))?;
        }
        Ok(Window {
            bytes,
            received_bytes,
        })
    })
    .await
    .map_err(|e| ClientError::io("verify task", std::io::Error::other(e)))?
}

/// Decodes and verifies the chunks of a window (received in the order of
/// their first appearance in it) into one buffer holding the window's bytes
/// in manifest order. A repeated chunk is decoded once and copied.
fn decode_window(
    chunks: &[ChunkRef],
    first: &HashMap<Digest, usize>,
    received: Vec<Chunk>,
    pool: &BlockPool,
) -> Result<Bytes, ClientError> {
    let mut starts = Vec::with_capacity(chunks.len() + 1);
    let mut length = 0usize;
    for c in chunks {
        starts.push(length);
        length += c.length as usize;
    }
    let mut buffer = pool.take(length);
    // A reused buffer is zeroed only where it never held bytes.
    buffer.resize(length, 0);
    let span = |i: usize| starts[i]..starts[i] + chunks[i].length as usize;
    let mut received = received.into_iter();
    with_thread_decoder(|decoder| {
        for (i, c) in chunks.iter().enumerate() {
            let origin = first.get(&c.digest).copied().unwrap_or(i);
            if origin != i {
                // Seen earlier in this window: verified there, copied here.
                if chunks[origin].length != c.length {
                    return Err(ClientError::Integrity(format!(
                        "chunk {}: the manifest gives it lengths {} and {}",
                        c.digest, chunks[origin].length, c.length
                    )));
                }
                buffer.copy_within(span(origin), starts[i]);
                continue;
            }
            let chunk = received.next().ok_or_else(|| {
                ClientError::Integrity(format!("chunk {} was not sent", c.digest))
            })?;
            if chunk.digest != c.digest.as_bytes() {
                return Err(ClientError::Integrity(format!(
                    "asked for chunk {}, the server sent another",
                    c.digest
                )));
            }
            if chunk.raw_length != c.length {
                return Err(ClientError::Integrity(format!(
                    "chunk {}: declared length {}, the manifest says {}",
                    c.digest, chunk.raw_length, c.length
                )));
            }
            let codec = Codec::from_wire(chunk.codec)
                .map_err(|e| ClientError::Integrity(format!("chunk {}: {e}", c.digest)))?;
            decoder
                .decode_verified_into(&c.digest, codec, &chunk.data, &mut buffer[span(i)])
                .map_err(|e| ClientError::Integrity(e.to_string()))?;
        }
        Ok(())
    })
    .map_err(|e| ClientError::io("creating a zstd decoder", e))??;
    Ok(pool.share(buffer))
}
