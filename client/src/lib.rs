//! Strata's thin client: connects to a cache server, pushes any byte stream
//! as deduplicated chunks and pulls objects back, verified.
//!
//! The CPU-heavy stages (chunking, hashing, compression, decompression and
//! verification) run on blocking threads, connected to the async gRPC
//! stages by bounded queues, so memory stays bounded whatever the object
//! size and the async workers only move bytes.

mod block_pool;
mod chunker;
mod error;
mod progress;
mod pull;
mod push;

use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::content_store_client::ContentStoreClient;
use strata_proto::v1::manifest_store_client::ManifestStoreClient;
use strata_proto::v1::step_cache_client::StepCacheClient;
use strata_proto::v1::tags_client::TagsClient;
use strata_proto::v1::{
    GetManifestRequest, GetTagRequest, LookupStepsRequest, RecordStepRequest, SetTagRequest,
    StatManifestRequest, StatsRequest, StatsResponse,
};
use strata_proto::{Digest, Manifest, StepResult};
use tonic::transport::{Channel, Endpoint};

pub use chunker::{
    BLOCK_BYTES, ChunkBatch, Chunker, ChunkerConfig, CutBatch, HashedChunk, chunk_all, cut_points,
    cut_points_serial,
};
pub use error::ClientError;
pub use progress::{Progress, human_bytes};
pub use pull::PullReport;
pub use push::PushReport;

/// HTTP/2 flow-control windows; must match the server's for bulk streams
/// not to stall on window updates.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// Tuning of the client's pipelines. The defaults suit a LAN or loopback.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// FastCDC sizes; they decide dedup granularity and must be the same for
    /// every client sharing a cache to dedup against each other.
    pub chunking: ChunkerConfig,
    /// zstd level for new chunks (1 is fast; 3 to 9 trade speed for size).
    pub zstd_level: i32,
    /// Concurrent chunk upload streams.
    pub upload_streams: usize,
    /// Target size of one upload message (compressed bytes).
    pub message_bytes: usize,
    /// Largest gRPC message sent or accepted.
    pub max_message_bytes: usize,
    /// Raw bytes fetched per download request.
    pub download_window_bytes: usize,
    /// Download requests in flight at once.
    pub downloads_in_flight: usize,
    /// Longest a push or pull waits on the server for one answer: a
    /// manifest, FindMissing, the start of a chunk download or its next
    /// message, room in an upload stream, an upload's reply. A server
    /// silent for longer is stalled; the transfer fails with
    /// [`ClientError::Timeout`] instead of hanging. Bounds each wait, not
    /// the whole transfer.
    pub idle_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            chunking: ChunkerConfig::default(),
            zstd_level: 1,
            upload_streams: 4,
            message_bytes: 1 << 20,
            max_message_bytes: 64 << 20,
            download_window_bytes: 8 << 20,
            downloads_in_flight: 4,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl ClientConfig {
    /// Refuses settings the pipelines cannot run with.
    pub fn validate(&self) -> Result<(), ClientError> {
        self.chunking.validate().map_err(ClientError::Config)?;
        let zstd_levels = zstd::compression_level_range();
        if !zstd_levels.contains(&self.zstd_level) {
            return Err(ClientError::Config(format!(
                "zstd level {} is outside {}..={}",
                self.zstd_level,
                zstd_levels.start(),
                zstd_levels.end()
            )));
        }
        if self.upload_streams == 0 || self.downloads_in_flight == 0 {
            return Err(ClientError::Config(
                "upload streams and downloads in flight must be at least 1".into(),
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(ClientError::Config(
                "the idle timeout must not be zero".into(),
            ));
        }
        // A message must hold at least one chunk of the largest size.
        let largest_chunk = self.chunking.max_size as usize + 1024;
        if self.max_message_bytes < largest_chunk || self.message_bytes > self.max_message_bytes {
            return Err(ClientError::Config(format!(
                "message sizes: target {} and limit {} must fit a {}-byte chunk, target within limit",
                self.message_bytes, self.max_message_bytes, largest_chunk
            )));
        }
        Ok(())
    }
}

/// Waits at most `limit` for the server's answer to `what`: a stalled
/// server must not hang the client.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &'static str,
    answer: impl std::future::Future<Output = T>,
) -> Result<T, ClientError> {
    tokio::time::timeout(limit, answer)
        .await
        .map_err(|_| ClientError::Timeout { what, after: limit })
}

/// A connection to one cache server; cheap to clone, usable from many tasks.
#[derive(Clone)]
pub struct Client {
    content: ContentStoreClient<Channel>,
    manifests: ManifestStoreClient<Channel>,
    steps: StepCacheClient<Channel>,
    tags: TagsClient<Channel>,
    admin: AdminClient<Channel>,
    channel: Channel,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (`http://host:port`), failing fast if nothing answers.
    pub async fn connect(url: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| ClientError::Config(format!("server address {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.to_owned(),
                reason: error::chain(&e),
            })?;
        Client::from_channel(channel, config)
    }

    /// Wraps an established channel (an in-process server, say).
    pub fn from_channel(channel: Channel, config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let limit = config.max_message_bytes;
        Ok(Client {
            content: ContentStoreClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            manifests: ManifestStoreClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            steps: StepCacheClient::new(channel.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            tags: TagsClient::new(channel.clone()),
            admin: AdminClient::new(channel.clone()),
            channel,
            config: Arc::new(config),
        })
    }

    /// The underlying channel, for other services on the same connection
    /// (health checks, say).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The manifest of object `digest`, checked to hash to that digest.
    pub async fn get_manifest(&self, digest: &Digest) -> Result<Manifest, ClientError> {
        let mut manifests = self.manifests.clone();
        let call = manifests.get_manifest(GetManifestRequest {
            digest: digest.to_vec(),
        });
        let response = within(self.config.idle_timeout, "get manifest", call)
            .await?
            .map_err(|s| ClientError::from_status("get manifest", s))?
            .into_inner();
        let wire = response
            .manifest
            .ok_or_else(|| ClientError::Integrity(format!("object {digest}: empty manifest")))?;
        let manifest = Manifest::from_wire(wire)
            .map_err(|e| ClientError::Integrity(format!("object {digest}: {e}")))?;
        let found = manifest.digest();
        if found != *digest {
            return Err(ClientError::Integrity(format!(
                "object {digest}: the server's manifest hashes to {found}"
            )));
        }
        Ok(manifest)
    }

    /// Whether object `digest` exists, and its length if so.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, ClientError> {
        let response = self
            .manifests
            .clone()
            .stat_manifest(StatManifestRequest {
                digest: digest.to_vec(),
            })
            .await
            .map_err(|s| ClientError::from_status("stat manifest", s))?
            .into_inner();
        Ok(response.exists.then_some(response.total_length))
    }

    /// The results recorded under `keys`, in order (`None` for a miss), in
    /// one round trip.
    pub async fn lookup_steps(
        &self,
        keys: &[Digest],
    ) -> Result<Vec<Option<StepResult>>, ClientError> {
        let response = self
            .steps
            .clone()
            .lookup_steps(LookupStepsRequest {
                keys: keys.iter().map(|k| k.to_vec()).collect(),
            })
            .await
            .map_err(|s| ClientError::from_status("look up steps", s))?
            .into_inner();
        if response.hits.len() != keys.len() {
            return Err(ClientError::Protocol(format!(
                "asked for {} step keys, the server answered {}",
                keys.len(),
                response.hits.len()
            )));
        }
        response
            .hits
            .into_iter()
            .zip(keys)
            .map(|(hit, key)| match (hit.found, hit.result) {
                (false, _) => Ok(None),
                (true, Some(wire)) => StepResult::from_wire(wire)
                    .map(Some)
                    .map_err(|e| ClientError::Integrity(format!("step {key}: {e}"))),
                (true, None) => Err(ClientError::Protocol(format!(
                    "step {key}: found, but no result sent"
                ))),
            })
            .collect()
    }

    /// Records `result` under step `key`. `Ok(true)` when it was new,
    /// `Ok(false)` when the same outcome was already there; a different
    /// outcome under the key is refused (`ClientError::Refused`).
    pub async fn record_step(
        &self,
        key: &Digest,
        result: &StepResult,
    ) -> Result<bool, ClientError> {
        let response = self
            .steps
            .clone()
            .record_step(RecordStepRequest {
                key: key.to_vec(),
                result: Some(result.to_wire()),
            })
            .await
            .map_err(|s| ClientError::from_status("record step", s))?
            .into_inner();
        Ok(response.created)
    }

    /// Points tag `name` at stored object `digest`.
    pub async fn set_tag(&self, name: &str, digest: &Digest) -> Result<(), ClientError> {
        self.tags
            .clone()
            .set_tag(SetTagRequest {
                name: name.to_owned(),
                digest: digest.to_vec(),
            })
            .await
            .map_err(|s| ClientError::from_status("set tag", s))?;
        Ok(())
    }

    /// The object tag `name` names, if it exists.
    pub async fn get_tag(&self, name: &str) -> Result<Option<Digest>, ClientError> {
        let response = self
            .tags
            .clone()
            .get_tag(GetTagRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(|s| ClientError::from_status("get tag", s))?
            .into_inner();
        if !response.found {
            return Ok(None);
        }
        Digest::from_slice(&response.digest)
            .map(Some)
            .map_err(|e| ClientError::Protocol(format!("tag {name}: {e}")))
    }

    /// The server's store figures.
    pub async fn stats(&self) -> Result<StatsResponse, ClientError> {
        Ok(self
            .admin
            .clone()
            .stats(StatsRequest {})
            .await
            .map_err(|s| ClientError::from_status("stats", s))?
            .into_inner())
    }
}
