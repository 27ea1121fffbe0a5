//! One file per command, and the flags several commands share.

pub mod build;
pub mod gc;
pub mod pull;
pub mod push;
pub mod serve;
pub mod stat;

use anyhow::{Context, Result};
use clap::Args;
use strata_client::{ChunkerConfig, ClientConfig};
use strata_proto::Digest;

#[derive(Args)]
pub struct ServerArg {
    /// Cache server URL (http://host:port). Without it, and without
    /// STRATA_SERVER, the embedded store in the user's cache directory is used.
    #[arg(long, env = "STRATA_SERVER")]
    pub server: Option<String>,
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
