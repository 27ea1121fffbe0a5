//! The host builder's side of a sandboxed step: make the step's cgroup,
//! start stage 1 in it, send it the job, write its id maps when asked,
//! stream the command's output to the caller as it comes, enforce the time
//! limit, and turn the stages' reports and the cgroup's counters into a
//! [`RunOutcome`] or a [`SandboxError`].
//!
//! This side may run on any thread of a multi-threaded (tokio) process: it
//! only spawns a process and talks to it over pipes and a socket. It blocks,
//! so async callers run it on `spawn_blocking`.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::idmap::IdMapping;
use super::limits::StepCgroup;
use super::refusal::{self, SetupCall};
use super::wire::{CommandExit, Message, WireError};
use super::{
    AppliedLimits, Confinement, ExitKind, Job, KeyringConfinement, LimitExceeded, REEXEC_ARG,
    RootfsSpec, RunOutcome, RunSpec, SECCOMP_PROFILE, SandboxError, SetupError, Stream,
};

/// Output chunks in flight between the pipe readers and the caller's
/// callback. Bounded so a slow consumer holds the command back through its
/// pipes instead of buffering without limit (at most 64 × 64 KiB).
const EVENT_QUEUE: usize = 64;
/// Largest chunk read from a pipe at once.
const CHUNK: usize = 64 * 1024;
/// Time limit of the overlay probe: namespace setup and one mount.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stage 1 gets to end the step after `kill` before it is killed
/// itself (its stage 2 then dies of its parent-death signal).
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Runs one step in a sandbox and waits for it, calling `out` with every
/// chunk of its stdout and stderr as it arrives (on the calling thread).
///
/// `helper` is the executable to start as stage 1: a binary whose `main`
/// dispatches [`REEXEC_ARG`] to [`super::reexec_main`]; `None` means the
/// current executable.
///
/// `Ok` means the command ran (or was killed at the time limit), whatever
/// its exit code; `Err` means it could not be started.
pub fn run(
    spec: &RunSpec,
    ids: &IdMapping,
    helper: Option<&Path>,
    out: impl FnMut(Stream, &[u8]),
) -> Result<RunOutcome, SandboxError> {
    run_with(spec, ids, helper, out, LimitsBy::CgroupIfPossible)
}

/// How [`run_with`] enforces the spec's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LimitsBy {
    /// A cgroup when this process may make one, else rlimits.
    CgroupIfPossible,
    /// rlimits (for tests of that path on a host with cgroups).
    #[cfg_attr(not(test), allow(dead_code))]
    Rlimits,
}

/// [`run`], choosing how limits are enforced.
pub(super) fn run_with(
    spec: &RunSpec,
    ids: &IdMapping,
    helper: Option<&Path>,
    mut out: impl FnMut(Stream, &[u8]),
    limits_by: LimitsBy,
) -> Result<RunOutcome, SandboxError> {
    let job = Job {
        spec: spec.clone(),
        ids: ids.clone(),
        host_pid: std::process::id(),
        probe: false,
        rlimits: true,
    };
    let cgroup = match limits_by {
        LimitsBy::CgroupIfPossible => StepCgroup::create(&spec.limits),
        LimitsBy::Rlimits => None,
    };
    let report = execute(job, helper, spec.timeout, &mut out, cgroup);
    // Stage 1 is gone and its mount namespace, with the overlay, too.
    if let RootfsSpec::Overlay { work, .. } = &spec.rootfs {
        super::tree::open_overlay_work(work);
    }
    let report = report?;
    let oom_killed = matches!(report.exceeded, Some(LimitExceeded::Memory { .. }));
    let exit = match (report.timed_out, report.setup_error, report.exit) {
        (Some(limit), _, _) => ExitKind::TimedOut(limit),
        (None, Some(e), _) => return Err(e.into()),
        (None, None, Some(exit)) => exit,
        // The kernel's OOM killer may pick stage 1 itself (it is in the
        // step's cgroup); the step died with it.
        (None, None, None) if oom_killed => ExitKind::Signal(libc::SIGKILL),
        (None, None, None) => {
            return Err(SandboxError::NoReport {
                status: report.status,
            });
        }
    };
    Ok(RunOutcome {
        exit,
        used_overlay: matches!(spec.rootfs, RootfsSpec::Overlay { .. }),
        duration: report.duration,
        created_mountpoints: report.mountpoints,
        // Stage 2 refuses to exec the command without each of these.
        confinement: Confinement {
            no_terminal: true,
            keyring: keyring_confinement(),
            no_new_privs: true,
            seccomp: SECCOMP_PROFILE,
            limits: report.limits,
        },
        limit_exceeded: report.exceeded,
    })
}

/// How stage 2 kept the step from the builder's keyring: a seccomp filter
/// above the builder is inherited by every step, so whether it refuses
/// `keyctl` is the builder's to find out, once (the probe changes nothing).
fn keyring_confinement() -> KeyringConfinement {
    static FOUND: OnceLock<KeyringConfinement> = OnceLock::new();
    *FOUND.get_or_init(|| {
        if refusal::refused_by_seccomp(SetupCall::Keyctl) {
            KeyringConfinement::Unreachable
        } else {
            KeyringConfinement::Fresh
        }
    })
}

/// Whether overlayfs can be mounted in this sandbox's user namespace with
/// upper and work directories under `scratch` (use the directory the layers
/// will live in: support depends on its filesystem). Probed once per process;
/// later calls return the first answer whatever their arguments.
pub fn overlay_supported(helper: Option<&Path>, scratch: &Path, ids: &IdMapping) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| probe_overlay(helper, scratch, ids).is_ok())
}

/// The uncached probe behind [`overlay_supported`], with the reason when
/// overlayfs is refused.
pub fn probe_overlay(
    helper: Option<&Path>,
    scratch: &Path,
    ids: &IdMapping,
) -> Result<(), SandboxError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = scratch.join(format!(
        ".strata-overlay-probe-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let probe_err = |source| SandboxError::Probe {
        dir: dir.clone(),
        source,
    };
    let lower = dir.join("lower");
    let prepared = std::fs::create_dir(&dir)
        .and_then(|()| std::fs::create_dir(&lower))
        .map_err(probe_err)
        .and_then(|()| super::prepare_overlay(&dir, vec![lower], ids).map_err(SandboxError::from));
    let result = prepared.and_then(|rootfs| {
        let job = Job {
            spec: RunSpec::new(rootfs, Vec::new()),
            ids: ids.clone(),
            host_pid: std::process::id(),
            probe: true,
            rlimits: true,
        };
        execute(job, helper, Some(PROBE_TIMEOUT), &mut |_, _| {}, None)
    });
    remove_probe_dir(&dir);
    let report = result?;
    match (report.probe_ok, report.setup_error) {
        (true, _) => Ok(()),
        (false, Some(e)) => Err(e.into()),
        (false, None) => Err(SandboxError::NoReport {
            status: report.status,
        }),
    }
}

/// Best effort: a leftover probe dir is harmless.
fn remove_probe_dir(dir: &Path) {
    super::tree::open_overlay_work(&super::tree::overlay_work_dir(dir));
    let _ = std::fs::remove_dir_all(dir);
}

/// What the stages reported, gathered by [`execute`].
struct Report {
    exit: Option<ExitKind>,
    setup_error: Option<SetupError>,
    /// The time limit, when it was reached.
    timed_out: Option<Duration>,
    mountpoints: Vec<String>,
    probe_ok: bool,
    status: ExitStatus,
    duration: Duration,
    limits: AppliedLimits,
    exceeded: Option<LimitExceeded>,
}

enum Event {
    Output(Stream, Vec<u8>),
    Control(Message),
    ControlBroken(WireError),
}

/// Starts stage 1 for `job` (in `cgroup`, if given and stage 1 can be
/// moved there; else with rlimits), serves it until it exits, and reports.
fn execute(
    mut job: Job,
    helper: Option<&Path>,
    timeout: Option<Duration>,
    out: &mut dyn FnMut(Stream, &[u8]),
    cgroup: Option<StepCgroup>,
) -> Result<Report, SandboxError> {
    let exe = match helper {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().map_err(SandboxError::CurrentExe)?,
    };
    let started = Instant::now();
    let Stage1 {
        mut child,
        mut ctrl,
        events,
        readers,
    } = start_stage1(&exe)?;
    // Stage 1 forks nothing before it has read the job, so every process of
    // the step starts in the cgroup. One that cannot be joined (no right to
    // move processes) is dropped, which removes it: rlimits then.
    let cgroup = cgroup.filter(|cg| cg.add_process(child.id()).is_ok());
    job.rlimits = cgroup.is_none();
    let limits = cgroup.as_ref().map_or_else(
        || AppliedLimits::rlimits(&job.spec.limits),
        StepCgroup::applied,
    );
    // A stage 1 that died before reading the job shows in its exit status.
    let _ = Message::Job(Box::new(job.clone())).write_to(&mut ctrl);

    let mut deadline = timeout.map(|t| started + t);
    let mut report = Report {
        exit: None,
        setup_error: None,
        timed_out: None,
        mountpoints: Vec::new(),
        probe_ok: false,
        status: ExitStatus::default(),
        duration: Duration::ZERO,
        limits,
        exceeded: None,
    };
    let mut map_error = None;
    loop {
        let event = match deadline {
            Some(at) => match events.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    if report.timed_out.is_none() {
                        // Stage 1 kills the step and still reports, once
                        // every process of it is gone.
                        report.timed_out = timeout;
                        let _ = Message::Kill.write_to(&mut ctrl);
                        deadline = Some(Instant::now() + KILL_GRACE);
                    } else {
                        kill_stage1(&mut child);
                        deadline = None;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match events.recv() {
                Ok(e) => e,
                Err(_) => break,
            },
        };
        match event {
            Event::Output(stream, bytes) => out(stream, &bytes),
            Event::Control(msg) => match msg {
                Message::WriteMapping => match job.ids.write_for(child.id()) {
                    Ok(()) => {
                        // If stage 1 is gone, its exit status says why.
                        let _ = Message::MappingWritten.write_to(&mut ctrl);
                    }
                    Err(e) => {
                        map_error = Some(e);
                        kill_stage1(&mut child);
                    }
                },
                Message::MountPointCreated(path) => report.mountpoints.push(path),
                Message::SetupFailed(e) => {
                    report.setup_error.get_or_insert(e);
                }
                Message::Exited(exit) => report.exit = Some(exit_kind(exit)),
                Message::ProbeSucceeded => report.probe_ok = true,
                other @ (Message::Job(_)
                | Message::MappingWritten
                | Message::MapParent(_)
                | Message::Ready
                | Message::Go
                | Message::Kill) => {
                    report
                        .setup_error
                        .get_or_insert(SetupError::protocol(format!(
                            "unexpected `{}`",
                            other.tag()
                        )));
                    kill_stage1(&mut child);
                }
            },
            Event::ControlBroken(e) => {
                report
                    .setup_error
                    .get_or_insert(SetupError::protocol(format!("from stage 1: {e}")));
                kill_stage1(&mut child);
            }
        }
    }
    for r in readers {
        let _ = r.join();
    }
    report.status = child.wait().map_err(|source| SandboxError::Io {
        what: "waiting for stage 1",
        source,
    })?;
    report.duration = started.elapsed();
    // Stage 1 is reaped and every process of the step gone: the counters
    // are final, and the cgroup can go (dropping it removes it).
    report.exceeded = cgroup.and_then(|cg| cg.exceeded());
    if let Some(e) = map_error {
        return Err(e.into());
    }
    Ok(report)
}

/// A running stage 1 and the host's ends of its socket and pipes.
struct Stage1 {
    child: Child,
    /// For writing; a clone feeds the control reader thread.
    ctrl: UnixStream,
    /// Output chunks and control messages, from the reader threads.
    events: Receiver<Event>,
    readers: Vec<JoinHandle<()>>,
}

/// Spawns stage 1 with a control socket as stdin and pipes for the
/// command's output, plus a reader thread for each.
fn start_stage1(exe: &Path) -> Result<Stage1, SandboxError> {
    let io_err = |what| move |source| SandboxError::Io { what, source };
    let (ctrl, child_end) = UnixStream::pair().map_err(io_err("creating the control socket"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(REEXEC_ARG)
        .stdin(Stdio::from(OwnedFd::from(child_end)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Keep terminal signals (Ctrl-C) for the builder, which then ends
        // the step by dying (stage 1 has a parent-death signal).
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
        exe: PathBuf::from(exe),
        source,
    })?;
    // Close our copy of the child's end, or the control reader never sees
    // end-of-file.
    drop(cmd);
    let (tx, events) = mpsc::sync_channel(EVENT_QUEUE);
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(spawn_pipe_reader(stdout, Stream::Stdout, tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(spawn_pipe_reader(stderr, Stream::Stderr, tx.clone()));
    }
    let ctrl_reader = ctrl
        .try_clone()
        .map_err(io_err("cloning the control socket"))?;
    readers.push(spawn_control_reader(ctrl_reader, tx));
    Ok(Stage1 {
        child,
        ctrl,
        events,
        readers,
    })
}

fn spawn_pipe_reader(
    mut pipe: impl Read + Send + 'static,
    stream: Stream,
    tx: SyncSender<Event>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.send(Event::Output(stream, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })
}

fn spawn_control_reader(mut ctrl: UnixStream, tx: SyncSender<Event>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        loop {
            let event = match Message::read_from(&mut ctrl) {
                Ok(Some(m)) => Event::Control(m),
                Ok(None) => return,
                // Stage 1 exited without reading all we sent (e.g. a binary
                // that is no helper): an end, which its exit status explains.
                Err(WireError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => Event::ControlBroken(e),
            };
            let broken = matches!(event, Event::ControlBroken(_));
            if tx.send(event).is_err() || broken {
                return;
            }
        }
    })
}

/// SIGKILL to stage 1, when it cannot be asked: stage 2 — PID 1 of the
/// step — has SIGKILL as its parent-death signal, and its death ends every
/// process of the step. The child is not reaped yet, so its pid cannot
/// belong to anyone else.
fn kill_stage1(child: &mut Child) {
    let _ = child.kill();
}

fn exit_kind(exit: CommandExit) -> ExitKind {
    match exit {
        CommandExit::Code(n) => ExitKind::Code(n),
        CommandExit::Signal(n) => ExitKind::Signal(n),
    }
}
