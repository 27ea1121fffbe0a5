//! Room left on the filesystem that holds the index.
//!
//! sled fails for good once one of its writes meets a full disk: every later
//! call returns that error until the process restarts, even after space
//! returns. So the store keeps sled from ever meeting one: while the index's
//! filesystem has less than a headroom free, writes are refused up front
//! (`StorageFull`, which clients see as `RESOURCE_EXHAUSTED`) and use times
//! are not recorded; once space returns, both go on, no restart needed.
//! Collection and compaction still run: they are how space returns.

use std::path::PathBuf;

use super::StoreError;

/// The most headroom kept: a few seconds of index writes at full speed.
const MAX_HEADROOM_BYTES: u64 = 64 << 20;
/// The headroom as a share of a small filesystem (1/20).
const HEADROOM_SHARE: u64 = 20;
/// Looks at the filesystem each time it is asked (one `statvfs`, about a
/// microsecond): it is asked once per commit group and once per use time
/// written, and an answer kept for later would let a write through just
/// after the disk filled.
pub struct IndexRoom {
    dir: PathBuf,
}

/// Too little room: what was free, and the headroom asked for.
#[derive(Clone, Copy, Debug)]
struct Short {
    free: u64,
    headroom: u64,
}

impl IndexRoom {
    pub fn new(dir: PathBuf) -> Self {
        IndexRoom { dir }
    }

    /// Whether the index may be written to now.
    pub fn has_room(&self) -> bool {
        self.look().is_ok()
    }

    /// `Ok` while the index's filesystem has its headroom free; else the
    /// refusal a write gets.
    pub fn check(&self) -> Result<(), StoreError> {
        self.look().map_err(|short| StoreError::StorageFull {
            what: format!(
                "the index's disk has {} KiB free, under the {} KiB kept so the index never \
                 meets a full disk",
                short.free >> 10,
                short.headroom >> 10
            ),
            source: std::io::ErrorKind::StorageFull.into(),
        })
    }

    fn look(&self) -> Result<(), Short> {
        match nix::sys::statvfs::statvfs(&self.dir) {
            Ok(fs) => {
                let block = fs.fragment_size();
                let total = fs.blocks() * block;
                let free = fs.blocks_available() * block;
                let headroom = (total / HEADROOM_SHARE).min(MAX_HEADROOM_BYTES);
                if free < headroom {
                    Err(Short { free, headroom })
                } else {
                    Ok(())
                }
            }
            // Cannot tell: let the write try (and report what it meets).
            Err(_) => Ok(()),
        }
    }
}
