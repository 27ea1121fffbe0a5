//! Which cache a command talks to: the server named by `--server` /
//! `STRATA_SERVER`, or — with neither — the embedded store in the user's
//! cache directory, served in-process so it runs the very same code.

use std::path::PathBuf;

use anyhow::{Context, Result};
use strata_client::{Client, ClientConfig};
use strata_server::{EmbeddedServer, StoreConfig};

/// Environment variable naming the embedded store's directory (default:
/// the user's cache directory, e.g. `~/.cache/strata/store`).
pub const CACHE_DIR_ENV: &str = "STRATA_CACHE_DIR";

/// A connected client, and the embedded server behind it if there is one.
pub struct Target {
    pub client: Client,
    embedded: Option<EmbeddedServer>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("embedded", &self.embedded.is_some())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Connects to `server`, or opens the embedded store when it is `None`.
    pub async fn open(server: Option<&str>, config: ClientConfig) -> Result<Target> {
        match server {
            Some(url) => Ok(Target {
                client: Client::connect(&normalize_url(url), config).await?,
                embedded: None,
            }),
            None => {
                let dir = embedded_store_dir()?;
                let embedded = EmbeddedServer::open(&dir, StoreConfig::default())
                    .await
                    .with_context(|| format!("opening the local cache {}", dir.display()))?;
                let client = Client::from_channel(embedded.channel(), config)?;
                Ok(Target {
                    client,
                    embedded: Some(embedded),
                })
            }
        }
    }

    /// Closes the embedded store cleanly (flushing its index), if any.
    pub async fn close(self) -> Result<()> {
        drop(self.client);
        if let Some(e) = self.embedded {
            e.shutdown().await.context("closing the local cache")?;
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
pub fn embedded_store_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let base = dirs::cache_dir().context(
        "no cache directory for this user (set STRATA_CACHE_DIR, or name a server with --server)",
    )?;
    Ok(base.join("strata").join("store"))
}
