//! Segment files: the append-only home of every record.
//!
//! Segments are named `NNNNNNNN.seg` by a growing id. Only the writer thread
//! appends (to the highest id); readers use positional reads on shared file
//! handles, so any number of them run at once without a lock on the data
//! path. A segment is never rewritten, only extended — or, at recovery,
//! truncated back past a torn tail that no index entry can point into.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
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

/// Where a scan stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanEnd {
    /// Offset just past the last record that could be walked.
    pub valid_end: u64,
    /// The segment's length.
    pub len: u64,
    /// Complete records skipped because their checksum failed.
    pub corrupt_skipped: u64,
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
    pub fn open_for_append(&self, id: u32) -> io::Result<(File, u64)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path_of(id))?;
        let len = file.metadata()?.len();
        Ok((file, len))
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
    /// valid record. A complete record whose checksum fails with more bytes
    /// after it is rot, not a torn write: it is skipped (and counted) and the
    /// scan goes on. The scan stops at the first byte that cannot start a
    /// record; [`ScanEnd::valid_end`] says where.
    pub fn scan(
        &self,
        id: u32,
        from: u64,
        mut visit: impl FnMut(ScannedRecord),
    ) -> io::Result<ScanEnd> {
        let mut file = File::open(self.path_of(id))?;
        let len = file.metadata()?.len();
        let mut end = ScanEnd {
            valid_end: from.min(len),
            len,
            corrupt_skipped: 0,
        };
        if from >= len {
            return Ok(end);
        }
        io::Seek::seek(&mut file, io::SeekFrom::Start(from))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut offset = from;
        loop {
            end.valid_end = offset;
            let mut header_bytes = [0u8; HEADER_LEN];
            if read_full(&mut reader, &mut header_bytes)? < HEADER_LEN {
                return Ok(end);
            }
            let Ok(header) = record::parse_header(&header_bytes) else {
                return Ok(end);
            };
            let mut payload = vec![0u8; header.stored_len as usize];
            if read_full(&mut reader, &mut payload)? < payload.len() {
                return Ok(end);
            }
            let next = offset + (HEADER_LEN + payload.len()) as u64;
            if record::check_crc(&header_bytes, &header, &payload).is_err() {
                if next >= len {
                    return Ok(end); // the last record: possibly torn
                }
                tracing::error!(
                    segment = id,
                    offset,
                    digest = %header.digest,
                    "record fails its checksum; skipped (run a scrub)"
                );
                end.corrupt_skipped += 1;
                offset = next;
                continue;
            }
            visit(ScannedRecord {
                location: Location {
                    segment: id,
                    offset,
                },
                header,
                payload,
            });
            offset = next;
        }
    }

    /// Moves bytes `from..` of segment `id` into a quarantine file beside it
    /// (`NNNNNNNN.tail-OFFSET`, never read as a segment) and cuts the
    /// segment there: recovery removes a torn tail without destroying
    /// anything an operator might want to inspect.
    pub fn quarantine_tail(&self, id: u32, from: u64) -> io::Result<PathBuf> {
        let path = self.path_of(id);
        let mut segment = OpenOptions::new().read(true).write(true).open(&path)?;
        let aside = self.dir.join(format!("{id:08}.tail-{from}"));
        let mut out = File::create(&aside)?;
        io::Seek::seek(&mut segment, io::SeekFrom::Start(from))?;
        io::copy(&mut segment, &mut out)?;
        out.sync_all()?;
        segment.set_len(from)?;
        segment.sync_all()?;
        self.drop_readers();
        Ok(aside)
    }

    /// Forgets cached read handles (after a segment is truncated).
    pub fn drop_readers(&self) {
        self.readers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
