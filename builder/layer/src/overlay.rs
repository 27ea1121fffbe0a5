//! Reading an overlayfs upper directory: what the kernel's on-disk markers
//! mean, and a direct conversion of an upper directory into changes.
//!
//! overlayfs records a deletion as a character device 0/0 and a directory
//! that hides the lower one (deleted, then created again) with the xattr
//! `overlay.opaque=y` — `trusted.` when mounted by real root, `user.` when
//! mounted with `userxattr` inside a user namespace. Metacopy and redirect
//! xattrs mean the upper file is not the whole truth (its data or its
//! directory contents live elsewhere in the lower tree); those are refused so
//! that no layer silently misses data.
//!
//! `changes_from_overlay_upper` needs only the upper directory, but its output
//! depends on how the step touched files (a file opened for writing and left
//! as it was is still copied up). `diff_overlay` compares against the lower
//! tree instead and gives the same changes as a copy-mode diff.

use std::io;
use std::path::Path;

use super::host::{read_dir_sorted, read_node};
use super::{Change, IdMap, LayerError, LayerPath};

const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
const PARTIAL_COPY_XATTRS: [&str; 4] = [
    "trusted.overlay.metacopy",
    "user.overlay.metacopy",
    "trusted.overlay.redirect",
    "user.overlay.redirect",
];

/// Converts an overlayfs upper directory into changes: whiteout devices
/// become deletions, opaque directories an `Opaque` marker after their own
/// entry, everything else an addition. Ids are translated to container ids.
pub fn changes_from_overlay_upper(
    upper_dir: &Path,
    idmap: &IdMap,
) -> Result<Vec<Change>, LayerError> {
    let mut changes = Vec::new();
    convert_upper_dir(upper_dir, &LayerPath::root(), idmap, &mut changes)?;
    Ok(changes)
}

fn convert_upper_dir(
    upper_root: &Path,
    dir: &LayerPath,
    idmap: &IdMap,
    changes: &mut Vec<Change>,
) -> Result<(), LayerError> {
    for name in read_dir_sorted(&upper_root.join(dir.as_path()))? {
        let path = dir
            .join(&name)
            .map_err(|problem| LayerError::Unrepresentable {
                path: dir.clone(),
                problem: format!("it holds the name {name:?}: {problem}"),
            })?;
        let abs = upper_root.join(path.as_path());
        let Some(node) = read_node(&abs)? else {
            continue;
        };
        check_whole_object(&abs)?;
        if node.is_overlay_whiteout() {
            changes.push(Change::delete(path));
            continue;
        }
        if let Some(layer_node) = node.to_node(&path, &abs, idmap)? {
            changes.push(Change::add(path.clone(), layer_node));
        }
        if node.is_dir() {
            if is_opaque(&abs)? {
                changes.push(Change::opaque(path.clone()));
            }
            convert_upper_dir(upper_root, &path, idmap, changes)?;
        }
    }
    Ok(())
}

/// Whether upper directory `dir` hides the lower directory of the same name.
pub(crate) fn is_opaque(dir: &Path) -> Result<bool, LayerError> {
    for name in OPAQUE_XATTRS {
        if read_xattr(dir, name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Refuses upper objects whose data or contents live partly in the lower
/// tree (metacopy, redirect_dir).
pub(crate) fn check_whole_object(path: &Path) -> Result<(), LayerError> {
    for name in PARTIAL_COPY_XATTRS {
        if read_xattr(path, name)?.is_some() {
            return Err(LayerError::OverlayFeature {
                path: path.to_path_buf(),
                xattr: name.to_string(),
            });
        }
    }
    Ok(())
}

/// An xattr of `path` itself (symlinks are not followed). A namespace the
/// caller may not read (`trusted.` when unprivileged) or a file system
/// without xattrs counts as "not set".
fn read_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, LayerError> {
    match xattr::get(path, name) {
        Ok(value) => Ok(value),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
            ) || err.raw_os_error() == Some(EOPNOTSUPP) =>
        {
            Ok(None)
        }
        Err(err) => Err(LayerError::io("read xattr of", path)(err)),
    }
}

/// Linux `EOPNOTSUPP`, which std does not map to `Unsupported` everywhere.
const EOPNOTSUPP: i32 = 95;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::fs::{self, OpenOptions, Permissions};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;
    use crate::test_support::*;
    use crate::{diff_overlay, diff_trees};

    fn whiteout(path: &Path) -> bool {
        run_ok("mknod", &[path.as_os_str(), os("c"), os("0"), os("0")])
    }

    #[test]
    fn an_upper_dir_becomes_whiteouts_opaque_markers_and_additions() {
        let upper = tempfile::tempdir().unwrap();
        let u = upper.path();
        write(u, "etc/new", b"n", 0o644);
        write(u, "d/x", b"x", 0o600);
        fs::set_permissions(u.join("etc"), Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(u.join("d"), Permissions::from_mode(0o755)).unwrap();
        xattr::set(u.join("d"), "user.overlay.opaque", b"y").unwrap();
        let root = is_root();
        if root {
            assert!(whiteout(&u.join("etc/gone")));
        }

        let changes = changes_from_overlay_upper(u, &my_idmap()).unwrap();
        let mut expected = vec![
            "+ /d dir 755 0:0",
            "opaque /d",
            "+ /d/x file \"x\" 600 0:0",
            "+ /etc dir 755 0:0",
            "- /etc/gone",
            "+ /etc/new file \"n\" 644 0:0",
        ];
        if !root {
            expected.retain(|line| *line != "- /etc/gone");
        }
        assert_eq!(describe(&changes), expected);
    }

    #[test]
    fn partial_copy_ups_are_refused_with_the_mount_options_to_use() {
        let upper = tempfile::tempdir().unwrap();
        let file = write(upper.path(), "bin/tool", b"", 0o755);
        xattr::set(&file, "user.overlay.metacopy", b"").unwrap();
        let err = changes_from_overlay_upper(upper.path(), &my_idmap()).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "bin/tool: overlayfs attribute user.overlay.metacopy is set; mount the overlay \
                 with metacopy=off and redirect_dir=off so that the upper directory holds whole files"
            ),
            "{err}"
        );
    }

    fn lower_tree(root: &Path) {
        for (rel, body) in [
            ("etc/keep", "same"),
            ("etc/edit", "aaaa"),
            ("etc/grow", "x"),
            ("etc/chmod", "c"),
            ("etc/gone", "g"),
            ("etc/touched", "t"),
            ("olddir/sub/f", "f"),
            ("file_to_dir", "was a file"),
            ("dir_to_link/child", "c"),
            ("d/keep", "k"),
            ("d/old", "o"),
        ] {
            let path = write(root, rel, body.as_bytes(), 0o644);
            set_mtime(&path, 1_000);
        }
        link(root, "link", "a");
    }

    /// What a RUN step does, applied to the merged view of the sandbox.
    fn run_step(merged: &Path) {
        write(merged, "etc/edit", b"bbbb", 0o644);
        write(merged, "etc/grow", b"xyz", 0o644);
        fs::set_permissions(merged.join("etc/chmod"), Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(merged.join("etc/gone")).unwrap();
        write(merged, "etc/touched", b"t", 0o644);
        // Opened for writing, left as it was: overlayfs copies it up anyway.
        drop(
            OpenOptions::new()
                .append(true)
                .open(merged.join("etc/keep"))
                .unwrap(),
        );
        write(merged, "etc/new", b"n", 0o640);
        fs::remove_dir_all(merged.join("olddir")).unwrap();
        fs::remove_file(merged.join("file_to_dir")).unwrap();
        write(merged, "file_to_dir/child", b"now a dir", 0o644);
        fs::remove_dir_all(merged.join("dir_to_link")).unwrap();
        link(merged, "dir_to_link", "etc");
        fs::remove_file(merged.join("link")).unwrap();
        link(merged, "link", "b");
        fs::remove_dir_all(merged.join("d")).unwrap();
        write(merged, "d/keep", b"k", 0o644);
        write(merged, "d/new", b"new", 0o644);
    }

    /// Unmounts on drop, so a failing test leaves no mount behind.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            run_ok("umount", &[self.0.as_os_str()]);
        }
    }

    #[test]
    fn a_real_overlay_gives_the_same_changes_as_a_copy_of_the_tree() {
        require_root("to mount overlayfs");
        let scratch = tempfile::tempdir().unwrap();
        let dir = |name: &str| mkdir(scratch.path(), name, 0o755);
        let (lower, upper, work, merged, copy) = (
            dir("lower"),
            dir("upper"),
            dir("work"),
            dir("merged"),
            dir("copy"),
        );
        lower_tree(&lower);
        clone_tree(&lower, &copy);

        let options = format!(
            "lowerdir={},upperdir={},workdir={},metacopy=off,redirect_dir=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        let mounted = run_ok(
            "mount",
            &[
                os("-t"),
                os("overlay"),
                os("overlay"),
                os("-o"),
                os(&options),
                merged.as_os_str(),
            ],
        );
        assert!(
            mounted,
            "this kernel would not mount overlayfs (load it with `modprobe overlay`, \
             or run on a kernel with CONFIG_OVERLAY_FS)"
        );
        let mount = Mounted(merged.clone());
        run_step(&merged);
        drop(mount);
        run_step(&copy);

        let from_copy = diff_trees(&lower, &copy, &my_idmap()).unwrap();
        let from_overlay = diff_overlay(&lower, &upper, &my_idmap()).unwrap();
        assert_eq!(describe(&from_overlay), describe(&from_copy));
        assert!(describe(&from_copy).contains(&"- /d/old".to_string()));
        assert!(!describe(&from_copy).iter().any(|l| l.contains("/etc/keep")));

        // The raw upper dir says the same thing its own way.
        let raw = describe(&changes_from_overlay_upper(&upper, &my_idmap()).unwrap());
        for line in [
            "opaque /d",
            "- /etc/gone",
            "- /olddir",
            "+ /etc/keep file \"same\" 644 0:0",
        ] {
            assert!(
                raw.contains(&line.to_string()),
                "{line} missing from {raw:#?}"
            );
        }
    }
}
