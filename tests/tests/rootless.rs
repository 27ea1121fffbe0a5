//! `strata build` as a non-root user with subordinate ids: the rootless
//! path, where the setuid helpers `newuidmap`/`newgidmap` write the
//! sandbox's id maps (`builder/sandbox/src/idmap.rs`, the "subordinate"
//! mapping). The rest of the suite runs as root, where the builder writes
//! the maps itself, so only this file runs that path.
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

/// A Dockerfile that needs more than one id: after busybox, one RUN
/// records the step's id maps and user, the next gives a file to uid 1000,
/// which the single-id fallback has no host id for.
///
/// The chown is the last step on purpose: a non-root builder applies a
/// layer to its working rootfs on the host, outside the user namespace, and
/// cannot chown there to a subordinate id, so a step after one that leaves
/// a file of another id fails today ("cannot make host START+999 the owner
/// of /owned: Operation not permitted").
const NEEDS_MANY_IDS: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN cat /proc/self/uid_map | tee /uid_map && cat /proc/self/gid_map | tee /gid_map && id -u | tee /id_u
RUN touch /owned && chown 1000:1000 /owned
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

#[test]
fn a_non_root_builder_maps_its_subordinate_ids_through_newuidmap() {
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test switches to {ROOTLESS_USER} and so must run as root, as scripts/test does"
    );
    need("setpriv", "util-linux");
    need("newuidmap", "uidmap");
    need("newgidmap", "uidmap");
    let user = RootlessUser::find();
    let workspace = RootlessWorkspace::new(&user);
    let ctx = context(NEEDS_MANY_IDS);
    user.give(ctx.path());

    let out = workspace.build(&user, ctx.path());
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

    let rootfs = umoci_unpack(
        &workspace.path("out/image"),
        "v1",
        &workspace.path("bundle"),
    );
    let read = |name: &str| std::fs::read_to_string(rootfs.join(name)).unwrap();

    // Container root is the user itself, and container ids from 1 are the
    // subordinate range. Only newuidmap/newgidmap can have written that: the
    // kernel lets an unprivileged process map nothing but its own ids, which
    // is the single-id fallback's one line.
    assert_eq!(read("id_u").trim(), "0");
    let (sub_uid, sub_uid_count) = user.sub_uids;
    let (sub_gid, sub_gid_count) = user.sub_gids;
    assert_eq!(
        map_lines(&read("uid_map")),
        [(0, user.uid, 1), (1, sub_uid, sub_uid_count)],
        "the step's uid_map is not the user's id plus its /etc/subuid range"
    );
    assert_eq!(
        map_lines(&read("gid_map")),
        [(0, user.gid, 1), (1, sub_gid, sub_gid_count)],
        "the step's gid_map is not the user's group plus its /etc/subgid range"
    );

    // The layer records the container's ids, not the host's (sub_uid + 999).
    let owned = std::fs::symlink_metadata(rootfs.join("owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
    let bin = std::fs::symlink_metadata(rootfs.join("bin/busybox")).unwrap();
    assert_eq!((bin.uid(), bin.gid()), (0, 0));

    // The builder, not root, cleaned its scratch up, files of subordinate
    // ids included.
    let left: Vec<_> = std::fs::read_dir(workspace.path("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the build's TMPDIR: {left:?}");
}
