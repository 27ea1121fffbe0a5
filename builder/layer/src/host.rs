//! Reading host directories for the change producers: `lstat` that never
//! follows symlinks, directory listings in canonical (byte) order, content
//! comparison, and turning what was found into a `Node` with container ids.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{IdMap, LayerError, LayerPath, Node, NodeKind};

/// What `lstat` found at a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostKind {
    Dir,
    File,
    Symlink(OsString),
    Fifo,
    Socket,
    CharDevice { rdev: u64 },
    BlockDevice,
}

/// A host file system object, as far as a layer cares.
#[derive(Debug, Clone)]
pub(crate) struct HostNode {
    pub kind: HostKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Host ids.
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
}

impl HostNode {
    pub fn is_dir(&self) -> bool {
        self.kind == HostKind::Dir
    }

    /// overlayfs records a deletion as a character device 0/0.
    pub fn is_overlay_whiteout(&self) -> bool {
        self.kind == HostKind::CharDevice { rdev: 0 }
    }

    /// True if kind, permissions, owner and (for symlinks) target agree.
    /// File contents are compared separately (`same_file`).
    pub fn same_metadata(&self, other: &HostNode) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
    }

    /// The layer node for this object at image path `rel`, read from host
    /// path `abs`. Sockets have no tar form and give `None`; device nodes are
    /// refused because a rootless build can neither create nor ship them.
    pub fn to_node(
        &self,
        rel: &LayerPath,
        abs: &Path,
        idmap: &IdMap,
    ) -> Result<Option<Node>, LayerError> {
        let kind = match &self.kind {
            HostKind::Dir => NodeKind::Dir,
            HostKind::File => NodeKind::File {
                source: abs.to_path_buf(),
            },
            HostKind::Symlink(target) => NodeKind::Symlink {
                target: target.clone(),
            },
            HostKind::Fifo => NodeKind::Fifo,
            HostKind::Socket => return Ok(None),
            HostKind::CharDevice { .. } => return Err(device_error(rel, "character")),
            HostKind::BlockDevice => return Err(device_error(rel, "block")),
        };
        let (uid, gid) = idmap
            .owner_to_container(self.uid, self.gid)
            .map_err(|err| LayerError::owner(rel, err))?;
        Ok(Some(Node {
            kind,
            mode: self.mode,
            uid,
            gid,
        }))
    }
}

fn device_error(path: &LayerPath, kind: &'static str) -> LayerError {
    LayerError::DeviceNode {
        path: path.clone(),
        kind,
    }
}

/// `lstat` of `path`; `None` if nothing is there.
pub(crate) fn read_node(path: &Path) -> Result<Option<HostNode>, LayerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(LayerError::io("lstat", path)(err)),
    };
    let file_type = meta.file_type();
    let kind = if file_type.is_dir() {
        HostKind::Dir
    } else if file_type.is_file() {
        HostKind::File
    } else if file_type.is_symlink() {
        HostKind::Symlink(
            fs::read_link(path)
                .map_err(LayerError::io("readlink", path))?
                .into(),
        )
    } else if file_type.is_fifo() {
        HostKind::Fifo
    } else if file_type.is_socket() {
        HostKind::Socket
    } else if file_type.is_char_device() {
        HostKind::CharDevice { rdev: meta.rdev() }
    } else {
        HostKind::BlockDevice
    };
    Ok(Some(HostNode {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
    }))
}

/// The names in directory `dir`, sorted by their bytes.
pub(crate) fn read_dir_sorted(dir: &Path) -> Result<Vec<OsString>, LayerError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(LayerError::io("list directory", dir))? {
        names.push(
            entry
                .map_err(LayerError::io("list directory", dir))?
                .file_name(),
        );
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Whether two regular files hold the same bytes. Both are known to have
/// the same size; a differing read length counts as different.
pub(crate) fn same_contents(a: &Path, b: &Path) -> Result<bool, LayerError> {
    let mut fa = File::open(a).map_err(LayerError::io("open", a))?;
    let mut fb = File::open(b).map_err(LayerError::io("open", b))?;
    let mut buf_a = vec![0u8; 64 * 1024];
    let mut buf_b = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut fa, &mut buf_a).map_err(LayerError::io("read", a))?;
        let m = read_full(&mut fb, &mut buf_b).map_err(LayerError::io("read", b))?;
        if n != m || buf_a[..n] != buf_b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}
