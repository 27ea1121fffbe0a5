//! Content-defined chunking (FastCDC 2020) of a byte stream, block by block,
//! with each chunk hashed as it is cut.
//!
//! The stream is read in large blocks; chunks are zero-copy slices of a
//! block. The last chunk of a block is not a real cut (the block ended, not
//! the content), so it is carried into the next block, which keeps the cut
//! points — and therefore dedup — independent of the block size.
//!
//! Two things keep this off the critical path of a push:
//! - **Blocks are reused.** Each block comes from a small pool and goes
//!   back when the last chunk sliced from it is dropped: a fresh 4 MiB
//!   allocation per block costs page faults and first-touch (0.3–1.5 GB/s
//!   on the VMs we run on), more than cutting it.
//! - **One block is cut on several cores.** FastCDC is serial: where a chunk
//!   ends depends on where it started. Each worker starts a cutter at a
//!   fixed offset of the block as if a chunk began there; the merge walks
//!   the true (serial) chain and, as soon as it lands on a cut point a
//!   worker also found, takes that worker's remaining cuts, because from a
//!   shared point both chains are the same function of the same bytes. In
//!   content that never agrees (long zero runs, where every chunk is
//!   maximum-size and phases differ) the merge cuts on by itself: slower,
//!   never different. The result is byte for byte the serial chunking.

use std::io::{self, Read};

use bytes::Bytes;
use fastcdc::v2020::FastCDC;
use strata_proto::Digest;

use crate::block_pool::BlockPool;

/// FastCDC size bounds, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerConfig {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl ChunkerConfig {
    /// The usual shape: minimum a quarter, maximum four times the average.
    pub fn with_average(avg_size: u32) -> Self {
        ChunkerConfig {
            min_size: avg_size / 4,
            avg_size,
            max_size: avg_size * 4,
        }
    }

    /// Refuses bounds FastCDC cannot work with or the protocol would refuse.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MINIMUM_MIN};
        let ok = (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && self.min_size >= MINIMUM_MIN
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.max_size <= MAXIMUM_MAX.min(strata_proto::MAX_CHUNK_BYTES);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunk sizes min {} / avg {} / max {} are out of range (avg {}..={}, max up to {})",
                self.min_size,
                self.avg_size,
                self.max_size,
                AVERAGE_MIN,
                AVERAGE_MAX,
                strata_proto::MAX_CHUNK_BYTES
            ))
        }
    }
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        ChunkerConfig::with_average(64 << 10)
    }
}

/// One chunk: its bytes (a slice of a block) and their digest.
#[derive(Clone, Debug)]
pub struct HashedChunk {
    pub digest: Digest,
    pub data: Bytes,
}

/// The chunks cut from one block, and the contiguous bytes they cover (for
/// whole-stream hashing, which must see every byte once, in order).
#[derive(Debug)]
pub struct ChunkBatch {
    pub chunks: Vec<HashedChunk>,
    pub covered: Bytes,
}

/// Bytes read from the input per block: large enough that the carried tail
/// (at most one maximum-size chunk) and the per-block thread hand-off are a
/// small fraction, small enough that the ten or so blocks a push holds in
/// flight (its stages are two blocks deep each) stay well under 100 MB.
pub const BLOCK_BYTES: usize = 4 << 20;

/// Most threads that cut one block. Beyond the cores there are, more only
/// adds merge work.
const MAX_CUT_WORKERS: usize = 4;

/// A worker's stretch of a block is at least this many maximum-size chunks,
/// so that the few cuts the merge makes itself before the chains agree stay
/// a small part of each stretch.
const MIN_SEGMENT_CHUNKS: usize = 8;

/// Cuts a reader into hashed chunks, one block at a time.
pub struct Chunker<R> {
    reader: R,
    config: ChunkerConfig,
    carry: Bytes,
    eof: bool,
    pool: BlockPool,
    workers: usize,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, config: ChunkerConfig) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Chunker {
            reader,
            config,
            carry: Bytes::new(),
            eof: false,
            pool: BlockPool::default(),
            workers: cores.min(MAX_CUT_WORKERS),
        }
    }

    /// The next batch, hashed, or `None` at the end of the input.
    pub fn next_batch(&mut self) -> io::Result<Option<ChunkBatch>> {
        Ok(self.next_cuts()?.map(CutBatch::hash))
    }

    /// The next batch, cut but not hashed, or `None` at the end of the
    /// input: hashing can then run on another thread than the cutting.
    pub fn next_cuts(&mut self) -> io::Result<Option<CutBatch>> {
        if self.eof && self.carry.is_empty() {
            return Ok(None);
        }
        let mut block = self.pool.take(BLOCK_BYTES + self.config.max_size as usize);
        block.clear();
        block.extend_from_slice(&self.carry);
        // `read_to_end` fills spare capacity without zeroing it first.
        if !self.eof {
            let read = (&mut self.reader)
                .take(BLOCK_BYTES as u64)
                .read_to_end(&mut block)?;
            self.eof = read < BLOCK_BYTES;
        }
        let mut ends = cut_points(&block, self.config, self.workers);
        if !self.eof && ends.last() == Some(&block.len()) {
            ends.pop(); // the block ended here, not the content: carry it over
        }
        let block = self.pool.share(block);
        let mut pieces = Vec::with_capacity(ends.len());
        let mut start = 0usize;
        for &end in &ends {
            pieces.push(block.slice(start..end));
            start = end;
        }
        self.carry = block.slice(start..);
        Ok(Some(CutBatch {
            pieces,
            covered: block.slice(..start),
        }))
    }
}

/// The end offsets of the chunks FastCDC cuts `data` into, as if `data`
/// were the whole input (the last chunk ends at `data.len()`), cut on up to
/// `workers` threads. Always equal to [`cut_points_serial`].
pub fn cut_points(data: &[u8], config: ChunkerConfig, workers: usize) -> Vec<usize> {
    let min_segment = MIN_SEGMENT_CHUNKS * config.max_size as usize;
    let segments = workers.min(data.len() / min_segment.max(1)).max(1);
    cut_points_in_segments(data, config, segments)
}

/// The end offsets of the chunks FastCDC cuts `data` into, on one thread:
/// the reference the parallel cut must equal.
pub fn cut_points_serial(data: &[u8], config: ChunkerConfig) -> Vec<usize> {
    FastCDC::new(data, config.min_size, config.avg_size, config.max_size)
        .map(|cut| cut.offset + cut.length)
        .collect()
}

/// Cuts `data` split into `segments` equal stretches, one thread each (the
/// first on this thread), and merges their chains into the serial one.
fn cut_points_in_segments(data: &[u8], config: ChunkerConfig, segments: usize) -> Vec<usize> {
    let len = data.len();
    let segments = segments.clamp(1, len.max(1));
    let cutter = Cutter::new(data, config);
    if segments == 1 {
        return cutter.chain(0, len).split_off(1);
    }
    let starts: Vec<usize> = (0..segments).map(|k| k * len / segments).collect();
    let stop_of = |k: usize| starts.get(k + 1).copied().unwrap_or(len);
    let chains: Vec<Vec<usize>> = std::thread::scope(|scope| {
        let cutter = &cutter;
        let handles: Vec<_> = (1..segments)
            .map(|k| {
                let (start, stop) = (starts[k], stop_of(k));
                // If no thread can be had, the merge cuts that stretch itself.
                std::thread::Builder::new()
                    .name("strata-cut".into())
                    .spawn_scoped(scope, move || cutter.chain(start, stop))
                    .ok()
            })
            .collect();
        let mut chains = vec![cutter.chain(0, stop_of(0))];
        for handle in handles {
            // A worker that panicked is a bug; its stretch is cut by the merge.
            chains.push(handle.and_then(|h| h.join().ok()).unwrap_or_default());
        }
        chains
    });
    cutter.merge(&starts, &chains)
}

/// FastCDC over one whole input, asked one cut at a time.
struct Cutter<'a> {
    gear: GearCut,
    data: &'a [u8],
    average: usize,
}

impl<'a> Cutter<'a> {
    fn new(data: &'a [u8], config: ChunkerConfig) -> Self {
        Cutter {
            gear: GearCut::new(config),
            data,
            average: config.avg_size as usize,
        }
    }

    /// Where the chunk starting at `start` ends. It depends only on the
    /// bytes from `start` on (at most one maximum chunk of them) and on
    /// where the input ends — never on where earlier chunks were cut.
    fn next_cut(&self, start: usize) -> usize {
        start + self.gear.cut(&self.data[start..])
    }

    /// The chain of cut points from `start` (included), as if a chunk began
    /// there, up to and including the first at or past `stop`.
    fn chain(&self, start: usize, stop: usize) -> Vec<usize> {
        let mut chain = vec![start];
        let mut at = start;
        while at < stop && at < self.data.len() {
            at = self.next_cut(at);
            chain.push(at);
        }
        chain
    }

    /// The serial chain from 0, built from the workers' chains (`chains[k]`
    /// started at `starts[k]`): where the true chain reaches a point of the
    /// chain of the stretch it is in, the rest of that chain is true too;
    /// until then, the merge cuts one chunk at a time itself.
    fn merge(&self, starts: &[usize], chains: &[Vec<usize>]) -> Vec<usize> {
        let len = self.data.len();
        let mut ends = Vec::with_capacity(len / self.average.max(1) + 2);
        let mut at = 0usize;
        while at < len {
            let stretch = starts.partition_point(|&s| s <= at).saturating_sub(1);
            let chain = chains.get(stretch).map_or(&[][..], Vec::as_slice);
            match chain.binary_search(&at) {
                Ok(i) if i + 1 < chain.len() => {
                    ends.extend_from_slice(&chain[i + 1..]);
                    at = chain[chain.len() - 1];
                }
                _ => {
                    at = self.next_cut(at);
                    ends.push(at);
                }
            }
        }
        ends
    }
}

/// One FastCDC 2020 cut: the `fastcdc` crate's `cut_gear` with its gear
/// tables and level-1 masks (what `FastCDC::new` uses), restated so that
/// its inner loops walk the bytes in pairs without a bounds check per byte.
/// Same arithmetic, same tables, same masks, same returned offsets: the
/// same cut points (tested against the crate on every size class). Cutting
/// is a quarter to a third of a re-push's CPU; the checks were 4 of the
/// loop's 17 instructions per pair of bytes.
struct GearCut {
    min_size: usize,
    avg_size: usize,
    max_size: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl GearCut {
    fn new(config: ChunkerConfig) -> Self {
        use fastcdc::v2020::{MASKS, Normalization, get_gear_with_seed, logarithm2};
        let bits = logarithm2(config.avg_size) as usize;
        let level = Normalization::Level1.bits() as usize;
        let (gear, gear_ls) = get_gear_with_seed(0);
        GearCut {
            min_size: config.min_size as usize,
            avg_size: config.avg_size as usize,
            max_size: config.max_size as usize,
            mask_s: MASKS[bits + level],
            mask_l: MASKS[bits - level],
            gear,
            gear_ls,
        }
    }

    /// The length of the chunk that starts `source` (the rest of the input).
    fn cut(&self, source: &[u8]) -> usize {
        let mut remaining = source.len();
        if remaining <= self.min_size {
            return remaining;
        }
        let mut center = self.avg_size;
        if remaining > self.max_size {
            remaining = self.max_size;
        } else if remaining < center {
            center = remaining;
        }
        // The crate counts pairs: `index` from min/2 while below center/2
        // (small mask), then while below remaining/2 (large mask); the pair
        // at `index` is the bytes at 2*index and 2*index+1.
        let first = 2 * (self.min_size / 2);
        let middle = (2 * (center / 2)).max(first);
        let end = (2 * (remaining / 2)).max(middle);
        let mut hash = 0u64;
        if let Some(at) = self.scan(source, first, middle, self.mask_s, &mut hash) {
            return at;
        }
        if let Some(at) = self.scan(source, middle, end, self.mask_l, &mut hash) {
            return at;
        }
        remaining
    }

    /// Rolls the hash over the pairs of `source[from..to]` (an even
    /// stretch); the offset of the first byte where `mask` matches.
    #[inline(always)]
    fn scan(
        &self,
        source: &[u8],
        from: usize,
        to: usize,
        mask: u64,
        hash: &mut u64,
    ) -> Option<usize> {
        let mask_ls = mask << 1;
        let mut h = *hash;
        for (i, pair) in source[from..to].chunks_exact(2).enumerate() {
            h = (h << 2).wrapping_add(self.gear_ls[pair[0] as usize]);
            if h & mask_ls == 0 {
                return Some(from + 2 * i);
            }
            h = h.wrapping_add(self.gear[pair[1] as usize]);
            if h & mask == 0 {
                return Some(from + 2 * i + 1);
            }
        }
        *hash = h;
        None
    }
}

/// The chunks cut from one block, before hashing.
#[derive(Debug)]
pub struct CutBatch {
    pub pieces: Vec<Bytes>,
    pub covered: Bytes,
}

impl CutBatch {
    /// BLAKE3 of every chunk.
    pub fn hash(self) -> ChunkBatch {
        ChunkBatch {
            chunks: self
                .pieces
                .into_iter()
                .map(|data| HashedChunk {
                    digest: Digest::of(&data),
                    data,
                })
                .collect(),
            covered: self.covered,
        }
    }
}

/// All chunks of an in-memory input (tests and benches).
pub fn chunk_all(data: &[u8], config: ChunkerConfig) -> io::Result<Vec<HashedChunk>> {
    let mut chunker = Chunker::new(data, config);
    let mut out = Vec::new();
    while let Some(b) = chunker.next_batch()? {
        out.extend(b.chunks);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    const SMALL: ChunkerConfig = ChunkerConfig {
        min_size: 256,
        avg_size: 1024,
        max_size: 4096,
    };

    #[test]
    fn cuts_do_not_depend_on_block_boundaries() {
        // More than one block, so carried tails are exercised.
        let data = pseudo_random(BLOCK_BYTES * 2 + 12345, 7);
        let config = ChunkerConfig::default();
        let blockwise: Vec<usize> = chunk_all(&data, config)
            .unwrap()
            .iter()
            .map(|c| c.data.len())
            .collect();
        let whole: Vec<usize> =
            fastcdc::v2020::FastCDC::new(&data, config.min_size, config.avg_size, config.max_size)
                .map(|c| c.length)
                .collect();
        assert_eq!(blockwise, whole);
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunk_all(&[], SMALL).unwrap().is_empty());
    }

    #[test]
    fn invalid_sizes_are_refused() {
        assert!(ChunkerConfig::with_average(16).validate().is_err());
        assert!(ChunkerConfig::with_average(64 << 10).validate().is_ok());
    }

    /// Inputs where parallel cutters are least likely to agree: long zero
    /// runs (every chunk maximum-size, so chains started at different
    /// phases never meet inside the run), short repeated patterns, and
    /// noise, spliced together.
    fn adversarial(pieces: &[(u8, usize, u64)]) -> Vec<u8> {
        let mut data = Vec::new();
        for &(kind, len, seed) in pieces {
            match kind % 4 {
                0 => data.extend(std::iter::repeat_n(0u8, len)),
                1 => data.extend(pseudo_random(len, seed)),
                2 => {
                    let pattern = pseudo_random(1 + (seed % 97) as usize, seed);
                    data.extend(pattern.iter().cycle().take(len));
                }
                _ => data.extend(std::iter::repeat_n((seed % 251) as u8, len)),
            }
        }
        data
    }

    #[test]
    fn parallel_cuts_equal_serial_cuts_over_blocks_of_real_size() {
        let config = ChunkerConfig::default();
        let mut data = pseudo_random(BLOCK_BYTES + 54_321, 11);
        // A zero run across the middle: the second worker's chain starts
        // inside it, out of phase with the serial one.
        data[BLOCK_BYTES / 2 - 300_000..BLOCK_BYTES / 2 + 700_000].fill(0);
        let serial = cut_points_serial(&data, config);
        for workers in 1..=MAX_CUT_WORKERS {
            assert_eq!(
                cut_points(&data, config, workers),
                serial,
                "{workers} workers"
            );
        }
        // All zeros: no two chains ever agree, the merge cuts alone.
        let zeros = vec![0u8; 9 << 20];
        assert_eq!(
            cut_points(&zeros, config, 4),
            cut_points_serial(&zeros, config)
        );
    }

    #[test]
    fn one_gear_cut_equals_the_crates_cut_at_every_size_class() {
        // Odd bounds exercise the crate's pair rounding (min/2, center/2,
        // remaining/2); starts near the end give every remaining length
        // class: below min, between min and avg, avg to max, above max.
        let configs = [
            SMALL,
            ChunkerConfig::default(),
            ChunkerConfig {
                min_size: 65,
                avg_size: 301,
                max_size: 1025,
            },
            ChunkerConfig {
                min_size: 255,
                avg_size: 256,
                max_size: 1024,
            },
            ChunkerConfig {
                min_size: 4095,
                avg_size: 4097,
                max_size: 8191,
            },
        ];
        let mut data = adversarial(&[
            (1, 300_000, 3),
            (0, 70_000, 0),
            (2, 90_000, 41),
            (1, 50_000, 9),
        ]);
        data.push(7); // an odd length
        for config in configs {
            let gear = GearCut::new(config);
            let crate_cdc = FastCDC::new(&data, config.min_size, config.avg_size, config.max_size);
            // Remaining lengths just around 0, min, avg and max, then a
            // stride across the whole input.
            let edges = [0, config.min_size, config.avg_size, config.max_size];
            let near_end = edges
                .into_iter()
                .flat_map(|edge| edge.saturating_sub(3) as usize..=edge as usize + 3)
                .map(|left| data.len().saturating_sub(left));
            for start in (0..data.len()).step_by(997).chain(near_end) {
                let theirs = crate_cdc.cut(start, data.len() - start).1 - start;
                assert_eq!(gear.cut(&data[start..]), theirs, "{config:?} at {start}");
            }
        }
    }

    #[test]
    fn reused_blocks_give_the_same_chunks_as_fresh_ones() {
        // Three blocks and more: later blocks reuse buffers of earlier ones.
        let data = pseudo_random(BLOCK_BYTES * 3 + 999, 5);
        let mut chunker = Chunker::new(&data[..], ChunkerConfig::default());
        let mut joined = Vec::with_capacity(data.len());
        while let Some(batch) = chunker.next_batch().unwrap() {
            for c in batch.chunks {
                assert_eq!(c.digest, Digest::of(&c.data));
                joined.extend_from_slice(&c.data);
            }
            // `batch` is dropped here: its block goes back to the pool.
        }
        assert_eq!(joined, data);
        assert!(
            chunker.pool.free_buffers() > 0,
            "blocks were not returned to the pool"
        );
    }

    proptest! {
        #[test]
        fn chunks_concatenate_back_to_the_input_and_stay_in_bounds(len in 0usize..40_000, seed in any::<u64>()) {
            let data = pseudo_random(len, seed);
            let chunks = chunk_all(&data, SMALL).unwrap();
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
            prop_assert_eq!(&joined, &data);
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(c.data.len() <= SMALL.max_size as usize);
                prop_assert!(i + 1 == chunks.len() || c.data.len() >= SMALL.min_size as usize);
                prop_assert_eq!(c.digest, Digest::of(&c.data));
            }
        }

        #[test]
        fn parallel_cuts_equal_serial_cuts_on_random_and_adversarial_input(
            pieces in proptest::collection::vec((any::<u8>(), 0usize..20_000, any::<u64>()), 0..12),
            segments in 1usize..9,
        ) {
            let data = adversarial(&pieces);
            let serial = cut_points_serial(&data, SMALL);
            // Stretches far smaller than a chunk too: the merge must still
            // find the serial chain.
            prop_assert_eq!(cut_points_in_segments(&data, SMALL, segments), serial.clone());
            prop_assert_eq!(cut_points_in_segments(&data, SMALL, segments * 13), serial);
        }

        #[test]
        fn a_one_byte_edit_changes_only_nearby_chunks(seed in any::<u64>(), at in 0usize..100_000) {
            let data = pseudo_random(100_000, seed);
            let mut edited = data.clone();
            edited[at] ^= 0xff;
            let a: std::collections::HashSet<_> = chunk_all(&data, SMALL).unwrap().into_iter().map(|c| c.digest).collect();
            let b = chunk_all(&edited, SMALL).unwrap();
            // Cut points resynchronise within a few chunks of the edit, so
            // the re-sent bytes are bounded whatever the input size.
            let changed: usize = b.iter().filter(|c| !a.contains(&c.digest)).map(|c| c.data.len()).sum();
            prop_assert!(changed <= 4 * SMALL.max_size as usize, "{} bytes changed", changed);
        }
    }
}
