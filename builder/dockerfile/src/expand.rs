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
    /// A modifier other than `-`, `:-`, `+`, `:+`.
    #[error(
        "unsupported substitution ${{{name}{modifier}...}}: only ${{NAME}}, ${{NAME:-default}}, \
         ${{NAME-default}}, ${{NAME:+alternative}} and ${{NAME+alternative}} are supported"
    )]
    UnsupportedModifier { name: String, modifier: String },
}

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
}

impl WordExpander<'_> {
    fn until_end(&mut self) -> Result<String, ExpandError> {
        self.text(Stop::End).map(|(text, _)| text)
    }

    /// The modifier word of `${name<op>word}`, up to and including the `}`.
    fn until_brace(&mut self, name: &str) -> Result<String, ExpandError> {
        match self.text(Stop::Brace)? {
            (text, true) => Ok(text),
            (_, false) => Err(ExpandError::MissingBrace {
                name: name.to_owned(),
            }),
        }
    }

    /// Expands text up to `stop`; says whether the `}` was found.
    fn text(&mut self, stop: Stop) -> Result<(String, bool), ExpandError> {
        let mut out = String::new();
        while let Some(&c) = self.chars.peek() {
            if stop == Stop::Brace && c == '}' {
                self.chars.next();
                return Ok((out, true));
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
        Ok((out, false))
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
                Some(op @ ('-' | '+')) => {
                    let word = self.until_brace(&name)?;
                    let set = value.as_deref().is_some_and(|v| !v.is_empty());
                    Ok(apply_modifier(op, set, value, word))
                }
                Some(other) => Err(unsupported(name, format!(":{other}"))),
                None => Err(ExpandError::MissingBrace { name }),
            },
            Some(op @ ('-' | '+')) => {
                let word = self.until_brace(&name)?;
                let set = value.is_some();
                Ok(apply_modifier(op, set, value, word))
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

/// `-` takes `word` when the variable is not "set"; `+` when it is.
fn apply_modifier(op: char, set: bool, value: Option<String>, word: String) -> String {
    match (op, set) {
        ('-', true) => value.unwrap_or_default(),
        ('-', false) | ('+', true) => word,
        _ => String::new(),
    }
}

fn unsupported(name: String, modifier: String) -> ExpandError {
    ExpandError::UnsupportedModifier { name, modifier }
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
        assert_eq!(
            ex_err("${HOME%/*}"),
            "unsupported substitution ${HOME%...}: only ${NAME}, ${NAME:-default}, \
             ${NAME-default}, ${NAME:+alternative} and ${NAME+alternative} are supported"
        );
        assert!(ex_err("${HOME:?required}").starts_with("unsupported substitution ${HOME:?...}"));
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
