//! One file per command, and the flags several commands share.

pub mod build;
pub mod gc;
pub mod pull;
pub mod push;
pub mod serve;
pub mod signing;
pub mod stat;
pub mod token;
pub mod top;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use strata_client::{BearerToken, ChunkerConfig, ClientConfig};
use strata_proto::Digest;

#[derive(Args)]
pub struct ServerArg {
    /// Cache server URL (http://host:port, or https://host:port for TLS).
    /// Without it, and without STRATA_SERVER, the embedded store in the
    /// user's cache directory is used.
    #[arg(long, env = "STRATA_SERVER")]
    pub server: Option<String>,
    /// Bearer token for a server started with --tokens (from `strata token
    /// new`). Prefer STRATA_TOKEN: a flag shows in the process list.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed an https:// server's certificate
    /// (default: the system's roots).
    #[arg(long, value_name = "FILE", env = "STRATA_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Seconds a push or pull keeps trying again while the server is
    /// unavailable (restarting, connection lost); 0 for never.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub retry_for: u64,
}

impl ServerArg {
    /// `config` with this connection's token and TLS CA.
    pub fn connection(&self, config: ClientConfig) -> Result<ClientConfig> {
        let token = match &self.token {
            Some(text) => Some(BearerToken::new(text).context("--token / STRATA_TOKEN")?),
            None => None,
        };
        Ok(ClientConfig {
            token,
            tls_ca: self.tls_ca.clone(),
            retry_for: std::time::Duration::from_secs(self.retry_for),
            ..config
        })
    }
}

/// How new content is cut and compressed: every client of one cache should
/// agree on the chunk size, or they will not share chunks.
#[derive(Args)]
pub struct ChunkingArgs {
    /// Average chunk size in KiB.
    #[arg(long, default_value_t = 64)]
    pub chunk_kib: u32,
    /// zstd level for new chunks.
    #[arg(long, default_value_t = 1)]
    pub zstd_level: i32,
}

impl ChunkingArgs {
    pub fn client_config(&self) -> Result<ClientConfig> {
        let avg = self
            .chunk_kib
            .checked_mul(1024)
            .context("--chunk-kib is too large")?;
        Ok(ClientConfig {
            chunking: ChunkerConfig::with_average(avg),
            zstd_level: self.zstd_level,
            ..ClientConfig::default()
        })
    }
}

pub fn parse_digest(text: &str) -> Result<Digest> {
    text.parse()
        .with_context(|| format!("{text:?} is not an object digest (expected b3:<64 hex digits>)"))
}
