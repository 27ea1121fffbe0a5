//! `strata push`: store a file (or stdin) and print its digest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use strata_builder::progress::ProgressLine;
use strata_builder::target::Target;
use strata_client::Progress;

use super::{ChunkingArgs, ServerArg};

#[derive(Args)]
pub struct PushArgs {
    /// File to store; `-` reads stdin.
    file: PathBuf,
    /// Print one JSON object with the transfer figures instead of the digest.
    #[arg(long)]
    json: bool,
    /// Media type recorded in the manifest.
    #[arg(long, default_value = "application/octet-stream")]
    media_type: String,
    #[command(flatten)]
    chunking: ChunkingArgs,
    #[command(flatten)]
    server: ServerArg,
}

pub async fn run(args: PushArgs) -> Result<()> {
    let config = args.server.connection(args.chunking.client_config()?)?;
    let progress = Arc::new(Progress::new());
    let file = if args.file == Path::new("-") {
        None
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        if let Ok(meta) = file.metadata() {
            progress.set_total(meta.len());
        }
        Some(file)
    };
    let target = Target::open(args.server.server.as_deref(), config).await?;
    let start = Instant::now();
    let line = ProgressLine::start("pushing", progress.clone());
    let client = &target.client;
    let report = match file {
        // Regular files can be re-read, so their SHA-256 is computed only if needed.
        Some(f) if f.metadata().is_ok_and(|m| m.is_file()) => {
            client.push_file(f, &args.media_type, &progress).await
        }
        Some(f) => client.push(f, &args.media_type, &progress).await,
        None => {
            client
                .push(std::io::stdin(), &args.media_type, &progress)
                .await
        }
    };
    line.finish().await;
    let report = report.context("push failed")?;
    target.close().await?;
    if args.json {
        let json = serde_json::json!({
            "digest": report.digest.to_string(),
            "total_bytes": report.total_bytes,
            "sent_bytes": report.sent_bytes,
            "chunks": report.chunks,
            "reused_chunks": report.reused_chunks,
            "stored_chunks": report.stored_chunks,
            "seconds": start.elapsed().as_secs_f64(),
        });
        println!("{json}");
    } else {
        println!("{}", report.digest);
    }
    Ok(())
}
