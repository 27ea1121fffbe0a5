//! The few kernel calls the sandbox needs that neither std nor nix offers as
//! safe functions: bringing a network interface up (the `SIOCSIFFLAGS`
//! ioctl), limiting the capabilities a step's command starts with
//! (`PR_CAPBSET_DROP`, `capset`), keeping stray descriptors from being
//! inherited (`close_range`), and watching a child's exit (`pidfd_open`). Everything unsafe in the sandbox lives
//! here, each block with the reason it is sound.
#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Sets `IFF_UP` on the interface `name` of the current network namespace.
pub(super) fn set_interface_up(name: &str) -> io::Result<()> {
    // Any socket serves as the handle for interface ioctls; a UDP socket
    // bound to the wildcard needs no route, so it works before `lo` is up.
    let sock = UdpSocket::bind(("0.0.0.0", 0))?;
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of
    // integers and addresses) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `sock` is an open socket for the whole call and `req` a valid,
    // NUL-terminated `ifreq` the kernel fills in (SIOCGIFFLAGS writes only
    // `ifr_flags` inside the struct).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just initialised the `ifru_flags` member of the
    // union, so reading and updating it is reading an initialised integer.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability not in `keep` from the bounding set (which caps
/// what an exec'd root process gets), clears the ambient set, and clears the
/// inheritable set (which the bounding set does not limit for root).
pub(super) fn limit_capabilities(keep: &[u32]) -> io::Result<()> {
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes an integer and touches no memory of
        // ours.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if r != 0 {
            let err = io::Error::last_os_error();
            // EINVAL: past the kernel's last capability; we are done.
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(err);
        }
    }
    // SAFETY: integer arguments only, no memory of ours.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    clear_inheritable()
}

/// `struct __user_cap_header_struct` of `<linux/capability.h>`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them (64 bits).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn clear_inheritable() -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are the layout capget(2) expects for
    // version 3 (a header and two data structs), alive for the call.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: as above; capset(2) only reads them.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor from `first` on close-on-exec, so that a
/// descriptor leaked to us by mistake (say, a host directory handle) never
/// reaches the step's command. Needs Linux 5.11, as `userxattr` does.
pub(super) fn set_cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets descriptor
    // flags; it reads and writes no memory of ours. Descriptors that Rust
    // objects own stay open and valid.
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

/// A descriptor that polls readable once process `pid` (our child) has
/// exited, reaped or not. Close-on-exec. Needs Linux 5.3.
pub(super) fn pidfd_open(pid: nix::unistd::Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes two integers and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just created this descriptor for us; nothing else
    // owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
