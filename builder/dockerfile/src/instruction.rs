//! The typed instructions, and how a parsed instruction (words as written)
//! becomes an expanded one (final values) for the variables in scope.
//!
//! Validation that depends on a word's final value — an `EXPOSE` port, an
//! `ADD` source being a URL, a `USER` or `--chown` owner — lives here, in
//! [`Instruction::expanded`], so it runs on the value the build will use.
//! The parser also runs it at parse time for instructions without a `$`,
//! whose values cannot change, so most mistakes are reported before the
//! build starts.

use std::fmt;

use super::expand::{Scope, expand};

/// One build step's instruction.
///
/// In [`Step::instruction`](super::Step) the text fields are as written in
/// the file: variables unexpanded, quotes and escapes still in place. In the
/// result of [`Dockerfile::expand_step`](super::Dockerfile::expand_step) they
/// are final values. `RUN`, `CMD` and `ENTRYPOINT` are never expanded (the
/// shell does that when the step runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `RUN [--network=none|host|default] command`.
    Run { command: Command, network: Network },
    /// `COPY [--chown=..] [--chmod=..] src... dest`.
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
        chmod: Option<u32>,
        /// `--from=STAGE|INDEX|IMAGE`: copy from an earlier stage's (or an
        /// image's) file system instead of the build context.
        from: Option<String>,
        /// `COPY <<EOF dest`: files written inline, in the order named
        /// (then `sources` is empty).
        heredocs: Vec<InlineFile>,
    },
    /// `ADD [--chown=..] [--chmod=..] [--checksum=sha256:..] src... dest`.
    Add {
        sources: Vec<AddSource>,
        dest: String,
        chown: Option<String>,
        chmod: Option<u32>,
        checksum: Option<Checksum>,
    },
    /// `ENV K=V ...` or the legacy `ENV K V...`. Pairs in file order.
    Env(Vec<KeyValue>),
    /// `ARG NAME[=DEFAULT] ...`.
    Arg(Vec<Arg>),
    /// `WORKDIR path` (the whole rest of the line, spaces included).
    Workdir(String),
    /// `USER user[:group]`.
    User(String),
    /// `LABEL k=v ...` or the legacy `LABEL k v...`.
    Label(Vec<KeyValue>),
    /// `CMD`; an empty exec form (`CMD []`) clears it.
    Cmd(Command),
    /// `ENTRYPOINT`; an empty exec form clears it.
    Entrypoint(Command),
    /// `EXPOSE port[/proto] ...`. Once expanded, each entry is canonical
    /// `"<port>/<tcp|udp|sctp>"`, the form an OCI config's `ExposedPorts`
    /// uses as keys.
    Expose(Vec<String>),
    /// `SHELL ["executable", "param", ...]` (JSON form only, as Docker
    /// requires): how later shell-form commands run.
    Shell(Vec<String>),
    /// `VOLUME path...` or `VOLUME ["path", ...]`: mount points the image
    /// declares.
    Volume(Vec<String>),
    /// `STOPSIGNAL SIGNAME|NUMBER`.
    StopSignal(String),
    /// `MAINTAINER name` (deprecated in Docker, still accepted): the
    /// image's author.
    Maintainer(String),
    /// `HEALTHCHECK [--interval=..] [--timeout=..] [--start-period=..]
    /// [--start-interval=..] [--retries=N] CMD command`, or `HEALTHCHECK
    /// NONE`. Never expanded (the check's shell does that when it runs).
    Healthcheck(Healthcheck),
}

/// A file a `COPY` heredoc writes: named by its delimiter, holding its
/// body as written (no variable expansion: see the parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    pub name: String,
    pub content: String,
}

/// A container health check, as `HEALTHCHECK` declares it. Durations are
/// nanoseconds, as the image config stores them; 0 means the runtime's
/// default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Healthcheck {
    /// The check; `None` for `HEALTHCHECK NONE`, which turns off a check
    /// the base image declares.
    pub command: Option<Command>,
    pub interval_ns: u64,
    pub timeout_ns: u64,
    pub start_period_ns: u64,
    pub start_interval_ns: u64,
    /// Consecutive failures before the container is unhealthy (0: default).
    pub retries: u64,
}

/// How a `RUN`, `CMD` or `ENTRYPOINT` command is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `["prog", "arg"]`: run directly, no shell.
    Exec(Vec<String>),
    /// `prog arg && ...`: run with `/bin/sh -c`.
    Shell(String),
}

/// A `RUN` step's network. Docker's `default` is `None` here: steps are
/// hermetic unless the file asks otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Only a loopback interface (`none`, `default`, or no flag).
    #[default]
    None,
    /// The host's network (`host`); the step is not hermetic.
    Host,
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::None => "none",
            Network::Host => "host",
        })
    }
}

/// Where an `ADD` source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddSource {
    /// A path in the build context.
    Path(String),
    /// An `http://` or `https://` URL; needs `--checksum`.
    Url(String),
}

impl AddSource {
    /// Classifies a source the way Docker does: a URL is anything that
    /// starts with `http://` or `https://`.
    pub fn classify(source: String) -> AddSource {
        if source.starts_with("http://") || source.starts_with("https://") {
            AddSource::Url(source)
        } else {
            AddSource::Path(source)
        }
    }

    /// The source as written (path or URL).
    pub fn as_str(&self) -> &str {
        match self {
            AddSource::Path(s) | AddSource::Url(s) => s,
        }
    }
}

/// An `ADD --checksum`: a SHA-256 digest, stored as 64 lower-case hex
/// digits; displayed as `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Checksum {
    sha256_hex: String,
}

impl Checksum {
    /// Parses `sha256:<64 hex digits>` (hex in either case).
    pub fn parse(text: &str) -> Result<Checksum, String> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("expected sha256:<64 hex digits>, found {text}"))?;
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "expected sha256: followed by 64 hex digits, found {} characters in {text}",
                hex.chars().count()
            ));
        }
        Ok(Checksum {
            sha256_hex: hex.to_ascii_lowercase(),
        })
    }

    /// The digest's 64 lower-case hex digits.
    pub fn sha256_hex(&self) -> &str {
        &self.sha256_hex
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.sha256_hex)
    }
}

/// An `ENV` or `LABEL` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// An `ARG` declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    pub default: Option<String>,
}

impl Instruction {
    /// The instruction's keyword, upper case (`"RUN"`).
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::Run { .. } => "RUN",
            Instruction::Copy { .. } => "COPY",
            Instruction::Add { .. } => "ADD",
            Instruction::Env(_) => "ENV",
            Instruction::Arg(_) => "ARG",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::User(_) => "USER",
            Instruction::Label(_) => "LABEL",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Shell(_) => "SHELL",
            Instruction::Volume(_) => "VOLUME",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
        }
    }

    /// This instruction with every expandable word expanded in `scope` and
    /// its final values validated. All words see the same scope, so in
    /// `ENV A=1 B=$A` the `$A` is the value from before this instruction,
    /// as in Docker. Errors are messages starting with the keyword; the
    /// caller adds file and line.
    pub(crate) fn expanded(&self, escape: char, scope: &dyn Scope) -> Result<Instruction, String> {
        let ex = Expander {
            keyword: self.keyword(),
            escape,
            scope,
        };
        Ok(match self {
            Instruction::Run { .. }
            | Instruction::Cmd(_)
            | Instruction::Entrypoint(_)
            | Instruction::Shell(_)
            | Instruction::Maintainer(_)
            | Instruction::Healthcheck(_) => self.clone(),
            Instruction::Volume(paths) => Instruction::Volume(
                paths
                    .iter()
                    .map(|p| ex.non_empty(p, "path"))
                    .collect::<Result<_, _>>()?,
            ),
            Instruction::StopSignal(signal) => {
                let signal = ex.non_empty(signal, "signal")?;
                check_signal(&signal)?;
                Instruction::StopSignal(signal)
            }
            Instruction::Copy {
                sources,
                dest,
                chown,
                chmod,
                from,
                heredocs,
            } => Instruction::Copy {
                heredocs: heredocs.clone(),
                sources: ex.paths(sources.iter().map(String::as_str))?,
                dest: ex.non_empty(dest, "destination")?,
                chown: ex.chown(chown.as_deref())?,
                chmod: *chmod,
                from: from
                    .as_deref()
                    .map(|f| ex.non_empty(f, "--from"))
                    .transpose()?,
            },
            Instruction::Add {
                sources,
                dest,
                chown,
                chmod,
                checksum,
            } => {
                let sources: Vec<AddSource> = ex
                    .paths(sources.iter().map(AddSource::as_str))?
                    .into_iter()
                    .map(AddSource::classify)
                    .collect();
                check_add_sources(&sources, checksum.as_ref())?;
                Instruction::Add {
                    sources,
                    dest: ex.non_empty(dest, "destination")?,
                    chown: ex.chown(chown.as_deref())?,
                    chmod: *chmod,
                    checksum: checksum.clone(),
                }
            }
            Instruction::Env(pairs) => Instruction::Env(ex.key_values(pairs)?),
            Instruction::Label(pairs) => Instruction::Label(ex.key_values(pairs)?),
            Instruction::Arg(args) => Instruction::Arg(
                args.iter()
                    .map(|arg| ex.arg(arg))
                    .collect::<Result<_, _>>()?,
            ),
            Instruction::Workdir(path) => Instruction::Workdir(ex.non_empty(path, "path")?),
            Instruction::User(user) => {
                let user = ex.non_empty(user, "user")?;
                check_owner(&user).map_err(|e| format!("USER: {e}"))?;
                Instruction::User(user)
            }
            Instruction::Expose(ports) => Instruction::Expose(ex.ports(ports)?),
        })
    }
}

/// `SIGTERM`, `TERM`-style names of capitals, or a number 1..=64 (Linux's
/// signals, real-time ones included).
fn check_signal(signal: &str) -> Result<(), String> {
    let named = signal.len() <= 16
        && signal.starts_with(|c: char| c.is_ascii_uppercase())
        && signal
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-');
    let numbered = signal.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n));
    if named || numbered {
        Ok(())
    } else {
        Err(format!(
            "STOPSIGNAL: expected a signal name (SIGTERM) or number (1-64), found `{signal}`"
        ))
    }
}

/// An `ARG` declaration with its name and default expanded in `scope`.
pub(crate) fn expand_arg(arg: &Arg, escape: char, scope: &dyn Scope) -> Result<Arg, String> {
    Expander {
        keyword: "ARG",
        escape,
        scope,
    }
    .arg(arg)
}

/// Expands the words of one instruction, prefixing errors with its keyword.
struct Expander<'a> {
    keyword: &'static str,
    escape: char,
    scope: &'a dyn Scope,
}

impl Expander<'_> {
    fn word(&self, word: &str) -> Result<String, String> {
        expand(word, self.escape, self.scope)
            .map_err(|e| format!("{}: cannot expand `{word}`: {e}", self.keyword))
    }

    /// Expands a word that must not come out empty; `what` names it.
    fn non_empty(&self, word: &str, what: &str) -> Result<String, String> {
        let value = self.word(word)?;
        if value.is_empty() {
            return Err(format!(
                "{}: expected a {what}, but `{word}` expands to an empty string",
                self.keyword
            ));
        }
        Ok(value)
    }

    fn paths<'w>(&self, words: impl Iterator<Item = &'w str>) -> Result<Vec<String>, String> {
        words.map(|w| self.non_empty(w, "source")).collect()
    }

    fn chown(&self, chown: Option<&str>) -> Result<Option<String>, String> {
        let Some(raw) = chown else {
            return Ok(None);
        };
        let owner = self.non_empty(raw, "--chown owner")?;
        check_owner(&owner).map_err(|e| format!("{}: --chown: {e}", self.keyword))?;
        Ok(Some(owner))
    }

    fn key_values(&self, pairs: &[KeyValue]) -> Result<Vec<KeyValue>, String> {
        pairs
            .iter()
            .map(|pair| {
                Ok(KeyValue {
                    key: self.non_empty(&pair.key, "name")?,
                    value: self.word(&pair.value)?,
                })
            })
            .collect()
    }

    fn arg(&self, arg: &Arg) -> Result<Arg, String> {
        Ok(Arg {
            name: self.non_empty(&arg.name, "name")?,
            default: arg.default.as_deref().map(|d| self.word(d)).transpose()?,
        })
    }

    /// Expands and validates ports; a variable may hold several
    /// (`EXPOSE $PORTS` with `PORTS="80 443"`), as in Docker.
    fn ports(&self, specs: &[String]) -> Result<Vec<String>, String> {
        let mut ports = Vec::new();
        for spec in specs {
            for port in self.word(spec)?.split_whitespace() {
                ports.extend(canonical_ports(port).map_err(|e| format!("EXPOSE: {e}"))?);
            }
        }
        if ports.is_empty() {
            return Err("EXPOSE: expected at least one port, found none".to_owned());
        }
        Ok(ports)
    }
}

/// `80`, `80/tcp`, `53/UDP` → `"80/tcp"`, `"80/tcp"`, `"53/udp"`; a range
/// `8000-8002/udp` is each of its ports, as Docker writes it into the image.
fn canonical_ports(spec: &str) -> Result<Vec<String>, String> {
    /// The most ports one range may name (Docker takes any; a typo such as
    /// `1-65535` would otherwise write 65,535 entries into the config).
    const MAX_RANGE: u32 = 1024;
    let (numbers, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "expected protocol tcp, udp or sctp, found `{protocol}` in `{spec}`"
        ));
    }
    let port = |number: &str| -> Result<u16, String> {
        number
            .parse()
            .ok()
            .filter(|&p| p != 0 && number.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| {
                format!("expected a port number from 1 to 65535, found `{number}` in `{spec}`")
            })
    };
    let (first, last) = match numbers.split_once('-') {
        Some((first, last)) => (port(first)?, port(last)?),
        None => {
            let only = port(numbers)?;
            (only, only)
        }
    };
    if last < first {
        return Err(format!(
            "the range `{numbers}` in `{spec}` ends before it starts"
        ));
    }
    if u32::from(last - first) >= MAX_RANGE {
        return Err(format!(
            "the range `{numbers}` in `{spec}` names more than {MAX_RANGE} ports"
        ));
    }
    Ok((first..=last).map(|p| format!("{p}/{protocol}")).collect())
}

/// `user[:group]`: names or numeric ids, each non-empty, no whitespace.
fn check_owner(owner: &str) -> Result<(), String> {
    let (user, group) = match owner.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (owner, None),
    };
    let part_ok = |p: &str| !p.is_empty() && !p.contains(|c: char| c.is_whitespace() || c == ':');
    if !part_ok(user) || group.is_some_and(|g| !part_ok(g)) {
        return Err(format!("expected user[:group], found `{owner}`"));
    }
    Ok(())
}

/// URLs need a checksum (downloads must be reproducible), and a checksum
/// needs exactly one URL to check.
fn check_add_sources(sources: &[AddSource], checksum: Option<&Checksum>) -> Result<(), String> {
    match checksum {
        None => match sources.iter().find(|s| matches!(s, AddSource::Url(_))) {
            Some(url) => Err(format!(
                "ADD: downloading {} requires --checksum=sha256:<hex> so the build is reproducible",
                url.as_str()
            )),
            None => Ok(()),
        },
        Some(_) => match sources {
            [AddSource::Url(_)] => Ok(()),
            [AddSource::Path(path)] => Err(format!(
                "ADD: --checksum applies to a URL source, found the local path `{path}`"
            )),
            _ => Err(format!(
                "ADD: --checksum applies to a single URL source, found {} sources",
                sources.len()
            )),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_made_canonical() {
        assert_eq!(canonical_ports("80").unwrap(), ["80/tcp"]);
        assert_eq!(canonical_ports("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(canonical_ports("9/sctp").unwrap(), ["9/sctp"]);
        assert_eq!(canonical_ports("0080").unwrap(), ["80/tcp"]);
        assert_eq!(canonical_ports("80-80").unwrap(), ["80/tcp"]);
    }

    #[test]
    fn bad_ports_say_what_was_expected() {
        assert_eq!(
            canonical_ports("80/http").unwrap_err(),
            "expected protocol tcp, udp or sctp, found `http` in `80/http`"
        );
        for bad in ["0", "65536", "+80", "8000-80x", "", "x"] {
            assert!(
                canonical_ports(bad)
                    .unwrap_err()
                    .starts_with("expected a port number from 1 to 65535"),
                "{bad}"
            );
        }
    }

    #[test]
    fn owners_are_user_and_optional_group() {
        for good in ["1000", "1000:1000", "app", "app:staff", "app:0"] {
            assert!(check_owner(good).is_ok(), "{good}");
        }
        for bad in ["", ":g", "u:", "u:g:h", "a b"] {
            assert!(check_owner(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checksums_are_sha256_with_64_hex_digits() {
        let hex = "AB".repeat(32);
        let checksum = Checksum::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(checksum.sha256_hex(), "ab".repeat(32));
        assert_eq!(checksum.to_string(), format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(
            Checksum::parse("md5:abc").unwrap_err(),
            "expected sha256:<64 hex digits>, found md5:abc"
        );
        assert!(Checksum::parse("sha256:abc").is_err());
        assert!(Checksum::parse(&format!("sha256:{}", "g".repeat(64))).is_err());
    }

    #[test]
    fn add_sources_are_classified_by_scheme() {
        assert_eq!(
            AddSource::classify("https://x/y".to_owned()),
            AddSource::Url("https://x/y".to_owned())
        );
        assert_eq!(
            AddSource::classify("http://x".to_owned()),
            AddSource::Url("http://x".to_owned())
        );
        assert_eq!(
            AddSource::classify("ftp://x".to_owned()),
            AddSource::Path("ftp://x".to_owned())
        );
    }

    #[test]
    fn network_displays_as_its_flag_value() {
        assert_eq!(Network::None.to_string(), "none");
        assert_eq!(Network::Host.to_string(), "host");
    }
}
