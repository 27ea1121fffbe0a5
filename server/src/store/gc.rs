//! Garbage collection: what to evict (policy), and taking it out of the
//! index (mechanics that know trees, not segment files).
//!
//! The model, which a second backend (object storage) keeps as it is:
//! - **Roots are what users name**: objects (layer manifests and image
//!   records), step results and tags. An object's *last use* is the latest
//!   of its own use time and those of everything that needs it — the step
//!   results naming it as their layer, the tags naming it, the image
//!   records listing it — so a layer stays as long as any of them is used.
//! - **Eviction is least-recently-used over objects, and takes dependents
//!   with it**: evicting an object evicts the step results and tags naming
//!   it and the image records listing it, in that order, before the object
//!   itself. A step result therefore never outlives its layer: a lookup is
//!   a miss, never a hit whose layer is gone.
//! - **A chunk goes only when no object holds it** (after the evictions
//!   planned) **and no lease covers it**: an upload in flight leases every
//!   chunk it asks about or sends and every object it names (see
//!   [`super::usage::Leases`]), and the writer re-checks leases when it
//!   applies a plan, so a push racing a collection either completes or gets
//!   a clean refusal (a manifest naming a chunk that is gone is refused).
//! - Orphans — chunks no object holds, such as those of an interrupted push
//!   — are collected once their lease has lapsed.
//!
//! [`plan`] is a pure function of an [`Inventory`]; [`apply`] runs on the
//! writer thread, the one place the index changes; [`Collector`] runs
//! rounds (inventory, plan, apply, then compaction of mostly dead segments,
//! which is segment mechanics and lives in `compact.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_proto::{ChunkDecoder, Digest, Manifest, SignedTag};
use tokio::sync::{mpsc, oneshot, watch};

use super::index::{self, ChunkEntry, StepIndexKey};
use super::record::HEADER_LEN;
use super::usage::{UseKind, use_key};
use super::verify;
use super::writer::Job;
use super::{Shared, StoreError};

/// The media type of the builder's image records: objects that name other
/// objects (their layers) as `b3:` digests in their bytes. Mirrors
/// `strata_builder::build::stored::MEDIA_TYPE_STORED_IMAGE`.
pub const IMAGE_RECORD_MEDIA_TYPE: &str = "application/vnd.strata.image.v1+json";

/// Image records larger than this are not read for references (the
/// builder's are a few KiB): their layers then count as unreferenced.
const MAX_IMAGE_RECORD_BYTES: u64 = 1 << 20;

/// The smallest `--max-bytes` accepted: below it the index and one
/// segment alone come near the cap.
pub const MIN_MAX_BYTES: u64 = 32 << 20;

/// A round starts once the data directory holds this share of the cap.
const TRIGGER_PERCENT: u64 = 75;
/// Eviction goes on until live records plus the index are this share.
const EVICT_TO_PERCENT: u64 = 55;
/// Under cap pressure, compaction goes on until the directory is this share.
const COMPACT_TO_PERCENT: u64 = 65;
/// A segment with at least this share dead is compacted in any round.
const ALWAYS_COMPACT_DEAD_PERCENT: u64 = 50;
/// Under cap pressure, a segment needs at least this share dead to be
/// worth rewriting: below it a rewrite costs a whole segment of writes
/// (and, until the old file goes, of disk) for little room.
const PRESSED_COMPACT_DEAD_PERCENT: u64 = 10;

/// How often the background collector looks at the size of the store.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Pause after a round that could not get under the trigger (everything
/// left is leased or recent), so a full store does not spin.
const FRUITLESS_ROUND_PAUSE: Duration = Duration::from_millis(250);

/// What one collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub objects_evicted: u64,
    pub step_results_evicted: u64,
    pub tags_evicted: u64,
    /// Chunks removed: those of evicted objects and orphans.
    pub chunks_freed: u64,
    /// Record bytes of everything removed from the index.
    pub bytes_freed: u64,
    pub segments_compacted: u64,
    /// Bytes of segment files removed by compaction, less what it copied.
    pub bytes_compacted: u64,
    /// Data directory bytes (segments and index) before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Everything collection decides on, read from the index.
#[derive(Default)]
pub struct Inventory {
    pub objects: HashMap<Digest, ObjectInfo>,
    pub steps: Vec<StepInfo>,
    pub tags: Vec<TagInfo>,
    /// Every indexed chunk and its record bytes (header and payload).
    pub chunks: HashMap<Digest, u64>,
    /// Bytes of the index on disk.
    pub index_bytes: u64,
}

pub struct ObjectInfo {
    /// Chunks in manifest order, repeats included.
    pub chunks: Vec<Digest>,
    pub record_bytes: u64,
    pub logical_bytes: u64,
    /// Its own last use (ms since the epoch; 0 if never recorded).
    pub last_use: u64,
    /// Objects it names (an image record's layers).
    pub refers_to: Vec<Digest>,
}

pub struct StepInfo {
    /// Its `steps` key: step key ‖ signer.
    pub key: StepIndexKey,
    pub layer: Option<Digest>,
    pub record_bytes: u64,
    pub last_use: u64,
}

pub struct TagInfo {
    /// Its `tags` key: name ‖ 0 ‖ signer.
    pub key: Vec<u8>,
    pub target: Digest,
    pub record_bytes: u64,
    pub last_use: u64,
}

/// One object to evict and what goes with it.
#[derive(Debug)]
pub struct ObjectEviction {
    pub digest: Digest,
    pub chunks: Vec<Digest>,
    pub logical_bytes: u64,
    pub record_bytes: u64,
    pub refers_to: Vec<Digest>,
    /// Step results naming it as their layer (their `steps` keys).
    pub steps: Vec<StepIndexKey>,
    /// Tags naming it (their `tags` keys).
    pub tags: Vec<Vec<u8>>,
}

/// What a round means to take out of the index, dependents first.
#[derive(Debug, Default)]
pub struct EvictionPlan {
    /// In eviction order: an image record comes before the layers it lists.
    pub objects: Vec<ObjectEviction>,
    /// Chunks no object holds once `objects` are gone (orphans included).
    pub chunks: Vec<Digest>,
}

impl EvictionPlan {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.chunks.is_empty()
    }
}

/// What applying a plan removed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Evicted {
    pub objects: u64,
    pub steps: u64,
    pub tags: u64,
    pub chunks: u64,
    pub bytes: u64,
}

impl Inventory {
    /// Reads the index. Not a snapshot across trees: whatever changes while
    /// it reads was leased by the request that changed it, and [`apply`]
    /// re-checks leases.
    pub fn load(shared: &Shared) -> Result<Inventory, StoreError> {
        let mut inv = Inventory {
            index_bytes: shared.db.size_on_disk()?,
            ..Inventory::default()
        };
        for item in shared.chunks.iter() {
            let (key, value) = item?;
            if let (Ok(digest), Some(entry)) =
                (Digest::from_slice(&key), ChunkEntry::decode(&value))
            {
                inv.chunks
                    .insert(digest, HEADER_LEN as u64 + u64::from(entry.stored_len));
            }
        }
        let mut decoder =
            ChunkDecoder::new().map_err(|e| StoreError::io("creating a zstd decoder", e))?;
        for item in shared.manifests.iter() {
            let (key, value) = item?;
            let (Ok(digest), Ok(manifest)) = (Digest::from_slice(&key), Manifest::decode(&value))
            else {
                continue;
            };
            let refers_to = if manifest.media_type() == IMAGE_RECORD_MEDIA_TYPE
                && manifest.total_length() <= MAX_IMAGE_RECORD_BYTES
            {
                read_object(shared, &mut decoder, &manifest)
                    .map(|bytes| digests_named_in(&bytes))
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            inv.objects.insert(
                digest,
                ObjectInfo {
                    chunks: manifest.chunks().iter().map(|c| c.digest).collect(),
                    record_bytes: (HEADER_LEN + value.len()) as u64,
                    logical_bytes: manifest.total_length(),
                    last_use: 0,
                    refers_to,
                },
            );
        }
        for item in shared.steps.iter() {
            let (key, value) = item?;
            let Some(key) = StepIndexKey::from_slice(&key) else {
                continue;
            };
            let layer = super::decode_stored_step(&key.step(), &value)
                .ok()
                .and_then(|r| r.layer);
            inv.steps.push(StepInfo {
                layer,
                record_bytes: (HEADER_LEN + value.len()) as u64,
                last_use: 0,
                key,
            });
        }
        for item in shared.tags.iter() {
            let (key, value) = item?;
            let Ok(tag) = SignedTag::decode(&value) else {
                continue;
            };
            inv.tags.push(TagInfo {
                record_bytes: (HEADER_LEN + value.len()) as u64,
                last_use: 0,
                key: key.to_vec(),
                target: tag.target,
            });
        }
        // Read last: a use time is written before its name is indexed, so
        // everything read above has its time in this read. (Read first, a
        // name indexed in between would have none and look least recently
        // used of all: a just-acknowledged push, evicted first.)
        let uses = shared.uses.all()?;
        let last_use = |kind, name: &[u8]| uses.get(&use_key(kind, name)).copied().unwrap_or(0);
        for (digest, o) in &mut inv.objects {
            o.last_use = last_use(UseKind::Object, digest.as_bytes());
        }
        for s in &mut inv.steps {
            s.last_use = last_use(UseKind::Step, s.key.as_bytes());
        }
        for t in &mut inv.tags {
            t.last_use = last_use(UseKind::Tag, &t.key);
        }
        Ok(inv)
    }

    /// Bytes of live records plus the index: what compaction could shrink
    /// the store to.
    pub fn live_bytes(&self) -> u64 {
        self.chunks.values().sum::<u64>()
            + self.objects.values().map(|o| o.record_bytes).sum::<u64>()
            + self.steps.iter().map(|s| s.record_bytes).sum::<u64>()
            + self.tags.iter().map(|t| t.record_bytes).sum::<u64>()
            + self.index_bytes
    }
}

/// Decides what to evict: least recently used objects (with what needs
/// them) until live bytes reach `target_bytes`, skipping anything leased;
/// then every chunk no remaining object holds that is not leased.
pub fn plan(
    inv: &Inventory,
    target_bytes: u64,
    is_leased: &dyn Fn(&Digest) -> bool,
) -> EvictionPlan {
    let mut steps_of: HashMap<Digest, Vec<&StepInfo>> = HashMap::new();
    for s in &inv.steps {
        if let Some(layer) = s.layer {
            steps_of.entry(layer).or_default().push(s);
        }
    }
    let mut tags_of: HashMap<Digest, Vec<&TagInfo>> = HashMap::new();
    for t in &inv.tags {
        tags_of.entry(t.target).or_default().push(t);
    }
    let mut records_of: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for (digest, o) in &inv.objects {
        for layer in &o.refers_to {
            records_of.entry(*layer).or_default().push(*digest);
        }
    }

    // Last use of each object: its own, its step results', its tags', then
    // (one level: records do not list records) the image records' listing it.
    let own_use = |d: &Digest, o: &ObjectInfo| {
        let steps = steps_of.get(d).into_iter().flatten().map(|s| s.last_use);
        let tags = tags_of.get(d).into_iter().flatten().map(|t| t.last_use);
        steps.chain(tags).fold(o.last_use, u64::max)
    };
    let direct: HashMap<Digest, u64> = inv
        .objects
        .iter()
        .map(|(d, o)| (*d, own_use(d, o)))
        .collect();
    let mut order: Vec<(u64, Digest)> = inv
        .objects
        .keys()
        .map(|d| {
            let via_records = records_of
                .get(d)
                .into_iter()
                .flatten()
                .filter_map(|r| direct.get(r).copied());
            (via_records.fold(direct[d], u64::max), *d)
        })
        .collect();
    order.sort_unstable();

    let mut refcount: HashMap<Digest, u32> = HashMap::new();
    for o in inv.objects.values() {
        for c in &o.chunks {
            *refcount.entry(*c).or_default() += 1;
        }
    }

    let mut live = inv.live_bytes();
    let mut out = EvictionPlan::default();
    let mut evicted: HashSet<Digest> = HashSet::new();
    let mut freed: HashSet<Digest> = HashSet::new();
    for (_, digest) in order {
        if live <= target_bytes {
            break;
        }
        if evicted.contains(&digest) || is_leased(&digest) {
            continue;
        }
        // The unit: the image records listing it, then the object itself.
        let mut unit: Vec<Digest> = records_of
            .get(&digest)
            .into_iter()
            .flatten()
            .filter(|r| !evicted.contains(*r))
            .copied()
            .collect();
        if unit.iter().any(is_leased) {
            continue;
        }
        unit.push(digest);
        for d in unit {
            let Some(o) = inv.objects.get(&d) else {
                continue;
            };
            evicted.insert(d);
            let steps = steps_of.get(&d).map(Vec::as_slice).unwrap_or_default();
            let tags = tags_of.get(&d).map(Vec::as_slice).unwrap_or_default();
            live = live.saturating_sub(
                o.record_bytes
                    + steps.iter().map(|s| s.record_bytes).sum::<u64>()
                    + tags.iter().map(|t| t.record_bytes).sum::<u64>(),
            );
            for c in &o.chunks {
                let n = refcount.entry(*c).or_default();
                *n = n.saturating_sub(1);
                if *n == 0
                    && let Some(bytes) = inv.chunks.get(c)
                    && !is_leased(c)
                    && freed.insert(*c)
                {
                    live = live.saturating_sub(*bytes);
                    out.chunks.push(*c);
                }
            }
            out.objects.push(ObjectEviction {
                digest: d,
                chunks: o.chunks.clone(),
                logical_bytes: o.logical_bytes,
                record_bytes: o.record_bytes,
                refers_to: o.refers_to.clone(),
                steps: steps.iter().map(|s| s.key).collect(),
                tags: tags.iter().map(|t| t.key.clone()).collect(),
            });
        }
    }
    // Orphans: chunks no object ever held here, their leases lapsed.
    for c in inv.chunks.keys() {
        if !refcount.contains_key(c) && !is_leased(c) && freed.insert(*c) {
            out.chunks.push(*c);
        }
    }
    out
}

/// Takes a plan out of the index. Runs on the writer thread, so nothing
/// is written between its checks and its removals; anything leased since
/// the plan was made (with everything it needs) stays. Removal order is
/// step results and tags, then objects, then chunks: a crash part-way
/// (sled recovers a prefix of its operations) leaves at worst orphans.
pub fn apply(shared: &Shared, plan: &EvictionPlan) -> Result<Evicted, StoreError> {
    let leases = &shared.leases;
    // Named by a manifest, step result or tag committed since the round's
    // inventory: the plan did not see that name.
    let named: HashSet<Digest> = shared
        .named_during_round
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default();
    let mut kept: HashSet<Digest> = plan
        .objects
        .iter()
        .filter(|o| leases.is_leased(&o.digest) || named.contains(&o.digest))
        .map(|o| o.digest)
        .collect();
    // A kept image record keeps the layers it lists.
    for o in &plan.objects {
        if kept.contains(&o.digest) {
            kept.extend(o.refers_to.iter().copied());
        }
    }
    let mut done = Evicted::default();
    let mut kept_chunks: HashSet<Digest> = HashSet::new();
    let c = &shared.counters;
    for o in &plan.objects {
        if kept.contains(&o.digest) {
            kept_chunks.extend(o.chunks.iter().copied());
            continue;
        }
        for key in &o.steps {
            let names_it = shared
                .steps
                .get(key.as_bytes())?
                .and_then(|v| super::decode_stored_step(&key.step(), &v).ok())
                .is_some_and(|r| r.layer == Some(o.digest));
            if names_it && let Some(v) = shared.steps.remove(key.as_bytes())? {
                shared.uses.forget(UseKind::Step, key.as_bytes())?;
                done.steps += 1;
                done.bytes += (HEADER_LEN + v.len()) as u64;
                super::writer::sub(&c.steps, 1);
            }
        }
        for key in &o.tags {
            let names_it = shared
                .tags
                .get(key)?
                .and_then(|v| SignedTag::decode(&v).ok())
                .is_some_and(|t| t.target == o.digest);
            if names_it && let Some(v) = shared.tags.remove(key)? {
                shared.uses.forget(UseKind::Tag, key)?;
                done.tags += 1;
                done.bytes += (HEADER_LEN + v.len()) as u64;
            }
        }
        let removed = drop_object(shared, &o.digest)?;
        if removed {
            done.objects += 1;
            done.bytes += o.record_bytes;
            super::writer::sub(&c.manifests, 1);
            super::writer::sub(&c.logical_bytes, o.logical_bytes);
        }
    }
    for digest in &plan.chunks {
        if kept_chunks.contains(digest) || leases.is_leased(digest) || named.contains(digest) {
            continue;
        }
        if let Some(v) = shared.chunks.remove(index::digest_key(digest))?
            && let Some(e) = ChunkEntry::decode(&v)
        {
            done.chunks += 1;
            done.bytes += HEADER_LEN as u64 + u64::from(e.stored_len);
            super::writer::sub(&c.chunks, 1);
            super::writer::sub(&c.chunk_bytes, u64::from(e.raw_len));
            super::writer::sub(&c.stored_bytes, u64::from(e.stored_len));
        }
    }
    if done.objects + done.chunks > 0 {
        // After the removals: a write that checked its references before
        // this sees the new count and is checked again (`writer.rs`).
        shared.collections.fetch_add(1, Ordering::Release);
    }
    Ok(done)
}

/// After a full rebuild from the segments, records evicted earlier may be
/// back while what they need was compacted away: drops objects missing a
/// chunk, image records missing a layer, then step results and tags naming
/// a missing object. Returns how many entries it dropped.
///
/// Only a store that has compacted a segment can have such records: until
/// then every record eviction left behind is whole in the segments. So a
/// store that never compacted keeps the recovery rule exactly — a
/// manifest missing a damaged chunk stays, and a push of it heals it.
/// After compaction the two cannot be told apart, and such a manifest is
/// dropped (a push of it stores it again).
pub fn drop_dangling(shared: &Shared) -> Result<u64, StoreError> {
    if !shared.gc_figures.contains_key(COMPACTED_KEY)? {
        return Ok(0);
    }
    let mut dropped = 0u64;
    let mut complete: HashSet<Digest> = HashSet::new();
    let mut records: Vec<(Digest, Manifest)> = Vec::new();
    for item in shared.manifests.iter() {
        let (key, value) = item?;
        let Ok(digest) = Digest::from_slice(&key) else {
            continue;
        };
        let intact = Manifest::decode(&value).ok().filter(|m| {
            m.chunks().iter().all(|c| {
                shared
                    .chunks
                    .get(index::digest_key(&c.digest))
                    .ok()
                    .flatten()
                    .and_then(|e| ChunkEntry::decode(&e))
                    .is_some_and(|e| e.raw_len == c.length)
            })
        });
        match intact {
            Some(m) if m.media_type() == IMAGE_RECORD_MEDIA_TYPE => records.push((digest, m)),
            Some(_) => {
                complete.insert(digest);
            }
            None => {
                drop_object(shared, &digest)?;
                dropped += 1;
            }
        }
    }
    let mut decoder =
        ChunkDecoder::new().map_err(|e| StoreError::io("creating a zstd decoder", e))?;
    let is_object = |d: &Digest| shared.manifests.contains_key(d.as_bytes());
    for (digest, manifest) in records {
        let layers = read_object(shared, &mut decoder, &manifest)
            .map(|b| digests_named_in(&b))
            .unwrap_or_default();
        let mut whole = true;
        for l in &layers {
            whole &= complete.contains(l) || is_object(l)?;
        }
        if whole {
            complete.insert(digest);
        } else {
            drop_object(shared, &digest)?;
            dropped += 1;
        }
    }
    for item in shared.steps.iter() {
        let (key, value) = item?;
        let layer = StepIndexKey::from_slice(&key)
            .and_then(|k| super::decode_stored_step(&k.step(), &value).ok())
            .and_then(|r| r.layer);
        if let Some(layer) = layer
            && !is_object(&layer)?
        {
            shared.steps.remove(&key)?;
            dropped += 1;
        }
    }
    for item in shared.tags.iter() {
        let (key, value) = item?;
        let target = SignedTag::decode(&value).ok().map(|t| t.target);
        if let Some(target) = target
            && !shared.manifests.contains_key(target.as_bytes())?
        {
            shared.tags.remove(&key)?;
            dropped += 1;
        }
    }
    if dropped > 0 {
        shared.collections.fetch_add(1, Ordering::Release);
        tracing::warn!(
            dropped,
            "the rebuilt index named content that collection had removed; those entries were dropped"
        );
    }
    Ok(dropped)
}

/// Takes object `digest` out of every index entry that names it, and says
/// whether it was held. The content indexes lose it only where they name
/// this very manifest (another proven manifest of the same content may
/// stand there); the verifier's queue and verdict go too, so the
/// verifier can neither verify nor enter an evicted manifest: its verdict
/// arrives on the writer thread, after this, and finds nothing queued
/// (`verify::apply_verdict`). Runs on the writer thread, or at open before
/// it starts. A new index keyed by, or naming, objects belongs here.
fn drop_object(shared: &Shared, digest: &Digest) -> Result<bool, StoreError> {
    let key = index::digest_key(digest);
    let verdict = shared.verified.remove(key)?;
    if let Some(bytes) = shared.manifests.get(key)?
        && let Ok(m) = Manifest::decode(&bytes)
    {
        let _ = shared.by_content.compare_and_swap(
            m.content_key().as_bytes(),
            Some(digest.as_bytes()),
            None as Option<&[u8]>,
        )?;
        if let Some(object) = verdict.as_deref().and_then(verify::true_object_blake3) {
            for (tree, key) in verify::whole_object_keys(shared, &m, &object) {
                let _ =
                    tree.compare_and_swap(key, Some(digest.as_bytes()), None as Option<&[u8]>)?;
            }
        }
    }
    let c = &shared.counters;
    if verdict.as_deref().is_some_and(verify::is_false_verdict) {
        super::writer::sub(&c.manifests_refuted, 1);
    }
    if shared.unverified.remove(key)?.is_some() {
        super::writer::sub(&c.manifests_unverified, 1);
    }
    shared.uses.forget(UseKind::Object, digest.as_bytes())?;
    Ok(shared.manifests.remove(key)?.is_some())
}

/// The bytes of a (small) object, read and verified from its chunks.
fn read_object(
    shared: &Shared,
    decoder: &mut ChunkDecoder,
    manifest: &Manifest,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(manifest.total_length() as usize);
    for c in manifest.chunks() {
        let entry = shared.chunks.get(index::digest_key(&c.digest)).ok()??;
        let stored = shared.read_chunk_at(&c.digest, &entry).ok()?;
        let raw = decoder
            .decode_verified(&c.digest, stored.codec, stored.raw_len, &stored.data)
            .ok()?;
        out.extend_from_slice(raw);
    }
    Some(out)
}

/// Every `b3:<64 hex>` digest written in `bytes`.
fn digests_named_in(bytes: &[u8]) -> Vec<Digest> {
    const TEXT_LEN: usize = 3 + 64;
    let mut found = Vec::new();
    let mut i = 0;
    while i + TEXT_LEN <= bytes.len() {
        if &bytes[i..i + 3] == b"b3:"
            && let Ok(text) = std::str::from_utf8(&bytes[i..i + TEXT_LEN])
            && let Ok(d) = text.parse::<Digest>()
        {
            found.push(d);
            i += TEXT_LEN;
        } else {
            i += 1;
        }
    }
    found
}

/// Collects, for the life of a round, what the writer commits names to
/// (`Shared::named_during_round`).
struct NamedDuringRound<'a>(&'a Shared);

impl<'a> NamedDuringRound<'a> {
    fn start(shared: &'a Shared) -> Self {
        *shared
            .named_during_round
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
        NamedDuringRound(shared)
    }
}

impl Drop for NamedDuringRound<'_> {
    fn drop(&mut self) {
        *self
            .0
            .named_during_round
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Runs collection rounds: on demand ([`Collector::round`]) and, when the
/// store has a cap, in the background whenever it nears it.
pub struct Collector {
    shared: Arc<Shared>,
    writer: mpsc::Sender<Job>,
    /// One round at a time.
    round_lock: Mutex<()>,
    /// Rounds finished, for writers waiting for room.
    rounds: watch::Sender<u64>,
    /// Wakes the background thread; dropped to stop it.
    wake: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
}

impl Collector {
    pub fn new(shared: Arc<Shared>, writer: mpsc::Sender<Job>) -> Arc<Collector> {
        Arc::new(Collector {
            shared,
            writer,
            round_lock: Mutex::new(()),
            rounds: watch::channel(0).0,
            wake: Mutex::new(None),
        })
    }

    /// Starts the background thread if the store has a cap.
    pub fn start_background(
        self: &Arc<Self>,
    ) -> Result<Option<std::thread::JoinHandle<()>>, StoreError> {
        if self.shared.config.max_bytes.is_none() {
            return Ok(None);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let this = self.clone();
        std::thread::Builder::new()
            .name("strata-gc".into())
            .spawn(move || this.run_background(rx))
            .map(Some)
            .map_err(|e| StoreError::io("starting the collector thread", e))
    }

    /// Stops the background thread (it exits at its next wake-up).
    pub fn stop(&self) {
        self.wake.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn run_background(&self, wake: std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::RecvTimeoutError;
        loop {
            match wake.recv_timeout(CHECK_INTERVAL) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.refresh_index_bytes();
            if !self.over_trigger() {
                continue;
            }
            match self.round() {
                Ok(report) => tracing::info!(
                    objects = report.objects_evicted,
                    step_results = report.step_results_evicted,
                    tags = report.tags_evicted,
                    chunks = report.chunks_freed,
                    compacted = report.bytes_compacted,
                    before = report.bytes_before,
                    after = report.bytes_after,
                    "garbage collection"
                ),
                Err(e) => tracing::error!(error = %e, "garbage collection failed"),
            }
            if self.over_trigger() {
                std::thread::sleep(FRUITLESS_ROUND_PAUSE);
                while wake.try_recv().is_ok() {}
            }
        }
    }

    /// Asks the background thread for a round (if it runs).
    pub fn wake(&self) {
        if let Some(tx) = self.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.try_send(());
        }
    }

    pub fn rounds(&self) -> watch::Receiver<u64> {
        self.rounds.subscribe()
    }

    fn refresh_index_bytes(&self) {
        if let Ok(n) = self.shared.db.size_on_disk() {
            self.shared.counters.index_bytes.store(n, Ordering::Relaxed);
        }
    }

    /// Segments plus index, as last measured.
    pub fn used_bytes(&self) -> u64 {
        let c = &self.shared.counters;
        c.segment_bytes.load(Ordering::Relaxed) + c.index_bytes.load(Ordering::Relaxed)
    }

    fn share_of_cap(&self, percent: u64) -> Option<u64> {
        self.shared.config.max_bytes.map(|cap| cap / 100 * percent)
    }

    pub fn over_trigger(&self) -> bool {
        self.share_of_cap(TRIGGER_PERCENT)
            .is_some_and(|t| self.used_bytes() >= t)
    }

    pub fn over_cap(&self) -> bool {
        self.shared
            .config
            .max_bytes
            .is_some_and(|cap| self.used_bytes() >= cap)
    }

    fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .blocking_send(make(reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.blocking_recv().map_err(|_| StoreError::ShuttingDown)?
    }

    /// One round: evict (when over the trigger), collect orphans, compact.
    /// Blocks; never call it from an async task.
    pub fn round(&self) -> Result<GcReport, StoreError> {
        let _one = self.round_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.round_locked();
        self.rounds.send_modify(|n| *n += 1);
        result
    }

    fn round_locked(&self) -> Result<GcReport, StoreError> {
        self.refresh_index_bytes();
        let shared = &self.shared;
        let mut report = GcReport {
            bytes_before: self.used_bytes(),
            ..GcReport::default()
        };
        // Names committed from now until the plan is applied are kept
        // (the inventory may miss them); reset however the round ends.
        let _watch = NamedDuringRound::start(shared);
        let inventory = Inventory::load(shared)?;
        let target = if self.over_trigger() {
            self.share_of_cap(EVICT_TO_PERCENT).unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        let plan = plan(&inventory, target, &|d| shared.leases.is_leased(d));
        drop(inventory);
        if !plan.is_empty() {
            let plan = Arc::new(plan);
            let evicted = self.submit(|reply| Job::Evict { plan, reply })?;
            report.objects_evicted = evicted.objects;
            report.step_results_evicted = evicted.steps;
            report.tags_evicted = evicted.tags;
            report.chunks_freed = evicted.chunks;
            report.bytes_freed = evicted.bytes;
        }
        // Evictions must be durable before compaction removes the bytes a
        // lost eviction would still point at (compaction flushes too).
        shared.db.flush()?;
        for segment in self.compaction_candidates()? {
            let done = self.submit(|reply| Job::Compact { segment, reply })?;
            if done.bytes_before > 0 {
                report.segments_compacted += 1;
                report.bytes_compacted += done.bytes_before.saturating_sub(done.bytes_copied);
            }
        }
        self.refresh_index_bytes();
        report.bytes_after = self.used_bytes();
        add_figures(shared, &report)?;
        Ok(report)
    }

    /// Segments worth rewriting, most dead first: any at least half dead,
    /// and under cap pressure as many as it takes to get under the
    /// compaction target. Live bytes are counted from chunk entries (the
    /// bulk of every segment); other records count as dead here, so a
    /// segment of only them is rewritten at little cost.
    fn compaction_candidates(&self) -> Result<Vec<u32>, StoreError> {
        let shared = &self.shared;
        let mut live: HashMap<u32, u64> = HashMap::new();
        for item in shared.chunks.iter() {
            let (_, value) = item?;
            if let Some(e) = ChunkEntry::decode(&value) {
                *live.entry(e.location.segment).or_default() +=
                    HEADER_LEN as u64 + u64::from(e.stored_len);
            }
        }
        let mut segments: Vec<(u64, u64, u32)> = Vec::new();
        let ids = shared
            .segments
            .list()
            .map_err(|e| StoreError::io("listing segments", e))?;
        let active = ids.last().copied();
        for id in ids {
            // Never the segment being written: its length runs ahead of
            // the index read above, so it would look dead while it is not,
            // and copies would land in it.
            if Some(id) == active {
                continue;
            }
            let len = std::fs::metadata(shared.segments.path_of(id)).map_or(0, |m| m.len());
            let dead = len.saturating_sub(live.get(&id).copied().unwrap_or(0));
            if dead > 0 {
                segments.push((dead, len, id));
            }
        }
        // Most dead (by share) first.
        segments.sort_unstable_by_key(|s| std::cmp::Reverse(s.0 * 1000 / s.1.max(1)));
        let goal = self.share_of_cap(COMPACT_TO_PERCENT);
        let mut projected = self.used_bytes();
        let mut chosen = Vec::new();
        for (dead, len, id) in segments {
            let pressed = goal.is_some_and(|g| projected > g)
                && dead * 100 >= len * PRESSED_COMPACT_DEAD_PERCENT;
            let mostly_dead = dead * 100 >= len * ALWAYS_COMPACT_DEAD_PERCENT;
            if mostly_dead || pressed {
                chosen.push(id);
                projected = projected.saturating_sub(dead);
            }
        }
        Ok(chosen)
    }
}

/// Set in the `gc` tree once any segment has been compacted.
pub const COMPACTED_KEY: &[u8] = b"compacted_once";

/// Figures kept across restarts (and index rebuilds) in the `gc` tree.
pub const FIGURE_KEYS: [&[u8]; 6] = [
    b"objects_evicted",
    b"step_results_evicted",
    b"tags_evicted",
    b"chunks_freed",
    b"bytes_compacted",
    b"rounds",
];

fn add_figures(shared: &Shared, r: &GcReport) -> Result<(), StoreError> {
    let values = [
        r.objects_evicted,
        r.step_results_evicted,
        r.tags_evicted,
        r.chunks_freed,
        r.bytes_compacted,
        1,
    ];
    for (key, n) in FIGURE_KEYS.into_iter().zip(values) {
        let before = figure(shared, key)?;
        shared.gc_figures.insert(key, &(before + n).to_le_bytes())?;
    }
    Ok(())
}

pub fn figure(shared: &Shared, key: &[u8]) -> Result<u64, StoreError> {
    Ok(shared
        .gc_figures
        .get(key)?
        .and_then(|v| index::decode_u64(&v))
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn object(n: u8, chunks: &[u8], last_use: u64) -> (Digest, ObjectInfo) {
        (
            Digest::of(&[n]),
            ObjectInfo {
                chunks: chunks.iter().map(|c| Digest::of(&[100, *c])).collect(),
                record_bytes: 100,
                logical_bytes: 1000,
                last_use,
                refers_to: Vec::new(),
            },
        )
    }

    fn inventory(objects: Vec<(Digest, ObjectInfo)>, chunks: &[u8]) -> Inventory {
        Inventory {
            objects: objects.into_iter().collect(),
            chunks: chunks
                .iter()
                .map(|c| (Digest::of(&[100, *c]), 1000))
                .collect(),
            ..Inventory::default()
        }
    }

    #[test]
    fn the_least_recently_used_object_goes_first_and_shared_chunks_stay() {
        let inv = inventory(
            vec![object(1, &[1, 2], 10), object(2, &[2, 3], 20)],
            &[1, 2, 3],
        );
        let p = plan(&inv, inv.live_bytes() - 1, &|_| false);
        assert_eq!(p.objects.len(), 1);
        assert_eq!(p.objects[0].digest, Digest::of(&[1]));
        assert_eq!(p.chunks, vec![Digest::of(&[100, 1])]);
    }

    #[test]
    fn a_step_result_in_use_keeps_its_layer_and_goes_with_it() {
        let mut inv = inventory(vec![object(1, &[1], 10), object(2, &[2], 20)], &[1, 2]);
        let key = StepIndexKey::from_slice(&[7; 64]).unwrap();
        inv.steps.push(StepInfo {
            key,
            layer: Some(Digest::of(&[1])),
            record_bytes: 10,
            last_use: 30,
        });
        let p = plan(&inv, inv.live_bytes() - 1, &|_| false);
        assert_eq!(p.objects[0].digest, Digest::of(&[2]));
        let p = plan(&inv, 0, &|_| false);
        let first = p
            .objects
            .iter()
            .find(|o| o.digest == Digest::of(&[1]))
            .unwrap();
        assert_eq!(first.steps, vec![key]);
    }

    #[test]
    fn leased_objects_are_not_evicted_and_leased_orphans_stay() {
        let inv = inventory(
            vec![object(1, &[1], 10), object(2, &[2], 990)],
            &[1, 2, 3, 4],
        );
        let leased = Digest::of(&[1]);
        let orphan_leased = Digest::of(&[100, 4]);
        let p = plan(&inv, 0, &|d| *d == leased || *d == orphan_leased);
        // Object 2 is the most recently used, and still goes: recency
        // orders eviction, only a lease prevents it.
        let evicted: Vec<Digest> = p.objects.iter().map(|o| o.digest).collect();
        assert_eq!(evicted, vec![Digest::of(&[2])]);
        let freed: HashSet<Digest> = p.chunks.iter().copied().collect();
        assert_eq!(
            freed,
            HashSet::from([Digest::of(&[100, 2]), Digest::of(&[100, 3])])
        );
    }

    #[test]
    fn a_tag_in_use_keeps_its_object_and_goes_with_it() {
        let mut inv = inventory(vec![object(1, &[1], 10), object(2, &[2], 20)], &[1, 2]);
        inv.tags.push(TagInfo {
            key: b"app:latest\0signer".to_vec(),
            target: Digest::of(&[1]),
            record_bytes: 10,
            last_use: 30,
        });
        let p = plan(&inv, inv.live_bytes() - 1, &|_| false);
        let evicted: Vec<Digest> = p.objects.iter().map(|o| o.digest).collect();
        assert_eq!(evicted, vec![Digest::of(&[2])]);
        let p = plan(&inv, 0, &|_| false);
        let tagged = p
            .objects
            .iter()
            .find(|o| o.digest == Digest::of(&[1]))
            .unwrap();
        assert_eq!(tagged.tags, vec![b"app:latest\0signer".to_vec()]);
    }

    #[test]
    fn an_image_record_goes_before_or_with_the_layers_it_lists() {
        let (rec, mut info) = object(9, &[9], 50);
        info.refers_to = vec![Digest::of(&[1])];
        let inv = inventory(vec![object(1, &[1], 10), (rec, info)], &[1, 9]);
        let p = plan(&inv, 0, &|_| false);
        let order: Vec<Digest> = p.objects.iter().map(|o| o.digest).collect();
        assert_eq!(order, vec![rec, Digest::of(&[1])]);
    }

    /// A store with a collection plan and a step result or two, driven
    /// through the writer as the collector drives it.
    mod store {
        use sha2::{Digest as _, Sha256};
        use strata_proto::v1::Provenance;
        use strata_proto::{ChunkRef, Codec, StepResult};

        use super::super::super::writer::{Job, PendingRecord};
        use super::super::super::{FsyncPolicy, Store, StoreConfig, VerifiedChunk};
        use super::*;

        fn open(dir: &std::path::Path, verify_manifests: bool) -> Store {
            Store::open(
                dir,
                StoreConfig {
                    fsync: FsyncPolicy::Never,
                    verify_manifests,
                    lease: Duration::ZERO,
                    ..StoreConfig::default()
                },
            )
            .unwrap()
        }

        fn bytes_of(n: u8) -> Vec<u8> {
            (0..200_000u32).map(|i| (i % 251) as u8 ^ n).collect()
        }

        async fn put_chunks(store: &Store, data: &[u8]) -> Vec<ChunkRef> {
            let mut decoder = ChunkDecoder::new().unwrap();
            let mut chunks = Vec::new();
            let mut refs = Vec::new();
            for piece in data.chunks(64 << 10) {
                let digest = Digest::of(piece);
                let raw = bytes::Bytes::copy_from_slice(piece);
                chunks.push(
                    VerifiedChunk::verify(
                        &mut decoder,
                        digest,
                        Codec::Raw,
                        piece.len() as u32,
                        raw,
                    )
                    .unwrap(),
                );
                refs.push(ChunkRef {
                    digest,
                    length: piece.len() as u32,
                });
            }
            store.put_chunks(chunks).await.unwrap();
            refs
        }

        async fn put_object(store: &Store, data: &[u8]) -> (Digest, Manifest) {
            let refs = put_chunks(store, data).await;
            let sha: [u8; 32] = Sha256::digest(data).into();
            let manifest = Manifest::new(refs, data.len() as u64, sha, "t".into()).unwrap();
            (
                store.put_manifest(manifest.clone()).await.unwrap(),
                manifest,
            )
        }

        /// Evicts everything a full collection would: every object, then
        /// every chunk (the store has no cap, so a round alone evicts no
        /// object).
        async fn evict_everything(store: &Store) -> Evicted {
            let shared = store.shared();
            let inventory = Inventory::load(shared).unwrap();
            let plan = Arc::new(plan(&inventory, 0, &|_| false));
            store
                .submit(|reply| Job::Evict { plan, reply })
                .await
                .unwrap()
        }

        async fn settle(store: &Store) {
            store.wait_for_verification().await;
        }

        /// An inventory read while objects are stored never sees one
        /// without its use time: such an object would look least recently
        /// used of all and be the first evicted, just after its push was
        /// acknowledged (the step result naming it next would then be
        /// refused for a missing layer).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_inventory_never_sees_an_object_without_its_use_time() {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path(), false);
            // Many chunks, so each inventory spends a while on the chunk
            // tree before it reads the manifests.
            for n in 0..8u8 {
                put_chunks(
                    &store,
                    &[bytes_of(n), bytes_of(n.wrapping_add(100))].concat(),
                )
                .await;
            }
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let reader = {
                let store = store.clone();
                let done = done.clone();
                tokio::task::spawn_blocking(move || {
                    let mut loads = 0u32;
                    while !done.load(Ordering::Acquire) || loads == 0 {
                        let inv = Inventory::load(store.shared()).unwrap();
                        for (digest, o) in &inv.objects {
                            assert_ne!(o.last_use, 0, "object {digest} has no use time");
                        }
                        loads += 1;
                    }
                    loads
                })
            };
            for n in 0..200u32 {
                put_object(&store, &n.to_le_bytes().repeat(64)).await;
            }
            done.store(true, Ordering::Release);
            assert!(reader.await.unwrap() > 1);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_evicted_manifest_leaves_the_verifier_and_every_content_index() {
            let dir = tempfile::tempdir().unwrap();
            let data = bytes_of(1);
            // Verified first, then evicted: found by content before, by
            // nothing after, and no verdict is left behind.
            let store = open(dir.path(), true);
            let (verified, manifest) = put_object(&store, &data).await;
            settle(&store).await;
            assert!(
                store
                    .find_object(&Digest::of(&data), "t")
                    .unwrap()
                    .is_some()
            );
            let done = evict_everything(&store).await;
            assert_eq!((done.objects, done.chunks), (1, 4));
            assert!(
                store
                    .find_object(&Digest::of(&data), "t")
                    .unwrap()
                    .is_none()
            );
            assert!(
                store
                    .find_manifest(&manifest.content_key())
                    .unwrap()
                    .is_none()
            );
            assert!(matches!(
                store.get_manifest(&verified),
                Err(StoreError::ManifestNotFound(_))
            ));
            let shared = store.shared();
            for tree in [&shared.verified, &shared.unverified, &shared.by_content] {
                assert!(tree.is_empty());
            }
            assert!(shared.by_object_blake3.is_empty());
            assert!(shared.by_object_sha256.is_empty());
            assert_eq!(store.stats().manifests, 0);
            drop(store);

            // Evicted while still queued: off the queue, and a verdict that
            // arrives afterwards (the verifier read it just before) enters
            // nothing.
            let store = open(dir.path(), false);
            let (queued, manifest) = put_object(&store, &data).await;
            assert_eq!(queued, verified);
            assert_eq!(store.stats().manifests_unverified, 1);
            evict_everything(&store).await;
            assert_eq!(store.stats().manifests_unverified, 0);
            let object_blake3 = Digest::of(&data);
            store
                .submit(|reply| Job::Verdict {
                    digest: queued,
                    verdict: verify::Verdict::True { object_blake3 },
                    reply,
                })
                .await
                .unwrap();
            let shared = store.shared();
            assert!(shared.verified.is_empty() && shared.by_content.is_empty());
            assert!(
                store
                    .find_manifest(&manifest.content_key())
                    .unwrap()
                    .is_none()
            );
            drop(store);

            // Stored again, it is verified again and found again.
            let store = open(dir.path(), true);
            let (again, _) = put_object(&store, &data).await;
            settle(&store).await;
            let found = store.find_object(&Digest::of(&data), "t").unwrap();
            assert_eq!(found.map(|(d, _)| d), Some(again));
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_write_checked_before_a_collection_is_checked_again_and_refused() {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path(), true);
            let (layer, _) = put_object(&store, &bytes_of(2)).await;
            let orphan = put_chunks(&store, &bytes_of(3)).await;
            let before = store.shared().collections.load(Ordering::Acquire);
            // Everything its caller checked is gone by the time it commits.
            evict_everything(&store).await;
            assert!(store.shared().collections.load(Ordering::Acquire) > before);

            let manifest = Manifest::new(orphan.clone(), 200_000, [0; 32], "t".into()).unwrap();
            let encoded = manifest.encode();
            let records = vec![PendingRecord::Manifest {
                digest: Digest::of(&encoded),
                total_length: 200_000,
                encoded,
                checked_at: before,
            }];
            let refused = store.submit(|reply| Job::Put { records, reply }).await;
            assert!(
                matches!(
                    refused,
                    Err(StoreError::ManifestIncomplete { index: 0, .. })
                ),
                "{refused:?}"
            );
            let signer = strata_proto::SigningKey::from_seed(&[1; 32]).unwrap();
            let mut result = StepResult {
                layer: Some(layer),
                config: b"{}".to_vec(),
                provenance: Provenance::default(),
                seal: None,
            };
            result.sign(&Digest::of(b"key"), &signer);
            let records = vec![PendingRecord::Step {
                key: Digest::of(b"key"),
                encoded: result.encode(),
                result: Box::new(result),
                checked_at: before,
            }];
            let refused = store.submit(|reply| Job::Put { records, reply }).await;
            assert!(
                matches!(refused, Err(StoreError::StepLayerMissing { .. })),
                "{refused:?}"
            );
            let tag = strata_proto::SignedTag::sign("t", layer, 1, &signer);
            let records = vec![PendingRecord::Tag {
                encoded: tag.encode(),
                tag,
                checked_at: before,
            }];
            let refused = store.submit(|reply| Job::Put { records, reply }).await;
            assert!(
                matches!(refused, Err(StoreError::TagTargetMissing { .. })),
                "{refused:?}"
            );
            let s = store.stats();
            assert_eq!((s.manifests, s.step_results, s.chunks), (0, 0, 0));
            // Checked after the collection, the same writes are fine once
            // what they name is stored again.
            let (layer, _) = put_object(&store, &bytes_of(2)).await;
            let tag = strata_proto::SignedTag::sign("t", layer, 2, &signer);
            store.set_tag(tag).await.unwrap();
            let found = store.get_tag("t", &[signer.public_key()]).unwrap();
            assert_eq!(found.map(|t| t.target), Some(layer));
        }
    }

    #[test]
    fn digests_are_found_in_an_image_record() {
        let d = Digest::of(b"layer");
        let text = format!("{{\"layers\":[\"{d}\"],\"x\":\"b3:zz\"}}");
        assert_eq!(digests_named_in(text.as_bytes()), vec![d]);
    }
}
