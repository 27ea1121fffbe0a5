//! `strata stat`: the store's figures, or one object's size and SHA-256.

use std::io::Write;

use anyhow::{Context, Result, bail};
use clap::Args;
use strata_builder::progress::human_bytes;
use strata_builder::target::Target;
use strata_client::{ClientConfig, ClientError};
use strata_proto::Digest;

use super::{ServerArg, parse_digest};

#[derive(Args)]
pub struct StatArgs {
    /// An object digest; without it, the whole store's figures.
    digest: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

pub async fn run(args: StatArgs) -> Result<()> {
    let config = args.server.connection(ClientConfig::default())?;
    let target = Target::open(args.server.server.as_deref(), config).await?;
    let result = match &args.digest {
        Some(text) => stat_object(&target, parse_digest(text)?, args.json).await,
        None => stat_store(&target, args.json).await,
    };
    target.close().await?;
    result
}

async fn stat_object(target: &Target, digest: Digest, json: bool) -> Result<()> {
    let manifest = match target.client.get_manifest(&digest).await {
        Err(ClientError::NotFound(_)) => {
            bail!("unknown digest {digest}: the cache does not hold it")
        }
        r => r.context("stat failed")?,
    };
    let sha256 = manifest.oci_digest();
    if json {
        let value = serde_json::json!({
            "digest": digest.to_string(),
            "total_bytes": manifest.total_length(),
            "chunks": manifest.chunks().len(),
            "sha256": sha256,
            "media_type": manifest.media_type(),
        });
        println!("{value}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "digest      {digest}")?;
        writeln!(
            out,
            "size        {} ({} bytes)",
            human_bytes(manifest.total_length()),
            manifest.total_length()
        )?;
        writeln!(out, "chunks      {}", manifest.chunks().len())?;
        writeln!(out, "sha256      {sha256}")?;
        writeln!(out, "media type  {}", manifest.media_type())?;
    }
    Ok(())
}

async fn stat_store(target: &Target, json: bool) -> Result<()> {
    let s = target.client.stats().await.context("stat failed")?;
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let dedup = ratio(s.logical_bytes, s.chunk_bytes);
    let compression = ratio(s.chunk_bytes, s.stored_bytes);
    if json {
        let value = serde_json::json!({
            "objects": s.manifests,
            "chunks": s.chunks,
            "logical_bytes": s.logical_bytes,
            "chunk_bytes": s.chunk_bytes,
            "stored_bytes": s.stored_bytes,
            "segments": s.segments,
            "segment_bytes": s.segment_bytes,
            "step_results": s.step_results,
            "step_divergences": s.step_divergences,
            "recovery_skipped_records": s.recovery_skipped_records,
            "recovery_skipped_bytes": s.recovery_skipped_bytes,
            "recovery_tail_bytes_cut": s.recovery_tail_bytes_cut,
            "rotten_chunks": s.rotten_chunks,
            "manifests_unverified": s.manifests_unverified,
            "manifests_refuted": s.manifests_refuted,
            "max_bytes": s.max_bytes,
            "bytes_used": s.bytes_used,
            "index_bytes": s.index_bytes,
            "objects_evicted": s.objects_evicted,
            "step_results_evicted": s.step_results_evicted,
            "tags_evicted": s.tags_evicted,
            "chunks_freed": s.chunks_freed,
            "bytes_compacted": s.bytes_compacted,
            "gc_rounds": s.gc_rounds,
            "scrub_passes": s.scrub_passes,
            "scrub_chunks_checked": s.scrub_chunks_checked,
            "scrub_rotten_found": s.scrub_rotten_found,
            "scrub_bytes_read": s.scrub_bytes_read,
            "scrub_last_pass_ms": s.scrub_last_pass_ms,
            "dedup_ratio": dedup,
            "compression_ratio": compression,
        });
        println!("{value}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "objects            {}", s.manifests)?;
        writeln!(out, "chunks             {}", s.chunks)?;
        writeln!(
            out,
            "logical bytes      {} (all objects, as pushed)",
            human_bytes(s.logical_bytes)
        )?;
        writeln!(
            out,
            "unique bytes       {} (distinct chunks)",
            human_bytes(s.chunk_bytes)
        )?;
        writeln!(
            out,
            "stored bytes       {} (compressed)",
            human_bytes(s.stored_bytes)
        )?;
        writeln!(out, "dedup ratio        {dedup:.2}x")?;
        writeln!(out, "compression ratio  {compression:.2}x")?;
        writeln!(
            out,
            "segments           {} ({})",
            s.segments,
            human_bytes(s.segment_bytes)
        )?;
        writeln!(
            out,
            "step results       {} ({} divergent refused)",
            s.step_results, s.step_divergences
        )?;
        let cap = if s.max_bytes == 0 {
            "no cap".to_string()
        } else {
            format!("cap {}", human_bytes(s.max_bytes))
        };
        writeln!(
            out,
            "disk used          {} of {cap} (index {})",
            human_bytes(s.bytes_used),
            human_bytes(s.index_bytes)
        )?;
        writeln!(
            out,
            "evicted            {} objects, {} step results, {} tags, {} chunks ({} collections)",
            s.objects_evicted, s.step_results_evicted, s.tags_evicted, s.chunks_freed, s.gc_rounds
        )?;
        writeln!(out, "compacted          {}", human_bytes(s.bytes_compacted))?;
        // Only a server with a background scrub that has checked something.
        if s.scrub_chunks_checked > 0 {
            writeln!(
                out,
                "scrubbed           {} chunks ({}), {} rotten found, {} passes (last {:.1} s)",
                s.scrub_chunks_checked,
                human_bytes(s.scrub_bytes_read),
                s.scrub_rotten_found,
                s.scrub_passes,
                s.scrub_last_pass_ms as f64 / 1000.0
            )?;
        }
        // Damage is news: shown only when there is some.
        if s.recovery_skipped_records + s.recovery_tail_bytes_cut + s.rotten_chunks > 0 {
            writeln!(
                out,
                "damage skipped     {} stretches ({}), torn tail cut {}",
                s.recovery_skipped_records,
                human_bytes(s.recovery_skipped_bytes),
                human_bytes(s.recovery_tail_bytes_cut)
            )?;
            writeln!(
                out,
                "rotten chunks      {} (a push of their content heals them)",
                s.rotten_chunks
            )?;
        }
        if s.manifests_unverified + s.manifests_refuted > 0 {
            writeln!(
                out,
                "manifests          {} awaiting verification, {} refuted (false SHA-256: never found by content)",
                s.manifests_unverified, s.manifests_refuted
            )?;
        }
    }
    Ok(())
}
