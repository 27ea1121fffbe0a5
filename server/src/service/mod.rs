//! The gRPC face of the store: one file per service, the one mapping from
//! store errors to gRPC status codes, and the server wiring: the limits
//! (every one a field of [`ServerConfig`]), health and reflection, graceful
//! shutdown.
//!
//! Where each limit is enforced: connections (cap, handshake, idle) in
//! `listener.rs` and `connection.rs`; HTTP/2 (streams per connection,
//! keepalive) by hyper, configured in [`router`]; request messages (size,
//! upload budget, idle and message timeouts) in `request_limits.rs` and
//! `budget.rs`, in front of every service; per-request counts in the
//! services. Who may call what (bearer tokens with scopes) is checked in
//! `auth.rs`, in front of every service; TLS is set up in `tls.rs` and run
//! by the listener.

mod admin;
pub mod auth;
mod budget;
pub(crate) mod connection;
mod content;
mod listener;
mod manifest;
mod request_limits;
mod step;
mod tags;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::admin_server::AdminServer;
use strata_proto::v1::content_store_server::ContentStoreServer;
use strata_proto::v1::manifest_store_server::ManifestStoreServer;
use strata_proto::v1::step_cache_server::StepCacheServer;
use strata_proto::v1::tags_server::TagsServer;
use strata_proto::{ChunkError, Digest, FILE_DESCRIPTOR_SET, ManifestError, PublicKey, StepError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::Status;
use tonic::transport::server::{Connected, Router};
use tower::layer::util::{Identity, Stack};

use crate::metrics::{Metrics, MetricsLayer};
use crate::store::{Store, StoreError};

pub use admin::AdminService;
pub use content::ContentService;
pub use manifest::ManifestService;
pub use step::StepCacheService;
pub use tags::TagsService;

use auth::{AuthLayer, Tokens};
use request_limits::RequestLimitsLayer;
use tls::ServerTls;

/// Limits and knobs of the gRPC server. Every limit on what a client can
/// make the server hold or wait for is here, with why it has its default;
/// the defaults suit a laptop serving a team.
///
/// Memory held for request bytes is bounded by `upload_budget_bytes`
/// (messages being received, decoded, verified and stored) plus, per
/// connection, what HTTP/2 lets a client send before the server reads it:
/// at most [`CONNECTION_WINDOW_BYTES`]. So the worst case over all
/// connections is `upload_budget_bytes + max_connections ×
/// CONNECTION_WINDOW_BYTES` (256 MiB + 256 × 32 MiB with the defaults;
/// lower `max_connections` to lower it).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest gRPC message accepted or sent, in bytes; a request message
    /// over it is refused (`RESOURCE_EXHAUSTED`) from its length prefix,
    /// before any of it is buffered. 64 MiB: the manifest of a 100 GiB
    /// object (1.6 M chunk entries) fits; uploads use 1 MiB messages.
    pub max_message_bytes: usize,
    /// Most digests in one FindMissing, GetChunks or LookupSteps request
    /// (`RESOURCE_EXHAUSTED` past it). 65,536: 4 GiB of average chunks, in
    /// a 2 MiB message.
    pub max_digests_per_request: usize,
    /// Target size of one GetChunks response message. 1 MiB: large enough
    /// to stream at disk speed, small enough that a slow reader pins little.
    pub get_batch_bytes: usize,
    /// Connections served at once; past it, new connections wait in the
    /// listen backlog until one closes. 256: each costs a file descriptor
    /// and up to [`CONNECTION_WINDOW_BYTES`] of buffers, and the usual soft
    /// limit of 1,024 descriptors must also cover segments and the index.
    pub max_connections: usize,
    /// Calls (HTTP/2 streams) one connection may have open at once; the
    /// client waits for a free one past it. 100: the least RFC 9113
    /// recommends; a `strata` client opens about ten.
    pub max_streams_per_connection: u32,
    /// How long a new connection has to send the HTTP/2 preface before it
    /// is closed. 10 s: a client sends it at once; a connection that sends
    /// nothing must not hold a connection slot.
    pub handshake_timeout: Duration,
    /// How long a connection may have no call open before it is closed
    /// (GOAWAY; clients reconnect on their next call), and how long a call
    /// may leave the server waiting for its next request message before it
    /// is ended (`DEADLINE_EXCEEDED`). 5 minutes: an upload stream may
    /// pause while its client hashes a large file past chunks the server
    /// already has; a client silent for longer holds a slot for nothing.
    pub idle_timeout: Duration,
    /// How long one request message may take to arrive once its first
    /// bytes have (its bytes are reserved in the upload budget meanwhile),
    /// and how long a download may wait for its reader to take the next
    /// response message; either ends the call (`DEADLINE_EXCEEDED`).
    /// 60 s: a 1 MiB upload message at 20 KiB/s; the client waits as long
    /// for the server.
    pub message_timeout: Duration,
    /// Interval of the HTTP/2 pings the server sends on every connection.
    /// 30 s: finds a peer that vanished without closing (a dropped laptop,
    /// a cut cable) within a minute, for a few bytes per connection.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    /// 20 s: generous for any live peer, even on a congested link.
    pub keepalive_timeout: Duration,
    /// Bytes of request messages the server holds at once, all calls
    /// together, from a message's length prefix until it is stored (see
    /// `budget.rs`); when spent, the server stops reading uploads until
    /// stored messages free some (back-pressure, not an error). 256 MiB:
    /// four times the largest message, 256 upload messages of 1 MiB.
    pub upload_budget_bytes: usize,
    /// The tokens the server accepts (`--tokens FILE`); `None` serves
    /// every call to anyone, which only a loopback listener should do.
    /// With tokens, a call needs one holding the scope `auth.rs` maps it
    /// to.
    pub tokens: Option<Arc<Tokens>>,
    /// TLS identity (`--tls-cert`, `--tls-key`); `None` serves plain
    /// HTTP/2. The handshake runs inside the connection permit and the
    /// handshake deadline.
    pub tls: Option<ServerTls>,
    /// Where the services count what they serve (calls, bytes, uploads,
    /// step lookups, clients), for `Stats` and the `/metrics` endpoint;
    /// hand the same one to [`crate::serve_metrics`]. A fresh one for
    /// each default config.
    pub metrics: Arc<Metrics>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_bytes: 64 << 20,
            max_digests_per_request: 1 << 16,
            get_batch_bytes: 1 << 20,
            max_connections: 256,
            max_streams_per_connection: 100,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            message_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            upload_budget_bytes: 256 << 20,
            tokens: None,
            tls: None,
            metrics: Metrics::new(),
        }
    }
}

/// The single place a store error becomes a gRPC status.
///
/// A client sees what it can act on and nothing of the server's insides:
/// errors of the server's own making are logged here in full and reach the
/// client as one line without paths.
pub(crate) fn status_of(e: StoreError) -> Status {
    if e.is_storage_full() {
        tracing::error!(error = %e, "a write met a full disk");
        return Status::resource_exhausted(
            "the server's disk is full: the write was not stored; retry once space is freed",
        );
    }
    match e {
        StoreError::ChunkNotFound(_) | StoreError::ManifestNotFound(_) => {
            Status::not_found(e.to_string())
        }
        StoreError::ManifestIncomplete { .. } | StoreError::ManifestLengthMismatch { .. } => {
            Status::failed_precondition(e.to_string())
        }
        StoreError::StepLayerMissing { .. }
        | StoreError::TagTargetMissing { .. }
        | StoreError::TagStale(_) => Status::failed_precondition(e.to_string()),
        StoreError::StepDivergence(_) => Status::already_exists(e.to_string()),
        StoreError::BadManifest(
            ManifestError::ChunkTooLarge { .. } | ManifestError::MediaTypeTooLong(_),
        )
        | StoreError::BadStepResult(StepError::TooLarge { .. }) => {
            Status::resource_exhausted(e.to_string())
        }
        StoreError::BadManifest(_)
        | StoreError::BadStepResult(_)
        | StoreError::BadTag { .. }
        | StoreError::BadSignature(_) => Status::invalid_argument(e.to_string()),
        StoreError::Corrupt { .. } => Status::data_loss(e.to_string()),
        StoreError::ShuttingDown => Status::unavailable(e.to_string()),
        StoreError::CapReached { .. } => Status::resource_exhausted(e.to_string()),
        StoreError::Locked { .. }
        | StoreError::CapTooSmall { .. }
        | StoreError::DataDir { .. }
        | StoreError::Index(_)
        | StoreError::Io { .. }
        | StoreError::StorageFull { .. } => internal("the store failed", &e),
    }
}

/// The status of an uploaded chunk that failed verification: a size limit
/// is `RESOURCE_EXHAUSTED`, anything else a bad request.
pub(crate) fn chunk_refusal(e: ChunkError) -> Status {
    match e {
        ChunkError::TooLarge { .. } => Status::resource_exhausted(format!("refused upload: {e}")),
        _ => Status::invalid_argument(format!("refused upload: {e}")),
    }
}

/// An error of the server's own making: logged in full, reported to the
/// client as `what` alone.
pub(crate) fn internal(what: &str, e: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what}");
    Status::internal(format!("{what}; the server's log has the details"))
}

/// Parses wire digests, naming the first bad one.
pub(crate) fn parse_digests(raw: &[Vec<u8>], limit: usize) -> Result<Vec<Digest>, Status> {
    if raw.len() > limit {
        return Err(Status::resource_exhausted(format!(
            "request names {} digests; the limit is {limit} (max_digests_per_request)",
            raw.len()
        )));
    }
    raw.iter()
        .enumerate()
        .map(|(i, d)| {
            Digest::from_slice(d).map_err(|e| Status::invalid_argument(format!("digest {i}: {e}")))
        })
        .collect()
}

/// Most signers one lookup may name as trusted: a trust list is a handful
/// of keys, and each is compared against every result under a key.
pub(crate) const MAX_TRUSTED_SIGNERS: usize = 64;

/// The trusted signers of a lookup, checked for shape and count.
pub(crate) fn parse_signers(raw: &[Vec<u8>]) -> Result<Vec<PublicKey>, Status> {
    if raw.len() > MAX_TRUSTED_SIGNERS {
        return Err(Status::resource_exhausted(format!(
            "request names {} trusted signers; the limit is {MAX_TRUSTED_SIGNERS}",
            raw.len()
        )));
    }
    raw.iter()
        .enumerate()
        .map(|(i, k)| {
            PublicKey::from_slice(k)
                .map_err(|e| Status::invalid_argument(format!("trusted signer {i}: {e}")))
        })
        .collect()
}

/// Runs `f` on the blocking pool (the store's calls block on sled and disk).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal("a store task failed", &e))?
        .map_err(status_of)
}

/// HTTP/2 flow-control windows. The defaults (64 KiB) stall a bulk stream
/// every few chunks waiting for window updates; a few MiB keep loopback and
/// LAN transfers streaming. Clients use the same figures.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// The services behind the metrics, the request limits and the token
/// check (outermost first), ready to serve.
pub(crate) type LimitedRouter =
    Router<Stack<AuthLayer, Stack<RequestLimitsLayer, Stack<MetricsLayer, Identity>>>>;

fn router(store: Store, config: &ServerConfig) -> Result<LimitedRouter, StoreError> {
    let limit = config.max_message_bytes;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // The reporter's setters only fail if the health service is gone; it
    // lives in the router we return.
    let reporter = health_reporter.clone();
    tokio::spawn(async move {
        reporter
            .set_serving::<ContentStoreServer<ContentService>>()
            .await;
        reporter
            .set_serving::<ManifestStoreServer<ManifestService>>()
            .await;
        reporter
            .set_serving::<StepCacheServer<StepCacheService>>()
            .await;
        reporter.set_serving::<TagsServer<TagsService>>().await;
        reporter.set_serving::<AdminServer<AdminService>>().await;
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StoreError::io("building gRPC reflection", std::io::Error::other(e)))?;
    Ok(tonic::transport::Server::builder()
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .max_frame_size(Some(1 << 20))
        .max_concurrent_streams(Some(config.max_streams_per_connection.max(1)))
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .layer(MetricsLayer::new(config.metrics.clone()))
        .layer(RequestLimitsLayer::new(config))
        .layer(AuthLayer::new(config.tokens.clone()))
        .add_service(
            health
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            reflection
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            ContentStoreServer::new(ContentService::new(store.clone(), config.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            ManifestStoreServer::new(ManifestService::new(store.clone(), config.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            StepCacheServer::new(StepCacheService::new(store.clone(), config.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            TagsServer::new(TagsService::new(store.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            AdminServer::new(AdminService::new(store, config.metrics.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        ))
}

/// Serves the store on a bound listener until `shutdown` resolves, then
/// stops accepting, finishes in-flight requests and returns.
pub async fn serve(
    store: Store,
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, max_connections = config.max_connections, "serving");
    let router = router(store, &config)?;
    listener::run(router, listener, &config, shutdown).await;
    Ok(())
}

/// Serves the store over any stream of connections (the CLI's embedded mode
/// uses in-memory pipes). The request limits and tokens apply; the
/// connection limits (cap, handshake, idle) and TLS are the stream's
/// business.
pub async fn serve_incoming<IO, IE, I>(
    store: Store,
    config: ServerConfig,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    router(store, &config)?
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| StoreError::io("serving gRPC", std::io::Error::other(e)))
}
