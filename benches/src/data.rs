//! Deterministic bytes for benchmarks: a small PRNG, incompressible noise,
//! and [`realistic_corpus`], which looks like a container layer or a build
//! output tree.
//!
//! Throughput of chunking, compression and the store depends heavily on what
//! the bytes look like: all-zero input compresses absurdly well, pure noise
//! not at all, and neither resembles a build artifact. The realistic corpus
//! mixes text-like runs (source, configs), structured binary tables,
//! incompressible runs (already-compressed assets) and repeated blocks
//! (duplicated files, vendored copies); zstd level 1 shrinks it by about
//! 2.2x (a unit test keeps it between 1.5x and 5x).
//!
//! Everything is generated from a seed, so every run and every machine
//! benchmarks the same bytes. No I/O, no external randomness.

/// A tiny deterministic PRNG (SplitMix64): fast, good enough for test data,
/// and stable across platforms and crate versions.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5eed_da7a_c0de_f00d)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo)
    }

    /// Skewed towards small values (roughly Zipf-like): a uniform pick below
    /// a uniform bound.
    pub(crate) fn skewed(&mut self, n: usize) -> usize {
        let bound = self.below(n) + 1;
        self.below(bound)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
    }
}

/// `len` uniformly random (incompressible) bytes, the same for the same seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Rng::new(seed).fill(&mut out);
    out
}

/// The kinds of run a corpus is made of, with their share of picks.
const TEXT_WEIGHT: usize = 45;
const TABLE_WEIGHT: usize = 20;
const RANDOM_WEIGHT: usize = 20;
const REPEAT_WEIGHT: usize = 15;

/// Runs are "files" of 4 KiB to 256 KiB.
const MIN_RUN: usize = 4 << 10;
const MAX_RUN: usize = 256 << 10;

/// A repeated block is copied from within this distance back: some copies
/// fall inside zstd's window, others only content-defined chunking can find.
const REPEAT_DISTANCE: usize = 8 << 20;

/// `len` bytes resembling a build artifact or container layer, the same for
/// the same seed: text-like runs, binary tables, random runs and repeats of
/// earlier blocks, in runs of 4 KiB to 256 KiB. zstd level 1 compresses it
/// about 2.2x; content-defined chunking finds some duplicate chunks.
pub fn realistic_corpus(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let vocabulary = vocabulary(&mut rng, 4096);
    let mut out = Vec::with_capacity(len + MAX_RUN);
    while out.len() < len {
        let run = rng.range(MIN_RUN, MAX_RUN + 1);
        let pick = rng.below(TEXT_WEIGHT + TABLE_WEIGHT + RANDOM_WEIGHT + REPEAT_WEIGHT);
        if pick < TEXT_WEIGHT {
            push_text(&mut rng, &vocabulary, &mut out, run);
        } else if pick < TEXT_WEIGHT + TABLE_WEIGHT {
            push_table(&mut rng, &mut out, run);
        } else if pick < TEXT_WEIGHT + TABLE_WEIGHT + RANDOM_WEIGHT || out.len() < MAX_RUN {
            let start = out.len();
            out.resize(start + run, 0);
            rng.fill(&mut out[start..]);
        } else {
            push_repeat(&mut rng, &mut out, run);
        }
    }
    out.truncate(len);
    out
}

/// Identifier-like words of 2 to 12 lowercase letters (with an occasional
/// underscore or digit), letters skewed the way English text is.
fn vocabulary(rng: &mut Rng, words: usize) -> Vec<Vec<u8>> {
    const LETTERS: &[u8] = b"etaoinshrdlucmfwypvbgkjqxz_0123456789";
    (0..words)
        .map(|_| {
            let n = rng.range(2, 13);
            (0..n).map(|_| LETTERS[rng.skewed(LETTERS.len())]).collect()
        })
        .collect()
}

/// Source-code-like text: common words much more often than rare ones,
/// punctuation, line breaks with indentation, and some numbers.
fn push_text(rng: &mut Rng, vocabulary: &[Vec<u8>], out: &mut Vec<u8>, run: usize) {
    const PUNCT: &[&[u8]] = &[
        b" ", b" ", b" ", b" ", b", ", b". ", b"(", b") ", b" = ", b"::", b"; ", b"{ ", b"} ",
        b"\"", b"->", b": ",
    ];
    let end = out.len() + run;
    while out.len() < end {
        let common = rng.skewed(vocabulary.len()) + 1;
        out.extend_from_slice(&vocabulary[rng.skewed(common)]);
        match rng.below(32) {
            0..=2 => {
                out.push(b'\n');
                let indent = rng.below(5) * 4;
                out.resize(out.len() + indent, b' ');
                // Code repeats itself: re-use a recent phrase.
                let span = rng.range(16, 96);
                let recent = out.len().min(4096);
                if rng.below(2) == 0 && recent > span {
                    let from = out.len() - rng.range(span, recent);
                    out.extend_from_within(from..from + span);
                }
            }
            3 => {
                let n = rng.next_u64() % 100_000;
                out.extend_from_slice(format!(" {n} ").as_bytes());
            }
            _ => out.extend_from_slice(PUNCT[rng.below(PUNCT.len())]),
        }
    }
    out.truncate(end);
}

/// Binary-table-like data (symbol tables, relocation entries, metadata):
/// 24-byte records of an increasing offset, a small length, a flag from a
/// few values and a "pointer" from a small set.
fn push_table(rng: &mut Rng, out: &mut Vec<u8>, run: usize) {
    let end = out.len() + run;
    let pointers: Vec<u64> = (0..64)
        .map(|_| rng.next_u64() & 0x0000_7fff_ffff_fff0)
        .collect();
    let stride = 1 + rng.below(256) as u64;
    let mut offset = rng.next_u64() & 0xffff_ff00;
    while out.len() < end {
        offset += stride * (1 + rng.below(4) as u64);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(rng.skewed(4096) as u32).to_le_bytes());
        out.extend_from_slice(&[1u32, 2, 4, 0x11][rng.below(4)].to_le_bytes());
        out.extend_from_slice(&pointers[rng.skewed(pointers.len())].to_le_bytes());
    }
    out.truncate(end);
}

/// A copy of an earlier block; half the copies get a few bytes changed, like
/// a file rebuilt with a different timestamp.
fn push_repeat(rng: &mut Rng, out: &mut Vec<u8>, run: usize) {
    let back = rng.range(run, out.len().min(REPEAT_DISTANCE) + 1);
    let from = out.len() - back;
    let start = out.len();
    out.extend_from_within(from..from + run);
    if rng.below(2) == 0 {
        for _ in 0..rng.range(1, 5) {
            let at = start + rng.below(run);
            out[at] = rng.next_u64() as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_from_its_seed() {
        let a = realistic_corpus(3 << 20, 42);
        assert_eq!(a.len(), 3 << 20);
        assert_eq!(a, realistic_corpus(3 << 20, 42));
        assert_ne!(a, realistic_corpus(3 << 20, 43));
        // A shorter corpus is a prefix of a longer one from the same seed.
        assert_eq!(realistic_corpus(1 << 20, 42), a[..1 << 20]);
    }

    #[test]
    fn random_bytes_are_deterministic_and_incompressible() {
        let a = random_bytes(1 << 20, 7);
        assert_eq!(a, random_bytes(1 << 20, 7));
        assert_ne!(a, random_bytes(1 << 20, 8));
        assert_eq!(random_bytes(13, 7), a[..13]);
        let z = zstd::bulk::compress(&a, 1).unwrap();
        assert!(z.len() > a.len() - a.len() / 100, "{} bytes", z.len());
    }

    #[test]
    fn corpus_compresses_like_a_container_layer() {
        for seed in [1, 2, 3] {
            let data = realistic_corpus(16 << 20, seed);
            let z = zstd::bulk::compress(&data, 1).unwrap();
            let ratio = data.len() as f64 / z.len() as f64;
            assert!((1.5..5.0).contains(&ratio), "seed {seed}: ratio {ratio:.2}");
        }
    }
}
