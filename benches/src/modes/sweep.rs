//! `strata bench sweep`: the same corpus pushed with every combination of
//! average chunk size and zstd level, each on a fresh store, showing
//! throughput against dedup and bytes stored — and naming the setting an
//! operator should pick for this data on this machine.
//!
//! The pick: among the settings at least `min_speed` times as fast as the
//! fastest, the one that stores the fewest bytes (ties go to the faster).

use anyhow::{Result, bail};
use serde::Serialize;
use strata_client::{ChunkerConfig, ClientConfig};

use crate::corpus::CorpusSpec;
use crate::modes::dedup::push_corpus;
use crate::run::{BenchContext, fresh_salt, human};
use crate::stats::mb_per_s;

#[derive(Clone, Debug)]
pub struct SweepOptions {
    pub chunk_kib: Vec<u32>,
    pub levels: Vec<i32>,
    pub min_speed: f64,
}

/// One setting's figures over the whole corpus.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SweepPoint {
    pub chunk_kib: u32,
    pub zstd_level: i32,
    pub offered_bytes: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    pub push_seconds: f64,
    pub mb_per_s: f64,
    /// Offered over new raw bytes.
    pub dedup_ratio: f64,
    /// Offered over stored bytes: dedup and compression together.
    pub overall_ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    pub builds: usize,
    pub min_speed: f64,
    pub points: Vec<SweepPoint>,
    /// Index into `points` of the recommended setting.
    pub best: Option<usize>,
    pub recommendation: String,
}

pub async fn run(
    ctx: &BenchContext,
    spec: CorpusSpec,
    opts: &SweepOptions,
) -> Result<(SweepReport, Vec<String>)> {
    if opts.chunk_kib.is_empty() || opts.levels.is_empty() {
        bail!("the sweep needs at least one chunk size and one zstd level");
    }
    let mut points = Vec::new();
    let mut notes = Vec::new();
    let settings: Vec<(u32, i32)> = opts
        .chunk_kib
        .iter()
        .flat_map(|&k| opts.levels.iter().map(move |&l| (k, l)))
        .collect();
    for (i, &(kib, level)) in settings.iter().enumerate() {
        if i > 0 && ctx.out_of_time() {
            notes.push(format!(
                "time budget reached: {i} of {} settings measured",
                settings.len()
            ));
            break;
        }
        let config = ClientConfig {
            chunking: ChunkerConfig::with_average(kib * 1024),
            zstd_level: level,
            ..ctx.client.clone()
        };
        config.validate()?;
        ctx.say(format!(
            "setting {}/{}: {kib} KiB chunks, zstd -{level}",
            i + 1,
            settings.len()
        ));
        let server = ctx.start_server().await?;
        let client = server.client(config).await?;
        let salt = if server.is_local() {
            0
        } else {
            fresh_salt(i as u64)
        };
        let quiet = BenchContext {
            progress: false,
            ..ctx.clone()
        };
        let (rows, build_notes) = push_corpus(&quiet, &client, spec.clone(), salt).await?;
        notes.extend(build_notes);
        drop(client);
        server.stop().await;
        let offered: u64 = rows.iter().map(|r| r.offered_bytes).sum();
        let new_bytes: u64 = rows.iter().map(|r| r.new_bytes).sum();
        let stored: u64 = rows.iter().map(|r| r.stored_bytes).sum();
        let seconds: f64 = rows.iter().map(|r| r.push_seconds).sum();
        let point = SweepPoint {
            chunk_kib: kib,
            zstd_level: level,
            offered_bytes: offered,
            new_bytes,
            stored_bytes: stored,
            push_seconds: seconds,
            mb_per_s: mb_per_s(offered, seconds),
            dedup_ratio: offered as f64 / new_bytes.max(1) as f64,
            overall_ratio: offered as f64 / stored.max(1) as f64,
        };
        ctx.say(format!(
            "  {:.0} MB/s, dedup {:.2}x, stored {}",
            point.mb_per_s,
            point.dedup_ratio,
            human(point.stored_bytes)
        ));
        points.push(point);
    }
    let best = pick_best(&points, opts.min_speed);
    let recommendation = match best {
        Some(b) => {
            let p = &points[b];
            format!(
                "best for this data: --chunk-kib {} --zstd-level {} (stores {}, {:.1}x smaller than offered, at {:.0} MB/s; settings slower than {:.0}% of the fastest were not considered)",
                p.chunk_kib,
                p.zstd_level,
                human(p.stored_bytes),
                p.overall_ratio,
                p.mb_per_s,
                opts.min_speed * 100.0
            )
        }
        None => "no setting was measured".into(),
    };
    Ok((
        SweepReport {
            builds: spec.builds,
            min_speed: opts.min_speed,
            points,
            best,
            recommendation,
        },
        notes,
    ))
}

/// The fewest stored bytes among the points at least `min_speed` times as
/// fast as the fastest; ties go to the faster.
pub fn pick_best(points: &[SweepPoint], min_speed: f64) -> Option<usize> {
    let fastest = points.iter().map(|p| p.mb_per_s).fold(0.0, f64::max);
    points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.mb_per_s >= fastest * min_speed)
        .min_by(|(_, a), (_, b)| {
            a.stored_bytes
                .cmp(&b.stored_bytes)
                .then(b.mb_per_s.total_cmp(&a.mb_per_s))
        })
        .map(|(i, _)| i)
}

pub fn print_table(report: &SweepReport) {
    println!(
        "{:>9} {:>5} {:>9} {:>8} {:>11} {:>9}",
        "chunk KiB", "zstd", "MB/s", "dedup", "stored", "overall"
    );
    for (i, p) in report.points.iter().enumerate() {
        println!(
            "{:>9} {:>5} {:>9.0} {:>7.2}x {:>11} {:>8.1}x{}",
            p.chunk_kib,
            p.zstd_level,
            p.mb_per_s,
            p.dedup_ratio,
            human(p.stored_bytes),
            p.overall_ratio,
            if report.best == Some(i) {
                "  <- best"
            } else {
                ""
            }
        );
    }
    println!("{}", report.recommendation);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(chunk_kib: u32, mb_per_s: f64, stored_bytes: u64) -> SweepPoint {
        SweepPoint {
            chunk_kib,
            zstd_level: 1,
            offered_bytes: 100,
            new_bytes: 50,
            stored_bytes,
            push_seconds: 1.0,
            mb_per_s,
            dedup_ratio: 2.0,
            overall_ratio: 100.0 / stored_bytes as f64,
        }
    }

    #[test]
    fn the_best_stores_least_among_the_fast_enough() {
        let points = [
            point(16, 100.0, 10),
            point(64, 400.0, 30),
            point(256, 300.0, 20),
        ];
        // 16 KiB stores least but is too slow at half the fastest speed.
        assert_eq!(pick_best(&points, 0.5), Some(2));
        assert_eq!(pick_best(&points, 0.0), Some(0));
        assert_eq!(pick_best(&points, 1.0), Some(1));
        assert_eq!(pick_best(&[], 0.5), None);
        // A tie on bytes goes to the faster.
        assert_eq!(
            pick_best(&[point(16, 1.0, 5), point(32, 2.0, 5)], 0.0),
            Some(1)
        );
    }
}
