//! Layer blobs as bytes: compressing a layer tar into a blob
//! (deterministically) and reading a blob back as the tar it holds
//! (decompressing as it streams, and proving on the way that the blob is
//! what its descriptor says and the tar is what the image's config says).
//!
//! Nothing here knows where a blob came from — an OCI layout, the cache, a
//! registry — so every source of base layers gets the same checks: the
//! caller hands over `(LayerRef, bytes)` and gets the tar or a refusal.
//!
//! Determinism: gzip at level 6 with a header carrying no name, mtime 0 and
//! OS "unknown" (255, as Go's `compress/gzip` writes it); zstd at level 3,
//! one thread, with a content checksum. Same tar and same compressor
//! version, same bytes. A cluster agrees on one blob per layer even across
//! compressor versions because a layer is compressed once and its blob kept
//! in the cache by content (see `build/compressed.rs`).

use std::io::{self, BufReader, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::image::{Compression, LayerBlob, LayerRef};

/// The gzip level of layers Strata makes (flate2's default).
pub const GZIP_LEVEL: u32 = 6;
/// The zstd level of layers Strata makes (zstd's default).
pub const ZSTD_LEVEL: i32 = 3;
/// The gzip header's OS byte: "unknown", so the host does not show.
const GZIP_OS_UNKNOWN: u8 = 255;

/// Why a layer blob was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes could not be read or decompressed (a truncated or corrupt
    /// blob ends up here).
    #[error("reading the blob: {0}")]
    Read(#[source] io::Error),
    #[error("the blob is {found}, its descriptor says {expected}")]
    BlobDigest { expected: String, found: String },
    #[error("the blob is {found} bytes, its descriptor says {expected}")]
    BlobSize { expected: u64, found: u64 },
    #[error("uncompressed, the layer is {found}, the image config's diff_id says {expected}")]
    DiffId { expected: String, found: String },
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn digest(self) -> (String, u64) {
        (format!("sha256:{:x}", self.hasher.finalize()), self.bytes)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Raw<R> = BufReader<Hashing<R>>;

enum Decoder<R: Read> {
    Plain(Raw<R>),
    Gzip(flate2::bufread::MultiGzDecoder<Raw<R>>),
    Zstd(zstd::stream::read::Decoder<'static, Raw<R>>),
}

/// A layer blob read as its tar: decompressed as it streams, with the
/// blob's digest and size and the tar's diff_id checked by
/// [`LayerStream::finish`] once the caller has read what it wants.
pub struct LayerStream<R: Read> {
    decoder: Decoder<R>,
    /// SHA-256 of the decompressed bytes (unused for a plain blob, whose
    /// raw digest is its diff_id).
    tar: Hashing<()>,
}

impl<R: Read> LayerStream<R> {
    pub fn new(blob: R, compression: Compression) -> Result<Self, BlobError> {
        let raw = BufReader::with_capacity(256 << 10, Hashing::new(blob));
        let decoder = match compression {
            Compression::None => Decoder::Plain(raw),
            Compression::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(raw)),
            Compression::Zstd => Decoder::Zstd(
                zstd::stream::read::Decoder::with_buffer(raw).map_err(BlobError::Read)?,
            ),
        };
        Ok(LayerStream {
            decoder,
            tar: Hashing::new(()),
        })
    }

    /// Reads to the end (a tar reader stops at its end marker, before the
    /// padding and the compressed stream's trailer), then checks the blob
    /// against `layer.blob` and the tar against `layer.diff_id`.
    pub fn finish(mut self, layer: &LayerRef) -> Result<(), BlobError> {
        io::copy(&mut self, &mut io::sink()).map_err(BlobError::Read)?;
        let raw = match self.decoder {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
        };
        // Bytes the decoder buffered but did not use are still part of
        // the blob (trailing garbage after a complete stream).
        let (mut raw, rest) = {
            let rest = raw.buffer().to_vec();
            (raw.into_inner(), rest)
        };
        raw.hasher.update(&rest);
        raw.bytes += rest.len() as u64;
        io::copy(&mut raw, &mut io::sink()).map_err(BlobError::Read)?;
        let (blob_digest, blob_size) = raw.digest();
        if blob_digest != layer.blob.digest {
            return Err(BlobError::BlobDigest {
                expected: layer.blob.digest.clone(),
                found: blob_digest,
            });
        }
        if blob_size != layer.blob.size {
            return Err(BlobError::BlobSize {
                expected: layer.blob.size,
                found: blob_size,
            });
        }
        let tar_digest = match layer.blob.compression {
            Compression::None => blob_digest,
            _ => self.tar.digest().0,
        };
        if tar_digest != layer.diff_id {
            return Err(BlobError::DiffId {
                expected: layer.diff_id.clone(),
                found: tar_digest,
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for LayerStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.decoder {
            Decoder::Plain(r) => return r.read(buf),
            Decoder::Gzip(d) => d.read(buf)?,
            Decoder::Zstd(d) => d.read(buf)?,
        };
        self.tar.hasher.update(&buf[..n]);
        self.tar.bytes += n as u64;
        Ok(n)
    }
}

/// Compresses the layer tar read from `tar` into `out`, deterministically
/// (see the module doc), and describes the blob written.
pub fn compress_layer(
    tar: &mut impl Read,
    out: impl Write,
    compression: Compression,
) -> io::Result<LayerBlob> {
    let mut out = Hashing::new(out);
    match compression {
        Compression::None => {
            io::copy(tar, &mut out)?;
        }
        Compression::Gzip => {
            let mut gz = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(GZIP_OS_UNKNOWN)
                .write(&mut out, flate2::Compression::new(GZIP_LEVEL));
            io::copy(tar, &mut gz)?;
            gz.finish()?;
        }
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(&mut out, ZSTD_LEVEL)?;
            z.include_checksum(true)?;
            io::copy(tar, &mut z)?;
            z.finish()?;
        }
    }
    out.flush()?;
    let (digest, size) = out.digest();
    Ok(LayerBlob {
        compression,
        digest,
        size,
    })
}

/// The tar read back from a blob, checked; for tests and small blobs.
pub fn read_layer(blob: &[u8], layer: &LayerRef) -> Result<Vec<u8>, BlobError> {
    let mut stream = LayerStream::new(blob, layer.blob.compression)?;
    let mut tar = Vec::new();
    stream.read_to_end(&mut tar).map_err(BlobError::Read)?;
    stream.finish(layer)?;
    Ok(tar)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::image::sha256_digest;

    fn tar_bytes() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let data = b"hello layer\n".repeat(1000);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "a.txt", &data[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn compressed(tar: &[u8], compression: Compression) -> (Vec<u8>, LayerRef) {
        let mut out = Vec::new();
        let blob = compress_layer(&mut &tar[..], &mut out, compression).unwrap();
        assert_eq!(blob.digest, sha256_digest(&out));
        assert_eq!(blob.size, out.len() as u64);
        (
            out,
            LayerRef {
                diff_id: sha256_digest(tar),
                blob,
            },
        )
    }

    #[test]
    fn every_compression_round_trips_and_is_checked() {
        let tar = tar_bytes();
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let (blob, layer) = compressed(&tar, compression);
            assert_eq!(read_layer(&blob, &layer).unwrap(), tar, "{compression:?}");
        }
    }

    #[test]
    fn compression_is_deterministic_and_the_gzip_header_says_nothing_of_the_host() {
        let tar = tar_bytes();
        for compression in [Compression::Gzip, Compression::Zstd] {
            let (a, _) = compressed(&tar, compression);
            let (b, _) = compressed(&tar, compression);
            assert_eq!(a, b, "{compression:?}");
        }
        let (gz, _) = compressed(&tar, Compression::Gzip);
        // ID1 ID2 CM FLG MTIME(4) XFL OS: no name flag, mtime 0, OS unknown.
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(gz[3], 0, "no FNAME, FEXTRA or FCOMMENT");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(gz[9], GZIP_OS_UNKNOWN);
    }

    #[test]
    fn a_blob_whose_tar_has_another_diff_id_is_refused() {
        let tar = tar_bytes();
        let (blob, mut layer) = compressed(&tar, Compression::Gzip);
        layer.diff_id = sha256_digest(b"another tar");
        let err = read_layer(&blob, &layer).unwrap_err();
        assert!(matches!(err, BlobError::DiffId { .. }), "{err}");
        assert!(err.to_string().contains("diff_id"), "{err}");
    }

    #[test]
    fn a_truncated_blob_is_refused() {
        let tar = tar_bytes();
        for compression in [Compression::Gzip, Compression::Zstd] {
            let (blob, layer) = compressed(&tar, compression);
            let cut = &blob[..blob.len() - 9];
            let err = read_layer(cut, &layer).unwrap_err();
            assert!(
                matches!(err, BlobError::Read(_) | BlobError::BlobDigest { .. }),
                "{compression:?}: {err}"
            );
        }
    }

    #[test]
    fn a_blob_with_another_digest_or_trailing_bytes_is_refused() {
        let tar = tar_bytes();
        let (blob, mut layer) = compressed(&tar, Compression::Gzip);
        let good = layer.clone();
        layer.blob.digest = sha256_digest(b"something else");
        let err = read_layer(&blob, &layer).unwrap_err();
        assert!(matches!(err, BlobError::BlobDigest { .. }), "{err}");
        // The same tar with bytes appended to the blob: the descriptor no
        // longer describes it, whatever the decompressor makes of them.
        let mut longer = blob.clone();
        longer.extend_from_slice(&[0u8; 16]);
        assert!(read_layer(&longer, &good).is_err());
        let (zst, zlayer) = compressed(&tar, Compression::Zstd);
        let mut longer = zst.clone();
        longer.extend_from_slice(b"junk");
        assert!(read_layer(&longer, &zlayer).is_err());
    }
}
