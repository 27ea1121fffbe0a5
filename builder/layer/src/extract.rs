//! The safe extractor: applies one OCI layer tar to a root directory, as the
//! OCI image spec's "Applying Changesets" describes, and refuses anything
//! that could reach outside that root.
//!
//! Rules, checked for every entry before the entry itself is written:
//! - **Paths** must be relative and contain no `..` component (even one that
//!   would stay inside); `./` prefixes and repeated slashes are fine.
//! - **Parents** are walked component by component with `lstat`. A missing
//!   parent is created (0755, owner container 0:0); an existing parent must
//!   be a real directory: a symlink parent is refused, even one pointing
//!   inside the root. Layers written by walking a file system (this module,
//!   Docker, BuildKit) never route an entry through a symlink, so a layer
//!   that does is either hand-made or hostile.
//! - **The entry itself** is never written through: whatever is at its path
//!   is removed first (unless directory over directory, which is kept and
//!   updated), and files are created with `O_CREAT|O_EXCL`.
//! - **Symlink targets** are stored verbatim, absolute or not, and never
//!   followed.
//! - **Hard links** must name an existing non-directory inside the root,
//!   reached through real directories only.
//! - **Device nodes** are refused (or, with `skip_device_nodes`, skipped and
//!   reported): a rootless build cannot create them. Fifos are created.
//! - **Whiteouts** `.wh.name` delete `name` and its subtree; `.wh..wh..opq`
//!   empties its directory. Both apply only to what earlier layers put
//!   there: paths this layer has already written are kept, whatever the
//!   entry order. Other `.wh..wh.*` names (aufs metadata) are skipped. A name
//!   starting with `.wh.` elsewhere in a path is refused.
//! - **Owners** are container ids translated by `IdMap`; the file is chowned
//!   only when its owner differs, so an unprivileged user with a single
//!   mapping needs no privilege for entries owned by container 0.
//! - **Times**: files and directories get the header's mtime (whole
//!   seconds) as mtime and atime; symlinks and fifos keep the time of
//!   extraction (std cannot set them without following the link or opening
//!   the fifo).
//!
//! Directories' final modes and mtimes are applied after the last entry,
//! deepest first, so a read-only directory can still be filled and its mtime
//! is not moved by its children. The entry for the root itself (`./`) is
//! ignored. The extractor assumes nothing else modifies the root while it
//! runs; on error the root is left part-way and should be discarded.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use tar::{Entry, EntryType};

use super::host::read_dir_sorted;
use super::path::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::{IdMap, LayerError, LayerPath, PathProblem};

/// Name prefix of aufs metadata (`.wh..wh.plnk` and friends).
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
/// Mode of parent directories a layer implies but does not contain.
const IMPLIED_DIR_MODE: u32 = 0o755;

/// How to apply a layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Skip device nodes (listed in the summary) instead of refusing the
    /// layer. Base images from some distributions ship `/dev` entries.
    pub skip_device_nodes: bool,
}

/// What applying a layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Entries created or updated (whiteouts and opaque markers included).
    pub entries: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Entries deliberately not applied.
    pub skipped: Vec<Skipped>,
}

/// An entry that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: LayerPath,
    pub reason: &'static str,
}

/// Applies the uncompressed OCI layer tar read from `layer` to `root`.
pub fn apply_layer<R: Read>(
    layer: R,
    root: &Path,
    idmap: &IdMap,
    options: &ApplyOptions,
) -> Result<ApplySummary, LayerError> {
    let mut extractor = Extractor {
        root,
        idmap,
        options,
        created: BTreeSet::new(),
        dir_finals: BTreeMap::new(),
        summary: ApplySummary::default(),
        seen: 0,
    };
    let mut archive = tar::Archive::new(layer);
    let entries = archive
        .entries()
        .map_err(|source| LayerError::Tar { entries: 0, source })?;
    for entry in entries {
        let entry = entry.map_err(|source| LayerError::Tar {
            entries: extractor.seen,
            source,
        })?;
        extractor.seen += 1;
        extractor.apply_entry(entry)?;
    }
    extractor.finish()
}

/// What a tar name asks for.
enum Target {
    Root,
    Whiteout { entry: LayerPath, victim: LayerPath },
    Opaque { entry: LayerPath, dir: LayerPath },
    AufsMeta(LayerPath),
    Plain(LayerPath),
}

fn classify_name(raw: &[u8]) -> Result<Target, LayerError> {
    let invalid = |problem| LayerError::InvalidPath {
        path: String::from_utf8_lossy(raw).into_owned(),
        problem,
    };
    let path = LayerPath::parse(raw).map_err(invalid)?;
    let Some(parent) = path.parent() else {
        return Ok(Target::Root);
    };
    parent.check_not_reserved().map_err(invalid)?;
    let name = path.file_name();
    if name == OPAQUE_MARKER {
        return Ok(Target::Opaque {
            entry: path,
            dir: parent,
        });
    }
    if name.starts_with(AUFS_META_PREFIX) {
        return Ok(Target::AufsMeta(path));
    }
    if let Some(victim) = name.strip_prefix(WHITEOUT_PREFIX) {
        let victim = parent.join(OsStr::from_bytes(victim)).map_err(invalid)?;
        return Ok(Target::Whiteout {
            entry: path,
            victim,
        });
    }
    Ok(Target::Plain(path))
}

/// Header fields every created entry uses.
struct EntryMeta {
    mode: u32,
    host_uid: u32,
    host_gid: u32,
    mtime: u64,
}

/// Whether the parents of a path exist as real directories.
enum Parents {
    Ready(PathBuf),
    Missing,
}

/// What a directory gets once the whole layer is applied.
#[derive(Debug, Clone, Copy)]
struct DirFinal {
    mode: u32,
    mtime: Option<u64>,
}

struct Extractor<'a> {
    root: &'a Path,
    idmap: &'a IdMap,
    options: &'a ApplyOptions,
    /// Paths this layer has written, including implied parents.
    created: BTreeSet<LayerPath>,
    /// Directories whose mode (and mtime) is set at the end.
    dir_finals: BTreeMap<PathBuf, DirFinal>,
    summary: ApplySummary,
    /// Tar entries read so far, for error messages.
    seen: u64,
}

impl Extractor<'_> {
    fn host(&self, path: &LayerPath) -> PathBuf {
        self.root.join(path.as_path())
    }

    fn apply_entry<R: Read>(&mut self, mut entry: Entry<'_, R>) -> Result<(), LayerError> {
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        match classify_name(&raw)? {
            Target::Root => Ok(()),
            Target::AufsMeta(path) => {
                self.skip(path, "aufs metadata");
                Ok(())
            }
            Target::Whiteout { entry, victim } => self.apply_whiteout(&entry, &victim),
            Target::Opaque { entry, dir } => self.apply_opaque(&entry, &dir),
            Target::Plain(path) => {
                let as_dir = entry_type == EntryType::Regular && raw.ends_with(b"/");
                self.apply_node(
                    &path,
                    &mut entry,
                    if as_dir {
                        EntryType::Directory
                    } else {
                        entry_type
                    },
                )
            }
        }
    }

    fn apply_node<R: Read>(
        &mut self,
        path: &LayerPath,
        entry: &mut Entry<'_, R>,
        entry_type: EntryType,
    ) -> Result<(), LayerError> {
        match entry_type {
            EntryType::Char | EntryType::Block => return self.refuse_device(path, entry_type),
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Fifo => {}
            other => {
                return Err(LayerError::UnsupportedEntryType {
                    path: path.clone(),
                    entry_type: char::from(other.as_byte()),
                });
            }
        }
        let meta = self.entry_meta(path, entry)?;
        let abs = self.prepare_parents(path)?;
        match entry_type {
            EntryType::Directory => self.make_dir(path, &abs, &meta)?,
            EntryType::Symlink => self.make_symlink(path, &abs, entry, &meta)?,
            EntryType::Link => self.make_hardlink(path, &abs, entry)?,
            EntryType::Fifo => self.make_fifo(path, &abs, &meta)?,
            _ => self.write_file(path, &abs, entry, &meta)?,
        }
        self.created.insert(path.clone());
        self.summary.entries += 1;
        Ok(())
    }

    fn refuse_device(&mut self, path: &LayerPath, entry_type: EntryType) -> Result<(), LayerError> {
        if self.options.skip_device_nodes {
            self.skip(path.clone(), "device node");
            return Ok(());
        }
        Err(LayerError::DeviceNode {
            path: path.clone(),
            kind: if entry_type == EntryType::Char {
                "character"
            } else {
                "block"
            },
        })
    }

    fn skip(&mut self, path: LayerPath, reason: &'static str) {
        self.summary.skipped.push(Skipped { path, reason });
    }

    /// Mode, host owner and mtime from the header; fails (before anything is
    /// written) if the owner cannot be mapped.
    fn entry_meta<R: Read>(
        &self,
        path: &LayerPath,
        entry: &Entry<'_, R>,
    ) -> Result<EntryMeta, LayerError> {
        let header = entry.header();
        let malformed = |what: &str, err: io::Error| LayerError::MalformedEntry {
            path: path.clone(),
            problem: format!("unreadable {what} field: {err}"),
        };
        let id = |value: u64, kind: &str| {
            u32::try_from(value).map_err(|_| LayerError::MalformedEntry {
                path: path.clone(),
                problem: format!("{kind} {value} is larger than any Linux id"),
            })
        };
        let uid = id(header.uid().map_err(|e| malformed("uid", e))?, "uid")?;
        let gid = id(header.gid().map_err(|e| malformed("gid", e))?, "gid")?;
        let (host_uid, host_gid) = self
            .idmap
            .owner_to_host(uid, gid)
            .map_err(|err| LayerError::owner(path, err))?;
        Ok(EntryMeta {
            mode: header.mode().map_err(|e| malformed("mode", e))? & 0o7777,
            host_uid,
            host_gid,
            mtime: header.mtime().map_err(|e| malformed("mtime", e))?,
        })
    }

    /// Makes every parent of `path` a real directory inside the root,
    /// creating missing ones, and returns the host path of `path`.
    fn prepare_parents(&mut self, path: &LayerPath) -> Result<PathBuf, LayerError> {
        for parent in path.ancestors() {
            let abs = self.host(&parent);
            match fs::symlink_metadata(&abs) {
                Ok(meta) if meta.is_dir() => self.make_traversable(&abs, &meta),
                Ok(meta) => return Err(parent_error(path, parent, &meta)),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    self.make_implied_dir(&parent, &abs)?;
                }
                Err(err) => return Err(LayerError::io("lstat", &abs)(err)),
            }
        }
        Ok(self.host(path))
    }

    /// Like `prepare_parents` but creates nothing: for whiteouts and hard
    /// link targets, where a missing parent means a missing path. A symlink
    /// parent is still refused, naming `entry`.
    fn existing_parents(&self, path: &LayerPath, entry: &LayerPath) -> Result<Parents, LayerError> {
        for parent in path.ancestors() {
            let abs = self.host(&parent);
            match fs::symlink_metadata(&abs) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(parent_error(entry, parent, &meta));
                }
                Ok(_) => return Ok(Parents::Missing),
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Parents::Missing),
                Err(err) => return Err(LayerError::io("lstat", &abs)(err)),
            }
        }
        Ok(Parents::Ready(self.host(path)))
    }

    /// A parent directory the owner cannot write or search (0555, 0500) is
    /// opened up for the rest of the layer and restored at the end. Without
    /// privilege over a directory someone else owns this fails, and the
    /// entry's own error says why.
    fn make_traversable(&mut self, abs: &Path, meta: &fs::Metadata) {
        let mode = meta.mode() & 0o7777;
        if mode & 0o700 == 0o700 || self.dir_finals.contains_key(abs) {
            return;
        }
        if fs::set_permissions(abs, Permissions::from_mode(mode | 0o700)).is_ok() {
            self.dir_finals
                .insert(abs.to_path_buf(), DirFinal { mode, mtime: None });
        }
    }

    fn make_implied_dir(&mut self, path: &LayerPath, abs: &Path) -> Result<(), LayerError> {
        let (host_uid, host_gid) = self
            .idmap
            .owner_to_host(0, 0)
            .map_err(|err| LayerError::owner(path, err))?;
        DirBuilder::new()
            .mode(IMPLIED_DIR_MODE)
            .create(abs)
            .map_err(LayerError::io("create directory", abs))?;
        set_owner(path, abs, None, host_uid, host_gid)?;
        fs::set_permissions(abs, Permissions::from_mode(IMPLIED_DIR_MODE))
            .map_err(LayerError::io("chmod", abs))?;
        self.created.insert(path.clone());
        Ok(())
    }

    fn make_dir(
        &mut self,
        path: &LayerPath,
        abs: &Path,
        meta: &EntryMeta,
    ) -> Result<(), LayerError> {
        if !clear_destination(abs, true)? {
            DirBuilder::new()
                .mode(0o700)
                .create(abs)
                .map_err(LayerError::io("create directory", abs))?;
        }
        set_owner(path, abs, None, meta.host_uid, meta.host_gid)?;
        // Writable by its owner until the layer is done, whatever its mode.
        fs::set_permissions(abs, Permissions::from_mode(meta.mode | 0o700))
            .map_err(LayerError::io("chmod", abs))?;
        self.dir_finals.insert(
            abs.to_path_buf(),
            DirFinal {
                mode: meta.mode,
                mtime: Some(meta.mtime),
            },
        );
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        path: &LayerPath,
        abs: &Path,
        entry: &mut Entry<'_, R>,
        meta: &EntryMeta,
    ) -> Result<(), LayerError> {
        clear_destination(abs, false)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(abs)
            .map_err(LayerError::io("create", abs))?;
        let expected = entry.size();
        let written = io::copy(entry, &mut file).map_err(LayerError::io("extract", abs))?;
        if written != expected {
            return Err(LayerError::Truncated {
                path: path.clone(),
                expected,
                found: written,
            });
        }
        set_owner(path, abs, Some(&file), meta.host_uid, meta.host_gid)?;
        file.set_permissions(Permissions::from_mode(meta.mode))
            .map_err(LayerError::io("chmod", abs))?;
        file.set_times(file_times(meta.mtime))
            .map_err(LayerError::io("set times of", abs))?;
        self.summary.bytes += written;
        Ok(())
    }

    fn make_symlink<R: Read>(
        &mut self,
        path: &LayerPath,
        abs: &Path,
        entry: &Entry<'_, R>,
        meta: &EntryMeta,
    ) -> Result<(), LayerError> {
        let target = entry
            .link_name_bytes()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| LayerError::MalformedEntry {
                path: path.clone(),
                problem: "symlink without a target".into(),
            })?;
        clear_destination(abs, false)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), abs)
            .map_err(LayerError::io("create symlink", abs))?;
        set_owner(path, abs, None, meta.host_uid, meta.host_gid)
    }

    /// A hard link takes its target's mode, owner and times: they are one
    /// inode, so the link entry's own header fields are not applied.
    fn make_hardlink<R: Read>(
        &mut self,
        path: &LayerPath,
        abs: &Path,
        entry: &Entry<'_, R>,
    ) -> Result<(), LayerError> {
        let raw = entry.link_name_bytes().unwrap_or_default();
        let invalid = |problem| LayerError::InvalidLinkTarget {
            path: path.clone(),
            target: String::from_utf8_lossy(&raw).into_owned(),
            problem,
        };
        let target = LayerPath::parse(&raw).map_err(invalid)?;
        if target.is_root() {
            return Err(invalid(PathProblem::Root));
        }
        let bad_target = |problem| LayerError::BadHardlinkTarget {
            path: path.clone(),
            target: target.clone(),
            problem,
        };
        let Parents::Ready(target_abs) = self.existing_parents(&target, path)? else {
            return Err(bad_target("does not exist in the root"));
        };
        match fs::symlink_metadata(&target_abs) {
            Ok(meta) if meta.is_dir() => return Err(bad_target("is a directory")),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(bad_target("does not exist in the root"));
            }
            Err(err) => return Err(LayerError::io("lstat", &target_abs)(err)),
        }
        if target == *path {
            return Ok(());
        }
        clear_destination(abs, false)?;
        fs::hard_link(&target_abs, abs).map_err(LayerError::io("hard link", abs))
    }

    /// std has no mkfifo, and this crate allows no `unsafe`, so the
    /// coreutils tool makes it. Fifos in images are rare.
    fn make_fifo(
        &mut self,
        path: &LayerPath,
        abs: &Path,
        meta: &EntryMeta,
    ) -> Result<(), LayerError> {
        clear_destination(abs, false)?;
        let status = Command::new("mkfifo")
            .args(["-m", "600", "--"])
            .arg(abs)
            .status()
            .map_err(LayerError::io("run mkfifo for", abs))?;
        if !status.success() {
            return Err(LayerError::io("mkfifo", abs)(io::Error::other(format!(
                "mkfifo exited with {status}"
            ))));
        }
        set_owner(path, abs, None, meta.host_uid, meta.host_gid)?;
        fs::set_permissions(abs, Permissions::from_mode(meta.mode))
            .map_err(LayerError::io("chmod", abs))
    }

    fn apply_whiteout(&mut self, entry: &LayerPath, victim: &LayerPath) -> Result<(), LayerError> {
        if !self.created.contains(victim)
            && let Parents::Ready(abs) = self.existing_parents(victim, entry)?
        {
            remove_if_present(&abs)?;
        }
        self.summary.whiteouts += 1;
        self.summary.entries += 1;
        Ok(())
    }

    fn apply_opaque(&mut self, entry: &LayerPath, dir: &LayerPath) -> Result<(), LayerError> {
        self.prepare_parents(entry)?;
        let dir_abs = self.host(dir);
        for name in read_dir_sorted(&dir_abs)? {
            let child = dir.join(&name).map_err(|problem| LayerError::InvalidPath {
                path: format!("{dir}/{}", name.to_string_lossy()),
                problem,
            })?;
            if !self.created_at_or_below(&child) {
                remove_if_present(&dir_abs.join(&name))?;
            }
        }
        self.summary.whiteouts += 1;
        self.summary.entries += 1;
        Ok(())
    }

    /// True if this layer wrote `path` or something below it.
    fn created_at_or_below(&self, path: &LayerPath) -> bool {
        self.created
            .range(path.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    /// Sets directories' final mtimes and modes, deepest first, so a parent
    /// made read-only cannot block its children.
    fn finish(self) -> Result<ApplySummary, LayerError> {
        let mut dirs: Vec<(PathBuf, DirFinal)> = self.dir_finals.into_iter().collect();
        dirs.sort_by_key(|(abs, _)| Reverse(abs.components().count()));
        for (abs, last) in dirs {
            if !fs::symlink_metadata(&abs).is_ok_and(|m| m.is_dir()) {
                continue; // removed later in the layer
            }
            if let Some(mtime) = last.mtime {
                File::open(&abs)
                    .and_then(|dir| dir.set_times(file_times(mtime)))
                    .map_err(LayerError::io("set times of", &abs))?;
            }
            fs::set_permissions(&abs, Permissions::from_mode(last.mode))
                .map_err(LayerError::io("chmod", &abs))?;
        }
        Ok(self.summary)
    }
}

fn parent_error(path: &LayerPath, parent: LayerPath, meta: &fs::Metadata) -> LayerError {
    if meta.file_type().is_symlink() {
        return LayerError::SymlinkInPath {
            path: path.clone(),
            parent,
        };
    }
    LayerError::ParentNotDirectory {
        path: path.clone(),
        parent,
        found: if meta.is_file() {
            "regular file"
        } else {
            "special file"
        },
    }
}

/// Makes room for a new entry at `abs`: keeps an existing directory when the
/// new entry is a directory too (returns true), otherwise removes whatever
/// is there without following it.
fn clear_destination(abs: &Path, new_is_dir: bool) -> Result<bool, LayerError> {
    match fs::symlink_metadata(abs) {
        Ok(meta) if meta.is_dir() && new_is_dir => Ok(true),
        Ok(_) => remove_if_present(abs).map(|()| false),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(LayerError::io("lstat", abs)(err)),
    }
}

/// Removes `abs` and, for a directory, everything below it. Symlinks are
/// removed, never followed; directories the owner cannot write are opened
/// up first so an unprivileged build can delete what it extracted.
fn remove_if_present(abs: &Path) -> Result<(), LayerError> {
    let meta = match fs::symlink_metadata(abs) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(LayerError::io("lstat", abs)(err)),
    };
    if !meta.is_dir() {
        return fs::remove_file(abs).map_err(LayerError::io("remove", abs));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o700 != 0o700 {
        // Best effort: root needs no permission bits at all.
        let _ = fs::set_permissions(abs, Permissions::from_mode(mode | 0o700));
    }
    for name in read_dir_sorted(abs)? {
        remove_if_present(&abs.join(name))?;
    }
    fs::remove_dir(abs).map_err(LayerError::io("remove directory", abs))
}

/// Gives `abs` (or the open `file` at it) the host owner, if it does not
/// have it already. Never follows a symlink.
fn set_owner(
    path: &LayerPath,
    abs: &Path,
    file: Option<&File>,
    uid: u32,
    gid: u32,
) -> Result<(), LayerError> {
    let current = match file {
        Some(file) => file.metadata(),
        None => fs::symlink_metadata(abs),
    }
    .map_err(LayerError::io("stat", abs))?;
    if current.uid() == uid && current.gid() == gid {
        return Ok(());
    }
    match file {
        Some(file) => std::os::unix::fs::fchown(file, Some(uid), Some(gid)),
        None => std::os::unix::fs::lchown(abs, Some(uid), Some(gid)),
    }
    .map_err(|source| LayerError::Chown {
        path: path.clone(),
        uid,
        gid,
        source,
    })
}

fn file_times(mtime: u64) -> FileTimes {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime);
    FileTimes::new().set_accessed(time).set_modified(time)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use tar::EntryType;

    use super::*;
    use crate::test_support::*;
    use crate::{Change, WriteOptions, write_layer};

    fn path(s: &str) -> LayerPath {
        LayerPath::parse(s.as_bytes()).unwrap()
    }

    /// Applies `layer`, expecting an error, and returns its message after
    /// checking that nothing changed outside the root.
    fn refused(sandbox: &Sandbox, layer: &[u8]) -> String {
        let before = snapshot(sandbox.dir.path());
        let err = apply(layer, &sandbox.root()).unwrap_err().to_string();
        let outside = |snap: BTreeMap<String, Snap>| -> Vec<(String, Snap)> {
            snap.into_iter()
                .filter(|(p, _)| !p.starts_with("root"))
                .collect()
        };
        assert_eq!(
            outside(snapshot(sandbox.dir.path())),
            outside(before),
            "{err}"
        );
        err
    }

    #[test]
    fn a_written_layer_applied_to_an_empty_root_reproduces_the_tree() {
        let tree = tempfile::tempdir().unwrap();
        let t = tree.path();
        write(t, "bin/busybox", b"binary", 0o4755);
        fs::hard_link(t.join("bin/busybox"), t.join("bin/ls")).unwrap();
        link(t, "bin/sh", "/bin/busybox");
        link(t, "lib64", "usr/lib");
        link(t, "dangling", "../../nowhere");
        write(t, "etc/shadow", b"root:*:", 0o600);
        // Without privilege nobody can read a mode-0 file, the writer neither.
        write(t, "etc/empty", b"", if is_root() { 0o000 } else { 0o400 });
        write(t, "ro/inside", b"still here", 0o444);
        mkdir(t, "ro", 0o555);
        mkdir(t, "tmp", 0o1777);
        write(
            t,
            &format!("{}/{}", "x".repeat(150), "y".repeat(150)),
            b"long",
            0o644,
        );
        write(t, "caf\u{e9}", b"utf8", 0o644);
        fs::write(t.join(std::ffi::OsStr::from_bytes(b"latin\xe9")), b"raw").unwrap();
        mkfifo(&t.join("pipe"));

        let layer = layer_bytes(&tree_changes(t, &my_idmap()), 1_234_567);
        let root = tempfile::tempdir().unwrap();
        let summary = apply(&layer, root.path()).unwrap();

        assert_eq!(snapshot(root.path()), snapshot(t));
        assert_eq!(summary.bytes, 6 + 7 + 10 + 4 + 4 + 3);
        assert!(summary.skipped.is_empty());
        for rel in ["bin/busybox", "etc", "ro", "ro/inside"] {
            let mtime = fs::symlink_metadata(root.path().join(rel)).unwrap().mtime();
            assert_eq!(mtime, 1_234_567, "{rel}");
        }
        fs::set_permissions(t.join("ro"), Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.path().join("ro"), Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn whiteouts_and_opaque_dirs_remove_only_what_earlier_layers_put_there() {
        let root = tempfile::tempdir().unwrap();
        let first = RawTar::new()
            .file("a/keep", "1")
            .file("a/gone", "2")
            .file("d/old", "3")
            .file("d/sub/old", "4")
            .file("x/y/z", "5")
            .finish();
        apply(&first, root.path()).unwrap();

        // The opaque marker comes *after* d/new here: order must not matter.
        let second = RawTar::new()
            .file("a/.wh.gone", "")
            .file(".wh.x", "")
            .file("d/new", "6")
            .file("d/.wh..wh..opq", "")
            .file("a/.wh.never-existed", "")
            .finish();
        let summary = apply(&second, root.path()).unwrap();

        assert_eq!(listing(root.path()), ["a", "a/keep", "d", "d/new"]);
        assert_eq!(summary.whiteouts, 4);
    }

    #[test]
    fn a_whiteout_does_not_remove_what_the_same_layer_wrote() {
        let root = tempfile::tempdir().unwrap();
        let layer = RawTar::new().file("f", "new").file(".wh.f", "").finish();
        apply(&layer, root.path()).unwrap();
        assert_eq!(fs::read(root.path().join("f")).unwrap(), b"new");
    }

    #[test]
    fn new_entries_replace_whatever_is_at_their_path_without_following_it() {
        let sandbox = Sandbox::new();
        let root = sandbox.root();
        write(&sandbox.outside(), "target", b"outside", 0o644);
        write(&root, "file_to_dir", b"f", 0o644);
        write(&root, "dir_to_file/inner", b"i", 0o644);
        link(
            &root,
            "link",
            sandbox.outside().join("target").to_str().unwrap(),
        );
        link(&root, "dirlink", sandbox.outside().to_str().unwrap());

        let layer = RawTar::new()
            .dir("file_to_dir/")
            .file("file_to_dir/child", "c")
            .file("dir_to_file", "now a file")
            .file("link", "replaced")
            .dir("dirlink")
            .file("dirlink/inside", "in")
            .finish();
        apply(&layer, &root).unwrap();

        assert_eq!(
            fs::read(sandbox.outside().join("target")).unwrap(),
            b"outside"
        );
        assert_eq!(sandbox.outside_root(), ["outside", "outside/target"]);
        let snap = snapshot(&root);
        assert_eq!(snap["file_to_dir"].what, "dir");
        assert_eq!(snap["dir_to_file"].what, "file now a file");
        assert_eq!(snap["link"].what, "file replaced");
        assert_eq!(snap["dirlink"].what, "dir");
        assert_eq!(snap["dirlink/inside"].what, "file in");
    }

    #[test]
    fn a_read_only_directory_is_filled_and_keeps_its_mode() {
        let root = tempfile::tempdir().unwrap();
        let ro =
            |layer: RawTar| layer.entry_with(b"ro/", EntryType::Directory, b"", b"", (0o555, 0, 0));
        apply(&ro(RawTar::new()).file("ro/a", "a").finish(), root.path()).unwrap();
        // A later layer writes into, and deletes from, the existing 0555 dir.
        apply(
            &RawTar::new()
                .file("ro/b", "b")
                .file("ro/.wh.a", "")
                .finish(),
            root.path(),
        )
        .unwrap();

        let snap = snapshot(root.path());
        assert_eq!(snap["ro"].mode, 0o555);
        assert_eq!(listing(root.path()), ["ro", "ro/b"]);
        fs::set_permissions(root.path().join("ro"), Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn escaping_and_absolute_paths_are_refused() {
        let cases = [
            (
                "../escape",
                "layer entry path \"../escape\" is refused: it contains a '..' component",
            ),
            (
                "/abs",
                "layer entry path \"/abs\" is refused: it is absolute",
            ),
            (
                "a/../../x",
                "layer entry path \"a/../../x\" is refused: it contains a '..' component",
            ),
            (
                "./a/../b",
                "layer entry path \"./a/../b\" is refused: it contains a '..' component",
            ),
            (
                "a/.wh..",
                "layer entry path \"a/.wh..\" is refused: it names the image root",
            ),
            (
                "a/.wh...",
                "layer entry path \"a/.wh...\" is refused: it contains a '..' component",
            ),
            (
                "a/.wh.x/y",
                "layer entry path \"a/.wh.x/y\" is refused: a name starting with '.wh.' is reserved",
            ),
        ];
        for (name, message) in cases {
            let sandbox = Sandbox::new();
            let layer = RawTar::new().file("ok", "fine").file(name, "evil").finish();
            let err = refused(&sandbox, &layer);
            assert!(err.starts_with(message), "{name}: {err}");
        }
        assert!(!Path::new("/abs").exists());
    }

    #[test]
    fn nothing_is_extracted_through_a_symlinked_parent() {
        let sandbox = Sandbox::new();
        let outside = sandbox.outside();
        write(&outside, "victim", b"keep me", 0o644);
        let abs_outside = outside.to_str().unwrap().to_owned();
        let cases: [(&str, RawTar); 5] = [
            (
                "/evil/file",
                RawTar::new()
                    .symlink("evil", &abs_outside)
                    .file("evil/file", "x"),
            ),
            (
                "/evil/file",
                RawTar::new()
                    .symlink("evil", "../outside")
                    .file("evil/file", "x"),
            ),
            (
                "/evil/.wh.victim",
                RawTar::new()
                    .symlink("evil", &abs_outside)
                    .file("evil/.wh.victim", ""),
            ),
            (
                "/evil/.wh..wh..opq",
                RawTar::new()
                    .symlink("evil", &abs_outside)
                    .file("evil/.wh..wh..opq", ""),
            ),
            // Even a symlink that stays inside the root is not followed.
            (
                "/inner/file",
                RawTar::new()
                    .dir("d")
                    .symlink("inner", "d")
                    .file("inner/file", "x"),
            ),
        ];
        for (entry, layer) in cases {
            let root = sandbox.root();
            fs::remove_dir_all(&root).unwrap();
            fs::create_dir(&root).unwrap();
            let err = apply(&layer.finish(), &root).unwrap_err().to_string();
            let parent = entry.rsplit_once('/').unwrap().0;
            assert_eq!(
                err,
                format!(
                    "layer entry {entry} is refused: {parent} is a symlink, and extraction never \
                     follows symlinks (expected a real directory)"
                )
            );
            assert_eq!(sandbox.outside_root(), ["outside", "outside/victim"]);
            assert_eq!(fs::read(outside.join("victim")).unwrap(), b"keep me");
        }
    }

    #[test]
    fn hard_links_must_name_an_existing_file_inside_the_root() {
        let sandbox = Sandbox::new();
        write(&sandbox.outside(), "secret", b"s", 0o600);
        let abs_outside = sandbox.outside().to_str().unwrap().to_owned();
        let cases = [
            (
                RawTar::new().hardlink("l", "../outside/secret"),
                "hard link /l -> \"../outside/secret\" is refused: as a target path, it contains a '..' component",
            ),
            (
                RawTar::new().hardlink("l", "/etc/passwd"),
                "hard link /l -> \"/etc/passwd\" is refused: as a target path, it is absolute",
            ),
            (
                RawTar::new()
                    .symlink("evil", &abs_outside)
                    .hardlink("l", "evil/secret"),
                "layer entry /l is refused: /evil is a symlink",
            ),
            (
                RawTar::new().hardlink("l", "missing"),
                "hard link /l -> /missing is refused: the target does not exist in the root",
            ),
            (
                RawTar::new().dir("d").hardlink("l", "d"),
                "hard link /l -> /d is refused: the target is a directory",
            ),
        ];
        for (layer, message) in cases {
            let root = sandbox.root();
            fs::remove_dir_all(&root).unwrap();
            fs::create_dir(&root).unwrap();
            let err = refused(&sandbox, &layer.finish());
            assert!(err.starts_with(message), "{err}");
            assert_eq!(
                fs::metadata(sandbox.outside().join("secret"))
                    .unwrap()
                    .nlink(),
                1
            );
        }
    }

    #[test]
    fn hard_links_inside_the_root_share_the_inode() {
        let root = tempfile::tempdir().unwrap();
        let layer = RawTar::new()
            .file("a", "data")
            .hardlink("b", "./a")
            .finish();
        apply(&layer, root.path()).unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        assert_eq!(
            fs::metadata(a).unwrap().ino(),
            fs::metadata(b).unwrap().ino()
        );
    }

    #[test]
    fn device_nodes_are_refused_unless_skipping_is_asked_for() {
        let sandbox = Sandbox::new();
        let layer = RawTar::new()
            .file("dev/ok", "")
            .entry(b"dev/null", EntryType::Char, b"", b"")
            .finish();
        let err = refused(&sandbox, &layer);
        assert_eq!(
            err,
            "layer entry /dev/null is a character device node; a rootless build cannot create device nodes"
        );

        let skip = ApplyOptions {
            skip_device_nodes: true,
        };
        let summary = apply_layer(&layer[..], &sandbox.root(), &my_idmap(), &skip).unwrap();
        assert_eq!(
            summary.skipped,
            [Skipped {
                path: path("dev/null"),
                reason: "device node"
            }]
        );
        assert_eq!(listing(&sandbox.root()), ["dev", "dev/ok"]);
    }

    #[test]
    fn a_single_mapping_refuses_entries_not_owned_by_container_root() {
        let sandbox = Sandbox::new();
        let layer = RawTar::new()
            .entry_with(
                b"home/app/f",
                EntryType::Regular,
                b"",
                b"x",
                (0o644, 1000, 0),
            )
            .finish();
        let err = refused(&sandbox, &layer);
        assert_eq!(
            err,
            "layer entry /home/app/f is owned by uid 1000; this build runs with a single mapped id \
             (configure /etc/subuid for the user)"
        );
        assert!(listing(&sandbox.root()).is_empty());
    }

    #[test]
    fn a_range_mapping_gives_entries_their_host_owners() {
        require_root("to chown");
        let root = tempfile::tempdir().unwrap();
        let layer = RawTar::new()
            .entry_with(
                b"srv/www/index",
                EntryType::Regular,
                b"",
                b"x",
                (0o640, 33, 44),
            )
            .symlink("srv/link", "www")
            .finish();
        let idmap = IdMap::range(100_000, 200_000, 65_536).unwrap();
        apply_layer(&layer[..], root.path(), &idmap, &ApplyOptions::default()).unwrap();
        let snap = snapshot(root.path());
        assert_eq!(
            (snap["srv/www/index"].uid, snap["srv/www/index"].gid),
            (100_033, 200_044)
        );
        assert_eq!((snap["srv"].uid, snap["srv"].gid), (100_000, 200_000));
        assert_eq!(
            (snap["srv/link"].uid, snap["srv/link"].gid),
            (100_000, 200_000)
        );

        // And the diff maps them back to container ids.
        let empty = tempfile::tempdir().unwrap();
        let changes = crate::diff_trees(empty.path(), root.path(), &idmap).unwrap();
        let index = changes
            .iter()
            .find(|c| c.path == path("srv/www/index"))
            .unwrap();
        let crate::ChangeKind::Add(node) = &index.kind else {
            panic!("expected an addition");
        };
        assert_eq!((node.uid, node.gid, node.mode), (33, 44, 0o640));
    }

    #[test]
    fn a_truncated_layer_is_an_error_not_a_short_file() {
        let tree = tempfile::tempdir().unwrap();
        write(tree.path(), "big", &[1u8; 2000], 0o644);
        let changes: Vec<Change> = tree_changes(tree.path(), &my_idmap());
        let mut layer = Vec::new();
        write_layer(&changes, &mut layer, &WriteOptions::default()).unwrap();
        layer.truncate(1024);
        let root = tempfile::tempdir().unwrap();
        let err = apply(&layer, root.path()).unwrap_err();
        assert!(
            matches!(
                err,
                LayerError::Truncated {
                    expected: 2000,
                    found: 512,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn aufs_metadata_and_the_root_entry_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let layer = RawTar::new()
            .dir("./")
            .dir(".wh..wh.plnk")
            .file("f", "x")
            .finish();
        let summary = apply(&layer, root.path()).unwrap();
        assert_eq!(listing(root.path()), ["f"]);
        assert_eq!(summary.skipped[0].reason, "aufs metadata");
    }
}
