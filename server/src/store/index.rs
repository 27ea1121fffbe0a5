//! The sled index: chunk → location, manifest digest → manifest, the
//! content indexes of verified manifests (content key, whole-object BLAKE3
//! and SHA-256)
//! and the verifier's verdicts and queue, step key ‖ signer → step result,
//! tag name ‖ signer → signed tag, chunks found rotten, and the per-segment
//! watermarks
//! that say how far each segment has been indexed.
//!
//! Nearly everything here can be rebuilt from the segments: the index is a
//! cache of their contents, written only after the records it points to are
//! on disk. The exceptions, which a rebuild keeps, are named below.

use strata_proto::{Codec, Digest, PublicKey};

use super::segment::Location;

/// Bumped when the index layout changes; an index of another version is
/// rebuilt from the segments at open.
///
/// 5: content indexes hold verified manifests only (`verified`,
/// `unverified`, `by_object_blake3`). A store of version 4 is rebuilt at
/// open: its `by_content` entries, which no one verified, are dropped, and
/// every manifest is queued for the background verifier, becoming findable
/// by content again once proved.
///
/// 6: `by_object_sha256`, filled from the kept verdicts by the rebuild a
/// store of version 5 gets at open.
///
/// 7: step results and tags are signed and kept per signer (`steps` keyed
/// by step key ‖ signer, `tags` by name ‖ 0 ‖ signer). The rebuild a store
/// of version 6 gets at open leaves out its unsigned results and tags: no
/// client would trust them.
pub const SCHEMA_VERSION: u32 = 7;

pub const SCHEMA_KEY: &[u8] = b"schema";

/// The meta-tree key counting refused divergent step results. Unlike the
/// rest of the index it cannot be rebuilt from the segments (refused results
/// are never written), so a rebuild keeps it.
pub const DIVERGENCES_KEY: &[u8] = b"divergences";

/// Meta-tree keys of the recovery figures (u64, little-endian): damaged
/// stretches stepped over and their bytes, counted once each since the last
/// rebuild (which counts afresh), and bytes of torn tail cut off, which a
/// rebuild keeps since those bytes are in no segment any more.
pub const SKIPPED_RECORDS_KEY: &[u8] = b"recovery_skipped_records";
pub const SKIPPED_BYTES_KEY: &[u8] = b"recovery_skipped_bytes";
pub const TAIL_BYTES_CUT_KEY: &[u8] = b"recovery_tail_bytes_cut";

/// A `steps` key: step key ‖ signer. A key's results sit together, so one
/// prefix scan finds every signer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepIndexKey([u8; 64]);

impl StepIndexKey {
    /// The key of `signer`'s result under step `key`.
    pub fn new(key: &Digest, signer: &PublicKey) -> Self {
        let mut k = [0u8; 64];
        k[..32].copy_from_slice(key.as_bytes());
        k[32..].copy_from_slice(signer.as_bytes());
        StepIndexKey(k)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(StepIndexKey)
    }

    /// The step key it is under.
    pub fn step(&self) -> Digest {
        Digest::from_slice(&self.0[..32]).unwrap_or_else(|_| Digest::of(&[]))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for StepIndexKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The `tags` keys of name `name`, all signers: the name and a zero byte
/// (which no tag name contains, so `app` never prefixes `app:v1`).
pub fn tag_prefix(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 33);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// The `tags` key of `signer`'s tag `name`.
pub fn tag_index_key(name: &str, signer: &PublicKey) -> Vec<u8> {
    let mut k = tag_prefix(name);
    k.extend_from_slice(signer.as_bytes());
    k
}

/// What the index knows of a stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub location: Location,
    pub raw_len: u32,
    pub stored_len: u32,
    pub codec: Codec,
}

const ENTRY_LEN: usize = 21;

impl ChunkEntry {
    /// segment u32 | offset u64 | raw_len u32 | stored_len u32 | codec u8, little-endian.
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..4].copy_from_slice(&self.location.segment.to_le_bytes());
        b[4..12].copy_from_slice(&self.location.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.raw_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.stored_len.to_le_bytes());
        b[20] = self.codec.to_byte();
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != ENTRY_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[4..12]);
        Some(ChunkEntry {
            location: Location {
                segment: u32_at(0),
                offset: u64::from_le_bytes(off),
            },
            raw_len: u32_at(12),
            stored_len: u32_at(16),
            codec: Codec::from_byte(b[20]).ok()?,
        })
    }
}

/// The meta-tree key holding how far segment `id` has been indexed.
pub fn watermark_key(id: u32) -> [u8; 7] {
    let mut k = *b"wm\0\0\0\0\0";
    k[3..7].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn decode_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

pub fn digest_key(d: &Digest) -> &[u8] {
    d.as_bytes()
}
