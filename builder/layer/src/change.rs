//! `Change`: one entry of a layer's changeset, the common currency between
//! the producers (tree diff, overlay upper, COPY) and the tar writer.
//!
//! A change carries *container* ids and, for regular files, the host path to
//! read the bytes from at write time; it holds no timestamps, because a layer
//! records none of its own (every mtime is the build's epoch).

use std::ffi::OsString;
use std::path::PathBuf;

use super::path::LayerPath;

/// One entry of a changeset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: LayerPath,
    pub kind: ChangeKind,
}

/// What happens at a change's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// The path is added or replaced by this node.
    Add(Node),
    /// The path and everything below it is removed (a `.wh.<name>` whiteout).
    Delete,
    /// The directory at the path hides everything lower layers put in it (a
    /// `.wh..wh..opq` marker). The directory's own entry is a separate `Add`.
    Opaque,
}

/// A file system object as a layer records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Container uid.
    pub uid: u32,
    /// Container gid.
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    /// A regular file whose bytes are read from `source` (a host path) when
    /// the layer is written. Two `File` changes whose sources are the same
    /// host inode become a tar hard link when the writer preserves links.
    File {
        source: PathBuf,
    },
    /// The target is content: it is stored as is and never followed.
    Symlink {
        target: OsString,
    },
    /// A hard link to another path of the same layer, which must sort before
    /// this one.
    Hardlink {
        target: LayerPath,
    },
    Fifo,
}

impl Change {
    pub fn add(path: LayerPath, node: Node) -> Self {
        Self {
            path,
            kind: ChangeKind::Add(node),
        }
    }

    pub fn delete(path: LayerPath) -> Self {
        Self {
            path,
            kind: ChangeKind::Delete,
        }
    }

    pub fn opaque(path: LayerPath) -> Self {
        Self {
            path,
            kind: ChangeKind::Opaque,
        }
    }
}
