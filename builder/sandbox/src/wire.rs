//! The messages the host and the two sandbox stages exchange over their Unix
//! sockets: the [`Message`] enum, its one encoding ([`Message::write_to`])
//! and its one decoding ([`Message::read_from`]).
//!
//! A message is a netstring (`<len>:<bytes>,`) holding a sequence of
//! netstrings: the tag, then the fields. Fields are raw bytes, so paths,
//! arguments and environment values travel unchanged (newlines included).
//! No serde: the format is small, fixed, and versioned by [`PROTOCOL`], which
//! the first field of a job carries so a stale helper binary is refused with a
//! clear message instead of misreading fields.
//!
//! Tags and field layouts are spelled in this file only; everywhere else a
//! message is a [`Message`] variant, so a misspelt message is a compile
//! error. Decoding never panics and never trusts a length: whatever arrives
//! on a socket becomes a [`Message`] or a [`WireError`] saying what was wrong
//! with it.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::str::FromStr;

use super::idmap::{IdMapping, IdRange, MapWriter};
use super::{Job, Limits, Network, RootfsSpec, RunSpec, SetupError};

/// Version of this format; bump on any change to a message's tag or fields.
pub(super) const PROTOCOL: &str = "strata-sandbox/3";

/// Largest message accepted: a job with a huge environment still fits.
const MAX_MESSAGE: usize = 64 << 20;

/// Longest frame length header, in digits (`MAX_MESSAGE` needs 8).
const MAX_LENGTH_DIGITS: usize = 10;

/// Most bytes of a bad field quoted in a [`WireError`].
const EXCERPT: usize = 64;

/// One message of the stage protocol. The arrows say who sends it to whom;
/// `lib.rs` shows the whole exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Message {
    /// host → stage 1, then stage 1 → stage 2: everything the step needs.
    /// Boxed: it is many times larger than any other message.
    Job(Box<Job>),
    /// stage 1 → host: the user namespace exists; write its id maps. Sent
    /// only when the host (or its helpers) writes them.
    WriteMapping,
    /// host → stage 1: the id maps are written. Also map writer → builder,
    /// answering [`Message::MapParent`].
    MappingWritten,
    /// builder → its map writer (`userns.rs`): the builder has unshared its
    /// own user namespace; write these maps for it, the writer's parent.
    MapParent(IdMapping),
    /// stage 2 → stage 1 → host: the sandbox created this mount point (an
    /// in-image path such as `/proc`) because the image lacked it.
    MountPointCreated(String),
    /// stage 2 → stage 1: set up, about to exec the command once told to.
    Ready,
    /// stage 1 → stage 2: stage 1 is alive to supervise: exec the command.
    Go,
    /// stage 1 → host: the overlay probe mounted the root filesystem.
    ProbeSucceeded,
    /// stage 1 → host: the command ended, and every process of the step is
    /// gone.
    Exited(CommandExit),
    /// host → stage 1: the time limit passed; kill the step (and still
    /// report [`Message::Exited`]).
    Kill,
    /// any stage → host (stage 2's through stage 1): the sandbox could not be
    /// set up, so the command did not run.
    SetupFailed(SetupError),
}

/// How stage 2 — the command, as PID 1 of the step — ended, as stage 1 saw
/// it reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommandExit {
    Code(i32),
    Signal(i32),
}

/// Why bytes read from a stage socket are not a [`Message`].
#[derive(Debug, thiserror::Error)]
pub(super) enum WireError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the stream ended inside a message")]
    Truncated,
    #[error(
        "expected a message length (1 to {MAX_LENGTH_DIGITS} digits, then ':'), \
         found byte {found:#04x}"
    )]
    BadHeader { found: u8 },
    #[error("a message announces {announced} bytes or more; the limit is {MAX_MESSAGE}")]
    TooLarge { announced: usize },
    #[error("expected ',' after a message, found byte {found:#04x}")]
    BadTerminator { found: u8 },
    #[error("malformed field in a message: {what}")]
    BadFieldFrame { what: &'static str },
    #[error("message without a tag")]
    NoTag,
    #[error("unknown message tag {tag:?}")]
    UnknownTag { tag: String },
    #[error("`{tag}` message is too short")]
    MissingField { tag: &'static str },
    #[error("`{tag}` message has fields after its last one")]
    TrailingFields { tag: &'static str },
    #[error("`{tag}` message: expected {expected}, found {found:?}")]
    BadField {
        tag: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("host speaks {found}, this helper {PROTOCOL}: rebuild the binary")]
    ProtocolMismatch { found: String },
}

/// The tag of each message on the wire, spelled once for encoder and
/// decoder.
mod tag {
    pub const JOB: &str = "job";
    pub const WRITE_MAPPING: &str = "unshared";
    pub const MAPPING_WRITTEN: &str = "mapped";
    pub const MAP_PARENT: &str = "map-parent";
    pub const MOUNT_POINT_CREATED: &str = "mountpoint";
    pub const READY: &str = "ready";
    pub const GO: &str = "go";
    pub const PROBE_SUCCEEDED: &str = "probe-ok";
    pub const EXITED: &str = "exit";
    pub const KILL: &str = "kill";
    pub const SETUP_FAILED: &str = "error";
}

impl Message {
    /// The message's tag on the wire, also its name in error messages.
    pub fn tag(&self) -> &'static str {
        match self {
            Message::Job(_) => tag::JOB,
            Message::WriteMapping => tag::WRITE_MAPPING,
            Message::MappingWritten => tag::MAPPING_WRITTEN,
            Message::MapParent(_) => tag::MAP_PARENT,
            Message::MountPointCreated(_) => tag::MOUNT_POINT_CREATED,
            Message::Ready => tag::READY,
            Message::Go => tag::GO,
            Message::ProbeSucceeded => tag::PROBE_SUCCEEDED,
            Message::Exited(_) => tag::EXITED,
            Message::Kill => tag::KILL,
            Message::SetupFailed(_) => tag::SETUP_FAILED,
        }
    }

    /// Writes the message as one frame and flushes it.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())?;
        w.flush()
    }

    /// Reads one message; `Ok(None)` at a clean end of stream (before the
    /// first byte of a frame).
    pub fn read_from(r: &mut impl Read) -> Result<Option<Message>, WireError> {
        match read_frame(r)? {
            Some(body) => Message::decode(&body).map(Some),
            None => Ok(None),
        }
    }

    /// The whole frame: the tag and fields, wrapped in one netstring.
    fn encode(&self) -> Vec<u8> {
        let mut body = Body(Vec::new());
        body.field(self.tag());
        match self {
            Message::Job(job) => put_job(&mut body, job),
            Message::MapParent(ids) => {
                body.field(PROTOCOL);
                put_ids(&mut body, ids);
            }
            Message::MountPointCreated(path) => {
                body.field(path);
            }
            Message::Exited(exit) => {
                let (kind, n) = match exit {
                    CommandExit::Code(n) => ("code", n),
                    CommandExit::Signal(n) => ("signal", n),
                };
                body.field(kind).field(n.to_string());
            }
            Message::SetupFailed(e) => put_setup_error(&mut body, e),
            Message::WriteMapping
            | Message::MappingWritten
            | Message::Ready
            | Message::Go
            | Message::ProbeSucceeded
            | Message::Kill => {}
        }
        let mut frame = Vec::with_capacity(body.0.len() + 12);
        put_netstring(&mut frame, &body.0);
        frame
    }

    /// A message from the inside of a frame: the tag, then the fields.
    fn decode(body: &[u8]) -> Result<Message, WireError> {
        let mut rest = body;
        if rest.is_empty() {
            return Err(WireError::NoTag);
        }
        let tag_bytes = split_netstring(&mut rest)?;
        let Some(tag) = std::str::from_utf8(tag_bytes).ok().and_then(known_tag) else {
            return Err(WireError::UnknownTag {
                tag: excerpt(tag_bytes),
            });
        };
        let mut f = Fields { tag, rest };
        let msg = match tag {
            tag::JOB => Message::Job(Box::new(take_job(&mut f)?)),
            tag::WRITE_MAPPING => Message::WriteMapping,
            tag::MAPPING_WRITTEN => Message::MappingWritten,
            tag::MAP_PARENT => {
                take_protocol(&mut f)?;
                Message::MapParent(take_ids(&mut f)?)
            }
            tag::MOUNT_POINT_CREATED => Message::MountPointCreated(f.string()?),
            tag::READY => Message::Ready,
            tag::GO => Message::Go,
            tag::PROBE_SUCCEEDED => Message::ProbeSucceeded,
            tag::EXITED => Message::Exited(match f.bytes()? {
                b"code" => CommandExit::Code(f.number()?),
                b"signal" => CommandExit::Signal(f.number()?),
                other => return Err(f.bad("`code` or `signal`", other)),
            }),
            tag::KILL => Message::Kill,
            tag::SETUP_FAILED => Message::SetupFailed(take_setup_error(&mut f)?),
            _ => return Err(WireError::UnknownTag { tag: tag.into() }),
        };
        f.finish()?;
        Ok(msg)
    }
}

/// `tag` as the decoder's `&'static str`, if it is one of the protocol's.
fn known_tag(tag: &str) -> Option<&'static str> {
    [
        tag::JOB,
        tag::WRITE_MAPPING,
        tag::MAPPING_WRITTEN,
        tag::MAP_PARENT,
        tag::MOUNT_POINT_CREATED,
        tag::READY,
        tag::GO,
        tag::PROBE_SUCCEEDED,
        tag::EXITED,
        tag::KILL,
        tag::SETUP_FAILED,
    ]
    .into_iter()
    .find(|&known| known == tag)
}

/// Reads the inside of one frame; `None` at end of stream before it starts.
fn read_frame(r: &mut impl Read) -> Result<Option<Vec<u8>>, WireError> {
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let mut b = [0u8; 1];
        match r.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && digits == 0 => return Ok(None),
            Err(e) => return Err(truncated_or_io(e)),
        }
        match b[0] {
            d @ b'0'..=b'9' if digits < MAX_LENGTH_DIGITS => {
                len = len * 10 + usize::from(d - b'0');
                digits += 1;
                // Refused before any allocation, and before a peer can make
                // us read the rest of a huge header.
                if len > MAX_MESSAGE {
                    return Err(WireError::TooLarge { announced: len });
                }
            }
            b':' if digits > 0 => break,
            found => return Err(WireError::BadHeader { found }),
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(truncated_or_io)?;
    let mut end = [0u8; 1];
    r.read_exact(&mut end).map_err(truncated_or_io)?;
    if end[0] != b',' {
        return Err(WireError::BadTerminator { found: end[0] });
    }
    Ok(Some(body))
}

fn truncated_or_io(e: io::Error) -> WireError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        WireError::Truncated
    } else {
        WireError::Io(e)
    }
}

fn put_netstring(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
    out.push(b',');
}

/// Takes the netstring at the start of `rest`, leaving what follows it.
fn split_netstring<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    let bad = |what| WireError::BadFieldFrame { what };
    let buf: &'a [u8] = rest;
    let colon = buf
        .iter()
        .position(|&b| b == b':')
        .ok_or(bad("no ':' after its length"))?;
    let digits = &buf[..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad("its length is not a decimal number"));
    }
    let len = digits
        .iter()
        .try_fold(0usize, |n, &d| {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })
        .ok_or(bad("it runs past the end of its message"))?;
    let start = colon + 1;
    let (field, tail) = start
        .checked_add(len)
        .and_then(|end| Some((buf.get(start..end)?, buf.get(end..)?)))
        .ok_or(bad("it runs past the end of its message"))?;
    let Some((&b',', tail)) = tail.split_first() else {
        return Err(bad("it does not end with ','"));
    };
    *rest = tail;
    Ok(field)
}

/// At most [`EXCERPT`] bytes of `bytes`, as text for an error message.
fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(EXCERPT)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < bytes.len() {
        s.push('…');
    }
    s
}

/// A message under construction: appends fields to the inside of a frame.
struct Body(Vec<u8>);

impl Body {
    fn field(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        put_netstring(&mut self.0, bytes.as_ref());
        self
    }
}

/// Reads a message's fields in order, with errors naming the message.
struct Fields<'a> {
    tag: &'static str,
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        if self.rest.is_empty() {
            return Err(WireError::MissingField { tag: self.tag });
        }
        split_netstring(&mut self.rest)
    }

    fn string(&mut self) -> Result<String, WireError> {
        let b = self.bytes()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.bad("UTF-8 text", b)),
        }
    }

    fn path(&mut self) -> Result<PathBuf, WireError> {
        Ok(PathBuf::from(OsStr::from_bytes(self.bytes()?)))
    }

    fn number<T: FromStr>(&mut self) -> Result<T, WireError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.bad("a number", b))
    }

    /// A limit: a number, or [`NO_LIMIT`] for none.
    fn limit<T: FromStr>(&mut self) -> Result<Option<T>, WireError> {
        let b = self.bytes()?;
        if b == NO_LIMIT.as_bytes() {
            return Ok(None);
        }
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| self.bad("a number or `-`", b))
    }

    /// The value paired with the next field's word in `words`.
    fn word<T: Copy>(
        &mut self,
        expected: &'static str,
        words: &[(&str, T)],
    ) -> Result<T, WireError> {
        let b = self.bytes()?;
        words
            .iter()
            .find(|(w, _)| w.as_bytes() == b)
            .map(|&(_, v)| v)
            .ok_or_else(|| self.bad(expected, b))
    }

    fn bad(&self, expected: &'static str, found: &[u8]) -> WireError {
        WireError::BadField {
            tag: self.tag,
            expected,
            found: excerpt(found),
        }
    }

    /// Checks that every field was read.
    fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingFields { tag: self.tag })
        }
    }
}

const PROBE_WORDS: [(&str, bool); 2] = [("probe", true), ("run", false)];
const WRITER_WORDS: [(&str, MapWriter); 3] = [
    ("host", MapWriter::Host),
    ("helpers", MapWriter::Helpers),
    ("child", MapWriter::Child),
];
const HAS_USER_WORDS: [(&str, bool); 2] = [("1", true), ("0", false)];
const NETWORK_WORDS: [(&str, Network); 2] = [("none", Network::None), ("host", Network::Host)];
const RLIMIT_WORDS: [(&str, bool); 2] = [("rlimits", true), ("cgroup", false)];
/// An absent (unbounded) limit.
const NO_LIMIT: &str = "-";

/// The word standing for `value` in `words`, one of the tables above, each
/// of which lists every value of its type.
fn word_for<T: PartialEq>(words: &[(&'static str, T)], value: T) -> &'static str {
    words
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("", |&(w, _)| w)
}

/// Field order of a job: protocol, host pid, probe, rootfs, ids, spec (its
/// limits last, then whether stage 2 sets them as rlimits). The spec's
/// `timeout` is the host's business and does not travel.
fn put_job(b: &mut Body, job: &Job) {
    b.field(PROTOCOL)
        .field(job.host_pid.to_string())
        .field(word_for(&PROBE_WORDS, job.probe));
    match &job.spec.rootfs {
        RootfsSpec::Overlay { lower, upper, work } => {
            b.field("overlay").field(lower.len().to_string());
            for l in lower {
                b.field(l.as_os_str().as_bytes());
            }
            b.field(upper.as_os_str().as_bytes())
                .field(work.as_os_str().as_bytes());
        }
        RootfsSpec::Copy { root } => {
            b.field("copy").field(root.as_os_str().as_bytes());
        }
    }
    put_ids(b, &job.ids);
    let s = &job.spec;
    b.field(s.argv.len().to_string());
    for a in &s.argv {
        b.field(a);
    }
    b.field(s.env.len().to_string());
    for (k, v) in &s.env {
        b.field(k).field(v);
    }
    b.field(&s.cwd);
    match &s.user {
        Some(u) => b.field(word_for(&HAS_USER_WORDS, true)).field(u),
        None => b.field(word_for(&HAS_USER_WORDS, false)).field(""),
    };
    b.field(word_for(&NETWORK_WORDS, s.network))
        .field(&s.hostname);
    let limit = |n: Option<u64>| n.map_or_else(|| NO_LIMIT.to_owned(), |n| n.to_string());
    b.field(limit(s.limits.memory))
        .field(limit(s.limits.pids))
        .field(limit(s.limits.cpu_millis.map(u64::from)))
        .field(word_for(&RLIMIT_WORDS, job.rlimits));
}

/// Field order of an id mapping: its writer, then the uid extents and the
/// gid extents, each list preceded by its length.
fn put_ids(b: &mut Body, ids: &IdMapping) {
    b.field(word_for(&WRITER_WORDS, ids.writer()));
    for extents in [ids.uids(), ids.gids()] {
        b.field(extents.len().to_string());
        for e in extents {
            b.field(e.container.to_string())
                .field(e.host.to_string())
                .field(e.len.to_string());
        }
    }
}

fn take_ids(f: &mut Fields<'_>) -> Result<IdMapping, WireError> {
    let writer = f.word("a map writer", &WRITER_WORDS)?;
    let mut extents = [Vec::new(), Vec::new()];
    for list in &mut extents {
        // No capacity from the count: it is only as true as the fields
        // that follow.
        let n: usize = f.number()?;
        for _ in 0..n {
            list.push(take_extent(f)?);
        }
    }
    let [uids, gids] = extents;
    Ok(IdMapping::from_parts(uids, gids, writer))
}

/// The first field of a message that a stale helper must not misread.
fn take_protocol(f: &mut Fields<'_>) -> Result<(), WireError> {
    let protocol = f.bytes()?;
    if protocol != PROTOCOL.as_bytes() {
        return Err(WireError::ProtocolMismatch {
            found: excerpt(protocol),
        });
    }
    Ok(())
}

fn take_job(f: &mut Fields<'_>) -> Result<Job, WireError> {
    take_protocol(f)?;
    let host_pid = f.number()?;
    let probe = f.word("`probe` or `run`", &PROBE_WORDS)?;
    let rootfs = match f.bytes()? {
        b"overlay" => {
            let n: usize = f.number()?;
            let lower = (0..n).map(|_| f.path()).collect::<Result<_, _>>()?;
            RootfsSpec::Overlay {
                lower,
                upper: f.path()?,
                work: f.path()?,
            }
        }
        b"copy" => RootfsSpec::Copy { root: f.path()? },
        other => return Err(f.bad("a rootfs kind (`overlay` or `copy`)", other)),
    };
    let ids = take_ids(f)?;
    let n: usize = f.number()?;
    let argv = (0..n).map(|_| f.string()).collect::<Result<_, _>>()?;
    let n: usize = f.number()?;
    let env = (0..n)
        .map(|_| Ok((f.string()?, f.string()?)))
        .collect::<Result<_, WireError>>()?;
    let cwd = f.string()?;
    let has_user = f.word("`0` or `1`", &HAS_USER_WORDS)?;
    let user = f.string()?;
    let network = f.word("a network (`none` or `host`)", &NETWORK_WORDS)?;
    let hostname = f.string()?;
    let limits = Limits {
        memory: f.limit()?,
        pids: f.limit()?,
        cpu_millis: f.limit()?,
    };
    let rlimits = f.word("`rlimits` or `cgroup`", &RLIMIT_WORDS)?;
    Ok(Job {
        spec: RunSpec {
            rootfs,
            argv,
            env,
            cwd,
            user: has_user.then_some(user),
            network,
            timeout: None,
            hostname,
            limits,
        },
        ids,
        host_pid,
        probe,
        rlimits,
    })
}

/// An id extent, refused unless both of its ranges fit in 32-bit ids (as
/// the kernel requires), so id arithmetic on it cannot overflow.
fn take_extent(f: &mut Fields<'_>) -> Result<IdRange, WireError> {
    let e = IdRange {
        container: f.number()?,
        host: f.number()?,
        len: f.number()?,
    };
    let fits = |start: u32| u64::from(start) + u64::from(e.len) <= 1 << 32;
    if !fits(e.container) || !fits(e.host) {
        let found = format!("{} {} {}", e.container, e.host, e.len);
        return Err(f.bad("an id extent within the 32-bit id range", found.as_bytes()));
    }
    Ok(e)
}

fn put_setup_error(b: &mut Body, e: &SetupError) {
    match e {
        SetupError::Step { step, detail } => b.field("step").field(step).field(detail),
        SetupError::CommandNotFound { command } => b.field("not-found").field(command),
        SetupError::CommandNotExecutable { command, detail } => {
            b.field("not-executable").field(command).field(detail)
        }
        SetupError::UnknownUser { user, reason } => {
            b.field("unknown-user").field(user).field(reason)
        }
        SetupError::NotMapped { kind, id, mapping } => b
            .field("not-mapped")
            .field(kind)
            .field(id.to_string())
            .field(mapping),
        SetupError::Protocol { detail } => b.field("protocol").field(detail),
    };
}

fn take_setup_error(f: &mut Fields<'_>) -> Result<SetupError, WireError> {
    Ok(match f.bytes()? {
        b"step" => SetupError::Step {
            step: f.string()?,
            detail: f.string()?,
        },
        b"not-found" => SetupError::CommandNotFound {
            command: f.string()?,
        },
        b"not-executable" => SetupError::CommandNotExecutable {
            command: f.string()?,
            detail: f.string()?,
        },
        b"unknown-user" => SetupError::UnknownUser {
            user: f.string()?,
            reason: f.string()?,
        },
        b"not-mapped" => SetupError::NotMapped {
            kind: f.string()?,
            id: f.number()?,
            mapping: f.string()?,
        },
        b"protocol" => SetupError::Protocol {
            detail: f.string()?,
        },
        other => return Err(f.bad("a setup error kind", other)),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn overlay_job() -> Job {
        Job {
            spec: RunSpec {
                rootfs: RootfsSpec::Overlay {
                    lower: vec![
                        "/a b".into(),
                        "/c\nd".into(),
                        PathBuf::from(OsStr::from_bytes(b"/\xff,:")),
                    ],
                    upper: "/u".into(),
                    work: "/w".into(),
                },
                argv: vec!["/bin/sh".into(), "-c".into(), "echo 'x\ny'".into()],
                env: vec![("A".into(), "1=2".into()), ("EMPTY".into(), String::new())],
                cwd: "/src".into(),
                user: Some("1000:1000".into()),
                network: Network::Host,
                timeout: None,
                hostname: "h".into(),
                limits: Limits {
                    memory: Some(512 << 20),
                    pids: None,
                    cpu_millis: Some(1500),
                },
            },
            ids: IdMapping::range(100_000, 200_000, 65_536),
            host_pid: 42,
            probe: false,
            rlimits: false,
        }
    }

    fn copy_job() -> Job {
        let mut job = overlay_job();
        job.spec.rootfs = RootfsSpec::Copy { root: "/r".into() };
        job.spec.user = None;
        job.spec.network = Network::None;
        job.ids = IdMapping::single_for(1000, 1000);
        job.probe = true;
        job.spec.limits = Limits {
            memory: None,
            pids: Some(16),
            cpu_millis: None,
        };
        job.rlimits = true;
        job
    }

    fn every_setup_error() -> Vec<SetupError> {
        vec![
            SetupError::step("cannot mount /proc", "EPERM"),
            SetupError::CommandNotFound {
                command: "/bin/sh".into(),
            },
            SetupError::CommandNotExecutable {
                command: "/x".into(),
                detail: "EACCES".into(),
            },
            SetupError::UnknownUser {
                user: "bob".into(),
                reason: "no such user in /etc/passwd".into(),
            },
            SetupError::NotMapped {
                kind: "uid".into(),
                id: 1000,
                mapping: "m".into(),
            },
            SetupError::protocol("p"),
        ]
    }

    /// One message of every kind (every error kind too).
    fn every_message() -> Vec<Message> {
        let mut all = vec![
            Message::Job(Box::new(overlay_job())),
            Message::Job(Box::new(copy_job())),
            Message::WriteMapping,
            Message::MappingWritten,
            Message::MapParent(IdMapping::subordinate(
                1000,
                1001,
                (100_000, 65_536),
                (200_000, 65_536),
            )),
            Message::MountPointCreated("/etc/resolv.conf".into()),
            Message::Ready,
            Message::Go,
            Message::ProbeSucceeded,
            Message::Exited(CommandExit::Code(0)),
            Message::Exited(CommandExit::Code(-1)),
            Message::Exited(CommandExit::Signal(9)),
            Message::Kill,
        ];
        all.extend(every_setup_error().into_iter().map(Message::SetupFailed));
        for m in &all {
            // A new variant fails to compile here until it is added above.
            match m {
                Message::Job(_)
                | Message::WriteMapping
                | Message::MappingWritten
                | Message::MapParent(_)
                | Message::MountPointCreated(_)
                | Message::Ready
                | Message::Go
                | Message::ProbeSucceeded
                | Message::Exited(_)
                | Message::Kill
                | Message::SetupFailed(_) => {}
            }
        }
        all
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_netstring(&mut out, body);
        out
    }

    fn read(bytes: &[u8]) -> Result<Option<Message>, WireError> {
        Message::read_from(&mut &bytes[..])
    }

    #[test]
    fn every_message_round_trips_one_after_another() {
        let all = every_message();
        let mut stream = Vec::new();
        for m in &all {
            m.write_to(&mut stream).unwrap();
        }
        let mut r = stream.as_slice();
        for m in &all {
            assert_eq!(Message::read_from(&mut r).unwrap().as_ref(), Some(m));
        }
        assert!(Message::read_from(&mut r).unwrap().is_none());
    }

    #[test]
    fn every_tag_is_known_to_the_decoder() {
        for m in every_message() {
            assert_eq!(known_tag(m.tag()), Some(m.tag()));
        }
    }

    #[test]
    fn every_value_of_a_worded_field_has_a_word() {
        for w in [MapWriter::Host, MapWriter::Helpers, MapWriter::Child] {
            assert_ne!(word_for(&WRITER_WORDS, w), "", "{w:?}");
        }
        for n in [Network::None, Network::Host] {
            assert_ne!(word_for(&NETWORK_WORDS, n), "", "{n:?}");
        }
        for b in [false, true] {
            assert_ne!(word_for(&PROBE_WORDS, b), "");
            assert_ne!(word_for(&HAS_USER_WORDS, b), "");
            assert_ne!(word_for(&RLIMIT_WORDS, b), "");
        }
    }

    #[test]
    fn the_encoding_of_small_messages_is_fixed_byte_for_byte() {
        // A helper of the same PROTOCOL must read what this one writes.
        assert_eq!(Message::MappingWritten.encode(), b"9:6:mapped,,");
        assert_eq!(
            Message::Exited(CommandExit::Signal(9)).encode(),
            b"20:4:exit,6:signal,1:9,,"
        );
    }

    #[test]
    fn every_cut_of_a_frame_is_truncated() {
        let bytes = Message::Job(Box::new(overlay_job())).encode();
        assert!(read(&[]).unwrap().is_none());
        for cut in 1..bytes.len() {
            let err = read(&bytes[..cut]).unwrap_err();
            assert!(matches!(err, WireError::Truncated), "cut {cut}: {err}");
        }
    }

    #[test]
    fn an_unknown_tag_is_refused_by_name() {
        let err = read(&frame(b"4:nope,")).unwrap_err();
        assert!(
            matches!(&err, WireError::UnknownTag { tag } if tag == "nope"),
            "{err}"
        );
        let err = read(&frame(b"2:\xff\xfe,")).unwrap_err();
        assert!(matches!(err, WireError::UnknownTag { .. }), "{err}");
        let err = read(&frame(b"")).unwrap_err();
        assert!(matches!(err, WireError::NoTag), "{err}");
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_body() {
        for header in [&b"99999999999:"[..], b"67108865:", b"999999999"] {
            let err = read(header).unwrap_err();
            assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
        }
        // Exactly the limit is allowed (and here merely truncated).
        let err = read(b"67108864:").unwrap_err();
        assert!(matches!(err, WireError::Truncated), "{err}");
        let err = read(b"00000000001:").unwrap_err();
        assert!(matches!(err, WireError::BadHeader { found: b'1' }), "{err}");
    }

    #[test]
    fn garbled_frames_are_refused() {
        let err = read(b"x:").unwrap_err();
        assert!(matches!(err, WireError::BadHeader { found: b'x' }), "{err}");
        let err = read(b":").unwrap_err();
        assert!(matches!(err, WireError::BadHeader { found: b':' }), "{err}");
        let err = read(b"6:3:abc,X").unwrap_err();
        assert!(
            matches!(err, WireError::BadTerminator { found: b'X' }),
            "{err}"
        );
        for body in [
            &b"4:kill"[..],
            b"4:exit,x",
            b"9:kill,",
            b"+4:kill,",
            b"4;kill,",
        ] {
            let err = read(&frame(body)).unwrap_err();
            assert!(
                matches!(err, WireError::BadFieldFrame { .. }),
                "{body:?}: {err}"
            );
        }
    }

    #[test]
    fn missing_extra_or_bad_fields_are_refused_naming_the_message() {
        let err = read(&frame(b"4:exit,")).unwrap_err();
        assert!(
            matches!(err, WireError::MissingField { tag: "exit" }),
            "{err}"
        );
        let err = read(&frame(b"4:kill,0:,")).unwrap_err();
        assert!(
            matches!(err, WireError::TrailingFields { tag: "kill" }),
            "{err}"
        );
        let err = read(&frame(b"4:exit,4:code,3:one,")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`exit` message: expected a number, found \"one\""
        );
        let err = read(&frame(b"4:exit,4:core,1:0,")).unwrap_err();
        assert!(
            matches!(err, WireError::BadField { tag: "exit", .. }),
            "{err}"
        );
        let err = read(&frame(b"5:error,5:oops!,1:x,")).unwrap_err();
        assert!(
            matches!(err, WireError::BadField { tag: "error", .. }),
            "{err}"
        );
        let err = read(&frame(b"10:mountpoint,1:\xff,")).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::BadField {
                    tag: "mountpoint",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_job_or_map_request_from_another_protocol_version_is_refused_by_name() {
        let map = Message::MapParent(IdMapping::single_for(1000, 1000));
        for message in [Message::Job(Box::new(copy_job())), map] {
            let mut bytes = message.encode();
            let at = bytes
                .windows(PROTOCOL.len())
                .position(|w| w == PROTOCOL.as_bytes())
                .unwrap();
            bytes[at + PROTOCOL.len() - 1] = b'0';
            let err = read(&bytes).unwrap_err();
            assert!(matches!(err, WireError::ProtocolMismatch { .. }), "{err}");
            assert!(err.to_string().contains("rebuild the binary"), "{err}");
        }
    }

    #[test]
    fn an_id_extent_past_the_32_bit_range_is_refused() {
        let mut job = copy_job();
        job.ids = IdMapping::from_parts(
            vec![IdRange {
                container: 0,
                host: u32::MAX,
                len: 2,
            }],
            Vec::new(),
            MapWriter::Host,
        );
        let err = read(&Message::Job(Box::new(job)).encode()).unwrap_err();
        assert!(
            matches!(err, WireError::BadField { tag: "job", .. }),
            "{err}"
        );
    }

    #[test]
    fn every_single_byte_change_of_every_message_decodes_or_is_refused() {
        for m in every_message() {
            let bytes = m.encode();
            for i in 0..bytes.len() {
                for b in [0, b'0', b'9', b':', b',', 0xff] {
                    let mut changed = bytes.clone();
                    changed[i] = b;
                    let _ = read(&changed);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = read(&bytes);
            let _ = read(&frame(&bytes));
        }

        #[test]
        fn decoding_arbitrary_fields_never_panics(
            tag in prop::sample::select(vec!["job", "exit", "error", "mountpoint", "kill"]),
            fields in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 0..40),
        ) {
            let mut body = Body(Vec::new());
            body.field(tag);
            for f in &fields {
                body.field(f);
            }
            let _ = read(&frame(&body.0));
        }
    }
}
