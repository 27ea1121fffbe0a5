//! Which host user and group ids the sandbox's ids stand for, and who writes
//! `/proc/PID/uid_map` and `gid_map` for stage 1.
//!
//! Four shapes, chosen by [`IdMapping::detect`]:
//! - **range, written by the host** (the builder runs as root): container ids
//!   `0..count` ↔ host ids `base..base+count`, from root's line in
//!   `/etc/subuid` and `/etc/subgid`, else [`DEFAULT_BASE`] and
//!   [`DEFAULT_COUNT`]: 1879048192 (0x70000000) and 65536. Container root is
//!   then an unprivileged host id: files it creates belong to `base`, files
//!   of host root are "nobody" to it. Whoever holds the host id `base`
//!   holds container root's files, so no one may: the default lies outside
//!   every range `useradd` hands out with its defaults (system users below
//!   1000, users 1000–60000, subordinate ids 100000–600165535 in steps of
//!   65536: `SUB_UID_MIN`, `SUB_UID_MAX` plus `SUB_UID_COUNT`), above
//!   systemd's (dynamic users 61184–65519, containers 524288–1879048191),
//!   and below 2^31, which some tools read as negative. systemd documents
//!   0x70000000–0x7FFDFFFF as unused. An administrator who gives root a
//!   line in `/etc/subuid` decides instead.
//! - **subordinate, written by `newuidmap`/`newgidmap`** (non-root with
//!   `/etc/subuid` and `/etc/subgid` entries and both tools installed): as
//!   rootless podman, container 0 ↔ the user's own id and container
//!   `1..=count` ↔ the subordinate range. A builder with this mapping enters
//!   a user namespace of its own with it first (`userns.rs`), and its steps
//!   then get the next shape.
//! - **nested, written by the host** (a builder inside the user namespace
//!   it entered): each id of that namespace maps onto itself, so a step's
//!   container uid `u` is the builder's uid `u` too, which the subordinate
//!   maps put on the host. The builder is root there, so it writes the maps
//!   itself, as a root builder does.
//! - **single, written by stage 1 itself** (non-root otherwise): container 0
//!   ↔ the user's own id only, with `setgroups` denied. A step that needs
//!   another id fails with a message saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Root's range when `/etc/subuid` or `/etc/subgid` has none: no tool
/// hands out an id from here (see the module documentation).
const DEFAULT_BASE: u32 = 0x7000_0000;
/// Size of that default range: the ids a distribution image uses.
const DEFAULT_COUNT: u32 = 65_536;

/// A contiguous run of ids, one line of a `uid_map`: the layer crate's
/// [`IdRange`], the one id-map type the sandbox and the layers share.
pub use strata_layer::IdRange;

/// Who writes the id maps of stage 1's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapWriter {
    /// The host builder writes them (needs CAP_SETUID/CAP_SETGID: root).
    Host,
    /// The setuid helpers `newuidmap`/`newgidmap`, run by the host builder.
    Helpers,
    /// Stage 1 writes its own single-id maps after denying `setgroups`.
    Child,
}

/// The id maps of a sandbox's user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapping {
    uids: Vec<IdRange>,
    gids: Vec<IdRange>,
    writer: MapWriter,
}

/// Why the id maps could not be chosen or written.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path} ({map}): {source}")]
    Write {
        path: PathBuf,
        map: String,
        source: std::io::Error,
    },
    #[error("cannot run {tool} (install the `uidmap` package): {source}")]
    HelperSpawn {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} refused the map {map:?} ({status}): {stderr}")]
    HelperFailed {
        tool: &'static str,
        map: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

impl IdMapping {
    /// Chooses the mapping for the current user, as described in the module
    /// documentation.
    pub fn detect() -> Result<Self, IdMapError> {
        if let Some(entered) = super::userns::entered() {
            return Ok(entered.nested());
        }
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let subuid = read_optional(Path::new("/etc/subuid"))?;
        let subgid = read_optional(Path::new("/etc/subgid"))?;
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        let helpers = find_in_path("newuidmap").is_some() && find_in_path("newgidmap").is_some();
        Ok(Self::detect_from(
            uid,
            gid,
            name.as_deref(),
            &subuid,
            &subgid,
            helpers,
        ))
    }

    /// [`IdMapping::detect`] over given facts, so the choice can be tested.
    pub fn detect_from(
        uid: u32,
        gid: u32,
        name: Option<&str>,
        subuid: &str,
        subgid: &str,
        helpers: bool,
    ) -> Self {
        let sub_uid = parse_subid(subuid, name, uid);
        let sub_gid = parse_subid(subgid, name, uid);
        if uid == 0 {
            let (ubase, ucount) = sub_uid.unwrap_or((DEFAULT_BASE, DEFAULT_COUNT));
            let (gbase, gcount) = sub_gid.unwrap_or((DEFAULT_BASE, DEFAULT_COUNT));
            let count = ucount.min(gcount);
            return Self::range(ubase, gbase, count);
        }
        match (sub_uid, sub_gid, helpers) {
            (Some(su), Some(sg), true) => Self::subordinate(uid, gid, su, sg),
            _ => Self::single_for(uid, gid),
        }
    }

    /// Container `0..count` ↔ host `uid_base..` and `gid_base..`, written by
    /// the host (which must be root).
    pub fn range(uid_base: u32, gid_base: u32, count: u32) -> Self {
        IdMapping {
            uids: vec![IdRange {
                container: 0,
                host: uid_base,
                len: count,
            }],
            gids: vec![IdRange {
                container: 0,
                host: gid_base,
                len: count,
            }],
            writer: MapWriter::Host,
        }
    }

    /// Container 0 ↔ `uid`/`gid`, container `1..` ↔ the subordinate ranges
    /// `(start, count)`, written by `newuidmap`/`newgidmap`.
    pub fn subordinate(uid: u32, gid: u32, sub_uid: (u32, u32), sub_gid: (u32, u32)) -> Self {
        let one = |id| IdRange {
            container: 0,
            host: id,
            len: 1,
        };
        let rest = |(start, count)| IdRange {
            container: 1,
            host: start,
            len: count,
        };
        IdMapping {
            uids: vec![one(uid), rest(sub_uid)],
            gids: vec![one(gid), rest(sub_gid)],
            writer: MapWriter::Helpers,
        }
    }

    /// Container 0 ↔ the current user's uid and gid, nothing else.
    pub fn single() -> Self {
        Self::single_for(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    /// Container 0 ↔ `uid`/`gid` only; stage 1 writes it itself, which the
    /// kernel allows only for the process's own ids.
    pub fn single_for(uid: u32, gid: u32) -> Self {
        let one = |id| IdRange {
            container: 0,
            host: id,
            len: 1,
        };
        IdMapping {
            uids: vec![one(uid)],
            gids: vec![one(gid)],
            writer: MapWriter::Child,
        }
    }

    /// The mapping of a user namespace made inside one that this mapping
    /// made: every container id of this one maps onto itself, line for
    /// line, written by the host, which is root of the outer namespace and
    /// so holds `CAP_SETUID` over those ids. Line for line because the
    /// kernel refuses a line whose ids span two lines of the parent's map
    /// (EPERM), even where those lines touch.
    pub fn nested(&self) -> Self {
        IdMapping {
            uids: identity(&self.uids),
            gids: identity(&self.gids),
            writer: MapWriter::Host,
        }
    }

    pub(super) fn from_parts(uids: Vec<IdRange>, gids: Vec<IdRange>, writer: MapWriter) -> Self {
        IdMapping { uids, gids, writer }
    }

    pub fn uids(&self) -> &[IdRange] {
        &self.uids
    }

    pub fn gids(&self) -> &[IdRange] {
        &self.gids
    }

    pub fn writer(&self) -> MapWriter {
        self.writer
    }

    /// True when only container id 0 exists.
    pub fn is_single(&self) -> bool {
        total(&self.uids) <= 1
    }

    /// Host uid of a container uid, if mapped.
    pub fn host_uid(&self, container: u32) -> Option<u32> {
        to_host(&self.uids, container)
    }

    /// Host gid of a container gid, if mapped.
    pub fn host_gid(&self, container: u32) -> Option<u32> {
        to_host(&self.gids, container)
    }

    /// Container uid of a host uid (e.g. an upper-dir file's owner), if mapped.
    pub fn container_uid(&self, host: u32) -> Option<u32> {
        to_container(&self.uids, host)
    }

    /// Container gid of a host gid, if mapped.
    pub fn container_gid(&self, host: u32) -> Option<u32> {
        to_container(&self.gids, host)
    }

    /// Words for an error about an id outside the mapping.
    pub(super) fn describe_for_error(&self) -> String {
        if self.is_single() {
            "this build maps a single id (container root only); configure /etc/subuid and \
             /etc/subgid for the building user and install newuidmap/newgidmap (package \
             `uidmap`), or build as root"
                .to_owned()
        } else {
            let ranges: Vec<String> = self
                .uids
                .iter()
                .map(|e| {
                    format!(
                        "{}..{}",
                        e.container,
                        u64::from(e.container) + u64::from(e.len)
                    )
                })
                .collect();
            format!(
                "it is outside the ids this build maps (container {})",
                ranges.join(", ")
            )
        }
    }

    /// Writes the maps of process `pid` from the host side ([`MapWriter::Host`]
    /// or [`MapWriter::Helpers`]); nothing to do for [`MapWriter::Child`].
    pub(super) fn write_for(&self, pid: u32) -> Result<(), IdMapError> {
        match self.writer {
            MapWriter::Child => Ok(()),
            MapWriter::Host => {
                write_map_file(&proc_file(pid, "uid_map"), &self.uids)?;
                write_map_file(&proc_file(pid, "gid_map"), &self.gids)
            }
            MapWriter::Helpers => {
                run_map_helper("newuidmap", pid, &self.uids)?;
                run_map_helper("newgidmap", pid, &self.gids)
            }
        }
    }

    /// Stage 1's side of [`MapWriter::Child`]: deny `setgroups` (the kernel
    /// requires it before an unprivileged gid map) and map its own ids.
    pub(super) fn write_own(&self) -> Result<(), IdMapError> {
        let setgroups = Path::new("/proc/self/setgroups");
        std::fs::write(setgroups, "deny").map_err(|source| IdMapError::Write {
            path: setgroups.to_owned(),
            map: "deny".to_owned(),
            source,
        })?;
        write_map_file(Path::new("/proc/self/uid_map"), &self.uids)?;
        write_map_file(Path::new("/proc/self/gid_map"), &self.gids)
    }
}

/// The container side of `extents`, each id mapped onto itself, one line
/// per line.
fn identity(extents: &[IdRange]) -> Vec<IdRange> {
    extents
        .iter()
        .map(|e| IdRange {
            container: e.container,
            host: e.container,
            len: e.len,
        })
        .collect()
}

fn total(extents: &[IdRange]) -> u64 {
    extents.iter().map(|e| u64::from(e.len)).sum()
}

fn to_host(extents: &[IdRange], id: u32) -> Option<u32> {
    extents
        .iter()
        .find(|e| id >= e.container && u64::from(id) < u64::from(e.container) + u64::from(e.len))
        .map(|e| e.host + (id - e.container))
}

fn to_container(extents: &[IdRange], id: u32) -> Option<u32> {
    extents
        .iter()
        .find(|e| id >= e.host && u64::from(id) < u64::from(e.host) + u64::from(e.len))
        .map(|e| e.container + (id - e.host))
}

/// The text of a `uid_map`: one `container host count` line per extent.
fn map_text(extents: &[IdRange]) -> String {
    extents
        .iter()
        .map(|e| format!("{} {} {}\n", e.container, e.host, e.len))
        .collect()
}

fn proc_file(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// The kernel takes a map in one write only, hence one `write` of the whole
/// text (`fs::write` issues a single call for a buffer this small).
fn write_map_file(path: &Path, extents: &[IdRange]) -> Result<(), IdMapError> {
    let text = map_text(extents);
    std::fs::write(path, &text).map_err(|source| IdMapError::Write {
        path: path.to_owned(),
        map: text.trim_end().replace('\n', "; "),
        source,
    })
}

fn run_map_helper(tool: &'static str, pid: u32, extents: &[IdRange]) -> Result<(), IdMapError> {
    let mut cmd = Command::new(tool);
    cmd.arg(pid.to_string());
    for e in extents {
        cmd.args([e.container, e.host, e.len].map(|n| n.to_string()));
    }
    let out = cmd
        .output()
        .map_err(|source| IdMapError::HelperSpawn { tool, source })?;
    if out.status.success() {
        return Ok(());
    }
    Err(IdMapError::HelperFailed {
        tool,
        map: map_text(extents).trim_end().replace('\n', "; "),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

fn read_optional(path: &Path) -> Result<String, IdMapError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(IdMapError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The first `name:start:count` (or `uid:start:count`) line for the user in
/// an `/etc/subuid`-format text.
fn parse_subid(text: &str, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    let uid = uid.to_string();
    text.lines().find_map(|line| {
        let mut parts = line.trim().split(':');
        let who = parts.next()?;
        if who != uid && Some(who) != name {
            return None;
        }
        let start = parts.next()?.parse().ok()?;
        let count: u32 = parts.next()?.parse().ok()?;
        (count > 0).then_some((start, count))
    })
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_without_subuid_gets_the_documented_default_range() {
        let m = IdMapping::detect_from(0, 0, Some("root"), "", "", false);
        assert_eq!(m, IdMapping::range(1_879_048_192, 1_879_048_192, 65_536));
        assert_eq!(m.writer(), MapWriter::Host);
        assert_eq!(m.host_uid(1000), Some(1_879_049_192));
        assert_eq!(m.container_uid(1_879_049_192), Some(1000));
        assert_eq!(m.host_uid(65_536), None);
        assert_eq!(m.container_gid(0), None);
        assert!(!m.is_single());
    }

    #[test]
    fn the_default_range_is_outside_what_useradd_and_systemd_hand_out() {
        let (first, last) = (DEFAULT_BASE, DEFAULT_BASE + (DEFAULT_COUNT - 1));
        let taken: [(&str, u32, u32); 5] = [
            ("useradd system and regular users", 0, 60_000),
            ("nobody", 65_534, 65_535),
            ("useradd subordinate ids", 100_000, 600_100_000 + 65_535),
            ("systemd dynamic users", 61_184, 65_519),
            ("systemd container ranges", 524_288, 1_879_048_191),
        ];
        for (what, lo, hi) in taken {
            assert!(last < lo || first > hi, "overlaps {what}");
        }
        assert!(last < 1 << 31, "ids at or above 2^31 read as negative");
    }

    #[test]
    fn root_with_subuid_lines_uses_them() {
        let m = IdMapping::detect_from(
            0,
            0,
            Some("root"),
            "alice:100000:65536\nroot:200000:70000\n",
            "0:300000:65536\n",
            false,
        );
        assert_eq!(m.uids()[0].host, 200_000);
        assert_eq!(m.gids()[0].host, 300_000);
        assert_eq!(m.uids()[0].len, 65_536);
    }

    #[test]
    fn non_root_uses_subordinate_ids_only_with_both_files_and_helpers() {
        let sub = "alice:100000:65536\n";
        let m = IdMapping::detect_from(1000, 1000, Some("alice"), sub, sub, true);
        assert_eq!(m.writer(), MapWriter::Helpers);
        assert_eq!(m.host_uid(0), Some(1000));
        assert_eq!(m.host_uid(1), Some(100_000));
        assert_eq!(m.host_uid(1000), Some(100_999));
        assert_eq!(map_text(m.uids()), "0 1000 1\n1 100000 65536\n");

        for (subgid, helpers) in [("", true), (sub, false)] {
            let m = IdMapping::detect_from(1000, 1000, Some("alice"), sub, subgid, helpers);
            assert_eq!(m, IdMapping::single_for(1000, 1000));
            assert!(m.is_single());
            assert_eq!(m.host_uid(1), None);
        }
    }

    #[test]
    fn a_nested_mapping_keeps_every_id_of_the_outer_one_line_for_line() {
        let outer = IdMapping::subordinate(1000, 1001, (100_000, 65_536), (200_000, 65_536));
        let nested = outer.nested();
        assert_eq!(nested.writer(), MapWriter::Host);
        // Two lines, never one "0 0 65537": that would span two lines of
        // the outer map, which the kernel refuses.
        assert_eq!(map_text(nested.uids()), "0 0 1\n1 1 65536\n");
        assert_eq!(map_text(nested.gids()), "0 0 1\n1 1 65536\n");
        assert_eq!(nested.host_uid(0), Some(0));
        assert_eq!(nested.host_uid(1000), Some(1000));
        assert_eq!(nested.container_gid(65_536), Some(65_536));
        assert_eq!(nested.host_uid(65_537), None);
        assert!(!nested.is_single());
    }

    #[test]
    fn subid_lines_match_by_name_or_uid_and_skip_garbage() {
        let text = "# comment\nbob:1:2\n1000:5000:0\n1000:6000:10\nalice:7000:10\n";
        assert_eq!(parse_subid(text, Some("alice"), 1000), Some((6000, 10)));
        assert_eq!(parse_subid(text, Some("alice"), 1001), Some((7000, 10)));
        assert_eq!(parse_subid(text, None, 1002), None);
    }
}
