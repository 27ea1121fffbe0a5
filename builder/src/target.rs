//! Which cache a command talks to: the server named by `--server` /
//! `STRATA_SERVER`, or — with neither — the embedded store in the user's
//! cache directory, served in-process so it runs the very same code.

use std::path::PathBuf;

use strata_client::{Client, ClientConfig, ClientError};
use strata_server::{EmbeddedServer, StoreConfig, StoreError};

/// Environment variable naming the embedded store's directory (default:
/// the user's cache directory, e.g. `~/.cache/strata/store`).
pub const CACHE_DIR_ENV: &str = "STRATA_CACHE_DIR";

/// Why the cache could not be reached or closed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Connect(#[from] ClientError),
    #[error("the local cache {dir}: {source}")]
    Embedded {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(
        "no cache directory for this user (set {CACHE_DIR_ENV}, or name a server with --server)"
    )]
    NoCacheDir,
}

/// A connected client, and the embedded server behind it if there is one.
pub struct Target {
    pub client: Client,
    /// The embedded server and its directory.
    embedded: Option<(EmbeddedServer, PathBuf)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("embedded", &self.embedded.is_some())
            .finish_non_exhaustive()
    }
}

/// How often a command waiting for the embedded store tries again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Opens the embedded store in `dir`, waiting (and saying so, once) while
/// another command holds it, as cargo waits for its build directory: two
/// builds on one laptop take turns instead of the second failing.
async fn open_embedded(dir: &std::path::Path) -> Result<EmbeddedServer, TargetError> {
    let mut told = false;
    loop {
        match EmbeddedServer::open(dir, StoreConfig::default()).await {
            Err(StoreError::Locked { .. }) => {
                if !told {
                    eprintln!(
                        "strata: waiting for another strata command using the cache at {} \
                         (to share one cache at once, run `strata serve` and pass --server)",
                        dir.display()
                    );
                    told = true;
                }
                tokio::time::sleep(LOCK_POLL).await;
            }
            result => {
                return result.map_err(|source| TargetError::Embedded {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

impl Target {
    /// Connects to `server`, or opens the embedded store when it is `None`.
    pub async fn open(server: Option<&str>, config: ClientConfig) -> Result<Target, TargetError> {
        match server {
            Some(url) => Ok(Target {
                client: Client::connect(&normalize_url(url), config).await?,
                embedded: None,
            }),
            None => {
                let dir = embedded_store_dir()?;
                let embedded = open_embedded(&dir).await?;
                let client = Client::from_channel(embedded.channel(), config)?;
                Ok(Target {
                    client,
                    embedded: Some((embedded, dir)),
                })
            }
        }
    }

    /// Closes the embedded store cleanly (flushing its index), if any.
    pub async fn close(self) -> Result<(), TargetError> {
        drop(self.client);
        if let Some((server, dir)) = self.embedded {
            server
                .shutdown()
                .await
                .map_err(|source| TargetError::Embedded { dir, source })?;
        }
        Ok(())
    }
}

/// `host:port` is accepted for `http://host:port`.
fn normalize_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// Where the embedded store lives.
pub fn embedded_store_dir() -> Result<PathBuf, TargetError> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let base = dirs::cache_dir().ok_or(TargetError::NoCacheDir)?;
    Ok(base.join("strata").join("store"))
}
