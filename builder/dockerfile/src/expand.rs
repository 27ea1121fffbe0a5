//! Variable expansion and quote removal for one word, as Docker's shell-word
//! processing does it for FROM, COPY, ADD, ENV, ARG, WORKDIR, USER, LABEL
//! and EXPOSE (never for RUN, CMD or ENTRYPOINT: their text goes to a shell).
//!
//! Supported:
//! - `$NAME` and `${NAME}`; an unset variable expands to nothing;
//! - `${NAME:-word}` (word if unset or empty), `${NAME-word}` (if unset),
//!   `${NAME:+word}` (word if set and non-empty), `${NAME+word}` (if set);
//!   `word` is itself expanded and may be quoted;
//! - single quotes (everything literal), double quotes (variables expanded;
//!   the escape character escapes `"`, `$` and itself), and outside quotes
//!   the escape character makes the next character literal (`\$HOME`).
//!
//! Other substitutions (`${NAME:?msg}`, `${#NAME}`, `${NAME%suffix}`, ...)
//! are errors rather than being passed through, so a build never silently
//! uses a half-expanded path.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::iter::Peekable;
use std::str::Chars;

use thiserror::Error;

/// Where expansion looks variables up: the build args and environment in
/// scope at a step. Implemented for the usual maps and for an ordered list
/// of pairs (where a later entry shadows an earlier one, as a later `ENV`
/// does).
pub trait Scope {
    /// The value of `name`, or `None` if it is not set (which is different
    /// from set to the empty string for `${NAME-word}` and `${NAME+word}`).
    fn lookup(&self, name: &str) -> Option<&str>;
}

/// A scope with no variables set, for words that are known to be literal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmptyScope;

impl Scope for EmptyScope {
    fn lookup(&self, _name: &str) -> Option<&str> {
        None
    }
}

impl<S: BuildHasher> Scope for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Scope for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Scope for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExpandError {
    #[error("unterminated double quote")]
    UnterminatedDoubleQuote,
    #[error("unterminated single quote")]
    UnterminatedSingleQuote,
    /// `${NAME` or `${NAME:-word` with no closing brace.
    #[error("missing }} to close ${{{name}")]
    MissingBrace { name: String },
    /// `${}`, `${:x}`, `${{`, `${-x}`: no variable name after `${`.
    #[error("bad substitution: expected a variable name after ${{, found {found}")]
    BadSubstitution { found: String },
    /// A modifier outside the set BuildKit supports.
    #[error(
        "unsupported substitution ${{{name}{modifier}...}}: supported are ${{NAME}}, \
         ${{NAME:-default}}, ${{NAME-default}}, ${{NAME:+alternative}}, ${{NAME+alternative}}, \
         ${{NAME:?message}}, ${{NAME?message}}, ${{NAME#glob}}, ${{NAME##glob}}, \
         ${{NAME%glob}}, ${{NAME%%glob}}, ${{NAME/glob/replacement}} and \
         ${{NAME//glob/replacement}}"
    )]
    UnsupportedModifier { name: String, modifier: String },
    /// `${NAME:?message}` (or `${NAME?message}`) of a variable not set (or
    /// empty): the Dockerfile's own message.
    #[error("{name} is required: {message}")]
    Required { name: String, message: String },
    /// A pattern substitution (`#`, `%`, `/`) on a value too long for it.
    #[error(
        "${{{name}...}}: pattern substitutions take values of at most {MAX_PATTERN_VALUE} \
         characters; {name} has {len}"
    )]
    ValueTooLong { name: String, len: usize },
}

/// The longest value a pattern substitution works on: matching is
/// quadratic in it, and Dockerfile values (versions, paths) are short.
const MAX_PATTERN_VALUE: usize = 4096;

/// Expands variables in `word` and removes its quotes and escapes.
///
/// `escape` is the Dockerfile's escape character (`\` unless an
/// `# escape=` directive says otherwise).
pub fn expand(word: &str, escape: char, scope: &dyn Scope) -> Result<String, ExpandError> {
    let mut expander = WordExpander {
        chars: word.chars().peekable(),
        escape,
        scope,
    };
    expander.until_end()
}

struct WordExpander<'a> {
    chars: Peekable<Chars<'a>>,
    escape: char,
    scope: &'a dyn Scope,
}

/// Where a run of word text ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// At the end of the word.
    End,
    /// At the `}` closing a `${NAME:-word}` (a quoted `}` does not count).
    Brace,
    /// At the `/` ending the pattern of `${NAME/pattern/word}`, or a `}`.
    SlashOrBrace,
}

impl WordExpander<'_> {
    fn until_end(&mut self) -> Result<String, ExpandError> {
        self.text(Stop::End).map(|(text, _)| text)
    }

    /// The modifier word of `${name<op>word}`, up to and including the `}`.
    fn until_brace(&mut self, name: &str) -> Result<String, ExpandError> {
        match self.text(Stop::Brace)? {
            (text, Some(_)) => Ok(text),
            (_, None) => Err(ExpandError::MissingBrace {
                name: name.to_owned(),
            }),
        }
    }

    /// Expands text up to `stop`; returns it and the character it stopped
    /// at (consumed), if it met one before the end of the word.
    fn text(&mut self, stop: Stop) -> Result<(String, Option<char>), ExpandError> {
        let mut out = String::new();
        while let Some(&c) = self.chars.peek() {
            if (stop == Stop::Brace && c == '}')
                || (stop == Stop::SlashOrBrace && (c == '}' || c == '/'))
            {
                self.chars.next();
                return Ok((out, Some(c)));
            }
            match c {
                '\'' => out.push_str(&self.single_quoted()?),
                '"' => out.push_str(&self.double_quoted()?),
                '$' => out.push_str(&self.dollar()?),
                _ => {
                    self.chars.next();
                    if c != self.escape {
                        out.push(c);
                    } else if let Some(escaped) = self.chars.next() {
                        out.push(escaped);
                    }
                    // An escape at the very end of the word is dropped.
                }
            }
        }
        Ok((out, None))
    }

    /// `'...'`: everything literal; there is no way to escape `'`.
    fn single_quoted(&mut self) -> Result<String, ExpandError> {
        self.chars.next();
        let mut out = String::new();
        loop {
            match self.chars.next() {
                None => return Err(ExpandError::UnterminatedSingleQuote),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    /// `"..."`: variables expanded; the escape character escapes `"`, `$`
    /// and itself and is kept literally before anything else.
    fn double_quoted(&mut self) -> Result<String, ExpandError> {
        self.chars.next();
        let mut out = String::new();
        loop {
            match self.chars.peek().copied() {
                None => return Err(ExpandError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.chars.next();
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.chars.next();
                    let escapes_next = c == self.escape
                        && matches!(self.chars.peek(), Some(&n) if n == '"' || n == '$' || n == self.escape);
                    match self.chars.next_if(|_| escapes_next) {
                        Some(escaped) => out.push(escaped),
                        None => out.push(c),
                    }
                }
            }
        }
    }

    /// `$NAME`, `${NAME}` or `${NAME<modifier>word}`; a `$` not followed by
    /// a name stays a literal `$`.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        self.chars.next();
        if self.chars.next_if_eq(&'{').is_none() {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(self.value(&name).unwrap_or_default().to_owned());
        }
        self.braced()
    }

    /// The part of `${...}` after the `{`.
    fn braced(&mut self) -> Result<String, ExpandError> {
        let name = self.name();
        if name.is_empty() {
            let found = match self.chars.peek() {
                None => "the end of the word".to_owned(),
                Some(c) => format!("{c}"),
            };
            return Err(ExpandError::BadSubstitution { found });
        }
        let value = self.value(&name).map(str::to_owned);
        match self.chars.next() {
            Some('}') => Ok(value.unwrap_or_default()),
            Some(':') => match self.chars.next() {
                Some(op @ ('-' | '+' | '?')) => {
                    let word = self.until_brace(&name)?;
                    let set = value.as_deref().is_some_and(|v| !v.is_empty());
                    apply_modifier(op, set, name, value, word)
                }
                Some(other) => Err(unsupported(name, format!(":{other}"))),
                None => Err(ExpandError::MissingBrace { name }),
            },
            Some(op @ ('-' | '+' | '?')) => {
                let word = self.until_brace(&name)?;
                let set = value.is_some();
                apply_modifier(op, set, name, value, word)
            }
            Some(op @ ('#' | '%')) => {
                let longest = self.chars.next_if_eq(&op).is_some();
                let pattern: Vec<char> = self.until_brace(&name)?.chars().collect();
                let value: Vec<char> = value.unwrap_or_default().chars().collect();
                if value.len() > MAX_PATTERN_VALUE {
                    return Err(ExpandError::ValueTooLong {
                        name,
                        len: value.len(),
                    });
                }
                let kept = if op == '#' {
                    strip_prefix(&value, &pattern, longest)
                } else {
                    strip_suffix(&value, &pattern, longest)
                };
                Ok(kept.iter().collect())
            }
            Some('/') => {
                let all = self.chars.next_if_eq(&'/').is_some();
                let replacement = match self.text(Stop::SlashOrBrace)? {
                    (pattern, Some('/')) => (pattern, self.until_brace(&name)?),
                    // `${NAME/pattern}`: replaced by nothing.
                    (pattern, Some(_)) => (pattern, String::new()),
                    (_, None) => return Err(ExpandError::MissingBrace { name }),
                };
                let (pattern, replacement) = replacement;
                let value = value.unwrap_or_default();
                let len = value.chars().count();
                if len > MAX_PATTERN_VALUE {
                    return Err(ExpandError::ValueTooLong { name, len });
                }
                Ok(replace(&value, &pattern, &replacement, all))
            }
            Some(other) => Err(unsupported(name, other.to_string())),
            None => Err(ExpandError::MissingBrace { name }),
        }
    }

    /// A variable name: letters, digits and `_`; a leading digit makes a
    /// positional name of digits only (`$1`), which is never set.
    fn name(&mut self) -> String {
        let mut name = String::new();
        if self.chars.peek().is_some_and(char::is_ascii_digit) {
            while let Some(digit) = self.chars.next_if(char::is_ascii_digit) {
                name.push(digit);
            }
            return name;
        }
        while let Some(c) = self.chars.next_if(|&c| c.is_alphanumeric() || c == '_') {
            name.push(c);
        }
        name
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.scope.lookup(name)
    }
}

/// `-` takes `word` when the variable is not "set"; `+` when it is; `?`
/// fails with `word` as the message when it is not.
fn apply_modifier(
    op: char,
    set: bool,
    name: String,
    value: Option<String>,
    word: String,
) -> Result<String, ExpandError> {
    Ok(match (op, set) {
        ('-' | '?', true) => value.unwrap_or_default(),
        ('-', false) | ('+', true) => word,
        ('?', false) => {
            let message = if word.is_empty() {
                "not set".to_owned()
            } else {
                word
            };
            return Err(ExpandError::Required { name, message });
        }
        _ => String::new(),
    })
}

fn unsupported(name: String, modifier: String) -> ExpandError {
    ExpandError::UnsupportedModifier { name, modifier }
}

/// One token of a shell glob: `*`, `?`, a bracket class, or a literal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Class { negated: bool, members: Vec<char> },
    Literal(char),
}

/// A shell glob (`*`, `?`, `[abc]`, `[a-z]`, `[!x]`; anything else literal),
/// as `${NAME#pattern}` and its kin match. Matched by simulating its
/// automaton, so any pattern costs at most pattern × text steps per text,
/// never an exponential search.
struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    fn new(pattern: &[char]) -> Glob {
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < pattern.len() {
            let token = match pattern[i] {
                '*' => Token::Star,
                '?' => Token::Any,
                '[' => match class_end(&pattern[i + 1..]) {
                    Some(end) => {
                        let class = &pattern[i + 1..i + 1 + end];
                        i += end + 1;
                        let (negated, members) = match class.split_first() {
                            Some(('!' | '^', members)) => (true, members.to_vec()),
                            _ => (false, class.to_vec()),
                        };
                        Token::Class { negated, members }
                    }
                    // An unclosed `[` is a literal `[`.
                    None => Token::Literal('['),
                },
                c => Token::Literal(c),
            };
            tokens.push(token);
            i += 1;
        }
        Glob { tokens }
    }

    /// For each `k` in `0..=text.len()`: whether `text[..k]` matches.
    fn prefix_matches(&self, text: &[char]) -> Vec<bool> {
        let states = self.tokens.len() + 1;
        let mut active = vec![false; states];
        active[0] = true;
        self.close(&mut active);
        let mut out = Vec::with_capacity(text.len() + 1);
        out.push(active[states - 1]);
        for &c in text {
            let mut next = vec![false; states];
            for (k, token) in self.tokens.iter().enumerate() {
                if !active[k] {
                    continue;
                }
                match token {
                    Token::Star => next[k] = true,
                    Token::Any => next[k + 1] = true,
                    Token::Literal(l) => next[k + 1] |= *l == c,
                    Token::Class { negated, members } => {
                        next[k + 1] |= class_matches(members, c) != *negated;
                    }
                }
            }
            self.close(&mut next);
            out.push(next[states - 1]);
            if !next.contains(&true) {
                out.resize(text.len() + 1, false);
                break;
            }
            active = next;
        }
        out
    }

    /// A `*` may match nothing: its state also enables the next.
    fn close(&self, active: &mut [bool]) {
        for (k, token) in self.tokens.iter().enumerate() {
            if active[k] && *token == Token::Star {
                active[k + 1] = true;
            }
        }
    }

    fn matches(&self, text: &[char]) -> bool {
        self.prefix_matches(text)[text.len()]
    }
}

/// Where the `]` closing a bracket class is in `rest` (the text after `[`).
/// A `]` right after the opening (or its `!`) is a member, not the end.
fn class_end(rest: &[char]) -> Option<usize> {
    let start = usize::from(matches!(rest.first(), Some('!' | '^')));
    (start + 1..rest.len()).find(|&i| rest[i] == ']')
}

/// Whether `c` is among `members` (single characters and `a-z` ranges).
fn class_matches(members: &[char], c: char) -> bool {
    let mut i = 0;
    while i < members.len() {
        if i + 2 < members.len() && members[i + 1] == '-' {
            if (members[i]..=members[i + 2]).contains(&c) {
                return true;
            }
            i += 3;
        } else {
            if members[i] == c {
                return true;
            }
            i += 1;
        }
    }
    false
}

/// `${NAME#glob}` (shortest) and `${NAME##glob}` (longest).
fn strip_prefix<'v>(value: &'v [char], pattern: &[char], longest: bool) -> &'v [char] {
    let ends = Glob::new(pattern).prefix_matches(value);
    let end = if longest {
        ends.iter().rposition(|&m| m)
    } else {
        ends.iter().position(|&m| m)
    };
    end.map_or(value, |end| &value[end..])
}

/// `${NAME%glob}` (shortest) and `${NAME%%glob}` (longest).
fn strip_suffix<'v>(value: &'v [char], pattern: &[char], longest: bool) -> &'v [char] {
    let glob = Glob::new(pattern);
    let matches = |start: &usize| glob.matches(&value[*start..]);
    let start = if longest {
        (0..=value.len()).find(matches)
    } else {
        (0..=value.len()).rev().find(matches)
    };
    start.map_or(value, |start| &value[..start])
}

/// `${NAME/glob/word}` (the first, longest match) and `${NAME//glob/word}`
/// (every match, left to right); an empty pattern replaces nothing.
fn replace(value: &str, pattern: &str, replacement: &str, all: bool) -> String {
    let pattern: Vec<char> = pattern.chars().collect();
    let value: Vec<char> = value.chars().collect();
    if pattern.is_empty() {
        return value.iter().collect();
    }
    let glob = Glob::new(&pattern);
    let mut out = String::new();
    let mut i = 0;
    let mut replaced = false;
    while i < value.len() {
        let longest = if all || !replaced {
            glob.prefix_matches(&value[i..])
                .iter()
                .rposition(|&m| m)
                .filter(|&len| len > 0)
        } else {
            None
        };
        match longest {
            Some(len) => {
                out.push_str(replacement);
                i += len;
                replaced = true;
            }
            None => {
                out.push(value[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn scope() -> Vec<(String, String)> {
        [
            ("HOME", "/root"),
            ("EMPTY", ""),
            ("NAME", "world"),
            ("SPACED", "a b"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    fn ex(word: &str) -> String {
        expand(word, '\\', &scope()).unwrap()
    }

    fn ex_err(word: &str) -> String {
        expand(word, '\\', &scope()).unwrap_err().to_string()
    }

    #[test]
    fn plain_and_braced_variables_expand() {
        assert_eq!(ex("$HOME/bin"), "/root/bin");
        assert_eq!(ex("${HOME}bin"), "/rootbin");
        assert_eq!(ex("hello-$NAME!"), "hello-world!");
        assert_eq!(ex("$NAME$NAME"), "worldworld");
    }

    #[test]
    fn unset_variables_expand_to_nothing() {
        assert_eq!(ex("a${UNSET}b$UNSET"), "ab");
        assert_eq!(ex("$1x"), "x");
    }

    #[test]
    fn dollar_without_a_name_is_literal() {
        assert_eq!(ex("cost: $ 5"), "cost: $ 5");
        assert_eq!(ex("end$"), "end$");
        assert_eq!(ex("a$-b"), "a$-b");
    }

    #[test]
    fn colon_dash_default_applies_when_unset_or_empty() {
        assert_eq!(ex("${UNSET:-dflt}"), "dflt");
        assert_eq!(ex("${EMPTY:-dflt}"), "dflt");
        assert_eq!(ex("${NAME:-dflt}"), "world");
    }

    #[test]
    fn dash_default_applies_only_when_unset() {
        assert_eq!(ex("${UNSET-dflt}"), "dflt");
        assert_eq!(ex("${EMPTY-dflt}"), "");
    }

    #[test]
    fn colon_plus_alternative_applies_when_set_and_non_empty() {
        assert_eq!(ex("${NAME:+alt}"), "alt");
        assert_eq!(ex("${EMPTY:+alt}"), "");
        assert_eq!(ex("${UNSET:+alt}"), "");
        assert_eq!(ex("${EMPTY+alt}"), "alt");
        assert_eq!(ex("${UNSET+alt}"), "");
    }

    #[test]
    fn modifier_words_are_expanded_and_unquoted() {
        assert_eq!(ex("${UNSET:-$HOME/x}"), "/root/x");
        assert_eq!(ex("${UNSET:-${NAME:-no}}"), "world");
        assert_eq!(ex("${UNSET:-\"a }b\"}"), "a }b");
        assert_eq!(ex("${UNSET:-a\\}b}"), "a}b");
        assert_eq!(ex("${UNSET:-}"), "");
    }

    #[test]
    fn escaped_dollar_is_literal() {
        assert_eq!(ex("\\$HOME"), "$HOME");
        assert_eq!(ex("\"\\$HOME\""), "$HOME");
        assert_eq!(ex("\\${HOME}"), "${HOME}");
    }

    #[test]
    fn backtick_escape_replaces_backslash() {
        let scope = scope();
        assert_eq!(expand("`$HOME", '`', &scope).unwrap(), "$HOME");
        assert_eq!(expand("c:\\$HOME", '`', &scope).unwrap(), "c:\\/root");
        assert_eq!(expand("\"a`\"b\"", '`', &scope).unwrap(), "a\"b");
    }

    #[test]
    fn escape_outside_quotes_makes_the_next_character_literal() {
        assert_eq!(ex("a\\ b"), "a b");
        assert_eq!(ex("a\\\"b"), "a\"b");
        assert_eq!(ex("trailing\\"), "trailing");
    }

    #[test]
    fn double_quotes_expand_variables_and_keep_other_escapes() {
        assert_eq!(ex("\"$SPACED c\""), "a b c");
        assert_eq!(ex("\"a\\\"b\\\\c\\nd\""), "a\"b\\c\\nd");
        assert_eq!(ex("\"it's\""), "it's");
    }

    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(ex("'$HOME \\ \"x\"'"), "$HOME \\ \"x\"");
        assert_eq!(ex("pre'mid'post"), "premidpost");
    }

    #[test]
    fn unterminated_quotes_are_errors() {
        assert_eq!(ex_err("\"abc"), "unterminated double quote");
        assert_eq!(ex_err("'abc"), "unterminated single quote");
        assert_eq!(ex_err("\"abc\\\""), "unterminated double quote");
    }

    #[test]
    fn unclosed_braces_are_errors() {
        assert_eq!(ex_err("${HOME"), "missing } to close ${HOME");
        assert_eq!(ex_err("${HOME:-x"), "missing } to close ${HOME");
        assert_eq!(ex_err("${HOME:"), "missing } to close ${HOME");
    }

    #[test]
    fn missing_names_are_bad_substitutions() {
        assert_eq!(
            ex_err("${}"),
            "bad substitution: expected a variable name after ${, found }"
        );
        assert_eq!(
            ex_err("${:-x}"),
            "bad substitution: expected a variable name after ${, found :"
        );
        assert_eq!(
            ex_err("${"),
            "bad substitution: expected a variable name after ${, found the end of the word"
        );
    }

    #[test]
    fn other_modifiers_are_unsupported() {
        assert!(
            ex_err("${HOME^^}").starts_with("unsupported substitution ${HOME^...}: supported are")
        );
        assert!(ex_err("${HOME:=x}").starts_with("unsupported substitution ${HOME:=...}"));
    }

    #[test]
    fn required_variables_fail_with_the_dockerfiles_message() {
        assert_eq!(ex("${HOME:?set HOME}"), "/root");
        assert_eq!(
            ex_err("${UNSET:?set UNSET please}"),
            "UNSET is required: set UNSET please"
        );
        assert_eq!(ex_err("${EMPTY:?}"), "EMPTY is required: not set");
        // Without `:`, only an unset variable fails.
        assert_eq!(ex("${EMPTY?nope}"), "");
        assert_eq!(ex_err("${UNSET?}"), "UNSET is required: not set");
    }

    #[test]
    fn prefixes_and_suffixes_are_removed_by_glob_as_the_shell_does() {
        let scope: Vec<(String, String)> = vec![
            ("FILE".into(), "/usr/lib/lib.tar.gz".into()),
            ("VERSION".into(), "v1.2.3-rc1".into()),
        ];
        let ex = |w: &str| expand(w, '\\', &scope).unwrap();
        assert_eq!(ex("${FILE#*/}"), "usr/lib/lib.tar.gz");
        assert_eq!(ex("${FILE##*/}"), "lib.tar.gz");
        assert_eq!(ex("${FILE%.*}"), "/usr/lib/lib.tar");
        assert_eq!(ex("${FILE%%.*}"), "/usr/lib/lib");
        assert_eq!(ex("${VERSION#v}"), "1.2.3-rc1");
        assert_eq!(ex("${VERSION%-rc[0-9]}"), "v1.2.3");
        assert_eq!(ex("${VERSION%-rc[!0-9]}"), "v1.2.3-rc1");
        assert_eq!(ex("${VERSION#x}"), "v1.2.3-rc1");
        assert_eq!(ex("${UNSET##*}"), "");
        assert_eq!(ex("${VERSION/./_}"), "v1_2.3-rc1");
        assert_eq!(ex("${VERSION//./_}"), "v1_2_3-rc1");
        assert_eq!(ex("${VERSION//[0-9]/N}"), "vN.N.N-rcN");
        assert_eq!(ex("${VERSION/-rc*}"), "v1.2.3");
        assert_eq!(ex("${VERSION//}"), "v1.2.3-rc1");
        assert_eq!(ex("${FILE/lib/LIB}"), "/usr/LIB/lib.tar.gz");
        assert_eq!(ex("${VERSION/?/}"), "1.2.3-rc1");
        assert!(expand("${VERSION/x/y", '\\', &scope).is_err());
        assert!(expand("${VERSION%x", '\\', &scope).is_err());
        // Many stars over the longest value allowed stay cheap (no
        // exponential search); a longer value is refused, not ground on.
        let long: Vec<(String, String)> = vec![("L".into(), "a".repeat(MAX_PATTERN_VALUE))];
        assert_eq!(
            expand("${L%%*a*a*a*a*a*b}", '\\', &long).unwrap().len(),
            MAX_PATTERN_VALUE
        );
        assert_eq!(
            expand("${L//*a*a*a*a*a*b/x}", '\\', &long).unwrap().len(),
            MAX_PATTERN_VALUE
        );
        assert_eq!(
            expand("${L%[]a]}", '\\', &long).unwrap().len(),
            MAX_PATTERN_VALUE - 1
        );
        let longer: Vec<(String, String)> = vec![("L".into(), "a".repeat(MAX_PATTERN_VALUE + 1))];
        assert!(
            expand("${L/a/b}", '\\', &longer)
                .unwrap_err()
                .to_string()
                .contains("at most 4096 characters; L has 4097")
        );
    }

    #[test]
    fn maps_work_as_scopes() {
        let map: HashMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        assert_eq!(expand("$A", '\\', &map).unwrap(), "1");
        let tree: BTreeMap<String, String> = [("A".to_owned(), "2".to_owned())].into();
        assert_eq!(expand("$A", '\\', &tree).unwrap(), "2");
        assert_eq!(expand("$A", '\\', &EmptyScope).unwrap(), "");
    }

    #[test]
    fn later_pairs_shadow_earlier_ones() {
        let pairs = vec![
            ("A".to_owned(), "old".to_owned()),
            ("A".to_owned(), "new".to_owned()),
        ];
        assert_eq!(expand("$A", '\\', &pairs).unwrap(), "new");
    }
}
