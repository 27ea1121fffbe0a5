//! A store that stays bounded: `--max-bytes`, reference-consistent
//! eviction, leases for uploads in flight, orphan collection, compaction,
//! and SIGKILL in the middle of all of it — against real servers on
//! loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use strata_client::{Client, ClientError, Progress};
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::{GcRequest, Provenance, ScrubRequest, StatsRequest, StatsResponse};
use strata_proto::{Digest, StepResult};
use strata_server::{FsyncPolicy, Store, StoreConfig, StoreError};
use strata_tests::{RandomReader, ServerProcess, random_bytes, serve_store, strata_bin};

const MIB: u64 = 1 << 20;

/// A writer that only hashes what it is given.
#[derive(Default)]
struct HashingWriter(Sha256);

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sha256_of_random(len: u64, seed: u64) -> Vec<u8> {
    let mut w = HashingWriter::default();
    std::io::copy(&mut RandomReader::new(len, seed), &mut w).unwrap();
    w.0.finalize().to_vec()
}

/// Pulls `digest` whole: `Some(sha256)` if held, `None` if the store says
/// NOT_FOUND for the object. Anything else (a missing chunk of a held
/// object, corruption) fails the test: an object is whole or absent.
async fn pull_whole_or_absent(client: &Client, digest: &Digest) -> Option<Vec<u8>> {
    match client.get_manifest(digest).await {
        Err(ClientError::NotFound(_)) => return None,
        Err(e) => panic!("get_manifest {digest}: {e}"),
        Ok(_) => {}
    }
    let w = match client
        .pull(digest, HashingWriter::default(), &Progress::new())
        .await
    {
        Ok((_, w)) => w,
        // Evicted between the manifest read and the chunks: absent now,
        // which the next manifest read must confirm.
        Err(ClientError::NotFound(_)) => {
            assert!(
                matches!(
                    client.get_manifest(digest).await,
                    Err(ClientError::NotFound(_))
                ),
                "object {digest} is held but a chunk of it is gone"
            );
            return None;
        }
        Err(e) => panic!("pull {digest}: {e}"),
    };
    Some(w.0.finalize().to_vec())
}

fn step_result(layer: Digest) -> StepResult {
    StepResult {
        layer: Some(layer),
        config: b"{}".to_vec(),
        provenance: Provenance {
            builder: "gc test".into(),
            instruction: "RUN make".into(),
            network: "none".into(),
            hermetic: true,
            ..Default::default()
        },
        seal: None,
    }
}

fn capped_store(dir: &Path, max_bytes: u64, lease: Duration) -> Store {
    Store::open(
        dir,
        StoreConfig {
            fsync: FsyncPolicy::Never,
            max_bytes: Some(max_bytes),
            lease,
            ..StoreConfig::default()
        },
    )
    .unwrap()
}

async fn stats(url: &str) -> StatsResponse {
    let mut admin = AdminClient::connect(url.to_owned()).await.unwrap();
    admin.stats(StatsRequest {}).await.unwrap().into_inner()
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_result_never_outlives_its_layer() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_store(capped_store(dir.path(), 32 * MIB, Duration::from_secs(30))).await;
    let client = server.client().await;
    let mut recorded = Vec::new();
    for seed in 0..14u64 {
        let data = random_bytes(4 << 20, seed);
        let layer = client
            .push(Cursor::new(data.clone()), "x", &Progress::new())
            .await
            .unwrap()
            .digest;
        let key = Digest::of(&seed.to_le_bytes());
        client.record_step(&key, &step_result(layer)).await.unwrap();
        recorded.push((key, layer, Sha256::digest(&data).to_vec()));
    }
    let store = server.store.clone();
    tokio::task::spawn_blocking(move || store.gc().unwrap())
        .await
        .unwrap();

    let keys: Vec<Digest> = recorded.iter().map(|r| r.0).collect();
    let hits = client.lookup_steps(&keys).await.unwrap();
    let mut misses = 0;
    for ((key, layer, sha), hit) in recorded.iter().zip(hits) {
        match (hit, pull_whole_or_absent(&client, layer).await) {
            (Some(result), Some(pulled)) => {
                assert_eq!(result.layer, Some(*layer));
                assert_eq!(&pulled, sha, "layer of step {key} pulled wrong bytes");
            }
            (None, None) => misses += 1,
            (Some(_), None) => panic!("step {key} is a hit but its layer {layer} is gone"),
            // Evicting a layer takes its step results with it, never the
            // other way round.
            (None, Some(_)) => panic!("step {key} was evicted but its layer {layer} was kept"),
        }
    }
    assert!(misses > 0, "56 MiB under a 32 MiB cap evicted nothing");
    let last = recorded.last().unwrap();
    assert!(
        pull_whole_or_absent(&client, &last.1).await.is_some(),
        "the most recent layer was evicted"
    );
    let s = stats(&server.url).await;
    assert_eq!(s.objects_evicted, misses);
    assert_eq!(s.step_results_evicted, misses);
    assert!(s.bytes_used <= 32 * MIB, "{} bytes used", s.bytes_used);
    server.stop().await;
}

/// Eviction is least recently used at the level of what users name: an
/// object pushed early but tagged, or named by a step result, late lives
/// as long as that tag or result, while older unreferenced objects go,
/// oldest first. (Naming an object takes no lease: recency alone keeps it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_tag_or_step_result_keeps_an_early_object_while_older_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_store(capped_store(dir.path(), 64 * MIB, Duration::from_secs(30))).await;
    let client = server.client().await;
    let push = |seed: u64| {
        let client = client.clone();
        async move {
            let data = random_bytes(2 << 20, seed);
            let sha = Sha256::digest(&data).to_vec();
            let digest = client
                .push(Cursor::new(data), "x", &Progress::new())
                .await
                .unwrap()
                .digest;
            (digest, sha)
        }
    };
    // 34 MiB, under the 48 MiB at which collection starts.
    let (oldest, _) = push(100).await;
    let (tagged, tagged_sha) = push(101).await;
    let (layer, layer_sha) = push(102).await;
    let mut fillers = Vec::new();
    for seed in 0..14 {
        fillers.push(push(seed).await.0);
    }
    client.set_tag("keep", &tagged).await.unwrap();
    let key = Digest::of(b"late step");
    client.record_step(&key, &step_result(layer)).await.unwrap();
    // 20 MiB more passes the trigger: collection evicts down to ~35 MiB,
    // which the 10 MiB of fillers pushed before the tag and the step cover.
    let mut last = None;
    for seed in 200..210 {
        last = Some(push(seed).await);
    }
    let store = server.store.clone();
    tokio::task::spawn_blocking(move || store.gc().unwrap())
        .await
        .unwrap();

    let s = stats(&server.url).await;
    assert!(s.objects_evicted > 0, "nothing was evicted");
    assert_eq!(pull_whole_or_absent(&client, &oldest).await, None);
    assert_eq!(pull_whole_or_absent(&client, &fillers[0]).await, None);
    assert!(
        pull_whole_or_absent(&client, &fillers[13]).await.is_some(),
        "eviction went past the newer fillers"
    );
    assert_eq!(client.get_tag("keep").await.unwrap(), Some(tagged));
    assert_eq!(
        pull_whole_or_absent(&client, &tagged).await,
        Some(tagged_sha)
    );
    let hit = client.lookup_steps(&[key]).await.unwrap().pop().flatten();
    assert_eq!(hit.and_then(|r| r.layer), Some(layer));
    assert_eq!(pull_whole_or_absent(&client, &layer).await, Some(layer_sha));
    let (last, last_sha) = last.unwrap();
    assert_eq!(pull_whole_or_absent(&client, &last).await, Some(last_sha));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_chunks_are_collected_once_their_lease_lapses_and_not_before() {
    // An interrupted push: chunks sent, no manifest naming them.
    async fn orphan_then_gc(lease: Duration) -> (u64, bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreConfig {
                fsync: FsyncPolicy::Never,
                lease,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let server = serve_store(store).await;
        let client = server.client().await;
        let kept = client
            .push(Cursor::new(random_bytes(1 << 20, 1)), "x", &Progress::new())
            .await
            .unwrap()
            .digest;
        let orphan = random_bytes(10_000, 2);
        let orphan_digest = Digest::of(&orphan);
        let mut decoder = strata_proto::ChunkDecoder::new().unwrap();
        let chunk = server
            .store
            .verify_chunk(
                &mut decoder,
                orphan_digest,
                strata_proto::Codec::Raw,
                orphan.len() as u32,
                orphan.into(),
            )
            .unwrap();
        server.store.put_chunks(vec![chunk]).await.unwrap();
        let store = server.store.clone();
        let report = tokio::task::spawn_blocking(move || store.gc().unwrap())
            .await
            .unwrap();
        assert_eq!(report.objects_evicted, 0, "no cap: nothing is evicted");
        assert!(pull_whole_or_absent(&client, &kept).await.is_some());
        let still_there = server.store.contains_chunk(&orphan_digest).unwrap();
        server.stop().await;
        (report.chunks_freed, still_there)
    }
    assert_eq!(orphan_then_gc(Duration::ZERO).await, (1, false));
    assert_eq!(orphan_then_gc(Duration::from_secs(3600)).await, (0, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_racing_collections_complete_or_fail_cleanly_and_never_leave_a_partial_object() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_store(capped_store(dir.path(), 32 * MIB, Duration::from_secs(30))).await;
    let client = server.client().await;
    let pushing = Arc::new(AtomicBool::new(true));
    let rounds = Arc::new(AtomicU64::new(0));
    let collector = {
        let store = server.store.clone();
        let pushing = pushing.clone();
        let rounds = rounds.clone();
        tokio::task::spawn_blocking(move || {
            while pushing.load(Ordering::Relaxed) {
                store.gc().unwrap();
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut pushed = Vec::new();
    for seed in 0..16u64 {
        let len = 3 * MIB + seed * 4096;
        match client
            .push(RandomReader::new(len, seed), "x", &Progress::new())
            .await
        {
            Ok(report) => pushed.push((report.digest, len, seed)),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("size cap") || text.contains("not in the store"),
                    "a push racing collection failed uncleanly: {text}"
                );
            }
        }
    }
    pushing.store(false, Ordering::Relaxed);
    collector.await.unwrap();
    assert!(rounds.load(Ordering::Relaxed) > 0);
    assert!(
        pushed.len() >= 8,
        "only {} of 16 pushes completed",
        pushed.len()
    );
    // The most recent push first: pulling the others makes them more
    // recently used than it.
    let (last, len, seed) = pushed.last().unwrap();
    assert_eq!(
        pull_whole_or_absent(&client, last).await,
        Some(sha256_of_random(*len, *seed)),
        "the most recent push is gone"
    );
    for (digest, len, seed) in &pushed {
        if let Some(sha) = pull_whole_or_absent(&client, digest).await {
            assert_eq!(sha, sha256_of_random(*len, *seed));
        }
    }
    server.stop().await;
}

#[test]
fn a_cap_below_the_minimum_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(
        dir.path(),
        StoreConfig {
            max_bytes: Some(MIB),
            ..StoreConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::CapTooSmall { .. }), "{err}");

    let out = std::process::Command::new(strata_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-bytes",
            "1MiB",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("too small") && stderr.contains("32 MiB"),
        "unclear refusal: {stderr}"
    );
    let out = std::process::Command::new(strata_bin())
        .args(["serve", "--max-bytes", "12 parsecs", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("parsecs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_192_mib_cap_holds_a_1_gib_push_workload_under_250_mib() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--max-bytes", "192MiB", "--gc-lease", "30"]);
    let client = server.client().await;
    // Sample the directory's size throughout, not only between pushes.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, data) = (peak.clone(), done.clone(), data.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(dir_bytes(&data), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    const OBJECT: u64 = 32 * MIB;
    let mut pushed = Vec::new();
    for seed in 0..32u64 {
        let report = client
            .push(RandomReader::new(OBJECT, seed), "x", &Progress::new())
            .await
            .unwrap_or_else(|e| panic!("push {seed} failed: {e}\n{}", server.log()));
        pushed.push((report.digest, seed));
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak < 250 * MIB,
        "the data directory reached {} MiB",
        peak / MIB
    );
    // The most recent objects stay; every other one is whole or absent.
    for (i, (digest, seed)) in pushed.iter().enumerate() {
        let pulled = pull_whole_or_absent(&client, digest).await;
        if i + 2 >= pushed.len() {
            assert_eq!(pulled, Some(sha256_of_random(OBJECT, *seed)), "object {i}");
        } else if let Some(sha) = pulled {
            assert_eq!(sha, sha256_of_random(OBJECT, *seed), "object {i}");
        }
    }
    let s = stats(&server.url).await;
    assert_eq!(s.max_bytes, 192 * MIB);
    assert!(s.objects_evicted >= 24, "{} evicted", s.objects_evicted);
    assert!(s.bytes_used < 250 * MIB);
    // `strata gc` and `strata stat` report it.
    let out = std::process::Command::new(strata_bin())
        .args(["gc", "--json", "--server", &server.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["bytes_after"].as_u64().unwrap() < 250 * MIB);
    let out = std::process::Command::new(strata_bin())
        .args(["stat", "--server", &server.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("of cap 192.0 MiB"), "{text}");
    assert!(text.contains("evicted"), "{text}");
    server.stop();
}

/// Pushes objects (with a step result each) into a server under a small
/// cap until a compaction shows in its log, then SIGKILLs it, restarts it
/// and checks that every acknowledged object is whole or absent, every
/// step hit has its layer, the most recent object is whole, and a scrub
/// finds nothing corrupt. Repeated, so the kill lands at different points
/// of collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_collection_and_compaction_loses_nothing_live() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--max-bytes", "48MiB", "--gc-lease", "30"];
    let mut pushed: Vec<(Digest, Digest, u64, u64)> = Vec::new();
    let mut seed = 0u64;
    for round in 0..4 {
        let server = ServerProcess::start(&data, &args);
        let client = server.client().await;
        let compactions_before = server.log().matches("compacted a segment").count();
        // Push until the server has compacted at least once more, then
        // kill it while a collection is asked for.
        while server.log().matches("compacted a segment").count() == compactions_before {
            let len = 2 * MIB + seed * 1000;
            let digest = client
                .push(RandomReader::new(len, seed), "x", &Progress::new())
                .await
                .unwrap_or_else(|e| panic!("push failed: {e}\n{}", server.log()))
                .digest;
            let key = Digest::of(&seed.to_le_bytes());
            client
                .record_step(&key, &step_result(digest))
                .await
                .unwrap();
            pushed.push((digest, key, len, seed));
            seed += 1;
            assert!(
                seed < 400,
                "no compaction after {seed} pushes:\n{}",
                server.log()
            );
        }
        let url = server.url.clone();
        let gc = tokio::spawn(async move {
            if let Ok(mut admin) = AdminClient::connect(url).await {
                let _ = admin.gc(GcRequest {}).await;
            }
        });
        // Kill as soon as the call is under way (or done): the call's
        // outcome does not matter, what survives the kill does.
        server.kill();
        let _ = gc.await;

        let server = ServerProcess::start(&data, &args);
        let client = server.client().await;
        let keys: Vec<Digest> = pushed.iter().map(|p| p.1).collect();
        let hits = client.lookup_steps(&keys).await.unwrap();
        for ((digest, key, len, seed), hit) in pushed.iter().zip(hits) {
            let pulled = pull_whole_or_absent(&client, digest).await;
            if let Some(sha) = &pulled {
                assert_eq!(*sha, sha256_of_random(*len, *seed), "round {round}");
            }
            if hit.is_some() {
                assert!(
                    pulled.is_some(),
                    "round {round}: step {key} hits a missing layer"
                );
            }
        }
        let (last, _, len, last_seed) = pushed.last().unwrap();
        assert_eq!(
            pull_whole_or_absent(&client, last).await,
            Some(sha256_of_random(*len, *last_seed)),
            "round {round}: the most recent object was lost"
        );
        let mut admin = AdminClient::connect(server.url.clone()).await.unwrap();
        let scrub = admin.scrub(ScrubRequest {}).await.unwrap().into_inner();
        assert!(
            scrub.corrupt.is_empty(),
            "round {round}: scrub found damage"
        );
        server.stop();
    }
}
