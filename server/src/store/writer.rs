//! The writer thread: the only code that appends to segments.
//!
//! It takes whatever commit jobs are queued (up to a bound), appends their new
//! records with one write, syncs once per the fsync policy (group commit),
//! and only then indexes them and answers the callers. Because it is the only
//! appender, "is this chunk new?" and "append it" cannot race: two uploaders
//! of the same chunk get it stored once.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::collections::HashMap;

use strata_proto::{Codec, Digest, SignedTag, StepResult};
use tokio::sync::{mpsc, oneshot};

use super::compact::Compacted;
use super::gc::{Evicted, EvictionPlan};
use super::index::{self, ChunkEntry};
use super::record::{self, HEADER_LEN, RecordKind};
use super::segment::Location;
use super::verify::{self, Verdict};
use super::{FsyncPolicy, PutOutcome, RebuildReport, Shared, StoreError, VerifiedChunk};

/// A record waiting to be committed.
///
/// A record that names others (a manifest its chunks, a step result its
/// layer, a tag its object) was checked against the index by its caller,
/// off this thread; `checked_at` is the collection count it checked under
/// (`Shared::collections`). If a collection has run since, the writer
/// checks again before writing, and refuses the job as the caller's check
/// would have: a write never names what a collection removed. Such a
/// record is the only record of its job.
pub enum PendingRecord {
    Chunk(VerifiedChunk),
    Manifest {
        digest: Digest,
        total_length: u64,
        encoded: Vec<u8>,
        checked_at: u64,
    },
    /// A step result, signed (its signature checked by the caller);
    /// written only if its signer has none under the key yet (a signer's
    /// first result stands), refused as divergent if that one has another
    /// outcome.
    Step {
        key: Digest,
        /// Boxed: a result is far larger than the other records.
        result: Box<StepResult>,
        encoded: Vec<u8>,
        checked_at: u64,
    },
    /// A signed tag change (its signature checked by the caller); skipped
    /// when its signer's tag already says the same, refused when that one
    /// was set later.
    Tag {
        tag: SignedTag,
        encoded: Vec<u8>,
        checked_at: u64,
    },
}

impl PendingRecord {
    /// If a collection ran after this record's references were checked
    /// and removed one of them, the refusal the check would give now.
    /// `in_group` holds what this commit group writes before it.
    fn lost_reference(
        &self,
        shared: &Shared,
        in_group: &HashSet<(RecordKind, Digest)>,
    ) -> Result<Option<StoreError>, StoreError> {
        let collections = shared.collections.load(Ordering::Acquire);
        let object_held = |d: &Digest| -> Result<bool, StoreError> {
            Ok(in_group.contains(&(RecordKind::Manifest, *d))
                || shared.manifests.contains_key(index::digest_key(d))?)
        };
        Ok(match self {
            PendingRecord::Chunk(_) => None,
            PendingRecord::Manifest {
                encoded,
                checked_at,
                ..
            } if *checked_at != collections => {
                let Ok(manifest) = strata_proto::Manifest::decode(encoded) else {
                    return Ok(None);
                };
                let mut lost = None;
                for (position, c) in manifest.chunks().iter().enumerate() {
                    if !in_group.contains(&(RecordKind::Chunk, c.digest))
                        && !shared.chunks.contains_key(index::digest_key(&c.digest))?
                    {
                        lost = Some(StoreError::ManifestIncomplete {
                            digest: c.digest,
                            index: position,
                        });
                        break;
                    }
                }
                lost
            }
            PendingRecord::Step {
                key,
                result,
                checked_at,
                ..
            } if *checked_at != collections => match result.layer {
                Some(layer) if !object_held(&layer)? => {
                    Some(StoreError::StepLayerMissing { key: *key, layer })
                }
                _ => None,
            },
            PendingRecord::Tag {
                tag, checked_at, ..
            } if *checked_at != collections && !object_held(&tag.target)? => {
                Some(StoreError::TagTargetMissing {
                    name: tag.name.clone(),
                    digest: tag.target,
                })
            }
            _ => None,
        })
    }
}

/// Where the writer answers one put job.
pub type PutReply = oneshot::Sender<Result<PutOutcome, StoreError>>;

/// Work for the writer thread.
pub enum Job {
    Put {
        records: Vec<PendingRecord>,
        reply: PutReply,
    },
    Rebuild {
        reply: oneshot::Sender<Result<RebuildReport, StoreError>>,
    },
    /// Drop chunk `digest` from the index, if its entry there is still
    /// `entry` (the one found rotten), and remember it as rotten; replies
    /// whether it was dropped. The entry check makes a late or repeated
    /// report harmless: it never drops a copy stored since.
    DropRotten {
        digest: Digest,
        entry: Vec<u8>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Apply what the manifest verifier proved about manifest `digest`
    /// (see `verify.rs`): enter it in the content indexes, or count it as
    /// refuted, and take it off the `unverified` queue.
    Verdict {
        digest: Digest,
        verdict: Verdict,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Take a garbage collection plan out of the index (see `gc.rs`).
    Evict {
        plan: Arc<EvictionPlan>,
        reply: oneshot::Sender<Result<Evicted, StoreError>>,
    },
    /// Rewrite a mostly dead segment (see `compact.rs`).
    Compact {
        segment: u32,
        reply: oneshot::Sender<Result<Compacted, StoreError>>,
    },
}

/// Most jobs folded into one commit group: bounds the latency a group adds
/// to its first job and the memory of one write.
const MAX_GROUP_JOBS: usize = 32;

pub struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) segment: u32,
    file: File,
    pub(super) len: u64,
    pub(super) buf: Vec<u8>,
}

impl Writer {
    /// Opens the last segment for appending, or starts the first one.
    pub fn start(shared: Arc<Shared>) -> Result<Self, StoreError> {
        let ids = shared
            .segments
            .list()
            .map_err(|e| StoreError::io("listing segments", e))?;
        let mut segment = ids.last().copied().unwrap_or(1);
        let (mut file, mut len) = open(&shared, segment)?;
        if len >= shared.config.segment_bytes {
            segment += 1;
            (file, len) = open(&shared, segment)?;
            shared.counters.segments.fetch_add(1, Ordering::Relaxed);
        } else if ids.is_empty() {
            shared.counters.segments.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Writer {
            shared,
            segment,
            file,
            len,
            buf: Vec::with_capacity(8 << 20),
        })
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut puts = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Put { records, reply } => puts.push((records, reply)),
                    Job::Rebuild { reply } => {
                        // Commit what came before the rebuild first.
                        self.commit_and_reply(std::mem::take(&mut puts));
                        let _ = reply.send(self.rebuild());
                    }
                    Job::DropRotten {
                        digest,
                        entry,
                        reply,
                    } => {
                        // Jobs take effect in queue order.
                        self.commit_and_reply(std::mem::take(&mut puts));
                        let _ = reply.send(self.drop_rotten(&digest, &entry));
                    }
                    Job::Verdict {
                        digest,
                        verdict,
                        reply,
                    } => {
                        self.commit_and_reply(std::mem::take(&mut puts));
                        let _ = reply.send(verify::apply_verdict(&self.shared, &digest, &verdict));
                    }
                    Job::Evict { plan, reply } => {
                        self.commit_and_reply(std::mem::take(&mut puts));
                        let _ = reply.send(super::gc::apply(&self.shared, &plan));
                    }
                    Job::Compact { segment, reply } => {
                        self.commit_and_reply(std::mem::take(&mut puts));
                        let _ = reply.send(self.compact(segment));
                    }
                }
                if puts.len() < MAX_GROUP_JOBS {
                    next = rx.try_recv().ok();
                }
            }
            self.commit_and_reply(puts);
        }
    }

    fn commit_and_reply(&mut self, puts: Vec<(Vec<PendingRecord>, PutReply)>) {
        if puts.is_empty() {
            return;
        }
        let (records, replies): (Vec<_>, Vec<_>) = puts.into_iter().unzip();
        // Refused before a byte is written: a full disk must never reach
        // the index (see `room.rs`).
        let committed = self
            .shared
            .index_room
            .check()
            .and_then(|()| self.commit(records));
        match committed {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                for reply in replies {
                    let _ = reply.send(Err(e.for_each_waiter()));
                }
            }
        }
    }

    /// Appends the new records of every job, syncs, indexes; one outcome per
    /// job (a refusal for a job whose references a collection removed).
    fn commit(
        &mut self,
        jobs: Vec<Vec<PendingRecord>>,
    ) -> Result<Vec<Result<PutOutcome, StoreError>>, StoreError> {
        let shared = self.shared.clone();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut in_group: HashSet<(RecordKind, Digest)> = HashSet::new();
        let mut chunk_entries = sled::Batch::default();
        let mut manifest_entries = sled::Batch::default();
        // New manifests wait for the verifier before any content index
        // names them.
        let mut unverified_entries = sled::Batch::default();
        let mut step_entries = sled::Batch::default();
        let mut tag_entries = sled::Batch::default();
        // Step results and tags of this group by index key: a second job
        // recording the same key in the same group must see the first.
        let mut group_steps: HashMap<index::StepIndexKey, StepResult> = HashMap::new();
        let mut group_tags: HashMap<Vec<u8>, SignedTag> = HashMap::new();
        let mut new_steps = 0u64;
        let (mut new_chunks, mut new_raw, mut new_stored) = (0u64, 0u64, 0u64);
        let (mut new_manifests, mut new_logical) = (0u64, 0u64);
        let mut watermarks: Vec<(u32, u64)> = Vec::new();
        // Chunks stored again while some are known rotten may heal them.
        let healing = !shared.rotten.is_empty();
        let mut stored_chunks: Vec<Digest> = Vec::new();
        // What the new manifests, step results and tags name, for a
        // collection round that may be under way (`named_during_round`).
        let mut named: Vec<Digest> = Vec::new();
        let mut new_manifest_digests: Vec<Digest> = Vec::new();
        self.buf.clear();

        'jobs: for records in jobs {
            let mut outcome = PutOutcome::default();
            for rec in records {
                outcome.received += 1;
                if let Some(refusal) = rec.lost_reference(&shared, &in_group)? {
                    outcomes.push(Err(refusal));
                    continue 'jobs;
                }
                let (kind, digest, codec, raw_len, payload) = match &rec {
                    PendingRecord::Chunk(c) => {
                        (RecordKind::Chunk, c.digest, c.codec, c.raw_len, &c.data[..])
                    }
                    PendingRecord::Manifest {
                        digest, encoded, ..
                    } => (
                        RecordKind::Manifest,
                        *digest,
                        Codec::Raw,
                        encoded.len() as u32,
                        &encoded[..],
                    ),
                    PendingRecord::Step { key, encoded, .. } => (
                        RecordKind::Step,
                        *key,
                        Codec::Raw,
                        encoded.len() as u32,
                        &encoded[..],
                    ),
                    PendingRecord::Tag { tag, encoded, .. } => (
                        RecordKind::SignedTag,
                        tag.target,
                        Codec::Raw,
                        encoded.len() as u32,
                        &encoded[..],
                    ),
                };
                if let PendingRecord::Step { key, result, .. } = &rec {
                    let Some(index_key) =
                        result.signer().map(|s| index::StepIndexKey::new(key, &s))
                    else {
                        outcomes.push(Err(StoreError::BadStepResult(
                            strata_proto::SignatureError::Unsigned.into(),
                        )));
                        continue 'jobs;
                    };
                    let own = match group_steps.get(&index_key) {
                        Some(r) => Some(r.clone()),
                        None => shared
                            .steps
                            .get(index_key)?
                            .map(|v| super::decode_stored_step(key, &v))
                            .transpose()?,
                    };
                    if let Some(own) = own {
                        if !own.same_outcome(result) {
                            outcome.divergent += 1;
                            count_divergence(&shared)?;
                        }
                        continue;
                    }
                    // Another signer's different outcome stands beside this
                    // one, never replaced by it: counted, and both kept.
                    if others_differ(&shared, &group_steps, key, result)? {
                        count_divergence(&shared)?;
                    }
                } else if let PendingRecord::Tag { tag, .. } = &rec {
                    let index_key = index::tag_index_key(&tag.name, &tag.seal.signer);
                    let stored = match group_tags.get(&index_key) {
                        Some(t) => Some(t.clone()),
                        None => shared
                            .tags
                            .get(&index_key)?
                            .and_then(|v| SignedTag::decode(&v).ok()),
                    };
                    if let Some(stored) = stored {
                        if stored.target == tag.target && tag.set_unix_ms <= stored.set_unix_ms {
                            continue;
                        }
                        if tag.set_unix_ms < stored.set_unix_ms {
                            outcomes.push(Err(StoreError::TagStale(Box::new(
                                super::error::TagStale {
                                    name: tag.name.clone(),
                                    signer: tag.seal.signer,
                                    offered_ms: tag.set_unix_ms,
                                    stored_ms: stored.set_unix_ms,
                                },
                            ))));
                            continue 'jobs;
                        }
                    }
                } else {
                    let tree = match kind {
                        RecordKind::Chunk => &shared.chunks,
                        _ => &shared.manifests,
                    };
                    if in_group.contains(&(kind, digest)) || tree.contains_key(digest.as_bytes())? {
                        continue;
                    }
                }
                let record_len = (HEADER_LEN + payload.len()) as u64;
                if self.len + self.buf.len() as u64 + record_len > shared.config.segment_bytes
                    && self.len + self.buf.len() as u64 > 0
                {
                    self.write_buf()?;
                    watermarks.push((self.segment, self.len));
                    self.roll()?;
                }
                let location = Location {
                    segment: self.segment,
                    offset: self.len + self.buf.len() as u64,
                };
                record::append_record(&mut self.buf, kind, &digest, codec, raw_len, payload);
                in_group.insert((kind, digest));
                outcome.stored += 1;
                outcome.bytes_stored += payload.len() as u64;
                match rec {
                    PendingRecord::Chunk(c) => {
                        let entry = ChunkEntry {
                            location,
                            raw_len: c.raw_len,
                            stored_len: c.data.len() as u32,
                            codec: c.codec,
                        };
                        chunk_entries.insert(index::digest_key(&digest), &entry.encode());
                        new_chunks += 1;
                        new_raw += u64::from(c.raw_len);
                        outcome.raw_bytes_stored += u64::from(c.raw_len);
                        new_stored += c.data.len() as u64;
                        if healing {
                            stored_chunks.push(digest);
                        }
                    }
                    PendingRecord::Manifest {
                        encoded,
                        total_length,
                        ..
                    } => {
                        new_manifest_digests.push(digest);
                        unverified_entries.insert(index::digest_key(&digest), &[]);
                        manifest_entries.insert(index::digest_key(&digest), encoded);
                        new_manifests += 1;
                        new_logical += total_length;
                    }
                    PendingRecord::Step {
                        key,
                        result,
                        encoded,
                        ..
                    } => {
                        named.extend(result.layer);
                        if let Some(signer) = result.signer() {
                            let index_key = index::StepIndexKey::new(&key, &signer);
                            step_entries.insert(index_key.as_bytes(), encoded);
                            group_steps.insert(index_key, *result);
                            new_steps += 1;
                        }
                    }
                    PendingRecord::Tag { tag, encoded, .. } => {
                        named.push(tag.target);
                        let index_key = index::tag_index_key(&tag.name, &tag.seal.signer);
                        tag_entries.insert(&index_key[..], encoded);
                        group_tags.insert(index_key, tag);
                    }
                }
            }
            outcomes.push(Ok(outcome));
        }

        self.write_buf()?;
        watermarks.push((self.segment, self.len));
        // The records are durable: now, and only now, the index may point at them.
        shared.chunks.apply_batch(chunk_entries)?;
        for digest in stored_chunks {
            if shared.rotten.remove(index::digest_key(&digest))?.is_some() {
                sub(&shared.counters.rotten_chunks, 1);
                tracing::info!(digest = %digest, "a rotten chunk was stored again: healed");
            }
        }
        shared.manifests.apply_batch(manifest_entries)?;
        shared.unverified.apply_batch(unverified_entries)?;
        shared.steps.apply_batch(step_entries)?;
        shared.tags.apply_batch(tag_entries)?;
        // Looked at after indexing: a round that starts later reads the
        // index after this and sees these names in its inventory.
        if let Some(during) = shared
            .named_during_round
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            during.extend(named);
            during.extend(new_manifest_digests.iter().copied());
            for digest in &new_manifest_digests {
                if let Some(bytes) = shared.manifests.get(index::digest_key(digest))?
                    && let Ok(m) = strata_proto::Manifest::decode(&bytes)
                {
                    during.extend(m.chunks().iter().map(|c| c.digest));
                }
            }
        }
        for (id, len) in watermarks {
            shared
                .meta
                .insert(index::watermark_key(id), &len.to_le_bytes())?;
        }
        let c = &shared.counters;
        c.chunks.fetch_add(new_chunks, Ordering::Relaxed);
        c.chunk_bytes.fetch_add(new_raw, Ordering::Relaxed);
        c.stored_bytes.fetch_add(new_stored, Ordering::Relaxed);
        c.manifests.fetch_add(new_manifests, Ordering::Relaxed);
        c.logical_bytes.fetch_add(new_logical, Ordering::Relaxed);
        c.steps.fetch_add(new_steps, Ordering::Relaxed);
        if new_manifests > 0 {
            c.manifests_unverified
                .fetch_add(new_manifests, Ordering::Relaxed);
            shared.verify_queue.notify();
        }
        Ok(outcomes)
    }

    /// Writes the buffered records at the end of the active segment and
    /// syncs per policy. On failure (a full disk, say) the segment is cut
    /// back to where it was, so no partial record stays behind.
    pub(super) fn write_buf(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all_at(&self.buf, self.len).and_then(|()| {
            if self.shared.config.fsync == FsyncPolicy::Always {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            self.buf.clear();
            return Err(StoreError::io(
                format!(
                    "segment {}",
                    self.shared.segments.path_of(self.segment).display()
                ),
                e,
            ));
        }
        self.len += self.buf.len() as u64;
        if self.shared.config.fsync == FsyncPolicy::Always {
            self.shared.note_synced(self.segment, self.len);
        }
        self.shared
            .counters
            .segment_bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.buf.clear();
        Ok(())
    }

    /// Closes the active segment and starts the next one.
    pub(super) fn roll(&mut self) -> Result<(), StoreError> {
        self.segment += 1;
        (self.file, self.len) = open(&self.shared, self.segment)?;
        self.shared
            .counters
            .segments
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Drops a chunk found rotten from the index (see [`Job::DropRotten`]).
    /// It is marked rotten before it is unindexed, so a reader in between
    /// sees it as corrupt, never as plainly absent.
    fn drop_rotten(&self, digest: &Digest, entry: &[u8]) -> Result<bool, StoreError> {
        let shared = &self.shared;
        let key = index::digest_key(digest);
        if shared.chunks.get(key)?.as_deref() != Some(entry) {
            return Ok(false);
        }
        if shared.rotten.insert(key, entry)?.is_none() {
            shared
                .counters
                .rotten_chunks
                .fetch_add(1, Ordering::Relaxed);
        }
        shared.chunks.remove(key)?;
        // The counters count decodable entries only (see `recount`).
        if let Some(e) = ChunkEntry::decode(entry) {
            let c = &shared.counters;
            sub(&c.chunks, 1);
            sub(&c.chunk_bytes, u64::from(e.raw_len));
            sub(&c.stored_bytes, u64::from(e.stored_len));
        }
        tracing::warn!(
            digest = %digest,
            "dropped a rotten chunk from the index; the next push of its content heals it"
        );
        Ok(true)
    }

    fn rebuild(&mut self) -> Result<RebuildReport, StoreError> {
        let shared = self.shared.clone();
        shared.clear_index()?;
        let report = shared.recover()?;
        super::gc::drop_dangling(&shared)?;
        shared.recount()?;
        (self.file, self.len) = open(&shared, self.segment)?;
        if shared.counters.segments.load(Ordering::Relaxed) == 0 {
            shared.counters.segments.store(1, Ordering::Relaxed);
        }
        shared.db.flush()?;
        // Manifests the rebuild found without a verdict wait in
        // `unverified` again.
        shared.verify_queue.retry_all();
        Ok(report)
    }
}

/// Opens segment `id` for appending. One it creates is synced into its
/// directory: a power cut leaves it, empty.
fn open(shared: &Shared, id: u32) -> Result<(File, u64), StoreError> {
    let opened = shared.segments.open_for_append(id).map_err(|e| {
        StoreError::io(
            format!("opening segment {}", shared.segments.path_of(id).display()),
            e,
        )
    })?;
    shared.note_opened(id);
    Ok(opened)
}

/// Counts one more divergent step result, durably (a refused result leaves
/// no record to count it again from).
fn count_divergence(shared: &Shared) -> Result<(), StoreError> {
    let total = shared.counters.divergences.fetch_add(1, Ordering::Relaxed) + 1;
    shared
        .meta
        .insert(index::DIVERGENCES_KEY, &total.to_le_bytes())?;
    Ok(())
}

/// Most results under one step key looked at to tell whether another
/// signer's outcome differs: a bound on the work one record can cause.
const MAX_SIGNERS_COMPARED: usize = 64;

/// Whether a result of another signer under `key` (stored, or earlier in
/// this commit group) has an outcome other than `result`'s.
fn others_differ(
    shared: &Shared,
    group: &HashMap<index::StepIndexKey, StepResult>,
    key: &Digest,
    result: &StepResult,
) -> Result<bool, StoreError> {
    let in_group = group
        .iter()
        .filter(|(k, _)| k.step() == *key)
        .any(|(_, r)| !r.same_outcome(result));
    if in_group {
        return Ok(true);
    }
    for item in shared
        .steps
        .scan_prefix(key.as_bytes())
        .take(MAX_SIGNERS_COMPARED)
    {
        let (_, v) = item?;
        if !super::decode_stored_step(key, &v)?.same_outcome(result) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Lowers a counter, never below zero.
pub(super) fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}
