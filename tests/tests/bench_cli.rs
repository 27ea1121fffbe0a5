//! `strata bench` as a user runs it: each mode's `--json` document has the
//! promised shape and sane figures, the sweep names a best setting, and its
//! plot is an image a real SVG renderer accepts. Small sizes: this checks
//! the tool, not the machine's speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;
use strata_tests::strata;

fn bench_json(args: &[&str]) -> Value {
    let cache = tempfile::tempdir().unwrap();
    let out = strata(cache.path())
        .arg("bench")
        .args(args)
        .args(["--json", "--fsync", "never"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "strata bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(doc["tool"], "strata bench");
    assert_eq!(doc["mode"], args[0]);
    assert!(doc["server"].as_str().unwrap().contains("local"));
    assert!(doc["cores"].as_u64().unwrap() >= 1);
    assert!(doc["notes"].is_array());
    doc
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x}");
    x
}

fn check_spread(v: &Value, what: &str) {
    let (min, median, max) = (
        positive(&v["min"], what),
        positive(&v["median"], what),
        positive(&v["max"], what),
    );
    assert!(min <= median && median <= max, "{what}: {v}");
}

#[test]
fn push_and_pull_report_each_operation_beside_its_baseline() {
    let doc = bench_json(&[
        "push",
        "--size",
        "8MiB",
        "--data",
        "corpus",
        "--repeats",
        "2",
    ]);
    let results = &doc["results"];
    assert_eq!(results["bytes"], 8 << 20);
    assert_eq!(results["repeats"], 2);
    let rows = results["rows"].as_array().unwrap();
    let ops: Vec<&str> = rows
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "push, new data",
            "push, already stored",
            "push, 1 MiB changed"
        ]
    );
    assert_eq!(rows[0]["baseline"], "zstd -1 -T0");
    assert_eq!(rows[1]["baseline"], "b3sum");
    for r in rows {
        check_spread(&r["seconds"], "seconds");
        check_spread(&r["baseline_seconds"], "baseline seconds");
        let ratio = positive(&r["time_ratio"], "ratio");
        let expected = r["seconds"]["median"].as_f64().unwrap()
            / r["baseline_seconds"]["median"].as_f64().unwrap();
        assert!((ratio - expected).abs() < 1e-9);
        positive(&r["mb_per_s"], "MB/s");
        assert!(r["noise"].as_f64().unwrap() >= 0.0);
    }
    // New data is sent (compressed); stored data is not sent again.
    positive(&rows[0]["sent_bytes"], "sent bytes of new data");
    assert_eq!(rows[1]["sent_bytes"], 0);
    // A 1 MiB change sends about that much again, not the whole object.
    assert_eq!(rows[2]["baseline"], "b3sum");
    let changed_sent = positive(&rows[2]["sent_bytes"], "sent bytes of the changed file");
    assert!(changed_sent < 4.0 * 1024.0 * 1024.0, "{changed_sent}");

    let doc = bench_json(&[
        "pull",
        "--size",
        "4MiB",
        "--data",
        "random",
        "--repeats",
        "1",
    ]);
    let rows = doc["results"]["rows"].as_array().unwrap();
    let ops: Vec<&str> = rows
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["pull", "pull to a file"]);
    assert_eq!(rows[0]["baseline"], "zstd -d");
    assert_eq!(rows[1]["baseline"], "zstd -d -o");
    for r in rows {
        check_spread(&r["seconds"], "pull seconds");
    }
}

#[test]
fn lookup_reports_rates_and_percentiles_per_concurrency() {
    let doc = bench_json(&[
        "lookup",
        "--keys",
        "200",
        "--seconds",
        "0.3",
        "--concurrency",
        "1,8",
    ]);
    let rows = doc["results"]["rows"].as_array().unwrap();
    let callers: Vec<u64> = rows
        .iter()
        .map(|r| r["callers"].as_u64().unwrap())
        .collect();
    assert_eq!(callers, [1, 8]);
    for r in rows {
        positive(&r["lookups_per_s"], "lookups/s");
        positive(&r["baseline_calls_per_s"], "empty calls/s");
        let hits = r["hit_fraction"].as_f64().unwrap();
        assert!((0.3..0.7).contains(&hits), "half hits, half misses: {hits}");
        let l = &r["latency"];
        let (p50, p99, p999) = (
            positive(&l["p50_us"], "p50"),
            positive(&l["p99_us"], "p99"),
            positive(&l["p999_us"], "p999"),
        );
        assert!(p50 <= p99 && p99 <= p999, "{l}");
    }
}

#[test]
fn dedup_reports_every_build() {
    let doc = bench_json(&[
        "dedup",
        "--builds",
        "3",
        "--build-size",
        "4MiB",
        "--synthetic-base",
    ]);
    let r = &doc["results"];
    let builds = r["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 3);
    for (i, b) in builds.iter().enumerate() {
        assert_eq!(b["build"], i);
        for field in [
            "offered_bytes",
            "sent_bytes",
            "new_bytes",
            "stored_bytes",
            "dedup_ratio",
        ] {
            positive(&b[field], field);
        }
    }
    let offered: u64 = builds
        .iter()
        .map(|b| b["offered_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(r["total_offered_bytes"].as_u64().unwrap(), offered);
}

#[test]
fn remote_build_times_cached_builds_over_a_slow_link_beside_a_fast_one() {
    let doc = bench_json(&["remote-build", "--rtt-ms", "40", "--repeats", "1"]);
    let r = &doc["results"];
    assert_eq!(r["steps"], 8, "{r}");
    let links = r["links"].as_array().unwrap();
    assert_eq!(links.len(), 2, "{r}");
    assert_eq!(links[0]["rtt_ms"].as_f64(), Some(0.0));
    assert_eq!(links[1]["rtt_ms"].as_f64(), Some(40.0));
    for l in links {
        check_spread(&l["seconds"], "seconds");
        // The image's layers came down (busybox alone is ~1 MB
        // compressed), over the one connection a client opens.
        assert!(
            positive(&l["bytes_from_server"], "bytes") > 500_000.0,
            "{l}"
        );
        assert_eq!(l["connections"], 1, "{l}");
    }
    // A fresh client cannot build in fewer than four waits (the TCP
    // handshake, the server check, the lookup, the layers): the proxy's
    // delay must show, whatever the machine's load.
    let slow = positive(&links[1]["seconds"]["min"], "seconds");
    assert!(slow >= 4.0 * 0.040, "a 40 ms link cost only {slow} s: {r}");
    assert!(positive(&r["round_trips"], "round trips") >= 3.0, "{r}");
}

#[test]
fn sweep_names_a_best_setting_and_draws_it() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("sweep.svg");
    let doc = bench_json(&[
        "sweep",
        "--builds",
        "2",
        "--build-size",
        "4MiB",
        "--synthetic-base",
        "--chunk-sizes",
        "16,64",
        "--levels",
        "1,3",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let r = &doc["results"];
    let points = r["points"].as_array().unwrap();
    let grid: Vec<(u64, i64)> = points
        .iter()
        .map(|p| {
            (
                p["chunk_kib"].as_u64().unwrap(),
                p["zstd_level"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(grid, [(16, 1), (16, 3), (64, 1), (64, 3)]);
    let best = r["best"].as_u64().expect("a best setting") as usize;
    let pick = &points[best];
    assert!(
        r["recommendation"]
            .as_str()
            .unwrap()
            .contains(&format!("--chunk-kib {}", pick["chunk_kib"])),
        "{}",
        r["recommendation"]
    );

    // The chart renders: rsvg-convert (Debian's librsvg2-bin) turns it into
    // a PNG of the declared size.
    let png = dir.path().join("sweep.png");
    let status = Command::new("rsvg-convert")
        .arg(&plot)
        .arg("-o")
        .arg(&png)
        .status()
        .unwrap_or_else(|e| {
            panic!("rsvg-convert is needed to check the plot ({e}); install it: apt-get install librsvg2-bin (scripts/test does)")
        });
    assert!(status.success());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (720, 480));
}
