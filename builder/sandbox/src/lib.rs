//! Runs one Dockerfile `RUN` step in a rootless sandbox: new user, mount,
//! pid, ipc, uts and (unless the step asks for the host's) network
//! namespaces; a root filesystem assembled from the parent layers (overlayfs,
//! or a plain copy where the kernel refuses overlayfs in a user namespace);
//! `pivot_root` into it; a fresh `/proc`, a minimal `/dev`, only `lo`; the
//! step's environment, working directory and user; its output streamed back
//! live; a time limit; and no process of the step left alive afterwards.
//!
//! This module must never leave a mount, a namespace or a process of a step
//! behind on the host, and never lets a step see a host path.
//!
//! # Processes
//!
//! Creating a user namespace requires a single-threaded process and the
//! builder runs tokio, so [`run`] re-executes the builder's own binary (or the
//! `helper` path it is given) with the hidden first argument [`REEXEC_ARG`]:
//!
//! ```text
//! host builder (any threads)
//!  └─ stage 1: `<exe> __strata-sandbox`          host pid ns, fresh process
//!       [as root, if allowed: a first mount ns to bind the rootfs dirs under /tmp]
//!       unshare(user), unshare(mnt|pid|ipc|uts[|net]); [else: open the rootfs
//!       dirs, still with the caller's ids]; id maps, become root in it;
//!       make mounts private; [bind the opened dirs;] mount the rootfs at /tmp/strata-root
//!      └─ stage 2: `/proc/self/exe __strata-sandbox stage2`   PID 1 of the new pid ns
//!           setsid, /proc, /dev, hostname, lo up, pivot_root, cwd,
//!           capabilities, user, env, new keyring, [rlimits,] no_new_privs,
//!           seccomp, then exec of the step's argv (which stays PID 1)
//! ```
//!
//! `main()` must call [`reexec_main`] when `argv[1] == REEXEC_ARG`, before it
//! starts any thread (in particular before a tokio runtime).
//!
//! A non-root builder with subordinate ids first makes itself root of a
//! user namespace with those maps ([`enter_build_namespace`], also from
//! `main()` before any thread; `userns.rs` says why and how), so that its
//! own work on the files — extracting layers, snapshotting, deleting its
//! scratch — may use every id its steps may. From then on it is the root
//! builder of the diagram above, one namespace down: [`IdMapping::detect`]
//! gives its steps namespaces nested in its own, which it maps itself.
//!
//! Because the command is PID 1 of its own pid namespace, the kernel kills
//! every other process of the step when it exits, and completes its exit only
//! once they are gone; stage 1 reaps it only then, and reports after that.
//! So when [`run`] returns, no process of the step is left — after a time
//! limit too: the host asks stage 1 to SIGKILL stage 2 and still waits for
//! its report. If the host builder dies, stage 1 sees its socket close and
//! does the same; stage 1 also has SIGKILL as parent-death signal, and stage
//! 2 too (as long as the command does not change its own credentials; with
//! `no_new_privs`, executing a setuid program no longer does).
//!
//! # Re-exec protocol
//!
//! Stage 1's stdin is a Unix socket to the host; stage 2's stdin a socket to
//! stage 1. Both carry framed messages, the variants of one enum
//! (`wire::Message`), encoded and decoded only in `wire.rs`: a tag and
//! byte-string fields, netstring-encoded, the `Job` tagged with a protocol
//! version so a stale helper is refused by name.
//!
//! ```text
//! host → stage 1   Job(version, host pid, spec, id maps, rlimits?)
//!                  (the host has put stage 1 in the step's cgroup first)
//! stage 1 → host   WriteMapping               only if the host writes the maps
//! host → stage 1   MappingWritten             after writing /proc/PID/{uid,gid}_map
//! stage 1 → 2      Job                        (the same job)
//! stage 2 → 1 → host  MountPointCreated(path)…  created mount points
//! stage 2 → 1      Ready          1 → 2  Go   stage 1 is alive: exec
//! stage 1 → host   Exited(Code|Signal)        after stage 2 and all its processes are gone
//! stage 1 → host   ProbeSucceeded             instead of the above, for the overlay probe
//! host → stage 1   Kill                       time limit reached (any time)
//! any stage → host SetupFailed(SetupError)    instead of the above
//! ```
//!
//! The map writer of [`enter_build_namespace`] speaks the same protocol:
//!
//! ```text
//! builder → writer MapParent(version, id maps) the builder has unshared
//! writer → builder MappingWritten | SetupFailed(SetupError)
//! ```
//!
//! Stdout and stderr of both stages are the command's; the stages never write
//! to them. Every descriptor beyond those three is close-on-exec.
//!
//! # The root filesystem and ownership
//!
//! The directories of a [`RootfsSpec`] are reached the way the builder
//! reaches them (as root, before the user namespace exists), then
//! bind-mounted where container root can reach them, so their parents need
//! not be searchable from inside. What container root must be able to use
//! itself: with a range mapping (container uid `u` ↔ host uid `base + u`) the
//! lower trees must be owned by the mapped host ids — a tree extracted as
//! root is shifted with [`shift_ownership`] — and upper, work and their
//! common parent must belong to container root, which [`prepare_overlay`]
//! arranges. Files the step creates show up on the host with shifted ids
//! ([`IdMapping::container_uid`] turns them back). overlayfs runs with
//! `userxattr`: deletions are whiteouts (0/0 character devices) and opaque
//! directories carry the `user.overlay.opaque` xattr.
//!
//! Mount points the sandbox needs (`/proc`, `/dev`, and with
//! [`Network::Host`] `/etc/resolv.conf` and `/etc/hosts`) are created in the
//! writable root (the overlay's upper directory or the copy) when the image
//! lacks them; they are listed in [`RunOutcome::created_mountpoints`] so the
//! layer snapshot can leave them out. Directories the step's `cwd` needs are
//! created too, and are part of the step's result, as with Docker's WORKDIR.
//!
//! # Confinement
//!
//! Beyond its namespaces, a step gets (in stage 2, just before the exec):
//! a session of its own (`setsid`: no controlling terminal, so no TIOCSTI
//! into the builder's terminal, and no `/dev/tty` in its `/dev`); a fresh
//! anonymous session keyring instead of the builder's; `no_new_privs`, so a
//! setuid or file-capability program gains nothing (`su` and `sudo` under a
//! non-root `USER` do not elevate); and the seccomp filter of `seccomp.rs`,
//! a deny list modelled on Docker's default profile. Its memory, process
//! count and CPU share are bounded by [`Limits`]: through a cgroup made for
//! the step (v2, or v1 where the host has that) when the builder may create
//! one, else through rlimits. [`RunOutcome::confinement`] says what applied,
//! for the build's provenance, and [`RunOutcome::limit_exceeded`] names a
//! limit the step ran into.
//!
//! # Limits
//!
//! Capabilities are Docker's default set; no init process: the command is
//! PID 1, ignores signals it has no handler for, and reaps (or not) its
//! orphans itself; `/sys` is not mounted; extended attributes are not copied
//! by [`copy_tree`]; a non-root builder without `/etc/subuid` gets a single
//! id and can run only root steps. The seccomp filter exists for x86_64
//! only: elsewhere the sandbox refuses to run a step. Disk use is not
//! bounded.

mod host;
mod idmap;
mod limits;
mod mounts;
mod refusal;
mod seccomp;
mod stage1;
mod stage2;
mod sys;
mod tree;
mod user;
mod userns;
mod wire;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use host::{overlay_supported, probe_overlay, run};
pub use idmap::{IdMapError, IdMapping, IdRange, MapWriter};
pub use limits::{AppliedLimits, LimitExceeded, LimitMechanism, Limits};
pub use seccomp::SECCOMP_PROFILE;
pub use tree::{TreeError, copy_tree, prepare_overlay, shift_ownership};
pub use userns::{BuildNamespace, enter_build_namespace};

/// The container uid and gid of `spec` (`user[:group]`, names or numbers)
/// per an image's `/etc/passwd` and `/etc/group` text — what `COPY --chown`
/// needs, resolved the same way as `USER`.
pub fn resolve_owner(spec: &str, passwd: &str, group: &str) -> Result<(u32, u32), String> {
    user::resolve(Some(spec), passwd, group)
        .map(|id| (id.uid, id.gid))
        .map_err(|e| e.to_string())
}

/// The hidden `argv[1]` that turns the builder's binary into a sandbox stage.
pub const REEXEC_ARG: &str = "__strata-sandbox";

/// Exit code of a stage that failed before the command ran (as Docker's 125).
pub const SETUP_FAILED_EXIT: i32 = 125;

/// PATH given to the command when the step's environment has none (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entry point of the sandbox stages. Call it from `main()` when
/// `std::env::args_os().nth(1) == Some(REEXEC_ARG)`, before anything else.
/// Never returns: the process becomes the step's command or exits.
pub fn reexec_main() -> ! {
    match std::env::args_os().nth(2) {
        Some(a) if a == "stage2" => stage2::main(),
        Some(a) if a == userns::MAP_WRITER_ARG => userns::writer_main(),
        _ => stage1::main(),
    }
}

/// One `RUN` step, already resolved by the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// Where the step's root filesystem comes from.
    pub rootfs: RootfsSpec,
    /// The command; shell form is already `["/bin/sh", "-c", cmd]`. An
    /// `argv[0]` without a slash is looked up in the step's `PATH`.
    pub argv: Vec<String>,
    /// The step's environment, in order; later entries win. `PATH`,
    /// `HOSTNAME` and `HOME` are added when missing.
    pub env: Vec<(String, String)>,
    /// Absolute working directory inside the image, created if missing.
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; names are looked up in the
    /// image's `/etc/passwd` and `/etc/group`. `None` is root.
    pub user: Option<String>,
    /// Which network the step sees.
    pub network: Network,
    /// Time limit; the step is killed when it passes.
    pub timeout: Option<Duration>,
    /// The step's host name (its own UTS namespace).
    pub hostname: String,
    /// Memory, process and CPU bounds.
    pub limits: Limits,
}

impl RunSpec {
    /// A spec with Docker's defaults: root user, `/` as cwd, no network, no
    /// time limit, host name `strata`; and [`Limits::default`].
    pub fn new(rootfs: RootfsSpec, argv: Vec<String>) -> Self {
        RunSpec {
            rootfs,
            argv,
            env: Vec::new(),
            cwd: "/".to_owned(),
            user: None,
            network: Network::None,
            timeout: None,
            hostname: "strata".to_owned(),
            limits: Limits::default(),
        }
    }
}

/// The directories the step's root filesystem is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSpec {
    /// An overlay mount: read-only `lower` directories, topmost first (as in
    /// overlayfs' `lowerdir`), the writable `upper` that collects the step's
    /// changes (with overlayfs whiteouts for deletions), and an empty `work`
    /// directory on the same filesystem as `upper`.
    Overlay {
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A directory the step may change in place, typically made with
    /// [`copy_tree`] when [`overlay_supported`] is false.
    Copy { root: PathBuf },
}

/// The network a step sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A new network namespace with only `lo`, brought up.
    #[default]
    None,
    /// The host's network namespace (`RUN --network=host`); whether that is
    /// allowed is the caller's decision. The host's `/etc/resolv.conf` and
    /// `/etc/hosts` are bind-mounted read-only into the image.
    Host,
}

/// Which of the command's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How the step's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It ran past the time limit and was killed, with every process of the
    /// step.
    TimedOut(Duration),
}

impl ExitKind {
    /// True when the command exited with code 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitKind::Code(0))
    }
}

/// What a finished step reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub exit: ExitKind,
    /// True for [`RootfsSpec::Overlay`].
    pub used_overlay: bool,
    /// Wall time from spawning stage 1 to its exit.
    pub duration: Duration,
    /// Paths inside the image (absolute, like `/proc`) that the sandbox
    /// created as mount points because the image lacked them; the layer
    /// snapshot should not record them.
    pub created_mountpoints: Vec<String>,
    /// What confined the step, for the build's provenance.
    pub confinement: Confinement,
    /// The limit the step ran into, when one can tell (with a cgroup only):
    /// its memory limit when the kernel killed a process of it for memory,
    /// its process limit when a fork was refused. A failed step with this set
    /// failed because of the limit, e.g. "RUN exceeded its memory limit
    /// (512 MiB)"; a step that succeeded anyway has it set too.
    pub limit_exceeded: Option<LimitExceeded>,
}

/// What confined a step that ran, as the builder records it in provenance.
/// The sandbox refuses to run a step when any of the booleans would be
/// false, so today they are always true; they are spelled out so that a
/// record says so rather than implying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// The step ran in a session of its own, without a controlling terminal
    /// and without `/dev/tty`.
    pub no_terminal: bool,
    /// How the step was kept from the builder's session keyring.
    pub keyring: KeyringConfinement,
    /// `PR_SET_NO_NEW_PRIVS` was set.
    pub no_new_privs: bool,
    /// Name and version of the seccomp filter ([`SECCOMP_PROFILE`]).
    pub seccomp: &'static str,
    /// The limits in force and how they were enforced.
    pub limits: AppliedLimits,
}

/// How a step was kept from the builder's session keyring (its tokens and
/// credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyringConfinement {
    /// It got a fresh anonymous session keyring of its own.
    Fresh,
    /// A seccomp filter above the builder (a container runtime's default
    /// profile) refuses `keyctl`: the step inherits that filter, which
    /// nothing can lift, and reaches no keyring at all.
    Unreachable,
}

impl KeyringConfinement {
    /// As provenance records it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyringConfinement::Fresh => "fresh-keyring",
            KeyringConfinement::Unreachable => "keyring-unreachable",
        }
    }
}

/// Why a step could not be run (as opposed to: it ran and failed, which is an
/// [`ExitKind`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the sandbox helper {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the builder's own executable to start the sandbox: {0}")]
    CurrentExe(std::io::Error),
    #[error("sandbox helper i/o ({what}): {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot prepare the overlay probe in {dir}: {source}")]
    Probe {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    IdMap(#[from] IdMapError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(
        "sandbox helper ended ({status}) without reporting the step's exit; \
         is `main` calling sandbox::reexec_main() for {REEXEC_ARG}?"
    )]
    NoReport { status: std::process::ExitStatus },
}

/// A failure inside the sandbox before the step's command ran, sent from the
/// stage that met it back to the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A kernel call or file operation of the setup failed; `step` says which
    /// (e.g. "cannot create user namespace"), `detail` the errno and a hint.
    #[error("{step}: {detail}")]
    Step { step: String, detail: String },
    #[error("command not found in image: {command}")]
    CommandNotFound { command: String },
    #[error("cannot execute {command} in image: {detail}")]
    CommandNotExecutable { command: String, detail: String },
    #[error("unknown user {user:?} in image: {reason}")]
    UnknownUser { user: String, reason: String },
    #[error("step needs {kind} {id} but {mapping}")]
    NotMapped {
        kind: String,
        id: u32,
        mapping: String,
    },
    #[error("sandbox protocol error: {detail}")]
    Protocol { detail: String },
}

impl SetupError {
    fn step(step: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        SetupError::Step {
            step: step.into(),
            detail: detail.to_string(),
        }
    }

    fn protocol(detail: impl std::fmt::Display) -> Self {
        SetupError::Protocol {
            detail: detail.to_string(),
        }
    }
}

/// Everything a stage needs to know, sent by the host as `wire::Message::Job`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    spec: RunSpec,
    ids: IdMapping,
    /// The host builder's pid: stage 1 checks it is still its parent.
    host_pid: u32,
    /// Only check that the rootfs can be mounted, then exit.
    probe: bool,
    /// Stage 2 sets rlimits from `spec.limits` (the host found no cgroup
    /// to put the step in).
    rlimits: bool,
}

/// An absolute in-image path for messages: `/` joined with `rel`.
fn image_path(rel: &Path) -> String {
    format!("/{}", rel.display())
}
