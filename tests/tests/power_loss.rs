//! Power cuts, simulated at the store's durability seam
//! ([`Store::synced_segment_lengths`]: how much of each segment a power cut
//! is certain to leave). A SIGKILL leaves every written byte in the page
//! cache, so it cannot tell `--fsync always` from `--fsync never`; a power
//! cut can. Here one leaves each segment cut back to what was synced, with
//! a torn write after it, a segment whose name was never synced gone, and
//! the index as of its last flush — or lost altogether.
//!
//! Under `--fsync always` nothing acknowledged is lost: objects pull back
//! byte for byte, step results and tags answer as last acknowledged. Under
//! `--fsync never` the same cut loses acknowledged objects, which is what
//! that policy says, and what shows the cut is real. And a torn write at
//! every offset of the last record is cut, kept aside byte for byte, and
//! touches nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use strata_client::{Client, Progress};
use strata_proto::v1::Provenance;
use strata_proto::{ChunkDecoder, ChunkEncoder, Digest, StepResult};
use strata_server::store::VerifiedChunk;
use strata_server::{FsyncPolicy, Store, StoreConfig};
use strata_tests::{TestServer, random_bytes, segment_files, serve_store, test_client_config};

/// Small, so that the objects below span several segments.
const SEGMENT_BYTES: u64 = 256 << 10;

fn config(fsync: FsyncPolicy) -> StoreConfig {
    StoreConfig {
        fsync,
        segment_bytes: SEGMENT_BYTES,
        ..StoreConfig::default()
    }
}

/// What the index is after the cut.
#[derive(Clone, Copy, Debug)]
enum IndexAfterCut {
    /// As of its last flush (a copy taken then, put back).
    LastFlush,
    /// Gone: the store rebuilds it from the segments.
    Lost,
}

/// Everything a client was told is stored.
#[derive(Default)]
struct Acknowledged {
    objects: Vec<(Digest, Vec<u8>)>,
    steps: Vec<(Digest, Digest)>,
    /// Each tag's last acknowledged target.
    tags: BTreeMap<String, Digest>,
}

impl Acknowledged {
    async fn push(&mut self, client: &Client, seed: u64) -> Digest {
        // 100-300 KiB: objects straddle segment boundaries.
        let data = random_bytes((100 << 10) + (seed as usize % 3) * (100 << 10), seed);
        let digest = client
            .push(
                Cursor::new(data.clone()),
                "application/octet-stream",
                &Progress::new(),
            )
            .await
            .unwrap()
            .digest;
        self.objects.push((digest, data));
        digest
    }

    async fn record_step(&mut self, client: &Client, name: &str, layer: Digest) {
        let key = Digest::of(name.as_bytes());
        let result = StepResult {
            layer: Some(layer),
            config: b"{}".to_vec(),
            provenance: Provenance {
                builder: "power-loss test".into(),
                instruction: name.into(),
                network: "none".into(),
                hermetic: true,
                ..Default::default()
            },
            seal: None,
        };
        client.record_step(&key, &result).await.unwrap();
        self.steps.push((key, layer));
    }

    async fn set_tag(&mut self, client: &Client, name: &str, target: Digest) {
        client.set_tag(name, &target).await.unwrap();
        self.tags.insert(name.to_owned(), target);
    }

    /// What of it the store at `server` no longer gives back as
    /// acknowledged, one line each.
    async fn lost(&self, server: &TestServer) -> Vec<String> {
        let client = server.client().await;
        let mut lost = Vec::new();
        for (digest, data) in &self.objects {
            match client.pull_to_vec(digest).await {
                Ok(pulled) if pulled == *data => {}
                Ok(_) => lost.push(format!("object {digest}: other bytes")),
                Err(e) => lost.push(format!("object {digest}: {e}")),
            }
        }
        let keys: Vec<Digest> = self.steps.iter().map(|s| s.0).collect();
        let hits = client.lookup_steps(&keys).await.unwrap();
        for ((key, layer), hit) in self.steps.iter().zip(hits) {
            if hit.and_then(|r| r.layer) != Some(*layer) {
                lost.push(format!("step {key}"));
            }
        }
        for (name, target) in &self.tags {
            let found = client.get_tag(name).await.unwrap();
            if found != Some(*target) {
                lost.push(format!("tag {name}: {found:?}, not {target}"));
            }
        }
        lost
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn segment_id(path: &Path) -> u32 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// The cut: every segment back to its synced length (one never synced into
/// its directory removed), the last one followed by a torn write, and the
/// index as `index` says (`flushed` holds its copy from its last flush).
fn cut_power(dir: &Path, synced: &BTreeMap<u32, u64>, index: IndexAfterCut, flushed: &Path) {
    let segments = segment_files(dir);
    for path in &segments {
        match synced.get(&segment_id(path)) {
            Some(&len) => {
                let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                f.set_len(len).unwrap();
            }
            None => std::fs::remove_file(path).unwrap(),
        }
    }
    let last = segment_files(dir).pop().expect("a segment survives");
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&random_bytes(777, 77));
    std::fs::write(&last, bytes).unwrap();

    let index_dir = dir.join("index");
    std::fs::remove_dir_all(&index_dir).unwrap();
    match index {
        IndexAfterCut::LastFlush => copy_dir(flushed, &index_dir),
        IndexAfterCut::Lost => {}
    }
}

/// Writes under `fsync`, flushing the index half way, cuts the power, and
/// returns what of the acknowledged writes the reopened store lost.
async fn write_then_cut_power(fsync: FsyncPolicy, index: IndexAfterCut) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let flushed = tempfile::tempdir().unwrap();
    let server = serve_store(Store::open(dir.path(), config(fsync)).unwrap()).await;
    let client = Client::connect(&server.url, test_client_config())
        .await
        .unwrap();
    let mut acked = Acknowledged::default();

    for seed in 0..4 {
        acked.push(&client, seed).await;
    }
    let first = acked.objects[0].0;
    acked.record_step(&client, "RUN early", first).await;
    acked.set_tag(&client, "app:moving", first).await;
    // The index as a power cut now would leave it at worst.
    server.store.wait_for_verification().await;
    server.store.flush().unwrap();
    copy_dir(&dir.path().join("index"), flushed.path());

    for seed in 4..8 {
        acked.push(&client, seed).await;
    }
    let late = acked.objects[6].0;
    acked.record_step(&client, "RUN late", late).await;
    acked.set_tag(&client, "app:late", late).await;
    let last = acked.objects[7].0;
    acked.set_tag(&client, "app:moving", last).await;

    let synced = server.store.synced_segment_lengths();
    assert!(
        segment_files(dir.path()).len() > 2,
        "the objects were to span several segments"
    );
    drop(client);
    server.stop().await;
    cut_power(dir.path(), &synced, index, flushed.path());

    let server = serve_store(Store::open(dir.path(), config(fsync)).unwrap()).await;
    let lost = acked.lost(&server).await;
    server.stop().await;
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_under_fsync_always_loses_nothing_acknowledged() {
    for index in [IndexAfterCut::LastFlush, IndexAfterCut::Lost] {
        let lost = write_then_cut_power(FsyncPolicy::Always, index).await;
        assert!(lost.is_empty(), "index {index:?}: lost {lost:#?}");
    }
}

/// The same cut under `--fsync never` loses what was acknowledged: the
/// policy promises no more, and the cut is shown to bite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_power_cut_under_fsync_never_loses_acknowledged_objects() {
    for index in [IndexAfterCut::LastFlush, IndexAfterCut::Lost] {
        let lost = write_then_cut_power(FsyncPolicy::Never, index).await;
        assert!(
            lost.iter().any(|l| l.starts_with("object ")),
            "index {index:?}: nothing was lost: {lost:#?}"
        );
    }
}

fn verified(raw: &[u8]) -> VerifiedChunk {
    let mut encoder = ChunkEncoder::new(1).unwrap();
    let (codec, stored) = encoder.encode(raw);
    let stored = Bytes::copy_from_slice(stored);
    let mut decoder = ChunkDecoder::new().unwrap();
    VerifiedChunk::verify(
        &mut decoder,
        Digest::of(raw),
        codec,
        raw.len() as u32,
        stored,
    )
    .unwrap()
}

/// A write torn at every offset of the last record, before the index heard
/// of it: the open cuts exactly the torn bytes, keeps them aside, indexes
/// everything before them, and leaves every other file as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_at_every_offset_of_the_last_record_is_cut_kept_aside_and_touches_nothing_else()
 {
    let always = StoreConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), always.clone()).unwrap();
    let earlier: Vec<Vec<u8>> = (0..5)
        .map(|s| random_bytes(4000 + s * 977, s as u64))
        .collect();
    store
        .put_chunks(earlier.iter().map(|raw| verified(raw)).collect())
        .await
        .unwrap();
    drop(store);
    // The state a crash in the middle of the next write leaves: the index
    // and every file as they are now; only the segment grows.
    let before = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), before.path());
    let segment = segment_files(dir.path()).pop().unwrap();
    let record_at = std::fs::metadata(&segment).unwrap().len();

    let last = random_bytes(64, 64);
    let store = Store::open(dir.path(), always.clone()).unwrap();
    store.put_chunks(vec![verified(&last)]).await.unwrap();
    drop(store);
    let whole = std::fs::read(&segment).unwrap();
    assert_eq!(segment_files(dir.path()), std::slice::from_ref(&segment));
    let record_len = whole.len() as u64 - record_at;
    assert!(record_len > 52, "a header and a payload");

    let name = segment.file_name().unwrap();
    for torn in 1..record_len {
        let work = tempfile::tempdir().unwrap();
        copy_dir(before.path(), work.path());
        let work_segment = work.path().join("segments").join(name);
        std::fs::write(&work_segment, &whole[..(record_at + torn) as usize]).unwrap();
        let untouched: BTreeMap<PathBuf, Vec<u8>> = std::fs::read_dir(work.path().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| *p != work_segment)
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();

        let store = Store::open(work.path(), always.clone()).unwrap();
        let stats = store.stats();
        assert_eq!(stats.recovery_tail_bytes_cut, torn, "torn at {torn}");
        assert_eq!(
            (stats.recovery_skipped_records, stats.chunks),
            (0, earlier.len() as u64),
            "torn at {torn}"
        );
        for raw in &earlier {
            assert!(store.contains_chunk(&Digest::of(raw)).unwrap());
        }
        assert!(!store.contains_chunk(&Digest::of(&last)).unwrap());
        drop(store);
        assert_eq!(
            std::fs::metadata(&work_segment).unwrap().len(),
            record_at,
            "torn at {torn}"
        );
        let stem = work_segment.file_stem().unwrap().to_string_lossy();
        let aside = work_segment.with_file_name(format!("{stem}.tail-{record_at}"));
        assert!(
            std::fs::read(&aside).unwrap()
                == whole[record_at as usize..(record_at + torn) as usize],
            "torn at {torn}: the bytes kept aside differ from those cut"
        );
        for (path, bytes) in &untouched {
            assert!(
                std::fs::read(path).unwrap() == *bytes,
                "torn at {torn}: {} changed",
                path.display()
            );
        }
    }
}
