//! Layers: turning file system changes into deterministic OCI layer tars, and
//! applying layer tars to the builder's working rootfs without letting them
//! write anywhere else.
//!
//! Data flow:
//!
//! ```text
//!  RUN, copy sandbox   ── diff_trees(lower, copy) ──────────┐
//!  RUN, overlay sandbox ─ diff_overlay(lower, upper) ───────┤
//!                         (or changes_from_overlay_upper)   ├─ Vec<Change> ─ write_layer ─ tar bytes
//!  COPY / ADD ─────────── copy_changes(items, rootfs) ──────┘                               │
//!  parent layers, and every new layer ─────────────────────── apply_layer(tar, rootfs) ◄────┘
//! ```
//!
//! Invariants:
//! - **The writer is a pure function of its changeset** (paths, modes,
//!   container ids, file bytes, link targets) and the epoch: no host uid,
//!   timestamp, user name or inode number reaches its output, so identical
//!   inputs give identical bytes on any machine.
//! - **The extractor never writes outside the root it is given** and never
//!   follows a symlink while extracting: hostile paths, symlinked parents and
//!   escaping hard links are refused with an error naming the entry. It
//!   assumes nothing else changes the root while it runs.
//! - Container ids appear in layers; host ids on disk. `IdMap` is the only
//!   place they are translated.
//!
//! Overlay mode: prefer `diff_overlay`, which gives exactly the changeset
//! `diff_trees` gives in copy mode, so a step's layer digest does not depend
//! on which sandbox mode the machine could use. `changes_from_overlay_upper`
//! converts the upper directory alone (whiteouts, opaque markers, every
//! copied-up file) and is kept for callers that have no lower tree.
//!
//! Privilege: everything here runs as whoever calls it, and is the same
//! code for every caller. Reading a mode-000 file, writing into a directory
//! of another id, or chowning to ids other than the caller's own, needs
//! root or a user namespace mapping those ids in which the caller is root:
//! a non-root builder with subordinate ids runs inside one of its own
//! (strata-sandbox's `enter_build_namespace`), so that the ids of its
//! `IdMap` are all its to use. Without either, an unprivileged caller gets
//! an error naming the file.
//!
//! This module does no networking, no hashing and no compression: callers wrap
//! the `Write` or `Read` they pass in. It runs one external tool, `mkfifo`,
//! because std cannot make a fifo without `unsafe`.

mod change;
mod copy;
mod diff;
mod extract;
mod host;
mod idmap;
mod overlay;
mod path;
mod write;

#[cfg(test)]
mod test_support;

use std::io;
use std::path::{Path, PathBuf};

pub use change::{Change, ChangeKind, Node, NodeKind};
pub use copy::{CopyItem, copy_changes, resolve_image_path, workdir_changes, write_copy_layer};
pub use diff::{diff_overlay, diff_trees};
pub use extract::{ApplyOptions, ApplySummary, Skipped, apply_layer};
pub use idmap::{IdKind, IdMap, IdMapError, IdRange};
pub use overlay::changes_from_overlay_upper;
pub use path::{LayerPath, PathProblem};
pub use write::{LayerSummary, WriteOptions, write_layer};

/// Everything that can go wrong producing or applying a layer. Each variant
/// names the entry (as an image path, `/usr/bin/x`) or the host path it is
/// about, and says what was expected.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer entry path {path:?} is refused: {problem}")]
    InvalidPath { path: String, problem: PathProblem },

    #[error("hard link {path} -> {target:?} is refused: as a target path, {problem}")]
    InvalidLinkTarget {
        path: LayerPath,
        target: String,
        problem: PathProblem,
    },

    #[error("hard link {path} -> {target} is refused: the target {problem}")]
    BadHardlinkTarget {
        path: LayerPath,
        target: LayerPath,
        problem: &'static str,
    },

    #[error(
        "layer entry {path} is refused: {parent} is a symlink, and extraction never follows \
         symlinks (expected a real directory)"
    )]
    SymlinkInPath { path: LayerPath, parent: LayerPath },

    #[error("layer entry {path} needs {parent} to be a directory, found a {found}")]
    ParentNotDirectory {
        path: LayerPath,
        parent: LayerPath,
        found: &'static str,
    },

    #[error(
        "layer entry {path} is a {kind} device node; a rootless build cannot create device nodes"
    )]
    DeviceNode { path: LayerPath, kind: &'static str },

    #[error("layer entry {path} is malformed: {problem}")]
    MalformedEntry { path: LayerPath, problem: String },

    #[error("layer entry {path} has tar entry type {entry_type:?}, which is not supported")]
    UnsupportedEntryType { path: LayerPath, entry_type: char },

    #[error(
        "layer entry {path} is owned by {kind} {id}; this build runs with a single mapped id \
         (configure /etc/subuid for the user)"
    )]
    SingleIdMapping {
        path: LayerPath,
        kind: IdKind,
        id: u32,
    },

    #[error(
        "layer entry {path} is owned by container {kind} {id}, which is not mapped \
         (mapped container {kind}s: {mapped})"
    )]
    UnmappedContainerId {
        path: LayerPath,
        kind: IdKind,
        id: u32,
        mapped: String,
    },

    #[error(
        "{path} is owned by host {kind} {id}, which maps to no container {kind} \
         (mapped host {kind}s: {mapped})"
    )]
    UnmappedHostId {
        path: LayerPath,
        kind: IdKind,
        id: u32,
        mapped: String,
    },

    #[error(transparent)]
    IdMap(IdMapError),

    #[error(
        "cannot make host {uid}:{gid} the owner of {path}: {source} \
         (run as root or inside the build's user namespace)"
    )]
    Chown {
        path: LayerPath,
        uid: u32,
        gid: u32,
        source: io::Error,
    },

    #[error("the layer has two entries for {path}")]
    DuplicatePath { path: LayerPath },

    #[error("{path} cannot be written into a layer: {problem}")]
    Unrepresentable { path: LayerPath, problem: String },

    #[error(
        "{path}: source file {source_path} changed while the layer was written \
         (expected {expected} bytes, read {found})"
    )]
    SourceChanged {
        path: LayerPath,
        source_path: PathBuf,
        expected: u64,
        found: u64,
    },

    #[error(
        "layer entry {path}: the tar holds {found} bytes of content, its header says {expected}"
    )]
    Truncated {
        path: LayerPath,
        expected: u64,
        found: u64,
    },

    #[error(
        "{path}: overlayfs attribute {xattr} is set; mount the overlay with metacopy=off and \
         redirect_dir=off so that the upper directory holds whole files"
    )]
    OverlayFeature { path: PathBuf, xattr: String },

    #[error("reading the layer tar (after {entries} entries): {source}")]
    Tar { entries: u64, source: io::Error },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl LayerError {
    /// An `io::Error` from operation `op` on host path `path`.
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayerError {
        let path = path.to_path_buf();
        move |source| LayerError::Io { op, path, source }
    }

    /// An id that `IdMap` could not translate, for the entry at `path`.
    pub(crate) fn owner(path: &LayerPath, err: IdMapError) -> LayerError {
        let path = path.clone();
        match err {
            IdMapError::SingleMapping { kind, id } => {
                LayerError::SingleIdMapping { path, kind, id }
            }
            IdMapError::ContainerIdUnmapped { kind, id, mapped } => {
                LayerError::UnmappedContainerId {
                    path,
                    kind,
                    id,
                    mapped,
                }
            }
            IdMapError::HostIdUnmapped { kind, id, mapped } => LayerError::UnmappedHostId {
                path,
                kind,
                id,
                mapped,
            },
            err @ IdMapError::Invalid { .. } => LayerError::IdMap(err),
        }
    }
}
