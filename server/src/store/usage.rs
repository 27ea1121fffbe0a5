//! What is in use, as garbage collection needs to know it: leases on
//! content that an upload in flight may still name, and a coarse time of
//! last use for everything a user references (objects, step results, tags).
//!
//! Both are kept off the hot path. A lease is one insert into an in-memory
//! set; a use is written to the index at most once per [`TOUCH_INTERVAL`]
//! per name, so a busy cache does not turn every lookup into a write.
//! Neither is ever a reason to refuse a request: a lease table that
//! overflows protects *everything* until it ages out, which only delays
//! collection.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_proto::Digest;

use super::room::IndexRoom;

/// How often one name's last-use time is written to the index at most.
/// Eviction order only needs to be right to about this much.
pub const TOUCH_INTERVAL_MS: u64 = 60_000;

/// Most digests one lease generation remembers (32 bytes each, so about
/// 130 MiB at worst); past it the generation protects everything.
const MAX_LEASED_PER_GENERATION: usize = 1 << 22;

/// Most names whose last written use time is remembered to skip rewrites;
/// past it the memory is cleared (costing at most one write per name).
const MAX_REMEMBERED_TOUCHES: usize = 1 << 20;

/// Leases on digests (chunks and objects) that an upload in flight has
/// asked about or sent: garbage collection does not free a leased digest.
///
/// Two generations: a lease lands in the current one, which becomes the
/// previous one after `period`, and is forgotten after another `period`.
/// So a lease lasts between one and two periods, and taking one costs a
/// hash-set insert under a short lock.
pub struct Leases {
    period: Duration,
    generations: Mutex<Generations>,
}

struct Generations {
    started: Instant,
    current: Generation,
    previous: Generation,
}

#[derive(Default)]
struct Generation {
    digests: HashSet<Digest>,
    /// More leases were asked for than fit: everything counts as leased.
    overflowed: bool,
}

impl Generation {
    fn holds(&self, digest: &Digest) -> bool {
        self.overflowed || self.digests.contains(digest)
    }
}

impl Leases {
    pub fn new(period: Duration) -> Self {
        Leases {
            period,
            generations: Mutex::new(Generations {
                started: Instant::now(),
                current: Generation::default(),
                previous: Generation::default(),
            }),
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let age = g.started.elapsed();
        if age >= self.period {
            let previous = std::mem::take(&mut g.current);
            g.previous = if age >= self.period.saturating_mul(2) {
                Generation::default()
            } else {
                previous
            };
            g.started = Instant::now();
        }
        g
    }

    /// Protects `digests` from collection for at least one period.
    pub fn lease<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) {
        if self.period.is_zero() {
            return;
        }
        let mut g = self.lock();
        for d in digests {
            if g.current.digests.len() >= MAX_LEASED_PER_GENERATION {
                g.current.overflowed = true;
                g.current.digests.clear();
            }
            if g.current.overflowed {
                return;
            }
            g.current.digests.insert(*d);
        }
    }

    /// Ends the leases on `digests`: what they protected is now named by
    /// something collection sees (a stored manifest names its chunks), so
    /// holding them on would only keep evicted content on disk longer.
    pub fn release<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) {
        if self.period.is_zero() {
            return;
        }
        let mut g = self.lock();
        for d in digests {
            g.current.digests.remove(d);
            g.previous.digests.remove(d);
        }
    }

    pub fn is_leased(&self, digest: &Digest) -> bool {
        if self.period.is_zero() {
            return false;
        }
        let g = self.lock();
        g.current.holds(digest) || g.previous.holds(digest)
    }
}

/// What a last-use time is kept for; the first byte of its key in the
/// `atimes` tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UseKind {
    Object = 1,
    Step = 2,
    Tag = 3,
}

/// The `atimes` key of one name.
pub fn use_key(kind: UseKind, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(kind as u8);
    key.extend_from_slice(name);
    key
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Coarse last-use times, written through to the `atimes` tree.
pub struct UseTimes {
    tree: sled::Tree,
    /// Use times are advisory: none is written while the index's disk is
    /// short of room.
    room: std::sync::Arc<IndexRoom>,
    /// The last time written per key: a touch within [`TOUCH_INTERVAL_MS`]
    /// of it writes nothing.
    written: Mutex<HashMap<Vec<u8>, u64>>,
}

impl UseTimes {
    pub fn new(tree: sled::Tree, room: std::sync::Arc<IndexRoom>) -> Self {
        UseTimes {
            tree,
            room,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Records a use of `name` now, unless one was recorded recently. A
    /// failed write is logged and otherwise ignored: use times only order
    /// eviction.
    pub fn touch(&self, kind: UseKind, name: &[u8]) {
        self.record(kind, name, false);
    }

    /// Records that `name` was just created: always written, so a new
    /// object is never older than an old one.
    pub fn created(&self, kind: UseKind, name: &[u8]) {
        self.record(kind, name, true);
    }

    fn record(&self, kind: UseKind, name: &[u8], always: bool) {
        let now = now_ms();
        let key = use_key(kind, name);
        {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            if !always
                && written
                    .get(&key)
                    .is_some_and(|&t| now.saturating_sub(t) < TOUCH_INTERVAL_MS)
            {
                return;
            }
            if written.len() >= MAX_REMEMBERED_TOUCHES {
                written.clear();
            }
            written.insert(key.clone(), now);
        }
        if !self.room.has_room() {
            return;
        }
        if let Err(e) = self.tree.insert(key, &now.to_le_bytes()) {
            tracing::warn!(error = %e, "could not record a last-use time");
        }
    }

    /// Forgets `name` (it was evicted).
    pub fn forget(&self, kind: UseKind, name: &[u8]) -> Result<(), sled::Error> {
        let key = use_key(kind, name);
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.tree.remove(key)?;
        Ok(())
    }

    /// Every recorded use time, by key.
    pub fn all(&self) -> Result<HashMap<Vec<u8>, u64>, sled::Error> {
        let mut out = HashMap::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            if let Ok(bytes) = <[u8; 8]>::try_from(v.as_ref()) {
                out.insert(k.to_vec(), u64::from_le_bytes(bytes));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_lease_holds_until_released_and_a_zero_period_holds_nothing() {
        let d = Digest::of(b"x");
        let leases = Leases::new(Duration::from_secs(3600));
        assert!(!leases.is_leased(&d));
        leases.lease([&d]);
        assert!(leases.is_leased(&d));
        leases.release([&d]);
        assert!(!leases.is_leased(&d));
        let none = Leases::new(Duration::ZERO);
        none.lease([&d]);
        assert!(!none.is_leased(&d));
    }

    #[test]
    fn an_overflowing_lease_table_protects_everything() {
        let leases = Leases::new(Duration::from_secs(3600));
        leases.generations.lock().unwrap().current.overflowed = true;
        assert!(leases.is_leased(&Digest::of(b"never asked for")));
    }
}
