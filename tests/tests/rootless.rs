//! `strata build` as a non-root user with subordinate ids: the rootless
//! path, where the setuid helpers `newuidmap`/`newgidmap` write the maps of
//! a user namespace the builder enters at start-up
//! (`builder/sandbox/src/userns.rs`), in which it extracts, reads and
//! deletes files of those ids and nests its steps' namespaces. The rest of
//! the suite runs as root, which enters none, so only this file runs that
//! path.
//!
//! The user is `strata-rootless`, made with its `/etc/subuid` and
//! `/etc/subgid` entries by `scripts/ensure-test-user` (which `scripts/test`
//! runs); the test itself runs as root to switch to it. Anything missing
//! fails the test saying how to get it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use strata_tests::builds::{context, need, oci_output, statuses, umoci_unpack};
use strata_tests::strata_bin;

/// The user `scripts/ensure-test-user` creates.
const ROOTLESS_USER: &str = "strata-rootless";

/// What to do when the user or its entries are missing.
const HOW_TO_GET_THE_USER: &str = "run scripts/test, or scripts/ensure-test-user as root, which \
     creates the user with /etc/subuid and /etc/subgid entries and installs the `uidmap` package";

/// A Dockerfile that needs more than one id, with steps that build on
/// files of other ids: after busybox, one RUN records the step's id maps
/// and user; the next gives files and restrictive directories to uid 1000
/// and gid 50, which the single-id fallback has no host id for; then a RUN
/// reads, changes and deletes them, a COPY writes into a 0700 directory of
/// uid 1000, and a RUN as that user uses what they left.
///
/// The builder applies each layer to its working rootfs outside the steps'
/// sandbox, so every step after the chown needs the builder itself to own
/// those ids: it does, as root of a user namespace of its own with the
/// user's subordinate maps.
const NEEDS_MANY_IDS: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN cat /proc/self/uid_map | tee /uid_map && cat /proc/self/gid_map | tee /gid_map && id -u | tee /id_u
RUN mkdir -p /shared/locked && echo s > /shared/f && touch /owned /doomed /shared/locked/x && chown 1000:1000 /owned /doomed && chown -R 1000:50 /shared && chmod 0640 /shared/f && chmod 0750 /shared && chmod 0700 /shared/locked
RUN echo changed >> /owned && rm /doomed && ls /shared/locked > /listing && chown 2000:2000 /shared/locked/x
COPY data.txt /shared/locked/
USER 1000:50
RUN echo by-1000 >> /owned && cat /shared/locked/data.txt /shared/f > /shared/seen
"#;

/// Steps on a base image whose layer (written by [`base_layer`], not by
/// strata) has files of other ids under restrictive directories: the first
/// RUN is the first that needs the base on disk; the second reads a 0600
/// file in a 0700 home and a 0400 key in a 0700 directory inside a 0750
/// one, appends to a 0660 file of group 8, deletes the key and leaves a file
/// of uid 1000 and gid 42; a COPY writes into the 0700 home, and a RUN as
/// its owner, named in the image's `/etc/passwd`, uses all of it.
const ON_A_BASE_WITH_MANY_IDS: &str = r#"FROM oci:BASE:v1
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN cat /home/app/.profile /srv/data/locked/key > /root-read && echo more >> /var/mail/app && rm /srv/data/locked/key && touch /srv/data/locked/new && chown 1000:42 /srv/data/locked/new && chmod 0640 /srv/data/locked/new
COPY data.txt /home/app/
USER app
RUN cat /home/app/data.txt /home/app/.profile > /home/app/seen && mkdir -m 0700 /home/app/cache && touch /home/app/cache/x && ls /srv/data/locked > /home/app/listing
"#;

/// A build that fails after steps left trees of other ids under modes that
/// keep even their owner from deleting what is inside (0500, 000), over the
/// same base: what it leaves in its scratch directory must go all the same.
const FAILS_OVER_RESTRICTIVE_TREES: &str = r#"FROM oci:BASE:v1
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /deep/er /deep/zero && touch /deep/er/f /deep/zero/g && chown -R 1000:42 /deep && chmod 0500 /deep/er && chmod 000 /deep/zero && chmod 0700 /deep
RUN exit 3
"#;

/// One line of a `uid_map` or `gid_map`: inside, outside, count.
type MapLine = (u32, u32, u32);

/// The test user's ids and subordinate ranges `(start, count)`.
struct RootlessUser {
    uid: u32,
    gid: u32,
    sub_uids: (u32, u32),
    sub_gids: (u32, u32),
}

impl RootlessUser {
    /// Looks the user up, failing with [`HOW_TO_GET_THE_USER`] when it or
    /// its entries are missing.
    fn find() -> RootlessUser {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, ROOTLESS_USER])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "this test builds as the user {ROOTLESS_USER}, which does not exist: \
                 {HOW_TO_GET_THE_USER}"
            );
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        RootlessUser {
            uid,
            gid,
            sub_uids: subordinate_range(Path::new("/etc/subuid"), uid),
            sub_gids: subordinate_range(Path::new("/etc/subgid"), uid),
        }
    }

    /// `setpriv` running as this user, with its own groups and an empty
    /// environment.
    fn command(&self) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--init-groups", "--"])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        cmd
    }

    /// Gives `path` and everything under it to this user.
    fn give(&self, path: &Path) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).unwrap();
        if std::fs::symlink_metadata(path).unwrap().is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                self.give(&entry.unwrap().path());
            }
        }
    }
}

/// The user's first line in an `/etc/subuid`-format file (newuidmap and the
/// builder take the first too), by name or by uid.
fn subordinate_range(file: &Path, uid: u32) -> (u32, u32) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let uid = uid.to_string();
    text.lines()
        .find_map(|line| {
            let mut fields = line.trim().split(':');
            let who = fields.next()?;
            if who != ROOTLESS_USER && who != uid {
                return None;
            }
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
        .unwrap_or_else(|| {
            panic!(
                "{} has no entry for {ROOTLESS_USER}: {HOW_TO_GET_THE_USER}",
                file.display()
            )
        })
}

/// Everything one rootless build needs, in a directory the user owns:
/// the `strata` binary (the build's own target directory may not be
/// searchable by the user), HOME, configuration (where the user's signing
/// key is made on first use), cache, TMPDIR (the build's scratch) and the
/// OCI output.
struct RootlessWorkspace {
    dir: tempfile::TempDir,
}

impl RootlessWorkspace {
    fn new(user: &RootlessUser) -> RootlessWorkspace {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["bin", "home", "config", "cache", "tmp", "out"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let bin = dir.path().join("bin/strata");
        std::fs::copy(strata_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        user.give(dir.path());
        RootlessWorkspace { dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// `strata build --json --output oci:out/image:v1 CTX` as `user`.
    fn build(&self, user: &RootlessUser, ctx: &Path) -> Output {
        user.command()
            .arg(self.path("bin/strata"))
            .args(["build", "--json", "--output"])
            .arg(oci_output(&self.path("out/image"), "v1"))
            .arg(ctx)
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("STRATA_CACHE_DIR", self.path("cache"))
            .env("TMPDIR", self.path("tmp"))
            .env("RUST_LOG", "warn")
            .current_dir(self.path("home"))
            .output()
            .unwrap()
    }
}

/// The lines of a `uid_map`/`gid_map` text.
fn map_lines(text: &str) -> Vec<MapLine> {
    text.lines()
        .map(|line| {
            let n: Vec<u32> = line
                .split_whitespace()
                .map(|f| f.parse().unwrap())
                .collect();
            assert_eq!(n.len(), 3, "not a map line: {line:?}");
            (n[0], n[1], n[2])
        })
        .collect()
}

/// The ids and permission bits of `path`, not following a symlink.
fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

/// The ids of `path`, for a file whose mode comes from the umask.
fn owner(path: &Path) -> (u32, u32) {
    let (uid, gid, _) = owner_mode(path);
    (uid, gid)
}

/// Fails unless the test runs as root, with the user's tools installed;
/// the user itself.
fn rootless_user() -> RootlessUser {
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test switches to {ROOTLESS_USER} and so must run as root, as scripts/test does"
    );
    need("setpriv", "util-linux");
    need("newuidmap", "uidmap");
    need("newgidmap", "uidmap");
    RootlessUser::find()
}

/// Builds `ctx` as `user` into `out/image:v1`, failing with its stderr
/// unless it succeeds with every step executed; the unpacked image's rootfs.
fn build_and_unpack(user: &RootlessUser, workspace: &RootlessWorkspace, ctx: &Path) -> PathBuf {
    let out = workspace.build(user, ctx);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the build as {ROOTLESS_USER} failed: {stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        statuses(&report).iter().all(|s| s == "executed"),
        "{report}"
    );
    umoci_unpack(
        &workspace.path("out/image"),
        "v1",
        &workspace.path("bundle"),
    )
}

/// The builder, not root, removed its scratch directories (working rootfs,
/// step directories, layer files), files and directories of subordinate
/// ids with restrictive modes included.
fn assert_no_scratch_left(workspace: &RootlessWorkspace) {
    let left: Vec<_> = std::fs::read_dir(workspace.path("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the build's TMPDIR: {left:?}");
}

/// One entry of a hand-written layer tar: `(path, kind, mode, uid, gid,
/// contents or link target)`.
type BaseEntry<'a> = (&'a str, tar::EntryType, u32, u64, u64, &'a [u8]);

/// A base layer as another tool writes it (the `tar` crate, not strata's
/// writer): busybox, account files naming `app` (uid 1000, group 1000),
/// and files of uid 1000 and groups 8 (mail), 42 (shadow) and 1000 under
/// directories of modes 0700, 0750 and 2775, as a distribution's base has.
fn base_layer() -> Vec<u8> {
    use tar::EntryType::{Directory, Regular};
    let busybox = std::fs::read(strata_tests::builds::BUSYBOX).unwrap();
    let entries: [BaseEntry; 17] = [
        ("bin/", Directory, 0o755, 0, 0, b""),
        ("bin/busybox", Regular, 0o755, 0, 0, &busybox),
        ("etc/", Directory, 0o755, 0, 0, b""),
        (
            "etc/passwd",
            Regular,
            0o644,
            0,
            0,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        ),
        (
            "etc/group",
            Regular,
            0o644,
            0,
            0,
            b"root:x:0:\nmail:x:8:\nshadow:x:42:\napp:x:1000:\n",
        ),
        (
            "etc/shadow",
            Regular,
            0o640,
            0,
            42,
            b"root:*::0:::::\napp:!::0:::::\n",
        ),
        ("home/", Directory, 0o755, 0, 0, b""),
        ("home/app/", Directory, 0o700, 1000, 1000, b""),
        (
            "home/app/.profile",
            Regular,
            0o600,
            1000,
            1000,
            b"secret profile\n",
        ),
        ("var/", Directory, 0o755, 0, 0, b""),
        ("var/mail/", Directory, 0o2775, 0, 8, b""),
        ("var/mail/app", Regular, 0o660, 1000, 8, b"you have mail\n"),
        ("srv/", Directory, 0o755, 0, 0, b""),
        ("srv/data/", Directory, 0o750, 0, 1000, b""),
        ("srv/data/locked/", Directory, 0o700, 1000, 1000, b""),
        ("srv/data/locked/key", Regular, 0o400, 1000, 1000, b"k\n"),
        (
            "srv/data/readme",
            Regular,
            0o640,
            0,
            1000,
            b"group app reads this\n",
        ),
    ];
    let mut tar = tar::Builder::new(Vec::new());
    for (path, kind, mode, uid, gid, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, path, data).unwrap();
    }
    tar.into_inner().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// An OCI layout at `layout` whose image `v1` is [`base_layer`] alone.
fn write_base_image(layout: &Path) {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let tar = base_layer();
    let layer = put(&tar);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": tar.len()}],
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A workspace holding the base image at `base`, and a context for
/// `dockerfile` (its `BASE` replaced by that layout), both the user's.
fn over_base(user: &RootlessUser, dockerfile: &str) -> (RootlessWorkspace, tempfile::TempDir) {
    let workspace = RootlessWorkspace::new(user);
    let base = workspace.path("base");
    write_base_image(&base);
    user.give(&base);
    let ctx = context(&dockerfile.replace("BASE", base.to_str().unwrap()));
    user.give(ctx.path());
    (workspace, ctx)
}

#[test]
fn a_non_root_builder_maps_its_subordinate_ids_and_builds_on_files_they_own() {
    let user = rootless_user();
    let workspace = RootlessWorkspace::new(&user);
    let ctx = context(NEEDS_MANY_IDS);
    user.give(ctx.path());

    let rootfs = build_and_unpack(&user, &workspace, ctx.path());
    let read = |name: &str| std::fs::read_to_string(rootfs.join(name)).unwrap();

    // Container root is the user itself, and container ids from 1 its
    // subordinate ranges: the builder runs in a user namespace with those
    // maps, and each step in one nested in it that keeps every one of its
    // ids, line for line. So the step sees the builder's two lines, each
    // onto itself: its own id, then as many as the subordinate range holds.
    // Only newuidmap and newgidmap can have given a non-root builder more
    // than its own id (the kernel lets it map that one alone, the single-id
    // fallback).
    assert_eq!(read("id_u").trim(), "0");
    let (_, sub_uid_count) = user.sub_uids;
    let (_, sub_gid_count) = user.sub_gids;
    assert_eq!(
        map_lines(&read("uid_map")),
        [(0, 0, 1), (1, 1, sub_uid_count)],
        "the step's uid_map does not keep the builder's id and its /etc/subuid range"
    );
    assert_eq!(
        map_lines(&read("gid_map")),
        [(0, 0, 1), (1, 1, sub_gid_count)],
        "the step's gid_map does not keep the builder's group and its /etc/subgid range"
    );

    // Steps after the one that gave files to other ids read, changed and
    // deleted them, as root and as their owner. The layers record container
    // ids, never the host's (subordinate start + 999).
    assert_eq!(read("owned"), "changed\nby-1000\n");
    assert_eq!(owner(&rootfs.join("owned")), (1000, 1000));
    assert!(!rootfs.join("doomed").exists(), "a deleted file is back");
    assert_eq!(read("listing"), "x\n");
    assert_eq!(owner_mode(&rootfs.join("shared")), (1000, 50, 0o750));
    assert_eq!(owner_mode(&rootfs.join("shared/f")), (1000, 50, 0o640));
    assert_eq!(owner_mode(&rootfs.join("shared/locked")), (1000, 50, 0o700));
    assert_eq!(owner(&rootfs.join("shared/locked/x")), (2000, 2000));
    // COPY into the 0700 directory of uid 1000: the file is root's.
    assert_eq!(read("shared/locked/data.txt"), "data v1\n");
    assert_eq!(owner(&rootfs.join("shared/locked/data.txt")), (0, 0));
    assert_eq!(read("shared/seen"), "data v1\ns\n");
    assert_eq!(owner(&rootfs.join("shared/seen")), (1000, 50));
    assert_eq!(owner(&rootfs.join("bin/busybox")), (0, 0));

    assert_no_scratch_left(&workspace);
}

#[test]
fn a_non_root_builder_runs_steps_on_a_base_whose_layer_has_files_of_other_ids() {
    let user = rootless_user();
    let (workspace, ctx) = over_base(&user, ON_A_BASE_WITH_MANY_IDS);

    let rootfs = build_and_unpack(&user, &workspace, ctx.path());
    let read = |name: &str| std::fs::read_to_string(rootfs.join(name)).unwrap();

    // Root of the step read the 0600 and 0400 files of uid 1000.
    assert_eq!(read("root-read"), "secret profile\nk\n");
    assert_eq!(owner(&rootfs.join("root-read")), (0, 0));
    // It appended to the 0660 file of group mail, which keeps its owners.
    assert_eq!(read("var/mail/app"), "you have mail\nmore\n");
    assert_eq!(owner_mode(&rootfs.join("var/mail/app")), (1000, 8, 0o660));
    assert_eq!(owner_mode(&rootfs.join("var/mail")), (0, 8, 0o2775));
    // It deleted the key in the 0700 directory and left a file of its own.
    assert!(!rootfs.join("srv/data/locked/key").exists());
    assert_eq!(
        owner_mode(&rootfs.join("srv/data/locked/new")),
        (1000, 42, 0o640)
    );
    assert_eq!(
        owner_mode(&rootfs.join("srv/data/locked")),
        (1000, 1000, 0o700)
    );
    assert_eq!(owner_mode(&rootfs.join("srv/data")), (0, 1000, 0o750));
    // COPY wrote into the 0700 home of uid 1000, and that user (named in
    // the image) read it, made a 0700 directory there, and listed the
    // locked directory through its group's 0750 parent.
    assert_eq!(owner_mode(&rootfs.join("home/app")), (1000, 1000, 0o700));
    assert_eq!(owner(&rootfs.join("home/app/data.txt")), (0, 0));
    assert_eq!(read("home/app/seen"), "data v1\nsecret profile\n");
    assert_eq!(owner(&rootfs.join("home/app/seen")), (1000, 1000));
    assert_eq!(
        owner_mode(&rootfs.join("home/app/cache")),
        (1000, 1000, 0o700)
    );
    assert_eq!(owner(&rootfs.join("home/app/cache/x")), (1000, 1000));
    assert_eq!(read("home/app/listing"), "new\n");
    assert_eq!(owner_mode(&rootfs.join("etc/shadow")), (0, 42, 0o640));

    assert_no_scratch_left(&workspace);
}

#[test]
fn a_failed_non_root_build_removes_scratch_trees_of_other_ids_with_closed_modes() {
    let user = rootless_user();
    let (workspace, ctx) = over_base(&user, FAILS_OVER_RESTRICTIVE_TREES);

    let out = workspace.build(&user, ctx.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The failing RUN's own code: the steps before it (and the base) were
    // applied and run, so the scratch held all of their trees.
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("exit code 3"), "{stderr}");

    assert_no_scratch_left(&workspace);
}
