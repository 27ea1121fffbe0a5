//! The server a bench talks to: one named with `--server`, or a real gRPC
//! server started in this process on 127.0.0.1 over a store in a temporary
//! directory, removed when the bench ends.

use std::time::Duration;

use anyhow::{Context, Result};
use strata_client::{Client, ClientConfig};
use strata_server::{FsyncPolicy, ServerConfig, Store, StoreConfig};
use tokio::sync::oneshot;

/// Which server to measure.
#[derive(Clone, Debug)]
pub enum ServerChoice {
    /// A running server; what the bench pushes stays there (the protocol
    /// has no delete).
    Remote(String),
    /// A fresh loopback server over a temporary store per [`BenchServer`].
    Local { fsync: FsyncPolicy },
}

/// A running bench server and a client of it.
pub struct BenchServer {
    pub url: String,
    local: Option<LocalServer>,
}

struct LocalServer {
    _dir: tempfile::TempDir,
    store: Store,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl BenchServer {
    /// Connects to the remote server, or starts a fresh local one.
    pub async fn start(choice: &ServerChoice) -> Result<BenchServer> {
        match choice {
            ServerChoice::Remote(url) => Ok(BenchServer {
                url: url.clone(),
                local: None,
            }),
            ServerChoice::Local { fsync } => {
                let dir = tempfile::Builder::new()
                    .prefix("strata-bench-")
                    .tempdir()
                    .context("creating a temporary store directory")?;
                let path = dir.path().to_path_buf();
                let fsync = *fsync;
                let store = tokio::task::spawn_blocking(move || {
                    Store::open(
                        &path,
                        StoreConfig {
                            fsync,
                            ..StoreConfig::default()
                        },
                    )
                })
                .await??;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let url = format!("http://{}", listener.local_addr()?);
                let (shutdown, rx) = oneshot::channel::<()>();
                let served = store.clone();
                let task = tokio::spawn(async move {
                    let stopped = async {
                        let _ = rx.await;
                    };
                    if let Err(e) =
                        strata_server::serve(served, ServerConfig::default(), listener, stopped)
                            .await
                    {
                        eprintln!("bench: local server failed: {e}");
                    }
                });
                Ok(BenchServer {
                    url,
                    local: Some(LocalServer {
                        _dir: dir,
                        store,
                        shutdown,
                        task,
                    }),
                })
            }
        }
    }

    /// Whether every start gives an empty store (so "new data" is new).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    pub async fn client(&self, config: ClientConfig) -> Result<Client> {
        Client::connect(&self.url, config)
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }

    /// Waits until a local server has verified every object pushed so far
    /// (only verified objects are found by content, so a re-push measured
    /// before that would measure the miss path). A remote server is not
    /// waited for.
    pub async fn settle_verification(&self) -> Result<()> {
        if let Some(local) = &self.local {
            local.store.wait_for_verification().await;
        }
        Ok(())
    }

    /// Stops a local server and deletes its store.
    pub async fn stop(self) {
        if let Some(local) = self.local {
            let _ = local.shutdown.send(());
            let _ = tokio::time::timeout(Duration::from_secs(30), local.task).await;
        }
    }
}
