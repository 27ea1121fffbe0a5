//! The store engine: chunks and manifests in append-only segment files,
//! indexed by sled.
//!
//! One [`Store`] serves the gRPC services and the CLI's embedded mode alike.
//! Its invariants:
//! - a record is durable (written, and synced per [`FsyncPolicy`]) before
//!   any index entry points at it; after a crash the index may miss a tail
//!   of records, which [`Store::open`] finds and indexes again, but it never
//!   points at missing bytes;
//! - only [`VerifiedChunk`]s — decoded and hashed against their digest — can
//!   be written, so the store never holds a chunk under a wrong name;
//! - a manifest is accepted only if every chunk it names is held, with the
//!   length it claims;
//! - a step result is accepted only if the layer manifest it names is held
//!   (so a cache hit never dangles); the first result under a step key
//!   stands, and a later one with another outcome is refused and counted;
//! - every append goes through one writer thread, which commits whatever is
//!   queued as one group: one write, one sync, one index batch;
//! - rot is an error, never data, and it repairs itself: a chunk found
//!   rotten (on read, by [`Store::scrub`] or by the background scrub of
//!   `scrub.rs`) leaves the index — on the writer
//!   thread, like every other index change — so `FindMissing` reports it
//!   and the next push of the same content stores it again, while reads of
//!   it keep failing as corrupt until then;
//! - only a manifest whose SHA-256 claim the background verifier has proved
//!   (its chunks read back and hashed as one object, see `verify.rs`) can
//!   be found by content — by chunk list or by whole-object BLAKE3 — so a
//!   false claim can never shadow true content;
//! - recovery loses at most the damaged records: a scan steps over bytes it
//!   cannot read to the next record that provably starts, cuts only a tail
//!   nothing valid follows (and only off the last segment, copied aside
//!   first), and counts what it stepped over in [`StoreStats`].
//!
//! All methods except [`Store::put_chunks`], [`Store::put_manifest`] and
//! [`Store::record_step`] block
//! (sled, positional reads): async callers run them on `spawn_blocking`.
//! This module never imports tonic.

mod compact;
mod error;
mod gc;
mod index;
mod record;
mod room;
mod scrub;
mod segment;
mod usage;
mod verify;
mod writer;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_proto::{
    ChunkDecoder, ChunkError, Codec, Digest, Manifest, PublicKey, SignedTag, StepResult,
};
use tokio::sync::{mpsc, oneshot};

pub use error::StoreError;
pub use gc::{GcReport, MIN_MAX_BYTES};
pub use record::HEADER_LEN as RECORD_HEADER_LEN;
pub use scrub::{DEFAULT_SCRUB_BYTES_PER_SEC, DEFAULT_SCRUB_INTERVAL};

use gc::Collector;
use index::ChunkEntry;
use record::RecordKind;
use room::IndexRoom;
use scrub::ChunkCheck;
use segment::{ReadError, Segments};
use usage::{Leases, UseKind, UseTimes};
use writer::{Job, PendingRecord, Writer};

/// When segment writes are synced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Sync once per commit group, before indexing: nothing acknowledged is
    /// lost on power failure.
    Always,
    /// Leave syncing to the OS: survives a process crash, not a power cut.
    /// For benchmarks and throw-away caches.
    Never,
}

/// Tunables of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub fsync: FsyncPolicy,
    /// A segment is closed and a new one started once it passes this size.
    pub segment_bytes: u64,
    /// Drop the index and rebuild it from the segments at open.
    pub rebuild_index: bool,
    /// Run the background manifest verifier. Without it manifests are
    /// stored and pullable but stay pending, never found by content; off
    /// only for tests that need verification held back (a restart while
    /// it is pending).
    pub verify_manifests: bool,
    /// Keep the data directory (segments and index) under this many bytes
    /// by evicting least recently used content; `None` keeps everything.
    /// Segments are then at most a tenth of it. At least [`MIN_MAX_BYTES`].
    pub max_bytes: Option<u64>,
    /// How long an upload's interest in a chunk or object protects it from
    /// collection: longer than any one push's pause between asking about a
    /// chunk (`FindMissing`) and naming it in a manifest.
    pub lease: Duration,
    /// How often the background scrub starts a pass over every chunk
    /// (reading and verifying it like [`Store::scrub`], dropping rotten ones
    /// so a push heals them); `None` (or zero) turns it off. Off by default
    /// here (an embedded, short-lived store has no use for it); `strata
    /// serve` turns it on with [`DEFAULT_SCRUB_INTERVAL`]. See `scrub.rs`.
    pub scrub_interval: Option<Duration>,
    /// The most stored bytes (record headers and payloads) the background
    /// scrub reads per second, so it never crowds out pulls; 0 leaves it
    /// unpaced (tests only).
    pub scrub_bytes_per_sec: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes: 1 << 30,
            rebuild_index: false,
            verify_manifests: true,
            max_bytes: None,
            lease: Duration::from_secs(300),
            scrub_interval: None,
            scrub_bytes_per_sec: DEFAULT_SCRUB_BYTES_PER_SEC,
        }
    }
}

/// A chunk whose bytes have been decoded and hashed to its digest: the only
/// kind the store accepts.
#[derive(Clone, Debug)]
pub struct VerifiedChunk {
    digest: Digest,
    codec: Codec,
    raw_len: u32,
    data: Bytes,
}

impl VerifiedChunk {
    /// Decodes `data` and checks it against `digest` and `raw_len`.
    pub fn verify(
        decoder: &mut ChunkDecoder,
        digest: Digest,
        codec: Codec,
        raw_len: u32,
        data: Bytes,
    ) -> Result<Self, ChunkError> {
        decoder.decode_verified(&digest, codec, raw_len, &data)?;
        Ok(VerifiedChunk {
            digest,
            codec,
            raw_len,
            data,
        })
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The decoded length, verified.
    pub fn raw_len(&self) -> u32 {
        self.raw_len
    }
}

/// A chunk as stored: its stored bytes, not yet decoded.
#[derive(Clone, Debug)]
pub struct StoredChunk {
    pub digest: Digest,
    pub codec: Codec,
    pub raw_len: u32,
    pub data: Bytes,
}

/// What a put did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOutcome {
    pub received: u64,
    /// Records that were new and were written.
    pub stored: u64,
    /// Stored (compressed) payload bytes of the new records.
    pub bytes_stored: u64,
    /// Decoded bytes of the new chunks among them.
    pub raw_bytes_stored: u64,
    /// Step results refused because their key has another outcome.
    pub divergent: u64,
}

impl std::ops::AddAssign for PutOutcome {
    fn add_assign(&mut self, o: Self) {
        self.received += o.received;
        self.stored += o.stored;
        self.bytes_stored += o.bytes_stored;
        self.raw_bytes_stored += o.raw_bytes_stored;
        self.divergent += o.divergent;
    }
}

/// What [`Store::find_missing_counted`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoundMissing {
    /// The digests not held, in request order, once each.
    pub missing: Vec<Digest>,
    /// Distinct digests asked about that are held, and their decoded bytes.
    pub held_chunks: u64,
    pub held_bytes: u64,
}

/// Figures about the store's contents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub stored_bytes: u64,
    pub manifests: u64,
    pub logical_bytes: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    pub step_results: u64,
    pub step_divergences: u64,
    /// Damaged stretches of the segments that recovery stepped over (each
    /// usually one record), counted once each: since the index was last
    /// rebuilt, which counts afresh over every segment.
    pub recovery_skipped_records: u64,
    /// Bytes in those stretches.
    pub recovery_skipped_bytes: u64,
    /// Bytes of torn tail ever cut off the last segment (and copied aside to
    /// `NNNNNNNN.tail-OFFSET`). Kept across index rebuilds: the bytes are no
    /// longer in any segment to be counted again.
    pub recovery_tail_bytes_cut: u64,
    /// Chunks found rotten and dropped from the index that no push has
    /// stored again yet: data lost until some client re-pushes it.
    pub rotten_chunks: u64,
    /// Uploaded chunks decoded and hashed by [`Store::verify_chunk`] since
    /// the store was opened (not kept across restarts): the CPU an upload
    /// cost, which duplicates in one request must not multiply.
    pub chunks_verified: u64,
    /// Manifests stored but not yet verified (or put aside until a chunk
    /// they name is readable again): pullable, not yet found by content.
    pub manifests_unverified: u64,
    /// Manifests the verifier found to claim a false SHA-256: kept and
    /// pullable by digest (pulls refuse them), never found by content.
    pub manifests_refuted: u64,
    /// The size cap (`--max-bytes`); 0 when there is none.
    pub max_bytes: u64,
    /// Bytes of the data directory that count against the cap: segment
    /// files plus the index, as last measured.
    pub bytes_used: u64,
    /// Bytes of the index on disk, as last measured.
    pub index_bytes: u64,
    /// Totals over every collection, kept across restarts.
    pub objects_evicted: u64,
    pub step_results_evicted: u64,
    pub tags_evicted: u64,
    pub chunks_freed: u64,
    /// Bytes of segment files reclaimed by compaction.
    pub bytes_compacted: u64,
    pub gc_rounds: u64,
    /// Background scrub figures since the store was opened (not kept
    /// across restarts): passes completed over every chunk, chunks read
    /// and verified, chunks it found rotten (and dropped from the index),
    /// and stored bytes (record headers and payloads) it read.
    pub scrub_passes: u64,
    pub scrub_chunks_checked: u64,
    pub scrub_rotten_found: u64,
    pub scrub_bytes_read: u64,
    /// How long the last completed pass took, in ms (the part run since
    /// this open, when it resumed one a restart interrupted): at least its
    /// bytes over the rate, by the pacing.
    pub scrub_last_pass_ms: u64,
}

/// What recording a step result did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The result is now stored under the key.
    Created,
    /// The key already had a result with the same outcome; nothing changed.
    AlreadyRecorded,
}

/// What an index rebuild found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub records_scanned: u64,
    pub chunks_indexed: u64,
    pub manifests_indexed: u64,
    /// Bytes of torn tail cut from the last segment (copied aside first).
    pub bytes_truncated: u64,
    /// Damaged stretches stepped over, each usually one record; a sealed
    /// segment's unreadable end counts as one.
    pub skipped_records: u64,
    /// Bytes in those stretches.
    pub skipped_bytes: u64,
    /// Step results and tags of a store before signatures (schema 6), left
    /// out of the index: no client would trust them.
    pub unsigned_left_out: u64,
}

/// What a scrub found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Chunks read back and verified (those the index holds).
    pub chunks_checked: u64,
    /// Chunks and manifests that are not intact: those found rotten now
    /// (chunks among them are dropped from the index, so a push heals
    /// them), then chunks found rotten earlier that no push has healed yet,
    /// then manifests.
    pub corrupt: Vec<Digest>,
}

/// The running totals behind [`StoreStats`]; recomputed from the index at
/// open, then kept by the writer thread.
#[derive(Default)]
struct Counters {
    chunks: AtomicU64,
    chunk_bytes: AtomicU64,
    stored_bytes: AtomicU64,
    manifests: AtomicU64,
    logical_bytes: AtomicU64,
    segments: AtomicU64,
    segment_bytes: AtomicU64,
    steps: AtomicU64,
    divergences: AtomicU64,
    skipped_records: AtomicU64,
    skipped_bytes: AtomicU64,
    tail_bytes_cut: AtomicU64,
    rotten_chunks: AtomicU64,
    chunks_verified: AtomicU64,
    manifests_unverified: AtomicU64,
    manifests_refuted: AtomicU64,
    index_bytes: AtomicU64,
    scrub_passes: AtomicU64,
    scrub_chunks_checked: AtomicU64,
    scrub_rotten_found: AtomicU64,
    scrub_bytes_read: AtomicU64,
    scrub_last_pass_ms: AtomicU64,
}

/// State shared by the store handles and the writer thread.
struct Shared {
    _lock: File,
    db: sled::Db,
    chunks: sled::Tree,
    manifests: sled::Tree,
    /// Content key (chunk list, length, media type) → digest of a verified
    /// manifest (see `verify.rs`).
    by_content: sled::Tree,
    /// Whole-object BLAKE3 ‖ media type → digest of a verified manifest.
    by_object_blake3: sled::Tree,
    /// Whole-object SHA-256 ‖ media type → digest of a verified manifest:
    /// how a registry blob (`sha256:…`) pulled through the cache is found.
    by_object_sha256: sled::Tree,
    /// Manifest digest → verdict byte ‖ whole-object BLAKE3. Kept across
    /// rebuilds, like `rotten`: a verdict is a fact about immutable content.
    verified: sled::Tree,
    /// Manifest digests awaiting the verifier: its durable queue.
    unverified: sled::Tree,
    verify_queue: verify::VerifyQueue,
    /// Step key → encoded [`StepResult`].
    steps: sled::Tree,
    /// Tag name → object digest.
    tags: sled::Tree,
    /// Digest → the index entry a chunk had when it was found rotten and
    /// dropped; an entry leaves when the chunk is stored again (healed).
    rotten: sled::Tree,
    meta: sled::Tree,
    /// Collection totals (see [`gc::FIGURE_KEYS`]); not derived from the
    /// segments, so a rebuild keeps them.
    gc_figures: sled::Tree,
    /// The background scrub's place in its schedule (see `scrub.rs`):
    /// advisory, kept across rebuilds, written by the scrub thread alone.
    scrub_state: sled::Tree,
    segments: Segments,
    counters: Counters,
    /// Bumped (after the fact) by every collection that took an object or
    /// chunk out of the index. A manifest, step result or tag remembers the
    /// value it checked its references under; the writer checks them again
    /// if it has moved since (see `writer.rs`), so no write can name what
    /// a collection removed between its check and its commit.
    collections: AtomicU64,
    /// While a collection round runs (from before its inventory until its
    /// plan is applied): every object committed meanwhile and every chunk
    /// it names, and every object a step result or tag committed
    /// meanwhile names.
    /// The inventory may have missed those names; the plan must not take
    /// what they need (see `gc::apply`). `None` between rounds.
    named_during_round: std::sync::Mutex<Option<HashSet<Digest>>>,
    config: StoreConfig,
    leases: Leases,
    /// Last-use times (`atimes` tree), advisory: a rebuild keeps them.
    uses: UseTimes,
    /// How much of each segment a power cut now is certain to leave: what
    /// was synced (see [`Store::synced_segment_lengths`]).
    synced: std::sync::Mutex<BTreeMap<u32, u64>>,
    /// Whether the index's filesystem has room for index writes.
    index_room: Arc<IndexRoom>,
}

/// A handle to an open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// Holds a sender to the writer (to drop rotten chunks): stopped first.
    scrubber: Option<scrub::Scrubber>,
    /// Stopped before the writer: it sends the writer verdicts.
    verifier: Option<verify::Verifier>,
    writer_tx: Option<mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Holds a sender to the writer: stopped and dropped before it.
    collector: Option<Arc<Collector>>,
    collector_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The scrubber, the collector and the verifier hold senders to the
        // writer: stop them first (the scrubber between two chunks, a
        // round under way finishes; the writer still runs).
        self.scrubber.take();
        if let Some(c) = self.collector.take() {
            c.stop();
        }
        if let Some(t) = self.collector_thread.take() {
            let _ = t.join();
        }
        self.verifier.take();
        // Closing the queue lets the writer finish what is queued and exit;
        // joining it releases the index and the directory lock.
        self.writer_tx.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
        let _ = self.shared.db.flush();
    }
}

/// How many commit jobs may wait for the writer: enough to fill a group
/// while the previous one syncs, small enough to push back on uploaders.
const WRITE_QUEUE_JOBS: usize = 64;

/// How long a write waits, beyond one lease, for collection to make room
/// under the cap before it is refused.
const ROOM_WAIT_SLACK: Duration = Duration::from_secs(30);

/// How long an open waits for the index's own lock (see [`open_index`]).
const INDEX_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the sled index. The data directory's `LOCK` is already held, so no
/// other store uses it; but sled's I/O threads can keep the index's own
/// lock a moment after a store in this process was dropped (they finish
/// writes it queued). Reopening right after a close waits that out instead
/// of failing.
fn open_index(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + INDEX_LOCK_WAIT;
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(128 << 20)
            .flush_every_ms(Some(500))
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(sled::Error::Io(e)) if error::is_storage_full(&e) => {
                return Err(StoreError::StorageFull {
                    what: format!(
                        "opening the index at {}: its disk is full; free some space there \
                         and start again",
                        path.display()
                    ),
                    source: e,
                });
            }
            result => return Ok(result?),
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, indexing any segment tail the
    /// index does not cover yet.
    pub fn open(dir: &Path, mut config: StoreConfig) -> Result<Store, StoreError> {
        if let Some(cap) = config.max_bytes {
            if cap < MIN_MAX_BYTES {
                return Err(StoreError::CapTooSmall {
                    asked: cap,
                    minimum: MIN_MAX_BYTES,
                });
            }
            // Bounds the overshoot: a segment is written whole before it
            // can be compacted.
            config.segment_bytes = config.segment_bytes.min(cap / 10);
        }
        let data_dir_err = |source| StoreError::DataDir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(data_dir_err)?;
        let lock = File::create(dir.join("LOCK")).map_err(data_dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(data_dir_err(e)),
        }
        let segments = Segments::open(&dir.join("segments")).map_err(data_dir_err)?;
        let db = open_index(&dir.join("index"))?;
        let index_room = Arc::new(IndexRoom::new(dir.join("index")));
        let shared = Arc::new(Shared {
            _lock: lock,
            chunks: db.open_tree("chunks")?,
            manifests: db.open_tree("manifests")?,
            by_content: db.open_tree("by_content")?,
            by_object_blake3: db.open_tree("by_object_blake3")?,
            by_object_sha256: db.open_tree("by_object_sha256")?,
            verified: db.open_tree("verified")?,
            unverified: db.open_tree("unverified")?,
            verify_queue: verify::VerifyQueue::default(),
            steps: db.open_tree("steps")?,
            tags: db.open_tree("tags")?,
            rotten: db.open_tree("rotten")?,
            meta: db.open_tree("meta")?,
            gc_figures: db.open_tree("gc")?,
            scrub_state: db.open_tree("scrub")?,
            uses: UseTimes::new(db.open_tree("atimes")?, index_room.clone()),
            leases: Leases::new(config.lease),
            db,
            segments,
            counters: Counters::default(),
            collections: AtomicU64::new(0),
            named_during_round: std::sync::Mutex::new(None),
            synced: std::sync::Mutex::new(BTreeMap::new()),
            index_room,
            config,
        });

        let schema = shared
            .meta
            .get(index::SCHEMA_KEY)?
            .and_then(|v| index::decode_u64(&v));
        let rebuild =
            shared.config.rebuild_index || schema != Some(u64::from(index::SCHEMA_VERSION));
        if rebuild {
            if schema.is_some() || !shared.chunks.is_empty() {
                tracing::warn!(?schema, "rebuilding the index from the segments");
            }
            shared.clear_index()?;
        }
        // Under `Always`, what is on disk is synced before recovery indexes
        // any of it: a process that synced nothing (`Never`, or a crash
        // before its sync) may have left records in the page cache, and a
        // power cut must not take bytes the index names.
        if shared.config.fsync == FsyncPolicy::Always {
            shared
                .segments
                .sync_all()
                .map_err(|e| StoreError::io("syncing the segments", e))?;
        }
        let report = shared.recover()?;
        shared.note_synced_at_open()?;
        if rebuild {
            gc::drop_dangling(&shared)?;
        }
        if report.records_scanned > 0 || report.bytes_truncated > 0 || report.skipped_records > 0 {
            tracing::info!(
                records = report.records_scanned,
                chunks = report.chunks_indexed,
                manifests = report.manifests_indexed,
                truncated = report.bytes_truncated,
                skipped_records = report.skipped_records,
                skipped_bytes = report.skipped_bytes,
                "indexed segment tail"
            );
        }
        if report.unsigned_left_out > 0 {
            tracing::warn!(
                left_out = report.unsigned_left_out,
                "step results and tags written before signatures were left out of the index; \
                 builds record signed ones again as they run"
            );
        }
        shared.recount()?;

        let writer = Writer::start(shared.clone())?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_JOBS);
        let thread = std::thread::Builder::new()
            .name("strata-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::io("starting the writer thread", e))?;
        let verifier = if shared.config.verify_manifests {
            Some(verify::Verifier::start(shared.clone(), tx.clone())?)
        } else {
            None
        };
        let collector = Collector::new(shared.clone(), tx.clone());
        let scrubber = scrub::Scrubber::start(shared.clone(), tx.clone())?;
        let mut inner = Inner {
            shared,
            scrubber,
            verifier,
            writer_tx: Some(tx),
            writer_thread: Some(thread),
            collector: Some(collector.clone()),
            collector_thread: None,
        };
        inner.collector_thread = collector.start_background()?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    fn collector(&self) -> Result<&Arc<Collector>, StoreError> {
        self.inner
            .collector
            .as_ref()
            .ok_or(StoreError::ShuttingDown)
    }

    /// Under a cap, waits until the data directory is below it, asking the
    /// collector for rounds; refuses the write once a lease and
    /// [`ROOM_WAIT_SLACK`] pass without room (everything left is in use).
    async fn wait_for_room(&self) -> Result<(), StoreError> {
        let collector = self.collector()?;
        if !collector.over_cap() {
            return Ok(());
        }
        let deadline = Instant::now() + self.shared().leases.period() + ROOM_WAIT_SLACK;
        let mut rounds = collector.rounds();
        loop {
            collector.wake();
            // A round may already be running; one that ends wakes us, and
            // the timeout covers a wake-up that came between two rounds.
            let _ = tokio::time::timeout(Duration::from_secs(1), rounds.changed()).await;
            if !collector.over_cap() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StoreError::CapReached {
                    used: collector.used_bytes(),
                    cap: self.shared().config.max_bytes.unwrap_or(0),
                });
            }
        }
    }

    /// After a write: wakes the collector when the store nears its cap.
    fn after_write(&self) {
        if let Ok(c) = self.collector()
            && c.over_trigger()
        {
            c.wake();
        }
    }

    /// Runs one garbage collection now: evicts least recently used content
    /// if the store is near its cap, collects orphaned chunks whose lease
    /// has lapsed, and compacts mostly dead segments. Blocks.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        self.collector()?.round()
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The writer's queue, for dropping rotten chunks; `None` once closing.
    fn writer(&self) -> Option<&mpsc::Sender<Job>> {
        self.inner.writer_tx.as_ref()
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let tx = self
            .inner
            .writer_tx
            .as_ref()
            .ok_or(StoreError::ShuttingDown)?;
        let (reply, rx) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Digests among `digests` the store does not hold, in order, once each.
    pub fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        Ok(self.find_missing_counted(digests)?.missing)
    }

    /// [`Store::find_missing`], with what was found held: the chunks an
    /// uploader will not need to send.
    pub fn find_missing_counted(&self, digests: &[Digest]) -> Result<FoundMissing, StoreError> {
        // An upload asks about chunks it will name in a manifest: present
        // or not, none of them may be collected before it does.
        self.shared().leases.lease(digests);
        let mut seen = HashSet::with_capacity(digests.len());
        let mut found = FoundMissing::default();
        for d in digests {
            if !seen.insert(*d) {
                continue;
            }
            match self.shared().chunks.get(index::digest_key(d))? {
                None => found.missing.push(*d),
                Some(entry) => {
                    found.held_chunks += 1;
                    // An entry that does not decode is the reader's problem
                    // (it reports it); here it only counts no bytes.
                    found.held_bytes +=
                        ChunkEntry::decode(&entry).map_or(0, |e| u64::from(e.raw_len));
                }
            }
        }
        Ok(found)
    }

    pub fn contains_chunk(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self
            .shared()
            .chunks
            .contains_key(index::digest_key(digest))?)
    }

    /// Decodes and hashes an uploaded chunk ([`VerifiedChunk::verify`]),
    /// counting it in [`StoreStats::chunks_verified`]. CPU-bound: call it
    /// from a blocking thread.
    pub fn verify_chunk(
        &self,
        decoder: &mut ChunkDecoder,
        digest: Digest,
        codec: Codec,
        raw_len: u32,
        data: Bytes,
    ) -> Result<VerifiedChunk, ChunkError> {
        self.shared()
            .counters
            .chunks_verified
            .fetch_add(1, Ordering::Relaxed);
        VerifiedChunk::verify(decoder, digest, codec, raw_len, data)
    }

    /// Writes the chunks the store does not hold yet; returns once they are
    /// durable and indexed.
    pub async fn put_chunks(&self, chunks: Vec<VerifiedChunk>) -> Result<PutOutcome, StoreError> {
        self.wait_for_room().await?;
        // Leased from now, when they are about to be stored: until a
        // manifest names them they are orphans, which a collection takes
        // once the lease lapses.
        self.shared().leases.lease(chunks.iter().map(|c| &c.digest));
        let records = chunks.into_iter().map(PendingRecord::Chunk).collect();
        let outcome = self.submit(|reply| Job::Put { records, reply }).await;
        self.after_write();
        outcome
    }

    /// Reads a chunk's stored bytes, checking them against the record's CRC
    /// and digest; rot on disk is a [`StoreError::Corrupt`], never data. A
    /// chunk proven rotten leaves the index before this returns (the
    /// writer thread drops it), so a `FindMissing` after the error reports
    /// it and a push heals it. Blocks, and waits for the writer
    /// when it drops a chunk: never call it from an async task.
    pub fn read_chunk(&self, digest: &Digest) -> Result<StoredChunk, StoreError> {
        let shared = self.shared();
        match shared.chunks.get(index::digest_key(digest))? {
            Some(entry) => shared
                .read_current_chunk(self.writer(), digest, entry)
                .map(|(_, c)| c),
            None => Err(shared.missing_chunk_error(digest)?),
        }
    }

    /// Checks that every chunk `manifest` names is held with the claimed length.
    pub fn check_manifest_complete(&self, manifest: &Manifest) -> Result<(), StoreError> {
        for (index, c) in manifest.chunks().iter().enumerate() {
            let entry = self
                .shared()
                .chunks
                .get(index::digest_key(&c.digest))?
                .and_then(|e| ChunkEntry::decode(&e))
                .ok_or(StoreError::ManifestIncomplete {
                    digest: c.digest,
                    index,
                })?;
            if entry.raw_len != c.length {
                return Err(StoreError::ManifestLengthMismatch {
                    digest: c.digest,
                    index,
                    claimed: c.length,
                    stored: entry.raw_len,
                });
            }
        }
        Ok(())
    }

    /// Stores a manifest whose chunks are all held; returns its digest.
    /// The completeness check blocks on the index: call from a blocking
    /// context or accept a short block.
    pub async fn put_manifest(&self, manifest: Manifest) -> Result<Digest, StoreError> {
        self.wait_for_room().await?;
        // Leased before the check, so a collection leaves the chunks be;
        // should one take them anyway (a lease that lapsed in a slow
        // queue), the writer finds out (`checked_at`) and refuses cleanly.
        self.shared()
            .leases
            .lease(manifest.chunks().iter().map(|c| &c.digest));
        let checked_at = self.shared().collections.load(Ordering::Acquire);
        let this = self.clone();
        let manifest = tokio::task::spawn_blocking(move || {
            this.check_manifest_complete(&manifest).map(|()| manifest)
        })
        .await
        .map_err(|_| StoreError::ShuttingDown)??;
        let encoded = manifest.encode();
        let digest = Digest::of(&encoded);
        let records = vec![PendingRecord::Manifest {
            digest,
            total_length: manifest.total_length(),
            encoded,
            checked_at,
        }];
        // Its use is written before it is indexed, so no collection ever
        // sees it without one (it would look least recently used of all).
        // A failed write leaves a stray use time, which costs only bytes.
        self.shared()
            .uses
            .created(UseKind::Object, digest.as_bytes());
        self.submit(|reply| Job::Put { records, reply }).await?;
        // Its chunks are named now: their upload is over. The object
        // itself is the most recently used, last in line for eviction.
        self.shared()
            .leases
            .release(manifest.chunks().iter().map(|c| &c.digest));
        // Stored again: if its verification was put aside for an unreadable
        // chunk (which this push may just have healed), try it now.
        self.shared().verify_queue.retry(&digest);
        self.after_write();
        Ok(digest)
    }

    /// The object's manifest; a use of the object (for eviction order).
    pub fn get_manifest(&self, digest: &Digest) -> Result<Manifest, StoreError> {
        let manifest = self.read_manifest(digest)?;
        self.shared().uses.touch(UseKind::Object, digest.as_bytes());
        Ok(manifest)
    }

    /// The object's manifest, without counting a use.
    fn read_manifest(&self, digest: &Digest) -> Result<Manifest, StoreError> {
        let bytes = self
            .shared()
            .manifests
            .get(index::digest_key(digest))?
            .ok_or(StoreError::ManifestNotFound(*digest))?;
        if Digest::of(&bytes) != *digest {
            return Err(StoreError::Corrupt {
                what: "manifest",
                digest: *digest,
                detail: "index copy does not hash to its digest".into(),
            });
        }
        Manifest::decode(&bytes).map_err(|e| StoreError::Corrupt {
            what: "manifest",
            digest: *digest,
            detail: e.to_string(),
        })
    }

    /// How much of each segment (by id) a power cut now is certain to
    /// leave: the length last synced, and a segment whose creation was
    /// synced, at 0. Under [`FsyncPolicy::Always`] it covers every
    /// acknowledged write; under `Never` only the files' names. Bytes past
    /// it may survive a power cut, partly or not at all. For power-loss
    /// tests, which cut the files back to it.
    pub fn synced_segment_lengths(&self) -> BTreeMap<u32, u64> {
        self.shared()
            .synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The manifest whose content key is `key`, if a verified one is held.
    pub fn find_manifest(&self, key: &Digest) -> Result<Option<(Digest, Manifest)>, StoreError> {
        let Some(digest) = self.shared().by_content.get(key.as_bytes())? else {
            return Ok(None);
        };
        let digest = Digest::from_slice(&digest).map_err(|_| StoreError::Corrupt {
            what: "content index entry of manifest",
            digest: *key,
            detail: "undecodable index entry; rebuild the index".into(),
        })?;
        // The asker may name the object next (a tag, a step result)
        // without pushing it: it is leased, like chunks asked about.
        self.shared().leases.lease([&digest]);
        let manifest = self.get_manifest(&digest)?;
        Ok(Some((digest, manifest)))
    }

    /// The verified manifest of the object whose bytes hash (BLAKE3, as one
    /// whole) to `object_blake3`, pushed as `media_type` — if one is held
    /// with every chunk it names. A manifest missing a chunk (dropped as
    /// rotten since) is no answer: the client then pushes the normal way,
    /// which re-uploads that chunk and heals the store.
    pub fn find_object(
        &self,
        object_blake3: &Digest,
        media_type: &str,
    ) -> Result<Option<(Digest, Manifest)>, StoreError> {
        self.find_whole_object(
            &self.shared().by_object_blake3,
            object_blake3.as_bytes(),
            media_type,
        )
    }

    /// The verified manifest of the object whose SHA-256 is `sha256`, pushed
    /// as `media_type`, on the same terms as [`Store::find_object`].
    pub fn find_object_by_sha256(
        &self,
        sha256: &[u8; 32],
        media_type: &str,
    ) -> Result<Option<(Digest, Manifest)>, StoreError> {
        self.find_whole_object(&self.shared().by_object_sha256, sha256, media_type)
    }

    fn find_whole_object(
        &self,
        tree: &sled::Tree,
        hash: &[u8; 32],
        media_type: &str,
    ) -> Result<Option<(Digest, Manifest)>, StoreError> {
        let Some(digest) = tree.get(verify::object_key(hash, media_type))? else {
            return Ok(None);
        };
        let digest = Digest::from_slice(&digest).map_err(|_| StoreError::Corrupt {
            what: "whole-object index entry of manifest",
            digest: Digest::from_array(*hash),
            detail: "undecodable index entry; rebuild the index".into(),
        })?;
        let manifest = match self.get_manifest(&digest) {
            Ok(m) => m,
            Err(StoreError::ManifestNotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if manifest.media_type() != media_type {
            return Ok(None);
        }
        match self.check_manifest_complete(&manifest) {
            Ok(()) => {
                // The asker names the object next without pushing it.
                self.shared().leases.lease([&digest]);
                Ok(Some((digest, manifest)))
            }
            Err(
                e @ (StoreError::ManifestIncomplete { .. }
                | StoreError::ManifestLengthMismatch { .. }),
            ) => {
                tracing::info!(manifest = %digest, reason = %e,
                    "a verified object lacks a chunk; answering a miss so a push heals it");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits (on a blocking thread) until the background verifier has
    /// decided every manifest stored before the call (those put aside for an
    /// unreadable chunk stay pending). Returns at once when the verifier is
    /// off. For tests, benchmarks and tools that must know a push is
    /// findable by content, or that figures no longer move.
    pub async fn wait_for_verification(&self) {
        let store = self.clone();
        // A panic in the wait can only be a bug in the queue's flags; the
        // caller learns nothing more from it than from returning.
        let _ = tokio::task::spawn_blocking(move || store.shared().verify_queue.wait_idle()).await;
    }

    /// Records `result`, signed by its writer, under step `key` once its
    /// layer is held. Each signer's first result under a key stands (see
    /// [`RecordOutcome`] and [`StoreError::StepDivergence`]); results of
    /// different signers stand side by side.
    pub async fn record_step(
        &self,
        key: Digest,
        result: StepResult,
    ) -> Result<RecordOutcome, StoreError> {
        // Refused before anything is looked up: an entry no one signed, or
        // signed for another key or content, is never stored.
        let signer = result.verify(&key)?;
        self.wait_for_room().await?;
        let checked_at = self.shared().collections.load(Ordering::Acquire);
        if let Some(layer) = result.layer {
            // Not leased: naming it makes it recently used, and should a
            // collection take it before the write, the writer re-checks
            // (`checked_at`) and refuses cleanly.
            self.shared().uses.touch(UseKind::Object, layer.as_bytes());
            let this = self.clone();
            let held = tokio::task::spawn_blocking(move || {
                this.shared()
                    .manifests
                    .contains_key(index::digest_key(&layer))
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)??;
            if !held {
                return Err(StoreError::StepLayerMissing { key, layer });
            }
        }
        let encoded = result.encode();
        let offered_layer = result.layer;
        let index_key = index::StepIndexKey::new(&key, &signer);
        let records = vec![PendingRecord::Step {
            key,
            result: Box::new(result),
            encoded,
            checked_at,
        }];
        // Before it is indexed, as for an object (recording the same
        // result again is a use too).
        self.shared()
            .uses
            .created(UseKind::Step, index_key.as_bytes());
        let outcome = self.submit(|reply| Job::Put { records, reply }).await?;
        if outcome.stored > 0 {
            return Ok(RecordOutcome::Created);
        }
        if outcome.divergent > 0 {
            let recorded = self
                .shared()
                .steps
                .get(index_key)?
                .map(|v| decode_stored_step(&key, &v))
                .transpose()?;
            let layer_name = |l: Option<Digest>| l.map_or("none".to_string(), |d| d.to_string());
            return Err(StoreError::StepDivergence(Box::new(
                error::StepDivergence {
                    key,
                    signer,
                    recorded: layer_name(recorded.and_then(|r| r.layer)),
                    offered: layer_name(offered_layer),
                },
            )));
        }
        Ok(RecordOutcome::AlreadyRecorded)
    }

    /// The result recorded under each key, in order (`None` for a miss):
    /// that of the first signer in `trusted` who recorded one, else one of
    /// another signer's (which the asker will not use, but can name). A
    /// hit is a use of the step result (for eviction order).
    pub fn lookup_steps(
        &self,
        keys: &[Digest],
        trusted: &[PublicKey],
    ) -> Result<Vec<Option<StepResult>>, StoreError> {
        keys.iter()
            .map(|key| -> Result<Option<StepResult>, StoreError> {
                let entries = self.shared().steps.scan_prefix(key.as_bytes());
                let Some((index_key, value)) = preferred_entry(entries, trusted)? else {
                    return Ok(None);
                };
                let result = decode_stored_step(key, &value)?;
                self.shared().uses.touch(UseKind::Step, &index_key);
                // The asker will pull the layer or name it (a tag, an
                // image record) next: leased, like a found manifest.
                if let Some(layer) = &result.layer {
                    self.shared().leases.lease([layer]);
                }
                Ok(Some(result))
            })
            .collect()
    }

    /// Points a tag at an object, which must be stored, as its signer set
    /// it: a signer's newest change to a name stands, an older one is
    /// refused ([`StoreError::TagStale`]).
    pub async fn set_tag(&self, tag: SignedTag) -> Result<(), StoreError> {
        check_tag_name(&tag.name)?;
        tag.verify()?;
        self.wait_for_room().await?;
        let checked_at = self.shared().collections.load(Ordering::Acquire);
        let this = self.clone();
        let target = tag.target;
        let held = tokio::task::spawn_blocking(move || {
            this.shared()
                .manifests
                .contains_key(index::digest_key(&target))
        })
        .await
        .map_err(|_| StoreError::ShuttingDown)??;
        if !held {
            return Err(StoreError::TagTargetMissing {
                name: tag.name,
                digest: target,
            });
        }
        // Before it is indexed, as for an object.
        let index_key = index::tag_index_key(&tag.name, &tag.seal.signer);
        self.shared().uses.created(UseKind::Tag, &index_key);
        let records = vec![PendingRecord::Tag {
            encoded: tag.encode(),
            tag,
            checked_at,
        }];
        self.submit(|reply| Job::Put { records, reply }).await?;
        Ok(())
    }

    /// Tag `name` as set by the first signer in `trusted` who set it, else
    /// as another signer set it (see [`Store::lookup_steps`]).
    pub fn get_tag(
        &self,
        name: &str,
        trusted: &[PublicKey],
    ) -> Result<Option<SignedTag>, StoreError> {
        check_tag_name(name)?;
        let entries = self.shared().tags.scan_prefix(index::tag_prefix(name));
        let Some((index_key, value)) = preferred_entry(entries, trusted)? else {
            return Ok(None);
        };
        self.shared().uses.touch(UseKind::Tag, &index_key);
        SignedTag::decode(&value)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: "tag",
                digest: Digest::of(name.as_bytes()),
                detail: format!("index entry of tag {name:?}: {e}; rebuild the index"),
            })
    }

    pub fn stats(&self) -> StoreStats {
        let shared = self.shared();
        let c = &shared.counters;
        let figure = |key| gc::figure(shared, key).unwrap_or(0);
        let [objects, steps, tags, chunks, compacted, rounds] = gc::FIGURE_KEYS;
        StoreStats {
            max_bytes: shared.config.max_bytes.unwrap_or(0),
            bytes_used: c.segment_bytes.load(Ordering::Relaxed)
                + c.index_bytes.load(Ordering::Relaxed),
            index_bytes: c.index_bytes.load(Ordering::Relaxed),
            objects_evicted: figure(objects),
            step_results_evicted: figure(steps),
            tags_evicted: figure(tags),
            chunks_freed: figure(chunks),
            bytes_compacted: figure(compacted),
            gc_rounds: figure(rounds),
            chunks: c.chunks.load(Ordering::Relaxed),
            chunk_bytes: c.chunk_bytes.load(Ordering::Relaxed),
            stored_bytes: c.stored_bytes.load(Ordering::Relaxed),
            manifests: c.manifests.load(Ordering::Relaxed),
            logical_bytes: c.logical_bytes.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            segment_bytes: c.segment_bytes.load(Ordering::Relaxed),
            step_results: c.steps.load(Ordering::Relaxed),
            step_divergences: c.divergences.load(Ordering::Relaxed),
            recovery_skipped_records: c.skipped_records.load(Ordering::Relaxed),
            recovery_skipped_bytes: c.skipped_bytes.load(Ordering::Relaxed),
            recovery_tail_bytes_cut: c.tail_bytes_cut.load(Ordering::Relaxed),
            rotten_chunks: c.rotten_chunks.load(Ordering::Relaxed),
            chunks_verified: c.chunks_verified.load(Ordering::Relaxed),
            manifests_unverified: c.manifests_unverified.load(Ordering::Relaxed),
            manifests_refuted: c.manifests_refuted.load(Ordering::Relaxed),
            scrub_passes: c.scrub_passes.load(Ordering::Relaxed),
            scrub_chunks_checked: c.scrub_chunks_checked.load(Ordering::Relaxed),
            scrub_rotten_found: c.scrub_rotten_found.load(Ordering::Relaxed),
            scrub_bytes_read: c.scrub_bytes_read.load(Ordering::Relaxed),
            scrub_last_pass_ms: c.scrub_last_pass_ms.load(Ordering::Relaxed),
        }
    }

    /// Drops the index and rebuilds it from the segments, serialised with
    /// writes by running on the writer thread.
    pub async fn rebuild_index(&self) -> Result<RebuildReport, StoreError> {
        self.submit(|reply| Job::Rebuild { reply }).await
    }

    /// Reads and verifies every chunk and manifest; blocks for as long as
    /// that takes. Rotten chunks leave the index as on a read, so the next
    /// push of their content heals them.
    pub fn scrub(&self) -> Result<ScrubReport, StoreError> {
        let mut report = ScrubReport::default();
        let mut decoder =
            ChunkDecoder::new().map_err(|e| StoreError::io("creating a zstd decoder", e))?;
        for item in self.shared().chunks.iter() {
            let (key, entry) = item?;
            let Ok(digest) = Digest::from_slice(&key) else {
                continue;
            };
            match scrub::check_chunk(self.shared(), self.writer(), &mut decoder, &digest, entry) {
                // Collected since the scan read its entry: nothing to check.
                ChunkCheck::Gone => {}
                ChunkCheck::Intact => report.chunks_checked += 1,
                ChunkCheck::Corrupt => {
                    report.chunks_checked += 1;
                    report.corrupt.push(digest);
                }
            }
        }
        let found_now: HashSet<Digest> = report.corrupt.iter().copied().collect();
        for item in self.shared().rotten.iter() {
            let (key, _) = item?;
            if let Ok(digest) = Digest::from_slice(&key)
                && !found_now.contains(&digest)
            {
                report.corrupt.push(digest);
            }
        }
        for item in self.shared().manifests.iter() {
            let (key, _) = item?;
            // A manifest collected since the scan read its key is no damage.
            if let Ok(digest) = Digest::from_slice(&key)
                && let Err(e) = self.read_manifest(&digest)
                && !matches!(e, StoreError::ManifestNotFound(_))
            {
                report.corrupt.push(digest);
            }
        }
        Ok(report)
    }

    /// Flushes the index to disk (it is rebuilt from segments after a crash
    /// anyway; this only shortens that work).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.shared().db.flush()?;
        Ok(())
    }
}

impl Shared {
    /// The trees a rebuild derives again from the segments. `rotten` is not
    /// among them: a chunk found rotten stays refused until it is stored
    /// again, whatever its record says. Nor is `verified`: verdicts are
    /// facts about immutable content, from which a rebuild re-derives
    /// `by_content`, the whole-object indexes and `unverified` (see
    /// `recover`). Nor are collection's own trees (`gc` figures, `atimes`
    /// use times).
    fn rebuilt_trees(&self) -> [&sled::Tree; 9] {
        [
            &self.chunks,
            &self.manifests,
            &self.by_content,
            &self.by_object_blake3,
            &self.by_object_sha256,
            &self.unverified,
            &self.steps,
            &self.tags,
            &self.meta,
        ]
    }

    /// Empties the index for a rebuild, keeping what the segments cannot
    /// tell again: the divergence count, the bytes of tail ever cut, and the
    /// chunks found rotten (a rebuild that finds an intact copy of one
    /// clears it; see [`Shared::forget_healed`]).
    fn clear_index(&self) -> Result<(), StoreError> {
        let kept: Vec<_> = [index::DIVERGENCES_KEY, index::TAIL_BYTES_CUT_KEY]
            .into_iter()
            .map(|key| Ok((key, self.meta.get(key)?)))
            .collect::<Result<_, StoreError>>()?;
        for tree in self.rebuilt_trees() {
            tree.clear()?;
        }
        for (key, value) in kept {
            if let Some(v) = value {
                self.meta.insert(key, v)?;
            }
        }
        self.meta.insert(
            index::SCHEMA_KEY,
            &u64::from(index::SCHEMA_VERSION).to_le_bytes(),
        )?;
        Ok(())
    }

    /// What is synced once recovery is done: under [`FsyncPolicy::Always`]
    /// every segment whole (synced before recovery, and a torn tail's cut
    /// is synced too); under `Never`, only their names.
    fn note_synced_at_open(&self) -> Result<(), StoreError> {
        let mut synced = BTreeMap::new();
        for id in self
            .segments
            .list()
            .map_err(|e| StoreError::io("listing segments", e))?
        {
            let len = match self.config.fsync {
                FsyncPolicy::Always => std::fs::metadata(self.segments.path_of(id))
                    .map_err(|e| StoreError::io(format!("segment {id}"), e))?
                    .len(),
                FsyncPolicy::Never => 0,
            };
            synced.insert(id, len);
        }
        *self.synced.lock().unwrap_or_else(|e| e.into_inner()) = synced;
        Ok(())
    }

    /// Segment `id` is synced up to `len` (its directory entry, at least,
    /// with `len` 0).
    fn note_synced(&self, id: u32, len: u64) {
        self.synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, len);
    }

    /// Segment `id` was opened for appending: its name, at least, is
    /// synced (at creation, or at open under `Always`).
    fn note_opened(&self, id: u32) {
        self.synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_insert(0);
    }

    /// Segment `id` is gone, durably.
    fn forget_segment(&self, id: u32) {
        self.synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Indexes every segment from its watermark to its end, stepping over
    /// damage; cuts a torn tail off the last segment. Must not run
    /// concurrently with the writer.
    fn recover(&self) -> Result<RebuildReport, StoreError> {
        let mut report = RebuildReport::default();
        let ids = self
            .segments
            .list()
            .map_err(|e| StoreError::io("listing segments", e))?;
        for (i, &id) in ids.iter().enumerate() {
            let from = self
                .meta
                .get(index::watermark_key(id))?
                .and_then(|v| index::decode_u64(&v))
                .unwrap_or(0);
            let mut chunks = sled::Batch::default();
            let mut manifests = sled::Batch::default();
            let mut by_content = sled::Batch::default();
            let mut by_object = verify::WholeObjectBatches::default();
            let mut unverified = sled::Batch::default();
            let mut steps = sled::Batch::default();
            let mut tags = sled::Batch::default();
            let scanned = self
                .segments
                .scan(id, from, |rec| {
                    report.records_scanned += 1;
                    let key = rec.header.digest;
                    match rec.header.kind {
                        RecordKind::Chunk => {
                            report.chunks_indexed += 1;
                            let entry = ChunkEntry {
                                location: rec.location,
                                raw_len: rec.header.raw_len,
                                stored_len: rec.header.stored_len,
                                codec: rec.header.codec,
                            };
                            chunks.insert(key.as_bytes(), &entry.encode());
                        }
                        RecordKind::Manifest => {
                            report.manifests_indexed += 1;
                            // Content indexes hold verified manifests only:
                            // re-enter those with a true verdict, queue
                            // those without one, leave refuted ones out.
                            match self.verified.get(key.as_bytes()) {
                                Ok(Some(v)) => {
                                    if let (Some(object), Ok(m)) = (
                                        verify::true_object_blake3(&v),
                                        Manifest::decode(&rec.payload),
                                    ) {
                                        by_content
                                            .insert(m.content_key().as_bytes(), key.as_bytes());
                                        by_object.enter(self, &key, &m, &object);
                                    }
                                }
                                Ok(None) => unverified.insert(key.as_bytes(), &[]),
                                // An unreadable verdict: verify again.
                                Err(_) => unverified.insert(key.as_bytes(), &[]),
                            }
                            manifests.insert(key.as_bytes(), rec.payload);
                        }
                        // Only a signer's first result under a key is ever
                        // written, so there is nothing to choose between
                        // here. Unsigned results (schema 6) are left out.
                        RecordKind::Step => match StepResult::decode(&rec.payload)
                            .ok()
                            .and_then(|r| r.signer())
                        {
                            Some(signer) => steps.insert(
                                index::StepIndexKey::new(&key, &signer).as_bytes(),
                                rec.payload,
                            ),
                            None => report.unsigned_left_out += 1,
                        },
                        // Segment order is write order, and a signer's older
                        // change is never written after a newer one: the
                        // latest record of a name and signer wins.
                        RecordKind::SignedTag => match SignedTag::decode(&rec.payload) {
                            Ok(tag) => tags.insert(
                                index::tag_index_key(&tag.name, &tag.seal.signer),
                                rec.payload,
                            ),
                            Err(_) => report.unsigned_left_out += 1,
                        },
                        RecordKind::UnsignedTag => report.unsigned_left_out += 1,
                    }
                })
                .map_err(|e| StoreError::io(format!("scanning segment {id}"), e))?;
            self.chunks.apply_batch(chunks)?;
            self.manifests.apply_batch(manifests)?;
            self.by_content.apply_batch(by_content)?;
            by_object.apply(self)?;
            self.unverified.apply_batch(unverified)?;
            self.steps.apply_batch(steps)?;
            self.tags.apply_batch(tags)?;

            let mut found = RecoveryFigures::default();
            for skip in &scanned.skipped {
                tracing::warn!(
                    segment = id,
                    offset = skip.offset,
                    bytes = skip.bytes,
                    damage = %skip.damage,
                    "stepped over damaged bytes in a segment; the records after them are kept"
                );
                found.skipped_records += 1;
                found.skipped_bytes += skip.bytes;
            }
            let tail = scanned.tail_bytes();
            // How far this segment has been looked at: all of it, once the
            // tail is cut or (in a sealed segment) counted as skipped.
            let mut examined = scanned.len;
            if tail > 0 {
                if i + 1 == ids.len() {
                    let aside = self
                        .segments
                        .quarantine_tail(id, scanned.valid_end)
                        .map_err(|e| {
                            StoreError::io(format!("cutting the tail of segment {id}"), e)
                        })?;
                    tracing::warn!(
                        segment = id,
                        offset = scanned.valid_end,
                        bytes = tail,
                        moved_to = %aside.display(),
                        "cut a torn tail off the last segment; nothing valid followed it"
                    );
                    found.tail_bytes_cut += tail;
                    examined = scanned.valid_end;
                } else {
                    tracing::warn!(
                        segment = id,
                        offset = scanned.valid_end,
                        bytes = tail,
                        "sealed segment ends in bytes no valid record follows; they are ignored"
                    );
                    found.skipped_records += 1;
                    found.skipped_bytes += tail;
                }
            }
            report.skipped_records += found.skipped_records;
            report.skipped_bytes += found.skipped_bytes;
            report.bytes_truncated += found.tail_bytes_cut;
            // One batch: the figures count each damaged stretch exactly once
            // only if they move together with the watermark past it.
            let mut meta = found.add_to(&self.meta)?;
            meta.insert(&index::watermark_key(id), &examined.to_le_bytes());
            self.meta.apply_batch(meta)?;
        }
        self.forget_healed()?;
        Ok(report)
    }

    /// Removes from the rotten list every chunk the index holds again.
    fn forget_healed(&self) -> Result<(), StoreError> {
        for item in self.rotten.iter() {
            let (key, _) = item?;
            if self.chunks.contains_key(&key)? {
                self.rotten.remove(&key)?;
            }
        }
        Ok(())
    }

    /// Why a chunk the index does not hold cannot be read: it was never
    /// stored, or it was found rotten and not pushed again since.
    fn missing_chunk_error(&self, digest: &Digest) -> Result<StoreError, StoreError> {
        let Some(entry) = self.rotten.get(index::digest_key(digest))? else {
            return Ok(StoreError::ChunkNotFound(*digest));
        };
        let at = ChunkEntry::decode(&entry).map_or(String::new(), |e| {
            format!(
                " at segment {} offset {}",
                e.location.segment, e.location.offset
            )
        });
        Ok(StoreError::Corrupt {
            what: "chunk",
            digest: *digest,
            detail: format!(
                "found rotten{at} and dropped from the index; push it again to heal it"
            ),
        })
    }

    /// Reads the chunk index entry `entry` points at, as a pull does.
    /// Compaction may move the chunk (and remove the file) between the
    /// index read and the segment read, and collection may remove it: on a
    /// failed read, an entry that changed meanwhile is read again where it
    /// points now (returned with the chunk), and a removed one is missing.
    /// A chunk the bytes prove rotten is dropped through `writer` (see
    /// [`drop_rotten`]) before this returns.
    fn read_current_chunk(
        &self,
        writer: Option<&mpsc::Sender<Job>>,
        digest: &Digest,
        mut entry: sled::IVec,
    ) -> Result<(sled::IVec, StoredChunk), StoreError> {
        loop {
            match self.read_indexed_chunk(writer, digest, &entry) {
                Ok(chunk) => return Ok((entry, chunk)),
                Err(e @ StoreError::Corrupt { .. }) => {
                    match self.chunks.get(index::digest_key(digest))? {
                        Some(now) if now != entry => entry = now,
                        Some(_) => return Err(e),
                        None => return Err(self.missing_chunk_error(digest)?),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the chunk the index entry `raw_entry` points at; drops it from
    /// the index when the bytes there prove it rotten.
    fn read_indexed_chunk(
        &self,
        writer: Option<&mpsc::Sender<Job>>,
        digest: &Digest,
        raw_entry: &[u8],
    ) -> Result<StoredChunk, StoreError> {
        match self.read_chunk_at(digest, raw_entry) {
            Ok(chunk) => Ok(chunk),
            Err(ChunkReadError::Rotten(detail)) => {
                let dropped = drop_rotten(writer, digest, raw_entry);
                Err(StoreError::Corrupt {
                    what: "chunk",
                    digest: *digest,
                    detail: if dropped {
                        format!("{detail}; dropped from the index: push it again to heal it")
                    } else {
                        detail
                    },
                })
            }
            Err(ChunkReadError::Unreadable(detail)) => Err(StoreError::Corrupt {
                what: "chunk",
                digest: *digest,
                detail,
            }),
        }
    }

    /// Reads and checks the chunk an index entry points at.
    fn read_chunk_at(
        &self,
        digest: &Digest,
        raw_entry: &[u8],
    ) -> Result<StoredChunk, ChunkReadError> {
        let entry = ChunkEntry::decode(raw_entry)
            .ok_or_else(|| ChunkReadError::Rotten("undecodable index entry".into()))?;
        let at = format!(
            "segment {} offset {}",
            entry.location.segment, entry.location.offset
        );
        let rec = self
            .segments
            .read(entry.location, entry.stored_len)
            .map_err(|e| match e {
                // An I/O error may pass (a full file table, say): it proves
                // nothing about the bytes, so the chunk stays indexed.
                ReadError::Io(_) => ChunkReadError::Unreadable(format!("{at}: {e}")),
                ReadError::Invalid(_) | ReadError::Truncated => {
                    ChunkReadError::Rotten(format!("{at}: {e}"))
                }
            })?;
        let h = rec.header;
        if h.kind != RecordKind::Chunk
            || h.digest != *digest
            || h.raw_len != entry.raw_len
            || h.codec != entry.codec
        {
            return Err(ChunkReadError::Rotten(format!(
                "record at {at} does not match the index"
            )));
        }
        Ok(StoredChunk {
            digest: *digest,
            codec: h.codec,
            raw_len: h.raw_len,
            data: Bytes::from(rec.buf).slice(record::HEADER_LEN..),
        })
    }

    /// Recomputes the counters from the index and the segment files.
    fn recount(&self) -> Result<(), StoreError> {
        let c = &self.counters;
        let (mut n, mut raw, mut stored) = (0u64, 0u64, 0u64);
        for item in self.chunks.iter() {
            let (_, v) = item?;
            if let Some(e) = ChunkEntry::decode(&v) {
                n += 1;
                raw += u64::from(e.raw_len);
                stored += u64::from(e.stored_len);
            }
        }
        let (mut m, mut logical) = (0u64, 0u64);
        for item in self.manifests.iter() {
            let (_, v) = item?;
            if let Ok(man) = Manifest::decode(&v) {
                m += 1;
                logical += man.total_length();
            }
        }
        let (mut segs, mut seg_bytes) = (0u64, 0u64);
        for id in self
            .segments
            .list()
            .map_err(|e| StoreError::io("listing segments", e))?
        {
            segs += 1;
            seg_bytes += std::fs::metadata(self.segments.path_of(id))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        c.chunks.store(n, Ordering::Relaxed);
        c.chunk_bytes.store(raw, Ordering::Relaxed);
        c.stored_bytes.store(stored, Ordering::Relaxed);
        c.manifests.store(m, Ordering::Relaxed);
        c.logical_bytes.store(logical, Ordering::Relaxed);
        c.segments.store(segs, Ordering::Relaxed);
        c.index_bytes
            .store(self.db.size_on_disk().unwrap_or(0), Ordering::Relaxed);
        c.segment_bytes.store(seg_bytes, Ordering::Relaxed);
        c.steps.store(self.steps.len() as u64, Ordering::Relaxed);
        let meta_figure = |key: &[u8]| -> Result<u64, StoreError> {
            Ok(self
                .meta
                .get(key)?
                .and_then(|v| index::decode_u64(&v))
                .unwrap_or(0))
        };
        c.divergences
            .store(meta_figure(index::DIVERGENCES_KEY)?, Ordering::Relaxed);
        c.skipped_records
            .store(meta_figure(index::SKIPPED_RECORDS_KEY)?, Ordering::Relaxed);
        c.skipped_bytes
            .store(meta_figure(index::SKIPPED_BYTES_KEY)?, Ordering::Relaxed);
        c.tail_bytes_cut
            .store(meta_figure(index::TAIL_BYTES_CUT_KEY)?, Ordering::Relaxed);
        c.rotten_chunks
            .store(self.rotten.len() as u64, Ordering::Relaxed);
        c.manifests_unverified
            .store(self.unverified.len() as u64, Ordering::Relaxed);
        let mut refuted = 0u64;
        for item in self.verified.iter() {
            let (_, v) = item?;
            refuted += u64::from(verify::is_false_verdict(&v));
        }
        c.manifests_refuted.store(refuted, Ordering::Relaxed);
        Ok(())
    }
}

/// [`drop_rotten_via`] when the store still has a writer (`writer`); false
/// if it is shutting down: the next read finds the rot again.
fn drop_rotten(writer: Option<&mpsc::Sender<Job>>, digest: &Digest, raw_entry: &[u8]) -> bool {
    writer.is_some_and(|tx| drop_rotten_via(tx, digest, raw_entry))
}

/// Asks the writer thread (the one place the index changes) through `tx`
/// to drop `digest` from the index if it still has the entry `raw_entry`
/// that was found rotten, and waits for it. Returns whether it was dropped.
/// Blocks: call only from a blocking thread.
fn drop_rotten_via(tx: &mpsc::Sender<Job>, digest: &Digest, raw_entry: &[u8]) -> bool {
    let (reply, rx) = oneshot::channel();

    let job = Job::DropRotten {
        digest: *digest,
        entry: raw_entry.to_vec(),
        reply,
    };
    // Reads run on blocking threads (see the module docs), where waiting
    // for the writer is allowed; waiting makes the drop visible to the
    // next request of the client that got the error.
    if tx.blocking_send(job).is_err() {
        return false;
    }
    match rx.blocking_recv() {
        Ok(Ok(dropped)) => dropped,
        Ok(Err(e)) => {
            tracing::error!(
                digest = %digest,
                error = %e,
                "could not drop a rotten chunk from the index"
            );
            false
        }
        Err(_) => false,
    }
}

/// Why a chunk the index names could not be read.
enum ChunkReadError {
    /// The bytes on disk (or the index entry) prove it damaged.
    Rotten(String),
    /// Reading failed in a way that proves nothing about the bytes.
    Unreadable(String),
}

/// What one recovery scan stepped over or cut, added to the running
/// figures in the meta tree.
#[derive(Default)]
struct RecoveryFigures {
    skipped_records: u64,
    skipped_bytes: u64,
    tail_bytes_cut: u64,
}

impl RecoveryFigures {
    /// A meta batch setting each figure to its stored value plus this one.
    fn add_to(&self, meta: &sled::Tree) -> Result<sled::Batch, StoreError> {
        let mut batch = sled::Batch::default();
        for (key, n) in [
            (index::SKIPPED_RECORDS_KEY, self.skipped_records),
            (index::SKIPPED_BYTES_KEY, self.skipped_bytes),
            (index::TAIL_BYTES_CUT_KEY, self.tail_bytes_cut),
        ] {
            if n == 0 {
                continue;
            }
            let before = meta
                .get(key)?
                .and_then(|v| index::decode_u64(&v))
                .unwrap_or(0);
            batch.insert(key, &(before + n).to_le_bytes());
        }
        Ok(batch)
    }
}

/// Tag names: 1 to 255 bytes of `[A-Za-z0-9._/:-]`, not starting with a
/// separator.
fn check_tag_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| StoreError::BadTag {
        name: name.chars().take(300).collect(),
        why: why.into(),
    };
    if name.is_empty() || name.len() > record::MAX_TAG_BYTES as usize {
        return Err(bad("a tag is 1 to 255 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/:-".contains(&b))
    {
        return Err(bad("only letters, digits and . _ / : - are allowed"));
    }
    if name.starts_with(['.', '/', ':', '-']) {
        return Err(bad("a tag starts with a letter, digit or _"));
    }
    Ok(())
}

/// Most entries of one step key or tag name looked at per lookup: a bound
/// on the work one question can cause, whatever was recorded.
const MAX_SIGNERS_LOOKED_AT: usize = 64;

/// Of index entries keyed `… ‖ signer` (one step key's results, or one tag
/// name's), the one of the earliest signer in `trusted`, else the first.
fn preferred_entry(
    entries: sled::Iter,
    trusted: &[PublicKey],
) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
    let mut best: Option<(usize, sled::IVec, sled::IVec)> = None;
    for item in entries.take(MAX_SIGNERS_LOOKED_AT) {
        let (k, v) = item?;
        let signer = k.len().checked_sub(32).map(|at| &k[at..]);
        let rank = trusted
            .iter()
            .position(|t| Some(&t.as_bytes()[..]) == signer)
            .unwrap_or(usize::MAX);
        if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
            best = Some((rank, k, v));
            if rank == 0 {
                break;
            }
        }
    }
    Ok(best.map(|(_, k, v)| (k, v)))
}

/// Decodes a step result read from the index; a bad one is rot, not input.
fn decode_stored_step(key: &Digest, bytes: &[u8]) -> Result<StepResult, StoreError> {
    StepResult::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: "step result",
        digest: *key,
        detail: e.to_string(),
    })
}
