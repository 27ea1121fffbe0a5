//! The messages the host and the two sandbox stages exchange over their Unix
//! sockets, and how a [`Job`] and a [`SetupError`] are written in them.
//!
//! A message is a netstring (`<len>:<bytes>,`) holding a sequence of
//! netstrings: the tag, then the fields. Fields are raw bytes, so paths,
//! arguments and environment values travel unchanged (newlines included).
//! No serde: the format is small, fixed, and versioned by [`PROTOCOL`], which
//! the first field of `job` carries so a stale helper binary is refused with a
//! clear message instead of misreading fields.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::idmap::{IdExtent, IdMapping, MapWriter};
use super::{Job, Network, RootfsSpec, RunSpec, SetupError};

/// Version of this format; bump on any change to a message's fields.
pub(super) const PROTOCOL: &str = "strata-sandbox/1";

/// Largest message accepted: a job with a huge environment still fits.
const MAX_MESSAGE: usize = 64 << 20;

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    pub tag: String,
    pub fields: Vec<Vec<u8>>,
}

impl Message {
    pub fn new(tag: &str) -> Self {
        Message {
            tag: tag.to_owned(),
            fields: Vec::new(),
        }
    }

    pub fn with(mut self, field: impl AsRef<[u8]>) -> Self {
        self.fields.push(field.as_ref().to_vec());
        self
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut body = Vec::new();
        put_netstring(&mut body, self.tag.as_bytes());
        for f in &self.fields {
            put_netstring(&mut body, f);
        }
        let mut frame = Vec::with_capacity(body.len() + 12);
        put_netstring(&mut frame, &body);
        w.write_all(&frame)?;
        w.flush()
    }

    /// Reads one message; `Ok(None)` at a clean end of stream.
    pub fn read_from(r: &mut impl Read) -> io::Result<Option<Message>> {
        let Some(body) = read_netstring(r)? else {
            return Ok(None);
        };
        let mut rest = body.as_slice();
        let mut parts = Vec::new();
        while !rest.is_empty() {
            let (part, tail) = split_netstring(rest)?;
            parts.push(part.to_vec());
            rest = tail;
        }
        let mut parts = parts.into_iter();
        let tag = parts
            .next()
            .ok_or_else(|| invalid("message without a tag"))?;
        let tag = String::from_utf8(tag).map_err(|_| invalid("message tag is not UTF-8"))?;
        Ok(Some(Message {
            tag,
            fields: parts.collect(),
        }))
    }

    pub fn fields(&self) -> Fields<'_> {
        Fields {
            tag: &self.tag,
            iter: self.fields.iter(),
        }
    }
}

fn put_netstring(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
    out.push(b',');
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn read_netstring(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b)? == 0 {
            if digits == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match b[0] {
            b'0'..=b'9' if digits < 10 => {
                len = len * 10 + usize::from(b[0] - b'0');
                digits += 1;
            }
            b':' if digits > 0 => break,
            other => return Err(invalid(format!("bad frame byte {other:#04x}"))),
        }
    }
    if len > MAX_MESSAGE {
        return Err(invalid(format!("message of {len} bytes is too large")));
    }
    let mut body = vec![0u8; len + 1];
    r.read_exact(&mut body)?;
    if body.pop() != Some(b',') {
        return Err(invalid("frame does not end with ','"));
    }
    Ok(Some(body))
}

fn split_netstring(buf: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let colon = buf
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| invalid("field without length"))?;
    let len: usize = std::str::from_utf8(&buf[..colon])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad field length"))?;
    let start = colon + 1;
    let end = start
        .checked_add(len)
        .filter(|&e| e < buf.len())
        .ok_or_else(|| invalid("field runs past its message"))?;
    if buf[end] != b',' {
        return Err(invalid("field does not end with ','"));
    }
    Ok((&buf[start..end], &buf[end + 1..]))
}

/// Reads a message's fields in order, with errors naming the message.
pub(super) struct Fields<'a> {
    tag: &'a str,
    iter: std::slice::Iter<'a, Vec<u8>>,
}

impl Fields<'_> {
    pub fn bytes(&mut self) -> Result<&[u8], SetupError> {
        self.iter
            .next()
            .map(Vec::as_slice)
            .ok_or_else(|| SetupError::protocol(format!("`{}` message is too short", self.tag)))
    }

    pub fn string(&mut self) -> Result<String, SetupError> {
        let tag = self.tag;
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| SetupError::protocol(format!("`{tag}` field is not UTF-8")))
    }

    pub fn path(&mut self) -> Result<PathBuf, SetupError> {
        Ok(PathBuf::from(OsStr::from_bytes(self.bytes()?)))
    }

    pub fn number<T: std::str::FromStr>(&mut self) -> Result<T, SetupError> {
        let tag = self.tag;
        let s = self.string()?;
        s.parse()
            .map_err(|_| SetupError::protocol(format!("`{tag}` field {s:?} is not a number")))
    }
}

/// Field order of `job`: protocol, host pid, probe, rootfs, ids, spec.
pub(super) fn job_message(job: &Job) -> Message {
    let mut m = Message::new("job")
        .with(PROTOCOL)
        .with(job.host_pid.to_string())
        .with(if job.probe { "probe" } else { "run" });
    match &job.spec.rootfs {
        RootfsSpec::Overlay { lower, upper, work } => {
            m = m.with("overlay").with(lower.len().to_string());
            for l in lower {
                m = m.with(l.as_os_str().as_bytes());
            }
            m = m
                .with(upper.as_os_str().as_bytes())
                .with(work.as_os_str().as_bytes());
        }
        RootfsSpec::Copy { root } => m = m.with("copy").with(root.as_os_str().as_bytes()),
    }
    m = m.with(match job.ids.writer() {
        MapWriter::Host => "host",
        MapWriter::Helpers => "helpers",
        MapWriter::Child => "child",
    });
    for extents in [job.ids.uids(), job.ids.gids()] {
        m = m.with(extents.len().to_string());
        for e in extents {
            m = m
                .with(e.container.to_string())
                .with(e.host.to_string())
                .with(e.count.to_string());
        }
    }
    let s = &job.spec;
    m = m.with(s.argv.len().to_string());
    for a in &s.argv {
        m = m.with(a);
    }
    m = m.with(s.env.len().to_string());
    for (k, v) in &s.env {
        m = m.with(k).with(v);
    }
    m = m.with(&s.cwd);
    m = match &s.user {
        Some(u) => m.with("1").with(u),
        None => m.with("0").with(""),
    };
    m.with(match s.network {
        Network::None => "none",
        Network::Host => "host",
    })
    .with(&s.hostname)
}

pub(super) fn parse_job(msg: &Message) -> Result<Job, SetupError> {
    if msg.tag != "job" {
        return Err(SetupError::protocol(format!(
            "expected `job`, got `{}`",
            msg.tag
        )));
    }
    let mut f = msg.fields();
    let protocol = f.string()?;
    if protocol != PROTOCOL {
        return Err(SetupError::protocol(format!(
            "host speaks {protocol}, this helper {PROTOCOL}: rebuild the binary"
        )));
    }
    let host_pid = f.number()?;
    let probe = f.string()? == "probe";
    let rootfs = match f.string()?.as_str() {
        "overlay" => {
            let n: usize = f.number()?;
            let lower = (0..n).map(|_| f.path()).collect::<Result<_, _>>()?;
            RootfsSpec::Overlay {
                lower,
                upper: f.path()?,
                work: f.path()?,
            }
        }
        "copy" => RootfsSpec::Copy { root: f.path()? },
        other => return Err(SetupError::protocol(format!("unknown rootfs kind {other}"))),
    };
    let writer = match f.string()?.as_str() {
        "host" => MapWriter::Host,
        "helpers" => MapWriter::Helpers,
        "child" => MapWriter::Child,
        other => return Err(SetupError::protocol(format!("unknown map writer {other}"))),
    };
    let mut extents = [Vec::new(), Vec::new()];
    for list in &mut extents {
        let n: usize = f.number()?;
        for _ in 0..n {
            list.push(IdExtent {
                container: f.number()?,
                host: f.number()?,
                count: f.number()?,
            });
        }
    }
    let [uids, gids] = extents;
    let n: usize = f.number()?;
    let argv = (0..n).map(|_| f.string()).collect::<Result<_, _>>()?;
    let n: usize = f.number()?;
    let env = (0..n)
        .map(|_| Ok((f.string()?, f.string()?)))
        .collect::<Result<_, SetupError>>()?;
    let cwd = f.string()?;
    let has_user = f.string()? == "1";
    let user = f.string()?;
    let network = match f.string()?.as_str() {
        "host" => Network::Host,
        _ => Network::None,
    };
    let hostname = f.string()?;
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
        },
        ids: IdMapping::from_parts(uids, gids, writer),
        host_pid,
        probe,
    })
}

pub(super) fn error_message(e: &SetupError) -> Message {
    match e {
        SetupError::Step { step, detail } => {
            Message::new("error").with("step").with(step).with(detail)
        }
        SetupError::CommandNotFound { command } => {
            Message::new("error").with("not-found").with(command)
        }
        SetupError::CommandNotExecutable { command, detail } => Message::new("error")
            .with("not-executable")
            .with(command)
            .with(detail),
        SetupError::UnknownUser { user, reason } => Message::new("error")
            .with("unknown-user")
            .with(user)
            .with(reason),
        SetupError::NotMapped { kind, id, mapping } => Message::new("error")
            .with("not-mapped")
            .with(kind)
            .with(id.to_string())
            .with(mapping),
        SetupError::Protocol { detail } => Message::new("error").with("protocol").with(detail),
    }
}

pub(super) fn parse_error(msg: &Message) -> SetupError {
    let mut f = msg.fields();
    let parsed = (|| {
        Ok(match f.string()?.as_str() {
            "step" => SetupError::Step {
                step: f.string()?,
                detail: f.string()?,
            },
            "not-found" => SetupError::CommandNotFound {
                command: f.string()?,
            },
            "not-executable" => SetupError::CommandNotExecutable {
                command: f.string()?,
                detail: f.string()?,
            },
            "unknown-user" => SetupError::UnknownUser {
                user: f.string()?,
                reason: f.string()?,
            },
            "not-mapped" => SetupError::NotMapped {
                kind: f.string()?,
                id: f.number()?,
                mapping: f.string()?,
            },
            "protocol" => SetupError::Protocol {
                detail: f.string()?,
            },
            other => SetupError::Protocol {
                detail: format!("{other}: {}", f.string().unwrap_or_default()),
            },
        })
    })();
    parsed.unwrap_or_else(|e: SetupError| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_with_arbitrary_bytes() {
        let m = Message::new("x")
            .with(b"a:b,c\n\0")
            .with("")
            .with([255u8, 0]);
        let mut buf = Vec::new();
        m.write_to(&mut buf).unwrap();
        m.write_to(&mut buf).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(Message::read_from(&mut r).unwrap(), Some(m.clone()));
        assert_eq!(Message::read_from(&mut r).unwrap(), Some(m));
        assert_eq!(Message::read_from(&mut r).unwrap(), None);
    }

    #[test]
    fn truncated_or_garbled_frames_are_refused() {
        let mut buf = Vec::new();
        Message::new("tag").with("v").write_to(&mut buf).unwrap();
        for cut in 1..buf.len() {
            assert!(Message::read_from(&mut &buf[..cut]).is_err(), "cut {cut}");
        }
        assert!(Message::read_from(&mut &b"x:"[..]).is_err());
        assert!(Message::read_from(&mut &b"99999999999:"[..]).is_err());
        assert!(Message::read_from(&mut &b"5:3:abc,X"[..]).is_err());
    }

    #[test]
    fn job_round_trips() {
        let job = Job {
            spec: RunSpec {
                rootfs: RootfsSpec::Overlay {
                    lower: vec!["/a b".into(), "/c\nd".into()],
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
            },
            ids: IdMapping::range(100_000, 200_000, 65_536),
            host_pid: 42,
            probe: false,
        };
        let m = job_message(&job);
        let mut buf = Vec::new();
        m.write_to(&mut buf).unwrap();
        let back = Message::read_from(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(parse_job(&back).unwrap(), job);

        let mut copy = job.clone();
        copy.spec.rootfs = RootfsSpec::Copy { root: "/r".into() };
        copy.spec.user = None;
        copy.ids = IdMapping::single_for(1000, 1000);
        copy.probe = true;
        assert_eq!(parse_job(&job_message(&copy)).unwrap(), copy);
    }

    #[test]
    fn a_job_from_another_protocol_version_is_refused_by_name() {
        let mut m = job_message(&Job {
            spec: RunSpec::new(RootfsSpec::Copy { root: "/r".into() }, vec![]),
            ids: IdMapping::single_for(0, 0),
            host_pid: 1,
            probe: false,
        });
        m.fields[0] = b"strata-sandbox/0".to_vec();
        let err = parse_job(&m).unwrap_err().to_string();
        assert!(err.contains("rebuild the binary"), "{err}");
    }

    #[test]
    fn setup_errors_round_trip() {
        for e in [
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
        ] {
            assert_eq!(parse_error(&error_message(&e)), e);
        }
    }
}
