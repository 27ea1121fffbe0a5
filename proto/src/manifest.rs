//! The manifest of an object: its ordered chunk list, total length, SHA-256
//! and media type, and the canonical encoding whose BLAKE3 is the object's
//! address.
//!
//! The canonical encoding is versioned and fixed-width, so the same object
//! has the same address on every machine. It is also how the server stores
//! manifests, so there is one encoding, not two that could drift.

use crate::{Digest, DigestError, v1};

/// One entry of a manifest: a chunk and its decoded length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub digest: Digest,
    pub length: u32,
}

/// An object described by its chunks. Constructed only through
/// [`Manifest::new`] or a decoder, all of which check that the chunk lengths
/// add up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    chunks: Vec<ChunkRef>,
    total_length: u64,
    sha256: [u8; 32],
    media_type: String,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest chunk lengths add up to {sum} bytes but it declares {declared}")]
    LengthMismatch { sum: u64, declared: u64 },
    #[error("manifest chunk {index} has length 0")]
    EmptyChunk { index: usize },
    #[error("manifest chunk {index} is {length} bytes, over the {limit}-byte chunk limit")]
    ChunkTooLarge {
        index: usize,
        length: u32,
        limit: u32,
    },
    #[error("manifest sha256 must be 32 bytes, got {0}")]
    BadSha256(usize),
    #[error("manifest media type is {0} bytes, over the 255-byte limit")]
    MediaTypeTooLong(usize),
    #[error("manifest chunk {index}: {source}")]
    BadDigest { index: usize, source: DigestError },
    #[error("manifest encoding is truncated or malformed")]
    Malformed,
    #[error("manifest encoding version {0} is not supported")]
    UnknownVersion(u8),
}

const MAGIC: &[u8; 8] = b"SMANIFST";
const VERSION: u8 = 1;

/// BLAKE3 of `SCONTENT`, media type length (u8) and bytes, total length
/// (u64 LE), then each chunk's digest and length (u32 LE).
///
/// Two objects with the same chunk list are the same bytes (chunk digests are
/// BLAKE3), so they have the same SHA-256: a client that finds a manifest by
/// this key need not hash the whole object again to re-push it.
pub fn content_key(chunks: &[ChunkRef], total_length: u64, media_type: &str) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"SCONTENT");
    h.update(&[media_type.len().min(255) as u8]);
    h.update(media_type.as_bytes());
    h.update(&total_length.to_le_bytes());
    for c in chunks {
        h.update(c.digest.as_bytes());
        h.update(&c.length.to_le_bytes());
    }
    h.finalize().into()
}

impl Manifest {
    pub fn new(
        chunks: Vec<ChunkRef>,
        total_length: u64,
        sha256: [u8; 32],
        media_type: String,
    ) -> Result<Self, ManifestError> {
        if media_type.len() > 255 {
            return Err(ManifestError::MediaTypeTooLong(media_type.len()));
        }
        let mut sum = 0u64;
        for (index, c) in chunks.iter().enumerate() {
            if c.length == 0 {
                return Err(ManifestError::EmptyChunk { index });
            }
            if c.length > crate::MAX_CHUNK_BYTES {
                return Err(ManifestError::ChunkTooLarge {
                    index,
                    length: c.length,
                    limit: crate::MAX_CHUNK_BYTES,
                });
            }
            sum += u64::from(c.length);
        }
        if sum != total_length {
            return Err(ManifestError::LengthMismatch {
                sum,
                declared: total_length,
            });
        }
        Ok(Manifest {
            chunks,
            total_length,
            sha256,
            media_type,
        })
    }

    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// The SHA-256 as OCI writes a digest: `sha256:<hex>`.
    pub fn oci_digest(&self) -> String {
        oci_digest(&self.sha256)
    }

    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// The object's address: BLAKE3 of the canonical encoding.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.encode())
    }

    /// The address of the object's *content* — chunk list, length and media
    /// type, without the SHA-256 (see [`content_key`]).
    pub fn content_key(&self) -> Digest {
        content_key(&self.chunks, self.total_length, &self.media_type)
    }

    /// Canonical encoding, byte by byte (integers little-endian):
    ///
    /// | bytes  | field                                  |
    /// |--------|----------------------------------------|
    /// | 8      | magic `SMANIFST`                       |
    /// | 1      | version (1)                            |
    /// | 1      | media type length `m`                  |
    /// | m      | media type, UTF-8                      |
    /// | 8      | total length                           |
    /// | 32     | SHA-256 of the whole object            |
    /// | 8      | chunk count `n`                        |
    /// | n × 36 | per chunk: 32-byte digest, u32 length  |
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(8 + 2 + self.media_type.len() + 48 + 36 * self.chunks.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.media_type.len() as u8);
        out.extend_from_slice(self.media_type.as_bytes());
        out.extend_from_slice(&self.total_length.to_le_bytes());
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c.digest.as_bytes());
            out.extend_from_slice(&c.length.to_le_bytes());
        }
        out
    }

    /// Inverse of [`Manifest::encode`]; refuses anything it would not produce.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC {
            return Err(ManifestError::Malformed);
        }
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(ManifestError::UnknownVersion(version));
        }
        let m = r.take(1)?[0] as usize;
        let media_type = std::str::from_utf8(r.take(m)?)
            .map_err(|_| ManifestError::Malformed)?
            .to_owned();
        let total_length = r.u64()?;
        let sha256: [u8; 32] = r
            .take(32)?
            .try_into()
            .map_err(|_| ManifestError::Malformed)?;
        let n = r.u64()?;
        if n.checked_mul(36) != Some(r.0.len() as u64) {
            return Err(ManifestError::Malformed);
        }
        let mut chunks = Vec::with_capacity(n as usize);
        for entry in r.0.chunks_exact(36) {
            let digest = Digest::from_slice(&entry[..32]).map_err(|_| ManifestError::Malformed)?;
            let length = u32::from_le_bytes([entry[32], entry[33], entry[34], entry[35]]);
            chunks.push(ChunkRef { digest, length });
        }
        Manifest::new(chunks, total_length, sha256, media_type)
    }

    pub fn to_wire(&self) -> v1::Manifest {
        v1::Manifest {
            chunks: self
                .chunks
                .iter()
                .map(|c| v1::ChunkRef {
                    digest: c.digest.to_vec(),
                    length: c.length,
                })
                .collect(),
            total_length: self.total_length,
            sha256: self.sha256.to_vec(),
            media_type: self.media_type.clone(),
        }
    }

    pub fn from_wire(m: v1::Manifest) -> Result<Self, ManifestError> {
        let sha256: [u8; 32] = m
            .sha256
            .as_slice()
            .try_into()
            .map_err(|_| ManifestError::BadSha256(m.sha256.len()))?;
        let chunks = m
            .chunks
            .iter()
            .enumerate()
            .map(|(index, c)| {
                Ok(ChunkRef {
                    digest: Digest::from_slice(&c.digest)
                        .map_err(|source| ManifestError::BadDigest { index, source })?,
                    length: c.length,
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        Manifest::new(chunks, m.total_length, sha256, m.media_type)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        if self.0.len() < n {
            return Err(ManifestError::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, ManifestError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| ManifestError::Malformed)?,
        ))
    }
}

/// A SHA-256 as OCI writes a digest: `sha256:<64 lower-case hex digits>`.
pub fn oci_digest(sha256: &[u8; 32]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in sha256 {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(lengths: &[u32]) -> Manifest {
        let chunks = lengths
            .iter()
            .map(|&length| ChunkRef {
                digest: Digest::of(&length.to_le_bytes()),
                length,
            })
            .collect();
        let total = lengths.iter().map(|&l| u64::from(l)).sum();
        Manifest::new(chunks, total, [7; 32], "application/octet-stream".into()).unwrap()
    }

    /// What a manifest was made with is what it answers, and what it
    /// answers after a round trip through its encoding and the wire.
    #[test]
    fn a_manifest_answers_what_it_was_made_with() {
        let m = sample(&[10, 20]);
        let check = |m: &Manifest| {
            assert_eq!(m.total_length(), 30);
            assert_eq!(m.sha256(), &[7; 32]);
            assert_eq!(m.media_type(), "application/octet-stream");
            let lengths: Vec<u32> = m.chunks().iter().map(|c| c.length).collect();
            assert_eq!(lengths, [10, 20]);
            assert_eq!(m.chunks()[0].digest, Digest::of(&10u32.to_le_bytes()));
        };
        check(&m);
        check(&Manifest::decode(&m.encode()).unwrap());
        check(&Manifest::from_wire(m.to_wire()).unwrap());
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused() {
        let mut wire = sample(&[10, 20]).to_wire();
        wire.total_length = 31;
        let err = Manifest::from_wire(wire).unwrap_err();
        assert!(matches!(
            err,
            ManifestError::LengthMismatch {
                sum: 30,
                declared: 31
            }
        ));
    }

    #[test]
    fn truncated_encoding_is_refused() {
        let bytes = sample(&[1, 2, 3]).encode();
        for cut in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..cut]).is_err(),
                "accepted a cut at {cut}"
            );
        }
    }

    /// SHA-256 of no bytes.
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn from_hex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn sha256(hex: &str) -> [u8; 32] {
        from_hex(hex).try_into().unwrap()
    }

    // Known answers: the bytes below were written out by hand from the
    // table on `Manifest::encode`, and the addresses computed from them by
    // `b3sum`, not by this crate. If one of these fails, every address in
    // every store has moved: bump the encoding version instead.

    #[test]
    fn empty_object_has_a_fixed_encoding_and_address() {
        let m = Manifest::new(
            Vec::new(),
            0,
            sha256(EMPTY_SHA256),
            "application/octet-stream".into(),
        )
        .unwrap();
        assert_eq!(
            m.encode(),
            from_hex(concat!(
                "534d414e494653540118",
                "6170706c69636174696f6e2f6f637465742d73747265616d",
                "0000000000000000",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "0000000000000000"
            ))
        );
        assert_eq!(
            m.digest().to_string(),
            "b3:c73b32d3d5acdf44c25f35fe8c586d8f61cd46f23117fe371f1bba3db1fccf20"
        );
        assert_eq!(
            m.oci_digest(),
            format!("sha256:{EMPTY_SHA256}"),
            "the OCI digest of no bytes"
        );
    }

    #[test]
    fn a_one_chunk_object_has_a_fixed_encoding_address_and_content_key() {
        let data = b"hello, strata\n";
        let chunk = ChunkRef {
            digest: Digest::of(data),
            length: data.len() as u32,
        };
        assert_eq!(
            chunk.digest.to_string(),
            "b3:d575463e21d4e7221f0b5e6584f2ba86b61ffce60ec4c3391fb8adef901fe9f3"
        );
        let m = Manifest::new(
            vec![chunk],
            data.len() as u64,
            sha256("bb29f1a5f49dd84ca0c2be96c09d024a302b89e7c366fe1438218dc5d04c12ea"),
            "application/octet-stream".into(),
        )
        .unwrap();
        assert_eq!(
            m.encode(),
            from_hex(concat!(
                "534d414e494653540118",
                "6170706c69636174696f6e2f6f637465742d73747265616d",
                "0e00000000000000",
                "bb29f1a5f49dd84ca0c2be96c09d024a302b89e7c366fe1438218dc5d04c12ea",
                "0100000000000000",
                "d575463e21d4e7221f0b5e6584f2ba86b61ffce60ec4c3391fb8adef901fe9f3",
                "0e000000"
            ))
        );
        assert_eq!(
            m.digest().to_string(),
            "b3:662001931645d5ad4a31f468424268aa7dae2553fe2031a2a24e88f7f1b00684"
        );
        assert_eq!(
            m.content_key().to_string(),
            "b3:cc6c604b8e1421f26f8211c193cf741cff3d2b0ee2970f04677e6da3b5d447b8"
        );
    }

    proptest! {
        #[test]
        fn encoding_round_trips(lengths in proptest::collection::vec(1u32..1_000_000, 0..50)) {
            let m = sample(&lengths);
            prop_assert_eq!(Manifest::decode(&m.encode()).unwrap(), m.clone());
            prop_assert_eq!(Manifest::from_wire(m.to_wire()).unwrap(), m);
        }
    }
}
