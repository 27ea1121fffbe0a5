//! Stage 2 of the sandbox: PID 1 of the step's pid namespace. It leaves the
//! builder's session (and so its terminal), finishes the filesystem (`/proc`
//! for its own pid namespace, `/dev`), names the host, brings `lo` up,
//! pivots into the root, and becomes the step's command with the step's
//! working directory, user, capabilities and environment — after a fresh
//! session keyring, rlimits when the host found no cgroup, `no_new_privs`
//! and the seccomp filter, in that order (the filter refuses `keyctl`).
//!
//! Because the command keeps PID 1, the kernel kills every other process of
//! the step when it exits. This stage must never let a host path, a host file
//! descriptor, a host environment variable, the builder's terminal or its
//! keyring reach the command, and never execs it without every one of the
//! confinements above.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use rustix::io::Errno;
use rustix::thread::{
    CapabilitySet, capabilities, clear_ambient_capability_set, remove_capability_from_bounding_set,
    set_capabilities,
};

use super::idmap::{IdMapping, MapWriter};
use super::limits::apply_rlimits;
use super::refusal::{self, SetupCall};
use super::stage1::{control_socket, keep_descriptors_private, read_job};
use super::user::{self, Identity};
use super::wire::Message;
use super::{
    DEFAULT_PATH, Job, Network, RunSpec, SETUP_FAILED_EXIT, SetupError, mounts, seccomp, sys,
};

/// Exit code when the command cannot be found or executed (as a shell's).
const COMMAND_FAILED_EXIT: i32 = 127;

/// Docker's default capabilities for a container's root: enough for package
/// managers (chown, setuid, mknod, raw sockets for ping), not for mounts,
/// module loading or tracing other processes.
const DEFAULT_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::AUDIT_WRITE)
    .union(CapabilitySet::SETFCAP);

pub(super) fn main() -> ! {
    let Ok(mut ctrl) = control_socket() else {
        std::process::exit(SETUP_FAILED_EXIT);
    };
    let err = match run(&mut ctrl) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let code = match err {
        SetupError::CommandNotFound { .. } | SetupError::CommandNotExecutable { .. } => {
            COMMAND_FAILED_EXIT
        }
        _ => SETUP_FAILED_EXIT,
    };
    let _ = Message::SetupFailed(err).write_to(&mut ctrl);
    std::process::exit(code)
}

fn run(ctrl: &mut UnixStream) -> Result<Infallible, SetupError> {
    keep_descriptors_private()?;
    die_with_stage1()?;
    leave_the_builders_session()?;
    let job = read_job(ctrl)?;
    let root = Path::new(mounts::ROOT);
    let mut created = Vec::new();
    mounts::mount_proc(root, &mut created)?;
    mounts::mount_dev(root, &mut created)?;
    if job.spec.network == Network::Host {
        mounts::bind_host_network_files(root, &mut created)?;
    }
    for path in created {
        send(ctrl, &Message::MountPointCreated(path))?;
    }
    set_hostname(&job.spec.hostname)?;
    if job.spec.network == Network::None {
        bring_up_loopback()?;
    }
    mounts::pivot_into(root)?;
    let ident = resolve_identity(&job)?;
    check_mapped(&ident, &job.ids)?;
    enter_workdir(&job.spec.cwd)?;
    let env = command_env(&job.spec, &ident);
    let program = find_command(&job.spec.argv, &env)?;
    restrict_capabilities()?;
    switch_user(&ident, &job.ids)?;
    // Changing credentials cleared the parent-death signal: arm it again,
    // then make sure stage 1 is still there to deliver it.
    die_with_stage1()?;
    join_new_keyring()?;
    if job.rlimits {
        apply_rlimits(&job.spec.limits)
            .map_err(|e| SetupError::step("cannot set the step's rlimits", e))?;
    }
    forbid_new_privileges()?;
    // Last: from here on only what the filter allows; the report, the wait
    // for `go` and the exec need nothing it refuses.
    seccomp::install()?;
    send(ctrl, &Message::Ready)?;
    match Message::read_from(ctrl) {
        Ok(Some(Message::Go)) => {}
        _ => std::process::exit(SETUP_FAILED_EXIT),
    }
    exec_command(&job.spec.argv, &program, env)
}

fn send(ctrl: &mut UnixStream, msg: &Message) -> Result<(), SetupError> {
    msg.write_to(ctrl)
        .map_err(|e| SetupError::step("cannot report to stage 1", e))
}

/// SIGKILL when stage 1 dies (the time limit kills stage 1); as PID 1, its
/// death takes every process of the step with it.
fn die_with_stage1() -> Result<(), SetupError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| SetupError::step("cannot set the parent-death signal", e))
}

/// A session of our own, so the step has no controlling terminal: the
/// builder's, inherited so far, would let it push input into the user's
/// shell with TIOCSTI, or read from it. We are not a process group leader
/// (stage 1 is ours), so `setsid` cannot fail with EPERM.
fn leave_the_builders_session() -> Result<(), SetupError> {
    rustix::process::setsid()
        .map(drop)
        .map_err(|e| SetupError::step("cannot start a new session", io::Error::from(e)))
}

/// A new anonymous session keyring in place of the builder's, whose keys
/// (tokens, credentials) the step could otherwise use.
/// Where a seccomp filter above the builder refuses `keyctl` altogether (as
/// container runtimes' default profiles do), there is no keyring to leave:
/// the step inherits that filter, which nothing can lift, and can reach no
/// keyring either.
fn join_new_keyring() -> Result<(), SetupError> {
    match sys::join_new_session_keyring() {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EPERM)
                && refusal::refused_by_seccomp(SetupCall::Keyctl) =>
        {
            Ok(())
        }
        Err(e) => Err(SetupError::step("cannot join a new session keyring", e)),
    }
}

/// `no_new_privs`: an exec'd setuid or file-capability program gains
/// nothing (which also keeps the parent-death signal armed across it), and
/// an unprivileged process may install the seccomp filter.
fn forbid_new_privileges() -> Result<(), SetupError> {
    rustix::thread::set_no_new_privs(true)
        .map_err(|e| SetupError::step("cannot set no_new_privs", io::Error::from(e)))
}

fn set_hostname(name: &str) -> Result<(), SetupError> {
    nix::unistd::sethostname(name).map_err(|e| {
        SetupError::step(
            format!("cannot set host name {name:?}"),
            refusal::explain(SetupCall::Sethostname, e, ""),
        )
    })
}

/// A new network namespace starts with `lo` down; builds expect localhost.
fn bring_up_loopback() -> Result<(), SetupError> {
    sys::set_interface_up("lo").map_err(|e| SetupError::step("cannot bring up lo", e))
}

/// Reads the image's account files, now that `/` is the image.
fn resolve_identity(job: &Job) -> Result<Identity, SetupError> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    user::resolve(
        job.spec.user.as_deref(),
        &read("/etc/passwd"),
        &read("/etc/group"),
    )
}

/// Refuses a user or group the id mapping cannot represent, instead of
/// letting `setuid` fail with a bare EINVAL. Unmapped supplementary groups
/// are left out.
fn check_mapped(ident: &Identity, ids: &IdMapping) -> Result<(), SetupError> {
    let not_mapped = |kind: &str, id| SetupError::NotMapped {
        kind: kind.to_owned(),
        id,
        mapping: ids.describe_for_error(),
    };
    if ids.host_uid(ident.uid).is_none() {
        return Err(not_mapped("uid", ident.uid));
    }
    if ids.host_gid(ident.gid).is_none() {
        return Err(not_mapped("gid", ident.gid));
    }
    Ok(())
}

/// Creates the working directory as root (as Docker's WORKDIR does) and
/// enters it.
fn enter_workdir(cwd: &str) -> Result<(), SetupError> {
    if !cwd.starts_with('/') {
        return Err(SetupError::step(
            format!("cannot use working directory {cwd:?}"),
            "it must be an absolute path",
        ));
    }
    std::fs::create_dir_all(cwd)
        .map_err(|e| SetupError::step(format!("cannot create working directory {cwd}"), e))?;
    nix::unistd::chdir(cwd)
        .map_err(|e| SetupError::step(format!("cannot enter working directory {cwd}"), e))
}

/// The step's environment, later duplicates winning, plus `PATH`,
/// `HOSTNAME` and `HOME` when the step does not set them.
fn command_env(spec: &RunSpec, ident: &Identity) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in &spec.env {
        match env.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    for (k, v) in [
        ("PATH", DEFAULT_PATH),
        ("HOSTNAME", spec.hostname.as_str()),
        ("HOME", ident.home.as_str()),
    ] {
        if !env.iter().any(|(key, _)| key == k) {
            env.push((k.to_owned(), v.to_owned()));
        }
    }
    env
}

/// The program to exec: `argv[0]` itself when it has a slash, else the first
/// executable file of that name along the step's `PATH`.
fn find_command(argv: &[String], env: &[(String, String)]) -> Result<PathBuf, SetupError> {
    let Some(arg0) = argv.first() else {
        return Err(SetupError::step(
            "cannot run the step",
            "its command is empty",
        ));
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(SetupError::CommandNotFound {
                command: arg0.clone(),
            })
        };
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(arg0))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| SetupError::CommandNotFound {
            command: format!("{arg0} (searched PATH={path})"),
        })
}

/// Drops every capability not in [`DEFAULT_CAPS`] from the bounding set
/// (which caps what an exec'd root process gets), clears the ambient set,
/// and clears the inheritable set (which the bounding set does not limit for
/// root).
fn restrict_capabilities() -> Result<(), SetupError> {
    let failed = |e: Errno| SetupError::step("cannot limit capabilities", io::Error::from(e));
    for bit in 0..u64::BITS {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if DEFAULT_CAPS.contains(cap) {
            continue;
        }
        match remove_capability_from_bounding_set(cap) {
            Ok(()) => {}
            // Past the kernel's last capability: we are done.
            Err(e) if e == Errno::INVAL => break,
            Err(e) => return Err(failed(e)),
        }
    }
    clear_ambient_capability_set().map_err(failed)?;
    let mut sets = capabilities(None).map_err(failed)?;
    sets.inheritable = CapabilitySet::empty();
    set_capabilities(None, sets).map_err(failed)
}

/// Groups first (setgroups needs CAP_SETGID, which setuid to non-root
/// drops), then gid, then uid.
fn switch_user(ident: &Identity, ids: &IdMapping) -> Result<(), SetupError> {
    if ids.writer() != MapWriter::Child {
        let groups: Vec<Gid> = ident
            .groups
            .iter()
            .filter(|g| ids.host_gid(**g).is_some())
            .map(|g| Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups)
            .map_err(|e| SetupError::step("cannot set supplementary groups", e))?;
    }
    let gid = Gid::from_raw(ident.gid);
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| SetupError::step(format!("cannot become gid {}", ident.gid), e))?;
    let uid = Uid::from_raw(ident.uid);
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| SetupError::step(format!("cannot become uid {}", ident.uid), e))
}

/// Replaces this process with the command; returns only on failure.
fn exec_command(
    argv: &[String],
    program: &Path,
    env: Vec<(String, String)>,
) -> Result<Infallible, SetupError> {
    let mut cmd = Command::new(program);
    if let Some((arg0, args)) = argv.split_first() {
        cmd.arg0(arg0).args(args);
    }
    let err = cmd.env_clear().envs(env).stdin(Stdio::null()).exec();
    Err(SetupError::CommandNotExecutable {
        command: program.display().to_string(),
        detail: err.to_string(),
    })
}
