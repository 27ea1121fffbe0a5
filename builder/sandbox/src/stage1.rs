//! Stage 1 of the sandbox, a fresh single-threaded process of the builder's
//! binary: it creates the namespaces, gets its id maps, becomes root inside,
//! assembles the root filesystem, then starts stage 2 — the first process of
//! the new pid namespace — relays its reports and exit to the host, and kills
//! it when the host's time limit passes or the host goes away.
//!
//! Stage 1 stays in the host's pid namespace (`unshare(CLONE_NEWPID)` only
//! moves its children), which is why the host can write its id maps through
//! `/proc/PID`. It never writes to stdout or stderr: those belong to the
//! step's command.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

use super::idmap::{IdMapping, MapWriter};
use super::refusal::{self, SetupCall};
use super::wire::{CommandExit, Message, WireError};
use super::{Job, Network, REEXEC_ARG, SETUP_FAILED_EXIT, SetupError, mounts, sys};

pub(super) fn main() -> ! {
    let Ok(mut ctrl) = control_socket() else {
        std::process::exit(SETUP_FAILED_EXIT);
    };
    match run(&mut ctrl) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            // The host may be gone already; the exit code still says it.
            let _ = Message::SetupFailed(e).write_to(&mut ctrl);
            std::process::exit(SETUP_FAILED_EXIT)
        }
    }
}

/// Our stdin is a Unix socket to the host (or, for stage 2, to stage 1).
/// The duplicate is close-on-exec, so no step process ever inherits it.
pub(super) fn control_socket() -> io::Result<UnixStream> {
    let fd: OwnedFd = io::stdin().as_fd().try_clone_to_owned()?;
    Ok(UnixStream::from(fd))
}

pub(super) fn read_job(ctrl: &mut UnixStream) -> Result<Job, SetupError> {
    match Message::read_from(ctrl).map_err(SetupError::protocol)? {
        Some(Message::Job(job)) => Ok(*job),
        Some(other) => Err(SetupError::protocol(format!(
            "expected `job`, got `{}`",
            other.tag()
        ))),
        None => Err(SetupError::protocol("no job received")),
    }
}

fn run(ctrl: &mut UnixStream) -> Result<(), SetupError> {
    keep_descriptors_private()?;
    let job = read_job(ctrl)?;
    die_with_parent(job.host_pid)?;
    let staged_early = enter_privileged_mount_namespace()?;
    if staged_early {
        mounts::make_mounts_private()?;
        mounts::stage_rootfs(&mounts::open_rootfs(&job.spec.rootfs)?)?;
    }
    create_user_namespace()?;
    create_other_namespaces(job.spec.network)?;
    // Opened in the sandbox's mount namespace but with the caller's ids,
    // before they become container root's (see `mounts::open_rootfs`).
    let late_rootfs = if staged_early {
        None
    } else {
        Some(mounts::open_rootfs(&job.spec.rootfs)?)
    };
    map_ids(ctrl, &job.ids)?;
    become_root(&job.ids)?;
    // Changing credentials cleared the parent-death signal: arm it again.
    die_with_parent(job.host_pid)?;
    mounts::make_mounts_private()?;
    if let Some(handles) = &late_rootfs {
        mounts::stage_rootfs(handles)?;
    }
    mounts::mount_rootfs(&mounts::staged_paths(&job.spec.rootfs))?;
    if job.probe {
        return send(ctrl, &Message::ProbeSucceeded);
    }
    let (mut to_stage2, stage2_end) =
        UnixStream::pair().map_err(|e| SetupError::step("cannot create the stage 2 socket", e))?;
    let mut child = spawn_stage2(stage2_end)?;
    let supervised = Message::Job(Box::new(job))
        .write_to(&mut to_stage2)
        .map_err(|e| SetupError::step("cannot send the job to stage 2", e))
        .and_then(|()| supervise(ctrl, &mut to_stage2, &mut child));
    if supervised.is_err() {
        // The child is not reaped yet, so its pid cannot have been reused.
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| SetupError::step("cannot wait for stage 2", e))?;
    supervised?;
    let exit = match (status.code(), status.signal()) {
        (Some(code), _) => CommandExit::Code(code),
        (None, Some(sig)) => CommandExit::Signal(sig),
        (None, None) => CommandExit::Code(-1),
    };
    send(ctrl, &Message::Exited(exit))
}

/// Nothing but stdin, stdout and stderr may pass to stage 2 and the step.
pub(super) fn keep_descriptors_private() -> Result<(), SetupError> {
    sys::set_cloexec_from(3)
        .map_err(|e| SetupError::step("cannot mark inherited descriptors close-on-exec", e))
}

fn send(ctrl: &mut UnixStream, msg: &Message) -> Result<(), SetupError> {
    msg.write_to(ctrl)
        .map_err(|e| SetupError::step("cannot report to the host", e))
}

/// SIGKILL when the host builder dies, so no step outlives its build; and a
/// check that it has not died already (before the signal was armed).
fn die_with_parent(host_pid: u32) -> Result<(), SetupError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| SetupError::step("cannot set the parent-death signal", e))?;
    if u32::try_from(nix::unistd::getppid().as_raw()) != Ok(host_pid) {
        std::process::exit(SETUP_FAILED_EXIT);
    }
    Ok(())
}

/// As root, a first mount namespace, still owned by the host's user
/// namespace: there the caller's directories resolve with root's rights
/// (container root may not search their parents), and the sandbox's own
/// mount namespace, created next, inherits the binds made there. False when
/// not root or not allowed (e.g. root in a container without CAP_SYS_ADMIN);
/// then the directories are staged inside the sandbox with its rights.
fn enter_privileged_mount_namespace() -> Result<bool, SetupError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(false);
    }
    match unshare(CloneFlags::CLONE_NEWNS) {
        Ok(()) => Ok(true),
        Err(nix::Error::EPERM) => Ok(false),
        Err(e) => Err(SetupError::step("cannot create a mount namespace", e)),
    }
}

fn create_user_namespace() -> Result<(), SetupError> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(user_namespace_refused)
}

/// Why `unshare(CLONE_NEWUSER)` failed with `e`, and what to change.
pub(super) fn user_namespace_refused(e: nix::Error) -> SetupError {
    let detail = match e {
        nix::Error::ENOSPC => format!("{e} (user.max_user_namespaces is reached or 0)"),
        nix::Error::EINVAL => format!(
            "{e} (the process has threads: main() must call sandbox::reexec_main() \
             before starting any)"
        ),
        _ => refusal::explain(
            SetupCall::Unshare,
            e,
            &format!(
                " (is kernel.unprivileged_userns_clone=0 or \
                 kernel.apparmor_restrict_unprivileged_userns=1? in a container, see {})",
                refusal::DEPLOY_DOC
            ),
        ),
    };
    SetupError::step("cannot create user namespace", detail)
}

/// Mount, pid, ipc and uts namespaces, and a network namespace unless the
/// step shares the host's. Owned by the new user namespace, so stage 1 holds
/// every capability over them.
fn create_other_namespaces(network: Network) -> Result<(), SetupError> {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| {
        SetupError::step(
            "cannot create mount, pid, ipc, uts or network namespace",
            refusal::explain(SetupCall::Unshare, e, ""),
        )
    })
}

/// Single mappings are written by stage 1 itself; others by the host, which
/// stage 1 asks with [`Message::WriteMapping`] and waits for
/// [`Message::MappingWritten`].
fn map_ids(ctrl: &mut UnixStream, ids: &IdMapping) -> Result<(), SetupError> {
    if ids.writer() == MapWriter::Child {
        return ids
            .write_own()
            .map_err(|e| SetupError::step("cannot map ids", e));
    }
    send(ctrl, &Message::WriteMapping)?;
    match Message::read_from(ctrl).map_err(SetupError::protocol)? {
        Some(Message::MappingWritten) => Ok(()),
        Some(m) => Err(SetupError::protocol(format!(
            "expected `{}`, got `{}`",
            Message::MappingWritten.tag(),
            m.tag()
        ))),
        None => Err(SetupError::step(
            "cannot map ids",
            "the host closed the connection before writing the maps",
        )),
    }
}

/// Takes uid and gid 0 of the namespace, so that stage 2 (exec'd as root)
/// keeps every capability in it.
fn become_root(ids: &IdMapping) -> Result<(), SetupError> {
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .map_err(|e| SetupError::step("cannot become gid 0 in the user namespace", e))?;
    // With `setgroups` denied (single mapping) the host's groups stay, but
    // unmapped they read as "nogroup" and grant nothing inside.
    if ids.writer() != MapWriter::Child {
        nix::unistd::setgroups(&[])
            .map_err(|e| SetupError::step("cannot clear supplementary groups", e))?;
    }
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .map_err(|e| SetupError::step("cannot become uid 0 in the user namespace", e))
}

/// `/proc/self/exe` rather than a path: container root may not be allowed
/// to search the directories above the binary, but the magic link skips
/// them.
fn spawn_stage2(socket: UnixStream) -> Result<Child, SetupError> {
    Command::new("/proc/self/exe")
        .arg(REEXEC_ARG)
        .arg("stage2")
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(OwnedFd::from(socket)))
        .spawn()
        .map_err(|e| SetupError::step("cannot start stage 2", e))
}

/// Serves stage 2 until it exits, without reaping it: forwards its reports
/// to the host (answering [`Message::Ready`] with [`Message::Go`]), and
/// SIGKILLs it when the host says [`Message::Kill`] (its time limit) or is
/// gone (its end of the socket closed).
/// Stage 2 is PID 1 of the step, so that ends every process of the step, and
/// the kernel completes its exit only once they are all gone: the host
/// hears of the end no earlier. Unlike the parent-death signal, this also
/// reaches a command that dropped it by changing its credentials.
///
/// One thread, polling: after `unshare(CLONE_NEWPID)` the kernel refuses to
/// create threads in this process. Stage 2 is not reaped (so its pid cannot
/// be reused) before this returns: only its caller waits for `child`.
fn supervise(
    host: &mut UnixStream,
    stage2: &mut UnixStream,
    child: &mut Child,
) -> Result<(), SetupError> {
    // Polls readable once stage 2 has exited, reaped or not. Close-on-exec.
    let exited = pidfd_open(Pid::from_child(child), PidfdFlags::empty())
        .map_err(|e| SetupError::step("cannot watch stage 2", io::Error::from(e)))?;
    let mut reports_open = true;
    let mut host_open = true;
    loop {
        let mut fds = vec![PollFd::new(exited.as_fd(), PollFlags::POLLIN)];
        if reports_open {
            fds.push(PollFd::new(stage2.as_fd(), PollFlags::POLLIN));
        }
        if host_open {
            fds.push(PollFd::new(host.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(SetupError::step("cannot poll", e)),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(true)).collect();
        let mut ready = ready.into_iter();
        let has_exited = ready.next().unwrap_or(false);
        if reports_open && ready.next().unwrap_or(false) {
            reports_open = relay_one(host, stage2)?;
        }
        if host_open && ready.next().unwrap_or(false) {
            // The host sends nothing else now: a message, the end of the
            // stream or an error all mean stop.
            let _ = Message::read_from(host);
            host_open = false;
            // Not reaped yet: the pid is still stage 2's.
            let _ = child.kill();
        }
        if has_exited {
            // Reports stage 2 wrote before dying are still buffered.
            while reports_open {
                reports_open = relay_one(host, stage2)?;
            }
            return Ok(());
        }
    }
}

/// Forwards one report of stage 2; false when it closed the socket (its
/// exec of the command closes it, as does its death).
fn relay_one(host: &mut UnixStream, stage2: &mut UnixStream) -> Result<bool, SetupError> {
    let msg = match Message::read_from(stage2) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(false),
        Err(WireError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(false),
        Err(e) => return Err(SetupError::protocol(format!("from stage 2: {e}"))),
    };
    match msg {
        Message::Ready => {
            // If stage 2 died meanwhile, its exit status tells the host.
            let _ = Message::Go.write_to(stage2);
        }
        Message::MountPointCreated(_) | Message::SetupFailed(_) => send(host, &msg)?,
        Message::Job(_)
        | Message::WriteMapping
        | Message::MappingWritten
        | Message::MapParent(_)
        | Message::Go
        | Message::ProbeSucceeded
        | Message::Exited(_)
        | Message::Kill => {
            return Err(SetupError::protocol(format!(
                "unexpected `{}` from stage 2",
                msg.tag()
            )));
        }
    }
    Ok(true)
}
