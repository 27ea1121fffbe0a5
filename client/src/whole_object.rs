//! A re-push of an unchanged file at the cost of one hashing pass: the
//! file's whole-object BLAKE3, computed on every core, and one `FindObject`
//! round trip that answers with the object's verified manifest when the
//! server holds it — before anything is chunked.
//!
//! BLAKE3 is a tree: the hash of an input is the root over subtrees of
//! power-of-two chunks, so disjoint subtrees can be hashed on separate
//! threads and merged (`blake3::hazmat`, the crate's documented API for
//! exactly this). Each thread reads its own range with positional reads
//! into one small buffer: no `mmap` (no `unsafe`, and a file truncated
//! under us is an error, not a SIGBUS) and no thread pool crate.
//!
//! Must never: trust a found manifest beyond what can be checked here (its
//! digest, length and media type); the server proved its SHA-256, and a
//! pull re-checks it anyway.

use std::fs::File;
use std::os::unix::fs::FileExt;

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use strata_proto::v1::FindObjectRequest;
use strata_proto::{Digest, Manifest};

use crate::{Client, ClientError, within};

/// Below this many bytes a range is hashed on the calling thread: starting
/// a thread would cost more than it saves.
const MIN_PARALLEL_BYTES: u64 = 8 << 20;

/// Read size of each hashing thread: small enough to stay in L2 between
/// the copy out of the page cache and the hash, large enough for BLAKE3's
/// widest SIMD (16 chunks = 16 KiB) many times over.
const READ_BYTES: usize = 256 << 10;

/// Threads per core: more pieces than cores lets the scheduler even out
/// the uneven halves a power-of-two split gives (a 1.5 GiB file splits
/// 1 GiB + 0.5 GiB).
const THREADS_PER_CORE: usize = 4;

/// The BLAKE3 of the first `len` bytes of `file`, as `b3sum` computes it,
/// hashed on every core. Fails if the file is shorter than `len`.
pub fn hash_file(file: &File, len: u64) -> std::io::Result<Digest> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores == 1 || len <= MIN_PARALLEL_BYTES {
        let mut hasher = blake3::Hasher::new();
        feed(&mut hasher, file, 0, len)?;
        return Ok(hasher.finalize().into());
    }
    let threads = cores * THREADS_PER_CORE;
    let left = left_subtree_len(len);
    let (left_cv, right_cv) = both_halves(file, 0, left, len - left, threads)?;
    Ok(merge_subtrees_root(&left_cv, &right_cv, Mode::Hash).into())
}

/// Chaining value of the subtree of `len` bytes at `offset` (a valid BLAKE3
/// subtree: see `left_subtree_len`), on up to `threads` threads.
fn subtree(file: &File, offset: u64, len: u64, threads: usize) -> std::io::Result<ChainingValue> {
    if threads <= 1 || len <= MIN_PARALLEL_BYTES {
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(offset);
        feed(&mut hasher, file, offset, len)?;
        return Ok(hasher.finalize_non_root());
    }
    let left = left_subtree_len(len);
    let (left_cv, right_cv) = both_halves(file, offset, left, len - left, threads)?;
    Ok(merge_subtrees_non_root(&left_cv, &right_cv, Mode::Hash))
}

/// The two children of a parent node, the left on a new thread, the
/// threads shared in proportion to their lengths.
fn both_halves(
    file: &File,
    offset: u64,
    left: u64,
    right: u64,
    threads: usize,
) -> std::io::Result<(ChainingValue, ChainingValue)> {
    let left_threads = ((threads as u64 * left).div_ceil(left + right) as usize).clamp(1, threads);
    let right_threads = (threads - left_threads).max(1);
    std::thread::scope(|scope| {
        let left_cv = scope.spawn(|| subtree(file, offset, left, left_threads));
        let right_cv = subtree(file, offset + left, right, right_threads);
        let left_cv = left_cv
            .join()
            .map_err(|_| std::io::Error::other("a hashing thread panicked"))??;
        Ok((left_cv, right_cv?))
    })
}

/// Feeds `len` bytes of `file` from `offset` into `hasher`.
fn feed(hasher: &mut blake3::Hasher, file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_BYTES.min(len as usize)];
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let want = buf.len().min((end - at) as usize);
        match file.read_at(&mut buf[..want], at) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ended at byte {at} of {len}: it changed while being hashed"),
                ));
            }
            Ok(n) => {
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A stored object found by a hash of its whole bytes.
pub struct KnownObject {
    pub digest: Digest,
    pub manifest: Manifest,
}

impl Client {
    /// The verified manifest of the object of `total_length` bytes whose
    /// whole BLAKE3 is `object`, pushed as `media_type`, if the server holds
    /// it. A server without the lookup (an older one) is a miss.
    pub(crate) async fn find_object(
        &self,
        object: &Digest,
        total_length: u64,
        media_type: &str,
    ) -> Result<Option<KnownObject>, ClientError> {
        let request = FindObjectRequest {
            blake3: object.to_vec(),
            media_type: media_type.to_owned(),
            sha256: Vec::new(),
        };
        self.find_whole_object(request, total_length).await
    }

    /// The stored object of `total_length` bytes whose SHA-256 is `sha256`,
    /// pushed as `media_type` — a registry blob pulled through the cache,
    /// say — if the server holds it, all its chunks present and its SHA-256
    /// proved by the server's verifier. The answer is checked to be the
    /// object asked for; its bytes are checked again when pulled.
    pub async fn find_object_by_sha256(
        &self,
        sha256: &[u8; 32],
        total_length: u64,
        media_type: &str,
    ) -> Result<Option<KnownObject>, ClientError> {
        let request = FindObjectRequest {
            blake3: Vec::new(),
            media_type: media_type.to_owned(),
            sha256: sha256.to_vec(),
        };
        let found = self.find_whole_object(request, total_length).await?;
        Ok(found.filter(|known| known.manifest.sha256() == sha256))
    }

    async fn find_whole_object(
        &self,
        request: FindObjectRequest,
        total_length: u64,
    ) -> Result<Option<KnownObject>, ClientError> {
        let media_type = request.media_type.clone();
        let mut manifests = self.manifests.clone();
        let find = manifests.find_object(request);
        let found = match within(self.config.idle_timeout, "find object", find).await? {
            Ok(found) => found.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(None),
            Err(s) => return Err(ClientError::from_status("find object", s)),
        };
        let Some(wire) = found.manifest else {
            return Ok(None);
        };
        let manifest = Manifest::from_wire(wire)
            .map_err(|e| ClientError::Integrity(format!("found object manifest: {e}")))?;
        let digest = manifest.digest();
        if found.digest != digest.to_vec() {
            return Err(ClientError::Integrity(format!(
                "the server named found object {digest} by another digest"
            )));
        }
        // Not the object asked for: a miss, whatever the server meant.
        if manifest.total_length() != total_length || manifest.media_type() != media_type {
            return Ok(None);
        }
        Ok(Some(KnownObject { digest, manifest }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn parallel_hash_equals_blake3_of_the_whole_input_at_awkward_lengths() {
        // Around the parallel threshold, power-of-two boundaries, and
        // lengths whose halves are very uneven.
        let lengths = [
            0u64,
            1,
            1024,
            1025,
            MIN_PARALLEL_BYTES,
            MIN_PARALLEL_BYTES + 1,
            16 << 20,
            (16 << 20) + 1023,
            (24 << 20) + 7,
            (33 << 20) - 1,
        ];
        let data = pseudo_random(33 << 20, 7);
        let file = file_of(&data);
        for len in lengths {
            let expected: Digest = blake3::hash(&data[..len as usize]).into();
            assert_eq!(hash_file(&file, len).unwrap(), expected, "length {len}");
        }
    }

    #[test]
    fn a_file_shorter_than_claimed_is_an_error_not_a_hash() {
        let file = file_of(&pseudo_random(20 << 20, 3));
        let err = hash_file(&file, 21 << 20).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
