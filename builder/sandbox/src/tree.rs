//! Directory trees for the sandbox's root filesystem on the host side:
//! [`copy_tree`] makes the writable copy used where overlayfs is refused, and
//! [`shift_ownership`] gives an extracted tree the host ids a range mapping
//! expects. Pure std + nix, no `cp`: what is preserved is exactly what the
//! layer snapshot compares.
//!
//! Preserved by the copy: file contents, modes (including setuid/setgid and
//! sticky bits), ownership (when running as root; otherwise only where the
//! kernel allows), symlinks as links, hard links between files of the tree,
//! fifos, sockets and device nodes, and access and modification times with
//! nanoseconds — so a diff by mtime, size, mode and owner finds only what the
//! step changed. Not preserved: extended attributes (file capabilities,
//! ACLs, SELinux labels), which a later version can add.
//!
//! What these trees hold must stay out of reach of the host's other users:
//! an image's setuid files, owned by the mapped host ids, would let anyone
//! who can reach them become that id and write into a running build. So
//! every directory made here for a step is 0700 or below one that is — the
//! overlay's scratch directory is the builder's and 0700, and a copy is only
//! made inside a directory no one else may enter — and no file is ever
//! setuid while it belongs to the builder.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;

use super::IdMapping;

/// Why a tree could not be copied or shifted.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot copy into {path}: it exists and is not an empty directory")]
    DestinationNotEmpty { path: PathBuf },
    #[error("{path} is owned by {uid}:{gid}, which the id mapping cannot represent")]
    Unmapped { path: PathBuf, uid: u32, gid: u32 },
    #[error(
        "refusing to copy a root file system into {path}: its parent has mode {mode:o}, so \
         other users could reach its setuid files; use a directory of mode 0700"
    )]
    ParentNotPrivate { path: PathBuf, mode: u32 },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TreeError {
    let path = path.to_path_buf();
    move |source| TreeError::Io { op, path, source }
}

fn nix_err(op: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> TreeError {
    let path = path.to_path_buf();
    move |e| TreeError::Io {
        op,
        path,
        source: io::Error::from(e),
    }
}

/// Copies the tree at `src` to `dst`, which must not exist or be an empty
/// directory, in a parent directory that only its owner may enter (mode
/// 0700 or stricter). See the module documentation for what is preserved.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), TreeError> {
    let meta = fs::symlink_metadata(src).map_err(io_err("inspect", src))?;
    check_private_parent(dst)?;
    match fs::read_dir(dst) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(TreeError::DestinationNotEmpty {
                    path: dst.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("open", dst)(e)),
    }
    let mut copier = Copier {
        links: HashMap::new(),
        is_root: nix::unistd::geteuid().is_root(),
    };
    copier.copy_entry(src, dst, &meta)
}

/// Refuses a `dst` whose parent grants group or others any access.
fn check_private_parent(dst: &Path) -> Result<(), TreeError> {
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mode = fs::metadata(parent)
        .map_err(io_err("inspect", parent))?
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TreeError::ParentNotPrivate {
            path: dst.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

struct Copier {
    /// First copy of each multiply-linked file, by source (device, inode).
    links: HashMap<(u64, u64), PathBuf>,
    is_root: bool,
}

impl Copier {
    fn copy_entry(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<(), TreeError> {
        let ft = meta.file_type();
        if ft.is_dir() {
            return self.copy_dir(src, dst, meta);
        }
        if !ft.is_symlink() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                return fs::hard_link(first, dst).map_err(io_err("hard-link", dst));
            }
            self.links.insert(key, dst.to_path_buf());
        }
        if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io_err("read link", src))?;
            symlink(&target, dst).map_err(io_err("create symlink", dst))?;
        } else if ft.is_file() {
            copy_file(src, dst)?;
        } else {
            make_node(dst, meta)?;
        }
        self.copy_attributes(dst, meta)
    }

    /// Children first, then the directory's own owner, mode and times: its
    /// mode may forbid writing into it, and every write would bump its mtime.
    fn copy_dir(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<(), TreeError> {
        match fs::create_dir(dst) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", dst)(e)),
        }
        // Owner-writable while we fill it, whatever the source's mode.
        fs::set_permissions(dst, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", dst))?;
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(io_err("list", src))?
            .collect::<Result<_, _>>()
            .map_err(io_err("list", src))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child_src = entry.path();
            let child_meta =
                fs::symlink_metadata(&child_src).map_err(io_err("inspect", &child_src))?;
            self.copy_entry(&child_src, &dst.join(entry.file_name()), &child_meta)?;
        }
        self.copy_attributes(dst, meta)
    }

    /// Owner before mode (chown clears setuid bits), times last.
    fn copy_attributes(&self, dst: &Path, meta: &Metadata) -> Result<(), TreeError> {
        match lchown(dst, Some(meta.uid()), Some(meta.gid())) {
            Ok(()) => {}
            // Without privilege, files simply become ours.
            Err(e) if !self.is_root && e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(io_err("chown", dst)(e)),
        }
        if !meta.file_type().is_symlink() {
            fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io_err("chmod", dst))?;
        }
        set_times(dst, meta)
    }
}

/// A regular file's contents, into a new file that only the builder may
/// use until [`Copier::copy_attributes`] gives it its owner and then its
/// mode (`fs::copy` would give it the source's mode at once: a setuid file
/// owned by the builder, for a moment).
fn copy_file(src: &Path, dst: &Path) -> Result<(), TreeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from = fs::File::open(src).map_err(io_err("open", src))?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(io_err("create", dst))?;
    io::copy(&mut from, &mut to).map_err(io_err("copy", src))?;
    Ok(())
}

/// Fifos, sockets and device nodes.
fn make_node(dst: &Path, meta: &Metadata) -> Result<(), TreeError> {
    let ft = meta.mode() & libc::S_IFMT;
    let kind = SFlag::from_bits_truncate(ft);
    mknod(
        dst,
        kind,
        Mode::from_bits_truncate(meta.mode() & 0o7777),
        meta.rdev(),
    )
    .map_err(nix_err("create node", dst))
}

/// Access and modification times with nanoseconds, without following a
/// symlink.
fn set_times(dst: &Path, meta: &Metadata) -> Result<(), TreeError> {
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        AT_FDCWD,
        dst,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(nix_err("set times of", dst))
}

/// Re-owns every entry of the tree at `root` from container ids to the host
/// ids `ids` maps them to: an entry owned by uid `u` gets `ids.host_uid(u)`.
/// Use it on a tree extracted with the image's own ids (as root) before a
/// step with a range mapping runs on it. Modes (setuid bits, which chown
/// clears) and times are kept. Not idempotent: shift a tree once.
pub fn shift_ownership(root: &Path, ids: &IdMapping) -> Result<(), TreeError> {
    let meta = fs::symlink_metadata(root).map_err(io_err("inspect", root))?;
    shift_entry(root, &meta, ids)
}

fn shift_entry(path: &Path, meta: &Metadata, ids: &IdMapping) -> Result<(), TreeError> {
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err("list", path))? {
            let entry = entry.map_err(io_err("list", path))?;
            let child = entry.path();
            let child_meta = fs::symlink_metadata(&child).map_err(io_err("inspect", &child))?;
            shift_entry(&child, &child_meta, ids)?;
        }
    }
    let (Some(uid), Some(gid)) = (ids.host_uid(meta.uid()), ids.host_gid(meta.gid())) else {
        return Err(TreeError::Unmapped {
            path: path.to_path_buf(),
            uid: meta.uid(),
            gid: meta.gid(),
        });
    };
    lchown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("chmod", path))?;
    }
    Ok(())
}

/// Creates the directories of a [`RootfsSpec::Overlay`](super::RootfsSpec::Overlay)
/// over `lower` in `dir` (made if missing):
///
/// ```text
/// dir/            the builder's, 0700: no other host user gets further
///   rw/           container root's, 0700: the one mount overlayfs needs
///                 upper and work on, bind-mounted into the sandbox
///     upper/      container root's, with the mode of the topmost lower
///                 root: it is the step's `/`
///     work/       container root's, 0700: overlayfs' own
/// ```
///
/// overlayfs writes upper and work with container root's rights, so they
/// and `rw` must be its; `dir` may stay the builder's because the sandbox
/// reaches `rw` as the builder.
pub fn prepare_overlay(
    dir: &Path,
    lower: Vec<PathBuf>,
    ids: &IdMapping,
) -> Result<super::RootfsSpec, TreeError> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create", dir)(e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", dir))?;
    let rw = dir.join("rw");
    let upper = rw.join("upper");
    let work = overlay_work_dir(dir);
    let root_mode = lower
        .first()
        .and_then(|l| fs::metadata(l).ok())
        .map_or(0o755, |m| m.mode() & 0o7777);
    for (d, mode) in [(&rw, 0o700), (&upper, root_mode), (&work, 0o700)] {
        fs::create_dir(d).map_err(io_err("create", d))?;
        lchown(d, ids.host_uid(0), ids.host_gid(0)).map_err(io_err("chown", d))?;
        fs::set_permissions(d, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", d))?;
    }
    Ok(super::RootfsSpec::Overlay { lower, upper, work })
}

/// overlayfs' work directory in a directory made by [`prepare_overlay`].
pub(super) fn overlay_work_dir(dir: &Path) -> PathBuf {
    dir.join("rw").join("work")
}

/// overlayfs leaves `work/work` (and `work/index`) in its work directory
/// with mode 000. Root deletes them anyway, as does a builder in its own
/// user namespace (`userns.rs`: root there over the owner); a caller
/// without privilege (a builder with a single id) cannot list them, so
/// without this its scratch directory would outlive it. Opens them to
/// their owner; call it once the overlay is unmounted. Best effort: a
/// directory overlayfs did not make is skipped.
pub(super) fn open_overlay_work(work: &Path) {
    for sub in ["work", "index"] {
        let _ = fs::set_permissions(work.join(sub), fs::Permissions::from_mode(0o700));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests chown files: run them as root"
        );
    }

    fn stat(p: &Path) -> Metadata {
        fs::symlink_metadata(p).unwrap()
    }

    /// A temporary directory only its owner may enter (tempfile follows the
    /// umask), as a builder's scratch directory must be.
    fn private_tempdir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        tmp
    }

    #[test]
    fn copy_keeps_modes_owners_links_nodes_and_nanosecond_mtimes() {
        require_root();
        let tmp = private_tempdir();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::write(src.join("d/file"), b"hello").unwrap();
        fs::set_permissions(src.join("d/file"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::hard_link(src.join("d/file"), src.join("hard")).unwrap();
        symlink("d/file", src.join("link")).unwrap();
        symlink("/nonexistent", src.join("dangling")).unwrap();
        mknod(
            &src.join("fifo"),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o640),
            0,
        )
        .unwrap();
        lchown(src.join("d/e"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(src.join("d/e"), fs::Permissions::from_mode(0o555)).unwrap();
        let t = TimeSpec::new(1_000_000_000, 123_456_789);
        for p in ["d/file", "link", "d/e", "d"] {
            utimensat(
                AT_FDCWD,
                &src.join(p),
                &t,
                &t,
                UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }

        let dst = tmp.path().join("dst");
        copy_tree(&src, &dst).unwrap();

        assert_eq!(fs::read(dst.join("d/file")).unwrap(), b"hello");
        assert_eq!(stat(&dst.join("d/file")).mode() & 0o7777, 0o4751);
        assert_eq!(
            stat(&dst.join("hard")).ino(),
            stat(&dst.join("d/file")).ino()
        );
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("d/file")
        );
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("/nonexistent")
        );
        assert!(stat(&dst.join("fifo")).file_type().is_fifo());
        let e = stat(&dst.join("d/e"));
        assert_eq!((e.uid(), e.gid(), e.mode() & 0o7777), (1234, 5678, 0o555));
        for p in ["d/file", "link", "d/e", "d"] {
            let m = stat(&dst.join(p));
            assert_eq!(
                (m.mtime(), m.mtime_nsec()),
                (1_000_000_000, 123_456_789),
                "{p}"
            );
        }
    }

    #[test]
    fn copy_makes_no_setuid_file_of_the_builders_even_for_a_moment() {
        require_root();
        // Watch every file the copy creates, as a local attacker would: a
        // setuid file owned by root (the builder) must never be seen.
        let tmp = private_tempdir();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        for i in 0..200 {
            let f = src.join(format!("su{i}"));
            fs::write(&f, vec![0u8; 64 << 10]).unwrap();
            lchown(&f, Some(100_000), Some(100_000)).unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(0o4755)).unwrap();
        }
        let dst = tmp.path().join("dst");
        let done = std::sync::atomic::AtomicBool::new(false);
        /// Stops the watcher however the copy ends.
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let seen = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    for e in fs::read_dir(&dst).into_iter().flatten().flatten() {
                        if let Ok(m) = e.metadata()
                            && m.uid() == 0
                            && m.mode() & 0o6000 != 0
                        {
                            seen.push(e.path());
                        }
                    }
                }
                seen
            });
            let copied = {
                let _done = Done(&done);
                copy_tree(&src, &dst)
            };
            copied.unwrap();
            watcher.join().unwrap()
        });
        assert_eq!(seen, Vec::<PathBuf>::new());
        let m = stat(&dst.join("su7"));
        assert_eq!((m.uid(), m.mode() & 0o7777), (100_000, 0o4755));
    }

    #[test]
    fn copy_refuses_a_destination_other_users_could_reach() {
        let tmp = private_tempdir();
        fs::create_dir(tmp.path().join("src")).unwrap();
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        let err = copy_tree(&tmp.path().join("src"), &open.join("dst")).unwrap_err();
        assert!(
            matches!(err, TreeError::ParentNotPrivate { mode: 0o755, .. }),
            "{err}"
        );
        assert!(!open.join("dst").exists());
    }

    #[test]
    fn overlay_scratch_is_the_builders_and_private_and_upper_keeps_the_roots_mode() {
        require_root();
        let tmp = private_tempdir();
        let lower = tmp.path().join("lower");
        fs::create_dir(&lower).unwrap();
        fs::set_permissions(&lower, fs::Permissions::from_mode(0o755)).unwrap();
        let ids = IdMapping::range(100_000, 200_000, 65_536);
        let dir = tmp.path().join("step");
        let spec = prepare_overlay(&dir, vec![lower], &ids).unwrap();
        let super::super::RootfsSpec::Overlay { upper, work, .. } = spec else {
            panic!("not an overlay")
        };
        let owner_mode = |p: &Path| {
            let m = stat(p);
            (m.uid(), m.gid(), m.mode() & 0o7777)
        };
        assert_eq!(owner_mode(&dir), (0, 0, 0o700));
        assert_eq!(owner_mode(&dir.join("rw")), (100_000, 200_000, 0o700));
        assert_eq!(owner_mode(&upper), (100_000, 200_000, 0o755));
        assert_eq!(owner_mode(&work), (100_000, 200_000, 0o700));
        assert_eq!(upper.parent(), work.parent());
    }

    #[test]
    fn copy_refuses_a_non_empty_destination() {
        let tmp = private_tempdir();
        fs::create_dir(tmp.path().join("src")).unwrap();
        fs::create_dir(tmp.path().join("dst")).unwrap();
        fs::write(tmp.path().join("dst/x"), b"").unwrap();
        let err = copy_tree(&tmp.path().join("src"), &tmp.path().join("dst")).unwrap_err();
        assert!(
            matches!(err, TreeError::DestinationNotEmpty { .. }),
            "{err}"
        );
    }

    #[test]
    fn shift_moves_owners_into_the_mapped_range_and_keeps_setuid() {
        require_root();
        let tmp = private_tempdir();
        let root = tmp.path().join("r");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("su"), b"").unwrap();
        lchown(root.join("su"), Some(0), Some(0)).unwrap();
        fs::set_permissions(root.join("su"), fs::Permissions::from_mode(0o4755)).unwrap();
        symlink("su", root.join("l")).unwrap();
        lchown(root.join("l"), Some(1000), Some(100)).unwrap();
        lchown(&root, Some(0), Some(0)).unwrap();

        let ids = IdMapping::range(100_000, 200_000, 65_536);
        shift_ownership(&root, &ids).unwrap();
        let su = stat(&root.join("su"));
        assert_eq!(
            (su.uid(), su.gid(), su.mode() & 0o7777),
            (100_000, 200_000, 0o4755)
        );
        let l = stat(&root.join("l"));
        assert_eq!((l.uid(), l.gid()), (101_000, 200_100));
        assert_eq!(stat(&root).uid(), 100_000);

        let other = tmp.path().join("other");
        fs::write(&other, b"").unwrap();
        lchown(&other, Some(70_000), Some(0)).unwrap();
        let err = shift_ownership(&other, &ids).unwrap_err();
        assert!(
            matches!(err, TreeError::Unmapped { uid: 70_000, .. }),
            "{err}"
        );
    }
}
