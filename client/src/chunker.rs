//! Content-defined chunking (FastCDC 2020) of a byte stream, block by block,
//! with each chunk hashed as it is cut.
//!
//! The stream is read in large blocks; chunks are zero-copy slices of a
//! block. The last chunk of a block is not a real cut (the block ended, not
//! the content), so it is carried into the next block, which keeps the cut
//! points — and therefore dedup — independent of the block size.

use std::io::{self, Read};

use bytes::Bytes;
use strata_proto::Digest;

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
/// (at most one maximum-size chunk) is a small fraction.
pub const BLOCK_BYTES: usize = 8 << 20;

/// Cuts a reader into hashed chunks, one block at a time.
pub struct Chunker<R> {
    reader: R,
    config: ChunkerConfig,
    carry: Bytes,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    pub fn new(reader: R, config: ChunkerConfig) -> Self {
        Chunker {
            reader,
            config,
            carry: Bytes::new(),
            eof: false,
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
        let mut block = Vec::with_capacity(self.carry.len() + BLOCK_BYTES);
        block.extend_from_slice(&self.carry);
        // `read_to_end` fills spare capacity without zeroing it first.
        if !self.eof {
            let read = (&mut self.reader)
                .take(BLOCK_BYTES as u64)
                .read_to_end(&mut block)?;
            self.eof = read < BLOCK_BYTES;
        }
        let block = Bytes::from(block);
        let c = self.config;
        let mut pieces = Vec::with_capacity(block.len() / c.avg_size as usize + 2);
        let mut end = 0usize;
        for cut in fastcdc::v2020::FastCDC::new(&block, c.min_size, c.avg_size, c.max_size) {
            let cut_end = cut.offset + cut.length;
            if cut_end == block.len() && !self.eof {
                break; // the block ended here, not the content: carry it over
            }
            pieces.push(block.slice(cut.offset..cut_end));
            end = cut_end;
        }
        self.carry = block.slice(end..);
        Ok(Some(CutBatch {
            pieces,
            covered: block.slice(..end),
        }))
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
