//! The manifest verifier: a background thread that reads each newly stored
//! manifest's chunks back, in order, and recomputes the object's SHA-256
//! and whole-object BLAKE3, so that only a manifest whose claims are true
//! can ever be *found by content*.
//!
//! Why: a manifest's SHA-256 is the pushing client's claim. The server
//! accepts any manifest whose chunks it holds (its own digest stays
//! pullable, and a pull re-checks the SHA-256), but the content indexes —
//! `by_content` (chunk list, length, media type), `by_object_blake3` and
//! `by_object_sha256` (a whole-object hash, media type) — hand a manifest to *other* clients,
//! who reuse it without hashing. One false claim entered there would shadow
//! the true one for everybody. So a manifest enters them only once this
//! thread has proved it.
//!
//! How work flows, and what bounds it:
//! - The writer thread, in the same commit that indexes a new manifest,
//!   adds its digest to the `unverified` tree and wakes this thread
//!   ([`VerifyQueue::notify`]: a flag under a mutex, never a wait). The
//!   queue is that tree: on disk, so it is bounded by nothing in memory and
//!   survives a restart (pending work resumes at open), and the writer
//!   never blocks on the verifier however far behind it falls.
//! - This thread takes the pending digests in passes, reads one chunk at a
//!   time (memory: one chunk), and hands each verdict to the writer thread
//!   ([`Job::Verdict`]), the one place the index changes, which applies it
//!   ([`apply_verdict`]) serialised with commits, rebuilds and rot drops.
//! - Verdicts are facts about immutable content (a manifest's digest fixes
//!   its chunks, which fix its bytes), so they are kept in the `verified`
//!   tree across index rebuilds, like `rotten`; a rebuild re-enters every
//!   manifest with a true verdict in the content indexes and queues every
//!   manifest without one.
//! - A chunk found rotten while verifying goes through the usual rot path
//!   (dropped from the index by the writer, so the next push heals it); the
//!   manifest stays unverified and is put aside until it is stored again
//!   ([`VerifyQueue::retry`], from `put_manifest`) or the store reopens.
//!
//! Must never: run on an async worker, hold the queue's mutex while it
//! reads or hashes, or index anything itself.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sha2::{Digest as _, Sha256};
use strata_proto::{ChunkDecoder, Digest, Manifest};
use tokio::sync::{mpsc, oneshot};

use super::writer::Job;
use super::{ChunkReadError, Shared, StoreError, drop_rotten_via, index};

/// What verifying a manifest proved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The chunks hash, as one object, to the claimed SHA-256.
    True { object_blake3: Digest },
    /// They do not: the manifest's SHA-256 claim is false.
    False {
        object_blake3: Digest,
        actual_sha256: [u8; 32],
    },
    /// The manifest is no longer held (nothing to decide).
    Gone,
}

/// First byte of a `verified` tree value; the whole-object BLAKE3 follows.
const VERDICT_TRUE: u8 = 1;
const VERDICT_FALSE: u8 = 0;

/// Length of a `verified` tree value: verdict byte, then the BLAKE3.
const VERDICT_LEN: usize = 33;

/// Encodes a decided verdict for the `verified` tree.
fn encode_verdict(verdict: &Verdict) -> Option<[u8; VERDICT_LEN]> {
    let (tag, blake3) = match verdict {
        Verdict::True { object_blake3 } => (VERDICT_TRUE, object_blake3),
        Verdict::False { object_blake3, .. } => (VERDICT_FALSE, object_blake3),
        Verdict::Gone => return None,
    };
    let mut out = [0u8; VERDICT_LEN];
    out[0] = tag;
    out[1..].copy_from_slice(blake3.as_bytes());
    Some(out)
}

/// The whole-object BLAKE3 of a manifest with a true verdict, from a
/// `verified` tree value; `None` for a false or undecodable one.
pub fn true_object_blake3(value: &[u8]) -> Option<Digest> {
    if value.len() != VERDICT_LEN || value[0] != VERDICT_TRUE {
        return None;
    }
    Digest::from_slice(&value[1..]).ok()
}

/// Whether a `verified` tree value records a false claim.
pub fn is_false_verdict(value: &[u8]) -> bool {
    value.first() == Some(&VERDICT_FALSE)
}

/// The key of a whole-object index (`by_object_blake3`, `by_object_sha256`):
/// the object's hash, then the media type's bytes. The media type is part
/// of the key because an object's manifest carries it: the same bytes
/// pushed as two media types are two objects.
pub fn object_key(object_hash: &[u8; 32], media_type: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + media_type.len());
    key.extend_from_slice(object_hash);
    key.extend_from_slice(media_type.as_bytes());
    key
}

/// Applies a verdict to the index. Runs on the writer thread only (see
/// [`Job::Verdict`]), so it is serialised with every other index change.
pub fn apply_verdict(
    shared: &Shared,
    digest: &Digest,
    verdict: &Verdict,
) -> Result<(), StoreError> {
    let key = index::digest_key(digest);
    // Decided already (say, twice queued around a rebuild): nothing to do.
    if !shared.unverified.contains_key(key)? {
        return Ok(());
    }
    let held = match verdict {
        Verdict::Gone => None,
        _ => shared.manifests.get(key)?,
    };
    if let (Some(bytes), Some(value)) = (held, encode_verdict(verdict)) {
        shared.verified.insert(key, &value[..])?;
        match verdict {
            Verdict::True { object_blake3 } => {
                if let Ok(manifest) = Manifest::decode(&bytes) {
                    enter_in_content_indexes(shared, digest, &manifest, object_blake3)?;
                }
            }
            Verdict::False { actual_sha256, .. } => {
                shared
                    .counters
                    .manifests_refuted
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    manifest = %digest,
                    actual_sha256 = %hex(actual_sha256),
                    "a manifest's SHA-256 claim is false; it stays pullable by its digest \
                     (pulls refuse it) but is never found by content"
                );
            }
            Verdict::Gone => {}
        }
    }
    shared.unverified.remove(key)?;
    super::writer::sub(&shared.counters.manifests_unverified, 1);
    Ok(())
}

/// Makes a proven manifest findable by content key and by its whole-object
/// BLAKE3 and SHA-256. The first proven manifest for an object stands (any
/// proven one is correct; keeping the first keeps answers stable).
fn enter_in_content_indexes(
    shared: &Shared,
    digest: &Digest,
    manifest: &Manifest,
    object_blake3: &Digest,
) -> Result<(), StoreError> {
    shared
        .by_content
        .insert(manifest.content_key().as_bytes(), digest.as_bytes())?;
    for (tree, key) in whole_object_keys(shared, manifest, object_blake3) {
        if !tree.contains_key(&key)? {
            tree.insert(key, digest.as_bytes())?;
        }
    }
    Ok(())
}

/// Each whole-object index with the key `manifest` (proven, with
/// `object_blake3`) has in it.
pub(super) fn whole_object_keys<'a>(
    shared: &'a Shared,
    manifest: &Manifest,
    object_blake3: &Digest,
) -> [(&'a sled::Tree, Vec<u8>); 2] {
    let media_type = manifest.media_type();
    [
        (
            &shared.by_object_blake3,
            object_key(object_blake3.as_bytes(), media_type),
        ),
        (
            &shared.by_object_sha256,
            object_key(manifest.sha256(), media_type),
        ),
    ]
}

/// The whole-object index entries a rebuild makes for one segment, batched
/// like the rest of its index, keeping the first proven manifest for each
/// object as [`enter_in_content_indexes`] does.
#[derive(Default)]
pub(super) struct WholeObjectBatches {
    batches: [sled::Batch; 2],
    entered: HashSet<(usize, Vec<u8>)>,
}

impl WholeObjectBatches {
    /// Enters the proven manifest `digest` unless an earlier one (in this
    /// batch or in the index) has its object.
    pub(super) fn enter(
        &mut self,
        shared: &Shared,
        digest: &Digest,
        manifest: &Manifest,
        object_blake3: &Digest,
    ) {
        for (i, (tree, key)) in whole_object_keys(shared, manifest, object_blake3)
            .into_iter()
            .enumerate()
        {
            if self.entered.insert((i, key.clone())) && !tree.contains_key(&key).unwrap_or(false) {
                self.batches[i].insert(key, digest.as_bytes());
            }
        }
    }

    /// Writes the batches.
    pub(super) fn apply(self, shared: &Shared) -> Result<(), StoreError> {
        let [blake3, sha256] = self.batches;
        shared.by_object_blake3.apply_batch(blake3)?;
        shared.by_object_sha256.apply_batch(sha256)?;
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The verifier's wake-up flag and the state waiters watch. The mutex is
/// held only to flip flags, never across reading or hashing.
#[derive(Default)]
pub struct VerifyQueue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    /// Something was queued since the verifier last looked.
    dirty: bool,
    /// The verifier is in a pass.
    busy: bool,
    /// A verifier thread runs (false when disabled or stopped).
    running: bool,
    stopping: bool,
    /// Manifests put aside because a chunk could not be read; retried when
    /// stored again or at the next open.
    deferred: HashSet<Digest>,
}

impl VerifyQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock only ever left flags half-set;
        // the flags are still meaningful, so carry on with them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New manifests wait in the `unverified` tree: look again. Never waits
    /// for the verifier (only for a mutex held to flip flags).
    pub fn notify(&self) {
        self.lock().dirty = true;
        self.changed.notify_all();
    }

    /// Manifest `digest` was stored again: if it was put aside, try it anew.
    pub fn retry(&self, digest: &Digest) {
        let mut state = self.lock();
        if state.deferred.remove(digest) {
            state.dirty = true;
            drop(state);
            self.changed.notify_all();
        }
    }

    /// After a rebuild: everything pending is looked at again.
    pub fn retry_all(&self) {
        let mut state = self.lock();
        state.deferred.clear();
        state.dirty = true;
        drop(state);
        self.changed.notify_all();
    }

    /// Blocks until the verifier has looked at everything queued so far
    /// (manifests put aside for unreadable chunks stay pending). Returns at
    /// once when no verifier runs.
    pub fn wait_idle(&self) {
        let mut state = self.lock();
        while state.running && (state.dirty || state.busy) {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits for work; false once the store is closing.
    fn next_pass(&self) -> bool {
        let mut state = self.lock();
        loop {
            if state.stopping {
                return false;
            }
            if state.dirty {
                state.dirty = false;
                state.busy = true;
                return true;
            }
            if state.busy {
                state.busy = false;
                self.changed.notify_all();
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn stopping(&self) -> bool {
        self.lock().stopping
    }

    fn is_deferred(&self, digest: &Digest) -> bool {
        self.lock().deferred.contains(digest)
    }

    fn defer(&self, digest: Digest) {
        self.lock().deferred.insert(digest);
    }

    fn set_running(&self, running: bool) {
        let mut state = self.lock();
        state.running = running;
        if running {
            // Whatever a previous run left in the tree is work.
            state.dirty = true;
        }
        drop(state);
        self.changed.notify_all();
    }
}

/// The running verifier thread; stopping it (or dropping it) waits for it.
pub struct Verifier {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Verifier {
    /// Starts the verifier over `shared`, reporting verdicts and rot to the
    /// writer through `writer`.
    pub fn start(shared: Arc<Shared>, writer: mpsc::Sender<Job>) -> Result<Verifier, StoreError> {
        shared.verify_queue.set_running(true);
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("strata-verifier".into())
            .spawn(move || run(&worker, &writer))
            .map_err(|e| StoreError::io("starting the manifest verifier thread", e))?;
        Ok(Verifier {
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        {
            let mut state = self.shared.verify_queue.lock();
            state.stopping = true;
        }
        self.shared.verify_queue.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.verify_queue.set_running(false);
    }
}

/// The verifier's loop: a pass over the pending manifests per wake-up.
fn run(shared: &Shared, writer: &mpsc::Sender<Job>) {
    let mut decoder = match ChunkDecoder::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the manifest verifier cannot create a zstd decoder; \
                 manifests stay unverified (not found by content) until the server restarts");
            shared.verify_queue.set_running(false);
            return;
        }
    };
    let queue = &shared.verify_queue;
    while queue.next_pass() {
        let pending: Vec<Digest> = shared
            .unverified
            .iter()
            .keys()
            .filter_map(|k| k.ok().and_then(|k| Digest::from_slice(&k).ok()))
            .filter(|d| !queue.is_deferred(d))
            .collect();
        for digest in pending {
            if queue.stopping() {
                return;
            }
            match verify_manifest(shared, writer, &mut decoder, &digest) {
                Ok(Some(verdict)) => {
                    if !send_verdict(writer, digest, verdict) {
                        return;
                    }
                }
                Ok(None) => queue.defer(digest),
                Err(e) => {
                    tracing::error!(manifest = %digest, error = %e,
                        "could not verify a manifest; it stays unverified until stored again");
                    queue.defer(digest);
                }
            }
        }
    }
}

/// Hands a verdict to the writer and waits until it is applied; false if
/// the store is closing.
fn send_verdict(writer: &mpsc::Sender<Job>, digest: Digest, verdict: Verdict) -> bool {
    let (reply, rx) = oneshot::channel();
    if writer
        .blocking_send(Job::Verdict {
            digest,
            verdict,
            reply,
        })
        .is_err()
    {
        return false;
    }
    match rx.blocking_recv() {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(manifest = %digest, error = %e, "could not record a manifest verdict");
            true
        }
        Err(_) => false,
    }
}

/// Reads `digest`'s chunks in order and decides its claims. `Ok(None)`
/// when a chunk could not be read (missing, rotten — then dropped so a push
/// heals it — or an I/O error): no verdict yet.
fn verify_manifest(
    shared: &Shared,
    writer: &mpsc::Sender<Job>,
    decoder: &mut ChunkDecoder,
    digest: &Digest,
) -> Result<Option<Verdict>, StoreError> {
    let Some(bytes) = shared.manifests.get(index::digest_key(digest))? else {
        return Ok(Some(Verdict::Gone));
    };
    if Digest::of(&bytes) != *digest {
        tracing::error!(manifest = %digest, "indexed manifest does not hash to its digest");
        return Ok(None);
    }
    let manifest = Manifest::decode(&bytes).map_err(|e| StoreError::Corrupt {
        what: "manifest",
        digest: *digest,
        detail: e.to_string(),
    })?;
    let mut sha256 = Sha256::new();
    let mut blake3 = blake3::Hasher::new();
    // Collection may evict the manifest (and its chunks) while it is read:
    // then there is nothing to decide. Its verdict could not enter it
    // anyway: eviction takes it off the queue first (`gc::drop_object`).
    let gone = || -> Result<bool, StoreError> {
        Ok(!shared.manifests.contains_key(index::digest_key(digest))?)
    };
    for chunk in manifest.chunks() {
        let key = index::digest_key(&chunk.digest);
        let Some(mut entry) = shared.chunks.get(key)? else {
            if gone()? {
                return Ok(Some(Verdict::Gone));
            }
            tracing::warn!(manifest = %digest, chunk = %chunk.digest,
                "a chunk of a manifest being verified is not held; verification waits for a push");
            return Ok(None);
        };
        let mut read = shared.read_chunk_at(&chunk.digest, &entry);
        // Compaction may have moved the chunk (removing the file read)
        // since its entry was read: read it again where it is now.
        while read.is_err() {
            match shared.chunks.get(key)? {
                Some(now) if now != entry => entry = now,
                Some(_) => break,
                None if gone()? => return Ok(Some(Verdict::Gone)),
                None => break,
            }
            read = shared.read_chunk_at(&chunk.digest, &entry);
        }
        let stored = match read {
            Ok(stored) => stored,
            Err(ChunkReadError::Rotten(detail)) => {
                tracing::error!(manifest = %digest, chunk = %chunk.digest, %detail,
                    "found a rotten chunk while verifying a manifest");
                drop_rotten_via(writer, &chunk.digest, &entry);
                return Ok(None);
            }
            Err(ChunkReadError::Unreadable(detail)) => {
                tracing::warn!(manifest = %digest, chunk = %chunk.digest, %detail,
                    "could not read a chunk while verifying a manifest");
                return Ok(None);
            }
        };
        match decoder.decode_verified(&chunk.digest, stored.codec, stored.raw_len, &stored.data) {
            Ok(raw) if raw.len() == chunk.length as usize => {
                sha256.update(raw);
                blake3.update(raw);
            }
            Ok(_) => return Ok(None),
            Err(e) => {
                tracing::error!(manifest = %digest, chunk = %chunk.digest, error = %e,
                    "a stored chunk does not decode to its digest");
                drop_rotten_via(writer, &chunk.digest, &entry);
                return Ok(None);
            }
        }
    }
    let actual_sha256 = <[u8; 32]>::from(sha256.finalize());
    let object_blake3 = Digest::from(blake3.finalize());
    Ok(Some(if actual_sha256 == *manifest.sha256() {
        Verdict::True { object_blake3 }
    } else {
        Verdict::False {
            object_blake3,
            actual_sha256,
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sha2::{Digest as _, Sha256};
    use strata_proto::{ChunkDecoder, ChunkRef, Codec, Digest, Manifest};

    use super::super::{FsyncPolicy, Store, StoreConfig, VerifiedChunk};

    fn config(verify_manifests: bool) -> StoreConfig {
        StoreConfig {
            fsync: FsyncPolicy::Never,
            verify_manifests,
            ..StoreConfig::default()
        }
    }

    /// Distinct bytes for object `n`, a few chunks long.
    fn object_bytes(n: u64) -> Vec<u8> {
        let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..(3 << 16) + n as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Stores `data`'s chunks and a manifest claiming `sha256`.
    async fn put_object(store: &Store, data: &[u8], sha256: [u8; 32]) -> (Digest, Manifest) {
        let mut decoder = ChunkDecoder::new().unwrap();
        let mut chunks = Vec::new();
        let mut refs = Vec::new();
        for piece in data.chunks(64 << 10) {
            let digest = Digest::of(piece);
            let raw = bytes::Bytes::copy_from_slice(piece);
            chunks.push(
                VerifiedChunk::verify(&mut decoder, digest, Codec::Raw, piece.len() as u32, raw)
                    .unwrap(),
            );
            refs.push(ChunkRef {
                digest,
                length: piece.len() as u32,
            });
        }
        store.put_chunks(chunks).await.unwrap();
        let manifest = Manifest::new(refs, data.len() as u64, sha256, "t".into()).unwrap();
        let digest = store.put_manifest(manifest.clone()).await.unwrap();
        (digest, manifest)
    }

    fn true_sha256(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    async fn settle(store: &Store) {
        store.wait_for_verification().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_never_waits_for_the_verifier_and_pending_work_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        // Many more manifests than any queue between writer and verifier
        // could hold, with no verifier making progress at all: every put
        // still completes, because the queue is the `unverified` tree.
        const OBJECTS: u64 = 300;
        let mut stored = Vec::new();
        {
            let store = Store::open(dir.path(), config(false)).unwrap();
            for n in 0..OBJECTS {
                let data = object_bytes(n);
                let (digest, _) = put_object(&store, &data, true_sha256(&data)).await;
                stored.push((digest, data));
            }
            assert_eq!(store.stats().manifests_unverified, OBJECTS);
            let (_, first) = &stored[0];
            assert!(
                store
                    .find_object(&Digest::of(first), "t")
                    .unwrap()
                    .is_none()
            );
        }
        let store = Store::open(dir.path(), config(true)).unwrap();
        settle(&store).await;
        let stats = store.stats();
        assert_eq!(
            (stats.manifests_unverified, stats.manifests_refuted),
            (0, 0)
        );
        for (digest, data) in &stored {
            let (found, _) = store
                .find_object(&Digest::of(data), "t")
                .unwrap()
                .expect("a verified object is found whole");
            assert_eq!(found, *digest);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_false_claim_is_refuted_and_only_the_true_manifest_is_found_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(true)).unwrap();
        let data = object_bytes(7);
        let (fake, fake_manifest) = put_object(&store, &data, [0xAB; 32]).await;
        settle(&store).await;
        assert_eq!(store.stats().manifests_refuted, 1);
        assert!(
            store
                .find_manifest(&fake_manifest.content_key())
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .find_object(&Digest::of(&data), "t")
                .unwrap()
                .is_none()
        );
        // Still held and readable by its own digest.
        assert_eq!(store.get_manifest(&fake).unwrap(), fake_manifest);

        let (honest, _) = put_object(&store, &data, true_sha256(&data)).await;
        settle(&store).await;
        let by_content = store.find_manifest(&fake_manifest.content_key()).unwrap();
        assert_eq!(by_content.map(|(d, _)| d), Some(honest));
        let whole = store.find_object(&Digest::of(&data), "t").unwrap();
        assert_eq!(whole.map(|(d, _)| d), Some(honest));
        // The media type is part of the whole-object key.
        assert!(
            store
                .find_object(&Digest::of(&data), "u")
                .unwrap()
                .is_none()
        );
    }
}
