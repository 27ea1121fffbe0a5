//! Chunking throughput: the client's FastCDC + BLAKE3 pass
//! (`strata_client::chunk_all` with the default 64 KiB-average config) over
//! 64 MiB of realistic data, against same-run baselines for its parts —
//! FastCDC alone, FastCDC + per-chunk BLAKE3 over the buffer in place (no
//! block copies), BLAKE3 of the whole buffer on one thread — and SHA-256 of
//! the whole buffer (the client's whole-object hash). `cut_points` (FastCDC
//! of one buffer on every core, merged into the serial chain) runs beside
//! `cut_points_serial` on the same 4 MiB blocks the client reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use sha2::{Digest as _, Sha256};
use strata_benches::realistic_corpus;
use strata_client::{BLOCK_BYTES, ChunkerConfig, chunk_all, cut_points, cut_points_serial};
use strata_proto::Digest;

const CORPUS_BYTES: usize = 64 << 20;
const SEED: u64 = 0x5742_a7a0;

fn chunking(c: &mut Criterion) {
    let corpus = realistic_corpus(CORPUS_BYTES, SEED);
    let config = ChunkerConfig::default();

    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(corpus.len() as u64));
    // One iteration is tens of milliseconds: flat sampling keeps the
    // iteration count (and run time) small.
    g.sampling_mode(SamplingMode::Flat);

    g.bench_function("fastcdc+blake3 (chunk_all)", |b| {
        b.iter(|| chunk_all(black_box(&corpus), config).unwrap().len());
    });
    g.bench_function("fastcdc alone (baseline)", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(
                black_box(&corpus),
                config.min_size,
                config.avg_size,
                config.max_size,
            )
            .count()
        });
    });
    // The same cuts and hashes over the buffer in place: what chunk_all
    // costs beyond them is its block copies and allocations.
    g.bench_function("fastcdc+blake3 in place (baseline)", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(
                black_box(&corpus),
                config.min_size,
                config.avg_size,
                config.max_size,
            )
            .map(|cut| Digest::of(&corpus[cut.offset..cut.offset + cut.length]))
            .collect::<Vec<_>>()
        });
    });
    // Cut points only, block by block as the client cuts: serial, then on
    // every core (the client's default).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    g.bench_function("cut_points_serial per 4 MiB block (baseline)", |b| {
        b.iter(|| {
            corpus
                .chunks(BLOCK_BYTES)
                .map(|block| cut_points_serial(black_box(block), config).len())
                .sum::<usize>()
        });
    });
    g.bench_function(
        format!("cut_points per 4 MiB block, {cores} workers"),
        |b| {
            b.iter(|| {
                corpus
                    .chunks(BLOCK_BYTES)
                    .map(|block| cut_points(black_box(block), config, cores).len())
                    .sum::<usize>()
            });
        },
    );
    g.bench_function("b3 single thread (baseline)", |b| {
        b.iter(|| blake3::hash(black_box(&corpus)));
    });
    g.bench_function("sha256 (baseline)", |b| {
        b.iter(|| Sha256::digest(black_box(&corpus)));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion_config();
    targets = chunking
}
criterion_main!(benches);
