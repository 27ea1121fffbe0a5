//! The builder's own user namespace: how a non-root builder with
//! subordinate ids works on files owned by them, as `podman unshare` and
//! buildah's re-exec at start-up do for rootless builds.
//!
//! A build touches its files on the host, outside any step's sandbox: it
//! applies layers to the working rootfs (giving each entry the host owner
//! its container owner maps to), copies trees, reads what a step wrote to
//! snapshot it, and deletes its scratch directory. With a subordinate
//! mapping most of those owners are not the user: an unprivileged process
//! cannot chown to them, create files in their directories, read their
//! 0600 files or delete their trees. As root of a user namespace with the
//! same maps, the builder can do all of that for exactly those ids
//! (`CAP_CHOWN`, `CAP_DAC_OVERRIDE` and `CAP_FOWNER` hold there for files
//! whose owner and group are mapped) and for nothing else: another host
//! user's file is still `nobody` to it, and keeps its permission bits.
//!
//! Why the whole builder, once, rather than each operation: every such
//! operation (extraction, diffing, the tree copy, COPY's reads of the
//! image, ADD's unpacking, the layer writer's reads, the scratch's
//! removal) then runs on the code path a root builder runs, unchanged. A
//! helper process per operation would need each of them as a message and
//! its own error path; deferring the chowns to a step's stage 1 would
//! leave the reads, the writes into subordinate-owned directories and the
//! deletions failing. Inside the namespace the builder is root, so its
//! steps get a user namespace nested in it ([`IdMapping::nested`]: each of
//! its ids onto itself), whose maps it writes itself as a root builder
//! does, and [`IdMapping::detect`] says so from the moment it entered.
//!
//! How: a process may map only its own id into its namespace, and
//! `newuidmap` started from inside the namespace is no longer setuid there.
//! So before unsharing, the builder starts a map writer (this binary, as
//! [`REEXEC_ARG`] `map-ids`), which stays outside; it then unshares its
//! user namespace and sends the writer [`Message::MapParent`] with its
//! subordinate mapping; the writer runs `newuidmap`/`newgidmap` for its
//! parent and answers [`Message::MappingWritten`]. No credentials change:
//! the user's own uid and gid are container 0 of those maps, so once they
//! are written the builder is uid and gid 0 there, with every capability in
//! the namespace (its creator has them all). Its supplementary groups stay:
//! they read as `nogroup` inside but still grant what the host's permission
//! bits give them. Only the user namespace changes: the builder keeps the
//! host's mounts, network and pids, and what it creates belongs to the user
//! on the host, as before.
//!
//! Must never: change anything for root (root chowns directly), or run
//! after a thread has started (the kernel refuses `unshare(CLONE_NEWUSER)`
//! to a multi-threaded process). Once the namespace exists there is no way
//! back out of it, so a failure after that point is an error, never a
//! fallback.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nix::sched::{CloneFlags, unshare};

use super::idmap::{IdMapping, MapWriter};
use super::wire::Message;
use super::{REEXEC_ARG, SETUP_FAILED_EXIT, SandboxError, SetupError, stage1};

/// `argv[2]` of the map writer.
pub(super) const MAP_WRITER_ARG: &str = "map-ids";

/// The subordinate mapping of the namespace this process entered, if any.
static ENTERED: OnceLock<IdMapping> = OnceLock::new();

/// What [`enter_build_namespace`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildNamespace {
    /// Nothing to enter: root chowns directly, and a user with a single id
    /// (no subordinate ids, or no `newuidmap`) owns nothing it could gain.
    NotNeeded,
    /// The builder is root of a user namespace with these maps.
    Entered(IdMapping),
    /// The kernel refused a user namespace (the reason says what to
    /// change). The build goes on as the user; a step, or a layer with
    /// files of other ids, then fails saying so.
    Refused(SetupError),
}

/// The subordinate mapping of the user namespace this process entered
/// with [`enter_build_namespace`], if it did.
pub(super) fn entered() -> Option<&'static IdMapping> {
    ENTERED.get()
}

/// Makes this process root of a user namespace mapping the user's
/// subordinate ids, when it is not root and has them (see the module
/// documentation). Call it from `main()` before any thread starts, and
/// before the first [`IdMapping::detect`].
pub fn enter_build_namespace() -> Result<BuildNamespace, SandboxError> {
    if let Some(ids) = ENTERED.get() {
        return Ok(BuildNamespace::Entered(ids.clone()));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(BuildNamespace::NotNeeded);
    }
    let ids = IdMapping::detect()?;
    if ids.writer() != MapWriter::Helpers {
        return Ok(BuildNamespace::NotNeeded);
    }
    let (mut writer_ctrl, mut writer) = start_map_writer()?;
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
        // The writer reads the end of its socket and exits.
        drop(writer_ctrl);
        let _ = writer.wait();
        let refused = stage1::user_namespace_refused(e);
        return match e {
            // Threads: a bug of the caller's, not the host's settings.
            nix::Error::EINVAL => Err(refused.into()),
            _ => Ok(BuildNamespace::Refused(refused)),
        };
    }
    let reply = Message::MapParent(ids.clone())
        .write_to(&mut writer_ctrl)
        .map_err(|source| SandboxError::Io {
            what: "asking the map writer for the builder's id maps",
            source,
        })
        .and_then(|()| {
            Message::read_from(&mut writer_ctrl).map_err(|e| SetupError::protocol(e).into())
        });
    drop(writer_ctrl);
    let status = writer.wait().map_err(|source| SandboxError::Io {
        what: "waiting for the map writer",
        source,
    })?;
    match reply? {
        Some(Message::MappingWritten) => {}
        Some(Message::SetupFailed(e)) => return Err(e.into()),
        Some(other) => {
            return Err(SetupError::protocol(format!(
                "expected `{}` from the map writer, got `{}`",
                Message::MappingWritten.tag(),
                other.tag()
            ))
            .into());
        }
        None => return Err(SandboxError::NoReport { status }),
    }
    if !(nix::unistd::getuid().is_root() && nix::unistd::getgid().as_raw() == 0) {
        return Err(SetupError::step(
            "cannot become root of the builder's user namespace",
            format!(
                "its maps were written, but the builder is uid {} gid {} in it",
                nix::unistd::getuid(),
                nix::unistd::getgid()
            ),
        )
        .into());
    }
    let _ = ENTERED.set(ids.clone());
    Ok(BuildNamespace::Entered(ids))
}

/// Starts the map writer with a control socket as its stdin. It waits for
/// [`Message::MapParent`] before doing anything.
fn start_map_writer() -> Result<(UnixStream, std::process::Child), SandboxError> {
    let io_err = |what| move |source| SandboxError::Io { what, source };
    let exe = std::env::current_exe().map_err(SandboxError::CurrentExe)?;
    let (ctrl, child_end) =
        UnixStream::pair().map_err(io_err("creating the map writer's socket"))?;
    let mut cmd = Command::new(&exe);
    cmd.arg(REEXEC_ARG)
        .arg(MAP_WRITER_ARG)
        .stdin(Stdio::from(OwnedFd::from(child_end)))
        .stdout(Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|source| SandboxError::Spawn { exe, source })?;
    // Close our copy of the child's end, so that the writer alone holds it.
    drop(cmd);
    Ok((ctrl, child))
}

/// The map writer: waits for its parent to ask, writes the parent's maps
/// with `newuidmap`/`newgidmap`, answers, exits. A parent that closes the
/// socket without asking (its namespace was refused) is no error.
pub(super) fn writer_main() -> ! {
    let Ok(mut ctrl) = stage1::control_socket() else {
        std::process::exit(SETUP_FAILED_EXIT);
    };
    let (reply, code) = match write_parent_maps(&mut ctrl) {
        Ok(false) => std::process::exit(0),
        Ok(true) => (Message::MappingWritten, 0),
        Err(e) => (Message::SetupFailed(e), SETUP_FAILED_EXIT),
    };
    // A parent that is gone has no use for the answer.
    let _ = reply.write_to(&mut ctrl);
    std::process::exit(code)
}

/// True when the maps were written, false when the parent never asked.
fn write_parent_maps(ctrl: &mut UnixStream) -> Result<bool, SetupError> {
    let ids = match Message::read_from(ctrl).map_err(SetupError::protocol)? {
        Some(Message::MapParent(ids)) => ids,
        Some(other) => {
            return Err(SetupError::protocol(format!(
                "the map writer expected `{}`, got `{}`",
                Message::MapParent(IdMapping::single_for(0, 0)).tag(),
                other.tag()
            )));
        }
        None => return Ok(false),
    };
    // Only the setuid helpers can give a non-root parent more than its own
    // id; any other writer means a confused parent.
    if ids.writer() != MapWriter::Helpers {
        return Err(SetupError::protocol(
            "the map writer writes subordinate maps only (newuidmap/newgidmap)",
        ));
    }
    let parent = u32::try_from(nix::unistd::getppid().as_raw())
        .map_err(|e| SetupError::step("cannot find the builder's pid", e))?;
    ids.write_for(parent)
        .map_err(|e| SetupError::step("cannot map the builder's ids", e))?;
    Ok(true)
}
