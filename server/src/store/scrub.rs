//! Scrubbing: the per-chunk check that [`Store::scrub`](super::Store::scrub)
//! (by hand, the Admin `Scrub` call) and the background scrub share, and the
//! background scrub itself.
//!
//! The background scrub is one thread (CPU and disk work, not an async
//! task). Every [`StoreConfig::scrub_interval`](super::StoreConfig) it
//! starts a pass over the chunk index in key order and checks each chunk
//! exactly as a scrub by hand does ([`check_chunk`]): read through the
//! pulls' read path (positional reads, no lock, never the writer), CRC and
//! header against the index, then decoded and hashed to its digest. A
//! rotten chunk is dropped from the index on the writer thread, like rot a
//! pull meets, so `FindMissing` reports it and the next push of that
//! content heals it.
//!
//! It must not hurt the hot path: it reads at most
//! [`StoreConfig::scrub_bytes_per_sec`](super::StoreConfig) stored bytes (a
//! paced budget with no burst: after reading a chunk it sleeps until its
//! bytes fit the rate since the pass began), reads one chunk at a time,
//! and does not count as a use of anything (eviction order is untouched).
//!
//! Its place survives a restart: the `scrub` tree holds when the current
//! (or last) pass started and, during a pass, the last chunk key checked
//! (saved about once a second and when the store closes), so a pass a
//! restart interrupted resumes where it stopped, at once, and a store that
//! restarts more often than the interval still gets whole passes. A
//! store that never ran one starts its schedule at its first open: the
//! first pass comes one interval later. Dropping the store stops the thread
//! between two chunks (its sleeps wake at once); the check under way
//! finishes first.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_proto::{ChunkDecoder, Digest};
use tokio::sync::mpsc;

use super::index::{self, ChunkEntry};
use super::record::HEADER_LEN;
use super::writer::Job;
use super::{Shared, StoreError, drop_rotten};

/// `strata serve`'s default: a full pass a day.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// `strata serve`'s default rate: 32 MiB/s, a small share of any disk's
/// bandwidth, which still covers 2.7 TiB a day.
pub const DEFAULT_SCRUB_BYTES_PER_SEC: u64 = 32 << 20;

/// `scrub` tree key: when the current or last pass started (ms since the
/// epoch, little-endian).
const PASS_STARTED_KEY: &[u8] = b"pass_started_ms";
/// `scrub` tree key: the last chunk key a pass under way checked.
const CURSOR_KEY: &[u8] = b"cursor";
/// How often a pass under way saves its place.
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(1);

/// What checking one chunk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChunkCheck {
    /// Read back, matching its index entry, decoding to its digest.
    Intact,
    /// Not intact: rotten (then dropped from the index, so a push heals
    /// it), found rotten earlier, or unreadable.
    Corrupt,
    /// No longer indexed (collected since its entry was read): nothing to
    /// check.
    Gone,
}

/// Reads the chunk `entry` names as a pull does and decodes it against
/// `digest`; a chunk proven rotten leaves the index through `writer` before
/// this returns. The one check of both scrubs.
pub(super) fn check_chunk(
    shared: &Shared,
    writer: Option<&mpsc::Sender<Job>>,
    decoder: &mut ChunkDecoder,
    digest: &Digest,
    entry: sled::IVec,
) -> ChunkCheck {
    match shared.read_current_chunk(writer, digest, entry) {
        // The record passed its CRC; the content must still decode to its
        // digest (a scrub is the one read that checks it).
        Ok((entry, c)) => match decoder.decode_verified(digest, c.codec, c.raw_len, &c.data) {
            Ok(_) => ChunkCheck::Intact,
            Err(e) => {
                tracing::error!(
                    digest = %digest,
                    error = %e,
                    "stored chunk does not decode to its digest"
                );
                drop_rotten(writer, digest, &entry);
                ChunkCheck::Corrupt
            }
        },
        Err(StoreError::ChunkNotFound(_)) => ChunkCheck::Gone,
        Err(_) => ChunkCheck::Corrupt,
    }
}

/// The running background scrub; dropping it stops the thread and waits
/// for it (one chunk's check at most).
pub(super) struct Scrubber {
    /// Dropped to stop the thread: its sleeps and its check between chunks
    /// see the channel disconnect.
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scrubber {
    /// Starts the background scrub if the store's config schedules one.
    pub fn start(
        shared: Arc<Shared>,
        writer: mpsc::Sender<Job>,
    ) -> Result<Option<Scrubber>, StoreError> {
        let Some(interval) = shared.config.scrub_interval.filter(|i| !i.is_zero()) else {
            return Ok(None);
        };
        let rate = shared.config.scrub_bytes_per_sec;
        tracing::info!(
            interval_secs = interval.as_secs_f64(),
            mib_per_sec = rate as f64 / f64::from(1 << 20),
            "background scrub on: a pass over every chunk each interval, paced"
        );
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("strata-scrub".into())
            .spawn(move || {
                Background {
                    shared: &shared,
                    writer: &writer,
                    stopped: &stopped,
                    interval,
                    rate,
                }
                .run();
            })
            .map_err(|e| StoreError::io("starting the scrub thread", e))?;
        Ok(Some(Scrubber {
            stop: Some(stop),
            thread: Some(thread),
        }))
    }
}

impl Drop for Scrubber {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a pass ended.
enum PassEnd {
    /// Every chunk checked.
    Done(PassFigures),
    /// The store is closing.
    Stopped,
}

#[derive(Default)]
struct PassFigures {
    chunks: u64,
    rotten: u64,
    bytes: u64,
}

/// The scrub thread's state.
struct Background<'a> {
    shared: &'a Shared,
    writer: &'a mpsc::Sender<Job>,
    stopped: &'a Receiver<()>,
    interval: Duration,
    rate: u64,
}

impl Background<'_> {
    fn run(&self) {
        let mut decoder = match ChunkDecoder::new() {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "the background scrub cannot create a zstd \
                    decoder; it is off until the server restarts");
                return;
            }
        };
        loop {
            let resume = match self.state(CURSOR_KEY) {
                Ok(cursor) => cursor,
                Err(e) => {
                    tracing::error!(error = %e, "background scrub: cannot read its place");
                    None
                }
            };
            if resume.is_none() {
                if !self.pause(self.until_due()) {
                    return;
                }
                self.save(PASS_STARTED_KEY, &now_ms().to_le_bytes());
            }
            let began = Instant::now();
            match self.pass(&mut decoder, resume) {
                Ok(PassEnd::Stopped) => return,
                Ok(PassEnd::Done(f)) => {
                    let took = began.elapsed();
                    let c = &self.shared.counters;
                    c.scrub_passes.fetch_add(1, Ordering::Relaxed);
                    c.scrub_last_pass_ms
                        .store(took.as_millis() as u64, Ordering::Relaxed);
                    self.forget(CURSOR_KEY);
                    let secs = took.as_secs_f64();
                    tracing::info!(
                        chunks = f.chunks,
                        rotten = f.rotten,
                        bytes = f.bytes,
                        secs,
                        mib_per_sec = f.bytes as f64 / f64::from(1 << 20) / secs.max(1e-3),
                        "background scrub pass done"
                    );
                }
                Err(e) => {
                    // Its place is kept: the next try, an interval on,
                    // resumes there.
                    tracing::error!(error = %e, "background scrub pass failed");
                    if !self.pause(self.interval) {
                        return;
                    }
                }
            }
        }
    }

    /// How long until the next pass is due: an interval after the last one
    /// started (at once if that is past), or after now for a store that
    /// never ran one.
    fn until_due(&self) -> Duration {
        let interval_ms = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let started = match self.state(PASS_STARTED_KEY) {
            Ok(Some(v)) => index::decode_u64(&v),
            _ => None,
        };
        let started = started.unwrap_or_else(|| {
            self.save(PASS_STARTED_KEY, &now.to_le_bytes());
            now
        });
        let due = started.saturating_add(interval_ms);
        // A clock set back must not postpone the scrub past one interval.
        Duration::from_millis(due.saturating_sub(now).min(interval_ms))
    }

    /// One pass over the chunk index in key order from after `resume`.
    fn pass(
        &self,
        decoder: &mut ChunkDecoder,
        resume: Option<sled::IVec>,
    ) -> Result<PassEnd, StoreError> {
        let shared = self.shared;
        let c = &shared.counters;
        let mut figures = PassFigures::default();
        let mut pacer = Pacer::new(self.rate);
        let mut after = resume;
        let mut saved = Instant::now();
        loop {
            if self.stopping() {
                self.save_cursor(after.as_deref());
                return Ok(PassEnd::Stopped);
            }
            // One lookup per chunk, no iterator held across the sleeps:
            // each step sees the index as it is now.
            let next = match &after {
                Some(key) => shared
                    .chunks
                    .range::<&[u8], _>((Bound::Excluded(&key[..]), Bound::Unbounded))
                    .next(),
                None => shared.chunks.iter().next(),
            };
            let Some(item) = next else {
                return Ok(PassEnd::Done(figures));
            };
            let (key, entry) = item?;
            after = Some(key.clone());
            let Ok(digest) = Digest::from_slice(&key) else {
                continue;
            };
            let bytes = ChunkEntry::decode(&entry)
                .map_or(0, |e| HEADER_LEN as u64 + u64::from(e.stored_len));
            let read_began = Instant::now();
            match check_chunk(shared, Some(self.writer), decoder, &digest, entry) {
                ChunkCheck::Gone => continue,
                ChunkCheck::Intact => {}
                ChunkCheck::Corrupt => {
                    figures.rotten += 1;
                    c.scrub_rotten_found.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(chunk = %digest,
                        "background scrub found a chunk not intact; a push of its content heals it");
                }
            }
            figures.chunks += 1;
            figures.bytes += bytes;
            c.scrub_chunks_checked.fetch_add(1, Ordering::Relaxed);
            c.scrub_bytes_read.fetch_add(bytes, Ordering::Relaxed);
            if saved.elapsed() >= CURSOR_SAVE_EVERY {
                self.save_cursor(after.as_deref());
                saved = Instant::now();
            }
            if !self.pause(pacer.wait_after(read_began, bytes)) {
                self.save_cursor(after.as_deref());
                return Ok(PassEnd::Stopped);
            }
        }
    }

    /// Whether the store is closing.
    fn stopping(&self) -> bool {
        matches!(self.stopped.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Sleeps `d`, waking at once when the store closes; false then.
    fn pause(&self, d: Duration) -> bool {
        if d.is_zero() {
            return !self.stopping();
        }
        matches!(self.stopped.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }

    fn state(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.shared.scrub_state.get(key)?)
    }

    fn save_cursor(&self, key: Option<&[u8]>) {
        if let Some(key) = key {
            self.save(CURSOR_KEY, key);
        }
    }

    /// Saves part of its place; a failure costs only a re-check later.
    /// Nothing is saved while the index's disk is short of room (see
    /// `room.rs`).
    fn save(&self, key: &[u8], value: &[u8]) {
        if !self.shared.index_room.has_room() {
            return;
        }
        if let Err(e) = self.shared.scrub_state.insert(key, value) {
            tracing::warn!(error = %e, "background scrub: cannot save its place");
        }
    }

    fn forget(&self, key: &[u8]) {
        if let Err(e) = self.shared.scrub_state.remove(key) {
            tracing::warn!(error = %e, "background scrub: cannot save its place");
        }
    }
}

/// Paces reads to a byte rate with no burst: each read's bytes are due
/// `bytes / rate` after the later of the previous read's due time and its
/// own start, and the thread sleeps until then. Over a pass of `n` bytes it
/// therefore takes at least `n / rate`, however fast the disk.
struct Pacer {
    bytes_per_sec: u64,
    due: Option<Instant>,
}

impl Pacer {
    fn new(bytes_per_sec: u64) -> Self {
        Pacer {
            bytes_per_sec,
            due: None,
        }
    }

    /// How long to sleep after a read of `bytes` that began at `began`.
    fn wait_after(&mut self, began: Instant, bytes: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let from = self.due.filter(|d| *d > began).unwrap_or(began);
        let due = from + cost;
        self.due = Some(due);
        due.saturating_duration_since(Instant::now())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use strata_proto::Codec;

    use super::super::{FsyncPolicy, Store, StoreConfig, StoreStats, VerifiedChunk};
    use super::*;

    const CHUNK_BYTES: usize = 256 << 10;

    fn config(interval: Option<Duration>, bytes_per_sec: u64) -> StoreConfig {
        StoreConfig {
            fsync: FsyncPolicy::Never,
            scrub_interval: interval,
            scrub_bytes_per_sec: bytes_per_sec,
            ..StoreConfig::default()
        }
    }

    /// Stores `n` distinct raw chunks in a store at `dir` with no scrub;
    /// returns the record bytes a pass reads (headers and payloads).
    fn fill(dir: &Path, n: usize) -> u64 {
        let store = Store::open(dir, config(None, 0)).unwrap();
        let mut decoder = ChunkDecoder::new().unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let chunks = (0..n)
            .map(|_| {
                let data: Vec<u8> = (0..CHUNK_BYTES)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let digest = Digest::of(&data);
                let len = data.len() as u32;
                VerifiedChunk::verify(&mut decoder, digest, Codec::Raw, len, data.into()).unwrap()
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(store.put_chunks(chunks)).unwrap();
        assert_eq!(outcome.stored, n as u64);
        (n * (HEADER_LEN + CHUNK_BYTES)) as u64
    }

    /// Polls the store's figures until `done` holds; fails after a minute.
    fn wait_for(store: &Store, what: &str, done: impl Fn(&StoreStats) -> bool) -> StoreStats {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stats = store.stats();
            if done(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stats:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_pass_takes_at_least_its_bytes_over_the_rate() {
        let dir = tempfile::tempdir().unwrap();
        let n = 24;
        let bytes = fill(dir.path(), n);
        let rate = 4 << 20;
        // About 1.5 s of reading at 4 MiB/s, however fast the disk.
        let floor = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let opened = Instant::now();
        let store = Store::open(dir.path(), config(Some(Duration::from_millis(20)), rate)).unwrap();
        let stats = wait_for(&store, "one pass", |s| s.scrub_passes >= 1);
        let elapsed = opened.elapsed();
        // Only lower bounds: a busy machine makes a pass slower, never faster.
        assert!(
            elapsed >= floor,
            "a pass of {bytes} bytes took {elapsed:?} < {floor:?}"
        );
        assert!(
            stats.scrub_last_pass_ms as f64 >= floor.as_millis() as f64 * 0.98,
            "{stats:?} vs {floor:?}"
        );
        assert_eq!(stats.scrub_rotten_found, 0);
        assert!(stats.scrub_chunks_checked >= n as u64, "{stats:?}");
        assert!(stats.scrub_bytes_read >= bytes, "{stats:?}");
    }

    #[test]
    fn dropping_the_store_mid_pass_returns_promptly_and_the_next_open_resumes_the_pass() {
        let dir = tempfile::tempdir().unwrap();
        let n: u64 = 16;
        fill(dir.path(), n as usize);
        // Half a second a chunk: a pass takes about 8 s.
        let store = Store::open(
            dir.path(),
            config(Some(Duration::from_millis(10)), 512 << 10),
        )
        .unwrap();
        let before = wait_for(&store, "a pass under way", |s| s.scrub_chunks_checked >= 2);
        assert_eq!(before.scrub_passes, 0, "{before:?}");
        let dropping = Instant::now();
        drop(store);
        let took = dropping.elapsed();
        // An upper bound, unavoidably, but far from the ~7 s left to pace.
        assert!(took < Duration::from_secs(3), "dropping took {took:?}");

        // Reopened, unpaced and with a long interval: the interrupted pass
        // resumes at once after the last chunk it checked, not from the top.
        let store = Store::open(dir.path(), config(Some(Duration::from_secs(3600)), 0)).unwrap();
        let after = wait_for(&store, "the resumed pass", |s| s.scrub_passes >= 1);
        let checked_before = before.scrub_chunks_checked;
        // At most one more chunk was checked between the figures and the drop.
        let left = after.scrub_chunks_checked;
        assert!(
            left == n - checked_before || left + 1 == n - checked_before,
            "resumed pass checked {left} of {n}; {checked_before} were checked before"
        );
        drop(store);

        // The schedule survives too: with the pass done, the next is an
        // hour away, so a reopen checks nothing.
        let store = Store::open(dir.path(), config(Some(Duration::from_secs(3600)), 0)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(store.stats().scrub_chunks_checked, 0);
    }

    #[test]
    fn the_pacer_spreads_reads_to_the_rate_and_lends_no_burst() {
        let mut pacer = Pacer::new(1 << 20);
        let start = Instant::now();
        // Two reads of 512 KiB at the same instant: the second is due a
        // second after the start, not half a second.
        pacer.wait_after(start, 512 << 10);
        let wait = pacer.wait_after(start, 512 << 10);
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        // A read long after the last one due earns no credit for the idle time.
        let later = start + Duration::from_secs(10);
        pacer.wait_after(later, 1 << 20);
        assert_eq!(pacer.due, Some(later + Duration::from_secs(1)));
        assert_eq!(Pacer::new(0).wait_after(start, 1 << 30), Duration::ZERO);
    }
}
