//! Bounds on a step's memory, process count and CPU share ([`Limits`]), and
//! the two ways they are enforced.
//!
//! - **A cgroup per step**, made by the host before stage 1 reads its job:
//!   stage 1 is moved into it, so every process of the step starts there.
//!   cgroup v2 where this process's cgroup (or its parent, for a sibling of
//!   the builder's) enables the `memory` and `pids` controllers for its
//!   children and may be written — a delegated subtree, or root on a v2 host;
//!   else cgroup v1 where the `memory` and `pids` hierarchies are mounted and
//!   this process may create a child of its own cgroup in each (root on a v1
//!   or hybrid host). The limits cover the whole step (every process
//!   together, page cache and tmpfs included), swap is not allowed beyond
//!   the memory limit, the kernel OOM-kills inside the step when it passes
//!   its memory, and refuses forks past its process count; its counters say
//!   afterwards which limit was met ([`LimitExceeded`]). The cgroup is
//!   removed when the step is over.
//! - **rlimits**, set by stage 2 on the command, when no cgroup can be made:
//!   `RLIMIT_DATA` for memory (heap and private writable mappings, per
//!   process: N processes may use N times the limit; an allocation past it
//!   fails instead of the process being killed) and `RLIMIT_NPROC` for the
//!   process count (counted per uid of the step's own user namespace, so
//!   per step and per user of it). There is no rlimit for a CPU share
//!   (`RLIMIT_CPU` bounds CPU seconds, which would kill a long build), so
//!   `cpus` is not enforced then. Neither leaves a trace of being met.
//!
//! [`AppliedLimits`] says which applied and with which values. This module
//! never changes a cgroup it did not create, and never moves the builder
//! itself.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::process::{Resource, Rlimit, setrlimit};

const MIB: u64 = 1 << 20;
/// The default memory limit is half the host's memory, but at least this.
const MIN_DEFAULT_MEMORY: u64 = 256 * MIB;
/// Default process count of a step: far above what a build needs, far
/// below what exhausts a host's pid space (podman's default is 2048).
const DEFAULT_PIDS: u64 = 4096;
/// Period of the CFS bandwidth control a `cpus` limit is written as (the
/// kernel's default, as Docker uses).
const CPU_PERIOD_US: u64 = 100_000;
/// How often removing a step's cgroup is tried while the kernel still counts
/// its last exited process.
const REMOVE_TRIES: u32 = 100;

/// How much a step may use. `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory, for the whole step with a cgroup, per process with
    /// rlimits.
    pub memory: Option<u64>,
    /// Processes (and threads, with a cgroup) at once.
    pub pids: Option<u64>,
    /// CPU time per wall time in thousandths of a CPU (`--cpus 1.5` is
    /// 1500); enforced with a cgroup only.
    pub cpu_millis: Option<u32>,
}

impl Default for Limits {
    /// Half the host's memory (at least 256 MiB), 4096 processes, and
    /// every CPU: a step cannot set off the host's OOM killer
    /// or fork-bomb it, and a big build still fits.
    fn default() -> Self {
        let info = rustix::system::sysinfo();
        let total = u64::from(info.mem_unit).saturating_mul(info.totalram);
        Limits {
            memory: Some((total / 2 / MIB * MIB).max(MIN_DEFAULT_MEMORY)),
            pids: Some(DEFAULT_PIDS),
            cpu_millis: None,
        }
    }
}

/// How a step's limits were enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMechanism {
    /// A cgroup v2 made for the step.
    CgroupV2,
    /// cgroups v1 (one per hierarchy) made for the step.
    CgroupV1,
    /// rlimits on the step's processes.
    Rlimit,
}

impl LimitMechanism {
    /// The word provenance records: `cgroup2`, `cgroup1` or `rlimit`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LimitMechanism::CgroupV2 => "cgroup2",
            LimitMechanism::CgroupV1 => "cgroup1",
            LimitMechanism::Rlimit => "rlimit",
        }
    }
}

impl fmt::Display for LimitMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits in force for a step and how: a value is `None` when it was
/// not enforced (not asked for, or, for `cpu_millis`, not possible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedLimits {
    pub mechanism: LimitMechanism,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpu_millis: Option<u32>,
}

impl AppliedLimits {
    /// What stage 2's rlimits enforce of `limits`.
    pub(super) fn rlimits(limits: &Limits) -> Self {
        AppliedLimits {
            mechanism: LimitMechanism::Rlimit,
            memory: limits.memory,
            pids: limits.pids,
            cpu_millis: None,
        }
    }
}

/// A limit a step ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// The kernel killed a process of the step for passing this many bytes.
    Memory { limit: u64 },
    /// A fork of the step was refused at this many processes.
    Pids { limit: u64 },
}

impl fmt::Display for LimitExceeded {
    /// "its memory limit (512 MiB)", to follow "RUN exceeded".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitExceeded::Memory { limit } => write!(f, "its memory limit ({})", bytes(*limit)),
            LimitExceeded::Pids { limit } => write!(f, "its process limit ({limit})"),
        }
    }
}

/// A byte count in the largest binary unit that divides it.
fn bytes(n: u64) -> String {
    for (unit, size) in [("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} bytes")
}

/// Stage 2's side of [`LimitMechanism::Rlimit`]: soft and hard limits
/// alike, so the step cannot raise them (that needs CAP_SYS_RESOURCE on the
/// host). Called after the switch to the step's user: `RLIMIT_NPROC`
/// counts per user.
pub(super) fn apply_rlimits(limits: &Limits) -> io::Result<()> {
    let set = |resource, n: u64| {
        setrlimit(
            resource,
            Rlimit {
                current: Some(n),
                maximum: Some(n),
            },
        )
        .map_err(io::Error::from)
    };
    if let Some(n) = limits.memory {
        set(Resource::Data, n)?;
    }
    if let Some(n) = limits.pids {
        set(Resource::Nproc, n)?;
    }
    Ok(())
}

/// The cgroup (v2) or cgroups (v1, one per hierarchy) made for one step.
/// Dropping it removes them.
#[derive(Debug)]
pub(super) struct StepCgroup {
    applied: AppliedLimits,
    /// Every directory made, each to get the step's processes.
    dirs: Vec<PathBuf>,
    /// Where the memory and pids counters are.
    memory_dir: PathBuf,
    pids_dir: PathBuf,
}

impl StepCgroup {
    /// A cgroup for a step with `limits`, if this process may make one;
    /// `None` means rlimits.
    pub(super) fn create(limits: &Limits) -> Option<StepCgroup> {
        let cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let places = Places::find(&cgroup, &mountinfo);
        Self::create_in(&places, limits, &step_name())
    }

    /// [`StepCgroup::create`] over given places, so it can be tested on a
    /// directory tree that only looks like a cgroup file system.
    fn create_in(places: &Places, limits: &Limits, name: &str) -> Option<StepCgroup> {
        if let Some(own) = &places.v2 {
            for parent in v2_parents(own) {
                if let Some(cg) = create_v2(&parent.join(name), limits) {
                    return Some(cg);
                }
            }
        }
        if let (Some(memory), Some(pids)) = (&places.v1_memory, &places.v1_pids) {
            return create_v1(memory, pids, places.v1_cpu.as_deref(), name, limits);
        }
        None
    }

    pub(super) fn applied(&self) -> AppliedLimits {
        self.applied
    }

    /// Moves process `pid` (with its threads) into the step's cgroup(s).
    pub(super) fn add_process(&self, pid: u32) -> io::Result<()> {
        for dir in &self.dirs {
            fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// The limit the step ran into, per the cgroup's counters: an OOM kill
    /// first (it ends the step), then a refused fork.
    pub(super) fn exceeded(&self) -> Option<LimitExceeded> {
        let counter = |dir: &Path, file, key| {
            fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|text| keyed_value(&text, key))
                .unwrap_or(0)
        };
        let oom_file = match self.applied.mechanism {
            LimitMechanism::CgroupV1 => "memory.oom_control",
            _ => "memory.events",
        };
        if let Some(limit) = self.applied.memory
            && counter(&self.memory_dir, oom_file, "oom_kill") > 0
        {
            return Some(LimitExceeded::Memory { limit });
        }
        if let Some(limit) = self.applied.pids
            && counter(&self.pids_dir, "pids.events", "max") > 0
        {
            return Some(LimitExceeded::Pids { limit });
        }
        None
    }
}

impl Drop for StepCgroup {
    /// Removes the step's cgroup(s) once its last process has gone. Best
    /// effort: an empty cgroup left behind holds nothing.
    fn drop(&mut self) {
        for dir in &self.dirs {
            for _ in 0..REMOVE_TRIES {
                match fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        // The kernel unlinks an exited process from its
                        // cgroup a moment after its parent reaped it.
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    _ => break,
                }
            }
        }
    }
}

/// A name no other step of any builder on the host uses at the same time.
fn step_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "strata-step-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where this process's cgroups are on the file system.
#[derive(Debug, Default, PartialEq, Eq)]
struct Places {
    /// Its cgroup v2 directory, with the mount's root.
    v2: Option<V2Place>,
    /// Its cgroup directories in the v1 hierarchies.
    v1_memory: Option<PathBuf>,
    v1_pids: Option<PathBuf>,
    v1_cpu: Option<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
struct V2Place {
    dir: PathBuf,
    /// The mount point: no parent above it can be reached.
    mount: PathBuf,
}

impl Places {
    /// From the texts of `/proc/self/cgroup` and `/proc/self/mountinfo`.
    fn find(cgroup: &str, mountinfo: &str) -> Places {
        let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
        let mut places = Places::default();
        for line in cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                places.v2 = mounts
                    .iter()
                    .find(|m| m.fstype == "cgroup2")
                    .and_then(|m| Some((m.dir_of(path)?, m.point.clone())))
                    .map(|(dir, mount)| V2Place { dir, mount });
                continue;
            }
            let names: Vec<&str> = controllers.split(',').collect();
            let Some(mount) = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && names.iter().all(|n| m.has_option(n)))
            else {
                continue;
            };
            let dir = mount.dir_of(path);
            for (name, slot) in [
                ("memory", &mut places.v1_memory),
                ("pids", &mut places.v1_pids),
                ("cpu", &mut places.v1_cpu),
            ] {
                if names.contains(&name) {
                    slot.clone_from(&dir);
                }
            }
        }
        places
    }
}

/// One line of `/proc/self/mountinfo`, the fields this module reads.
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: String,
}

impl Mount {
    /// `id parent maj:min root point options [optional…] - fstype source super`.
    fn parse(line: &str) -> Option<Mount> {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        Some(Mount {
            root: unescape(fields.get(3)?),
            point: PathBuf::from(unescape(fields.get(4)?)),
            fstype: after.next()?.to_owned(),
            super_options: after.nth(1).unwrap_or("").to_owned(),
        })
    }

    fn has_option(&self, name: &str) -> bool {
        self.super_options.split(',').any(|o| o == name)
    }

    /// The directory of cgroup `path` under this mount, if the mount shows
    /// it.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = path.strip_prefix(self.root.trim_end_matches('/'))?;
        if !(rel.is_empty() || rel.starts_with('/')) {
            return None;
        }
        Some(self.point.join(rel.trim_start_matches('/')))
    }
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The value of the `key N` line of a cgroup counter file.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

fn lists(dir: &Path, file: &str, controller: &str) -> bool {
    fs::read_to_string(dir.join(file)).is_ok_and(|t| t.split_whitespace().any(|c| c == controller))
}

/// The v2 cgroups a step's cgroup may be made in, best first: this
/// process's own when it already passes the controllers on to children (it
/// cannot hold processes then, unless it is the root), else its parent, whose
/// passing them on is what puts them in our `cgroup.controllers`. A process
/// may never enable controllers in its own cgroup while it is in it.
fn v2_parents(own: &V2Place) -> Vec<PathBuf> {
    let needed = ["memory", "pids"];
    let mut out = Vec::new();
    if needed
        .iter()
        .all(|c| lists(&own.dir, "cgroup.subtree_control", c))
    {
        out.push(own.dir.clone());
    }
    if own.dir != own.mount
        && needed
            .iter()
            .all(|c| lists(&own.dir, "cgroup.controllers", c))
        && let Some(parent) = own.dir.parent()
    {
        out.push(parent.to_path_buf());
    }
    out
}

fn create_v2(dir: &Path, limits: &Limits) -> Option<StepCgroup> {
    fs::create_dir(dir).ok()?;
    let cg = StepCgroup {
        applied: AppliedLimits {
            mechanism: LimitMechanism::CgroupV2,
            memory: limits.memory,
            pids: limits.pids,
            cpu_millis: limits
                .cpu_millis
                .filter(|_| lists(dir, "cgroup.controllers", "cpu")),
        },
        dirs: vec![dir.to_path_buf()],
        memory_dir: dir.to_path_buf(),
        pids_dir: dir.to_path_buf(),
    };
    let a = cg.applied;
    let written = write_limit(dir, "memory.max", a.memory)
        // No swap beyond the limit: a step must not push the host into
        // swapping instead of being stopped. Absent without swap accounting.
        .and_then(|()| match a.memory {
            Some(_) => write_optional(dir, "memory.swap.max", "0"),
            None => Ok(()),
        })
        .and_then(|()| write_limit(dir, "pids.max", a.pids))
        .and_then(|()| match a.cpu_millis {
            Some(m) => fs::write(dir.join("cpu.max"), cpu_max(m)),
            None => Ok(()),
        });
    // On failure, dropping `cg` removes the directory.
    written.ok().map(|()| cg)
}

fn create_v1(
    memory: &Path,
    pids: &Path,
    cpu: Option<&Path>,
    name: &str,
    limits: &Limits,
) -> Option<StepCgroup> {
    let mut cg = StepCgroup {
        applied: AppliedLimits {
            mechanism: LimitMechanism::CgroupV1,
            memory: limits.memory,
            pids: limits.pids,
            cpu_millis: None,
        },
        dirs: Vec::new(),
        memory_dir: memory.join(name),
        pids_dir: pids.join(name),
    };
    let made = |cg: &mut StepCgroup, dir: PathBuf| {
        fs::create_dir(&dir)?;
        cg.dirs.push(dir);
        Ok::<(), io::Error>(())
    };
    let (m, p) = (cg.memory_dir.clone(), cg.pids_dir.clone());
    made(&mut cg, m.clone()).ok()?;
    if p != m {
        made(&mut cg, p.clone()).ok()?;
    }
    write_limit(&m, "memory.limit_in_bytes", limits.memory).ok()?;
    if let Some(n) = limits.memory {
        // memory + swap; after the memory limit, which it may not be below.
        write_optional(&m, "memory.memsw.limit_in_bytes", &n.to_string()).ok()?;
    }
    write_limit(&p, "pids.max", limits.pids).ok()?;
    if let (Some(cpu), Some(millis)) = (cpu, limits.cpu_millis) {
        let dir = cpu.join(name);
        let limited = if cg.dirs.contains(&dir) {
            Ok(())
        } else {
            made(&mut cg, dir.clone())
        }
        .and_then(|()| fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()))
        .and_then(|()| fs::write(dir.join("cpu.cfs_quota_us"), cpu_quota(millis).to_string()));
        if limited.is_ok() {
            cg.applied.cpu_millis = Some(millis);
        }
    }
    Some(cg)
}

/// A limit file's value: the number, or no write at all for `None` (a new
/// cgroup starts unlimited).
fn write_limit(dir: &Path, file: &str, value: Option<u64>) -> io::Result<()> {
    match value {
        Some(n) => fs::write(dir.join(file), n.to_string()),
        None => Ok(()),
    }
}

/// A write to a file the kernel may not offer (swap accounting off).
fn write_optional(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    if path.exists() {
        fs::write(path, value)
    } else {
        Ok(())
    }
}

/// Microseconds of CPU per [`CPU_PERIOD_US`] for `millis` thousandths of
/// a CPU; at least the kernel's minimum of 1 ms.
fn cpu_quota(millis: u32) -> u64 {
    (u64::from(millis) * CPU_PERIOD_US / 1000).max(1000)
}

/// cgroup v2's `cpu.max`: "quota period".
fn cpu_max(millis: u32) -> String {
    format!("{} {CPU_PERIOD_US}", cpu_quota(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/jobs/abc\n\
                                 1:cpu,cpuacct:/\n0::/\n";
    const HYBRID_MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755\n\
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids\n\
36 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n";

    #[test]
    fn places_are_found_in_a_hybrid_hierarchy() {
        let p = Places::find(HYBRID_CGROUP, HYBRID_MOUNTINFO);
        assert_eq!(
            p.v1_memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory/jobs/abc"))
        );
        assert_eq!(p.v1_pids.as_deref(), Some(Path::new("/sys/fs/cgroup/pids")));
        assert_eq!(
            p.v1_cpu.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            p.v2,
            Some(V2Place {
                dir: "/sys/fs/cgroup/unified".into(),
                mount: "/sys/fs/cgroup/unified".into()
            })
        );
    }

    #[test]
    fn places_follow_a_mount_root_and_refuse_paths_outside_it() {
        let mountinfo = "40 30 0:27 /ns /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n";
        let p = Places::find("0::/ns/user.slice/app\n", mountinfo);
        assert_eq!(
            p.v2.unwrap().dir,
            Path::new("/sys/fs/cgroup x/user.slice/app")
        );
        let p = Places::find("0::/nsx/app\n", mountinfo);
        assert_eq!(p.v2, None);
    }

    /// A directory tree standing for a cgroup v2 mount with the builder in
    /// `svc/builder`: `svc` passes memory, pids and cpu on.
    fn fake_v2(tmp: &Path) -> Places {
        let own = tmp.join("svc/builder");
        fs::create_dir_all(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(own.join("cgroup.subtree_control"), "\n").unwrap();
        Places {
            v2: Some(V2Place {
                dir: own,
                mount: tmp.to_path_buf(),
            }),
            ..Places::default()
        }
    }

    #[test]
    fn a_v2_step_cgroup_is_a_sibling_of_the_builders_with_every_limit_written() {
        let tmp = tempfile::tempdir().unwrap();
        let places = fake_v2(tmp.path());
        let limits = Limits {
            memory: Some(512 * MIB),
            pids: Some(64),
            cpu_millis: Some(1500),
        };
        let dir = tmp.path().join("svc/step");
        let cg = StepCgroup::create_in(&places, &limits, "step").unwrap();
        // A real cgroup lists its controllers in the new directory; the fake
        // does not, so cpu is left out rather than failing the step.
        assert_eq!(
            cg.applied(),
            AppliedLimits {
                mechanism: LimitMechanism::CgroupV2,
                memory: Some(512 * MIB),
                pids: Some(64),
                cpu_millis: None,
            }
        );
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "536870912"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "64");
        cg.add_process(4242).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "4242"
        );
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(
            cg.exceeded(),
            Some(LimitExceeded::Memory { limit: 512 * MIB })
        );
        fs::write(dir.join("memory.events"), "oom_kill 0\n").unwrap();
        fs::write(dir.join("pids.events"), "max 3\n").unwrap();
        assert_eq!(cg.exceeded(), Some(LimitExceeded::Pids { limit: 64 }));
    }

    #[test]
    fn no_v2_cgroup_is_made_where_the_controllers_are_not_passed_on() {
        let tmp = tempfile::tempdir().unwrap();
        let places = fake_v2(tmp.path());
        let own = &places.v2.as_ref().unwrap().dir;
        fs::write(own.join("cgroup.controllers"), "cpu\n").unwrap();
        assert!(StepCgroup::create_in(&places, &Limits::default(), "step").is_none());
        assert!(!tmp.path().join("svc/step").exists());
    }

    #[test]
    fn limits_read_as_the_builder_reports_them() {
        assert_eq!(
            LimitExceeded::Memory { limit: 512 * MIB }.to_string(),
            "its memory limit (512 MiB)"
        );
        assert_eq!(
            LimitExceeded::Memory { limit: 3 << 30 }.to_string(),
            "its memory limit (3 GiB)"
        );
        assert_eq!(
            LimitExceeded::Memory { limit: 1000 }.to_string(),
            "its memory limit (1000 bytes)"
        );
        assert_eq!(
            LimitExceeded::Pids { limit: 16 }.to_string(),
            "its process limit (16)"
        );
        assert_eq!(cpu_max(1500), "150000 100000");
        assert_eq!(cpu_max(1), "1000 100000");
    }

    #[test]
    fn the_default_bounds_memory_and_processes_but_not_cpus() {
        let d = Limits::default();
        assert!(d.memory.unwrap() >= MIN_DEFAULT_MEMORY);
        assert_eq!(d.memory.unwrap() % MIB, 0);
        assert_eq!(d.pids, Some(DEFAULT_PIDS));
        assert_eq!(d.cpu_millis, None);
    }
}
