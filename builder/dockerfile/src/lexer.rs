//! Physical lines to logical lines: parser directives, comments, blank lines
//! and line continuations, following BuildKit's rules so that a file means
//! the same thing here as under `docker build`.
//!
//! - Parser directives (`# escape=`, `# syntax=`, `# check=`) are read only
//!   at the very top; the first line that is not a known directive ends them,
//!   and directive-looking lines after that are plain comments.
//! - A comment is a line whose first non-blank character is `#`. Comment
//!   lines and blank lines inside a continuation are skipped, so they neither
//!   end the instruction nor add text to it.
//! - A line ending in the escape character (blanks after it tolerated)
//!   continues on the next line; the escape and the newline are removed and
//!   the pieces joined with nothing in between, as Docker does.
//!
//! - A `RUN` or `COPY` line that opens heredocs (`<<EOF`, `<<-EOF`, quoted or not)
//!   takes the lines after it, up to each terminator, into its text as
//!   written: comments and blank lines included, nothing joined.
//!
//! Unlike Docker, a continuation still open at the end of the file is an
//! error: it is almost always a truncated file or a stray escape; so is a
//! heredoc without its terminating line.

use std::collections::HashMap;

use super::words::{HeredocMarker, heredoc_markers, split_keyword};

/// The escape character when no `# escape=` directive is given.
pub(crate) const DEFAULT_ESCAPE: char = '\\';

/// Directives BuildKit knows. Only `escape` changes how we parse; the others
/// are accepted and ignored (`syntax` picks a frontend, `check` configures
/// lint rules, neither applies here).
const KNOWN_DIRECTIVES: [&str; 3] = ["escape", "syntax", "check"];

/// One instruction's text with its continuations joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogicalLine {
    /// 1-based number of the physical line the instruction starts on.
    pub line: usize,
    /// The joined text, leading blanks removed.
    pub text: String,
}

/// The lexer's output: the escape character in force and the instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lexed {
    pub escape: char,
    /// Directives read and deliberately ignored (`syntax`, `check`), as
    /// `name=value`.
    pub ignored_directives: Vec<String>,
    pub lines: Vec<LogicalLine>,
    /// Number of physical lines, for errors about the end of the file.
    pub line_count: usize,
}

/// A lexing error: where and what, without the file name (the caller adds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LexError {
    pub line: usize,
    pub message: String,
}

/// Splits `text` into logical lines after reading the parser directives.
pub(crate) fn lex(text: &str) -> Result<Lexed, LexError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let physical: Vec<&str> = text.lines().collect();
    let (escape, ignored_directives) = read_directives(&physical)?;
    let lines = join_continuations(&physical, escape)?;
    Ok(Lexed {
        escape,
        ignored_directives,
        lines,
        line_count: physical.len(),
    })
}

/// Reads the directive block at the top of the file and returns the escape
/// character it sets (the default if none) and the directives it ignores.
fn read_directives(physical: &[&str]) -> Result<(char, Vec<String>), LexError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut escape = DEFAULT_ESCAPE;
    let mut ignored = Vec::new();
    for (index, text) in physical.iter().enumerate() {
        let line = index + 1;
        let Some((name, value)) = directive(text) else {
            break;
        };
        if !KNOWN_DIRECTIVES.contains(&name.as_str()) {
            // BuildKit treats an unknown directive as a comment, which ends
            // the directive block.
            break;
        }
        if let Some(first) = seen.insert(name.clone(), line) {
            return Err(LexError {
                line,
                message: format!("the {name} directive is given twice (first on line {first})"),
            });
        }
        if name == "escape" {
            escape = escape_char(value).map_err(|message| LexError { line, message })?;
        } else {
            ignored.push(format!("{name}={value}"));
        }
    }
    Ok((escape, ignored))
}

/// Recognises `# name = value` (BuildKit's
/// `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`), returning the lower-cased
/// name and the value.
fn directive(text: &str) -> Option<(String, &str)> {
    let body = text.trim_start().strip_prefix('#')?.trim_start();
    let name_len = body
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(body.len());
    let name = &body[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = body[name_len..].trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value))
}

fn escape_char(value: &str) -> Result<char, String> {
    match value {
        "\\" => Ok('\\'),
        "`" => Ok('`'),
        other => Err(format!(
            "invalid escape directive: expected \\ or `, found {other}"
        )),
    }
}

/// Joins continued lines and drops comments and blank lines.
fn join_continuations(physical: &[&str], escape: char) -> Result<Vec<LogicalLine>, LexError> {
    let mut logical = Vec::new();
    let mut rest = physical.iter().enumerate();
    while let Some((index, raw)) = rest.next() {
        let start = index + 1;
        let first = raw.trim_start();
        if is_comment(first) {
            continue;
        }
        let (head, mut continues) = strip_continuation(first, escape);
        if !continues && head.trim().is_empty() {
            continue;
        }
        let mut text = head.to_owned();
        while continues {
            let Some((_, next)) = rest.next() else {
                return Err(unterminated_continuation(start, escape));
            };
            if is_comment(next) || next.trim().is_empty() {
                continue;
            }
            let (piece, more) = strip_continuation(next, escape);
            text.push_str(piece);
            continues = more;
        }
        if text.trim().is_empty() {
            continue;
        }
        if opens_heredocs(&text) {
            for marker in heredoc_markers(&text, escape) {
                read_heredoc(&mut text, &marker, &mut rest, start)?;
            }
        }
        logical.push(LogicalLine { line: start, text });
    }
    Ok(logical)
}

/// Whether heredocs on this instruction line have bodies to read: `RUN`
/// and `COPY` (ADD heredocs are refused when parsed, at their line).
fn opens_heredocs(text: &str) -> bool {
    let keyword = split_keyword(text).0;
    keyword.eq_ignore_ascii_case("run") || keyword.eq_ignore_ascii_case("copy")
}

/// Appends one heredoc's lines, terminator included, to `text` exactly as
/// written (the shell that runs the step reads them as a heredoc).
fn read_heredoc<'a>(
    text: &mut String,
    marker: &HeredocMarker,
    rest: &mut impl Iterator<Item = (usize, &'a &'a str)>,
    start: usize,
) -> Result<(), LexError> {
    for (_, raw) in rest.by_ref() {
        text.push('\n');
        text.push_str(raw);
        let line = if marker.strip_tabs {
            raw.trim_start_matches('\t')
        } else {
            raw
        };
        if line == marker.delimiter {
            return Ok(());
        }
    }
    Err(LexError {
        line: start,
        message: format!(
            "unexpected end of file: the heredoc <<{} opened on this line has no line `{}` \
             ending it",
            marker.delimiter, marker.delimiter
        ),
    })
}

fn unterminated_continuation(start: usize, escape: char) -> LexError {
    LexError {
        line: start,
        message: format!(
            "unexpected end of file: the instruction starting on this line ends with a line \
             continuation ({escape}) but no line follows it"
        ),
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a trailing escape character (and blanks after it), saying whether
/// there was one, i.e. whether the instruction continues on the next line.
fn strip_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(head) => (head, true),
        None => (line, false),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn texts(input: &str) -> Vec<(usize, String)> {
        lex(input)
            .unwrap()
            .lines
            .into_iter()
            .map(|l| (l.line, l.text))
            .collect()
    }

    #[test]
    fn comments_and_blank_lines_are_dropped() {
        let got = texts("# hello\n\nFROM scratch\n   # indented comment\nRUN true\n");
        assert_eq!(
            got,
            vec![(3, "FROM scratch".to_owned()), (5, "RUN true".to_owned())]
        );
    }

    #[test]
    fn continuation_joins_lines_without_a_separator() {
        let got = texts("RUN a \\\n  b\\\nc\n");
        assert_eq!(got, vec![(1, "RUN a   bc".to_owned())]);
    }

    #[test]
    fn comment_and_blank_lines_inside_a_continuation_are_skipped() {
        let got = texts("RUN a \\\n# comment\n\n   \n  && b\nRUN c\n");
        assert_eq!(
            got,
            vec![(1, "RUN a   && b".to_owned()), (6, "RUN c".to_owned())]
        );
    }

    #[test]
    fn blanks_after_the_escape_still_continue() {
        let got = texts("RUN a \\  \t\n b\n");
        assert_eq!(got, vec![(1, "RUN a  b".to_owned())]);
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let got = texts("FROM scratch\r\nRUN a \\\r\n b\r\n");
        assert_eq!(
            got,
            vec![(1, "FROM scratch".to_owned()), (2, "RUN a  b".to_owned())]
        );
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let got = texts("\u{feff}FROM scratch\n");
        assert_eq!(got, vec![(1, "FROM scratch".to_owned())]);
    }

    #[test]
    fn backtick_escape_directive_changes_the_continuation_character() {
        let lexed = lex("# escape=`\nRUN dir c:\\ `\n  /b\n").unwrap();
        assert_eq!(lexed.escape, '`');
        assert_eq!(lexed.lines[0].text, "RUN dir c:\\   /b");
    }

    #[test]
    fn directives_are_case_insensitive_and_may_be_spaced() {
        let lexed = lex("#  ESCAPE  =  `\nFROM scratch\n").unwrap();
        assert_eq!(lexed.escape, '`');
    }

    #[test]
    fn syntax_directive_is_accepted_and_ignored() {
        let lexed = lex("# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch\n").unwrap();
        assert_eq!(lexed.escape, '`');
        assert_eq!(lexed.lines.len(), 1);
    }

    #[test]
    fn directive_after_a_comment_is_only_a_comment() {
        let lexed = lex("# a comment\n# escape=`\nFROM scratch\n").unwrap();
        assert_eq!(lexed.escape, '\\');
    }

    #[test]
    fn directive_after_an_unknown_directive_is_only_a_comment() {
        let lexed = lex("# foo=bar\n# escape=`\nFROM scratch\n").unwrap();
        assert_eq!(lexed.escape, '\\');
    }

    #[test]
    fn invalid_escape_value_is_refused() {
        let err = lex("# escape=x\nFROM scratch\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert_eq!(
            err.message,
            "invalid escape directive: expected \\ or `, found x"
        );
    }

    #[test]
    fn repeated_directive_is_refused() {
        let err = lex("# escape=\\\n# escape=`\nFROM scratch\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(
            err.message,
            "the escape directive is given twice (first on line 1)"
        );
    }

    #[test]
    fn continuation_open_at_end_of_file_names_the_starting_line() {
        let err = lex("FROM scratch\nRUN a \\\n  b \\\n# trailing comment\n\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            err.message.starts_with("unexpected end of file"),
            "{}",
            err.message
        );
    }
}
