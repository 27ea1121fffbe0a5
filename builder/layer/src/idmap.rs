//! `IdMap`: how the container's user and group ids relate to the host's.
//!
//! Files in the working rootfs belong to *host* ids; inside the sandbox's user
//! namespace they appear as *container* ids, and a layer records container
//! ids. The map has the shape of the kernel's `/proc/<pid>/uid_map`: a few
//! ranges, each mapping `container..container+len` onto `host..host+len`.
//! Two shapes are common: a range (root, or a user with `/etc/subuid`
//! entries) and a *single* mapping (an unprivileged user without subordinate
//! ids: container 0 is the user, nothing else is representable). "Host" is
//! the caller's view: a rootless builder works inside a user namespace of
//! its own, where its map is the identity over the ids that namespace has.

use std::fmt;

/// Which of the two id spaces of a file owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Uid,
    Gid,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Uid => "uid",
            IdKind::Gid => "gid",
        })
    }
}

/// One line of a uid_map or gid_map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub len: u32,
}

impl IdRange {
    fn container_end(&self) -> u64 {
        u64::from(self.container) + u64::from(self.len)
    }

    fn host_end(&self) -> u64 {
        u64::from(self.host) + u64::from(self.len)
    }
}

/// Why an id could not be translated, or a map is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    #[error(
        "container {kind} {id} is not mapped: this build runs with a single mapped id \
         (configure /etc/subuid for the user)"
    )]
    SingleMapping { kind: IdKind, id: u32 },
    #[error("container {kind} {id} is not mapped (mapped container {kind}s: {mapped})")]
    ContainerIdUnmapped {
        kind: IdKind,
        id: u32,
        mapped: String,
    },
    #[error("host {kind} {id} maps to no container {kind} (mapped host {kind}s: {mapped})")]
    HostIdUnmapped {
        kind: IdKind,
        id: u32,
        mapped: String,
    },
    #[error("invalid {kind} map: {problem}")]
    Invalid { kind: IdKind, problem: String },
}

/// Container ↔ host id translation for uids and gids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    uids: Vec<IdRange>,
    gids: Vec<IdRange>,
}

impl IdMap {
    /// A map from explicit ranges, as written to uid_map/gid_map. Ranges must
    /// be non-empty, not overflow, and overlap neither on the container nor
    /// on the host side.
    pub fn new(uids: Vec<IdRange>, gids: Vec<IdRange>) -> Result<Self, IdMapError> {
        check_ranges(IdKind::Uid, &uids)?;
        check_ranges(IdKind::Gid, &gids)?;
        Ok(Self { uids, gids })
    }

    /// Container 0 is the host user `uid`/`gid`; nothing else is mapped.
    pub fn single(host_uid: u32, host_gid: u32) -> Self {
        let one = |host| {
            vec![IdRange {
                container: 0,
                host,
                len: 1,
            }]
        };
        Self {
            uids: one(host_uid),
            gids: one(host_gid),
        }
    }

    /// Container id `c` is host id `base + c`, for `c < count`.
    pub fn range(host_uid_base: u32, host_gid_base: u32, count: u32) -> Result<Self, IdMapError> {
        let range = |host| {
            vec![IdRange {
                container: 0,
                host,
                len: count,
            }]
        };
        Self::new(range(host_uid_base), range(host_gid_base))
    }

    /// True when only container id 0 is mapped, for users and for groups.
    pub fn is_single(&self) -> bool {
        let only_zero = |ranges: &[IdRange]| {
            matches!(
                ranges,
                [IdRange {
                    container: 0,
                    len: 1,
                    ..
                }]
            )
        };
        only_zero(&self.uids) && only_zero(&self.gids)
    }

    /// The host id that container id `id` appears as.
    pub fn to_host(&self, kind: IdKind, id: u32) -> Result<u32, IdMapError> {
        let ranges = self.ranges(kind);
        ranges
            .iter()
            .find(|r| id >= r.container && u64::from(id) < r.container_end())
            .map(|r| r.host + (id - r.container))
            .ok_or_else(|| {
                if self.is_single() {
                    IdMapError::SingleMapping { kind, id }
                } else {
                    IdMapError::ContainerIdUnmapped {
                        kind,
                        id,
                        mapped: describe(ranges, |r| (r.container, r.container_end())),
                    }
                }
            })
    }

    /// The container id that host id `id` appears as.
    pub fn to_container(&self, kind: IdKind, id: u32) -> Result<u32, IdMapError> {
        let ranges = self.ranges(kind);
        ranges
            .iter()
            .find(|r| id >= r.host && u64::from(id) < r.host_end())
            .map(|r| r.container + (id - r.host))
            .ok_or_else(|| IdMapError::HostIdUnmapped {
                kind,
                id,
                mapped: describe(ranges, |r| (r.host, r.host_end())),
            })
    }

    /// Both halves of a container owner, translated to the host.
    pub fn owner_to_host(&self, uid: u32, gid: u32) -> Result<(u32, u32), IdMapError> {
        Ok((
            self.to_host(IdKind::Uid, uid)?,
            self.to_host(IdKind::Gid, gid)?,
        ))
    }

    /// Both halves of a host owner, translated to the container.
    pub fn owner_to_container(&self, uid: u32, gid: u32) -> Result<(u32, u32), IdMapError> {
        Ok((
            self.to_container(IdKind::Uid, uid)?,
            self.to_container(IdKind::Gid, gid)?,
        ))
    }

    fn ranges(&self, kind: IdKind) -> &[IdRange] {
        match kind {
            IdKind::Uid => &self.uids,
            IdKind::Gid => &self.gids,
        }
    }
}

fn check_ranges(kind: IdKind, ranges: &[IdRange]) -> Result<(), IdMapError> {
    let invalid = |problem: String| IdMapError::Invalid { kind, problem };
    if ranges.is_empty() {
        return Err(invalid("no ranges (expected at least one)".into()));
    }
    for r in ranges {
        if r.len == 0 {
            return Err(invalid(format!(
                "range at container id {} is empty",
                r.container
            )));
        }
        if r.container_end() > 1 << 32 || r.host_end() > 1 << 32 {
            return Err(invalid(format!(
                "range {}+{} (host {}) runs past the largest id",
                r.container, r.len, r.host
            )));
        }
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            let overlaps =
                |a0: u32, a1: u64, b0: u32, b1: u64| u64::from(a0) < b1 && u64::from(b0) < a1;
            if overlaps(
                a.container,
                a.container_end(),
                b.container,
                b.container_end(),
            ) || overlaps(a.host, a.host_end(), b.host, b.host_end())
            {
                return Err(invalid(format!(
                    "ranges {}+{} and {}+{} overlap",
                    a.container, a.len, b.container, b.len
                )));
            }
        }
    }
    Ok(())
}

/// "0..65536, 70000..70001" — half-open intervals, as the kernel counts.
fn describe(ranges: &[IdRange], bounds: impl Fn(&IdRange) -> (u32, u64)) -> String {
    ranges
        .iter()
        .map(|r| {
            let (start, end) = bounds(r);
            format!("{start}..{end}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn range_map_translates_both_ways_and_refuses_ids_outside_it() {
        let map = IdMap::range(100_000, 200_000, 65_536).unwrap();
        assert_eq!(map.to_host(IdKind::Uid, 0), Ok(100_000));
        assert_eq!(map.to_host(IdKind::Gid, 33), Ok(200_033));
        assert_eq!(map.to_container(IdKind::Uid, 165_535), Ok(65_535));
        let err = map.to_host(IdKind::Uid, 65_536).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container uid 65536 is not mapped (mapped container uids: 0..65536)"
        );
        let err = map.to_container(IdKind::Gid, 5).unwrap_err();
        assert!(
            err.to_string()
                .contains("host gid 5 maps to no container gid")
        );
    }

    #[test]
    fn single_map_names_the_fix_when_an_id_is_not_zero() {
        let map = IdMap::single(1000, 1000);
        assert!(map.is_single());
        assert_eq!(map.owner_to_host(0, 0), Ok((1000, 1000)));
        assert_eq!(map.owner_to_container(1000, 1000), Ok((0, 0)));
        let err = map.to_host(IdKind::Uid, 33).unwrap_err();
        assert!(err.to_string().contains("configure /etc/subuid"), "{err}");
    }

    #[test]
    fn subuid_style_map_with_two_ranges() {
        let ranges = vec![
            IdRange {
                container: 0,
                host: 1000,
                len: 1,
            },
            IdRange {
                container: 1,
                host: 100_000,
                len: 65_536,
            },
        ];
        let map = IdMap::new(ranges.clone(), ranges).unwrap();
        assert!(!map.is_single());
        assert_eq!(map.to_host(IdKind::Uid, 0), Ok(1000));
        assert_eq!(map.to_host(IdKind::Uid, 1), Ok(100_000));
        assert_eq!(map.to_container(IdKind::Uid, 100_001), Ok(2));
    }

    #[test]
    fn malformed_maps_are_refused() {
        let overlapping = vec![
            IdRange {
                container: 0,
                host: 0,
                len: 10,
            },
            IdRange {
                container: 5,
                host: 100,
                len: 10,
            },
        ];
        assert!(IdMap::new(overlapping.clone(), overlapping).is_err());
        assert!(IdMap::range(u32::MAX, 0, 2).is_err());
        assert!(IdMap::range(0, 0, 0).is_err());
    }
}
