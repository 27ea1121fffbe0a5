//! Splitting an instruction's text into its parts, the way BuildKit's parser
//! does: the keyword, the leading `--flag=value` words, and the arguments
//! (whitespace-separated, or shell-like words that keep their quotes for the
//! later expansion step to remove).

/// Splits a logical line into its keyword and the rest (both trimmed).
pub(crate) fn split_keyword(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.find(char::is_whitespace) {
        Some(end) => (&line[..end], line[end..].trim_start()),
        None => (line, ""),
    }
}

/// Takes the `--flag` words off the front of `args`, returning them (quotes
/// and backslash escapes removed) and the text after them. Flags are only
/// recognised before the first argument that does not start with `--`; a
/// lone `--` ends them.
pub(crate) fn extract_flags(args: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut rest = args.trim_start();
    while rest.starts_with("--") {
        let (word, after) = flag_word(rest);
        rest = after.trim_start();
        if word == "--" {
            break;
        }
        flags.push(word);
    }
    (flags, rest)
}

/// One flag word up to unquoted whitespace. BuildKit always uses `\` here,
/// whatever the escape directive says.
fn flag_word(text: &str) -> (String, &str) {
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => return (word, &text[index..]),
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                if let Some((_, escaped)) = chars.next() {
                    word.push(escaped);
                }
            }
            (_, c) => word.push(c),
        }
    }
    (word, "")
}

/// Splits on runs of whitespace; quotes mean nothing here (BuildKit's
/// `parseStringsWhitespaceDelimited`, used by FROM, COPY, ADD and EXPOSE).
pub(crate) fn split_whitespace(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// Splits into shell-like words (BuildKit's `parseWords`, used by ENV, LABEL
/// and ARG): whitespace inside quotes or after the escape character does not
/// split, and quotes and escapes are *kept* in the words, to be removed by
/// [`expand`](fn@super::expand).
pub(crate) fn split_shell_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == escape && quote != Some('\'') {
            // Inside single quotes nothing escapes; elsewhere the escape
            // protects the next character. At the very end it is dropped.
            if let Some(escaped) = chars.next() {
                word.push(c);
                word.push(escaped);
            }
            continue;
        }
        match quote {
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ => {}
        }
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The first heredoc marker (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`) among
/// the unquoted words of `text`, if any. `<<<` (a here-string) is not one.
pub(crate) fn find_heredoc(text: &str, escape: char) -> Option<String> {
    split_shell_words(text, escape)
        .into_iter()
        .find(|word| is_heredoc_marker(word))
}

/// A heredoc a line opens: `<<WORD`, `<<-WORD` (tabs stripped from its
/// lines), quoted or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeredocMarker {
    /// The terminating line, quotes removed.
    pub delimiter: String,
    /// `<<-`: leading tabs are stripped from the body and the terminator.
    pub strip_tabs: bool,
    /// `<<"EOF"` or `<<'EOF'`: the body is taken literally.
    pub quoted: bool,
}

/// Every heredoc `text` opens, in order.
pub(crate) fn heredoc_markers(text: &str, escape: char) -> Vec<HeredocMarker> {
    split_shell_words(text, escape)
        .into_iter()
        .filter(|word| is_heredoc_marker(word))
        .map(|word| {
            let rest = word
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start_matches("<<");
            let strip_tabs = rest.starts_with('-');
            let rest = rest.strip_prefix('-').unwrap_or(rest);
            let quoted = rest.contains(['"', '\'']) || rest.contains(escape);
            let delimiter = rest
                .chars()
                .filter(|&c| c != '"' && c != '\'' && c != escape)
                .collect();
            HeredocMarker {
                delimiter,
                strip_tabs,
                quoted,
            }
        })
        .collect()
}

fn is_heredoc_marker(word: &str) -> bool {
    let Some(rest) = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")
    else {
        return false;
    };
    let delimiter = rest.strip_prefix('-').unwrap_or(rest);
    !delimiter.is_empty() && !delimiter.contains('<')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keyword_is_split_from_its_arguments() {
        assert_eq!(split_keyword("  RUN   echo  hi "), ("RUN", "echo  hi"));
        assert_eq!(split_keyword("RUN\techo"), ("RUN", "echo"));
        assert_eq!(split_keyword("RUN"), ("RUN", ""));
    }

    #[test]
    fn leading_flags_are_extracted() {
        let (flags, rest) = extract_flags("--network=host  --foo=\"a b\" echo --not-a-flag");
        assert_eq!(flags, vec!["--network=host", "--foo=a b"]);
        assert_eq!(rest, "echo --not-a-flag");
    }

    #[test]
    fn double_dash_ends_flags() {
        let (flags, rest) = extract_flags("--chown=1 -- --weird-file /dst");
        assert_eq!(flags, vec!["--chown=1"]);
        assert_eq!(rest, "--weird-file /dst");
    }

    #[test]
    fn flags_alone_leave_nothing() {
        let (flags, rest) = extract_flags("--network=none");
        assert_eq!(flags, vec!["--network=none"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn single_dash_is_not_a_flag() {
        let (flags, rest) = extract_flags("-x --y");
        assert!(flags.is_empty());
        assert_eq!(rest, "-x --y");
    }

    #[test]
    fn shell_words_keep_quotes_and_escapes() {
        assert_eq!(
            split_shell_words(r#"A="a b" B='c d' C=e\ f D"#, '\\'),
            vec![r#"A="a b""#, "B='c d'", r"C=e\ f", "D"]
        );
    }

    #[test]
    fn shell_words_respect_the_escape_character() {
        assert_eq!(
            split_shell_words(r"A=c:\dir B=x` y", '`'),
            vec![r"A=c:\dir", "B=x` y"]
        );
    }

    #[test]
    fn nothing_escapes_inside_single_quotes() {
        assert_eq!(
            split_shell_words(r"A='x\' B=y", '\\'),
            vec![r"A='x\'", "B=y"]
        );
    }

    #[test]
    fn heredoc_markers_are_found_only_unquoted() {
        assert_eq!(find_heredoc("cat <<EOF", '\\'), Some("<<EOF".to_owned()));
        assert_eq!(find_heredoc("<<-EOT /dst", '\\'), Some("<<-EOT".to_owned()));
        assert_eq!(
            find_heredoc("cat 3<<\"X\"", '\\'),
            Some("3<<\"X\"".to_owned())
        );
        assert_eq!(find_heredoc("cat <<< word", '\\'), None);
        assert_eq!(find_heredoc("echo '<<EOF'", '\\'), None);
        assert_eq!(find_heredoc("echo << EOF", '\\'), None);
    }
}
