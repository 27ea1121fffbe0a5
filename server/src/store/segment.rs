//! Segment files: the append-only home of every record.
//!
//! Segments are named `NNNNNNNN.seg` by a growing id. Only the writer thread
//! appends (to the highest id); readers use positional reads on shared file
//! handles, so any number of them run at once without a lock on the data
//! path. A segment is never rewritten in place, only extended — or, at
//! recovery, truncated back past a torn tail that no index entry can point
//! into — and, once compaction has copied its live records elsewhere and
//! the index no longer names it, deleted whole.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::record::{self, HEADER_LEN, RecordError, RecordHeader};

/// Where a record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    /// Offset of the record header within the segment.
    pub offset: u64,
}

/// The segment directory: lists segments and serves positional reads.
pub struct Segments {
    dir: PathBuf,
    readers: RwLock<HashMap<u32, Arc<File>>>,
}

/// A record read back from disk: header and payload, CRC checked.
#[derive(Debug)]
pub struct ReadRecord {
    pub header: RecordHeader,
    /// The whole record; the payload is `buf[HEADER_LEN..]`.
    pub buf: Vec<u8>,
}

/// Why a record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{0}")]
    Invalid(#[from] RecordError),
    #[error("record is cut short by the end of the segment")]
    Truncated,
}

/// What a scan found, besides the records it handed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEnd {
    /// Offset just past the last valid record (the scan's start if none).
    /// Nothing valid follows it: `valid_end..len` is a tail no record can be
    /// read from — a torn write in the last segment, damage in a sealed one.
    pub valid_end: u64,
    /// The segment's length.
    pub len: u64,
    /// Damaged stretches stepped over because valid records follow them.
    pub skipped: Vec<Skip>,
}

impl ScanEnd {
    /// Bytes after the last valid record.
    pub fn tail_bytes(&self) -> u64 {
        self.len - self.valid_end
    }
}

/// A stretch of a segment a scan stepped over: it starts where a record was
/// due and ends where the next valid record was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub offset: u64,
    pub bytes: u64,
    pub damage: Damage,
}

/// Why the bytes at a record boundary are not a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The header is intact enough to frame a record, but header and
    /// payload fail their CRC: rot, or a torn write.
    #[error("record fails its checksum")]
    Checksum,
    /// The bytes cannot be a record header (magic, kind, codec or length).
    #[error("unreadable record header: {0}")]
    Header(RecordError),
    /// The header claims more bytes than the segment holds.
    #[error("record runs past the end of the segment")]
    Truncated,
}

/// One record met during a sequential scan.
#[derive(Debug)]
pub struct ScannedRecord {
    pub location: Location,
    pub header: RecordHeader,
    pub payload: Vec<u8>,
}

impl Segments {
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Segments {
            dir: dir.to_path_buf(),
            readers: RwLock::new(HashMap::new()),
        })
    }

    pub fn path_of(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08}.seg"))
    }

    /// Ids of the segments on disk, ascending.
    pub fn list(&self) -> io::Result<Vec<u32>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u32>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Opens (creating if needed) segment `id` for appending by the writer.
    /// A segment it creates has its directory entry synced before it is
    /// written to: a synced record in a file a power cut forgot would be
    /// lost all the same.
    pub fn open_for_append(&self, id: u32) -> io::Result<(File, u64)> {
        let path = self.path_of(id);
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path);
        let file = match created {
            Ok(file) => {
                self.sync_dir()?;
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                OpenOptions::new().read(true).write(true).open(&path)?
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        Ok((file, len))
    }

    /// Syncs every segment and the directory.
    pub fn sync_all(&self) -> io::Result<()> {
        for id in self.list()? {
            File::open(self.path_of(id))?.sync_all()?;
        }
        self.sync_dir()
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn reader(&self, id: u32) -> io::Result<Arc<File>> {
        if let Some(f) = self
            .readers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(f.clone());
        }
        let file = Arc::new(File::open(self.path_of(id))?);
        self.readers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, file.clone());
        Ok(file)
    }

    /// Reads the record at `loc` whose payload is `stored_len` bytes, and
    /// checks its CRC.
    pub fn read(&self, loc: Location, stored_len: u32) -> Result<ReadRecord, ReadError> {
        let file = self.reader(loc.segment)?;
        let mut buf = vec![0u8; HEADER_LEN + stored_len as usize];
        file.read_exact_at(&mut buf, loc.offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ReadError::Truncated
            } else {
                ReadError::Io(e)
            }
        })?;
        let header_bytes: &[u8; HEADER_LEN] = buf[..HEADER_LEN]
            .try_into()
            .map_err(|_| ReadError::Truncated)?;
        let header = record::parse_header(header_bytes)?;
        if header.stored_len != stored_len {
            return Err(ReadError::Invalid(RecordError::TooLong(header.stored_len)));
        }
        record::check_crc(&buf, &header, &buf[HEADER_LEN..])?;
        Ok(ReadRecord { header, buf })
    }

    /// Reads segment `id` from `from` to its end, calling `visit` for every
    /// valid record. Where the bytes at a record boundary are not a valid
    /// record, the scan searches forward for the next offset where one
    /// provably starts (see [`record`]'s docs on finding records again) and
    /// goes on from there, so damage costs the damaged record and not what
    /// follows; each stretch stepped over is a [`Skip`]. What no valid record
    /// follows is left as the tail, `ScanEnd::valid_end..len`: this function
    /// never changes the segment.
    pub fn scan(
        &self,
        id: u32,
        from: u64,
        mut visit: impl FnMut(ScannedRecord),
    ) -> io::Result<ScanEnd> {
        let file = File::open(self.path_of(id))?;
        let len = file.metadata()?.len();
        let mut window = Window::new(file, len);
        let mut end = ScanEnd {
            valid_end: from.min(len),
            len,
            skipped: Vec::new(),
        };
        let mut offset = from;
        while offset < len {
            match window.probe(offset)? {
                Ok((header, next)) => {
                    let payload = window
                        .get(offset + HEADER_LEN as u64, header.stored_len as usize)?
                        .unwrap_or_default()
                        .to_vec();
                    visit(ScannedRecord {
                        location: Location {
                            segment: id,
                            offset,
                        },
                        header,
                        payload,
                    });
                    offset = next;
                    end.valid_end = next;
                }
                Err(damage) => match window.find_record_after(offset)? {
                    Some(next) => {
                        end.skipped.push(Skip {
                            offset,
                            bytes: next - offset,
                            damage,
                        });
                        offset = next;
                    }
                    None => break,
                },
            }
        }
        Ok(end)
    }

    /// Moves bytes `from..` of segment `id` into a quarantine file beside it
    /// (`NNNNNNNN.tail-OFFSET`, or `.tail-OFFSET.N` if that name is taken;
    /// never read as a segment) and cuts the segment there: recovery removes
    /// a torn tail without destroying anything an operator might want to
    /// inspect.
    pub fn quarantine_tail(&self, id: u32, from: u64) -> io::Result<PathBuf> {
        let path = self.path_of(id);
        let mut segment = OpenOptions::new().read(true).write(true).open(&path)?;
        let (aside, mut out) = self.create_quarantine_file(id, from)?;
        io::Seek::seek(&mut segment, io::SeekFrom::Start(from))?;
        io::copy(&mut segment, &mut out)?;
        out.sync_all()?;
        segment.set_len(from)?;
        segment.sync_all()?;
        self.drop_readers();
        Ok(aside)
    }

    /// A new quarantine file for segment `id` cut at `from`; an earlier cut
    /// at the same offset keeps its file.
    fn create_quarantine_file(&self, id: u32, from: u64) -> io::Result<(PathBuf, File)> {
        let base = format!("{id:08}.tail-{from}");
        let mut n = 0u32;
        loop {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            let path = self.dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes segment `id` (compacted: nothing indexed points into it any
    /// more) and syncs the directory so the deletion is durable. Readers
    /// that already hold its handle finish their reads.
    pub fn remove(&self, id: u32) -> io::Result<()> {
        std::fs::remove_file(self.path_of(id))?;
        self.sync_dir()?;
        self.readers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Ok(())
    }

    /// Forgets cached read handles (after a segment is truncated).
    pub fn drop_readers(&self) {
        self.readers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Bytes a scan reads at a time. Large enough that a sequential scan makes
/// few reads; a record longer than this gets a window of its own size.
const WINDOW_BYTES: usize = 1 << 20;

/// One segment seen through a sliding window of positional reads, so a scan
/// can look ahead and back (to resynchronise) without re-reading from the
/// start or seeking a stream.
struct Window {
    file: File,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl Window {
    fn new(file: File, len: u64) -> Self {
        Window {
            file,
            len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Bytes `at..at + n`, or `None` if the segment ends first.
    fn get(&mut self, at: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let Some(end) = at.checked_add(n as u64).filter(|&e| e <= self.len) else {
            return Ok(None);
        };
        let held = at >= self.start && end <= self.start + self.buf.len() as u64;
        if !held {
            // The segment is at least `n` bytes past `at`, so this fits in usize.
            let want = (n.max(WINDOW_BYTES) as u64).min(self.len - at) as usize;
            if want <= WINDOW_BYTES && self.buf.capacity() > 4 * WINDOW_BYTES {
                self.buf = Vec::new(); // let go of the buffer of a huge record
            }
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, at)?;
            self.start = at;
        }
        let i = (at - self.start) as usize;
        Ok(Some(&self.buf[i..i + n]))
    }

    /// How many bytes from `at` on the window holds.
    fn held_from(&self, at: u64) -> usize {
        let end = self.start + self.buf.len() as u64;
        if at >= self.start && at < end {
            (end - at) as usize
        } else {
            0
        }
    }

    /// The record at a known boundary, checked as every record is (header,
    /// then CRC): its header and the offset just past it.
    fn probe(&mut self, at: u64) -> io::Result<Result<(RecordHeader, u64), Damage>> {
        let Some(bytes) = self.get(at, HEADER_LEN)? else {
            return Ok(Err(Damage::Truncated));
        };
        let header_bytes = header_array(bytes);
        let header = match record::parse_header(&header_bytes) {
            Ok(h) => h,
            Err(e) => return Ok(Err(Damage::Header(e))),
        };
        let total = HEADER_LEN + header.stored_len as usize;
        let Some(rec) = self.get(at, total)? else {
            return Ok(Err(Damage::Truncated));
        };
        if record::check_crc(rec, &header, &rec[HEADER_LEN..]).is_err() {
            return Ok(Err(Damage::Checksum));
        }
        Ok(Ok((header, at + total as u64)))
    }

    /// The first offset after `after` where a record provably starts (see
    /// [`record::check_found_record`]), searching byte by byte.
    fn find_record_after(&mut self, after: u64) -> io::Result<Option<u64>> {
        let mut at = after + 1;
        while let Some(candidate) = self.find_magic(at)? {
            if self.is_found_record(candidate)? {
                return Ok(Some(candidate));
            }
            at = candidate + 1;
        }
        Ok(None)
    }

    /// The first offset at or after `at` where the record magic occurs.
    fn find_magic(&mut self, mut at: u64) -> io::Result<Option<u64>> {
        let magic = record::MAGIC;
        while at + magic.len() as u64 <= self.len {
            // Search what the window already holds before reading more: a
            // payload full of false magics then costs no reads.
            let held = self.held_from(at);
            let n = if held >= magic.len() {
                held
            } else {
                (self.len - at).min(WINDOW_BYTES as u64) as usize
            };
            let Some(bytes) = self.get(at, n)? else {
                return Ok(None);
            };
            if let Some(i) = bytes.windows(magic.len()).position(|w| w == magic) {
                return Ok(Some(at + i as u64));
            }
            // Overlap windows so a magic split between two is still seen.
            at += (n - (magic.len() - 1)) as u64;
        }
        Ok(None)
    }

    fn is_found_record(&mut self, at: u64) -> io::Result<bool> {
        let Some(bytes) = self.get(at, HEADER_LEN)? else {
            return Ok(false);
        };
        let header_bytes = header_array(bytes);
        let Ok(header) = record::parse_found_header(&header_bytes) else {
            return Ok(false);
        };
        let Some(rec) = self.get(at, HEADER_LEN + header.stored_len as usize)? else {
            return Ok(false);
        };
        Ok(record::check_found_record(rec, &header, &rec[HEADER_LEN..]).is_ok())
    }
}

/// The first [`HEADER_LEN`] bytes of `bytes`, which holds at least that many.
fn header_array(bytes: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&bytes[..HEADER_LEN]);
    header
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use strata_proto::{Codec, Digest};

    use super::*;
    use crate::store::record::RecordKind;

    /// A genuine chunk record holding `payload`.
    fn chunk_record(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        record::append_record(
            &mut out,
            RecordKind::Chunk,
            &Digest::of(payload),
            Codec::Raw,
            payload.len() as u32,
            payload,
        );
        out
    }

    fn payload(i: usize) -> Vec<u8> {
        (0..100 + 7 * i).map(|j| (j * 31 + i * 7) as u8).collect()
    }

    /// Segment 1 in a fresh directory holding `bytes`.
    fn segment_of(bytes: &[u8]) -> (tempfile::TempDir, Segments) {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        std::fs::write(segments.path_of(1), bytes).unwrap();
        (dir, segments)
    }

    /// The payloads of the records a scan of segment 1 hands over.
    fn scan_payloads(segments: &Segments) -> (Vec<Vec<u8>>, ScanEnd) {
        let mut seen = Vec::new();
        let end = segments.scan(1, 0, |r| seen.push(r.payload)).unwrap();
        (seen, end)
    }

    /// Five chunk records laid end to end, and where each starts.
    fn five_records() -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for i in 0..5 {
            starts.push(bytes.len());
            bytes.extend(chunk_record(&payload(i)));
        }
        (bytes, starts)
    }

    #[test]
    fn any_flipped_byte_of_a_middle_record_loses_that_record_only() {
        let (bytes, starts) = five_records();
        for at in starts[2]..starts[3] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            let (_dir, segments) = segment_of(&bad);
            let (seen, end) = scan_payloads(&segments);
            let expected: Vec<_> = [0, 1, 3, 4].map(payload).to_vec();
            assert_eq!(seen, expected, "flip at byte {at}");
            assert_eq!(end.valid_end, bytes.len() as u64);
            assert_eq!(end.skipped.len(), 1, "flip at byte {at}");
            assert_eq!(end.skipped[0].offset, starts[2] as u64);
            assert_eq!(end.skipped[0].bytes, (starts[3] - starts[2]) as u64);
        }
    }

    #[test]
    fn a_damaged_last_record_is_left_as_the_tail() {
        let (mut bytes, starts) = five_records();
        bytes[starts[4] + 1] ^= 0x40;
        let (_dir, segments) = segment_of(&bytes);
        let (seen, end) = scan_payloads(&segments);
        assert_eq!(seen, [0, 1, 2, 3].map(payload).to_vec());
        assert!(end.skipped.is_empty());
        assert_eq!(end.valid_end, starts[4] as u64);
        assert_eq!(end.tail_bytes(), (bytes.len() - starts[4]) as u64);
    }

    #[test]
    fn a_torn_write_after_damage_in_the_middle_is_the_tail_and_the_damage_a_skip() {
        let (mut bytes, starts) = five_records();
        bytes[starts[1] + 20] ^= 0x01;
        let torn = chunk_record(&payload(9));
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        let (_dir, segments) = segment_of(&bytes);
        let (seen, end) = scan_payloads(&segments);
        assert_eq!(seen, [0, 2, 3, 4].map(payload).to_vec());
        assert_eq!(end.skipped.len(), 1);
        assert_eq!(end.skipped[0].damage, Damage::Checksum);
        assert_eq!(end.tail_bytes(), (torn.len() / 2) as u64);
    }

    #[test]
    fn a_hole_of_zeros_between_records_is_stepped_over() {
        let (bytes, starts) = five_records();
        let mut holed = bytes[..starts[3]].to_vec();
        holed.extend(std::iter::repeat_n(0u8, 4096));
        holed.extend_from_slice(&bytes[starts[3]..]);
        let (_dir, segments) = segment_of(&holed);
        let (seen, end) = scan_payloads(&segments);
        assert_eq!(seen, (0..5).map(payload).collect::<Vec<_>>());
        assert_eq!(end.skipped.len(), 1);
        assert_eq!(end.skipped[0].offset, starts[3] as u64);
        assert_eq!(end.skipped[0].bytes, 4096);
        assert!(matches!(end.skipped[0].damage, Damage::Header(_)));
    }

    #[test]
    fn a_forged_record_inside_a_damaged_record_is_not_taken_for_a_record() {
        // A chunk whose payload is a well-framed record with a valid CRC
        // that claims another chunk's digest.
        let mut forged = Vec::new();
        let lie = b"not what the digest names".to_vec();
        record::append_record(
            &mut forged,
            RecordKind::Chunk,
            &Digest::of(&payload(0)),
            Codec::Raw,
            lie.len() as u32,
            &lie,
        );
        let mut bytes = chunk_record(&payload(0));
        let carrier_at = bytes.len();
        bytes.extend(chunk_record(&forged));
        let after_at = bytes.len();
        bytes.extend(chunk_record(&payload(1)));
        bytes[carrier_at] ^= 0x40; // the carrier's magic
        let (_dir, segments) = segment_of(&bytes);
        let (seen, end) = scan_payloads(&segments);
        assert_eq!(seen, vec![payload(0), payload(1)]);
        assert_eq!(end.skipped.len(), 1);
        assert_eq!(end.skipped[0].bytes, (after_at - carrier_at) as u64);
    }

    #[test]
    fn a_true_copy_of_a_record_inside_a_damaged_record_is_read_as_what_it_is() {
        // A segment pushed as a chunk holds real records: found by a search,
        // such a copy is kept, since its content is checked against its name.
        let inner = chunk_record(&payload(7));
        let mut bytes = chunk_record(&payload(0));
        let carrier_at = bytes.len();
        bytes.extend(chunk_record(&inner));
        bytes.extend(chunk_record(&payload(1)));
        bytes[carrier_at] ^= 0x40;
        let (_dir, segments) = segment_of(&bytes);
        let (seen, end) = scan_payloads(&segments);
        assert_eq!(seen, vec![payload(0), payload(7), payload(1)]);
        // The copy fills the carrier's payload: only its header is skipped.
        assert_eq!(end.skipped.len(), 1);
        assert_eq!(end.skipped[0].bytes, HEADER_LEN as u64);
    }

    #[test]
    fn a_scan_from_a_watermark_starts_there() {
        let (bytes, starts) = five_records();
        let (_dir, segments) = segment_of(&bytes);
        let mut seen = Vec::new();
        let end = segments
            .scan(1, starts[3] as u64, |r| seen.push(r.location.offset))
            .unwrap();
        assert_eq!(seen, vec![starts[3] as u64, starts[4] as u64]);
        assert_eq!(end.valid_end, bytes.len() as u64);
    }

    #[test]
    fn a_second_cut_at_the_same_offset_keeps_the_first_quarantine_file() {
        let (bytes, starts) = five_records();
        let (_dir, segments) = segment_of(&bytes);
        let first = segments.quarantine_tail(1, starts[4] as u64).unwrap();
        std::fs::write(segments.path_of(1), &bytes).unwrap();
        let second = segments.quarantine_tail(1, starts[4] as u64).unwrap();
        assert_ne!(first, second);
        assert_eq!(std::fs::read(&first).unwrap(), &bytes[starts[4]..]);
        assert_eq!(std::fs::read(&second).unwrap(), &bytes[starts[4]..]);
        assert_eq!(
            std::fs::metadata(segments.path_of(1)).unwrap().len(),
            starts[4] as u64
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Garbage between records, even garbage full of magics and
        /// header-like bytes, is one skip and never a record.
        #[test]
        fn garbage_between_records_is_one_skip_and_never_a_record(
            garbage in proptest::collection::vec(
                prop_oneof![
                    4 => any::<u8>().prop_map(|b| vec![b]),
                    1 => Just(record::MAGIC.to_vec()),
                    1 => Just(chunk_record(&payload(3))[..HEADER_LEN].to_vec()),
                ],
                1..200,
            ),
            at in 0usize..5,
        ) {
            let garbage: Vec<u8> = garbage.concat();
            let (bytes, starts) = five_records();
            let mut dirty = bytes[..starts[at]].to_vec();
            dirty.extend_from_slice(&garbage);
            dirty.extend_from_slice(&bytes[starts[at]..]);
            let (_dir, segments) = segment_of(&dirty);
            let (seen, end) = scan_payloads(&segments);
            prop_assert_eq!(seen, (0..5).map(payload).collect::<Vec<_>>());
            prop_assert_eq!(end.skipped.len(), 1);
            prop_assert_eq!(end.skipped[0].offset, starts[at] as u64);
            prop_assert_eq!(end.skipped[0].bytes, garbage.len() as u64);
        }
    }
}
