//! The mounts of a sandbox, one named function per step: private
//! propagation, the staging tmpfs, the root filesystem (overlayfs or a bind
//! of the copy), `/proc`, `/dev`, the host's resolver files, and
//! `pivot_root`. All of it happens inside the sandbox's own mount namespace;
//! nothing here may change a mount the host sees.
//!
//! overlayfs accepts only layers mounted in the mounting process's own mount
//! namespace, and container root (an unprivileged id on the host) often may
//! not search the parents of the caller's directories (e.g. `/root`, or a
//! 0700 temp dir). So stage 1 opens those directories while its ids are
//! still the caller's ([`open_rootfs`]), and [`stage_rootfs`] bind-mounts
//! them under [`STAGING`] — a tmpfs that covers `/tmp` in the sandbox's mount
//! namespaces only, since `/tmp` exists and is searchable on any host — and
//! the root is then assembled from there and mounted at [`ROOT`], a plain
//! path stage 2 can reach.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::refusal::{self, SetupCall};
use super::{RootfsSpec, SetupError, image_path};

/// Where stage 1 mounts a tmpfs holding the mount points below.
pub(super) const STAGING: &str = "/tmp";
/// Where the caller's directories are bind-mounted, reachable by path.
const LAYERS: &str = "/tmp/strata-layers";
/// Where the assembled root filesystem is mounted until `pivot_root`.
pub(super) const ROOT: &str = "/tmp/strata-root";

/// Device nodes bind-mounted from the host into the step's `/dev`. Never
/// `tty`: that node opens the opener's controlling terminal, which the step
/// has none of, and must not get (see stage 2's `setsid`).
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// The rootfs directories, bind-mounted under [`LAYERS`].
pub(super) enum StagedRootfs {
    Overlay {
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    Copy {
        root: PathBuf,
    },
}

/// Opens a directory of the caller's with `O_PATH` (no read permission
/// needed), to bind it after `/tmp` is covered.
fn open_dir(p: &Path) -> Result<File, SetupError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(p)
        .map_err(|e| SetupError::step(format!("cannot open rootfs directory {}", p.display()), e))
}

fn fd_path(f: &File) -> String {
    format!("/proc/self/fd/{}", f.as_raw_fd())
}

fn errno_text(e: nix::Error) -> String {
    let hint = match e {
        nix::Error::EPERM | nix::Error::EACCES => {
            " (container root lacks the rights: with a range id mapping, lower trees must \
             belong to the mapped host ids (sandbox::shift_ownership), and upper, work and \
             their common parent to container root (sandbox::prepare_overlay))"
        }
        _ => "",
    };
    match e {
        nix::Error::EACCES => format!("{e}{hint}"),
        _ => refusal::explain(SetupCall::Mount, e, hint),
    }
}

/// `mount(2)` with an error naming what was mounted where.
fn mount_at(
    what: &str,
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SetupError> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        SetupError::step(
            format!("cannot mount {what} on {}", target.display()),
            errno_text(e),
        )
    })
}

/// Stops mount events from flowing between the sandbox and the host, in
/// both directions, before anything is mounted.
pub(super) fn make_mounts_private() -> Result<(), SetupError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| {
        SetupError::step(
            "cannot make mounts private",
            refusal::explain(SetupCall::Mount, e, ""),
        )
    })
}

/// The caller's rootfs directories, opened (`O_PATH`) for [`stage_rootfs`],
/// each with the name it is staged under.
pub(super) struct RootfsHandles {
    dirs: Vec<(File, String)>,
}

/// Opens the directories of `spec` with the caller's rights. Called where
/// their paths resolve as the caller resolves them: in the privileged first
/// mount namespace, or in the sandbox's own before stage 1 becomes container
/// root — its ids are still the caller's then, so the caller's private
/// parents (a 0700 scratch directory) let it through as their owner, even in
/// a container without `CAP_SYS_ADMIN`, where there is no first namespace.
pub(super) fn open_rootfs(spec: &RootfsSpec) -> Result<RootfsHandles, SetupError> {
    let named: Vec<(&Path, String)> = match spec {
        RootfsSpec::Overlay { lower, upper, work } => {
            if lower.is_empty() {
                return Err(SetupError::step(
                    "cannot mount overlayfs",
                    "no lower directory given (an empty base needs one empty directory)",
                ));
            }
            let parent = rw_parent(upper, work)?;
            lower
                .iter()
                .enumerate()
                .map(|(i, l)| (l.as_path(), format!("lower{i}")))
                .chain([(parent, "rw".to_owned())])
                .collect()
        }
        RootfsSpec::Copy { root } => vec![(root.as_path(), "copy".to_owned())],
    };
    let dirs = named
        .into_iter()
        .map(|(dir, name)| open_dir(dir).map(|handle| (handle, name)))
        .collect::<Result<_, _>>()?;
    Ok(RootfsHandles { dirs })
}

/// Covers `/tmp` (in this mount namespace only) with a tmpfs and
/// bind-mounts the opened rootfs directories into it, so that they are
/// reachable by a short path whatever the permissions of their parents.
///
/// overlayfs takes only layers mounted in the mounting process's own mount
/// namespace, so this runs in the mount namespace the handles were opened
/// in (a privileged first namespace when stage 1 is root and may make one,
/// else the sandbox's own), and the binds are then inherited. upper and work
/// are staged through their common parent: overlayfs wants both on one
/// mount.
pub(super) fn stage_rootfs(handles: &RootfsHandles) -> Result<(), SetupError> {
    mount_at(
        "the staging tmpfs",
        Some("tmpfs"),
        Path::new(STAGING),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755,size=64k"),
    )?;
    for dir in [ROOT, LAYERS] {
        std::fs::create_dir(dir)
            .map_err(|e| SetupError::step(format!("cannot create {dir}"), e))?;
    }
    for (handle, name) in &handles.dirs {
        let target = Path::new(LAYERS).join(name);
        std::fs::create_dir(&target)
            .map_err(|e| SetupError::step(format!("cannot create {}", target.display()), e))?;
        mount_at(
            "a rootfs directory",
            Some(&fd_path(handle)),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    }
    Ok(())
}

fn rw_parent<'a>(upper: &'a Path, work: &Path) -> Result<&'a Path, SetupError> {
    match (upper.parent(), work.parent()) {
        (Some(a), Some(b))
            if a == b && upper.file_name().is_some() && work.file_name().is_some() =>
        {
            Ok(a)
        }
        _ => Err(SetupError::step(
            "cannot mount overlayfs",
            format!(
                "upper {} and work {} must be two directories of one parent",
                upper.display(),
                work.display()
            ),
        )),
    }
}

/// Where [`stage_rootfs`] put the directories of `spec`.
pub(super) fn staged_paths(spec: &RootfsSpec) -> StagedRootfs {
    let layers = Path::new(LAYERS);
    match spec {
        RootfsSpec::Overlay { lower, upper, work } => {
            let rw = layers.join("rw");
            let name = |p: &Path| p.file_name().map(|n| rw.join(n)).unwrap_or_default();
            StagedRootfs::Overlay {
                lower: (0..lower.len())
                    .map(|i| layers.join(format!("lower{i}")))
                    .collect(),
                upper: name(upper),
                work: name(work),
            }
        }
        RootfsSpec::Copy { .. } => StagedRootfs::Copy {
            root: layers.join("copy"),
        },
    }
}

/// Mounts the step's root filesystem at [`ROOT`], from the staged
/// directories.
pub(super) fn mount_rootfs(staged: &StagedRootfs) -> Result<(), SetupError> {
    match staged {
        StagedRootfs::Overlay { lower, upper, work } => mount_overlay(lower, upper, work),
        StagedRootfs::Copy { root } => bind_copy(root),
    }
}

/// overlayfs with `userxattr`: in a user namespace it must keep its
/// whiteouts and opaque markers in `user.overlay.*` xattrs, as the
/// `trusted.*` ones need host privileges (kernel 5.11 and later).
fn mount_overlay(lower: &[PathBuf], upper: &Path, work: &Path) -> Result<(), SetupError> {
    let lowerdir: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        ROOT,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| {
        SetupError::step(
            "cannot mount overlayfs in the user namespace",
            format!(
                "{}; where overlay_supported() is false, use RootfsSpec::Copy",
                errno_text(e)
            ),
        )
    })
}

fn bind_copy(root: &Path) -> Result<(), SetupError> {
    mount_at(
        "the rootfs copy",
        Some(&root.display().to_string()),
        Path::new(ROOT),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
}

/// Makes sure `root/rel` is a directory, creating it (and recording it as a
/// created mount point) if missing. Refuses symlinks on the way, which would
/// send a mount outside the image.
fn ensure_dir(root: &Path, rel: &str, created: &mut Vec<String>) -> Result<PathBuf, SetupError> {
    let mut path = root.to_path_buf();
    let mut so_far = PathBuf::new();
    for part in Path::new(rel).components() {
        let Component::Normal(part) = part else {
            continue;
        };
        path.push(part);
        so_far.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(SetupError::step(
                    format!("cannot use {} as a mount point", image_path(&so_far)),
                    "it is a symlink in the image; the sandbox does not mount through links",
                ));
            }
            Ok(_) => {
                return Err(SetupError::step(
                    format!("cannot use {} as a mount point", image_path(&so_far)),
                    "it is not a directory in the image",
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&path).map_err(|e| {
                    SetupError::step(format!("cannot create {}", image_path(&so_far)), e)
                })?;
                created.push(image_path(&so_far));
            }
            Err(e) => {
                return Err(SetupError::step(
                    format!("cannot inspect {}", image_path(&so_far)),
                    e,
                ));
            }
        }
    }
    Ok(path)
}

/// A fresh procfs for the new pid namespace (only the step's processes),
/// with `/proc/sys` read-only as Docker has it.
pub(super) fn mount_proc(root: &Path, created: &mut Vec<String>) -> Result<(), SetupError> {
    let target = ensure_dir(root, "proc", created)?;
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &target, Some("proc"), locked, None::<&str>).map_err(|e| {
        SetupError::step(
            format!("cannot mount proc on {}", target.display()),
            refusal::explain_proc(e),
        )
    })?;
    let sys = target.join("sys");
    mount_at(
        "/proc/sys (bind)",
        Some(&sys.to_string_lossy()),
        &sys,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    mount_at(
        "/proc/sys (read-only)",
        None,
        &sys,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
        None,
    )
}

/// A tmpfs `/dev` with the host's harmless character devices bind-mounted
/// in (a user namespace cannot `mknod` them), the usual symlinks, a private
/// devpts instance and a `/dev/shm`.
pub(super) fn mount_dev(root: &Path, created: &mut Vec<String>) -> Result<(), SetupError> {
    let dev = ensure_dir(root, "dev", created)?;
    mount_at(
        "a tmpfs /dev",
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        bind_device(&dev, name)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        symlink(target, dev.join(link))
            .map_err(|e| SetupError::step(format!("cannot create /dev/{link}"), e))?;
    }
    mount_devpts(&dev)?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| SetupError::step("cannot create /dev/shm", e))?;
    mount_at(
        "a tmpfs /dev/shm",
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
}

fn bind_device(dev: &Path, name: &str) -> Result<(), SetupError> {
    let host = Path::new("/dev").join(name);
    if !host.exists() {
        return Ok(());
    }
    let target = dev.join(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(&target)
        .map_err(|e| SetupError::step(format!("cannot create /dev/{name}"), e))?;
    mount_at(
        &host.to_string_lossy(),
        Some(&host.to_string_lossy()),
        &target,
        None,
        MsFlags::MS_BIND,
        None,
    )
}

/// A new devpts instance so `script`, `expect` and friends work; `gid=5`
/// (tty) only when that group is mapped, else the kernel refuses it.
fn mount_devpts(dev: &Path) -> Result<(), SetupError> {
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(|e| SetupError::step("cannot create /dev/pts", e))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let with_gid = "newinstance,ptmxmode=0666,mode=0620,gid=5";
    if mount(Some("devpts"), &pts, Some("devpts"), flags, Some(with_gid)).is_ok() {
        return Ok(());
    }
    mount_at(
        "devpts",
        Some("devpts"),
        &pts,
        Some("devpts"),
        flags,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
}

/// With the host's network, the host's resolver configuration, read-only,
/// over the image's `/etc/resolv.conf` and `/etc/hosts` (as Docker does). An
/// image whose file is a symlink keeps its own.
pub(super) fn bind_host_network_files(
    root: &Path,
    created: &mut Vec<String>,
) -> Result<(), SetupError> {
    for name in ["resolv.conf", "hosts"] {
        let host = Path::new("/etc").join(name);
        if !host.exists() {
            continue;
        }
        let etc = ensure_dir(root, "etc", created)?;
        let target = etc.join(name);
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => continue,
            Ok(_) => {}
            Err(_) => {
                File::create(&target)
                    .map_err(|e| SetupError::step(format!("cannot create /etc/{name}"), e))?;
                created.push(format!("/etc/{name}"));
            }
        }
        let what = host.to_string_lossy();
        mount_at(&what, Some(&what), &target, None, MsFlags::MS_BIND, None)?;
        mount_at(
            &what,
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// Makes `root` the process's `/` and detaches everything else, without a
/// `put_old` directory: after `pivot_root(".", ".")` the old root is stacked
/// on the new one at `/`, and a lazy unmount of `.` removes it (see
/// pivot_root(2)).
pub(super) fn pivot_into(root: &Path) -> Result<(), SetupError> {
    nix::unistd::chdir(root)
        .map_err(|e| SetupError::step(format!("cannot enter {}", root.display()), e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| {
        SetupError::step(
            "cannot pivot_root",
            refusal::explain(SetupCall::PivotRoot, e, ""),
        )
    })?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| {
        SetupError::step(
            "cannot detach the host's root",
            refusal::explain(SetupCall::Umount2, e, ""),
        )
    })?;
    nix::unistd::chdir("/").map_err(|e| SetupError::step("cannot enter the new root", e))
}
