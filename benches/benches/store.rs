//! Store engine throughput (`strata_server::Store`, opened in a temporary
//! directory with `FsyncPolicy::Never`, so the numbers are the engine's and
//! the page cache's, not the disk's):
//! - `put_chunks` of batches of new 64 KiB verified chunks (zstd-1 encoded
//!   and verified outside the timing), against appending such a batch's
//!   stored bytes to a plain file; throughput is in raw (logical) bytes;
//! - `read_chunk` of every chunk of a 64 MiB realistic corpus in a fixed
//!   random order from a 16k-chunk store, against `pread`s of the same bytes
//!   from a plain file;
//! - `find_missing` over 1024 digests, half held and half not (the index
//!   lookup), against probing an in-memory `HashSet`;
//! - canonical `Manifest` encode, decode and digest of a 16k-chunk manifest,
//!   against copying its encoding;
//! - `lookup_steps` of 1024 step keys, half recorded, from a store of 16k
//!   step results (decoding each hit), against `find_missing` of as many
//!   chunk digests (a bare index probe).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use strata_benches::{random_bytes, realistic_corpus};
use strata_client::{ChunkerConfig, chunk_all};
use strata_proto::v1::Provenance;
use strata_proto::{ChunkDecoder, ChunkEncoder, ChunkRef, Digest, Manifest, StepResult};
use strata_server::store::VerifiedChunk;
use strata_server::{FsyncPolicy, Store, StoreConfig};
use tokio::runtime::Runtime;

const CORPUS_BYTES: usize = 64 << 20;
const SEED: u64 = 0x5742_a7a0;
/// New chunks per `put_chunks` call, and their size.
const PUT_BATCH: usize = 64;
const PUT_CHUNK_BYTES: usize = 64 << 10;
/// Index entries of the read-side store (a 1 GiB object's worth of 64 KiB
/// chunks), and chunks of the benchmark manifest.
const INDEX_ENTRIES: usize = 16 << 10;
const LOOKUPS: usize = 1024;

/// SplitMix64's output function: a cheap, fixed shuffle key.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn open_store(dir: &std::path::Path) -> Store {
    let config = StoreConfig {
        fsync: FsyncPolicy::Never,
        ..Default::default()
    };
    Store::open(dir, config).unwrap()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap()
}

/// Encodes and verifies `raw` as a client upload would arrive at the store;
/// also returns the stored bytes.
fn verified(enc: &mut ChunkEncoder, dec: &mut ChunkDecoder, raw: &[u8]) -> (VerifiedChunk, Bytes) {
    let digest = Digest::of(raw);
    let (codec, stored) = enc.encode(raw);
    let stored = Bytes::copy_from_slice(stored);
    let chunk =
        VerifiedChunk::verify(dec, digest, codec, raw.len() as u32, stored.clone()).unwrap();
    (chunk, stored)
}

/// Makes batches of never-seen chunks: windows of the corpus with a running
/// counter written over their first bytes.
struct NewChunks<'a> {
    corpus: &'a [u8],
    counter: u64,
    enc: ChunkEncoder,
    dec: ChunkDecoder,
}

impl NewChunks<'_> {
    fn raw(&mut self) -> Vec<u8> {
        self.counter += 1;
        let span = (self.corpus.len() - PUT_CHUNK_BYTES) as u64;
        let at = (mix(self.counter) % span) as usize;
        let mut raw = self.corpus[at..at + PUT_CHUNK_BYTES].to_vec();
        raw[..8].copy_from_slice(&self.counter.to_le_bytes());
        raw
    }

    /// A batch of new verified chunks, and their stored bytes end to end.
    fn batch(&mut self) -> (Vec<VerifiedChunk>, Vec<u8>) {
        let mut stored = Vec::with_capacity(PUT_BATCH * PUT_CHUNK_BYTES);
        let chunks = (0..PUT_BATCH)
            .map(|_| {
                let raw = self.raw();
                let (chunk, bytes) = verified(&mut self.enc, &mut self.dec, &raw);
                stored.extend_from_slice(&bytes);
                chunk
            })
            .collect();
        (chunks, stored)
    }
}

fn put_chunks(c: &mut Criterion, corpus: &[u8]) {
    let rt = runtime();
    let store_dir = tempfile::tempdir().unwrap();
    let store = open_store(store_dir.path());
    let mut source = NewChunks {
        corpus,
        counter: 0,
        enc: ChunkEncoder::new(1).unwrap(),
        dec: ChunkDecoder::new().unwrap(),
    };

    let mut g = c.benchmark_group("store/put_chunks");
    g.throughput(Throughput::Bytes((PUT_BATCH * PUT_CHUNK_BYTES) as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("put_chunks 64 x 64 KiB new chunks", |b| {
        b.iter_batched(
            || source.batch().0,
            |batch| rt.block_on(store.put_chunks(batch)).unwrap(),
            BatchSize::PerIteration,
        );
    });
    // Every put wrote all its chunks: none was a duplicate.
    assert_eq!(store.stats().chunks, source.counter);
    // Gigabytes were just written without a sync: deleting them discards
    // their dirty pages, so the baseline does not pay for their writeback.
    drop(store);
    drop(store_dir);
    let plain_dir = tempfile::tempdir().unwrap();
    let mut plain = File::create(plain_dir.path().join("plain")).unwrap();
    // The same setup (so the same pauses between writes, in which the
    // kernel writes back), then one write of the batch's stored bytes, as the
    // store's group commit does.
    g.bench_function(
        "plain file append of the batch's stored bytes (baseline)",
        |b| {
            b.iter_batched(
                || source.batch().1,
                |stored| {
                    plain.write_all(&stored).unwrap();
                    stored // freed outside the timing
                },
                BatchSize::PerIteration,
            );
        },
    );
    g.finish();
}

/// A store holding the corpus's chunks plus random filler up to
/// [`INDEX_ENTRIES`] chunks; returns the corpus chunks' digests and stored
/// bytes, each once, in the order they were written.
fn filled_store(
    rt: &Runtime,
    dir: &std::path::Path,
    corpus: &[u8],
) -> (Store, Vec<(Digest, Bytes)>) {
    let store = open_store(dir);
    let mut enc = ChunkEncoder::new(1).unwrap();
    let mut dec = ChunkDecoder::new().unwrap();
    let mut seen = HashSet::new();
    let mut held = Vec::new();
    let mut batch = Vec::new();
    for ch in chunk_all(corpus, ChunkerConfig::default()).unwrap() {
        if seen.insert(ch.digest) {
            let (v, stored) = verified(&mut enc, &mut dec, &ch.data);
            held.push((ch.digest, stored));
            batch.push(v);
        }
    }
    for i in held.len()..INDEX_ENTRIES {
        batch.push(verified(&mut enc, &mut dec, &random_bytes(4 << 10, i as u64)).0);
    }
    for part in batch.chunks(PUT_BATCH) {
        rt.block_on(store.put_chunks(part.to_vec())).unwrap();
    }
    assert_eq!(store.stats().chunks, INDEX_ENTRIES as u64);
    (store, held)
}

fn read_and_lookup(c: &mut Criterion, corpus: &[u8]) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (store, held) = filled_store(&rt, &dir.path().join("store"), corpus);

    // Reads: every corpus chunk once, in a fixed random order.
    let mut order: Vec<usize> = (0..held.len()).collect();
    order.sort_by_key(|&i| mix(i as u64 ^ SEED));
    let stored_bytes: usize = held.iter().map(|(_, s)| s.len()).sum();

    // The baseline file: the same stored bytes, in the same write order.
    let plain = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("plain"))
        .unwrap();
    let mut offsets = Vec::with_capacity(held.len());
    let mut at = 0u64;
    for (_, s) in &held {
        plain.write_all_at(s, at).unwrap();
        offsets.push(at);
        at += s.len() as u64;
    }

    let mut g = c.benchmark_group("store/read_chunk");
    g.throughput(Throughput::Bytes(stored_bytes as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function(
        format!("read_chunk x{} random order (stored bytes)", held.len()),
        |b| {
            b.iter(|| {
                let mut n = 0usize;
                for &i in &order {
                    n += store.read_chunk(black_box(&held[i].0)).unwrap().data.len();
                }
                n
            });
        },
    );
    g.bench_function(
        "pread of the same bytes from a plain file (baseline)",
        |b| {
            b.iter(|| {
                let mut n = 0usize;
                for &i in &order {
                    let mut buf = vec![0u8; held[i].1.len()];
                    plain.read_exact_at(&mut buf, offsets[i]).unwrap();
                    n += black_box(buf).len();
                }
                n
            });
        },
    );
    g.finish();

    // Lookups: half held (corpus chunks), half never stored, shuffled.
    let mut lookups: Vec<Digest> = (0..LOOKUPS / 2)
        .map(|i| held[order[i % order.len()]].0)
        .chain((0..LOOKUPS / 2).map(|i| Digest::of(&(i as u64 + (1 << 40)).to_le_bytes())))
        .collect();
    lookups.sort_by_key(|d| mix(u64::from_le_bytes(d.as_bytes()[..8].try_into().unwrap())));
    let expected_missing = store.find_missing(&lookups).unwrap().len();
    assert!(
        (LOOKUPS / 2..LOOKUPS).contains(&expected_missing),
        "{expected_missing} missing"
    );
    let in_memory: HashSet<Digest> = held.iter().map(|(d, _)| *d).collect();

    let mut g = c.benchmark_group("store/find_missing");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function("find_missing 1024 digests, half held", |b| {
        b.iter(|| store.find_missing(black_box(&lookups)).unwrap().len());
    });
    g.bench_function("HashSet probe of the same digests (baseline)", |b| {
        b.iter(|| {
            black_box(&lookups)
                .iter()
                .filter(|d| !in_memory.contains(*d))
                .count()
        });
    });
    g.finish();
    drop(store);
}

fn manifest(c: &mut Criterion) {
    let chunks: Vec<ChunkRef> = (0..INDEX_ENTRIES as u64)
        .map(|i| ChunkRef {
            digest: Digest::of(&i.to_le_bytes()),
            length: (16 << 10) + (mix(i) % (240 << 10)) as u32,
        })
        .collect();
    let total = chunks.iter().map(|c| u64::from(c.length)).sum();
    let m = Manifest::new(
        chunks,
        total,
        [0x5a; 32],
        "application/vnd.oci.image.layer.v1.tar".into(),
    )
    .unwrap();
    let encoded = m.encode();

    let mut g = c.benchmark_group("store/manifest_16k_chunks");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("encode", |b| b.iter(|| black_box(&m).encode()));
    g.bench_function("decode", |b| {
        b.iter(|| Manifest::decode(black_box(&encoded)).unwrap())
    });
    g.bench_function("digest (encode + blake3)", |b| {
        b.iter(|| black_box(&m).digest())
    });
    g.bench_function("copy of the encoding (baseline)", |b| {
        b.iter(|| black_box(&encoded).to_vec())
    });
    g.finish();
}

fn lookup_steps(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let rt = runtime();
    let key = |i: usize| Digest::of(format!("step {i}").as_bytes());
    let result = StepResult {
        layer: None,
        config: br#"{"env":["PATH=/usr/bin:/bin"],"workdir":"/app"}"#.to_vec(),
        provenance: Provenance {
            builder: "strata bench".into(),
            instruction: "RUN make".into(),
            key_inputs: "strata-step-key-v1\nparent b3:...\n".repeat(8),
            ..Default::default()
        },
        seal: None,
    };
    let signer = strata_proto::SigningKey::from_seed(&[1; 32]).unwrap();
    rt.block_on(async {
        for i in 0..INDEX_ENTRIES {
            let mut signed = result.clone();
            signed.sign(&key(i), &signer);
            store.record_step(key(i), signed).await.unwrap();
        }
    });
    let trusted = [signer.public_key()];
    let mut keys: Vec<Digest> = (0..LOOKUPS)
        .map(|i| {
            if i % 2 == 0 {
                key(i * 7)
            } else {
                key(INDEX_ENTRIES + i)
            }
        })
        .collect();
    keys.sort_by_key(|d| mix(u64::from_le_bytes(d.as_bytes()[..8].try_into().unwrap())));
    let hits = store
        .lookup_steps(&keys, &trusted)
        .unwrap()
        .iter()
        .flatten()
        .count();
    assert_eq!(hits, LOOKUPS / 2);

    let mut g = c.benchmark_group("store/lookup_steps");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    g.bench_function("lookup_steps 1024 keys, half recorded", |b| {
        b.iter(|| {
            store
                .lookup_steps(black_box(&keys), &trusted)
                .unwrap()
                .len()
        });
    });
    g.bench_function("find_missing of as many digests (baseline)", |b| {
        b.iter(|| store.find_missing(black_box(&keys)).unwrap().len());
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let corpus = realistic_corpus(CORPUS_BYTES, SEED);
    put_chunks(c, &corpus);
    read_and_lookup(c, &corpus);
    manifest(c);
    lookup_steps(c);
}

criterion_group! {
    name = benches;
    config = common::criterion_config();
    targets = store
}
criterion_main!(benches);
