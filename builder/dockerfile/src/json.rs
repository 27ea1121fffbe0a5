//! The exec form's JSON array (`["sh", "-c", "echo hi"]`), parsed without a
//! JSON library.
//!
//! Docker decides between exec and shell form by trying to decode the
//! arguments as JSON: well-formed JSON that is not an array of strings is an
//! error, anything that is not well-formed JSON is shell form (so
//! `RUN [ -f x ] && y` is a shell command). To tell "not JSON" from "JSON,
//! but not strings" this module validates every JSON value, not just strings.
//!
//! One deliberate difference: Docker ignores text after the closing `]`
//! (`CMD ["a"] b` runs `a`, silently dropping `b`); here such text makes the
//! whole argument shell form, which is what `RUN [ "$x" ] && y` means.

use std::str::Chars;

/// How deeply arrays and objects may nest before we stop calling it JSON;
/// bounds the recursion so no input can overflow the stack.
const MAX_DEPTH: usize = 64;

/// What the arguments of an instruction turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonArray {
    /// A JSON array of strings: exec form.
    Strings(Vec<String>),
    /// Well-formed JSON array with a non-string element; says which and what.
    NotStrings(String),
    /// Not a JSON array: shell form.
    NotJson,
}

/// Parses `text` as one JSON array of strings, surrounded by optional blanks.
pub(crate) fn parse_array(text: &str) -> JsonArray {
    let mut reader = Reader {
        chars: text.chars(),
        depth: 0,
    };
    reader.skip_blanks();
    if reader.peek() != Some('[') {
        return JsonArray::NotJson;
    }
    let Some(elements) = reader.array() else {
        return JsonArray::NotJson;
    };
    reader.skip_blanks();
    if reader.peek().is_some() {
        return JsonArray::NotJson;
    }
    collect_strings(elements)
}

fn collect_strings(elements: Vec<Value>) -> JsonArray {
    let mut strings = Vec::with_capacity(elements.len());
    for (index, element) in elements.into_iter().enumerate() {
        match element {
            Value::String(s) => strings.push(s),
            Value::Other(kind) => {
                return JsonArray::NotStrings(format!("element {} is {kind}", index + 1));
            }
        }
    }
    JsonArray::Strings(strings)
}

/// A JSON value as far as we care: a string's text, or what else it was.
enum Value {
    String(String),
    Other(&'static str),
}

/// A cursor over the input. Every parsing method returns `None` on
/// malformed input; which error it was does not matter, only that it is
/// not JSON.
struct Reader<'a> {
    chars: Chars<'a>,
    depth: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.clone().next()
    }

    fn next(&mut self) -> Option<char> {
        self.chars.next()
    }

    fn expect(&mut self, wanted: char) -> Option<()> {
        (self.next()? == wanted).then_some(())
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.next();
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_blanks();
        let value = match self.peek()? {
            '"' => Value::String(self.string()?),
            '[' => {
                self.array()?;
                Value::Other("an array")
            }
            '{' => {
                self.object()?;
                Value::Other("an object")
            }
            't' => self.literal("true", "a boolean")?,
            'f' => self.literal("false", "a boolean")?,
            'n' => self.literal("null", "null")?,
            '-' | '0'..='9' => {
                self.number()?;
                Value::Other("a number")
            }
            _ => return None,
        };
        self.skip_blanks();
        Some(value)
    }

    fn array(&mut self) -> Option<Vec<Value>> {
        self.enter()?;
        self.expect('[')?;
        self.skip_blanks();
        let mut elements = Vec::new();
        if self.peek() == Some(']') {
            self.next();
        } else {
            loop {
                elements.push(self.value()?);
                match self.next()? {
                    ',' => {}
                    ']' => break,
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(elements)
    }

    fn object(&mut self) -> Option<()> {
        self.enter()?;
        self.expect('{')?;
        self.skip_blanks();
        if self.peek() == Some('}') {
            self.next();
        } else {
            loop {
                self.skip_blanks();
                self.string()?;
                self.skip_blanks();
                self.expect(':')?;
                self.value()?;
                match self.next()? {
                    ',' => {}
                    '}' => break,
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn literal(&mut self, word: &str, kind: &'static str) -> Option<Value> {
        for wanted in word.chars() {
            self.expect(wanted)?;
        }
        Some(Value::Other(kind))
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some('-') {
            self.next();
        }
        match self.next()? {
            '0' => {}
            '1'..='9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some('.') {
            self.next();
            self.one_or_more_digits()?;
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            self.next();
            if matches!(self.peek(), Some('+' | '-')) {
                self.next();
            }
            self.one_or_more_digits()?;
        }
        Some(())
    }

    fn one_or_more_digits(&mut self) -> Option<()> {
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        self.digits();
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.next();
        }
    }

    fn string(&mut self) -> Option<String> {
        self.expect('"')?;
        let mut text = String::new();
        loop {
            match self.next()? {
                '"' => return Some(text),
                '\\' => text.push(self.escape()?),
                c if u32::from(c) < 0x20 => return None,
                c => text.push(c),
            }
        }
    }

    /// The character a backslash escape stands for (the backslash is read).
    fn escape(&mut self) -> Option<char> {
        Some(match self.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => self.unicode_escape()?,
            _ => return None,
        })
    }

    /// `\uXXXX`, combining a surrogate pair when one follows; a lone
    /// surrogate becomes U+FFFD, as Go's decoder (Docker's) does.
    fn unicode_escape(&mut self) -> Option<char> {
        let code = hex4(&mut self.chars)?;
        if (0xD800..0xDC00).contains(&code) {
            let mut ahead = self.chars.clone();
            if ahead.next() == Some('\\')
                && ahead.next() == Some('u')
                && let Some(low) = hex4(&mut ahead)
                && (0xDC00..0xE000).contains(&low)
            {
                self.chars = ahead;
                let combined = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                return char::from_u32(combined);
            }
        }
        Some(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER))
    }
}

fn hex4(chars: &mut Chars<'_>) -> Option<u32> {
    let mut code = 0;
    for _ in 0..4 {
        code = code * 16 + chars.next()?.to_digit(16)?;
    }
    Some(code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> JsonArray {
        JsonArray::Strings(items.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn array_of_strings_is_exec_form() {
        assert_eq!(
            parse_array(r#" ["sh", "-c" ,"echo hi"] "#),
            strings(&["sh", "-c", "echo hi"])
        );
    }

    #[test]
    fn empty_array_is_an_empty_exec_form() {
        assert_eq!(parse_array("[ ]"), strings(&[]));
    }

    #[test]
    fn string_escapes_are_decoded() {
        assert_eq!(
            parse_array(r#"["a\"b", "c\\d", "\/\b\f\n\r\t", "\u00e9\u20AC"]"#),
            strings(&["a\"b", "c\\d", "/\u{8}\u{c}\n\r\t", "é€"])
        );
    }

    #[test]
    fn surrogate_pairs_combine_and_lone_surrogates_are_replaced() {
        assert_eq!(parse_array(r#"["\ud83d\ude00"]"#), strings(&["😀"]));
        assert_eq!(parse_array(r#"["\ud83dx"]"#), strings(&["\u{fffd}x"]));
        assert_eq!(parse_array(r#"["\ude00"]"#), strings(&["\u{fffd}"]));
    }

    #[test]
    fn non_ascii_text_passes_through() {
        assert_eq!(parse_array(r#"["héllo wörld"]"#), strings(&["héllo wörld"]));
    }

    #[test]
    fn well_formed_array_with_other_values_is_not_strings() {
        assert_eq!(
            parse_array(r#"["a", 1]"#),
            JsonArray::NotStrings("element 2 is a number".to_owned())
        );
        assert_eq!(
            parse_array(r#"[{"k": [true, null, -1.5e3]}]"#),
            JsonArray::NotStrings("element 1 is an object".to_owned())
        );
        assert_eq!(
            parse_array("[[], false]"),
            JsonArray::NotStrings("element 1 is an array".to_owned())
        );
    }

    #[test]
    fn malformed_json_is_not_json() {
        for text in [
            "[ -f /x ]",
            "[ \"$x\" = y ]",
            "[\"a\",]",
            "[\"a\" \"b\"]",
            "[\"unterminated]",
            "[\"bad escape \\x\"]",
            "[\"raw\ttab\"]",
            "['single']",
            "[01]",
            "[1.]",
            "[tru]",
            "echo hi",
            "",
            "[",
        ] {
            assert_eq!(parse_array(text), JsonArray::NotJson, "{text}");
        }
    }

    #[test]
    fn text_after_the_array_makes_it_not_json() {
        assert_eq!(parse_array(r#"[ "$x" ] && echo"#), JsonArray::NotJson);
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_array(&deep), JsonArray::NotJson);
        let shallow = format!("[{}{}]", "[".repeat(10), "]".repeat(10));
        assert_eq!(
            parse_array(&shallow),
            JsonArray::NotStrings("element 1 is an array".to_owned())
        );
    }
}
