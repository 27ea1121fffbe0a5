//! Why the kernel answered a call of the sandbox's setup with EPERM, told
//! apart precisely enough to say what to change. Inside a container the two
//! usual causes are its runtime's settings, not the host's: a seccomp
//! profile that refuses the call outright (Docker's default profile and
//! Kubernetes' `RuntimeDefault` refuse `unshare`, `mount`, `umount2`,
//! `pivot_root`, `sethostname` and `keyctl` to a container without
//! `CAP_SYS_ADMIN`), and a masked `/proc` (paths of it covered by other
//! mounts), which the kernel will not let a user namespace mount afresh.
//! Both are named with the one document that says what a container needs,
//! [`DEPLOY_DOC`]; anything else keeps its errno and the host's likely
//! causes. (A filter refusing `keyctl` is no error at all: stage 2 then has
//! no keyring to take away from the step.)
//!
//! A filter is recognised by calling the same system call again with
//! arguments the kernel itself answers with another errno (`unshare(0)`
//! succeeds and changes nothing; an empty path is ENOENT; a host name
//! longer than 64 bytes is EINVAL): EPERM there can only come from the
//! filter. This module changes no state.

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::sys;

/// Where a container's settings for the sandbox are documented (in the
/// source tree, as the error shows it to whoever deploys the builder).
pub(super) const DEPLOY_DOC: &str = "deploy/k8s/README.md";

/// The seccomp profile shipped beside [`DEPLOY_DOC`].
const SECCOMP_PROFILE_FILE: &str = "deploy/k8s/seccomp-strata-builder.json";

/// A system call of the sandbox's setup that container runtimes' default
/// seccomp profiles refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SetupCall {
    Unshare,
    Mount,
    Umount2,
    PivotRoot,
    Sethostname,
    Keyctl,
}

impl SetupCall {
    fn name(self) -> &'static str {
        match self {
            SetupCall::Unshare => "unshare",
            SetupCall::Mount => "mount",
            SetupCall::Umount2 => "umount2",
            SetupCall::PivotRoot => "pivot_root",
            SetupCall::Sethostname => "sethostname",
            SetupCall::Keyctl => "keyctl",
        }
    }
}

/// True when a seccomp filter this process runs under refuses `call`
/// whatever its arguments. Valid where the call's own capability check
/// passes (`pivot_root` and `sethostname` check it first): in stage 1
/// after `unshare`, and in stage 2.
pub(super) fn refused_by_seccomp(call: SetupCall) -> bool {
    under_seccomp_filter() && probe(call) == Err(Errno::EPERM)
}

/// `call` again, with arguments the kernel refuses (or accepts) without
/// doing anything.
fn probe(call: SetupCall) -> Result<(), Errno> {
    match call {
        SetupCall::Unshare => nix::sched::unshare(CloneFlags::empty()),
        SetupCall::Mount => {
            nix::mount::mount(Some(""), "", None::<&str>, MsFlags::empty(), None::<&str>)
        }
        SetupCall::Umount2 => nix::mount::umount2("", MntFlags::empty()),
        SetupCall::PivotRoot => nix::unistd::pivot_root("", ""),
        SetupCall::Sethostname => nix::unistd::sethostname("x".repeat(65)),
        SetupCall::Keyctl => sys::keyctl_unknown_operation()
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL))),
    }
}

/// `Seccomp: 2` in `/proc/self/status`: some filter is installed. The
/// sandbox installs its own only in stage 2 just before the exec, so during
/// setup any filter is the one the builder was started under.
fn under_seccomp_filter() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status.lines().any(|l| {
            l.split_once(':')
                .is_some_and(|(k, v)| k == "Seccomp" && v.trim() == "2")
        })
    })
}

/// The detail of `call` failing with `errno`. For EPERM: the filter that
/// refuses the call, with what to do, when that is the cause; else the
/// errno and `host_hint` (the host's own likely causes, if any).
pub(super) fn explain(call: SetupCall, errno: Errno, host_hint: &str) -> String {
    if errno != Errno::EPERM {
        return errno.to_string();
    }
    if refused_by_seccomp(call) {
        return format!(
            "the seccomp profile the builder runs under refuses {}(2) (as Docker's default \
             and Kubernetes' RuntimeDefault do); run it under {SECCOMP_PROFILE_FILE}, see \
             {DEPLOY_DOC}",
            call.name()
        );
    }
    format!("{errno}{host_hint}")
}

/// The detail of mounting a fresh `/proc` failing with `errno`: for EPERM,
/// a mask over the builder's `/proc` when there is one (naming a few of the
/// masking mounts), else as [`explain`] says.
pub(super) fn explain_proc(errno: Errno) -> String {
    let masks = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|mountinfo| proc_masks(&mountinfo))
        .unwrap_or_default();
    if errno != Errno::EPERM || masks.is_empty() || refused_by_seccomp(SetupCall::Mount) {
        return explain(SetupCall::Mount, errno, "");
    }
    let shown: Vec<&str> = masks.iter().take(3).map(String::as_str).collect();
    format!(
        "the builder's /proc is masked ({}{}), and the kernel mounts a fresh /proc in a user \
         namespace only where the whole of it is visible; unmask it (Kubernetes: procMount: \
         Unmasked; Docker: --security-opt systempaths=unconfined), see {DEPLOY_DOC}",
        shown.join(", "),
        if masks.len() > shown.len() {
            ", …"
        } else {
            ""
        }
    )
}

/// Mounts over paths inside `/proc` in `mountinfo` (`/proc/self/mountinfo`),
/// as container runtimes make them to hide `/proc/kcore`, `/proc/keys`,
/// `/proc/sys`… `binfmt_misc` is left out: it sits on a directory the
/// kernel keeps empty, which does not count as hiding anything.
fn proc_masks(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| {
            point.starts_with("/proc/") && !point.starts_with("/proc/sys/fs/binfmt_misc")
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_get_another_answer_than_eperm_from_the_kernel() {
        // The calls whose own checks need no capability; pivot_root and
        // sethostname check one first, and are probed only where the
        // sandbox holds it. Outside any seccomp filter (the tests' host).
        assert_eq!(probe(SetupCall::Unshare), Ok(()));
        assert_eq!(probe(SetupCall::Mount), Err(Errno::ENOENT));
        assert_eq!(probe(SetupCall::Umount2), Err(Errno::ENOENT));
        assert_eq!(probe(SetupCall::Keyctl), Err(Errno::EOPNOTSUPP));
        assert!(!refused_by_seccomp(SetupCall::Unshare));
    }

    #[test]
    fn a_masked_proc_is_told_by_the_mounts_inside_it_but_binfmt_misc() {
        let docker = "\
            600 500 0:50 / / rw,relatime - overlay overlay rw\n\
            601 600 0:52 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
            602 601 0:52 /bus /proc/bus ro,nosuid - proc proc rw\n\
            603 601 0:5 /null /proc/kcore rw,nosuid - devtmpfs udev rw\n\
            604 600 0:53 / /dev rw,nosuid - tmpfs tmpfs rw\n";
        assert_eq!(proc_masks(docker), ["/proc/bus", "/proc/kcore"]);
        let host = "\
            22 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n\
            23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
            24 23 0:30 / /proc/sys/fs/binfmt_misc rw,relatime - autofs systemd-1 rw\n";
        assert!(proc_masks(host).is_empty());
        assert_eq!(
            explain(SetupCall::Mount, Errno::ENOENT, " (a hint)"),
            "ENOENT: No such file or directory"
        );
    }
}
