//! Finding what a RUN step changed, by comparing the working rootfs before
//! the step (*lower*) with the sandbox's tree after it (*upper*).
//!
//! Both sandbox modes give the same changeset for the same step, so a layer's
//! digest does not depend on whether the machine could use overlayfs:
//! - copy mode (`diff_trees`): upper is a full copy of lower that the step
//!   ran in; every name on either side is compared.
//! - overlay mode (`diff_overlay`): upper is the overlay's upper directory;
//!   only names it holds can have changed. Whiteout devices are deletions,
//!   and below an opaque directory every lower name is compared as in copy
//!   mode (names missing from upper become deletions, not one opaque marker).
//!
//! The changeset, in walk (canonical) order:
//! - a name only in upper is added with its whole subtree;
//! - a name only in lower is deleted (one whiteout covers its subtree);
//! - a name in both is re-added when its kind, permission bits, owner or
//!   symlink target differ, or for a regular file when its content differs;
//!   a directory whose kind did not change is re-added only when its own
//!   metadata changed, and is then descended into. Parent directories of a
//!   change are *not* added just because their mtime moved: the layer
//!   records no mtimes, so that would only add noise.
//! - The root directory itself is never compared.
//!
//! File content rule: different sizes mean changed; equal size and equal
//! mtime (to the nanosecond) mean unchanged; equal size but different mtime
//! means the bytes are compared. The copy must preserve mtimes (`cp -a`
//! does) or every file is read twice. Known limitation: a step that rewrites
//! a file with same-size content *and* restores its old mtime (`touch -r`,
//! `touch -d`) is not seen as changed.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::host::{HostKind, HostNode, read_dir_sorted, read_node, same_contents};
use super::overlay::{check_whole_object, is_opaque};
use super::{Change, IdMap, LayerError, LayerPath};

/// Changes from `lower_root` to `upper_root`, two complete trees (copy mode).
/// Host owners are translated to container ids with `idmap`.
pub fn diff_trees(
    lower_root: &Path,
    upper_root: &Path,
    idmap: &IdMap,
) -> Result<Vec<Change>, LayerError> {
    let mut differ = Differ::new(lower_root, upper_root, idmap, false);
    differ.diff_dir(&LayerPath::root(), Listing::Union)?;
    Ok(differ.changes)
}

/// Changes made by a step that ran on an overlay of `lower_root` whose upper
/// directory is `upper_dir` (overlay mode). Gives the same changeset as
/// `diff_trees` on the merged tree.
pub fn diff_overlay(
    lower_root: &Path,
    upper_dir: &Path,
    idmap: &IdMap,
) -> Result<Vec<Change>, LayerError> {
    let mut differ = Differ::new(lower_root, upper_dir, idmap, true);
    differ.diff_dir(&LayerPath::root(), Listing::UpperOnly)?;
    Ok(differ.changes)
}

/// Which names of a directory may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// Names in lower or upper (copy mode, or below an opaque directory).
    Union,
    /// Names in upper only: the rest shows through unchanged from lower.
    UpperOnly,
}

struct Differ<'a> {
    lower_root: &'a Path,
    upper_root: &'a Path,
    idmap: &'a IdMap,
    /// Upper is an overlayfs upper dir: char 0/0 devices are whiteouts and
    /// overlay xattrs mean something.
    overlay: bool,
    changes: Vec<Change>,
}

impl<'a> Differ<'a> {
    fn new(lower_root: &'a Path, upper_root: &'a Path, idmap: &'a IdMap, overlay: bool) -> Self {
        Self {
            lower_root,
            upper_root,
            idmap,
            overlay,
            changes: Vec::new(),
        }
    }

    fn lower(&self, path: &LayerPath) -> PathBuf {
        self.lower_root.join(path.as_path())
    }

    fn upper(&self, path: &LayerPath) -> PathBuf {
        self.upper_root.join(path.as_path())
    }

    fn diff_dir(&mut self, dir: &LayerPath, listing: Listing) -> Result<(), LayerError> {
        let upper_names = read_dir_sorted(&self.upper(dir))?;
        let names = match listing {
            Listing::UpperOnly => upper_names,
            Listing::Union => merge_sorted(read_dir_sorted(&self.lower(dir))?, upper_names),
        };
        for name in names {
            let path = child_path(dir, name)?;
            self.diff_entry(&path, listing)?;
        }
        Ok(())
    }

    fn diff_entry(&mut self, path: &LayerPath, listing: Listing) -> Result<(), LayerError> {
        let lower = read_node(&self.lower(path))?;
        let upper = self.read_upper(path)?;
        match (lower, upper) {
            (None, None) => {}
            (Some(_), None) => self.changes.push(Change::delete(path.clone())),
            (lower, Some(upper)) if self.is_whiteout(&upper) => {
                if lower.is_some() {
                    self.changes.push(Change::delete(path.clone()));
                }
            }
            (None, Some(upper)) => self.add_subtree(path, &upper)?,
            (Some(lower), Some(upper)) if lower.is_dir() && upper.is_dir() => {
                if !lower.same_metadata(&upper) {
                    self.push_add(path, &upper)?;
                }
                let opaque = self.overlay && is_opaque(&self.upper(path))?;
                let inner = if listing == Listing::UpperOnly && !opaque {
                    Listing::UpperOnly
                } else {
                    Listing::Union
                };
                self.diff_dir(path, inner)?;
            }
            (Some(lower), Some(upper)) => {
                if !self.same_node(path, &lower, &upper)? {
                    self.add_subtree(path, &upper)?;
                }
            }
        }
        Ok(())
    }

    fn read_upper(&self, path: &LayerPath) -> Result<Option<HostNode>, LayerError> {
        let abs = self.upper(path);
        let node = read_node(&abs)?;
        if self.overlay && node.is_some() {
            check_whole_object(&abs)?;
        }
        Ok(node)
    }

    fn is_whiteout(&self, node: &HostNode) -> bool {
        self.overlay && node.is_overlay_whiteout()
    }

    /// Lower and upper hold the same object at `path` (see the module doc for
    /// the file content rule).
    fn same_node(
        &self,
        path: &LayerPath,
        lower: &HostNode,
        upper: &HostNode,
    ) -> Result<bool, LayerError> {
        if !lower.same_metadata(upper) {
            return Ok(false);
        }
        if lower.kind != HostKind::File {
            return Ok(true);
        }
        if lower.size != upper.size {
            return Ok(false);
        }
        if lower.mtime == upper.mtime {
            return Ok(true);
        }
        same_contents(&self.lower(path), &self.upper(path))
    }

    /// Adds `node` at `path` and, for a directory, everything below it.
    fn add_subtree(&mut self, path: &LayerPath, node: &HostNode) -> Result<(), LayerError> {
        self.push_add(path, node)?;
        if !node.is_dir() {
            return Ok(());
        }
        for name in read_dir_sorted(&self.upper(path))? {
            let child = child_path(path, name)?;
            if let Some(child_node) = self.read_upper(&child)?
                && !self.is_whiteout(&child_node)
            {
                self.add_subtree(&child, &child_node)?;
            }
        }
        Ok(())
    }

    fn push_add(&mut self, path: &LayerPath, node: &HostNode) -> Result<(), LayerError> {
        if let Some(layer_node) = node.to_node(path, &self.upper(path), self.idmap)? {
            self.changes.push(Change::add(path.clone(), layer_node));
        }
        Ok(())
    }
}

fn child_path(dir: &LayerPath, name: OsString) -> Result<LayerPath, LayerError> {
    dir.join(&name)
        .map_err(|problem| LayerError::Unrepresentable {
            path: dir.clone(),
            problem: format!("it holds the name {name:?}: {problem}"),
        })
}

/// The union of two byte-sorted name lists, sorted, without duplicates.
fn merge_sorted(a: Vec<OsString>, b: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let next = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (Some(x), Some(y)) => match x.as_bytes().cmp(y.as_bytes()) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next(),
                std::cmp::Ordering::Equal => {
                    b.next();
                    a.next()
                }
            },
        };
        out.extend(next);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::fs::{self, Permissions};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::test_support::*;

    /// A lower tree with one object per kind of change the tests make.
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
        ] {
            let path = write(root, rel, body.as_bytes(), 0o644);
            set_mtime(&path, 1_000);
        }
        link(root, "link", "a");
    }

    #[test]
    fn copy_diff_finds_additions_modifications_deletions_and_type_changes() {
        let (lower, upper) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (l, u) = (lower.path(), upper.path());
        lower_tree(l);
        clone_tree(l, u);

        write(u, "etc/edit", b"bbbb", 0o644); // same size, new mtime
        write(u, "etc/grow", b"xyz", 0o644);
        fs::set_permissions(u.join("etc/chmod"), Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(u.join("etc/gone")).unwrap();
        write(u, "etc/touched", b"t", 0o644); // rewritten, same bytes
        write(u, "etc/new", b"n", 0o640);
        fs::remove_dir_all(u.join("olddir")).unwrap();
        fs::remove_file(u.join("file_to_dir")).unwrap();
        write(u, "file_to_dir/child", b"now a dir", 0o644);
        fs::remove_dir_all(u.join("dir_to_link")).unwrap();
        link(u, "dir_to_link", "etc");
        fs::remove_file(u.join("link")).unwrap();
        link(u, "link", "b");

        let changes = diff_trees(l, u, &my_idmap()).unwrap();
        let dir_mode = fs::metadata(u.join("file_to_dir")).unwrap().mode() & 0o7777;
        assert_eq!(
            describe(&changes),
            [
                "+ /dir_to_link symlink -> etc 777 0:0".to_string(),
                "+ /etc/chmod file \"c\" 600 0:0".into(),
                "+ /etc/edit file \"bbbb\" 644 0:0".into(),
                "- /etc/gone".into(),
                "+ /etc/grow file \"xyz\" 644 0:0".into(),
                "+ /etc/new file \"n\" 640 0:0".into(),
                format!("+ /file_to_dir dir {dir_mode:o} 0:0"),
                "+ /file_to_dir/child file \"now a dir\" 644 0:0".into(),
                "+ /link symlink -> b 777 0:0".into(),
                "- /olddir".into(),
            ]
        );
    }

    #[test]
    fn identical_trees_have_no_changes() {
        let (lower, upper) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        lower_tree(lower.path());
        clone_tree(lower.path(), upper.path());
        assert_eq!(
            diff_trees(lower.path(), upper.path(), &my_idmap()).unwrap(),
            []
        );
    }

    #[test]
    fn a_directory_with_new_metadata_is_re_added_without_its_unchanged_children() {
        let (lower, upper) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        lower_tree(lower.path());
        clone_tree(lower.path(), upper.path());
        fs::set_permissions(upper.path().join("etc"), Permissions::from_mode(0o750)).unwrap();
        let changes = diff_trees(lower.path(), upper.path(), &my_idmap()).unwrap();
        assert_eq!(describe(&changes), ["+ /etc dir 750 0:0"]);
    }

    #[test]
    fn device_nodes_and_unmapped_owners_in_the_output_are_refused() {
        require_root("for mknod and chown");
        let (lower, upper) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert!(run_ok(
            "mknod",
            &[
                upper.path().join("null").as_os_str(),
                os("c"),
                os("1"),
                os("3")
            ]
        ));
        let err = diff_trees(lower.path(), upper.path(), &my_idmap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer entry /null is a character device node; a rootless build cannot create device nodes"
        );

        fs::remove_file(upper.path().join("null")).unwrap();
        let file = write(upper.path(), "f", b"x", 0o644);
        std::os::unix::fs::chown(&file, Some(12_345), None).unwrap();
        let err = diff_trees(lower.path(), upper.path(), &IdMap::single(0, 0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/f is owned by host uid 12345, which maps to no container uid (mapped host uids: 0..1)"
        );
    }

    #[test]
    fn merge_sorted_is_a_sorted_union() {
        let v = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            merge_sorted(v(&["a", "c", "d"]), v(&["b", "c", "e"])),
            v(&["a", "b", "c", "d", "e"])
        );
    }
}
