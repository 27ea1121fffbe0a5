//! Chunk codec throughput over 64 MiB of realistic data, pre-chunked with the
//! default FastCDC config: `ChunkEncoder` (zstd level 1, or raw when it does
//! not pay) chunk by chunk, `ChunkDecoder::decode_verified` (decompress
//! plus BLAKE3 check) chunk by chunk, and `decode_verified_into` (the pull's
//! path: each chunk decoded straight into its place in one object buffer). Same-run baselines: one
//! `zstd::bulk::compress` level 1 call over the whole buffer, and one
//! `zstd::bulk::decompress` of its output, each also with the context and
//! output buffer reused (as the chunk codec does), which separates zstd's own
//! speed from the cost of a fresh 64 MiB buffer per call. Throughput is in
//! raw bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use strata_benches::realistic_corpus;
use strata_client::{ChunkerConfig, chunk_all};
use strata_proto::{ChunkDecoder, ChunkEncoder, Codec, Digest};

const CORPUS_BYTES: usize = 64 << 20;
const SEED: u64 = 0x5742_a7a0;
const LEVEL: i32 = 1;

/// A chunk as it travels: digest, codec, raw length, stored bytes.
struct Encoded {
    digest: Digest,
    codec: Codec,
    raw_len: u32,
    stored: Vec<u8>,
}

fn compression(c: &mut Criterion) {
    let corpus = realistic_corpus(CORPUS_BYTES, SEED);
    let chunks = chunk_all(&corpus, ChunkerConfig::default()).unwrap();

    let mut encoder = ChunkEncoder::new(LEVEL).unwrap();
    let encoded: Vec<Encoded> = chunks
        .iter()
        .map(|ch| {
            let (codec, stored) = encoder.encode(&ch.data);
            Encoded {
                digest: ch.digest,
                codec,
                raw_len: ch.data.len() as u32,
                stored: stored.to_vec(),
            }
        })
        .collect();
    let whole = zstd::bulk::compress(&corpus, LEVEL).unwrap();
    let per_chunk: usize = encoded.iter().map(|e| e.stored.len()).sum();
    let raw_chunks = encoded.iter().filter(|e| e.codec == Codec::Raw).count();
    eprintln!(
        "corpus {} MiB, {} chunks ({} kept raw); ratio per chunk {:.2}x, whole buffer {:.2}x",
        corpus.len() >> 20,
        chunks.len(),
        raw_chunks,
        corpus.len() as f64 / per_chunk as f64,
        corpus.len() as f64 / whole.len() as f64,
    );

    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(corpus.len() as u64));
    g.sampling_mode(SamplingMode::Flat);

    g.bench_function("ChunkEncoder zstd-1 per chunk", |b| {
        b.iter(|| {
            let mut stored = 0usize;
            for ch in &chunks {
                stored += encoder.encode(black_box(&ch.data)).1.len();
            }
            stored
        });
    });
    g.bench_function("zstd::bulk::compress zstd-1 whole buffer (baseline)", |b| {
        b.iter(|| {
            zstd::bulk::compress(black_box(&corpus), LEVEL)
                .unwrap()
                .len()
        });
    });
    // The same single call without a fresh context and 64 MiB output buffer
    // per call: ChunkEncoder reuses both.
    let mut compressor = zstd::bulk::Compressor::new(LEVEL).unwrap();
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(corpus.len()));
    g.bench_function(
        "zstd-1 compress whole buffer, reused ctx+buffer (baseline)",
        |b| {
            b.iter(|| {
                out.clear();
                compressor
                    .compress_to_buffer(black_box(&corpus[..]), &mut out)
                    .unwrap()
            });
        },
    );

    let mut decoder = ChunkDecoder::new().unwrap();
    g.bench_function("ChunkDecoder decode_verified per chunk", |b| {
        b.iter(|| {
            let mut raw = 0usize;
            for e in &encoded {
                raw += decoder
                    .decode_verified(&e.digest, e.codec, e.raw_len, black_box(&e.stored))
                    .unwrap()
                    .len();
            }
            raw
        });
    });
    // The pull's path: chunks decoded in place into one buffer of the
    // object's bytes, no per-chunk buffer and no copy out.
    let mut assembled = vec![0u8; corpus.len()];
    g.bench_function("ChunkDecoder decode_verified_into one buffer", |b| {
        b.iter(|| {
            let mut at = 0usize;
            for e in &encoded {
                let end = at + e.raw_len as usize;
                decoder
                    .decode_verified_into(
                        &e.digest,
                        e.codec,
                        black_box(&e.stored),
                        &mut assembled[at..end],
                    )
                    .unwrap();
                at = end;
            }
            at
        });
    });
    g.bench_function("zstd::bulk::decompress whole buffer (baseline)", |b| {
        b.iter(|| {
            zstd::bulk::decompress(black_box(&whole), corpus.len())
                .unwrap()
                .len()
        });
    });
    let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
    let mut out = Vec::with_capacity(corpus.len());
    g.bench_function(
        "zstd decompress whole buffer, reused ctx+buffer (baseline)",
        |b| {
            b.iter(|| {
                out.clear();
                decompressor
                    .decompress_to_buffer(black_box(&whole[..]), &mut out)
                    .unwrap()
            });
        },
    );
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion_config();
    targets = compression
}
criterion_main!(benches);
