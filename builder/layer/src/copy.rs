//! Layers for COPY and ADD: host files from the build context placed at
//! image paths, without running anything.
//!
//! What the layer holds, so that it depends only on the step's inputs (the
//! context files' bytes, modes and link targets, the flags, and the parent
//! image) and never on the host:
//! - each source at its destination, with its whole subtree for a
//!   directory; owner `--chown` or 0:0 (never the host's owner), mode
//!   `--chmod` (not for symlinks) or the source's permission bits;
//! - a directory source whose destination is already a directory in the
//!   image (after following symlinks inside the image, as `COPY dir /lib/`
//!   on merged-/usr must) contributes only its contents: the image's
//!   directory keeps its metadata;
//! - destination parents the image lacks, as directories 0755 owned 0:0.
//!   Parents the image has are *not* written: writing them as 0755 root:root
//!   would reset `/tmp` (1777) or a user's home (0700 app:app) — which is why
//!   this needs the working rootfs (`image_root`);
//! - symlinks among the destination's parents are resolved inside the image,
//!   as if the image root were `/` (an absolute target starts at the image
//!   root, `..` stops there): on merged-/usr images `COPY x /lib/y` lands in
//!   `usr/lib/y`, since `lib` is a symlink and the extractor refuses to
//!   write through symlinks. The last component of a file destination is
//!   not followed: the caller has already decided its name;
//! - no tar hard links: the step key hashes the context's contents, not its
//!   inode structure, so two hard-linked context files are written as two
//!   files.
//!
//! Items apply in order; a later item replaces an earlier one at the same
//! path (and anything the earlier one put below it).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::host::{HostKind, read_dir_sorted, read_node};
use super::{
    Change, ChangeKind, LayerError, LayerPath, LayerSummary, Node, NodeKind, WriteOptions,
    write_layer,
};

/// Linux's limit on symlinks followed while resolving one path.
const MAX_SYMLINK_HOPS: u32 = 40;
const PARENT_DIR_MODE: u32 = 0o755;

/// One source → destination mapping of a COPY or ADD step, already expanded
/// by the caller (wildcards, trailing-slash rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyItem {
    /// Host path of a file, symlink or directory in the build context.
    pub source: PathBuf,
    /// Where it lands in the image. The root is allowed for a directory
    /// source (`COPY rootfs/ /`): its contents land at the root.
    pub dest: LayerPath,
    /// `--chown`, as container uid and gid; 0:0 when absent.
    pub chown: Option<(u32, u32)>,
    /// `--chmod` permission bits; the source's when absent.
    pub chmod: Option<u32>,
    /// For a directory source: copy its subtree too. A caller that has
    /// already selected every entry (honouring `.dockerignore`, say) passes
    /// each one with `false`.
    pub recursive: bool,
    /// For a non-directory source: if `dest` is an existing directory in
    /// the image (symlinks followed inside the image), the source lands
    /// inside it under its own file name — Docker's rule for
    /// `COPY hello.c /usr/local/bin`, whose destination has no trailing `/`.
    pub into_existing_dir: bool,
}

/// The changeset of a COPY/ADD step applied on top of the image whose
/// working rootfs is `image_root`.
pub fn copy_changes(items: &[CopyItem], image_root: &Path) -> Result<Vec<Change>, LayerError> {
    let mut changes = BTreeMap::new();
    for item in items {
        let source = read_node(&item.source)?.ok_or_else(|| {
            LayerError::io("read COPY source", &item.source)(io::ErrorKind::NotFound.into())
        })?;
        if source.is_dir()
            && let Some(existing) = existing_image_dir(image_root, &item.dest)?
        {
            if item.recursive {
                add_children(item, &item.source, &existing, &mut changes)?;
            }
            continue;
        }
        if !source.is_dir()
            && item.into_existing_dir
            && let Some(existing) = existing_image_dir(image_root, &item.dest)?
            && let Some(name) = item.source.file_name()
        {
            let inside = existing
                .join(name)
                .map_err(|problem| LayerError::InvalidPath {
                    path: format!("{existing}/{}", name.to_string_lossy()),
                    problem,
                })?;
            add_source(item, &item.source, &inside, &mut changes)?;
            continue;
        }
        let dest = resolve_parents(image_root, &item.dest)?;
        add_missing_parents(image_root, &dest, &mut changes)?;
        add_source(item, &item.source, &dest, &mut changes)?;
    }
    Ok(changes.into_values().collect())
}

/// The directories a `WORKDIR` creates: each component of `dir` the image
/// lacks (symlinks resolved inside the image), mode 0755, owned by `owner`
/// (the step's `USER`, as BuildKit does). Empty when the directory exists.
pub fn workdir_changes(
    image_root: &Path,
    dir: &LayerPath,
    owner: (u32, u32),
) -> Result<Vec<Change>, LayerError> {
    let resolved = layer_path_of(&resolve_in_image(image_root, dir, dir)?, dir)?;
    if resolved.is_root() {
        return Ok(Vec::new());
    }
    let mut chain = resolved.ancestors();
    chain.push(resolved.clone());
    let mut changes = Vec::new();
    for path in chain {
        match read_node(&image_root.join(path.as_path()))? {
            Some(node) if node.is_dir() => {}
            Some(_) => return Err(not_a_directory(dir, path, "non-directory in the image")),
            None => {
                let node = Node {
                    kind: NodeKind::Dir,
                    mode: PARENT_DIR_MODE,
                    uid: owner.0,
                    gid: owner.1,
                };
                changes.push(Change::add(path, node));
            }
        }
    }
    Ok(changes)
}

/// `copy_changes`, written as a layer with every mtime `epoch`.
pub fn write_copy_layer<W: Write>(
    items: &[CopyItem],
    image_root: &Path,
    out: W,
    epoch: u64,
) -> Result<LayerSummary, LayerError> {
    let changes = copy_changes(items, image_root)?;
    let options = WriteOptions {
        epoch,
        preserve_hardlinks: false,
    };
    write_layer(&changes, out, &options)
}

/// Adds `source` at `dest` and, for a directory, its subtree.
fn add_source(
    item: &CopyItem,
    source: &Path,
    dest: &LayerPath,
    changes: &mut BTreeMap<LayerPath, Change>,
) -> Result<(), LayerError> {
    let Some(host) = read_node(source)? else {
        return Ok(()); // vanished from the context while being read
    };
    let kind = match &host.kind {
        HostKind::Dir => NodeKind::Dir,
        HostKind::File => NodeKind::File {
            source: source.to_path_buf(),
        },
        HostKind::Symlink(target) => NodeKind::Symlink {
            target: target.clone(),
        },
        HostKind::Fifo => NodeKind::Fifo,
        HostKind::Socket => return Ok(()),
        HostKind::CharDevice { .. } | HostKind::BlockDevice => {
            return Err(LayerError::DeviceNode {
                path: dest.clone(),
                kind: "COPY source",
            });
        }
    };
    let mode = match (&kind, item.chmod) {
        (NodeKind::Symlink { .. }, _) | (_, None) => host.mode,
        (_, Some(chmod)) => chmod & 0o7777,
    };
    let (uid, gid) = item.chown.unwrap_or((0, 0));
    let is_dir = kind == NodeKind::Dir;
    if dest.is_root() {
        return Err(LayerError::Unrepresentable {
            path: dest.clone(),
            problem: format!(
                "only a directory can be copied to the root, {} is not one",
                source.display()
            ),
        });
    }
    replace(
        changes,
        Change::add(
            dest.clone(),
            Node {
                kind,
                mode,
                uid,
                gid,
            },
        ),
    );
    if is_dir && item.recursive {
        add_children(item, source, dest, changes)?;
    }
    Ok(())
}

fn add_children(
    item: &CopyItem,
    source_dir: &Path,
    dest: &LayerPath,
    changes: &mut BTreeMap<LayerPath, Change>,
) -> Result<(), LayerError> {
    for name in read_dir_sorted(source_dir)? {
        let child = dest
            .join(&name)
            .map_err(|problem| LayerError::InvalidPath {
                path: format!("{dest}/{}", name.to_string_lossy()),
                problem,
            })?;
        add_source(item, &source_dir.join(&name), &child, changes)?;
    }
    Ok(())
}

/// Puts `change` in the set, dropping what an earlier item put at or below
/// its path unless both are directories (which merge).
fn replace(changes: &mut BTreeMap<LayerPath, Change>, change: Change) {
    let merges = is_dir_change(&change) && changes.get(&change.path).is_some_and(is_dir_change);
    if !merges {
        let below: Vec<LayerPath> = changes
            .range(change.path.clone()..)
            .map(|(path, _)| path)
            .take_while(|path| path.starts_with(&change.path))
            .cloned()
            .collect();
        for path in below {
            changes.remove(&path);
        }
    }
    changes.insert(change.path.clone(), change);
}

fn is_dir_change(change: &Change) -> bool {
    matches!(
        &change.kind,
        ChangeKind::Add(Node {
            kind: NodeKind::Dir,
            ..
        })
    )
}

/// Adds a 0755 0:0 directory for every parent of `dest` that neither the
/// image nor an earlier item provides.
fn add_missing_parents(
    image_root: &Path,
    dest: &LayerPath,
    changes: &mut BTreeMap<LayerPath, Change>,
) -> Result<(), LayerError> {
    for parent in dest.ancestors() {
        if let Some(earlier) = changes.get(&parent) {
            if is_dir_change(earlier) {
                continue;
            }
            return Err(not_a_directory(
                dest,
                parent,
                "file copied by an earlier source",
            ));
        }
        match read_node(&image_root.join(parent.as_path()))? {
            Some(node) if node.is_dir() => {}
            Some(_) => return Err(not_a_directory(dest, parent, "non-directory in the image")),
            None => {
                let dir = Node {
                    kind: NodeKind::Dir,
                    mode: PARENT_DIR_MODE,
                    uid: 0,
                    gid: 0,
                };
                changes.insert(parent.clone(), Change::add(parent, dir));
            }
        }
    }
    Ok(())
}

fn not_a_directory(dest: &LayerPath, parent: LayerPath, found: &'static str) -> LayerError {
    LayerError::ParentNotDirectory {
        path: dest.clone(),
        parent,
        found,
    }
}

/// The real path of `dest` if it is a directory in the image, following
/// symlinks (inside the image) in every component, the last one included.
fn existing_image_dir(
    image_root: &Path,
    dest: &LayerPath,
) -> Result<Option<LayerPath>, LayerError> {
    let resolved = layer_path_of(&resolve_in_image(image_root, dest, dest)?, dest)?;
    let is_dir = read_node(&image_root.join(resolved.as_path()))?.is_some_and(|node| node.is_dir());
    Ok(is_dir.then_some(resolved))
}

/// `path` with every symlink in it, the last component included, resolved
/// inside the image (as if the image root were `/`): where `COPY --from`
/// reads a source without ever leaving the image.
pub fn resolve_image_path(image_root: &Path, path: &LayerPath) -> Result<LayerPath, LayerError> {
    layer_path_of(&resolve_in_image(image_root, path, path)?, path)
}

/// `dest` with the symlinks among its parents resolved inside the image.
fn resolve_parents(image_root: &Path, dest: &LayerPath) -> Result<LayerPath, LayerError> {
    let Some(parent) = dest.parent() else {
        return Ok(LayerPath::root());
    };
    let mut resolved = resolve_in_image(image_root, &parent, dest)?;
    resolved.push(dest.file_name().to_vec());
    layer_path_of(&resolved, dest)
}

/// Resolves every component of `path` inside the image (chroot-like) and
/// returns the components of the real path. Missing components are kept as
/// they are: they will be created.
fn resolve_in_image(
    image_root: &Path,
    path: &LayerPath,
    dest: &LayerPath,
) -> Result<Vec<Vec<u8>>, LayerError> {
    let mut pending: Vec<Vec<u8>> = path.components().rev().map(<[u8]>::to_vec).collect();
    let mut resolved: Vec<Vec<u8>> = Vec::new();
    let mut hops = 0;
    while let Some(component) = pending.pop() {
        match component.as_slice() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = image_root
            .join(join_components(&resolved))
            .join(OsStr::from_bytes(&component));
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(LayerError::Unrepresentable {
                        path: dest.clone(),
                        problem: format!(
                            "resolving its parents in the image followed more than {MAX_SYMLINK_HOPS} symlinks"
                        ),
                    });
                }
                let target =
                    fs::read_link(&candidate).map_err(LayerError::io("readlink", &candidate))?;
                let target = target.as_os_str().as_bytes();
                if target.first() == Some(&b'/') {
                    resolved.clear();
                }
                pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
            }
            Ok(_) => resolved.push(component),
            Err(err) if err.kind() == io::ErrorKind::NotFound => resolved.push(component),
            Err(err) => return Err(LayerError::io("lstat", &candidate)(err)),
        }
    }
    Ok(resolved)
}

fn join_components(components: &[Vec<u8>]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&components.join(&b'/')))
}

fn layer_path_of(components: &[Vec<u8>], dest: &LayerPath) -> Result<LayerPath, LayerError> {
    LayerPath::parse(&components.join(&b'/')).map_err(|problem| LayerError::InvalidPath {
        path: dest.to_string(),
        problem,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::fs::{self, Permissions};
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::test_support::*;

    fn item(source: &Path, dest: &str) -> CopyItem {
        CopyItem {
            source: source.to_path_buf(),
            dest: LayerPath::from_image_path(Path::new(dest)).unwrap(),
            chown: None,
            chmod: None,
            recursive: true,
            into_existing_dir: false,
        }
    }

    /// A build context with an application directory.
    fn context() -> tempfile::TempDir {
        let ctx = tempfile::tempdir().unwrap();
        write(ctx.path(), "app/main.py", b"print()", 0o644);
        write(ctx.path(), "app/bin/run", b"#!/bin/sh", 0o755);
        link(ctx.path(), "app/lib", "../lib");
        fs::set_permissions(ctx.path().join("app"), Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(ctx.path().join("app/bin"), Permissions::from_mode(0o755)).unwrap();
        ctx
    }

    /// A working rootfs with a sticky /tmp and a merged /usr.
    fn image() -> tempfile::TempDir {
        let image = tempfile::tempdir().unwrap();
        mkdir(image.path(), "tmp", 0o1777);
        mkdir(image.path(), "usr/lib", 0o755);
        mkdir(image.path(), "srv", 0o700);
        link(image.path(), "lib", "usr/lib");
        link(image.path(), "lib64", "/usr/lib");
        link(image.path(), "up", "../../..");
        image
    }

    #[test]
    fn copy_holds_sources_and_missing_parents_owned_by_container_root() {
        let (ctx, image) = (context(), image());
        let items = [
            item(&ctx.path().join("app"), "/opt/app"),
            item(&ctx.path().join("app/main.py"), "/tmp/x/main.py"),
        ];
        let changes = copy_changes(&items, image.path()).unwrap();
        assert_eq!(
            describe(&changes),
            [
                "+ /opt dir 755 0:0",
                "+ /opt/app dir 750 0:0",
                "+ /opt/app/bin dir 755 0:0",
                "+ /opt/app/bin/run file \"#!/bin/sh\" 755 0:0",
                "+ /opt/app/lib symlink -> ../lib 777 0:0",
                "+ /opt/app/main.py file \"print()\" 644 0:0",
                // /tmp exists in the image: its 1777 is left alone.
                "+ /tmp/x dir 755 0:0",
                "+ /tmp/x/main.py file \"print()\" 644 0:0",
            ]
        );
    }

    #[test]
    fn chown_and_chmod_apply_to_everything_copied_except_symlink_modes() {
        let (ctx, image) = (context(), image());
        let copy = CopyItem {
            chown: Some((1000, 1001)),
            chmod: Some(0o640),
            ..item(&ctx.path().join("app"), "/opt/app")
        };
        let changes = copy_changes(&[copy], image.path()).unwrap();
        assert_eq!(
            describe(&changes),
            [
                "+ /opt dir 755 0:0",
                "+ /opt/app dir 640 1000:1001",
                "+ /opt/app/bin dir 640 1000:1001",
                "+ /opt/app/bin/run file \"#!/bin/sh\" 640 1000:1001",
                "+ /opt/app/lib symlink -> ../lib 777 1000:1001",
                "+ /opt/app/main.py file \"print()\" 640 1000:1001",
            ]
        );
    }

    #[test]
    fn symlinked_destination_parents_resolve_inside_the_image() {
        let (ctx, image) = (context(), image());
        let file = ctx.path().join("app/main.py");
        let items = [
            item(&file, "/lib/x/a.py"),
            item(&file, "/lib64/b.py"),
            item(&file, "/up/etc/c.py"),
        ];
        let changes = copy_changes(&items, image.path()).unwrap();
        let paths: Vec<String> = changes.iter().map(|c| c.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "/etc",
                "/etc/c.py",
                "/usr/lib/b.py",
                "/usr/lib/x",
                "/usr/lib/x/a.py"
            ]
        );
    }

    #[test]
    fn a_directory_copied_onto_an_existing_directory_leaves_its_metadata_alone() {
        let (ctx, image) = (context(), image());
        let to_srv =
            copy_changes(&[item(&ctx.path().join("app/bin"), "/srv")], image.path()).unwrap();
        assert_eq!(describe(&to_srv), ["+ /srv/run file \"#!/bin/sh\" 755 0:0"]);
        let to_root =
            copy_changes(&[item(&ctx.path().join("app/bin"), "/")], image.path()).unwrap();
        assert_eq!(describe(&to_root), ["+ /run file \"#!/bin/sh\" 755 0:0"]);
        let to_lib =
            copy_changes(&[item(&ctx.path().join("app/bin"), "/lib")], image.path()).unwrap();
        assert_eq!(
            describe(&to_lib),
            ["+ /usr/lib/run file \"#!/bin/sh\" 755 0:0"]
        );
    }

    #[test]
    fn a_file_onto_an_existing_directory_lands_inside_it_only_when_asked() {
        let (ctx, image) = (context(), image());
        let main = ctx.path().join("app/main.py");
        let inside = |dest: &str| CopyItem {
            into_existing_dir: true,
            ..item(&main, dest)
        };
        // `COPY main.py /srv`: /srv is a directory, so the file goes in it,
        // and the directory keeps its metadata (0700).
        let to_srv = copy_changes(&[inside("/srv")], image.path()).unwrap();
        assert_eq!(
            describe(&to_srv),
            ["+ /srv/main.py file \"print()\" 644 0:0"]
        );
        // Through a symlink inside the image, never the host's /lib.
        let to_lib = copy_changes(&[inside("/lib")], image.path()).unwrap();
        assert_eq!(
            describe(&to_lib),
            ["+ /usr/lib/main.py file \"print()\" 644 0:0"]
        );
        // A missing destination is the file's new name.
        let to_new = copy_changes(&[inside("/srv/app.py")], image.path()).unwrap();
        assert_eq!(
            describe(&to_new),
            ["+ /srv/app.py file \"print()\" 644 0:0"]
        );
        // Without the flag, the caller decided the name: nothing is looked up.
        let plain = copy_changes(&[item(&main, "/tmp")], image.path()).unwrap();
        assert_eq!(describe(&plain), ["+ /tmp file \"print()\" 644 0:0"]);
    }

    #[test]
    fn workdir_creates_only_what_the_image_lacks_owned_by_the_user() {
        let image = image();
        let path = |p: &str| LayerPath::from_image_path(Path::new(p)).unwrap();
        let made = workdir_changes(image.path(), &path("/srv/app/data"), (1000, 1000)).unwrap();
        assert_eq!(
            describe(&made),
            [
                "+ /srv/app dir 755 1000:1000",
                "+ /srv/app/data dir 755 1000:1000"
            ]
        );
        assert!(
            workdir_changes(image.path(), &path("/tmp"), (0, 0))
                .unwrap()
                .is_empty()
        );
        assert!(
            workdir_changes(image.path(), &path("/"), (0, 0))
                .unwrap()
                .is_empty()
        );
        // Symlinks resolve inside the image: `/lib/x` is `/usr/lib/x`, and
        // `/up` (`../../..`) stops at the image root.
        let via_link = workdir_changes(image.path(), &path("/lib/x"), (0, 0)).unwrap();
        assert_eq!(describe(&via_link), ["+ /usr/lib/x dir 755 0:0"]);
        let escaping = workdir_changes(image.path(), &path("/up/etc"), (0, 0)).unwrap();
        assert_eq!(describe(&escaping), ["+ /etc dir 755 0:0"]);
        // A file in the way is an error naming it.
        write(image.path(), "srv/file", b"x", 0o644);
        let err = workdir_changes(image.path(), &path("/srv/file/sub"), (0, 0)).unwrap_err();
        assert!(err.to_string().contains("/srv/file"), "{err}");
    }

    #[test]
    fn a_later_item_replaces_an_earlier_one_and_its_subtree() {
        let (ctx, image) = (context(), image());
        let items = [
            item(&ctx.path().join("app"), "/opt/app"),
            item(&ctx.path().join("app/main.py"), "/opt/app"),
        ];
        let changes = copy_changes(&items, image.path()).unwrap();
        assert_eq!(
            describe(&changes),
            ["+ /opt dir 755 0:0", "+ /opt/app file \"print()\" 644 0:0"]
        );
    }

    #[test]
    fn impossible_destinations_are_refused() {
        let (ctx, image) = (context(), image());
        write(image.path(), "etc/passwd", b"root:x:0:0", 0o644);
        let file = ctx.path().join("app/main.py");
        let err = copy_changes(&[item(&file, "/")], image.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/ cannot be written into a layer: only a directory"),
            "{err}"
        );
        let err = copy_changes(&[item(&file, "/etc/passwd/x")], image.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer entry /etc/passwd/x needs /etc/passwd to be a directory, found a non-directory in the image"
        );
    }

    #[test]
    fn copy_layers_depend_on_contents_not_on_mtimes_or_context_hard_links() {
        let image = image();
        let (plain, linked) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (name, body) in [("a", "same"), ("b", "same")] {
            let path = write(plain.path(), name, body.as_bytes(), 0o644);
            set_mtime(&path, 1);
        }
        let a = write(linked.path(), "a", b"same", 0o644);
        fs::hard_link(&a, linked.path().join("b")).unwrap();
        set_mtime(&a, 2_000_000_000);

        let layer = |ctx: &Path| {
            let mut out = Vec::new();
            let items = [item(&ctx.join("a"), "/a"), item(&ctx.join("b"), "/b")];
            write_copy_layer(&items, image.path(), &mut out, 42).unwrap();
            out
        };
        assert!(layer(plain.path()) == layer(linked.path()), "layers differ");
    }
}
