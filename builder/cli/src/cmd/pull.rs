//! `strata pull`: write a stored object to a file (atomically, verified) or
//! to stdout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use strata_builder::progress::ProgressLine;
use strata_builder::target::Target;
use strata_client::{ClientConfig, ClientError, Progress};

use super::{ServerArg, parse_digest};

#[derive(Args)]
pub struct PullArgs {
    /// Object digest, `b3:<hex>`.
    digest: String,
    /// Output file; `-` writes to stdout.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    server: ServerArg,
}

pub async fn run(args: PullArgs) -> Result<()> {
    let digest = parse_digest(&args.digest)?;
    let config = args.server.connection(ClientConfig::default())?;
    let target = Target::open(args.server.server.as_deref(), config).await?;
    let progress = Arc::new(Progress::new());
    let line = ProgressLine::start("pulling", progress.clone());
    let result = if args.output == Path::new("-") {
        target
            .client
            .pull(&digest, std::io::stdout(), &progress)
            .await
            .map(|_| ())
    } else {
        target
            .client
            .pull_to_file(&digest, &args.output, &progress)
            .await
            .map(|_| ())
    };
    line.finish().await;
    let closed = target.close().await;
    match result {
        Err(ClientError::NotFound(_)) => {
            bail!("unknown digest {digest}: the cache does not hold it")
        }
        r => r.with_context(|| format!("pull of {digest} failed"))?,
    }
    Ok(closed?)
}
