//! The store served in-process: the CLI's default when no server is named.
//!
//! The real gRPC services run over in-memory pipes, so the embedded path
//! exercises exactly the code a remote client does — only the socket is
//! missing. Dropping the [`EmbeddedServer`] shuts the services down; the
//! store closes once the last request using it has finished.

use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::{ServerConfig, Store, StoreConfig, StoreError};

/// Bytes buffered in each direction of one in-memory connection.
const PIPE_BYTES: usize = 4 << 20;

/// A running in-process server and the channel to reach it.
pub struct EmbeddedServer {
    channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
}

impl std::fmt::Debug for EmbeddedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedServer").finish_non_exhaustive()
    }
}

impl EmbeddedServer {
    /// Opens the store in `dir` and serves it in-process.
    pub async fn open(dir: &Path, store_config: StoreConfig) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, store_config))
            .await
            .map_err(|e| StoreError::io("opening the store", std::io::Error::other(e)))??;
        Self::start(store, ServerConfig::default())
    }

    /// Serves an open store in-process.
    pub fn start(store: Store, config: ServerConfig) -> Result<Self, StoreError> {
        let (conn_tx, conn_rx) = mpsc::channel::<std::io::Result<tokio::io::DuplexStream>>(4);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve_incoming(
            store,
            config,
            ReceiverStream::new(conn_rx),
            async {
                let _ = shutdown_rx.await;
            },
        ));
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let conn_tx = conn_tx.clone();
            async move {
                let (client, server) = tokio::io::duplex(PIPE_BYTES);
                conn_tx
                    .send(Ok(server))
                    .await
                    .map_err(|_| std::io::Error::other("the embedded server has stopped"))?;
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        });
        let channel = Endpoint::from_static("http://embedded.strata")
            .initial_stream_window_size(Some(crate::service::STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(crate::service::CONNECTION_WINDOW_BYTES))
            .connect_with_connector_lazy(connector);
        Ok(EmbeddedServer {
            channel,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// A channel to the embedded services; cheap to clone.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Stops serving and waits for in-flight requests and the store to close.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        self.shutdown.take().map(|tx| tx.send(()));
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| StoreError::io("embedded server", std::io::Error::other(e)))?,
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.shutdown.take().map(|tx| tx.send(()));
    }
}
