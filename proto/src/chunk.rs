//! The chunk codec both ends share: zstd per chunk, or raw when compression
//! does not pay, and the check that decoded bytes match their digest.
//!
//! Encoder and decoder keep their zstd context and output buffer between
//! chunks: on the hot path a fresh context or buffer per chunk costs more
//! than the work itself.

use crate::Digest;
use crate::v1;

/// How a chunk's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Raw,
    Zstd,
}

impl Codec {
    pub fn to_wire(self) -> i32 {
        match self {
            Codec::Raw => v1::Codec::Raw as i32,
            Codec::Zstd => v1::Codec::Zstd as i32,
        }
    }

    pub fn from_wire(value: i32) -> Result<Self, ChunkError> {
        match v1::Codec::try_from(value) {
            Ok(v1::Codec::Raw) => Ok(Codec::Raw),
            Ok(v1::Codec::Zstd) => Ok(Codec::Zstd),
            Err(_) => Err(ChunkError::UnknownCodec(value)),
        }
    }

    /// The one-byte tag used in on-disk records.
    pub fn to_byte(self) -> u8 {
        self.to_wire() as u8
    }

    pub fn from_byte(b: u8) -> Result<Self, ChunkError> {
        Self::from_wire(i32::from(b))
    }
}

/// Why a chunk could not be decoded or verified.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("unknown chunk codec {0}")]
    UnknownCodec(i32),
    #[error("chunk {digest}: decoded length {found} does not match the declared {expected}")]
    LengthMismatch {
        digest: Digest,
        expected: u32,
        found: usize,
    },
    #[error("chunk {digest}: declared length {length} exceeds the limit of {limit} bytes")]
    TooLarge {
        digest: Digest,
        length: u32,
        limit: u32,
    },
    #[error("chunk {digest}: zstd data is corrupt: {reason}")]
    Corrupt { digest: Digest, reason: String },
    #[error("chunk {expected}: content hashes to {found}")]
    DigestMismatch { expected: Digest, found: Digest },
}

/// Compresses chunks, choosing raw where zstd saves too little to be worth a
/// decompression on every read.
pub struct ChunkEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

impl std::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEncoder").finish_non_exhaustive()
    }
}

impl ChunkEncoder {
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(ChunkEncoder {
            compressor: zstd::bulk::Compressor::new(level)?,
            out: Vec::new(),
        })
    }

    /// Encodes `raw`; the returned slice borrows the encoder's buffer (or
    /// `raw` itself when stored raw) until the next call.
    pub fn encode<'a>(&'a mut self, raw: &'a [u8]) -> (Codec, &'a [u8]) {
        if raw.is_empty() {
            return (Codec::Raw, raw);
        }
        self.out.clear();
        self.out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        match self.compressor.compress_to_buffer(raw, &mut self.out) {
            // Keep zstd only when it saves at least 1/32 of the bytes.
            Ok(n) if n < raw.len() - raw.len() / 32 => (Codec::Zstd, &self.out[..n]),
            _ => (Codec::Raw, raw),
        }
    }
}

/// Decodes chunks and verifies them against their digest.
pub struct ChunkDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
    out: Vec<u8>,
}

impl std::fmt::Debug for ChunkDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkDecoder").finish_non_exhaustive()
    }
}

impl ChunkDecoder {
    pub fn new() -> std::io::Result<Self> {
        Ok(ChunkDecoder {
            decompressor: zstd::bulk::Decompressor::new()?,
            out: Vec::new(),
        })
    }

    /// Decodes `stored` and checks that the result is `raw_length` bytes
    /// hashing to `digest`. The returned slice is valid until the next call.
    pub fn decode_verified<'a>(
        &'a mut self,
        digest: &Digest,
        codec: Codec,
        raw_length: u32,
        stored: &'a [u8],
    ) -> Result<&'a [u8], ChunkError> {
        if raw_length > crate::MAX_CHUNK_BYTES {
            return Err(ChunkError::TooLarge {
                digest: *digest,
                length: raw_length,
                limit: crate::MAX_CHUNK_BYTES,
            });
        }
        let raw: &[u8] = match codec {
            Codec::Raw => stored,
            Codec::Zstd => {
                // A frame that declares its size must declare the claimed one:
                // that names the real problem before decoding anything.
                if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(stored)
                    && size != u64::from(raw_length)
                {
                    return Err(ChunkError::LengthMismatch {
                        digest: *digest,
                        expected: raw_length,
                        found: usize::try_from(size).unwrap_or(usize::MAX),
                    });
                }
                self.out.clear();
                self.out.reserve(raw_length as usize);
                let n = self
                    .decompressor
                    .decompress_to_buffer(stored, &mut self.out)
                    .map_err(|e| ChunkError::Corrupt {
                        digest: *digest,
                        reason: e.to_string(),
                    })?;
                &self.out[..n]
            }
        };
        if raw.len() != raw_length as usize {
            return Err(ChunkError::LengthMismatch {
                digest: *digest,
                expected: raw_length,
                found: raw.len(),
            });
        }
        verify_chunk(digest, raw)?;
        Ok(raw)
    }
}

impl ChunkDecoder {
    /// Like [`decode_verified`](Self::decode_verified), but hands back owned
    /// bytes without a copy: raw chunks as given, zstd chunks decoded
    /// straight into a buffer of their own.
    pub fn decode_verified_owned(
        &mut self,
        digest: &Digest,
        codec: Codec,
        raw_length: u32,
        stored: bytes::Bytes,
    ) -> Result<bytes::Bytes, ChunkError> {
        match codec {
            Codec::Raw => {
                self.decode_verified(digest, codec, raw_length, &stored)?;
                Ok(stored)
            }
            Codec::Zstd => {
                // An exact-size buffer (the length is checked before use).
                self.out = Vec::with_capacity(raw_length.min(crate::MAX_CHUNK_BYTES) as usize);
                self.decode_verified(digest, codec, raw_length, &stored)?;
                Ok(bytes::Bytes::from(std::mem::take(&mut self.out)))
            }
        }
    }
}

impl ChunkDecoder {
    /// Decodes `stored` straight into `out`, whose length is the chunk's
    /// claimed raw length, and verifies it against `digest`: no buffer of
    /// its own, no copy for zstd chunks. On error `out` holds garbage.
    pub fn decode_verified_into(
        &mut self,
        digest: &Digest,
        codec: Codec,
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        let raw_length = u32::try_from(out.len()).unwrap_or(u32::MAX);
        if raw_length > crate::MAX_CHUNK_BYTES {
            return Err(ChunkError::TooLarge {
                digest: *digest,
                length: raw_length,
                limit: crate::MAX_CHUNK_BYTES,
            });
        }
        let found = match codec {
            Codec::Raw => {
                if stored.len() == out.len() {
                    out.copy_from_slice(stored);
                }
                stored.len()
            }
            Codec::Zstd => {
                if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(stored)
                    && size != u64::from(raw_length)
                {
                    return Err(ChunkError::LengthMismatch {
                        digest: *digest,
                        expected: raw_length,
                        found: usize::try_from(size).unwrap_or(usize::MAX),
                    });
                }
                // A frame that would decode to more than `out` holds fails
                // here ("destination buffer is too small"): never written
                // past the chunk's own bytes.
                self.decompressor
                    .decompress_to_buffer(stored, out)
                    .map_err(|e| ChunkError::Corrupt {
                        digest: *digest,
                        reason: e.to_string(),
                    })?
            }
        };
        if found != out.len() {
            return Err(ChunkError::LengthMismatch {
                digest: *digest,
                expected: raw_length,
                found,
            });
        }
        verify_chunk(digest, out)
    }
}

thread_local! {
    static THREAD_DECODER: std::cell::RefCell<Option<ChunkDecoder>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's decoder, created on first use: blocking-pool
/// threads then keep one zstd context each instead of one per message.
pub fn with_thread_decoder<T>(f: impl FnOnce(&mut ChunkDecoder) -> T) -> std::io::Result<T> {
    THREAD_DECODER.with_borrow_mut(|slot| {
        let decoder = match slot {
            Some(d) => d,
            None => slot.insert(ChunkDecoder::new()?),
        };
        Ok(f(decoder))
    })
}

/// Checks that `raw` hashes to `expected`.
pub fn verify_chunk(expected: &Digest, raw: &[u8]) -> Result<(), ChunkError> {
    let found = Digest::of(raw);
    if found == *expected {
        Ok(())
    } else {
        Err(ChunkError::DigestMismatch {
            expected: *expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codec numbers are on the wire and in every on-disk record: a
    /// change would make every stored chunk unreadable.
    #[test]
    fn codec_numbers_are_pinned_and_unknown_ones_refused() {
        assert_eq!((Codec::Raw.to_wire(), Codec::Zstd.to_wire()), (0, 1));
        assert_eq!((Codec::Raw.to_byte(), Codec::Zstd.to_byte()), (0, 1));
        for codec in [Codec::Raw, Codec::Zstd] {
            assert_eq!(Codec::from_wire(codec.to_wire()).unwrap(), codec);
            assert_eq!(Codec::from_byte(codec.to_byte()).unwrap(), codec);
        }
        assert!(matches!(
            Codec::from_wire(2),
            Err(ChunkError::UnknownCodec(2))
        ));
        assert!(matches!(
            Codec::from_byte(255),
            Err(ChunkError::UnknownCodec(255))
        ));
    }

    /// Incompressible bytes of `len`, the first `zeros` of them zero.
    fn mostly_noise(len: usize, zeros: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i < zeros { 0 } else { x as u8 }
            })
            .collect()
    }

    /// zstd is kept only when it saves at least 1/32 of the bytes: a chunk
    /// it shrinks by ~2.5% is stored raw (decoding it would cost more than
    /// the bytes saved), one it shrinks by ~10% is stored compressed.
    #[test]
    fn zstd_is_kept_only_when_it_saves_a_thirty_second() {
        let mut enc = ChunkEncoder::new(1).unwrap();
        let len = 64 << 10;
        // zstd itself stores a block raw unless it saves 1/64: this one it
        // does compress, by less than 1/32.
        let barely = mostly_noise(len, len * 25 / 1000);
        let by_zstd = zstd::bulk::compress(&barely, 1).unwrap().len();
        assert!(
            by_zstd < len - len / 64 && by_zstd >= len - len / 32,
            "{by_zstd}"
        );
        assert_eq!(enc.encode(&barely).0, Codec::Raw);
        let worth_it = mostly_noise(len, len / 10);
        let (codec, stored) = enc.encode(&worth_it);
        assert_eq!(codec, Codec::Zstd);
        assert!(stored.len() < len - len / 32);
    }

    /// The size limit is exact: a chunk of the largest size decodes, one a
    /// byte larger is refused before its bytes are looked at.
    #[test]
    fn the_chunk_size_limit_is_exact() {
        let mut dec = ChunkDecoder::new().unwrap();
        let largest = vec![7u8; crate::MAX_CHUNK_BYTES as usize];
        let digest = Digest::of(&largest);
        let out = dec
            .decode_verified(&digest, Codec::Raw, crate::MAX_CHUNK_BYTES, &largest)
            .unwrap();
        assert_eq!(out.len(), largest.len());
        let err = dec
            .decode_verified(&digest, Codec::Raw, crate::MAX_CHUNK_BYTES + 1, &largest)
            .unwrap_err();
        assert!(
            matches!(err, ChunkError::TooLarge { length, limit, .. }
                if length == crate::MAX_CHUNK_BYTES + 1 && limit == crate::MAX_CHUNK_BYTES),
            "{err}"
        );
        // The same limit for decoding into the caller's buffer.
        let mut out = vec![0u8; largest.len()];
        dec.decode_verified_into(&digest, Codec::Raw, &largest, &mut out)
            .unwrap();
        let mut over = vec![0u8; largest.len() + 1];
        let err = dec
            .decode_verified_into(&digest, Codec::Raw, &largest, &mut over)
            .unwrap_err();
        assert!(matches!(err, ChunkError::TooLarge { .. }), "{err}");
    }

    /// The owned decode hands back the chunk's bytes, for both codecs, and
    /// refuses bytes that are not the digest's.
    #[test]
    fn owned_decoding_round_trips_and_refuses_wrong_content() {
        let mut enc = ChunkEncoder::new(1).unwrap();
        let mut dec = ChunkDecoder::new().unwrap();
        for raw in [b"strata ".repeat(1000), mostly_noise(5000, 0)] {
            let digest = Digest::of(&raw);
            let (codec, stored) = enc.encode(&raw);
            let stored = bytes::Bytes::copy_from_slice(stored);
            let out = dec
                .decode_verified_owned(&digest, codec, raw.len() as u32, stored.clone())
                .unwrap();
            assert_eq!(&out[..], &raw[..], "{codec:?}");
            let other = Digest::of(b"other");
            assert!(
                dec.decode_verified_owned(&other, codec, raw.len() as u32, stored)
                    .is_err(),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn compressible_chunk_round_trips_through_zstd() {
        let raw = b"strata ".repeat(1000);
        let digest = Digest::of(&raw);
        let mut enc = ChunkEncoder::new(1).unwrap();
        let (codec, stored) = enc.encode(&raw);
        assert_eq!(codec, Codec::Zstd);
        assert!(stored.len() < raw.len() / 10);
        let stored = stored.to_vec();
        let mut dec = ChunkDecoder::new().unwrap();
        let out = dec
            .decode_verified(&digest, codec, raw.len() as u32, &stored)
            .unwrap();
        assert_eq!(out, &raw[..]);
    }

    #[test]
    fn incompressible_chunk_is_kept_raw() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let raw: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let mut enc = ChunkEncoder::new(1).unwrap();
        assert_eq!(enc.encode(&raw).0, Codec::Raw);
    }

    #[test]
    fn decoded_bytes_that_do_not_match_the_digest_are_refused() {
        let mut dec = ChunkDecoder::new().unwrap();
        let claimed = Digest::of(b"one thing");
        let err = dec
            .decode_verified(&claimed, Codec::Raw, 7, b"another")
            .unwrap_err();
        assert!(matches!(err, ChunkError::DigestMismatch { expected, .. } if expected == claimed));
        assert!(err.to_string().contains(&claimed.to_string()));
    }

    #[test]
    fn decoding_into_a_slice_round_trips_and_refuses_wrong_lengths_and_content() {
        let raw = b"strata ".repeat(1000);
        let digest = Digest::of(&raw);
        let mut enc = ChunkEncoder::new(1).unwrap();
        let stored = enc.encode(&raw).1.to_vec();
        let mut dec = ChunkDecoder::new().unwrap();
        let mut out = vec![0u8; raw.len()];
        dec.decode_verified_into(&digest, Codec::Zstd, &stored, &mut out)
            .unwrap();
        assert_eq!(out, raw);
        // A slot one byte short or long: refused, never overrun.
        let mut short = vec![0u8; raw.len() - 1];
        let err = dec
            .decode_verified_into(&digest, Codec::Zstd, &stored, &mut short)
            .unwrap_err();
        assert!(matches!(err, ChunkError::LengthMismatch { .. }), "{err}");
        let mut long = vec![0u8; raw.len() + 1];
        assert!(
            dec.decode_verified_into(&digest, Codec::Zstd, &stored, &mut long)
                .is_err()
        );
        // A frame without its size that decodes to more than the slot.
        let mut unsized_frame = Vec::new();
        {
            let mut e = zstd::stream::write::Encoder::new(&mut unsized_frame, 1).unwrap();
            e.include_contentsize(false).unwrap();
            std::io::Write::write_all(&mut e, &raw).unwrap();
            e.finish().unwrap();
        }
        let mut small = vec![0u8; 100];
        assert!(
            dec.decode_verified_into(&digest, Codec::Zstd, &unsized_frame, &mut small)
                .is_err()
        );
        // Raw bytes of the wrong length or content.
        let mut slot = vec![0u8; 7];
        assert!(matches!(
            dec.decode_verified_into(&digest, Codec::Raw, b"another", &mut slot),
            Err(ChunkError::DigestMismatch { .. })
        ));
        assert!(matches!(
            dec.decode_verified_into(&digest, Codec::Raw, b"short", &mut slot),
            Err(ChunkError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn garbage_zstd_data_is_reported_corrupt() {
        let mut dec = ChunkDecoder::new().unwrap();
        let d = Digest::of(b"x");
        let err = dec
            .decode_verified(&d, Codec::Zstd, 1, b"not zstd at all")
            .unwrap_err();
        assert!(matches!(err, ChunkError::Corrupt { .. }), "{err}");
    }
}
