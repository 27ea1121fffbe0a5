//! Manifests this client has already checked, kept by digest so that a pull
//! or a build does not ask the server again for one a step lookup brought
//! along. A manifest is immutable and named by its own hash, so a kept one
//! is never stale; only whether the server still holds the object can
//! change, which the pull's chunk requests find out as before.
//!
//! Bounded by the bytes of the manifests kept; the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use strata_proto::{Digest, Manifest};

/// Bytes of manifests kept at most (a 1 GiB layer's manifest is ~0.7 MiB).
const KEPT_BYTES: usize = 32 << 20;

/// Manifests that hash to their digests, oldest first out.
#[derive(Debug, Default)]
pub(crate) struct KnownManifests {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    by_digest: HashMap<Digest, Manifest>,
    order: VecDeque<Digest>,
    bytes: usize,
}

/// What a manifest costs to keep, roughly.
fn weight(manifest: &Manifest) -> usize {
    64 + manifest.chunks().len() * 48
}

impl KnownManifests {
    /// The manifest of `digest`, if kept.
    pub(crate) fn get(&self, digest: &Digest) -> Option<Manifest> {
        let kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        kept.by_digest.get(digest).cloned()
    }

    /// Keeps `manifest`, which the caller has checked hashes to `digest`.
    pub(crate) fn keep(&self, digest: Digest, manifest: Manifest) {
        let w = weight(&manifest);
        if w > KEPT_BYTES {
            return;
        }
        let mut kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if kept.by_digest.contains_key(&digest) {
            return;
        }
        while kept.bytes + w > KEPT_BYTES {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some(m) = kept.by_digest.remove(&oldest) {
                kept.bytes -= weight(&m);
            }
        }
        kept.bytes += w;
        kept.order.push_back(digest);
        kept.by_digest.insert(digest, manifest);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use strata_proto::ChunkRef;

    fn manifest(chunks: usize, seed: u8) -> Manifest {
        let refs: Vec<ChunkRef> = (0..chunks)
            .map(|i| ChunkRef {
                digest: Digest::of(&[seed, (i % 251) as u8, (i / 251) as u8]),
                length: 10,
            })
            .collect();
        let total = chunks as u64 * 10;
        Manifest::new(refs, total, [seed; 32], "application/octet-stream".into()).unwrap()
    }

    #[test]
    fn the_oldest_manifests_leave_first_and_the_total_stays_bounded() {
        let known = KnownManifests::default();
        // Each weighs ~48 KiB; the budget holds ~680 of them.
        let per = 1000;
        let count = KEPT_BYTES / weight(&manifest(per, 0)) + 10;
        let mut digests = Vec::new();
        for i in 0..count {
            let m = manifest(per, (i % 256) as u8 ^ (i / 256) as u8);
            let d = Digest::of(&(i as u64).to_le_bytes());
            known.keep(d, m);
            digests.push(d);
        }
        let kept = known.inner.lock().unwrap();
        assert!(kept.bytes <= KEPT_BYTES, "{} bytes kept", kept.bytes);
        drop(kept);
        assert!(known.get(&digests[0]).is_none(), "the oldest was kept");
        assert!(
            known.get(digests.last().unwrap()).is_some(),
            "the newest was not kept"
        );
    }

    #[test]
    fn a_kept_manifest_comes_back_whole() {
        let known = KnownManifests::default();
        let m = manifest(3, 7);
        let d = m.digest();
        known.keep(d, m.clone());
        assert_eq!(known.get(&d).unwrap().digest(), d);
        assert!(known.get(&Digest::of(b"other")).is_none());
    }
}
