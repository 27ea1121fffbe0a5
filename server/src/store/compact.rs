//! Compaction: rewriting a segment that is mostly dead, on the writer
//! thread (the only appender), crash-safely.
//!
//! The order is what makes it safe: (1) copy every live record to the end
//! of the active segment, as ordinary appends; (2) sync them (per the
//! fsync policy, as any write); (3) point the index at the copies; (4)
//! flush the index; (5) only then delete the old file and sync the
//! directory. A crash before (4) leaves the old file and its index entries
//! in place, with the copies past the watermark (recovery indexes them
//! again: they are valid records); a crash after (4) leaves an index that
//! no longer names the old file. Either way nothing live is lost.
//!
//! "Live" is decided against the index: a chunk record is live if its
//! index entry points at exactly this record; a manifest if the index holds
//! it; a step result if the index holds the same bytes under its key; a tag
//! record if the tag still names its object. Copies land after every older
//! record, so a rebuild from the segments ("the latest record wins") reads
//! the same state back.

use strata_proto::{Digest, SignedTag, StepResult};

use super::index::{self, ChunkEntry};
use super::record::{self, HEADER_LEN, RecordKind};
use super::segment::{Location, ScannedRecord};
use super::writer::{Writer, sub};
use super::{Shared, StoreError};

/// Copies are written out in slices of about this many bytes.
const COPY_SLICE_BYTES: usize = 8 << 20;

/// What compacting one segment did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Compacted {
    /// Size of the segment removed (0 if there was nothing to do).
    pub bytes_before: u64,
    /// Bytes of live records copied out of it.
    pub bytes_copied: u64,
}

impl Writer {
    /// Rewrites segment `id` without its dead records (see the module docs).
    pub(super) fn compact(&mut self, id: u32) -> Result<Compacted, StoreError> {
        let shared = self.shared.clone();
        let path = shared.segments.path_of(id);
        let bytes_before = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Compacted::default()),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        if id > self.segment || bytes_before == 0 {
            return Ok(Compacted::default());
        }
        if id == self.segment {
            // Copies must not land in the file being rewritten.
            self.roll()?;
        }
        let mut moved = sled::Batch::default();
        let mut watermarks: Vec<(u32, u64)> = Vec::new();
        let mut failure: Option<StoreError> = None;
        let mut bytes_copied = 0u64;
        shared
            .segments
            .scan(id, 0, |rec| {
                if failure.is_some() {
                    return;
                }
                match self.copy_if_live(&shared, &rec, &mut moved, &mut watermarks) {
                    Ok(n) => bytes_copied += n,
                    Err(e) => failure = Some(e),
                }
            })
            .map_err(|e| StoreError::io(format!("scanning segment {id} to compact it"), e))?;
        if let Some(e) = failure {
            return Err(e);
        }
        self.write_buf()?;
        watermarks.push((self.segment, self.len));
        shared.chunks.apply_batch(moved)?;
        for (segment, len) in watermarks {
            shared
                .meta
                .insert(index::watermark_key(segment), &len.to_le_bytes())?;
        }
        // Records of objects evicted earlier go with the file, while their
        // chunks' records may survive elsewhere: from now on a rebuild must
        // look for what it brings back incomplete (`gc::drop_dangling`).
        shared
            .gc_figures
            .insert(super::gc::COMPACTED_KEY, &[1u8][..])?;
        shared.db.flush()?;
        shared
            .segments
            .remove(id)
            .map_err(|e| StoreError::io(format!("removing compacted segment {id}"), e))?;
        shared.forget_segment(id);
        // The old segment's watermark stays: should a power cut bring the
        // file back, recovery does not read its stale records again.
        sub(&shared.counters.segment_bytes, bytes_before);
        sub(&shared.counters.segments, 1);
        tracing::info!(
            segment = id,
            bytes_before,
            bytes_copied,
            "compacted a segment"
        );
        Ok(Compacted {
            bytes_before,
            bytes_copied,
        })
    }

    /// Appends a copy of `rec` if it is live; returns the bytes copied.
    fn copy_if_live(
        &mut self,
        shared: &Shared,
        rec: &ScannedRecord,
        moved: &mut sled::Batch,
        watermarks: &mut Vec<(u32, u64)>,
    ) -> Result<u64, StoreError> {
        let h = &rec.header;
        if !is_live(shared, rec)? {
            return Ok(0);
        }
        let record_len = (HEADER_LEN + rec.payload.len()) as u64;
        let pending = self.len + self.buf.len() as u64;
        if pending + record_len > shared.config.segment_bytes && pending > 0 {
            self.write_buf()?;
            watermarks.push((self.segment, self.len));
            self.roll()?;
        }
        let location = Location {
            segment: self.segment,
            offset: self.len + self.buf.len() as u64,
        };
        record::append_record(
            &mut self.buf,
            h.kind,
            &h.digest,
            h.codec,
            h.raw_len,
            &rec.payload,
        );
        if h.kind == RecordKind::Chunk {
            let entry = ChunkEntry {
                location,
                raw_len: h.raw_len,
                stored_len: h.stored_len,
                codec: h.codec,
            };
            moved.insert(index::digest_key(&h.digest), &entry.encode());
        }
        if self.buf.len() >= COPY_SLICE_BYTES {
            self.write_buf()?;
        }
        Ok(record_len)
    }
}

/// Whether the index still needs this record (see the module docs).
fn is_live(shared: &Shared, rec: &ScannedRecord) -> Result<bool, StoreError> {
    let digest: &Digest = &rec.header.digest;
    Ok(match rec.header.kind {
        RecordKind::Chunk => shared
            .chunks
            .get(index::digest_key(digest))?
            .and_then(|v| ChunkEntry::decode(&v))
            .is_some_and(|e| e.location == rec.location),
        RecordKind::Manifest => shared.manifests.contains_key(index::digest_key(digest))?,
        // A step result or tag is live while the index holds exactly it
        // under its key and signer.
        RecordKind::Step => match StepResult::decode(&rec.payload)
            .ok()
            .and_then(|r| r.signer())
        {
            Some(signer) => shared
                .steps
                .get(index::StepIndexKey::new(digest, &signer))?
                .is_some_and(|v| v.as_ref() == rec.payload.as_slice()),
            None => false,
        },
        RecordKind::SignedTag => match SignedTag::decode(&rec.payload) {
            Ok(tag) => shared
                .tags
                .get(index::tag_index_key(&tag.name, &tag.seal.signer))?
                .is_some_and(|v| v.as_ref() == rec.payload.as_slice()),
            Err(_) => false,
        },
        // Never indexed since signatures (schema 7).
        RecordKind::UnsignedTag => false,
    })
}
