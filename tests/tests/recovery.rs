//! Recovery and repair against the real store, with bytes flipped on disk.
//!
//! Recovery: a byte flipped in each field of a record (magic, length,
//! payload, CRC), in the first, a middle and the last record of a sealed and
//! of the open segment, then the index rebuilt from the segments: every
//! other object pulls back byte-identical, only the damaged chunk is
//! missing, and the store counts what it stepped over. Torn writes and holes
//! past the index's watermark are handled the same way at an ordinary open.
//!
//! Repair: a chunk found rotten, on a pull, by a scrub or by the background
//! scrub, leaves the index, so `FindMissing` reports it and pushing the same
//! file again heals it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use strata_client::{Client, ClientError, Progress};
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::content_store_client::ContentStoreClient;
use strata_proto::v1::{FindMissingRequest, ScrubRequest};
use strata_proto::{ChunkDecoder, ChunkEncoder, ChunkRef, Digest, Manifest};
use strata_server::store::{StoreStats, VerifiedChunk};
use strata_server::{FsyncPolicy, Store, StoreConfig};
use strata_tests::{ServerProcess, TestServer, random_bytes, segment_files, serve_store};

// ---------------------------------------------------------------------------
// Reading and damaging segments, by the layout documented in record.rs.

const HEADER_LEN: u64 = 52;

/// One record of a segment file.
#[derive(Clone, Copy, Debug)]
struct RecordAt {
    offset: u64,
    kind: u8,
    digest: Digest,
    /// Header and payload.
    len: u64,
}

const CHUNK: u8 = 0;

fn records_of(segment: &Path) -> Vec<RecordAt> {
    let bytes = std::fs::read(segment).unwrap();
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let header = &bytes[offset..offset + HEADER_LEN as usize];
        assert_eq!(&header[0..4], b"SRC1", "record at {offset}");
        let stored_len = u32::from_le_bytes(header[12..16].try_into().unwrap());
        let len = HEADER_LEN + u64::from(stored_len);
        records.push(RecordAt {
            offset: offset as u64,
            kind: header[4],
            digest: Digest::from_slice(&header[16..48]).unwrap(),
            len,
        });
        offset += len as usize;
    }
    records
}

fn chunk_records_of(segment: &Path) -> Vec<RecordAt> {
    records_of(segment)
        .into_iter()
        .filter(|r| r.kind == CHUNK)
        .collect()
}

fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut out = vec![0u8; len as usize];
    f.read_exact_at(&mut out, offset).unwrap();
    out
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

// ---------------------------------------------------------------------------
// A store of several segments, filled through the store's own API so that
// the layout is known: every chunk first (so sealed segments hold chunks
// only), then the manifests, then one loose chunk as the very last record.

/// Small enough that a few hundred KiB of chunks fill several segments.
const SEGMENT_BYTES: u64 = 160 << 10;
const OBJECTS: usize = 6;
const CHUNKS_PER_OBJECT: usize = 4;

/// The store's figures once its background verifier has decided what it
/// can (a rebuild queues every manifest without a verdict again, and the
/// count of pending ones moves as the verifier works).
async fn settled_stats(store: &Store) -> StoreStats {
    store.wait_for_verification().await;
    store.stats()
}

fn small_segments(rebuild_index: bool) -> StoreConfig {
    StoreConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: SEGMENT_BYTES,
        rebuild_index,
        ..StoreConfig::default()
    }
}

struct Object {
    digest: Digest,
    bytes: Vec<u8>,
    chunks: Vec<Digest>,
}

struct Corpus {
    objects: Vec<Object>,
    /// Chunks no manifest names, written last: enough that the last
    /// segment holds several chunk records, the last of them its last record.
    loose: Vec<Digest>,
    /// The raw bytes of every chunk.
    raw: HashMap<Digest, Vec<u8>>,
}

impl Corpus {
    fn all_chunks(&self) -> Vec<Digest> {
        let mut all: Vec<Digest> = self.objects.iter().flat_map(|o| o.chunks.clone()).collect();
        all.extend(&self.loose);
        all
    }
}

/// Chunk lengths vary so that records fall at uneven offsets.
fn chunk_len(object: usize, chunk: usize) -> usize {
    (18 << 10) + 3001 * ((object * CHUNKS_PER_OBJECT + chunk) % 7)
}

/// Raw chunk bytes: incompressible or text-like, so both codecs occur.
fn chunk_content(object: usize, chunk: usize) -> Vec<u8> {
    let len = chunk_len(object, chunk);
    let seed = (object * CHUNKS_PER_OBJECT + chunk) as u64;
    if (object + chunk).is_multiple_of(3) {
        let line = format!("/usr/lib/object-{object}/chunk-{chunk}.so: ELF 64-bit\n");
        line.bytes().cycle().take(len).collect()
    } else {
        random_bytes(len, seed + 1000)
    }
}

fn verified(encoder: &mut ChunkEncoder, raw: &[u8]) -> VerifiedChunk {
    let digest = Digest::of(raw);
    let (codec, stored) = encoder.encode(raw);
    let stored = Bytes::copy_from_slice(stored);
    let mut decoder = ChunkDecoder::new().unwrap();
    VerifiedChunk::verify(&mut decoder, digest, codec, raw.len() as u32, stored).unwrap()
}

async fn fill(store: &Store, data_dir: &Path) -> Corpus {
    let mut encoder = ChunkEncoder::new(1).unwrap();
    let mut objects = Vec::new();
    for o in 0..OBJECTS {
        let raws: Vec<Vec<u8>> = (0..CHUNKS_PER_OBJECT)
            .map(|c| chunk_content(o, c))
            .collect();
        let chunks = raws.iter().map(|r| verified(&mut encoder, r)).collect();
        store.put_chunks(chunks).await.unwrap();
        objects.push((raws.concat(), raws));
    }
    let mut corpus = Corpus {
        objects: Vec::new(),
        loose: Vec::new(),
        raw: HashMap::new(),
    };
    for (bytes, raws) in objects {
        let refs: Vec<ChunkRef> = raws
            .iter()
            .map(|r| ChunkRef {
                digest: Digest::of(r),
                length: r.len() as u32,
            })
            .collect();
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let manifest = Manifest::new(
            refs.clone(),
            bytes.len() as u64,
            sha256,
            "application/octet-stream".into(),
        )
        .unwrap();
        let digest = store.put_manifest(manifest).await.unwrap();
        corpus.objects.push(Object {
            digest,
            bytes,
            chunks: refs.iter().map(|r| r.digest).collect(),
        });
        corpus
            .raw
            .extend(raws.into_iter().map(|r| (Digest::of(&r), r)));
    }
    for seed in 77.. {
        let loose = random_bytes(21 << 10, seed);
        store
            .put_chunks(vec![verified(&mut encoder, &loose)])
            .await
            .unwrap();
        corpus.loose.push(Digest::of(&loose));
        corpus.raw.insert(Digest::of(&loose), loose);
        let last = segment_files(data_dir).pop().unwrap();
        if chunk_records_of(&last).len() >= 3 {
            break;
        }
    }
    corpus
}

/// Checks that the store serves every object and chunk of `corpus` intact
/// except `lost`, which is missing, and the objects that name it.
async fn assert_only_missing(
    server: &TestServer,
    corpus: &Corpus,
    lost: Option<Digest>,
    case: &str,
) {
    let missing = server.store.find_missing(&corpus.all_chunks()).unwrap();
    assert_eq!(missing, lost.into_iter().collect::<Vec<_>>(), "{case}");
    let client = server.client().await;
    for o in &corpus.objects {
        let pulled = client.pull_to_vec(&o.digest).await;
        match lost {
            Some(l) if o.chunks.contains(&l) => match pulled {
                Err(ClientError::NotFound(msg)) => {
                    assert!(msg.contains(&l.to_string()), "{case}: {msg}")
                }
                other => panic!("{case}: expected the lost chunk to be missing, got {other:?}"),
            },
            _ => assert!(
                pulled.unwrap() == o.bytes,
                "{case}: object {} changed",
                o.digest
            ),
        }
    }
    let loose: Vec<(Digest, Vec<u8>)> = corpus
        .loose
        .iter()
        .filter(|d| Some(**d) != lost)
        .map(|d| (*d, corpus.raw[d].clone()))
        .collect();
    let store = server.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut decoder = ChunkDecoder::new().unwrap();
        for (digest, raw) in loose {
            let c = store.read_chunk(&digest).unwrap();
            let decoded = decoder
                .decode_verified(&digest, c.codec, c.raw_len, &c.data)
                .unwrap();
            assert!(decoded == raw);
        }
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------
// Damage in every field, at every position, then a rebuild.

#[derive(Clone, Copy, Debug)]
enum Field {
    Magic,
    Length,
    Payload,
    Crc,
}

impl Field {
    /// Offset of the byte to flip within record `r`.
    fn byte_of(self, r: &RecordAt) -> u64 {
        match self {
            Field::Magic => 0,
            Field::Length => 12,
            Field::Payload => HEADER_LEN + (r.len - HEADER_LEN) / 2,
            Field::Crc => 48,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Position {
    First,
    Middle,
    Last,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Segment {
    /// The first segment: full, never appended to again.
    Sealed,
    /// The last segment: the one the writer appends to.
    Open,
}

const FIELDS: [Field; 4] = [Field::Magic, Field::Length, Field::Payload, Field::Crc];
const POSITIONS: [Position; 3] = [Position::First, Position::Middle, Position::Last];

/// Fills a store, flips one byte of one chunk record, reopens the store
/// with an index rebuild and checks that only that chunk was lost.
async fn damage_one_record_and_rebuild(segment: Segment, position: Position, field: Field) {
    let case = format!("{field:?} of the {position:?} record of the {segment:?} segment");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_segments(false)).unwrap();
    let corpus = fill(&store, dir.path()).await;
    drop(store);

    let segments = segment_files(dir.path());
    assert!(
        segments.len() >= 3,
        "{case}: the corpus spans several segments"
    );
    let path = match segment {
        Segment::Sealed => segments[0].clone(),
        Segment::Open => segments.last().unwrap().clone(),
    };
    if segment == Segment::Sealed {
        assert!(records_of(&path).iter().all(|r| r.kind == CHUNK));
    }
    let chunks = chunk_records_of(&path);
    assert!(chunks.len() >= 3, "{case}: {chunks:?}");
    let victim = match position {
        Position::First => chunks[0],
        Position::Middle => chunks[chunks.len() / 2],
        Position::Last => *chunks.last().unwrap(),
    };
    let is_tail = segment == Segment::Open && matches!(position, Position::Last);
    if is_tail {
        assert_eq!(Some(&victim.digest), corpus.loose.last());
        assert_eq!(victim.offset + victim.len, file_len(&path), "{case}");
    }
    let victim_bytes = read_range(&path, victim.offset, victim.len);
    let lengths: Vec<u64> = segments.iter().map(|s| file_len(s)).collect();
    flip_byte(&path, victim.offset + field.byte_of(&victim));

    let store = Store::open(dir.path(), small_segments(true)).unwrap();
    let stats = store.stats();
    let server = serve_store(store).await;
    assert_only_missing(&server, &corpus, Some(victim.digest), &case).await;

    // What was stepped over is the damaged record, no more, no less, and
    // only a tail nothing valid follows was cut — after being copied aside.
    let new_lengths: Vec<u64> = segments.iter().map(|s| file_len(s)).collect();
    if is_tail {
        assert_eq!(
            (
                stats.recovery_skipped_records,
                stats.recovery_tail_bytes_cut
            ),
            (0, victim.len),
            "{case}: {stats:?}"
        );
        let mut expected = lengths.clone();
        *expected.last_mut().unwrap() -= victim.len;
        assert_eq!(new_lengths, expected, "{case}");
        let aside = quarantine_file(&path, victim.offset);
        let mut damaged = victim_bytes.clone();
        damaged[field.byte_of(&victim) as usize] ^= 0x40;
        assert!(std::fs::read(aside).unwrap() == damaged, "{case}");
    } else {
        assert_eq!(
            (
                stats.recovery_skipped_records,
                stats.recovery_skipped_bytes,
                stats.recovery_tail_bytes_cut
            ),
            (1, victim.len, 0),
            "{case}: {stats:?}"
        );
        assert_eq!(new_lengths, lengths, "{case}: no segment changed length");
    }
    assert_eq!(stats.manifests, OBJECTS as u64, "{case}");

    // The lost chunk, stored again, makes its object whole.
    let raw = corpus.raw[&victim.digest].clone();
    let mut encoder = ChunkEncoder::new(1).unwrap();
    let put = server
        .store
        .put_chunks(vec![verified(&mut encoder, &raw)])
        .await
        .unwrap();
    assert_eq!(put.stored, 1, "{case}");
    assert_only_missing(&server, &corpus, None, &case).await;
    server.stop().await;
}

/// The file a cut tail of `segment` at `offset` was copied to.
fn quarantine_file(segment: &Path, offset: u64) -> PathBuf {
    let name = segment.file_stem().unwrap().to_string_lossy();
    segment.with_file_name(format!("{name}.tail-{offset}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_any_field_of_a_sealed_segment_record_costs_only_that_chunk_after_a_rebuild()
 {
    for position in POSITIONS {
        for field in FIELDS {
            damage_one_record_and_rebuild(Segment::Sealed, position, field).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_any_field_of_an_open_segment_record_costs_only_that_chunk_after_a_rebuild()
 {
    for position in POSITIONS {
        for field in FIELDS {
            damage_one_record_and_rebuild(Segment::Open, position, field).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_counts_a_damaged_stretch_once_however_often_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_segments(false)).unwrap();
    let corpus = fill(&store, dir.path()).await;
    drop(store);
    let path = segment_files(dir.path())[1].clone();
    let victim = chunk_records_of(&path)[1];
    flip_byte(&path, victim.offset);

    let store = Store::open(dir.path(), small_segments(true)).unwrap();
    let rebuilt = settled_stats(&store).await;
    drop(store);
    let store = Store::open(dir.path(), small_segments(false)).unwrap();
    assert_eq!(
        settled_stats(&store).await,
        rebuilt,
        "a plain reopen finds nothing new"
    );
    let report = store.rebuild_index().await.unwrap();
    assert_eq!(
        (report.skipped_records, report.skipped_bytes),
        (1, victim.len)
    );
    assert_eq!(
        settled_stats(&store).await,
        rebuilt,
        "a second rebuild counts afresh"
    );
    let server = serve_store(store).await;
    assert_only_missing(&server, &corpus, Some(victim.digest), "reopened").await;
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Damage past the index's watermark, met by an ordinary open.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_at_the_end_of_the_last_segment_is_cut_at_open_and_copied_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_segments(false)).unwrap();
    let corpus = fill(&store, dir.path()).await;
    drop(store);
    let last = segment_files(dir.path()).last().unwrap().clone();
    let len = file_len(&last);
    // Half of a record, as a write cut short by a crash leaves it.
    let some = chunk_records_of(&last)[0];
    let torn = read_range(&last, some.offset, some.len / 2);
    append(&last, &torn);

    let store = Store::open(dir.path(), small_segments(false)).unwrap();
    let stats = store.stats();
    assert_eq!(stats.recovery_tail_bytes_cut, torn.len() as u64);
    assert_eq!(stats.recovery_skipped_records, 0);
    assert_eq!(file_len(&last), len);
    assert!(std::fs::read(quarantine_file(&last, len)).unwrap() == torn);

    // The writer appends where the cut left off: a new chunk is found by a
    // rebuild, with nothing stepped over.
    let mut encoder = ChunkEncoder::new(1).unwrap();
    let fresh = random_bytes(10 << 10, 4242);
    store
        .put_chunks(vec![verified(&mut encoder, &fresh)])
        .await
        .unwrap();
    let report = store.rebuild_index().await.unwrap();
    assert_eq!((report.skipped_records, report.bytes_truncated), (0, 0));
    assert!(store.contains_chunk(&Digest::of(&fresh)).unwrap());
    assert_eq!(
        store.stats().recovery_tail_bytes_cut,
        torn.len() as u64,
        "a rebuild keeps the count of bytes cut"
    );
    let server = serve_store(store).await;
    assert_only_missing(&server, &corpus, None, "after a torn write").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_of_zeros_before_valid_records_is_stepped_over_at_open_and_nothing_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_segments(false)).unwrap();
    let corpus = fill(&store, dir.path()).await;
    drop(store);
    let last = segment_files(dir.path()).last().unwrap().clone();
    // A crash can leave a block of zeros where data was due, with later
    // writes intact after it: here, a valid copy of the loose chunk.
    let loose = *chunk_records_of(&last).last().unwrap();
    let copy = read_range(&last, loose.offset, loose.len);
    append(&last, &[0u8; 4096]);
    append(&last, &copy);
    let len = file_len(&last);

    let store = Store::open(dir.path(), small_segments(false)).unwrap();
    let stats = store.stats();
    assert_eq!(
        (
            stats.recovery_skipped_records,
            stats.recovery_skipped_bytes,
            stats.recovery_tail_bytes_cut
        ),
        (1, 4096, 0)
    );
    assert_eq!(file_len(&last), len, "nothing is cut before a valid record");
    let server = serve_store(store).await;
    assert_only_missing(&server, &corpus, None, "after a hole").await;
    server.stop().await;

    // The index now points at the copy after the hole: rot in the
    // original costs nothing. And reopening counts the hole once, not again.
    flip_byte(&last, loose.offset + Field::Payload.byte_of(&loose));
    let store = Store::open(dir.path(), small_segments(false)).unwrap();
    assert_eq!(store.stats().recovery_skipped_records, 1);
    let server = serve_store(store).await;
    assert_only_missing(&server, &corpus, None, "after rot in the original").await;
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The real `strata serve`, damaged and restarted with `--rebuild-index`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_serve_with_rebuild_index_steps_over_a_damaged_header_and_serves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let client = server.client().await;
    let mut objects = Vec::new();
    for seed in 0..3 {
        let data = random_bytes(1 << 20, 300 + seed);
        let report = client
            .push(std::io::Cursor::new(data.clone()), "x", &Progress::new())
            .await
            .unwrap();
        objects.push((report.digest, data));
    }
    let middle = client.get_manifest(&objects[1].0).await.unwrap();
    let victim = middle.chunks()[middle.chunks().len() / 2].digest;
    drop(client);
    server.stop();

    let segment = &segment_files(dir.path())[0];
    let record = records_of(segment)
        .into_iter()
        .find(|r| r.kind == CHUNK && r.digest == victim)
        .unwrap();
    let len = file_len(segment);
    flip_byte(segment, record.offset); // the magic

    let server = ServerProcess::start(dir.path(), &["--rebuild-index"]);
    assert_eq!(file_len(segment), len, "damage in the middle cuts nothing");
    let client = server.client().await;
    assert!(client.pull_to_vec(&objects[0].0).await.unwrap() == objects[0].1);
    assert!(client.pull_to_vec(&objects[2].0).await.unwrap() == objects[2].1);
    match client.pull_to_vec(&objects[1].0).await {
        Err(ClientError::NotFound(msg)) => assert!(msg.contains(&victim.to_string()), "{msg}"),
        other => panic!("expected the damaged chunk to be missing, got {other:?}"),
    }
    let log = without_ansi_escapes(&server.log());
    assert!(log.contains("stepped over damaged bytes"), "{log}");
    assert!(log.contains(&format!("offset={}", record.offset)), "{log}");
    assert!(log.contains(&format!("bytes={}", record.len)), "{log}");
    // `strata stat` shows the operator what was stepped over.
    let stat = strata_tests::strata(dir.path())
        .args(["stat", "--json", "--server", &server.url])
        .output()
        .unwrap();
    assert!(
        stat.status.success(),
        "{}",
        String::from_utf8_lossy(&stat.stderr)
    );
    let figures: serde_json::Value = serde_json::from_slice(&stat.stdout).unwrap();
    assert_eq!(figures["recovery_skipped_records"], 1, "{figures}");
    assert_eq!(figures["recovery_skipped_bytes"], record.len, "{figures}");
    assert_eq!(figures["recovery_tail_bytes_cut"], 0, "{figures}");

    // Pushing the object again restores it.
    let again = client
        .push(
            std::io::Cursor::new(objects[1].1.clone()),
            "x",
            &Progress::new(),
        )
        .await
        .unwrap();
    assert_eq!(again.digest, objects[1].0);
    assert_eq!(again.stored_chunks, 1);
    assert!(client.pull_to_vec(&objects[1].0).await.unwrap() == objects[1].1);
    drop(client);
    server.stop();
}

/// `log` without terminal colour codes, which the server's log may carry
/// around field names.
fn without_ansi_escapes(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Repair: rot found on read or by scrub leaves the index; a push heals it.

/// Pushes `data` as a file and returns its digest and chunk digests, once
/// the background manifest verifier has read it: the verifier reads every
/// chunk, so a test that rots one afterwards must not race it.
async fn push_file(
    server: &TestServer,
    client: &Client,
    dir: &Path,
    data: &[u8],
) -> (Digest, Vec<Digest>, u64) {
    let path = dir.join("input");
    std::fs::write(&path, data).unwrap();
    let report = client
        .push_file(std::fs::File::open(&path).unwrap(), "x", &Progress::new())
        .await
        .unwrap();
    let manifest = client.get_manifest(&report.digest).await.unwrap();
    let chunks = manifest.chunks().iter().map(|c| c.digest).collect();
    server.store.wait_for_verification().await;
    (report.digest, chunks, report.stored_chunks)
}

/// Flips a byte in the middle of the stored bytes of one of `chunks`.
fn rot_one_chunk(data_dir: &Path, chunks: &[Digest]) -> Digest {
    let segment = &segment_files(data_dir)[0];
    let record = chunk_records_of(segment)
        .into_iter()
        .filter(|r| chunks.contains(&r.digest))
        .nth(chunks.len() / 2)
        .unwrap();
    flip_byte(segment, record.offset + Field::Payload.byte_of(&record));
    record.digest
}

async fn find_missing(url: &str, digests: &[Digest]) -> Vec<Digest> {
    let mut content = ContentStoreClient::connect(url.to_owned()).await.unwrap();
    let response = content
        .find_missing(FindMissingRequest {
            digests: digests.iter().map(Digest::to_vec).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    response
        .missing
        .iter()
        .map(|d| Digest::from_slice(d).unwrap())
        .collect()
}

async fn assert_pull_is_integrity_error_naming(client: &Client, object: &Digest, rotten: &Digest) {
    match client.pull_to_vec(object).await {
        Err(ClientError::Integrity(msg)) => assert!(msg.contains(&rotten.to_string()), "{msg}"),
        other => panic!("expected an integrity error naming {rotten}, got {other:?}"),
    }
}

fn rotten_and_chunks(stats: StoreStats) -> (u64, u64) {
    (stats.rotten_chunks, stats.chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_found_rotten_on_pull_is_reported_missing_and_healed_by_pushing_the_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = TestServer::start(&data_dir).await;
    let client = server.client().await;
    let data = random_bytes(2 << 20, 51);
    let (object, chunks, _) = push_file(&server, &client, dir.path(), &data).await;
    let held = server.store.stats().chunks;
    let rotten = rot_one_chunk(&data_dir, &chunks);

    // The pull fails as DATA_LOSS naming the chunk, and at once the chunk
    // is gone from the index: the next FindMissing reports it.
    assert_pull_is_integrity_error_naming(&client, &object, &rotten).await;
    assert_eq!(find_missing(&server.url, &chunks).await, vec![rotten]);
    assert_eq!(rotten_and_chunks(server.store.stats()), (1, held - 1));
    // It stays refused, never served, across a restart.
    assert_pull_is_integrity_error_naming(&client, &object, &rotten).await;
    drop(client);
    server.stop().await;
    let server = TestServer::start(&data_dir).await;
    let client = server.client().await;
    assert_pull_is_integrity_error_naming(&client, &object, &rotten).await;
    assert_eq!(find_missing(&server.url, &chunks).await, vec![rotten]);

    // An honest re-push sends that chunk, and only it; the object is whole.
    let (again, _, stored) = push_file(&server, &client, dir.path(), &data).await;
    assert_eq!((again, stored), (object, 1));
    assert!(client.pull_to_vec(&object).await.unwrap() == data);
    assert!(find_missing(&server.url, &chunks).await.is_empty());
    assert_eq!(rotten_and_chunks(server.store.stats()), (0, held));
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_found_rotten_by_scrub_is_reported_missing_and_healed_by_pushing_the_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = TestServer::start(&data_dir).await;
    let client = server.client().await;
    let data = random_bytes(2 << 20, 52);
    let (object, chunks, _) = push_file(&server, &client, dir.path(), &data).await;
    let held = server.store.stats().chunks;
    let rotten = rot_one_chunk(&data_dir, &chunks);

    let mut admin = AdminClient::connect(server.url.clone()).await.unwrap();
    let scrub = admin.scrub(ScrubRequest {}).await.unwrap().into_inner();
    assert_eq!(scrub.chunks_checked, held);
    assert_eq!(scrub.corrupt, vec![rotten.to_vec()]);
    assert_eq!(find_missing(&server.url, &chunks).await, vec![rotten]);
    assert_pull_is_integrity_error_naming(&client, &object, &rotten).await;
    // A second scrub still names it: it is lost until someone pushes it.
    let scrub = admin.scrub(ScrubRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (scrub.chunks_checked, scrub.corrupt),
        (held - 1, vec![rotten.to_vec()])
    );

    let (again, _, stored) = push_file(&server, &client, dir.path(), &data).await;
    assert_eq!((again, stored), (object, 1));
    assert!(client.pull_to_vec(&object).await.unwrap() == data);
    let scrub = admin.scrub(ScrubRequest {}).await.unwrap().into_inner();
    assert_eq!((scrub.chunks_checked, scrub.corrupt.len()), (held, 0));

    // The healed copy outlives a rebuild, which steps over the rotten one.
    let report = server.store.rebuild_index().await.unwrap();
    assert_eq!(report.skipped_records, 1);
    assert!(client.pull_to_vec(&object).await.unwrap() == data);
    assert_eq!(rotten_and_chunks(server.store.stats()), (0, held));
    drop(client);
    server.stop().await;
}

/// Polls the store's figures until `done` holds; fails after a minute.
async fn wait_for_stats(
    store: &Store,
    what: &str,
    done: impl Fn(&StoreStats) -> bool,
) -> StoreStats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let stats = store.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_found_rotten_by_the_background_scrub_is_reported_missing_and_healed_by_pushing_again()
 {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let store = Store::open(
        &data_dir,
        StoreConfig {
            scrub_interval: Some(std::time::Duration::from_millis(200)),
            scrub_bytes_per_sec: 64 << 20,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let server = serve_store(store).await;
    let client = server.client().await;
    let data = random_bytes(2 << 20, 53);
    let (object, chunks, _) = push_file(&server, &client, dir.path(), &data).await;
    let held = server.store.stats().chunks;
    let rotten = rot_one_chunk(&data_dir, &chunks);

    // No one pulls or asks for a scrub: the background scrub finds it and
    // drops it, so FindMissing reports it.
    let stats = wait_for_stats(&server.store, "the background scrub to find the rot", |s| {
        s.scrub_rotten_found >= 1
    })
    .await;
    assert_eq!(stats.scrub_rotten_found, 1, "{stats:?}");
    assert_eq!(find_missing(&server.url, &chunks).await, vec![rotten]);
    assert_eq!(rotten_and_chunks(server.store.stats()), (1, held - 1));
    assert_pull_is_integrity_error_naming(&client, &object, &rotten).await;

    // An honest re-push sends that chunk, and only it; the object is whole.
    let (again, _, stored) = push_file(&server, &client, dir.path(), &data).await;
    assert_eq!((again, stored), (object, 1));
    assert!(client.pull_to_vec(&object).await.unwrap() == data);
    assert!(find_missing(&server.url, &chunks).await.is_empty());
    assert_eq!(rotten_and_chunks(server.store.stats()), (0, held));

    // Two more whole passes (the first may have begun before the heal):
    // the healed copy is intact, and nothing else is found.
    let passes = server.store.stats().scrub_passes;
    let stats = wait_for_stats(&server.store, "two more passes", |s| {
        s.scrub_passes >= passes + 2
    })
    .await;
    assert_eq!(stats.scrub_rotten_found, 1, "{stats:?}");
    assert!(stats.scrub_chunks_checked >= 2 * held, "{stats:?}");
    assert!(stats.scrub_bytes_read > 0, "{stats:?}");
    assert_eq!(rotten_and_chunks(stats), (0, held));
    drop(client);
    server.stop().await;
}
