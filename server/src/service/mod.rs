//! The gRPC face of the store: one file per service, the one mapping from
//! store errors to gRPC status codes, and the server wiring (limits, health,
//! reflection, graceful shutdown).

mod admin;
mod content;
mod manifest;
mod step;
mod tags;

use std::future::Future;
use std::net::SocketAddr;

use strata_proto::v1::admin_server::AdminServer;
use strata_proto::v1::content_store_server::ContentStoreServer;
use strata_proto::v1::manifest_store_server::ManifestStoreServer;
use strata_proto::v1::step_cache_server::StepCacheServer;
use strata_proto::v1::tags_server::TagsServer;
use strata_proto::{Digest, FILE_DESCRIPTOR_SET};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::Status;
use tonic::transport::server::Connected;

use crate::store::{Store, StoreError};

pub use admin::AdminService;
pub use content::ContentService;
pub use manifest::ManifestService;
pub use step::StepCacheService;
pub use tags::TagsService;

/// Limits and knobs of the gRPC server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Most digests in one FindMissing or GetChunks request.
    pub max_digests_per_request: usize,
    /// Target size of one GetChunks response message.
    pub get_batch_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_bytes: 64 << 20,
            max_digests_per_request: 1 << 16,
            get_batch_bytes: 1 << 20,
        }
    }
}

/// The single place a store error becomes a gRPC status.
pub(crate) fn status_of(e: StoreError) -> Status {
    match e {
        StoreError::ChunkNotFound(_) | StoreError::ManifestNotFound(_) => {
            Status::not_found(e.to_string())
        }
        StoreError::ManifestIncomplete { .. } | StoreError::ManifestLengthMismatch { .. } => {
            Status::failed_precondition(e.to_string())
        }
        StoreError::StepLayerMissing { .. } | StoreError::TagTargetMissing { .. } => {
            Status::failed_precondition(e.to_string())
        }
        StoreError::StepDivergence { .. } => Status::already_exists(e.to_string()),
        StoreError::BadManifest(_) | StoreError::BadStepResult(_) | StoreError::BadTag { .. } => {
            Status::invalid_argument(e.to_string())
        }
        StoreError::Corrupt { .. } => Status::data_loss(e.to_string()),
        StoreError::ShuttingDown => Status::unavailable(e.to_string()),
        StoreError::Locked { .. }
        | StoreError::DataDir { .. }
        | StoreError::Index(_)
        | StoreError::Io { .. } => Status::internal(e.to_string()),
    }
}

/// Parses wire digests, naming the first bad one.
pub(crate) fn parse_digests(raw: &[Vec<u8>], limit: usize) -> Result<Vec<Digest>, Status> {
    if raw.len() > limit {
        return Err(Status::resource_exhausted(format!(
            "request names {} digests; the limit is {limit}",
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

/// Runs `f` on the blocking pool (the store's calls block on sled and disk).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(status_of)
}

/// HTTP/2 flow-control windows. The defaults (64 KiB) stall a bulk stream
/// every few chunks waiting for window updates; a few MiB keep loopback and
/// LAN transfers streaming. Clients use the same figures.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

fn router(
    store: Store,
    config: &ServerConfig,
) -> Result<tonic::transport::server::Router, StoreError> {
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
        .add_service(health)
        .add_service(reflection)
        .add_service(
            ContentStoreServer::new(ContentService::new(store.clone(), config.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            ManifestStoreServer::new(ManifestService::new(store.clone()))
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
            AdminServer::new(AdminService::new(store))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        ))
}

/// Serves the store on a bound listener until `shutdown` resolves, then
/// finishes in-flight requests and returns.
pub async fn serve(
    store: Store,
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "serving");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    router(store, &config)?
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| StoreError::io("serving gRPC", std::io::Error::other(e)))
}

/// Serves the store over any stream of connections (the CLI's embedded mode
/// uses in-memory pipes).
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
