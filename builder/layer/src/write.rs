//! The deterministic layer writer: a changeset in, the bytes of an
//! uncompressed OCI layer tar out, identical on every machine for identical
//! inputs.
//!
//! The format, decided once:
//! - **Order**: entries sorted component by component on their tar names
//!   (byte order within a component), so a parent precedes its children and
//!   a subtree is contiguous. An opaque marker sorts first among its
//!   directory's children, as the OCI spec recommends; a whiteout `.wh.x`
//!   sorts by that literal name.
//! - **Headers**: GNU (`ustar  \0`), with GNU long-name (`L`) and long-link
//!   (`K`) records for names or link targets over 100 bytes, and GNU base-256
//!   numbers for ids or sizes too large for octal. No PAX records are ever
//!   written, so there is no PAX field whose content or order could vary.
//! - **Metadata**: every mtime is the `epoch` (`SOURCE_DATE_EPOCH`, default
//!   0) — not min(actual, epoch): a layer is a function of content, never of
//!   when the files were written. Numeric container uid/gid; empty user and
//!   group names; atime, ctime and device numbers zero; permission bits as
//!   given (`0o7777`). Directory names end in `/`.
//! - **Omitted**: extended attributes (including `security.capability`: file
//!   capabilities set by a step are lost), sockets, ACLs.
//! - **Hard links**: with `preserve_hardlinks`, regular-file sources that are
//!   the same host inode (`st_dev`, `st_ino`) are written once, at the first
//!   path in canonical order; the other paths become tar hard links to it.
//! - **Whiteouts**: `dir/.wh.name` and `dir/.wh..wh..opq` are empty regular
//!   files, mode 0, owner 0:0.
//!
//! On error the output holds a partial tar and must be discarded.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Take, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tar::{EntryType, Header};

use super::path::{OPAQUE_MARKER, WHITEOUT_PREFIX, order_key};
use super::{Change, ChangeKind, LayerError, LayerPath, Node, NodeKind};

/// Longest name (and link target) that fits a tar header without a GNU
/// long-name record.
const HEADER_NAME_LEN: usize = 100;

/// How to write a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// Seconds since the Unix epoch written as every entry's mtime: the
    /// build's `SOURCE_DATE_EPOCH`, 0 when it has none.
    pub epoch: u64,
    /// Write regular files that share a host inode as tar hard links.
    pub preserve_hardlinks: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            epoch: 0,
            preserve_hardlinks: true,
        }
    }
}

/// What a written layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSummary {
    /// Tar entries, one per change (long-name records not counted).
    pub entries: u64,
    /// Length of the tar, trailer included.
    pub bytes: u64,
}

/// Writes `changes` as an uncompressed OCI layer tar to `out`, in canonical
/// order, reading regular files from their host sources.
pub fn write_layer<W: Write>(
    changes: &[Change],
    out: W,
    options: &WriteOptions,
) -> Result<LayerSummary, LayerError> {
    let ordered = canonical_order(changes)?;
    let mut writer = TarWriter {
        builder: tar::Builder::new(CountingWriter {
            inner: out,
            count: 0,
        }),
        options,
        first_link_path: HashMap::new(),
        linkable: HashSet::new(),
        entries: 0,
    };
    for change in ordered {
        writer.append_change(change)?;
    }
    writer.finish()
}

/// The changes sorted by tar name, after checking that each can be written
/// and that no two share a name.
fn canonical_order(changes: &[Change]) -> Result<Vec<&Change>, LayerError> {
    let mut keyed = Vec::with_capacity(changes.len());
    for change in changes {
        check_writable(change)?;
        keyed.push((sort_key(change), change));
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in keyed.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(LayerError::DuplicatePath {
                path: pair[1].1.path.clone(),
            });
        }
    }
    Ok(keyed.into_iter().map(|(_, change)| change).collect())
}

fn check_writable(change: &Change) -> Result<(), LayerError> {
    let unrepresentable = |problem: String| LayerError::Unrepresentable {
        path: change.path.clone(),
        problem,
    };
    if change.path.is_root() {
        return Err(unrepresentable(
            "the image root has no entry of its own in a layer".into(),
        ));
    }
    change
        .path
        .check_not_reserved()
        .map_err(|problem| unrepresentable(problem.to_string()))
}

/// Sort key: the tar name with `/` as the smallest byte, except that an
/// opaque marker sorts right after its directory.
fn sort_key(change: &Change) -> Vec<u8> {
    match &change.kind {
        ChangeKind::Add(_) => order_key(change.path.as_bytes()),
        ChangeKind::Delete => order_key(&whiteout_name(&change.path)),
        ChangeKind::Opaque => {
            let mut key = order_key(change.path.as_bytes());
            key.push(0);
            key
        }
    }
}

/// The tar name `dir/.wh.name` that deletes `dir/name`.
fn whiteout_name(path: &LayerPath) -> Vec<u8> {
    let parent = path.parent().unwrap_or_default();
    let mut name = parent.as_bytes().to_vec();
    if !name.is_empty() {
        name.push(b'/');
    }
    name.extend_from_slice(WHITEOUT_PREFIX);
    name.extend_from_slice(path.file_name());
    name
}

/// The tar name `dir/.wh..wh..opq` that makes `dir` opaque.
fn opaque_marker_name(dir: &LayerPath) -> Vec<u8> {
    let mut name = dir.as_bytes().to_vec();
    name.push(b'/');
    name.extend_from_slice(OPAQUE_MARKER);
    name
}

struct TarWriter<'o, W: Write> {
    builder: tar::Builder<CountingWriter<W>>,
    options: &'o WriteOptions,
    /// Host inode → the layer path its bytes were written at.
    first_link_path: HashMap<(u64, u64), LayerPath>,
    /// Non-directory paths written so far: valid hard link targets.
    linkable: HashSet<LayerPath>,
    entries: u64,
}

impl<W: Write> TarWriter<'_, W> {
    fn append_change(&mut self, change: &Change) -> Result<(), LayerError> {
        match &change.kind {
            ChangeKind::Add(node) => self.append_node(&change.path, node)?,
            ChangeKind::Delete => self.append_marker(&change.path, &whiteout_name(&change.path))?,
            ChangeKind::Opaque => {
                self.append_marker(&change.path, &opaque_marker_name(&change.path))?
            }
        }
        self.entries += 1;
        Ok(())
    }

    fn append_node(&mut self, path: &LayerPath, node: &Node) -> Result<(), LayerError> {
        let name = path.as_bytes();
        match &node.kind {
            NodeKind::Dir => {
                let mut dir_name = name.to_vec();
                dir_name.push(b'/');
                let mut header = self.header(EntryType::Directory, Some(node), 0);
                self.append(path, &dir_name, None, &mut header, io::empty())?;
                return Ok(());
            }
            NodeKind::File { source } => self.append_file(path, node, source)?,
            NodeKind::Symlink { target } => {
                let mut header = self.header(EntryType::Symlink, Some(node), 0);
                self.append(
                    path,
                    name,
                    Some(target.as_bytes()),
                    &mut header,
                    io::empty(),
                )?;
            }
            NodeKind::Hardlink { target } => {
                if !self.linkable.contains(target) {
                    return Err(LayerError::BadHardlinkTarget {
                        path: path.clone(),
                        target: target.clone(),
                        problem: "is not a non-directory entry written earlier in this layer",
                    });
                }
                self.append_hardlink(path, node, target)?;
            }
            NodeKind::Fifo => {
                let mut header = self.header(EntryType::Fifo, Some(node), 0);
                self.append(path, name, None, &mut header, io::empty())?;
            }
        }
        self.linkable.insert(path.clone());
        Ok(())
    }

    fn append_file(
        &mut self,
        path: &LayerPath,
        node: &Node,
        source: &Path,
    ) -> Result<(), LayerError> {
        let file = File::open(source).map_err(LayerError::io("open", source))?;
        let meta = file.metadata().map_err(LayerError::io("stat", source))?;
        if !meta.is_file() {
            return Err(LayerError::Unrepresentable {
                path: path.clone(),
                problem: format!("its source {} is not a regular file", source.display()),
            });
        }
        if self.options.preserve_hardlinks && meta.nlink() > 1 {
            let inode = (meta.dev(), meta.ino());
            if let Some(first) = self.first_link_path.get(&inode).cloned() {
                return self.append_hardlink(path, node, &first);
            }
            self.first_link_path.insert(inode, path.clone());
        }
        let size = meta.len();
        let mut header = self.header(EntryType::Regular, Some(node), size);
        let mut reader = ExactReader {
            inner: file.take(size),
            read_failed: false,
        };
        match self.append_raw(path.as_bytes(), None, &mut header, &mut reader) {
            Ok(()) => {}
            Err(err) if reader.read_failed => return Err(LayerError::io("read", source)(err)),
            Err(err) => return Err(LayerError::io("write layer entry", path.as_path())(err)),
        }
        let read = size - reader.inner.limit();
        let grew = reader.inner.into_inner().read(&mut [0u8; 1]).unwrap_or(0) > 0;
        if read != size || grew {
            return Err(LayerError::SourceChanged {
                path: path.clone(),
                source_path: source.to_path_buf(),
                expected: size,
                found: read + u64::from(grew),
            });
        }
        Ok(())
    }

    fn append_hardlink(
        &mut self,
        path: &LayerPath,
        node: &Node,
        target: &LayerPath,
    ) -> Result<(), LayerError> {
        let mut header = self.header(EntryType::Link, Some(node), 0);
        self.append(
            path,
            path.as_bytes(),
            Some(target.as_bytes()),
            &mut header,
            io::empty(),
        )
    }

    /// A whiteout or opaque marker: empty regular file, mode 0, owner 0:0.
    fn append_marker(&mut self, path: &LayerPath, name: &[u8]) -> Result<(), LayerError> {
        let mut header = self.header(EntryType::Regular, None, 0);
        self.append(path, name, None, &mut header, io::empty())
    }

    /// A GNU header with every field this format fixes already set; mode
    /// and owner from `node`, or 0 for whiteout markers.
    fn header(&self, entry_type: EntryType, node: Option<&Node>, size: u64) -> Header {
        let (mode, uid, gid) = node.map_or((0, 0, 0), |n| (n.mode & 0o7777, n.uid, n.gid));
        let mut header = Header::new_gnu();
        header.set_entry_type(entry_type);
        header.set_mode(mode);
        header.set_uid(u64::from(uid));
        header.set_gid(u64::from(gid));
        header.set_mtime(self.options.epoch);
        header.set_size(size);
        header
    }

    /// Appends one entry, preceded by long-name/long-link records if its
    /// name or link target does not fit the header.
    fn append(
        &mut self,
        path: &LayerPath,
        name: &[u8],
        link: Option<&[u8]>,
        header: &mut Header,
        data: impl Read,
    ) -> Result<(), LayerError> {
        self.append_raw(name, link, header, data)
            .map_err(LayerError::io("write layer entry", path.as_path()))
    }

    fn append_raw(
        &mut self,
        name: &[u8],
        link: Option<&[u8]>,
        header: &mut Header,
        data: impl Read,
    ) -> io::Result<()> {
        let builder = &mut self.builder;
        set_long_field(
            builder,
            EntryType::GNULongName,
            name,
            &mut header.as_old_mut().name,
        )?;
        if let Some(link) = link {
            set_long_field(
                builder,
                EntryType::GNULongLink,
                link,
                &mut header.as_old_mut().linkname,
            )?;
        }
        header.set_cksum();
        builder.append(header, data)
    }

    fn finish(self) -> Result<LayerSummary, LayerError> {
        let finish_err = || LayerError::io("finish layer tar", Path::new("<output>"));
        let mut out = self.builder.into_inner().map_err(finish_err())?;
        out.flush().map_err(finish_err())?;
        Ok(LayerSummary {
            entries: self.entries,
            bytes: out.count,
        })
    }
}

/// Stores `value` in a header `field`; when it is too long, first writes a
/// GNU long-name or long-link record holding all of it (NUL-terminated) and
/// keeps a truncated copy in the field, as GNU tar does.
fn set_long_field<W: Write>(
    builder: &mut tar::Builder<W>,
    kind: EntryType,
    value: &[u8],
    field: &mut [u8; HEADER_NAME_LEN],
) -> io::Result<()> {
    if value.len() > HEADER_NAME_LEN {
        let mut record = Header::new_gnu();
        record.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        record.set_entry_type(kind);
        record.set_mode(0o644);
        record.set_uid(0);
        record.set_gid(0);
        record.set_mtime(0);
        record.set_size(value.len() as u64 + 1);
        record.set_cksum();
        builder.append(&record, value.chain(&[0u8][..]))?;
    }
    let kept = value.len().min(HEADER_NAME_LEN);
    field[..kept].copy_from_slice(&value[..kept]);
    Ok(())
}

/// A file reader limited to the size written in the header, remembering
/// whether the file itself failed (as opposed to the output).
struct ExactReader {
    inner: Take<File>,
    read_failed: bool,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .inspect_err(|_| self.read_failed = true)
    }
}

/// Counts the bytes that reach the output.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::fs;
    use std::path::Path;

    use tar::Archive;

    use super::*;
    use crate::test_support::*;

    /// The same logical tree, created in a different order with different
    /// mtimes in each call.
    fn build_tree(root: &Path, mtime: u64, reverse: bool) {
        let long = format!("deep/{}/{}", "d".repeat(90), "f".repeat(60));
        let mut steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| {
                write(root, "etc/hosts", b"127.0.0.1 localhost\n", 0o644);
            }),
            Box::new(|| {
                write(root, "bin/busybox", b"\x7fELF...", 0o4755);
            }),
            Box::new(|| {
                link(root, "bin/sh", "/bin/busybox");
            }),
            Box::new(|| {
                mkdir(root, "var/empty", 0o700);
            }),
            Box::new(|| {
                write(root, &long, b"long", 0o600);
            }),
        ];
        if reverse {
            steps.reverse();
        }
        for step in steps {
            step();
        }
        fs::hard_link(root.join("bin/busybox"), root.join("bin/ls")).unwrap();
        for rel in ["etc/hosts", "bin/busybox", "var/empty", "etc", "bin", "var"] {
            set_mtime(&root.join(rel), mtime);
        }
    }

    fn entry_names(layer: &[u8]) -> Vec<String> {
        let mut archive = Archive::new(layer);
        archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect()
    }

    #[test]
    fn identical_trees_with_different_mtimes_give_identical_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        build_tree(a.path(), 1_000_000, false);
        build_tree(b.path(), 2_000_000, true);
        let layer_a = layer_bytes(&tree_changes(a.path(), &my_idmap()), 0);
        let layer_b = layer_bytes(&tree_changes(b.path(), &my_idmap()), 0);
        assert!(layer_a == layer_b, "layers differ");
        assert_eq!(layer_a.len() % 512, 0);
    }

    #[test]
    fn entries_are_sorted_parents_first_with_only_fixed_metadata() {
        let tree = tempfile::tempdir().unwrap();
        build_tree(tree.path(), 1_000_000, false);
        let mut changes = tree_changes(tree.path(), &my_idmap());
        changes.push(Change::delete(LayerPath::parse(b"etc/motd").unwrap()));
        changes.push(Change::opaque(LayerPath::parse(b"var").unwrap()));
        let layer = layer_bytes(&changes, 1_700_000_000);
        let names = entry_names(&layer);
        let long = format!("deep/{}/{}", "d".repeat(90), "f".repeat(60));
        let expected = [
            "bin/",
            "bin/busybox",
            "bin/ls",
            "bin/sh",
            "deep/",
            &format!("deep/{}/", "d".repeat(90)),
            &long,
            "etc/",
            "etc/.wh.motd",
            "etc/hosts",
            "var/",
            "var/.wh..wh..opq",
            "var/empty/",
        ];
        assert_eq!(names, expected);

        let mut archive = Archive::new(&layer[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 1_700_000_000);
            assert_eq!(header.username_bytes(), Some(&b""[..]));
            assert_eq!(header.groupname_bytes(), Some(&b""[..]));
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            let gnu = header.as_gnu().unwrap();
            assert_eq!(gnu.atime, [0; 12]);
            assert_eq!(gnu.ctime, [0; 12]);
            assert_eq!(gnu.dev_major, [0; 8]);
            assert_eq!(gnu.dev_minor, [0; 8]);
        }
    }

    #[test]
    fn long_names_and_long_link_targets_survive() {
        let tree = tempfile::tempdir().unwrap();
        let name = format!("{}/{}", "n".repeat(120), "m".repeat(120));
        let target = format!("/{}", "t".repeat(200));
        link(tree.path(), &name, &target);
        let layer = layer_bytes(&tree_changes(tree.path(), &my_idmap()), 0);
        let mut archive = Archive::new(&layer[..]);
        let entries: Vec<_> = archive.entries().unwrap().map(|e| e.unwrap()).collect();
        let last = entries.last().unwrap();
        assert_eq!(&*last.path_bytes(), name.as_bytes());
        assert_eq!(&*last.link_name_bytes().unwrap(), target.as_bytes());
    }

    #[test]
    fn hard_linked_sources_become_links_to_the_first_path_unless_disabled() {
        let tree = tempfile::tempdir().unwrap();
        write(tree.path(), "b", b"shared", 0o644);
        fs::hard_link(tree.path().join("b"), tree.path().join("a")).unwrap();
        let changes = tree_changes(tree.path(), &my_idmap());

        let layer = layer_bytes(&changes, 0);
        let mut archive = Archive::new(&layer[..]);
        let kinds: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                (e.header().entry_type(), link)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (EntryType::Regular, None),
                (EntryType::Link, Some(b"a".to_vec()))
            ]
        );

        let mut copies = Vec::new();
        let options = WriteOptions {
            preserve_hardlinks: false,
            ..WriteOptions::default()
        };
        write_layer(&changes, &mut copies, &options).unwrap();
        let mut archive = Archive::new(&copies[..]);
        assert!(
            archive
                .entries()
                .unwrap()
                .all(|e| e.unwrap().header().entry_type() == EntryType::Regular)
        );
    }

    #[test]
    fn whiteouts_and_opaque_markers_are_empty_mode_zero_files() {
        let changes = [
            Change::delete(LayerPath::parse(b"gone").unwrap()),
            Change::opaque(LayerPath::parse(b"d").unwrap()),
        ];
        let layer = layer_bytes(&changes, 5);
        let mut archive = Archive::new(&layer[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(h.entry_type(), EntryType::Regular);
            assert_eq!((h.mode().unwrap(), h.size().unwrap()), (0, 0));
        }
        assert_eq!(entry_names(&layer), [".wh.gone", "d/.wh..wh..opq"]);
    }

    #[test]
    fn summary_counts_entries_and_bytes() {
        let tree = tempfile::tempdir().unwrap();
        write(tree.path(), "f", &[7u8; 1000], 0o644);
        let mut out = Vec::new();
        let summary = write_layer(
            &tree_changes(tree.path(), &my_idmap()),
            &mut out,
            &WriteOptions::default(),
        )
        .unwrap();
        assert_eq!(summary.entries, 1);
        // Header, two data blocks, two zero blocks of trailer.
        assert_eq!(summary.bytes, 5 * 512);
        assert_eq!(summary.bytes, out.len() as u64);
    }

    #[test]
    fn unwritable_changesets_are_refused_naming_the_path() {
        let dir = || Node {
            kind: NodeKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let path = |s: &str| LayerPath::parse(s.as_bytes()).unwrap();
        let cases = [
            (
                vec![
                    Change::add(path("a"), dir()),
                    Change::add(path("a/"), dir()),
                ],
                "the layer has two entries for /a",
            ),
            (
                vec![Change::add(path("x/.wh.y"), dir())],
                "/x/.wh.y cannot be written into a layer: a name starting with '.wh.' is reserved",
            ),
            (
                vec![Change::add(LayerPath::root(), dir())],
                "/ cannot be written into a layer: the image root",
            ),
            (
                vec![Change::add(
                    path("l"),
                    Node {
                        kind: NodeKind::Hardlink {
                            target: path("nowhere"),
                        },
                        ..dir()
                    },
                )],
                "hard link /l -> /nowhere is refused: the target is not a non-directory entry written earlier",
            ),
        ];
        for (changes, message) in cases {
            let err = write_layer(&changes, Vec::new(), &WriteOptions::default()).unwrap_err();
            assert!(err.to_string().starts_with(message), "{err}");
        }
    }
}
