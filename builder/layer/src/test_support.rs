//! Helpers shared by the layer tests: building trees, snapshotting a tree
//! for comparison, and writing raw tar entries — including the hostile ones
//! that `tar::Builder`'s path setters would refuse to write.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use tar::{EntryType, Header};

use super::{
    ApplyOptions, ApplySummary, Change, ChangeKind, IdMap, LayerError, NodeKind, WriteOptions,
};

/// The uid and gid that files created by this process get.
pub fn me() -> (u32, u32) {
    let dir = tempfile::tempdir().unwrap();
    let meta = fs::metadata(dir.path()).unwrap();
    (meta.uid(), meta.gid())
}

pub fn is_root() -> bool {
    me().0 == 0
}

/// Fails the test, saying how to run it, unless it runs as root: a test
/// that needs root must not pass by doing nothing.
pub fn require_root(for_what: &str) {
    assert!(
        is_root(),
        "this test needs root {for_what}; run the suite as root, as CI does: sudo scripts/test"
    );
}

/// The map an unprivileged build without subordinate ids has: container 0
/// is this process's user.
pub fn my_idmap() -> IdMap {
    let (uid, gid) = me();
    IdMap::single(uid, gid)
}

pub fn write(root: &Path, rel: &str, contents: &[u8], mode: u32) -> PathBuf {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
    path
}

pub fn mkdir(root: &Path, rel: &str, mode: u32) -> PathBuf {
    let path = root.join(rel);
    fs::create_dir_all(&path).unwrap();
    fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
    path
}

pub fn link(root: &Path, rel: &str, target: &str) -> PathBuf {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    symlink(target, &path).unwrap();
    path
}

pub fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

pub fn set_mtime(path: &Path, secs: u64) {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let file = File::open(path).unwrap();
    file.set_times(FileTimes::new().set_modified(time).set_accessed(time))
        .unwrap();
}

/// Lists `dir` recursively as sorted relative names (for "nothing was
/// written here" checks).
pub fn listing(dir: &Path) -> Vec<String> {
    snapshot(dir).into_keys().collect()
}

/// What a tree holds, as far as a layer can carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    /// "dir", "file <contents>", "symlink -> <target>", "fifo", "other".
    pub what: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// For a file with other hard links: the first path of its inode.
    pub linked_to: Option<String>,
}

/// Every object under `root` (not `root` itself) by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<String, Snap> {
    let mut out = BTreeMap::new();
    let mut first_of_inode = HashMap::new();
    walk(root, root, &mut out, &mut first_of_inode);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Snap>,
    first_of_inode: &mut HashMap<(u64, u64), String>,
) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = dir.join(&name);
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_file() {
            format!(
                "file {}",
                String::from_utf8_lossy(&fs::read(&path).unwrap())
            )
        } else if ft.is_symlink() {
            format!("symlink -> {}", fs::read_link(&path).unwrap().display())
        } else if std::os::unix::fs::FileTypeExt::is_fifo(&ft) {
            "fifo".to_string()
        } else {
            "other".to_string()
        };
        let linked_to = (ft.is_file() && meta.nlink() > 1).then(|| {
            first_of_inode
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        out.insert(
            rel.clone(),
            Snap {
                what,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                linked_to,
            },
        );
        if ft.is_dir() {
            walk(root, &path, out, first_of_inode);
        }
    }
}

/// All of `tree` as changes (a diff against an empty directory).
pub fn tree_changes(tree: &Path, idmap: &IdMap) -> Vec<Change> {
    let empty = tempfile::tempdir().unwrap();
    super::diff_trees(empty.path(), tree, idmap).unwrap()
}

/// `changes` written as a layer with default options and the given epoch.
pub fn layer_bytes(changes: &[Change], epoch: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let options = WriteOptions {
        epoch,
        ..WriteOptions::default()
    };
    super::write_layer(changes, &mut out, &options).unwrap();
    out
}

pub fn apply(layer: &[u8], root: &Path) -> Result<ApplySummary, LayerError> {
    super::apply_layer(layer, root, &my_idmap(), &ApplyOptions::default())
}

/// A tar written entry by entry with raw names, for hostile inputs.
pub struct RawTar {
    builder: tar::Builder<Vec<u8>>,
}

impl RawTar {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// An entry with `name` and `link` stored byte for byte (each at most
    /// 100 bytes), owner 0:0, mtime 0.
    pub fn entry(self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Self {
        let mode = if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        };
        self.entry_with(name, kind, link, data, (mode, 0, 0))
    }

    /// Like `entry`, with explicit (mode, uid, gid).
    pub fn entry_with(
        mut self,
        name: &[u8],
        kind: EntryType,
        link: &[u8],
        data: &[u8],
        (mode, uid, gid): (u32, u64, u64),
    ) -> Self {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_link_name_literal(link).unwrap();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(1_000);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    pub fn file(self, name: &str, data: &str) -> Self {
        self.entry(name.as_bytes(), EntryType::Regular, b"", data.as_bytes())
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), EntryType::Directory, b"", b"")
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), EntryType::Symlink, target.as_bytes(), b"")
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name.as_bytes(), EntryType::Link, target.as_bytes(), b"")
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

/// A scratch directory holding `root` (the extraction root) next to
/// `outside`, so tests can check that nothing escaped.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        Self { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// Everything in the scratch directory except what is inside `root`.
    pub fn outside_root(&self) -> Vec<String> {
        listing(self.dir.path())
            .into_iter()
            .filter(|p| p != "root" && !p.starts_with("root/"))
            .collect()
    }
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// One line per change, file contents included, for comparing changesets
/// whose source paths differ.
pub fn describe(changes: &[Change]) -> Vec<String> {
    changes.iter().map(describe_one).collect()
}

fn describe_one(change: &Change) -> String {
    let node = match &change.kind {
        ChangeKind::Delete => return format!("- {}", change.path),
        ChangeKind::Opaque => return format!("opaque {}", change.path),
        ChangeKind::Add(node) => node,
    };
    let what = match &node.kind {
        NodeKind::Dir => "dir".to_string(),
        NodeKind::File { source } => {
            format!(
                "file {:?}",
                String::from_utf8_lossy(&fs::read(source).unwrap())
            )
        }
        NodeKind::Symlink { target } => format!("symlink -> {}", target.to_string_lossy()),
        NodeKind::Hardlink { target } => format!("hardlink -> {target}"),
        NodeKind::Fifo => "fifo".to_string(),
    };
    format!(
        "+ {} {what} {:o} {}:{}",
        change.path, node.mode, node.uid, node.gid
    )
}

/// A copy of `src` at `dst` as a copy-mode sandbox makes it: modes, owners,
/// nanosecond mtimes and hard links preserved.
pub fn clone_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(dst)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs a tool the test needs root for; false if it is not there or fails.
pub fn run_ok(program: &str, args: &[&OsStr]) -> bool {
    Command::new(program)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}
