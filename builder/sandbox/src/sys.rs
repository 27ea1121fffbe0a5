//! The two kernel calls the sandbox needs that neither std, nix nor rustix
//! offers as safe functions: bringing a network interface up (the
//! `SIOCGIFFLAGS`/`SIOCSIFFLAGS` ioctls; rustix and nix expose ioctls only as
//! `unsafe`) and keeping stray descriptors from being inherited
//! (`close_range`, which neither wraps). Everything unsafe in the sandbox
//! lives here, each block with the reason it is sound; this module must not
//! grow a call that a safe wrapper covers.
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
