//! The download pipeline: manifest → windows of chunks fetched a few at a
//! time → decoded and verified on blocking threads → written in order by one
//! writer thread that also checks the whole object's SHA-256.
//!
//! Memory is bounded by the window size times the windows in flight,
//! whatever the object size.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use strata_proto::v1::content_store_client::ContentStoreClient;
use strata_proto::v1::{Chunk, GetChunksRequest};
use strata_proto::{ChunkRef, Codec, Digest, with_thread_decoder};
use tokio::sync::mpsc;

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
/// Verified windows queued for the writer.
const WRITER_QUEUE: usize = 2;
/// Write buffer of a pull into a file: large writes, few syscalls.
const PULL_FILE_BUFFER: usize = 1 << 20;

/// A verified window: the object's bytes for a run of manifest entries.
struct Window {
    pieces: Vec<Bytes>,
    received_bytes: u64,
}

impl Client {
    /// Writes object `digest` to `out`, verifying every chunk and the whole
    /// object's SHA-256, and hands `out` back. On error, what was written may
    /// be a prefix: write to a temporary file and keep it only on success.
    pub async fn pull<W: Write + Send + 'static>(
        &self,
        digest: &Digest,
        out: W,
        progress: &Progress,
    ) -> Result<(PullReport, W), ClientError> {
        let manifest = self.get_manifest(digest).await?;
        progress.set_total(manifest.total_length());
        let expected_sha = *manifest.sha256();

        let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(WRITER_QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = out;
            let mut sha = Sha256::new();
            while let Some(pieces) = rx.blocking_recv() {
                for p in pieces {
                    sha.update(&p);
                    out.write_all(&p)
                        .map_err(|e| ClientError::io("writing the output", e))?;
                }
            }
            out.flush()
                .map_err(|e| ClientError::io("writing the output", e))?;
            Ok::<_, ClientError>((<[u8; 32]>::from(sha.finalize()), out))
        });

        let windows = split_windows(manifest.chunks(), self.config.download_window_bytes);
        let mut report = PullReport {
            total_bytes: manifest.total_length(),
            chunks: manifest.chunks().len() as u64,
            received_bytes: 0,
        };
        let mut fetched = futures_util::stream::iter(windows)
            .map(|w| fetch_window(self.content.clone(), w, self.config.idle_timeout))
            .buffered(self.config.downloads_in_flight);
        let mut failure = None;
        while let Some(window) = fetched.next().await {
            match window {
                Ok(w) => {
                    report.received_bytes += w.received_bytes;
                    progress.advance(w.pieces.iter().map(|p| p.len() as u64).sum());
                    if tx.send(w.pieces).await.is_err() {
                        break; // the writer failed; its result says why
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = writer
            .await
            .map_err(|e| ClientError::io("writer task", std::io::Error::other(e)))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let (sha, out) = written?;
        if sha != expected_sha {
            return Err(ClientError::Integrity(format!(
                "object {digest}: the assembled bytes do not match the manifest's SHA-256"
            )));
        }
        Ok((report, out))
    }

    /// Pulls object `digest` into memory (small objects, tests).
    pub async fn pull_to_vec(&self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        Ok(self.pull(digest, Vec::new(), &Progress::new()).await?.1)
    }

    /// Pulls into a temporary file beside `output`, renamed into place only
    /// once every byte is verified: a failed pull leaves no partial file.
    /// The file is not fsynced (as `zstd -d`, curl or tar do not): the cache
    /// holds the bytes durably, and a sync would cost more than the pull.
    pub async fn pull_to_file(
        &self,
        digest: &Digest,
        output: &Path,
        progress: &Progress,
    ) -> Result<PullReport, ClientError> {
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
        let (report, writer) = self
            .pull(
                digest,
                BufWriter::with_capacity(PULL_FILE_BUFFER, file),
                progress,
            )
            .await?;
        let write_err = |e| ClientError::io(format!("cannot write {}", output.display()), e);
        writer.into_inner().map_err(|e| write_err(e.into_error()))?;
        temp.persist(output).map_err(|e| write_err(e.error))?;
        Ok(report)
    }
}

/// Cuts the manifest into runs of about `window_bytes`.
fn split_windows(chunks: &[ChunkRef], window_bytes: usize) -> Vec<Vec<ChunkRef>> {
    let mut windows = Vec::new();
    let mut current = Vec::new();
    let mut size = 0usize;
    for c in chunks {
        current.push(*c);
        size += c.length as usize;
        if size >= window_bytes || current.len() >= MAX_WINDOW_CHUNKS {
            windows.push(std::mem::take(&mut current));
            size = 0;
        }
    }
    if !current.is_empty() {
        windows.push(current);
    }
    windows
}

/// Fetches the distinct chunks of one window and returns its bytes in
/// manifest order, every chunk verified. Each wait on the server is bounded
/// by `idle`.
async fn fetch_window(
    mut content: ContentStoreClient<crate::AuthChannel>,
    window: Vec<ChunkRef>,
    idle: Duration,
) -> Result<Window, ClientError> {
    let mut wanted: Vec<Digest> = Vec::with_capacity(window.len());
    let mut position: HashMap<Digest, usize> = HashMap::with_capacity(window.len());
    for c in &window {
        position.entry(c.digest).or_insert_with(|| {
            wanted.push(c.digest);
            wanted.len() - 1
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
        let decoded = decode_all(&wanted, received)?;
        let pieces = window
            .iter()
            .map(|c| {
                let raw = &decoded[position[&c.digest]];
                if raw.len() == c.length as usize {
                    Ok(raw.clone())
                } else {
                    Err(ClientError::Integrity(format!(
                        "chunk {}: {} bytes, the manifest says {}",
                        c.digest,
                        raw.len(),
                        c.length
                    )))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Window {
            pieces,
            received_bytes,
        })
    })
    .await
    .map_err(|e| ClientError::io("verify task", std::io::Error::other(e)))?
}

/// Decodes and verifies chunks that must arrive in the order of `wanted`.
fn decode_all(wanted: &[Digest], received: Vec<Chunk>) -> Result<Vec<Bytes>, ClientError> {
    with_thread_decoder(|decoder| {
        wanted
            .iter()
            .zip(received)
            .map(|(digest, chunk)| {
                if chunk.digest != digest.as_bytes() {
                    return Err(ClientError::Integrity(format!(
                        "asked for chunk {digest}, the server sent another"
                    )));
                }
                let codec = Codec::from_wire(chunk.codec)
                    .map_err(|e| ClientError::Integrity(format!("chunk {digest}: {e}")))?;
                decoder
                    .decode_verified_owned(digest, codec, chunk.raw_length, chunk.data)
                    .map_err(|e| ClientError::Integrity(e.to_string()))
            })
            .collect()
    })
    .map_err(|e| ClientError::io("creating a zstd decoder", e))?
}
