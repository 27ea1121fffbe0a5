//! The on-disk record: one self-describing entry of a segment file.
//!
//! Every record carries its kind, codec, both lengths, the digest of its
//! decoded content and a CRC-32C over header and payload, so the index can be
//! rebuilt from the segments alone and a torn or rotten record is recognised
//! without trusting anything else.
//!
//! Header layout (52 bytes, integers little-endian):
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 4    | magic `SRC1`                                       |
//! | 4      | 1    | kind: 0 chunk, 1 manifest, 2 step result, 3 tag    |
//! | 5      | 1    | codec: 0 raw, 1 zstd                               |
//! | 6      | 2    | reserved, zero                                     |
//! | 8      | 4    | decoded (raw) length                               |
//! | 12     | 4    | stored length: bytes of payload that follow        |
//! | 16     | 32   | BLAKE3 digest of the decoded content; for a step   |
//! |        |      | result, the step key it is recorded under; for a   |
//! |        |      | tag, the tagged object (the payload is the name)   |
//! | 48     | 4    | CRC-32 of bytes 0..48 followed by the payload      |
//!
//! The payload (stored length bytes) follows the header directly.

use strata_proto::{Codec, Digest};

pub const HEADER_LEN: usize = 52;

/// Longest tag name.
pub const MAX_TAG_BYTES: u32 = 255;
const MAGIC: &[u8; 4] = b"SRC1";

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Chunk,
    Manifest,
    Step,
    Tag,
}

impl RecordKind {
    fn to_byte(self) -> u8 {
        match self {
            RecordKind::Chunk => 0,
            RecordKind::Manifest => 1,
            RecordKind::Step => 2,
            RecordKind::Tag => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(RecordKind::Chunk),
            1 => Some(RecordKind::Manifest),
            2 => Some(RecordKind::Step),
            3 => Some(RecordKind::Tag),
            _ => None,
        }
    }
}

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub codec: Codec,
    pub raw_len: u32,
    pub stored_len: u32,
    pub digest: Digest,
    pub crc: u32,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("bad record magic")]
    BadMagic,
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("unknown codec {0}")]
    BadCodec(u8),
    #[error("record length {0} exceeds the chunk limit")]
    TooLong(u32),
    #[error("checksum mismatch: header says {expected:08x}, content gives {found:08x}")]
    Checksum { expected: u32, found: u32 },
}

/// Appends one whole record (header and payload) to `out`.
pub fn append_record(
    out: &mut Vec<u8>,
    kind: RecordKind,
    digest: &Digest,
    codec: Codec,
    raw_len: u32,
    payload: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.push(kind.to_byte());
    out.push(codec.to_byte());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(digest.as_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..start + 48]);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses a header, checking everything that can be checked without the payload.
pub fn parse_header(b: &[u8; HEADER_LEN]) -> Result<RecordHeader, RecordError> {
    if &b[0..4] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let kind = RecordKind::from_byte(b[4]).ok_or(RecordError::BadKind(b[4]))?;
    let codec = Codec::from_byte(b[5]).map_err(|_| RecordError::BadCodec(b[5]))?;
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let raw_len = u32_at(8);
    let stored_len = u32_at(12);
    // Manifests of huge objects are large; chunks are bounded by the protocol.
    let limit = match kind {
        RecordKind::Chunk => strata_proto::MAX_CHUNK_BYTES,
        RecordKind::Manifest => 1 << 30,
        RecordKind::Step => strata_proto::MAX_STEP_RESULT_BYTES as u32,
        RecordKind::Tag => MAX_TAG_BYTES,
    };
    if raw_len > limit || stored_len > limit.saturating_add(limit / 8) {
        return Err(RecordError::TooLong(raw_len.max(stored_len)));
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&b[16..48]);
    Ok(RecordHeader {
        kind,
        codec,
        raw_len,
        stored_len,
        digest: Digest::from_array(digest),
        crc: u32_at(48),
    })
}

/// Checks a record's CRC against its header bytes and payload.
pub fn check_crc(
    header_bytes: &[u8],
    header: &RecordHeader,
    payload: &[u8],
) -> Result<(), RecordError> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header_bytes[..48]);
    crc.update(payload);
    let found = crc.finalize();
    if found == header.crc {
        Ok(())
    } else {
        Err(RecordError::Checksum {
            expected: header.crc,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        append_record(
            &mut out,
            RecordKind::Chunk,
            &Digest::of(payload),
            Codec::Raw,
            payload.len() as u32,
            payload,
        );
        out
    }

    #[test]
    fn record_parses_back() {
        let r = record(b"hello");
        let h = parse_header(r[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(
            (h.kind, h.codec, h.raw_len, h.stored_len),
            (RecordKind::Chunk, Codec::Raw, 5, 5)
        );
        assert_eq!(h.digest, Digest::of(b"hello"));
        check_crc(&r, &h, &r[HEADER_LEN..]).unwrap();
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let r = record(b"some payload bytes");
        for i in 0..r.len() {
            let mut bad = r.clone();
            bad[i] ^= 0x10;
            let accepted = parse_header(bad[..HEADER_LEN].try_into().unwrap()).is_ok_and(|h| {
                bad.get(HEADER_LEN..HEADER_LEN + h.stored_len as usize)
                    .is_some_and(|payload| check_crc(&bad, &h, payload).is_ok())
            });
            assert!(!accepted, "flip at byte {i} went unnoticed");
        }
    }
}
