//! One logical line to one typed instruction: keyword, flags, arguments.
//!
//! Words are kept as written (see [`Instruction`]); this module checks only
//! the shape of the line — which flags, how many arguments, exec or shell
//! form. Errors are messages starting with the keyword (`RUN: unknown flag
//! --foo ...`); the caller adds file and line.

use std::fmt;

use super::instruction::{
    AddSource, Arg, Checksum, Command, Healthcheck, InlineFile, Instruction, KeyValue, Network,
};
use super::json::{JsonArray, parse_array};
use super::words::{
    extract_flags, find_heredoc, heredoc_markers, split_keyword, split_shell_words,
    split_whitespace,
};

/// The instructions we support, for error messages.
pub(crate) const SUPPORTED: &str = "FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, LABEL, CMD, \
     ENTRYPOINT, EXPOSE, SHELL, VOLUME, STOPSIGNAL, MAINTAINER, HEALTHCHECK";

/// Docker instructions we deliberately do not support (as opposed to typos).
const UNSUPPORTED: [&str; 1] = ["ONBUILD"];

/// An instruction keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    From,
    Run,
    Copy,
    Add,
    Env,
    Arg,
    Workdir,
    User,
    Label,
    Cmd,
    Entrypoint,
    Expose,
    Shell,
    Volume,
    StopSignal,
    Maintainer,
    Healthcheck,
}

impl Keyword {
    const ALL: [Keyword; 17] = [
        Keyword::From,
        Keyword::Run,
        Keyword::Copy,
        Keyword::Add,
        Keyword::Env,
        Keyword::Arg,
        Keyword::Workdir,
        Keyword::User,
        Keyword::Label,
        Keyword::Cmd,
        Keyword::Entrypoint,
        Keyword::Expose,
        Keyword::Shell,
        Keyword::Volume,
        Keyword::StopSignal,
        Keyword::Maintainer,
        Keyword::Healthcheck,
    ];

    /// Recognises a keyword in any case; errors name the word and what is
    /// supported.
    pub(crate) fn parse(word: &str) -> Result<Keyword, String> {
        if let Some(keyword) = Keyword::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(word))
        {
            return Ok(keyword);
        }
        let upper = word.to_ascii_uppercase();
        if UNSUPPORTED.contains(&upper.as_str()) {
            Err(format!(
                "unsupported instruction {upper} (supported: {SUPPORTED})"
            ))
        } else {
            Err(format!(
                "unknown instruction {word} (supported: {SUPPORTED})"
            ))
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Keyword::From => "FROM",
            Keyword::Run => "RUN",
            Keyword::Copy => "COPY",
            Keyword::Add => "ADD",
            Keyword::Env => "ENV",
            Keyword::Arg => "ARG",
            Keyword::Workdir => "WORKDIR",
            Keyword::User => "USER",
            Keyword::Label => "LABEL",
            Keyword::Cmd => "CMD",
            Keyword::Entrypoint => "ENTRYPOINT",
            Keyword::Expose => "EXPOSE",
            Keyword::Shell => "SHELL",
            Keyword::Volume => "VOLUME",
            Keyword::StopSignal => "STOPSIGNAL",
            Keyword::Maintainer => "MAINTAINER",
            Keyword::Healthcheck => "HEALTHCHECK",
        }
    }

    /// The flags this instruction accepts (names without `--`).
    fn allowed_flags(self) -> &'static [&'static str] {
        match self {
            Keyword::From => &["platform"],
            Keyword::Run => &["network"],
            Keyword::Copy => &["chown", "chmod", "from", "link"],
            Keyword::Add => &["chown", "chmod", "checksum", "link"],
            Keyword::Healthcheck => &[
                "interval",
                "timeout",
                "start-period",
                "start-interval",
                "retries",
            ],
            _ => &[],
        }
    }
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a line parsed to: the base image line, or a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    From {
        image: String,
        stage_name: Option<String>,
        /// `--platform=...`, unexpanded.
        platform: Option<String>,
    },
    Instruction(Instruction),
}

/// A logical line's keyword (recognised) and its arguments.
pub(crate) fn split_line(text: &str) -> Result<(Keyword, &str), String> {
    let (word, args) = split_keyword(text);
    Ok((Keyword::parse(word)?, args))
}

/// Parses the arguments of one instruction.
pub(crate) fn parse_instruction(
    keyword: Keyword,
    args: &str,
    escape: char,
) -> Result<Parsed, String> {
    let (flag_words, rest) = extract_flags(args);
    let flags = Flags::parse(keyword, &flag_words)?;
    let instruction = match keyword {
        Keyword::From => return parse_from(rest, flags.get("platform")),
        Keyword::Run => parse_run(&flags, rest, escape)?,
        Keyword::Copy => parse_copy(&flags, rest, escape)?,
        Keyword::Add => parse_add(&flags, rest, escape)?,
        Keyword::Env => Instruction::Env(parse_key_values(keyword, rest, escape)?),
        Keyword::Label => Instruction::Label(parse_key_values(keyword, rest, escape)?),
        Keyword::Arg => Instruction::Arg(parse_args(rest, escape)?),
        Keyword::Workdir => Instruction::Workdir(parse_rest(keyword, rest, "a path")?),
        Keyword::User => Instruction::User(parse_rest(keyword, rest, "user[:group]")?),
        Keyword::Cmd => Instruction::Cmd(parse_command(keyword, rest)?),
        Keyword::Entrypoint => Instruction::Entrypoint(parse_command(keyword, rest)?),
        Keyword::Expose => Instruction::Expose(parse_expose(rest)?),
        Keyword::Shell => match parse_command(keyword, rest)? {
            Command::Exec(argv) if !argv.is_empty() => Instruction::Shell(argv),
            _ => {
                return Err(format!(
                    "SHELL: expected a JSON array like [\"/bin/bash\", \"-c\"], found `{rest}`"
                ));
            }
        },
        Keyword::Volume => Instruction::Volume(parse_volumes(rest)?),
        Keyword::StopSignal => Instruction::StopSignal(parse_rest(keyword, rest, "a signal")?),
        Keyword::Maintainer => Instruction::Maintainer(parse_rest(keyword, rest, "a name")?),
        Keyword::Healthcheck => Instruction::Healthcheck(parse_healthcheck(&flags, rest)?),
    };
    Ok(Parsed::Instruction(instruction))
}

/// The `--name=value` flags of one instruction, checked against what it
/// accepts.
struct Flags {
    values: Vec<(String, String)>,
}

impl Flags {
    fn parse(keyword: Keyword, words: &[String]) -> Result<Flags, String> {
        let allowed = keyword.allowed_flags();
        let mut values: Vec<(String, String)> = Vec::new();
        for word in words {
            let body = word.strip_prefix("--").unwrap_or(word);
            let (name, value) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (body, None),
            };
            if let Some(message) = unsupported_flag(keyword, name) {
                return Err(message);
            }
            if !allowed.contains(&name) {
                return Err(unknown_flag(keyword, name));
            }
            let value = match (value, name) {
                // `--link` alone means true. Strata's layers are always
                // independent of the ones below (content-addressed diffs),
                // so it is accepted and changes nothing.
                (None, "link") => "true",
                (Some(v @ ("true" | "false")), "link") => v,
                (_, "link") => {
                    return Err(format!("{keyword}: --link takes true or false"));
                }
                (value, _) => value.filter(|v| !v.is_empty()).ok_or_else(|| {
                    format!("{keyword}: flag --{name} needs a value (--{name}=...)")
                })?,
            };
            if values.iter().any(|(seen, _)| seen == name) {
                return Err(format!("{keyword}: flag --{name} is given twice"));
            }
            values.push((name.to_owned(), value.to_owned()));
        }
        Ok(Flags { values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Docker flags we know and refuse on purpose, with the reason.
fn unsupported_flag(keyword: Keyword, name: &str) -> Option<String> {
    match (keyword, name) {
        (Keyword::Run, "mount") => Some(
            "RUN --mount (cache, bind, tmpfs, secret and ssh mounts) is not supported yet; \
             copy what the step needs into the image instead"
                .to_owned(),
        ),
        (Keyword::Run, "security") => Some(
            "RUN --security is refused: a step never runs with more privilege than the sandbox \
             gives it"
                .to_owned(),
        ),
        _ => None,
    }
}

fn unknown_flag(keyword: Keyword, name: &str) -> String {
    let allowed = keyword.allowed_flags();
    if allowed.is_empty() {
        format!("{keyword}: unknown flag --{name} ({keyword} takes no flags)")
    } else {
        let list: Vec<String> = allowed.iter().map(|f| format!("--{f}")).collect();
        format!(
            "{keyword}: unknown flag --{name} (supported: {})",
            list.join(", ")
        )
    }
}

/// `FROM [--platform=P] image [AS name]`.
fn parse_from(rest: &str, platform: Option<&str>) -> Result<Parsed, String> {
    let words = split_whitespace(rest);
    let platform = platform.map(str::to_owned);
    match words.as_slice() {
        [] => Err(
            "FROM: expected an image (scratch, oci:DIR[:TAG] or NAME[:TAG]), found nothing"
                .to_owned(),
        ),
        [image] => Ok(Parsed::From {
            image: image.clone(),
            stage_name: None,
            platform,
        }),
        [image, as_word, name] if as_word.eq_ignore_ascii_case("as") => Ok(Parsed::From {
            image: image.clone(),
            stage_name: Some(stage_name(name)?),
            platform,
        }),
        _ => Err(format!("FROM: expected `IMAGE [AS NAME]`, found `{rest}`")),
    }
}

/// A stage name, lower-cased and checked as Docker does
/// (`^[a-z][a-z0-9-_.]*$`).
fn stage_name(name: &str) -> Result<String, String> {
    let name = name.to_ascii_lowercase();
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if !valid {
        return Err(format!(
            "FROM: expected a stage name of a letter followed by letters, digits, -, _ or ., found `{name}`"
        ));
    }
    Ok(name)
}

/// `RUN [--network=..] command`, where the command may read heredocs.
fn parse_run(flags: &Flags, rest: &str, escape: char) -> Result<Instruction, String> {
    let network = flags.get("network").map(parse_network).transpose()?;
    let command = match rest.split_once('\n') {
        Some((first, bodies)) => run_with_heredocs(first, bodies, escape)?,
        None => parse_command(Keyword::Run, rest)?,
    };
    if command == Command::Exec(Vec::new()) {
        return Err("RUN: expected a command, found an empty exec form []".to_owned());
    }
    Ok(Instruction::Run {
        command,
        network: network.unwrap_or_default(),
    })
}

fn parse_network(value: &str) -> Result<Network, String> {
    match value {
        "none" | "default" => Ok(Network::None),
        "host" => Ok(Network::Host),
        other => Err(format!(
            "RUN: --network={other} is not supported (expected none, host or default)"
        )),
    }
}

/// Exec form if the arguments are a JSON array of strings, shell form if
/// they are not JSON at all.
fn parse_command(keyword: Keyword, rest: &str) -> Result<Command, String> {
    if rest.is_empty() {
        return Err(format!("{keyword}: expected a command, found nothing"));
    }
    match parse_array(rest) {
        JsonArray::Strings(argv) => Ok(Command::Exec(argv)),
        JsonArray::NotStrings(what) => Err(not_strings(keyword, &what)),
        // A RUN's heredocs are read by the lexer and handled by `parse_run`.
        JsonArray::NotJson => Ok(Command::Shell(rest.to_owned())),
    }
}

/// A `RUN` whose first line opens heredocs and whose `bodies` follow (as
/// the lexer read them). `RUN <<EOF` alone runs the heredoc as a shell
/// script, as BuildKit does; `RUN cmd <<EOF` hands the whole text to the
/// shell, which feeds the heredoc to `cmd`.
fn run_with_heredocs(first: &str, bodies: &str, escape: char) -> Result<Command, String> {
    let markers = heredoc_markers(first, escape);
    let only_heredocs = split_shell_words(first, escape).len() == markers.len();
    if !only_heredocs {
        return Ok(Command::Shell(format!("{first}\n{bodies}")));
    }
    let [marker] = markers.as_slice() else {
        return Err(format!(
            "RUN: expected one heredoc as the script, found {}; put a command before them",
            markers.len()
        ));
    };
    let mut lines: Vec<&str> = bodies.split('\n').collect();
    lines.pop(); // the terminator
    let script: Vec<&str> = lines
        .iter()
        .map(|l| {
            if marker.strip_tabs {
                l.trim_start_matches('\t')
            } else {
                l
            }
        })
        .collect();
    if script.first().is_some_and(|l| l.starts_with("#!")) {
        return Err(format!(
            "RUN <<{}: a heredoc script with its own interpreter (#!) is not supported; \
             write `RUN INTERPRETER <<{}` instead",
            marker.delimiter, marker.delimiter
        ));
    }
    Ok(Command::Shell(script.join("\n")))
}

fn not_strings(keyword: Keyword, what: &str) -> String {
    format!("{keyword}: expected the exec form to be a JSON array of strings, but {what}")
}

fn refuse_heredoc(keyword: Keyword, rest: &str, escape: char) -> Result<(), String> {
    match find_heredoc(rest, escape) {
        Some(marker) => Err(format!(
            "{keyword}: heredocs are not supported (found {marker})"
        )),
        None => Ok(()),
    }
}

/// `COPY [flags] src... dest` or `COPY [flags] ["src", ..., "dest"]`.
fn parse_copy(flags: &Flags, rest: &str, escape: char) -> Result<Instruction, String> {
    let (sources, dest, heredocs) = match rest.split_once('\n') {
        Some((first, bodies)) => {
            let (dest, heredocs) = copy_heredocs(first, bodies, escape)?;
            if flags.get("from").is_some() {
                return Err("COPY: --from copies files, not heredocs".to_owned());
            }
            (Vec::new(), dest, heredocs)
        }
        None => {
            let (sources, dest) = parse_sources_and_dest(Keyword::Copy, rest, escape)?;
            (sources, dest, Vec::new())
        }
    };
    Ok(Instruction::Copy {
        sources,
        dest,
        chown: flags.get("chown").map(str::to_owned),
        chmod: parse_chmod(Keyword::Copy, flags)?,
        from: flags.get("from").map(str::to_owned),
        heredocs,
    })
}

/// `COPY <<A [<<B ...] dest` and the bodies the lexer read after it: the
/// destination and one inline file per heredoc, named by its delimiter.
///
/// Bodies are copied as written. An unquoted delimiter asks Docker to
/// expand variables in the body; rather than copy such a body differently
/// from Docker, one holding a `$` is refused, saying to quote the delimiter.
fn copy_heredocs(
    first: &str,
    bodies: &str,
    escape: char,
) -> Result<(String, Vec<InlineFile>), String> {
    let markers = heredoc_markers(first, escape);
    let mut words = split_shell_words(first, escape);
    let dest = words.pop().unwrap_or_default();
    if words.len() != markers.len() || heredoc_markers(&dest, escape).len() == 1 {
        return Err(
            "COPY: expected heredocs then a destination (`COPY <<EOF /path`); heredocs and \
             context files in one COPY are not supported, use two"
                .to_owned(),
        );
    }
    let mut lines = bodies.split('\n');
    let mut files = Vec::with_capacity(markers.len());
    for marker in markers {
        let mut content = String::new();
        for line in lines.by_ref() {
            let line = if marker.strip_tabs {
                line.trim_start_matches('\t')
            } else {
                line
            };
            if line == marker.delimiter {
                break;
            }
            content.push_str(line);
            content.push('\n');
        }
        if !marker.quoted && content.contains('$') {
            return Err(format!(
                "COPY <<{0}: the body holds `$`, which Docker would expand; quote the \
                 delimiter (<<'{0}') to copy it as written",
                marker.delimiter
            ));
        }
        files.push(InlineFile {
            name: marker.delimiter,
            content,
        });
    }
    Ok((dest, files))
}

/// `ADD [flags] src... dest`; URL sources are classified as written (a
/// source hidden in a variable is classified again when expanded).
fn parse_add(flags: &Flags, rest: &str, escape: char) -> Result<Instruction, String> {
    let (sources, dest) = parse_sources_and_dest(Keyword::Add, rest, escape)?;
    let checksum = flags
        .get("checksum")
        .map(|c| Checksum::parse(c).map_err(|e| format!("ADD: --checksum: {e}")))
        .transpose()?;
    Ok(Instruction::Add {
        sources: sources.into_iter().map(AddSource::classify).collect(),
        dest,
        chown: flags.get("chown").map(str::to_owned),
        chmod: parse_chmod(Keyword::Add, flags)?,
        checksum,
    })
}

fn parse_sources_and_dest(
    keyword: Keyword,
    rest: &str,
    escape: char,
) -> Result<(Vec<String>, String), String> {
    let mut paths = match parse_array(rest) {
        JsonArray::Strings(paths) => paths,
        JsonArray::NotStrings(what) => return Err(not_strings(keyword, &what)),
        JsonArray::NotJson => {
            refuse_heredoc(keyword, rest, escape)?;
            split_whitespace(rest)
        }
    };
    let count = paths.len();
    match paths.pop() {
        Some(dest) if count >= 2 => Ok((paths, dest)),
        _ => Err(format!(
            "{keyword}: expected at least one source and a destination, found {count} argument{}",
            if count == 1 { "" } else { "s" }
        )),
    }
}

/// `--chmod=0755`: octal, at most 0o7777. Not expanded.
fn parse_chmod(keyword: Keyword, flags: &Flags) -> Result<Option<u32>, String> {
    let Some(text) = flags.get("chmod") else {
        return Ok(None);
    };
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|&mode| mode <= 0o7777 && text.chars().all(|c| c.is_digit(8)))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "{keyword}: --chmod: expected an octal mode up to 7777 such as 0755, found {text}"
            )
        })
}

/// `ENV`/`LABEL`: `K=V K2="v 2"`, or the legacy `K V with spaces` (chosen,
/// as in Docker, by whether the first word has an `=`).
fn parse_key_values(keyword: Keyword, rest: &str, escape: char) -> Result<Vec<KeyValue>, String> {
    let words = split_shell_words(rest, escape);
    let Some(first) = words.first() else {
        return Err(format!("{keyword}: expected KEY=VALUE, found nothing"));
    };
    if !first.contains('=') {
        return legacy_key_value(keyword, rest);
    }
    words
        .iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err(format!("{keyword}: expected a name before = in `{word}`")),
            Some((key, value)) => Ok(KeyValue {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
            None => Err(format!("{keyword}: expected KEY=VALUE, found `{word}`")),
        })
        .collect()
}

/// `ENV KEY value with spaces`: the first word is the key, everything after
/// it the value.
fn legacy_key_value(keyword: Keyword, rest: &str) -> Result<Vec<KeyValue>, String> {
    let (key, value) = split_keyword(rest);
    if value.is_empty() {
        return Err(format!(
            "{keyword}: expected a value for {key} (write {key}=VALUE)"
        ));
    }
    Ok(vec![KeyValue {
        key: key.to_owned(),
        value: value.to_owned(),
    }])
}

/// `ARG NAME`, `ARG NAME=default`, several per line allowed.
fn parse_args(rest: &str, escape: char) -> Result<Vec<Arg>, String> {
    let words = split_shell_words(rest, escape);
    if words.is_empty() {
        return Err("ARG: expected NAME or NAME=DEFAULT, found nothing".to_owned());
    }
    words
        .iter()
        .map(|word| {
            let (name, default) = match word.split_once('=') {
                Some((name, default)) => (name, Some(default.to_owned())),
                None => (word.as_str(), None),
            };
            if name.is_empty() {
                return Err(format!("ARG: expected a name before = in `{word}`"));
            }
            Ok(Arg {
                name: name.to_owned(),
                default,
            })
        })
        .collect()
}

/// WORKDIR and USER take the whole rest of the line as one value.
fn parse_rest(keyword: Keyword, rest: &str, expected: &str) -> Result<String, String> {
    if rest.is_empty() {
        return Err(format!("{keyword}: expected {expected}, found nothing"));
    }
    Ok(rest.to_owned())
}

/// `VOLUME ["/a", "/b"]` or `VOLUME /a /b`.
fn parse_volumes(rest: &str) -> Result<Vec<String>, String> {
    let paths = if rest.trim_start().starts_with('[') {
        match parse_command(Keyword::Volume, rest)? {
            Command::Exec(paths) => paths,
            Command::Shell(_) => Vec::new(),
        }
    } else {
        split_whitespace(rest)
    };
    if paths.is_empty() {
        return Err("VOLUME: expected one or more paths".into());
    }
    Ok(paths)
}

/// `HEALTHCHECK [flags] CMD command` or `HEALTHCHECK NONE`.
fn parse_healthcheck(flags: &Flags, rest: &str) -> Result<Healthcheck, String> {
    let (word, command) = split_keyword(rest);
    if word.eq_ignore_ascii_case("none") {
        if !command.is_empty() {
            return Err(format!(
                "HEALTHCHECK: expected nothing after NONE, found `{command}`"
            ));
        }
        if !flags.values.is_empty() {
            return Err("HEALTHCHECK: NONE takes no flags".to_owned());
        }
        return Ok(Healthcheck::default());
    }
    if !word.eq_ignore_ascii_case("cmd") {
        return Err(format!(
            "HEALTHCHECK: expected `CMD command` or `NONE`, found `{rest}`"
        ));
    }
    let command = parse_command(Keyword::Healthcheck, command)?;
    if command == Command::Exec(Vec::new()) {
        return Err("HEALTHCHECK: expected a command, found an empty exec form []".to_owned());
    }
    let duration = |name: &str| -> Result<u64, String> {
        flags.get(name).map_or(Ok(0), |text| {
            let ns = parse_duration(text).ok_or_else(|| {
                format!(
                    "HEALTHCHECK: --{name}={text}: expected a duration like 30s, 1m30s or 500ms"
                )
            })?;
            // Docker's rule: a duration, if given, is at least 1ms.
            if ns < 1_000_000 {
                return Err(format!(
                    "HEALTHCHECK: --{name}={text}: must be at least 1ms"
                ));
            }
            Ok(ns)
        })
    };
    let retries = match flags.get("retries") {
        Some(text) => text.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
            format!("HEALTHCHECK: --retries={text}: expected a count of at least 1")
        })?,
        None => 0,
    };
    Ok(Healthcheck {
        command: Some(command),
        interval_ns: duration("interval")?,
        timeout_ns: duration("timeout")?,
        start_period_ns: duration("start-period")?,
        start_interval_ns: duration("start-interval")?,
        retries,
    })
}

/// A Go duration (`1h30m`, `1.5s`, `300ms`, `2us`, `10ns`) in nanoseconds,
/// as Docker reads `HEALTHCHECK` flags; `None` if malformed or too long.
fn parse_duration(text: &str) -> Option<u64> {
    const UNITS: [(&str, f64); 7] = [
        ("ns", 1.0),
        ("us", 1e3),
        ("µs", 1e3),
        ("ms", 1e6),
        ("s", 1e9),
        ("m", 60e9),
        ("h", 3600e9),
    ];
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        // The longest unit that matches: `ms` before `m`.
        let (unit, scale) = UNITS
            .iter()
            .filter(|(unit, _)| rest.starts_with(unit))
            .max_by_key(|(unit, _)| unit.len())?;
        rest = &rest[unit.len()..];
        total += number * scale;
    }
    // Go's durations stop at about 292 years.
    (total.is_finite() && total <= i64::MAX as f64).then_some(total as u64)
}

fn parse_expose(rest: &str) -> Result<Vec<String>, String> {
    let ports = split_whitespace(rest);
    if ports.is_empty() {
        return Err(
            "EXPOSE: expected at least one port such as 80 or 53/udp, found nothing".to_owned(),
        );
    }
    Ok(ports)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(Keyword::parse("run").unwrap(), Keyword::Run);
        assert_eq!(Keyword::parse("EntryPoint").unwrap(), Keyword::Entrypoint);
    }

    #[test]
    fn unknown_words_and_unsupported_instructions_are_told_apart() {
        assert_eq!(
            Keyword::parse("onbuild").unwrap_err(),
            format!("unsupported instruction ONBUILD (supported: {SUPPORTED})")
        );
        assert_eq!(
            Keyword::parse("RUNN").unwrap_err(),
            format!("unknown instruction RUNN (supported: {SUPPORTED})")
        );
    }

    #[test]
    fn chmod_must_be_octal_and_at_most_7777() {
        let flags = |v: &str| Flags {
            values: vec![("chmod".to_owned(), v.to_owned())],
        };
        assert_eq!(
            parse_chmod(Keyword::Copy, &flags("755")).unwrap(),
            Some(0o755)
        );
        assert_eq!(
            parse_chmod(Keyword::Copy, &flags("04755")).unwrap(),
            Some(0o4755)
        );
        for bad in ["8", "u+x", "17777", "-1", "+7"] {
            assert!(parse_chmod(Keyword::Copy, &flags(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn stage_names_are_lowercased_and_checked() {
        assert_eq!(stage_name("Build-1.x_y").unwrap(), "build-1.x_y");
        assert!(stage_name("1st").is_err());
        assert!(stage_name("a/b").is_err());
    }
}
