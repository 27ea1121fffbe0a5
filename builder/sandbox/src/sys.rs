//! The kernel calls the sandbox needs that neither std, nix nor rustix
//! offers as safe functions: bringing a network interface up (the
//! `SIOCGIFFLAGS`/`SIOCSIFFLAGS` ioctls; rustix and nix expose ioctls only as
//! `unsafe`), keeping stray descriptors from being inherited (`close_range`,
//! which neither wraps), and joining a new session keyring (`keyctl`, which
//! neither wraps; also asked an unknown operation, to tell a seccomp filter
//! refusing it from the kernel). The seccomp filter is installed through `seccompiler`'s
//! safe `apply_filter`. Everything unsafe in the sandbox lives here, each
//! block with the reason it is sound — the tests' probes of what a step may
//! call too; this module must not grow a call that a safe wrapper covers.
#![allow(unsafe_code)]

use std::io;
use std::mem::offset_of;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// `struct ifreq` of `<net/if.h>` as the interface flag ioctls use it: the
/// name, then `ifr_flags` (the one member of the `ifr_ifru` union they read
/// and write), padded to the size of the whole struct, which is what the
/// kernel copies in and out. Unlike `libc::ifreq` it has no union, so it is
/// built and read without `unsafe`.
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    rest: [u8; size_of::<libc::ifreq>() - libc::IFNAMSIZ - size_of::<libc::c_short>()],
}

// The layout the kernel expects: same size as `struct ifreq`, flags where the
// union starts.
const _: () = assert!(size_of::<IfreqFlags>() == size_of::<libc::ifreq>());
const _: () = assert!(offset_of!(IfreqFlags, flags) == offset_of!(libc::ifreq, ifr_ifru));

/// Sets `IFF_UP` on the interface `name` of the current network namespace.
pub(super) fn set_interface_up(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        rest: [0; size_of::<libc::ifreq>() - libc::IFNAMSIZ - size_of::<libc::c_short>()],
    };
    // The last byte stays NUL: the kernel reads the name as a C string.
    if bytes.len() >= req.name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // Any socket serves as the handle for interface ioctls; a UDP socket
    // bound to the wildcard needs no route, so it works before `lo` is up.
    let sock = UdpSocket::bind(("0.0.0.0", 0))?;
    interface_flags_ioctl(sock.as_fd(), FlagsIoctl::Get, &mut req)?;
    req.flags |= libc::IFF_UP as libc::c_short;
    interface_flags_ioctl(sock.as_fd(), FlagsIoctl::Set, &mut req)
}

/// The only two ioctls [`interface_flags_ioctl`] may issue: an enum, so its
/// safety argument cannot be handed another request.
#[derive(Clone, Copy)]
enum FlagsIoctl {
    /// `SIOCGIFFLAGS`: fills in `ifr_flags`.
    Get,
    /// `SIOCSIFFLAGS`: reads `ifr_name` and `ifr_flags`.
    Set,
}

/// `ioctl(sock, SIOCGIFFLAGS or SIOCSIFFLAGS, req)`.
fn interface_flags_ioctl(
    sock: BorrowedFd<'_>,
    op: FlagsIoctl,
    req: &mut IfreqFlags,
) -> io::Result<()> {
    let request = match op {
        FlagsIoctl::Get => libc::SIOCGIFFLAGS,
        FlagsIoctl::Set => libc::SIOCSIFFLAGS,
    };
    // SAFETY: `sock` is an open socket for the whole call (borrowed), and
    // `req` points to a live, exclusively borrowed buffer with the size and
    // layout of `struct ifreq` (checked at compile time above) and a
    // NUL-terminated name. These two requests access only that struct:
    // SIOCGIFFLAGS writes the short at `ifr_flags`, a plain integer for
    // which any value is valid; SIOCSIFFLAGS only reads it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, std::ptr::from_mut(req)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor from `first` on close-on-exec, so that a
/// descriptor leaked to us by mistake (say, a host directory handle) never
/// reaches the step's command. Needs Linux 5.11, as `userxattr` does.
///
/// Neither nix nor rustix wraps `close_range(2)`; doing the same safely would
/// mean listing `/proc/self/fd` and borrowing each raw number, which is no
/// less unsafe.
pub(super) fn set_cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC closes nothing and
    // reads or writes no memory of ours: it only sets the close-on-exec flag,
    // so every descriptor that Rust objects own stays open and valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `KEYCTL_JOIN_SESSION_KEYRING` of `<linux/keyctl.h>`.
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;

/// Gives the calling process a new anonymous session keyring, so the step
/// cannot reach the keys of the builder's session (its inherited one). A
/// kernel without keyrings (ENOSYS) has none to reach: that is success too.
pub(super) fn join_new_session_keyring() -> io::Result<()> {
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, name) reads the name only,
    // and a null name (an anonymous keyring) means it reads no memory at
    // all; it writes none. It changes only this process's credentials.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// An operation number `keyctl` does not have.
const KEYCTL_UNKNOWN_OPERATION: libc::c_long = 0x7fff_ffff;

/// `keyctl` with an operation the kernel does not know: it answers
/// EOPNOTSUPP, so EPERM means a seccomp filter refuses every `keyctl`.
pub(super) fn keyctl_unknown_operation() -> io::Result<()> {
    // SAFETY: the kernel rejects an unknown operation before looking at any
    // other argument; no memory of ours is read or written.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_UNKNOWN_OPERATION) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the tests' probe, running as a step, asks the kernel, to show what
/// the sandbox lets through. Every argument is fixed and points nowhere (or
/// at a live local), so each call is sound whatever the kernel answers.
#[cfg(test)]
pub(super) mod probe {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

    /// A call the probe makes, with arguments that, without a filter, get
    /// an answer other than EPERM (success, EFAULT, EINVAL), so a refusal
    /// by the filter shows.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Call {
        /// `keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)`: the
        /// session keyring's serial number.
        SessionKeyring,
        /// `add_key(NULL, …)`: EFAULT.
        AddKey,
        /// `perf_event_open(NULL, …)`: EFAULT.
        PerfEventOpen,
        /// `userfaultfd(UFFD_USER_MODE_ONLY)`: a descriptor, closed again.
        Userfaultfd,
        /// `clone3(NULL, 0)`: EINVAL.
        Clone3,
        /// `mount(NULL, NULL, …)`: EFAULT.
        Mount,
        /// `clock_settime(CLOCK_REALTIME, NULL)`: EFAULT.
        ClockSettime,
        /// `adjtimex(NULL)`: EFAULT.
        Adjtimex,
        /// `personality(READ_IMPLIES_EXEC)`: the old persona.
        ReadImpliesExec,
        /// `unshare(CLONE_NEWUSER)`: success.
        UnshareUser,
        /// getpid through the x32 ABI: ENOSYS on a kernel without x32.
        X32Getpid,
        /// getpid through the i386 entry (`int 0x80`): the pid.
        I386Getpid,
    }

    /// The call's return value, or its errno.
    pub(crate) fn call(c: Call) -> Result<i64, i32> {
        const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
        const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
        const UFFD_USER_MODE_ONLY: libc::c_long = 1;
        const READ_IMPLIES_EXEC: libc::c_ulong = 0x0040_0000;
        let null = std::ptr::null::<libc::c_void>();
        // SAFETY: each call below passes only integers and null pointers,
        // which the kernel checks and refuses (EFAULT) without touching our
        // memory; none of them changes memory or descriptors of ours, except
        // userfaultfd's new descriptor, which is owned and closed here.
        let r = unsafe {
            match c {
                Call::SessionKeyring => libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_GET_KEYRING_ID,
                    KEY_SPEC_SESSION_KEYRING,
                    0,
                ),
                Call::AddKey => libc::syscall(libc::SYS_add_key, null, null, null, 0, 0),
                Call::PerfEventOpen => libc::syscall(libc::SYS_perf_event_open, null, 0, -1, -1, 0),
                Call::Userfaultfd => {
                    let fd = libc::syscall(libc::SYS_userfaultfd, UFFD_USER_MODE_ONLY);
                    if fd >= 0 {
                        drop(OwnedFd::from_raw_fd(fd as i32));
                    }
                    fd
                }
                Call::Clone3 => libc::syscall(libc::SYS_clone3, null, 0),
                Call::Mount => libc::syscall(libc::SYS_mount, null, null, null, 0, null),
                Call::ClockSettime => {
                    libc::syscall(libc::SYS_clock_settime, libc::CLOCK_REALTIME, null)
                }
                Call::Adjtimex => libc::syscall(libc::SYS_adjtimex, null),
                Call::ReadImpliesExec => libc::syscall(libc::SYS_personality, READ_IMPLIES_EXEC),
                Call::UnshareUser => libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
                Call::X32Getpid => libc::syscall(libc::SYS_getpid | 0x4000_0000),
                Call::I386Getpid => {
                    let ret: i64;
                    // getpid is number 20 of the i386 table.
                    std::arch::asm!(
                        "int 0x80",
                        inlateout("rax") 20i64 => ret,
                        out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                        options(nostack)
                    );
                    return if ret < 0 { Err(-ret as i32) } else { Ok(ret) };
                }
            }
        };
        if r < 0 {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(r)
        }
    }

    /// `ioctl(fd, TIOCSTI, &byte)`: push `byte` into the terminal's input.
    /// With `high_bits`, the request has its upper 32 bits set, which the
    /// kernel ignores (it reads an `unsigned int`) and a filter must too.
    pub(crate) fn tiocsti(fd: BorrowedFd<'_>, byte: u8, high_bits: bool) -> io::Result<()> {
        let mut request: u64 = libc::TIOCSTI;
        if high_bits {
            request |= 0xffff_ffff_0000_0000;
        }
        // SAFETY: `fd` is open for the call; TIOCSTI reads one byte through
        // the pointer, which points at a live local.
        let r =
            unsafe { libc::syscall(libc::SYS_ioctl, fd.as_raw_fd(), request, &byte as *const u8) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_name_that_does_not_fit_is_refused_before_any_ioctl() {
        let err = set_interface_up("a-name-longer-than-ifnamsiz").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = set_interface_up("l\0o").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
