//! The on-disk record: one self-describing entry of a segment file.
//!
//! Every record carries its kind, codec, both lengths, the digest of its
//! decoded content and a CRC-32 (IEEE, as `crc32fast` computes it) over
//! header and payload, so the index can be rebuilt from the segments alone
//! and a torn or rotten record is recognised without trusting anything else.
//! CRC-32 catches every error burst of up to 32 bits, so any one flipped
//! byte, in the header or the payload, fails the check.
//!
//! Header layout (52 bytes, integers little-endian):
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 4    | magic `SRC1`                                       |
//! | 4      | 1    | kind: 0 chunk, 1 manifest, 2 step result, 3 tag    |
//! |        |      | (unsigned: no longer written), 4 signed tag        |
//! | 5      | 1    | codec: 0 raw, 1 zstd                               |
//! | 6      | 2    | reserved, zero                                     |
//! | 8      | 4    | decoded (raw) length                               |
//! | 12     | 4    | stored length: bytes of payload that follow        |
//! | 16     | 32   | BLAKE3 digest of the decoded content; for a step   |
//! |        |      | result, the step key it is recorded under; for a   |
//! |        |      | tag, the tagged object (the payload is the name,   |
//! |        |      | or for a signed tag its encoded `SignedTag`)       |
//! | 48     | 4    | CRC-32 of bytes 0..48 followed by the payload      |
//!
//! The payload (stored length bytes) follows the header directly.
//!
//! ## Finding records again after damage
//!
//! A scan walks a segment record by record, each record's lengths giving
//! the next boundary. When the bytes at a boundary are not a valid record (a
//! flipped bit, a hole of zeros a crash left, a torn write), the scan
//! searches forward byte by byte for the next offset where a record provably
//! starts and steps over what lies between, so damage costs the damaged
//! record and not everything after it.
//!
//! The header has no checksum of its own — its two reserved bytes are too
//! few for one, and adding one would change the format every existing
//! segment is written in — so a header met by searching cannot, by itself,
//! be told from payload bytes that happen to contain `SRC1`. The search
//! therefore accepts an offset only when the *whole record* there checks out
//! ([`check_found_record`]):
//!
//! 1. the magic, a known kind and codec, zero reserved bytes, lengths within
//!    the kind's limits, and a payload that fits in the segment;
//! 2. the CRC-32 over header and payload;
//! 3. the content against its name: a chunk decodes to its raw length and
//!    BLAKE3 digest, a manifest's bytes hash to its digest, a step result
//!    or signed tag decodes and its signature verifies (under the step key
//!    of the header, for the object the header names).
//!
//! Bytes that are not a record pass 1 and 2 by chance at about one offset
//! in 2^90 (32 bits of magic, 29 of kind, codec and reserved bytes, 32 of
//! CRC): a false positive from noise is not a practical possibility. A
//! record *copied* into another record's payload (a segment file pushed as
//! part of a layer, say) does pass 1 and 2, which is why 3 re-checks the
//! content cryptographically where the record is content-addressed: such a
//! copy, if found, holds exactly the bytes its digest names, so indexing it
//! serves nothing wrong. A step result or tag copied from elsewhere holds a
//! signature that verifies only for what its writer signed, so such a copy,
//! if found, is a real entry of its signer; one forged inside a chunk's
//! payload does not verify and is not taken (and clients check signatures
//! again before they use anything).
//!
//! Records met at a boundary the previous record gave are checked with 1
//! and 2 only, as they always were: a boundary is not a guess.

use strata_proto::{Codec, Digest, SignedTag, StepResult};

pub const HEADER_LEN: usize = 52;

/// Longest tag name.
pub const MAX_TAG_BYTES: u32 = 255;
/// Longest encoded signed tag: a name, a digest, a time, a key and a
/// signature come to under 400 bytes.
pub const MAX_SIGNED_TAG_BYTES: u32 = 1024;
/// The first four bytes of every record.
pub const MAGIC: &[u8; 4] = b"SRC1";

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Chunk,
    Manifest,
    Step,
    /// A tag of a store before signatures (schema 6): still recognised in
    /// old segments, never written, never indexed.
    UnsignedTag,
    SignedTag,
}

impl RecordKind {
    fn to_byte(self) -> u8 {
        match self {
            RecordKind::Chunk => 0,
            RecordKind::Manifest => 1,
            RecordKind::Step => 2,
            RecordKind::UnsignedTag => 3,
            RecordKind::SignedTag => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(RecordKind::Chunk),
            1 => Some(RecordKind::Manifest),
            2 => Some(RecordKind::Step),
            3 => Some(RecordKind::UnsignedTag),
            4 => Some(RecordKind::SignedTag),
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
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("record content does not match its header: {0}")]
    Content(String),
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
        RecordKind::UnsignedTag => MAX_TAG_BYTES,
        RecordKind::SignedTag => MAX_SIGNED_TAG_BYTES,
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

/// Parses a header met by searching rather than at a known boundary: on top
/// of [`parse_header`], the reserved bytes must be zero and a record other
/// than a chunk must be stored raw (its two lengths equal), as the writer
/// always writes them. Cheap enough to run at every `SRC1` a search meets,
/// before any payload is read.
pub fn parse_found_header(b: &[u8; HEADER_LEN]) -> Result<RecordHeader, RecordError> {
    let header = parse_header(b)?;
    if b[6..8] != [0, 0] {
        return Err(RecordError::Reserved);
    }
    if header.kind != RecordKind::Chunk
        && (header.codec != Codec::Raw || header.raw_len != header.stored_len)
    {
        return Err(RecordError::Content(format!(
            "a {:?} record is stored raw, with equal lengths",
            header.kind
        )));
    }
    Ok(header)
}

/// Proves a record met by searching: its CRC, then its content against its
/// name (see the module docs, "Finding records again after damage").
pub fn check_found_record(
    header_bytes: &[u8],
    header: &RecordHeader,
    payload: &[u8],
) -> Result<(), RecordError> {
    check_crc(header_bytes, header, payload)?;
    let content = |why: String| Err(RecordError::Content(why));
    match header.kind {
        RecordKind::Chunk => {
            let verified = strata_proto::with_thread_decoder(|d| {
                d.decode_verified(&header.digest, header.codec, header.raw_len, payload)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| RecordError::Content(format!("no zstd decoder: {e}")))?;
            verified.map_err(RecordError::Content)
        }
        RecordKind::Manifest => {
            let found = Digest::of(payload);
            if found == header.digest {
                Ok(())
            } else {
                content(format!("manifest hashes to {found}, not {}", header.digest))
            }
        }
        RecordKind::Step => StepResult::decode(payload)
            .map_err(|e| e.to_string())
            .and_then(|r| r.verify(&header.digest).map_err(|e| e.to_string()))
            .map(|_| ())
            .map_err(RecordError::Content),
        RecordKind::SignedTag => {
            let tag =
                SignedTag::decode(payload).map_err(|e| RecordError::Content(e.to_string()))?;
            if tag.target != header.digest {
                return content(format!(
                    "signed tag names {}, its header {}",
                    tag.target, header.digest
                ));
            }
            super::check_tag_name(&tag.name).map_err(|e| RecordError::Content(e.to_string()))?;
            tag.verify()
                .map(|_| ())
                .map_err(|e| RecordError::Content(e.to_string()))
        }
        RecordKind::UnsignedTag => match std::str::from_utf8(payload) {
            Ok(name) => {
                super::check_tag_name(name).map_err(|e| RecordError::Content(e.to_string()))
            }
            Err(_) => content("tag name is not UTF-8".into()),
        },
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

    fn header_of(r: &[u8]) -> [u8; HEADER_LEN] {
        r[..HEADER_LEN].try_into().unwrap()
    }

    #[test]
    fn a_real_record_passes_the_checks_for_a_found_one() {
        let r = record(b"found again");
        let h = parse_found_header(&header_of(&r)).unwrap();
        check_found_record(&r, &h, &r[HEADER_LEN..]).unwrap();
    }

    #[test]
    fn a_record_with_a_valid_crc_but_a_wrong_digest_is_not_taken_when_found() {
        let payload = b"these bytes are not what the digest names";
        let mut r = Vec::new();
        append_record(
            &mut r,
            RecordKind::Chunk,
            &Digest::of(b"something else"),
            Codec::Raw,
            payload.len() as u32,
            payload,
        );
        let h = parse_found_header(&header_of(&r)).unwrap();
        check_crc(&r, &h, &r[HEADER_LEN..]).unwrap();
        assert!(matches!(
            check_found_record(&r, &h, &r[HEADER_LEN..]),
            Err(RecordError::Content(_))
        ));
    }

    #[test]
    fn a_found_header_with_reserved_bytes_set_is_refused() {
        let mut r = record(b"x");
        r[7] = 1;
        assert_eq!(
            parse_found_header(&header_of(&r)),
            Err(RecordError::Reserved)
        );
    }

    #[test]
    fn a_found_tag_must_carry_a_valid_name_and_signature() {
        let key = strata_proto::SigningKey::from_seed(&[5; 32]).unwrap();
        let target = Digest::of(b"object");
        let found = |tag: &SignedTag, header_digest: &Digest| {
            let payload = tag.encode();
            let mut r = Vec::new();
            append_record(
                &mut r,
                RecordKind::SignedTag,
                header_digest,
                Codec::Raw,
                payload.len() as u32,
                &payload,
            );
            let h = parse_found_header(&header_of(&r)).unwrap();
            check_found_record(&r, &h, &r[HEADER_LEN..])
        };
        let good = SignedTag::sign("app:v1", target, 1, &key);
        found(&good, &target).unwrap();
        // Another object in the header than the tag names.
        assert!(found(&good, &Digest::of(b"other")).is_err());
        // A name the store refuses, however well signed.
        assert!(found(&SignedTag::sign("/etc/passwd", target, 1, &key), &target).is_err());
        // A forged change to a signed tag.
        let mut forged = good.clone();
        forged.target = Digest::of(b"evil");
        assert!(found(&forged, &forged.target).is_err());
    }

    #[test]
    fn a_found_step_result_must_verify_under_the_key_in_its_header() {
        let key = strata_proto::SigningKey::from_seed(&[6; 32]).unwrap();
        let step = Digest::of(b"step key");
        let mut result = StepResult {
            layer: None,
            config: b"{}".to_vec(),
            provenance: Default::default(),
            seal: None,
        };
        let found = |result: &StepResult, step: &Digest| {
            let payload = result.encode();
            let mut r = Vec::new();
            append_record(
                &mut r,
                RecordKind::Step,
                step,
                Codec::Raw,
                payload.len() as u32,
                &payload,
            );
            let h = parse_found_header(&header_of(&r)).unwrap();
            check_found_record(&r, &h, &r[HEADER_LEN..])
        };
        assert!(found(&result, &step).is_err(), "unsigned");
        result.sign(&step, &key);
        found(&result, &step).unwrap();
        assert!(found(&result, &Digest::of(b"another step")).is_err());
    }
}
