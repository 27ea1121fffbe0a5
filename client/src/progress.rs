//! Progress of a long transfer, shared between the pipeline that advances it
//! and whoever displays it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes done out of an optional known total; updated lock-free.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    /// 0 = unknown.
    total: AtomicU64,
}

impl Progress {
    pub fn new() -> Self {
        Progress::default()
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// The total, when known.
    pub fn total(&self) -> Option<u64> {
        match self.total.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
}
