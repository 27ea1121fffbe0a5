//! `strata gc`: one garbage collection now (the `Admin.Gc` call), and what
//! it freed.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use strata_builder::progress::human_bytes;
use strata_builder::target::Target;
use strata_client::ClientConfig;
use strata_proto::v1::GcRequest;
use strata_proto::v1::admin_client::AdminClient;

use super::ServerArg;

#[derive(Args)]
pub struct GcArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

pub async fn run(args: GcArgs) -> Result<()> {
    let target = Target::open(args.server.server.as_deref(), ClientConfig::default()).await?;
    let mut admin = AdminClient::new(target.client.channel());
    let result = admin.gc(GcRequest {}).await;
    target.close().await?;
    let r = result
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .context("garbage collection failed")?
        .into_inner();
    if args.json {
        let value = serde_json::json!({
            "objects_evicted": r.objects_evicted,
            "step_results_evicted": r.step_results_evicted,
            "tags_evicted": r.tags_evicted,
            "chunks_freed": r.chunks_freed,
            "bytes_freed": r.bytes_freed,
            "segments_compacted": r.segments_compacted,
            "bytes_compacted": r.bytes_compacted,
            "bytes_before": r.bytes_before,
            "bytes_after": r.bytes_after,
        });
        println!("{value}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "evicted     {} objects, {} step results, {} tags",
            r.objects_evicted, r.step_results_evicted, r.tags_evicted
        )?;
        writeln!(
            out,
            "freed       {} chunks ({} of records)",
            r.chunks_freed,
            human_bytes(r.bytes_freed)
        )?;
        writeln!(
            out,
            "compacted   {} segments ({} reclaimed)",
            r.segments_compacted,
            human_bytes(r.bytes_compacted)
        )?;
        writeln!(
            out,
            "store       {} before, {} after",
            human_bytes(r.bytes_before),
            human_bytes(r.bytes_after)
        )?;
    }
    Ok(())
}
