//! `ADD` of a local archive: a tar, plain or gzip- or zstd-compressed
//! (recognised by its bytes, not its name, as Docker does), is unpacked at
//! the destination instead of copied. Unpacking goes through the layer
//! crate's extractor, so an archive entry can never land outside the
//! scratch directory it is unpacked into.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use strata_layer::{ApplyOptions, IdMap, apply_layer};

/// What a file's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Archive {
    Tar,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// `ustar` at offset 257 of a tar header (POSIX and GNU both).
const USTAR_OFFSET: usize = 257;

/// The archive format of `path`, if it is one this builder unpacks.
/// bzip2 and xz archives are copied as files, with no error: Docker would
/// unpack them, which is documented as not supported yet.
pub(crate) fn archive_kind(path: &Path) -> std::io::Result<Option<Archive>> {
    let mut head = [0u8; 512];
    let mut file = File::open(path)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    let head = &head[..filled];
    Ok(if head.starts_with(&GZIP_MAGIC) {
        Some(Archive::Gzip)
    } else if head.starts_with(&ZSTD_MAGIC) {
        Some(Archive::Zstd)
    } else if head.get(USTAR_OFFSET..USTAR_OFFSET + 5) == Some(b"ustar") {
        Some(Archive::Tar)
    } else {
        None
    })
}

/// Unpacks `archive` into the empty directory `into`.
pub(crate) fn unpack(path: &Path, kind: Archive, into: &Path, ids: &IdMap) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let reader: Box<dyn Read> = match kind {
        Archive::Tar => Box::new(BufReader::new(file)),
        Archive::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        Archive::Zstd => Box::new(zstd::Decoder::new(file).map_err(|e| e.to_string())?),
    };
    let options = ApplyOptions {
        skip_device_nodes: true,
    };
    apply_layer(reader, into, ids, &options)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn archives_are_recognised_by_their_bytes_not_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of("a.txt", b"hello");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let cases: [(&str, Vec<u8>, Option<Archive>); 5] = [
            ("plain.bin", tar.clone(), Some(Archive::Tar)),
            ("x.txt", gz.finish().unwrap(), Some(Archive::Gzip)),
            (
                "z",
                zstd::encode_all(&tar[..], 1).unwrap(),
                Some(Archive::Zstd),
            ),
            ("notes.tar", b"just text".to_vec(), None),
            ("empty.tar.gz", Vec::new(), None),
        ];
        for (name, bytes, expected) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(archive_kind(&path).unwrap(), expected, "{name}");
            if let Some(kind) = expected {
                let into = dir.path().join(format!("{name}.out"));
                std::fs::create_dir(&into).unwrap();
                use std::os::unix::fs::MetadataExt;
                let me = std::fs::metadata(dir.path()).unwrap();
                let ids = IdMap::single(me.uid(), me.gid());
                unpack(&path, kind, &into, &ids).unwrap();
                assert_eq!(std::fs::read(into.join("a.txt")).unwrap(), b"hello");
            }
        }
    }
}
