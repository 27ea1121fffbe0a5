//! Strata's thin client: connects to a cache server, pushes any byte stream
//! as deduplicated chunks and pulls objects back, verified.
//!
//! The CPU-heavy stages (chunking, hashing, compression, decompression and
//! verification) run on blocking threads, connected to the async gRPC
//! stages by bounded queues, so memory stays bounded whatever the object
//! size and the async workers only move bytes.
//!
//! A connection may be TLS (`https://` URLs, rustls, the system's roots or
//! a CA file) and may carry a bearer token, sent with every call.

mod block_pool;
mod chunker;
mod error;
mod known_manifests;
mod progress;
mod pull;
mod push;
mod retry;
mod trust;
pub mod trust_files;
mod whole_object;

use std::path::PathBuf;
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
use strata_proto::{Digest, Manifest, SignedTag, StepResult};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use chunker::{
    BLOCK_BYTES, ChunkBatch, Chunker, ChunkerConfig, CutBatch, HashedChunk, chunk_all, cut_points,
    cut_points_serial,
};
pub use error::ClientError;
pub use progress::{Progress, human_bytes};
pub use pull::PullReport;
pub use push::PushReport;
pub use trust::{Distrust, StepLookup, TagLookup, TrustPolicy};
pub use whole_object::KnownObject;

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
    /// Bearer token sent with every call (`--token`, `STRATA_TOKEN`), for
    /// servers started with `--tokens`.
    pub token: Option<BearerToken>,
    /// PEM file of the CA(s) an `https://` server's certificate must chain
    /// to (`--tls-ca`, `STRATA_TLS_CA`); without it, the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// How long a push of a file or a pull keeps starting again while the
    /// server is unavailable (restarting, a broken connection), waiting
    /// 0.25 s, then doubling up to 5 s between tries (`--retry-for`,
    /// default 30 s). Safe because every step is idempotent: what the
    /// server stored before is found, not sent again. Zero turns retries
    /// off.
    pub retry_for: Duration,
    /// The key this client signs step results and tags with, and the
    /// signers whose entries it uses (its own first). The default signs
    /// nothing and trusts no one: every hit is `untrusted`.
    pub trust: TrustPolicy,
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
            token: None,
            tls_ca: None,
            retry_for: Duration::from_secs(30),
            trust: TrustPolicy::default(),
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

/// Path of the standard gRPC health check, open to every caller.
const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// One health check, so a connection that only looks established fails
/// here, clearly: HTTP/2 opens without waiting for the server's answer, so
/// a plain client talking to a TLS server (or to something that is not a
/// gRPC server) learns of it only at its first call. Any gRPC answer, even
/// a refusal, proves the transport works. A server at its connection cap
/// answers late, not never: the probe waits as long as any call would.
async fn probe(channel: Channel, url: &str, tls: bool, limit: Duration) -> Result<(), ClientError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready().await.map_err(|e| error::chain(&e))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(HEALTH_CHECK_PATH);
        // `()` is protobuf's empty message: an empty HealthCheckRequest
        // asks about the whole server, and the reply's fields are skipped.
        match grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if error::is_transport_failure(&status) => {
                Err(error::status_chain(&status))
            }
            Err(_) => Ok(()),
        }
    };
    let unreachable = |reason: String| ClientError::Unreachable {
        url: url.to_owned(),
        reason: error::with_scheme_hint(reason, tls),
    };
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| unreachable(format!("no answer to a health check within {limit:?}")))?
        .map_err(unreachable)
}

/// TLS settings for an `https://` server: its certificate must chain to
/// the CA file's certificates, or else to the system's roots.
fn tls_config(ca: Option<&std::path::Path>) -> Result<ClientTlsConfig, ClientError> {
    let config = ClientTlsConfig::new();
    match ca {
        None => Ok(config.with_native_roots()),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError::io(format!("reading TLS CA {}", path.display()), e))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(ClientError::Config(format!(
                    "TLS CA {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
                    path.display()
                )));
            }
            Ok(config.ca_certificate(Certificate::from_pem(pem)))
        }
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

/// A bearer token, kept out of logs and debug output.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl BearerToken {
    /// Checks that `token` can travel in a header (visible ASCII, not
    /// empty); surrounding whitespace (a newline from a file) is dropped.
    pub fn new(token: &str) -> Result<BearerToken, ClientError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(ClientError::Config("the token is empty".into()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Config(
                "the token holds characters other than visible ASCII; copy it exactly as `strata token new` printed it".into(),
            ));
        }
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Config("the token cannot be sent in a header".into()))?;
        // Never put it in the HTTP/2 header compression table.
        value.set_sensitive(true);
        Ok(BearerToken(value))
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Adds the `authorization` header to every call, when there is a token.
#[derive(Clone, Debug)]
pub struct Authorization(Option<BearerToken>);

impl Interceptor for Authorization {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(BearerToken(value)) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel every call goes through: the connection, and the token.
pub type AuthChannel = InterceptedService<Channel, Authorization>;

/// A connection to one cache server; cheap to clone, usable from many tasks.
#[derive(Clone)]
pub struct Client {
    content: ContentStoreClient<AuthChannel>,
    manifests: ManifestStoreClient<AuthChannel>,
    steps: StepCacheClient<AuthChannel>,
    tags: TagsClient<AuthChannel>,
    admin: AdminClient<AuthChannel>,
    channel: Channel,
    config: Arc<ClientConfig>,
    /// Manifests step lookups brought along, checked (shared by clones).
    known: Arc<known_manifests::KnownManifests>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (`http://host:port`, or `https://host:port` for
    /// TLS), failing fast if nothing answers.
    pub async fn connect(url: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| ClientError::Config(format!("server address {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES));
        let tls = url
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
        if tls {
            endpoint = endpoint
                .tls_config(tls_config(config.tls_ca.as_deref())?)
                .map_err(|e| ClientError::Config(format!("TLS for {url}: {}", error::chain(&e))))?;
        } else if let Some(ca) = &config.tls_ca {
            return Err(ClientError::Config(format!(
                "a TLS CA ({}) was given for {url}, which is plain HTTP; use an https:// URL",
                ca.display()
            )));
        }
        // A handshake that hangs (a server that is not what the URL says)
        // must fail like an unreachable one, not hang the client; a TLS
        // server at its connection cap answers late, so allow what a call
        // would be allowed.
        let limit = config.idle_timeout;
        let channel = tokio::time::timeout(limit, endpoint.connect())
            .await
            .map_err(|_| ClientError::Unreachable {
                url: url.to_owned(),
                reason: format!("no answer to the connection handshake within {limit:?}"),
            })?
            .map_err(|e| ClientError::Unreachable {
                url: url.to_owned(),
                reason: error::unreachable_reason(&e, tls),
            })?;
        probe(channel.clone(), url, tls, config.idle_timeout).await?;
        Client::from_channel(channel, config)
    }

    /// Wraps an established channel (an in-process server, say).
    pub fn from_channel(channel: Channel, config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let limit = config.max_message_bytes;
        let auth = Authorization(config.token.clone());
        let with_auth = || InterceptedService::new(channel.clone(), auth.clone());
        Ok(Client {
            content: ContentStoreClient::new(with_auth())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            manifests: ManifestStoreClient::new(with_auth())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            steps: StepCacheClient::new(with_auth())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            tags: TagsClient::new(with_auth()),
            admin: AdminClient::new(with_auth()),
            channel,
            config: Arc::new(config),
            known: Arc::default(),
        })
    }

    /// The underlying channel, for other services on the same connection
    /// (health checks, say). It carries no token: wrap it in
    /// [`Client::authorization`] for calls that need one.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The interceptor that adds this client's token to a call.
    pub fn authorization(&self) -> Authorization {
        Authorization(self.config.token.clone())
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The manifest of object `digest`, checked to hash to that digest: one
    /// a step lookup brought along, or else the server's answer.
    pub async fn get_manifest(&self, digest: &Digest) -> Result<Manifest, ClientError> {
        if let Some(known) = self.known.get(digest) {
            return Ok(known);
        }
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

    /// What this client signs with and whose entries it uses.
    pub fn trust(&self) -> &TrustPolicy {
        &self.config.trust
    }

    /// The results recorded under `keys` that this client uses, in order
    /// (`None` for a miss or an untrusted result), in one round trip.
    pub async fn lookup_steps(
        &self,
        keys: &[Digest],
    ) -> Result<Vec<Option<StepResult>>, ClientError> {
        Ok(self
            .lookup_steps_judged(keys)
            .await?
            .into_iter()
            .map(|l| match l {
                StepLookup::Hit(r) => Some(r),
                StepLookup::Miss | StepLookup::Untrusted(_) => None,
            })
            .collect())
    }

    /// What is recorded under each of `keys`, judged by this client's trust
    /// policy (see [`StepLookup`]), in order, in one round trip.
    pub async fn lookup_steps_judged(
        &self,
        keys: &[Digest],
    ) -> Result<Vec<StepLookup>, ClientError> {
        let response = self
            .steps
            .clone()
            .lookup_steps(LookupStepsRequest {
                keys: keys.iter().map(|k| k.to_vec()).collect(),
                trusted_signers: self.trusted_signers(),
                include_layer_manifests: true,
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
            .map(|(hit, key)| {
                let lookup = match (hit.found, hit.result) {
                    (false, _) => StepLookup::Miss,
                    (true, Some(wire)) => StepResult::from_wire(wire)
                        .map(|r| self.config.trust.judge_step(key, r))
                        .map_err(|e| ClientError::Integrity(format!("step {key}: {e}")))?,
                    (true, None) => {
                        return Err(ClientError::Protocol(format!(
                            "step {key}: found, but no result sent"
                        )));
                    }
                };
                if let Some(wire) = hit.layer_manifest {
                    self.keep_layer_manifest(key, &lookup, wire)?;
                }
                Ok(lookup)
            })
            .collect()
    }

    /// Keeps the manifest a lookup sent with the hit under `key`: it must
    /// hash to the layer the (trusted, verified) result names. One sent
    /// with an entry this client does not use is dropped unread.
    fn keep_layer_manifest(
        &self,
        key: &Digest,
        lookup: &StepLookup,
        wire: strata_proto::v1::Manifest,
    ) -> Result<(), ClientError> {
        let layer = match lookup {
            StepLookup::Hit(result) => result.layer,
            StepLookup::Untrusted(_) => return Ok(()),
            StepLookup::Miss => {
                return Err(ClientError::Protocol(format!(
                    "step {key}: a layer manifest was sent for a miss"
                )));
            }
        };
        let Some(layer) = layer else {
            return Err(ClientError::Protocol(format!(
                "step {key}: a layer manifest was sent for a result without a layer"
            )));
        };
        let manifest = Manifest::from_wire(wire)
            .map_err(|e| ClientError::Integrity(format!("step {key}, layer {layer}: {e}")))?;
        let found = manifest.digest();
        if found != layer {
            return Err(ClientError::Integrity(format!(
                "step {key}: the manifest sent for layer {layer} hashes to {found}"
            )));
        }
        self.known.keep(layer, manifest);
        Ok(())
    }

    fn trusted_signers(&self) -> Vec<Vec<u8>> {
        self.config
            .trust
            .trusted()
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect()
    }

    fn signing_key(&self, what: &str) -> Result<&strata_proto::SigningKey, ClientError> {
        self.config.trust.signing_key().ok_or_else(|| {
            ClientError::Config(format!(
                "{what} needs a signing key (`--signing-key FILE`, `STRATA_SIGNING_KEY`), \
                 and this client has none"
            ))
        })
    }

    /// Signs `result` with this client's key and records it under step
    /// `key`. `Ok(true)` when it was new, `Ok(false)` when this signer had
    /// recorded the same outcome; a different outcome of theirs under the
    /// key is refused (`ClientError::Refused`).
    pub async fn record_step(
        &self,
        key: &Digest,
        result: &StepResult,
    ) -> Result<bool, ClientError> {
        let mut signed = result.clone();
        signed.sign(key, self.signing_key("recording a step result")?);
        let response = self
            .steps
            .clone()
            .record_step(RecordStepRequest {
                key: key.to_vec(),
                result: Some(signed.to_wire()),
            })
            .await
            .map_err(|s| ClientError::from_status("record step", s))?
            .into_inner();
        Ok(response.created)
    }

    /// Points tag `name` at stored object `digest`, signed with this
    /// client's key and stamped with the time.
    pub async fn set_tag(&self, name: &str, digest: &Digest) -> Result<(), ClientError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let tag = SignedTag::sign(name, *digest, now_ms, self.signing_key("setting a tag")?);
        self.tags
            .clone()
            .set_tag(SetTagRequest {
                tag: Some(tag.to_wire()),
            })
            .await
            .map_err(|s| ClientError::from_status("set tag", s))?;
        Ok(())
    }

    /// The object tag `name` names, if a trusted signer set it.
    pub async fn get_tag(&self, name: &str) -> Result<Option<Digest>, ClientError> {
        Ok(match self.get_tag_judged(name).await? {
            TagLookup::Hit(tag) => Some(tag.target),
            TagLookup::Miss | TagLookup::Untrusted(_) => None,
        })
    }

    /// Tag `name` as this client's trust policy sees it.
    pub async fn get_tag_judged(&self, name: &str) -> Result<TagLookup, ClientError> {
        let response = self
            .tags
            .clone()
            .get_tag(GetTagRequest {
                name: name.to_owned(),
                trusted_signers: self.trusted_signers(),
            })
            .await
            .map_err(|s| ClientError::from_status("get tag", s))?
            .into_inner();
        if !response.found {
            return Ok(TagLookup::Miss);
        }
        SignedTag::from_wire(response.tag)
            .map(|tag| self.config.trust.judge_tag(name, tag))
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
