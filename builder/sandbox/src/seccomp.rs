//! The seccomp filter every step runs under: a deny list modelled on what
//! Docker's (and BuildKit's) default profile refuses a container without
//! extra capabilities, each refused call returning EPERM as Docker does,
//! plus the checks Docker's libseccomp adds on its own: a call made through
//! another architecture's entry (the i386 `int 0x80` one) or the x32 ABI
//! kills the process, so no syscall number table other than this one's can
//! be used to get around it; and `clone3`, whose flags sit in memory a
//! filter cannot read, fails with ENOSYS so that the C library falls back
//! to `clone`, whose flags it can.
//!
//! Two filters, both installed by stage 2 right before the exec: the guard
//! (architecture, x32, clone3), written out below instruction by
//! instruction, and the deny list, compiled by `seccompiler` from the table
//! [`DENIED`] and the argument rules beside it. The kernel applies the
//! strictest answer of the two.
//!
//! What a step keeps: everything a build runs (compilers, package managers,
//! `chroot`, `mknod` of what the user namespace allows), `ptrace` of its own
//! processes (Docker allows it on kernels from 4.8), and `personality` for
//! the values Docker allows. This module never changes the rules without
//! changing [`SECCOMP_PROFILE`], which provenance records.

#[cfg(target_arch = "x86_64")]
pub(super) use x86_64::install;

/// Name and version of the filter, recorded in provenance.
pub const SECCOMP_PROFILE: &str = "strata-seccomp/1";

/// Elsewhere there is no filter written yet, and no step runs without one.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn install() -> Result<(), super::SetupError> {
    Err(super::SetupError::step(
        "cannot install the seccomp filter",
        "Strata's filter is written for x86_64 only",
    ))
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::collections::BTreeMap;

    use seccompiler::{
        BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
        SeccompFilter, SeccompRule, TargetArch, sock_filter,
    };

    use crate::SetupError;

    /// Calls refused whatever their arguments, by the reason Docker refuses
    /// them (most need a capability the step lacks anyway; the filter keeps
    /// their kernel code out of reach even if one is granted by mistake).
    pub(crate) const DENIED: &[(&str, i64)] = &[
        // Kernel keyrings: shared by every process of a user, not
        // namespaced (Docker: "prevent containers from using the kernel
        // keyring").
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("keyctl", libc::SYS_keyctl),
        // Large kernel attack surface for unprivileged use.
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
        // Loading or replacing kernel code.
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        // The host's clock, not namespaced.
        ("clock_settime", libc::SYS_clock_settime),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("settimeofday", libc::SYS_settimeofday),
        ("adjtimex", libc::SYS_adjtimex),
        // Host-wide state.
        ("acct", libc::SYS_acct),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("reboot", libc::SYS_reboot),
        ("syslog", libc::SYS_syslog),
        ("vhangup", libc::SYS_vhangup),
        ("quotactl", libc::SYS_quotactl),
        ("iopl", libc::SYS_iopl),
        ("ioperm", libc::SYS_ioperm),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("nfsservctl", libc::SYS_nfsservctl),
        ("uselib", libc::SYS_uselib),
        ("ustat", libc::SYS_ustat),
        ("sysfs", libc::SYS_sysfs),
        ("_sysctl", libc::SYS__sysctl),
        // Opening files by handle reaches past any chroot or mount (the
        // "shocker" escape).
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        // Mounts and namespaces: the sandbox set them up; a step changes
        // neither (nested user namespaces would hand it every capability
        // over new kernel code, such as netfilter's).
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("mount_setattr", libc::SYS_mount_setattr),
    ];

    /// `ioctl` requests refused: TIOCSTI pushes bytes into a terminal's
    /// input as if typed (bubblewrap's CVE-2017-5226), TIOCLINUX can do the
    /// same on a virtual console. Compared on the low 32 bits only, as the
    /// kernel reads the request as an `unsigned int`: high bits set in the
    /// register do not get a request past the filter.
    pub(crate) const DENIED_IOCTLS: [(&str, u64); 2] = [("TIOCSTI", 0x5412), ("TIOCLINUX", 0x541C)];

    /// `clone` flags that create namespaces; `clone` with any of them is
    /// refused, as `unshare` is. (`CLONE_NEWTIME`'s bit means the exit
    /// signal for `clone`, and only `clone3` and `unshare` take it.)
    pub(crate) const NAMESPACE_FLAGS: [u64; 7] = [
        libc::CLONE_NEWNS as u64,
        libc::CLONE_NEWCGROUP as u64,
        libc::CLONE_NEWUTS as u64,
        libc::CLONE_NEWIPC as u64,
        libc::CLONE_NEWUSER as u64,
        libc::CLONE_NEWPID as u64,
        libc::CLONE_NEWNET as u64,
    ];

    /// `personality` values allowed, Docker's: Linux, 32-bit Linux, with
    /// or without UNAME26, and the query. Others (READ_IMPLIES_EXEC,
    /// ADDR_NO_RANDOMIZE, …) weaken the step's own defences.
    pub(crate) const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

    /// Audit architecture of x86_64 system calls (`<linux/audit.h>`).
    pub(crate) const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    /// Set in the number of an x32 system call.
    pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

    // Classic BPF instructions, from `<linux/bpf_common.h>`: class | size |
    // mode (or operation | source).
    /// `BPF_LD | BPF_W | BPF_ABS`: load a 32-bit word of `seccomp_data`.
    const BPF_LD_W_ABS: u16 = 0x20;
    /// `BPF_JMP | BPF_JEQ | BPF_K`.
    const BPF_JMP_JEQ_K: u16 = 0x15;
    /// `BPF_JMP | BPF_JGE | BPF_K`.
    const BPF_JMP_JGE_K: u16 = 0x35;
    /// `BPF_RET | BPF_K`.
    const BPF_RET_K: u16 = 0x06;
    /// Offsets in `struct seccomp_data`.
    const NR: u32 = 0;
    const ARCH: u32 = 4;

    /// Installs the guard and the deny list on the calling thread (its
    /// later threads and children inherit both), after setting
    /// `no_new_privs`, without which an unprivileged process may not.
    pub(crate) fn install() -> Result<(), SetupError> {
        let failed = |e: &dyn std::fmt::Display| {
            SetupError::step("cannot install the seccomp filter", e.to_string())
        };
        let deny = deny_program().map_err(|e| failed(&e))?;
        seccompiler::apply_filter(&guard_program()).map_err(|e| failed(&e))?;
        seccompiler::apply_filter(&deny).map_err(|e| failed(&e))
    }

    const fn stmt(code: u16, k: u32) -> sock_filter {
        sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
        sock_filter { code, jt, jf, k }
    }

    /// The guard, run before the deny list's own architecture check:
    ///
    /// ```text
    /// 0  A = arch
    /// 1  A == AUDIT_ARCH_X86_64 ? goto 3 : goto 2
    /// 2  kill the process                         another architecture
    /// 3  A = nr
    /// 4  A >= X32_SYSCALL_BIT ? goto 5 : goto 6
    /// 5  kill the process                         x32 ABI
    /// 6  A == SYS_clone3 ? goto 7 : goto 8
    /// 7  return ENOSYS                            use clone instead
    /// 8  allow                                    (the deny list decides)
    /// ```
    pub(crate) fn guard_program() -> BpfProgram {
        vec![
            stmt(BPF_LD_W_ABS, ARCH),
            jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
            stmt(BPF_LD_W_ABS, NR),
            jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
            jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
            stmt(
                BPF_RET_K,
                libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA),
            ),
            stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
        ]
    }

    fn arg(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
        SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
    }

    /// The deny list: [`DENIED`] unconditionally, and `ioctl`, `clone` and
    /// `personality` by argument; everything else allowed.
    pub(crate) fn deny_program() -> Result<BpfProgram, BackendError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            DENIED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
        let ioctls = DENIED_IOCTLS
            .iter()
            .map(|&(_, request)| SeccompRule::new(vec![arg(1, SeccompCmpOp::Eq, request)?]))
            .collect::<Result<_, _>>()?;
        rules.insert(libc::SYS_ioctl, ioctls);
        // A rule matches when all its conditions do, a call when any rule
        // does: one rule per flag.
        let clones = NAMESPACE_FLAGS
            .iter()
            .map(|&flag| SeccompRule::new(vec![arg(0, SeccompCmpOp::MaskedEq(flag), flag)?]))
            .collect::<Result<_, _>>()?;
        rules.insert(libc::SYS_clone, clones);
        let other_personality = PERSONALITIES
            .iter()
            .map(|&p| arg(0, SeccompCmpOp::Ne, p))
            .collect::<Result<_, _>>()?;
        rules.insert(
            libc::SYS_personality,
            vec![SeccompRule::new(other_personality)?],
        );
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            TargetArch::x86_64,
        )?;
        BpfProgram::try_from(filter)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// What the kernel hands a filter (`struct seccomp_data`).
        struct Call {
            arch: u32,
            nr: u32,
            args: [u64; 6],
        }

        impl Call {
            fn new(nr: i64, args: &[u64]) -> Self {
                let mut all = [0u64; 6];
                all[..args.len()].copy_from_slice(args);
                Call {
                    arch: AUDIT_ARCH_X86_64,
                    nr: nr as u32,
                    args: all,
                }
            }

            fn word(&self, offset: u32) -> u32 {
                match offset {
                    0 => self.nr,
                    4 => self.arch,
                    16..=63 => {
                        let arg = self.args[(offset as usize - 16) / 8];
                        if offset.is_multiple_of(8) {
                            arg as u32
                        } else {
                            (arg >> 32) as u32
                        }
                    }
                    _ => panic!("load from offset {offset}"),
                }
            }
        }

        /// A classic BPF interpreter for the instructions seccomp filters
        /// use, so the filters can be checked call by call.
        fn run(program: &[sock_filter], call: &Call) -> u32 {
            let mut a = 0u32;
            let mut pc = 0usize;
            loop {
                let i = &program[pc];
                pc += 1;
                let taken = |cond: bool| usize::from(if cond { i.jt } else { i.jf });
                match i.code {
                    0x20 => a = call.word(i.k),
                    0x54 => a &= i.k,
                    0x05 => pc += i.k as usize,
                    0x15 => pc += taken(a == i.k),
                    0x25 => pc += taken(a > i.k),
                    0x35 => pc += taken(a >= i.k),
                    0x45 => pc += taken(a & i.k != 0),
                    0x06 => return i.k,
                    code => panic!("instruction {code:#x} at {}", pc - 1),
                }
            }
        }

        /// The kernel's verdict over both filters: the strictest action.
        fn verdict(call: &Call) -> u32 {
            let actions = [
                run(&guard_program(), call),
                run(&deny_program().unwrap(), call),
            ];
            let rank = |r: u32| match r & libc::SECCOMP_RET_ACTION_FULL {
                libc::SECCOMP_RET_KILL_PROCESS => 0,
                libc::SECCOMP_RET_ERRNO => 1,
                libc::SECCOMP_RET_ALLOW => 2,
                other => panic!("unexpected action {other:#x}"),
            };
            actions.into_iter().min_by_key(|&r| rank(r)).unwrap()
        }

        const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
        const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

        #[test]
        fn every_denied_call_is_refused_with_eperm_whatever_its_arguments() {
            for &(name, nr) in DENIED {
                for args in [&[][..], &[1, 2, 3], &[u64::MAX; 6]] {
                    assert_eq!(verdict(&Call::new(nr, args)), EPERM, "{name} {args:?}");
                }
            }
        }

        #[test]
        fn what_builds_use_is_allowed() {
            for nr in [
                libc::SYS_read,
                libc::SYS_write,
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_mmap,
                libc::SYS_ptrace,
                libc::SYS_chroot,
                libc::SYS_mknodat,
                libc::SYS_setuid,
                libc::SYS_wait4,
                libc::SYS_socket,
            ] {
                assert_eq!(verdict(&Call::new(nr, &[0, 0, 0])), ALLOW, "{nr}");
            }
        }

        #[test]
        fn terminal_injection_ioctls_are_refused_even_with_high_bits_set() {
            for (name, request) in DENIED_IOCTLS {
                for cmd in [request, request | 0xffff_ffff_0000_0000] {
                    let call = Call::new(libc::SYS_ioctl, &[0, cmd, 0]);
                    assert_eq!(verdict(&call), EPERM, "{name} {cmd:#x}");
                }
            }
            for other in [libc::TCGETS, libc::TIOCGWINSZ, libc::FIONREAD] {
                let call = Call::new(libc::SYS_ioctl, &[1, other, 0]);
                assert_eq!(verdict(&call), ALLOW, "{other:#x}");
            }
        }

        #[test]
        fn clone_may_fork_and_make_threads_but_not_namespaces() {
            let fork = libc::SIGCHLD as u64;
            let thread = (libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM
                | libc::CLONE_SETTLS
                | libc::CLONE_PARENT_SETTID
                | libc::CLONE_CHILD_CLEARTID) as u64;
            for flags in [
                fork,
                thread,
                libc::CLONE_VFORK as u64 | libc::CLONE_VM as u64 | fork,
            ] {
                assert_eq!(
                    verdict(&Call::new(libc::SYS_clone, &[flags])),
                    ALLOW,
                    "{flags:#x}"
                );
            }
            for flag in NAMESPACE_FLAGS {
                let call = Call::new(libc::SYS_clone, &[flag | fork]);
                assert_eq!(verdict(&call), EPERM, "{flag:#x}");
            }
            assert_eq!(verdict(&Call::new(libc::SYS_clone3, &[0, 88])), ENOSYS);
        }

        #[test]
        fn personality_takes_only_dockers_values() {
            for p in PERSONALITIES {
                let call = Call::new(libc::SYS_personality, &[p]);
                assert_eq!(verdict(&call), ALLOW, "{p:#x}");
            }
            for p in [0x0040_0000, 0x0004_0000, 0x0800_0000] {
                let call = Call::new(libc::SYS_personality, &[p]);
                assert_eq!(verdict(&call), EPERM, "{p:#x}");
            }
        }

        #[test]
        fn another_architecture_or_the_x32_abi_kills_the_process() {
            const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
            let mut call = Call::new(libc::SYS_getpid, &[]);
            assert_eq!(verdict(&call), ALLOW);
            call.arch = AUDIT_ARCH_I386;
            assert_eq!(verdict(&call), KILL);
            // x32's keyctl must not slip past the x86_64 number.
            let x32 = Call::new(libc::SYS_keyctl | i64::from(X32_SYSCALL_BIT), &[]);
            assert_eq!(verdict(&x32), KILL);
            let x32 = Call::new(libc::SYS_getpid | i64::from(X32_SYSCALL_BIT), &[]);
            assert_eq!(verdict(&x32), KILL);
        }
    }
}
