//! A JSON validator for event data, faster than deserializing into
//! `IgnoredAny`: the decoder's hot path checks every event's data, and most
//! of it is short strings and small objects. So it walks the text in one
//! loop, with an explicit stack instead of recursion (no call per value),
//! and scans strings sixteen bytes at a time. Its parts are inlined into
//! that loop so that its state stays in registers; only the rare escape
//! sequence is out of line.
//!
//! It accepts what `serde_json` accepts when it skips a value (RFC 8259
//! JSON with any `\uXXXX` escape, surrounding whitespace allowed), except
//! that it refuses values nested deeper than 128 levels, which bounds its
//! stack: the caller leaves those to `serde_json`.
//!
//! It also checks UTF-8, so that the decoder need not run a separate pass
//! over the line: since JSON has bytes outside ASCII only inside strings,
//! the string scan notes whether it met any, and only then is the text
//! checked again as UTF-8. The same note tells whether the text is already
//! safe to put on one NDJSON line as it is.

/// The deepest nesting of arrays and objects accepted.
const MAX_DEPTH: usize = 128;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// What [`check`] found besides validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Valid {
    /// Only ASCII and no raw `\r` or `\n`: safe on one NDJSON line as is.
    LineSafe,
    /// Something that [`RawJson`](crate::protocol::RawJson) rewrites to
    /// make it line-safe may be there.
    Other,
}

/// Whether `text` is exactly one JSON value in UTF-8, with optional
/// whitespace around it; `None` when it is not.
pub(super) fn check(text: &[u8]) -> Option<Valid> {
    let mut checker = Checker {
        text,
        at: 0,
        seen: 0,
        line_break: false,
    };
    checker.run()?;
    if checker.at != text.len() {
        return None;
    }
    if checker.seen & HIGHS == 0 {
        return Some(if checker.line_break {
            Valid::Other
        } else {
            Valid::LineSafe
        });
    }
    std::str::from_utf8(text).ok()?;
    Some(Valid::Other)
}

struct Checker<'a> {
    text: &'a [u8],
    at: usize,
    /// Every string byte scanned, or'ed together (and some bytes after
    /// them): its high bits say whether the text may hold bytes outside
    /// ASCII, which can only be in strings.
    seen: u64,
    /// Whether whitespace held a `\r` or `\n` (the only places they can
    /// be raw).
    line_break: bool,
}

impl Checker<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    #[inline(always)]
    fn whitespace(&mut self) {
        while let Some(byte) = self.peek() {
            // Every whitespace byte is at most a space: compact JSON leaves
            // here after one comparison.
            if byte > b' ' {
                return;
            }
            match byte {
                b' ' | b'\t' => {}
                b'\n' | b'\r' => self.line_break = true,
                _ => return,
            }
            self.at += 1;
        }
    }

    /// Checks one value and the whitespace after it.
    ///
    /// Whitespace is skipped where a token was expected and something else
    /// came, so compact JSON pays nothing for it.
    #[inline(always)]
    fn run(&mut self) -> Option<()> {
        // Whether each open container is an object, the innermost one's in
        // `object`: kept in memory, not in a wide integer, which would take
        // the registers the string scan needs.
        let mut outer = [false; MAX_DEPTH];
        let mut object = false;
        let mut depth = 0;
        'value: loop {
            match self.peek()? {
                b'"' => self.string()?,
                open @ (b'{' | b'[') => {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    outer[depth] = object;
                    object = open == b'{';
                    depth += 1;
                    self.at += 1;
                    self.whitespace();
                    let close = if object { b'}' } else { b']' };
                    if self.peek()? != close {
                        if object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                    self.at += 1;
                    depth -= 1;
                    object = outer[depth];
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.whitespace();
                    continue 'value;
                }
                _ => return None,
            }
            // After a value: close what it ends, up to the next one.
            loop {
                if depth == 0 {
                    self.whitespace();
                    return Some(());
                }
                match self.peek()? {
                    b',' => {
                        self.at += 1;
                        if object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    b' ' | b'\t' | b'\n' | b'\r' => {
                        self.whitespace();
                        continue;
                    }
                    _ => return None,
                }
                self.at += 1;
                depth -= 1;
                object = outer[depth];
            }
        }
    }

    /// An object member's key and colon, up to its value.
    #[inline(always)]
    fn key(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            self.whitespace();
            if self.peek()? != b'"' {
                return None;
            }
        }
        self.string()?;
        if self.peek()? != b':' {
            self.whitespace();
            if self.peek()? != b':' {
                return None;
            }
        }
        self.at += 1;
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.text[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// A string, from its opening quote.
    #[inline(always)]
    fn string(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            self.skip_plain();
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => self.at = escape(self.text, self.at)?,
                // A control character, which must be escaped.
                _ => return None,
            }
        }
    }

    /// Moves to the next byte that is a quote, a backslash or a control
    /// character, sixteen or eight bytes at a time while there are as many:
    /// a step of sixteen costs little more than one of eight, and most
    /// strings of event data are short.
    #[inline(always)]
    fn skip_plain(&mut self) {
        while let Some(chunk) = self.text.get(self.at..self.at + 16) {
            let low = u64::from_le_bytes(chunk[..8].try_into().expect("eight bytes"));
            let high = u64::from_le_bytes(chunk[8..].try_into().expect("eight bytes"));
            self.seen |= low | high;
            let (low, high) = (special(low), special(high));
            if low | high != 0 {
                self.at += if low != 0 {
                    (low.trailing_zeros() / 8) as usize
                } else {
                    8 + (high.trailing_zeros() / 8) as usize
                };
                return;
            }
            self.at += 16;
        }
        while let Some(chunk) = self.text.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            self.seen |= word;
            let found = special(word);
            if found != 0 {
                self.at += (found.trailing_zeros() / 8) as usize;
                return;
            }
            self.at += 8;
        }
        while let Some(byte) = self.peek() {
            self.seen |= u64::from(byte);
            if byte == b'"' || byte == b'\\' || byte < 0x20 {
                return;
            }
            self.at += 1;
        }
    }

    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.at_least_one_digit()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.at_least_one_digit()?;
        }
        Some(())
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        self.digits();
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }
}

/// The high bit of each byte of `word` that is a quote, a backslash or a
/// control character, and maybe of some bytes after the first of them.
///
/// The classic "has a zero byte" and "has a byte below n" tests, sharing
/// their `& !x` (the xors leave the high bits alone); their lowest flagged
/// byte is always a true match.
#[inline(always)]
fn special(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    (quote.wrapping_sub(ONES) | backslash.wrapping_sub(ONES) | word.wrapping_sub(ONES * 0x20))
        & !word
        & HIGHS
}

/// The end of the escape sequence at `at` in a string (its backslash).
///
/// Out of line and apart from the checker, so that the checker's fields
/// can stay in registers through the string scan.
#[cold]
fn escape(text: &[u8], at: usize) -> Option<usize> {
    match text.get(at + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
        b'u' => {
            let hex = text.get(at + 2..at + 6)?;
            hex.iter().all(u8::is_ascii_hexdigit).then_some(at + 6)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Valid, check};
    use crate::protocol::json::needs_line_safety;

    fn is_json(text: &[u8]) -> bool {
        check(text).is_some()
    }

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    /// `serde_json` skips strings without checking their UTF-8, so the
    /// bytes are checked first, as the decoder did before parsing.
    fn serde_accepts_bytes(text: &[u8]) -> bool {
        std::str::from_utf8(text).is_ok_and(serde_accepts)
    }

    #[test]
    fn agrees_with_serde_json_on_edge_cases() {
        let cases = [
            "0",
            "-0",
            "01",
            "-",
            "1.",
            "1.5",
            ".5",
            "1e5",
            "1E+5",
            "1e-",
            "1e",
            "-1.5e-3",
            "true",
            "tru",
            "nul",
            "null ",
            " \t\r\n[1 , 2 ]\n",
            "[]",
            "[,]",
            "[1,]",
            "{}",
            "{,}",
            "{\"a\":1,}",
            "{\"a\" : [ {} ] }",
            "{1:2}",
            "{\"a\"}",
            "\"\\u00e9\"",
            "\"\\u00g9\"",
            "\"\\ud800\"",
            "\"\\x\"",
            "\"a\tb\"",
            "\"unterminated",
            "\"\"",
            "\"1234567\\\"89abcdefgh\"",
            "\"é😀 and more than eight bytes\"",
            "[1] [2]",
            "",
            " ",
            "1 2",
            "\"\\/\\b\\f\\n\\r\\t\\\\\"",
            "{\"a\":1}x",
            "[\"\u{1f}\"]",
            "[\"\u{7f}\"]",
            "{\"a\":[1,{\"b\":[]}],\"c\":{}}",
            "[[],[[]],{}]",
            "{\"a\":1]",
            "[1}",
            "[1,2",
            "{\"a\":{}",
        ];
        for case in cases {
            assert_eq!(is_json(case.as_bytes()), serde_accepts(case), "{case:?}");
        }
        let deep = |n| "[".repeat(n) + &"]".repeat(n);
        assert!(is_json(deep(128).as_bytes()));
        assert!(!is_json(deep(129).as_bytes()));
        let deep_objects = |n: usize| "{\"a\":".repeat(n - 1) + "{}" + &"}".repeat(n - 1);
        assert!(is_json(deep_objects(128).as_bytes()));
        assert!(!is_json(deep_objects(129).as_bytes()));
    }

    #[test]
    fn finds_special_bytes_wherever_they_are_in_a_string() {
        for at in 0..24 {
            for special in ["\"", "\\n", "\\", "\u{1}", "é", "\u{7f}"] {
                let text = format!("[\"{}{special}{}\"]", "a".repeat(at), "b".repeat(24 - at));
                assert_eq!(is_json(text.as_bytes()), serde_accepts(&text), "{text:?}");
            }
        }
    }

    #[test]
    fn checks_utf8_in_strings() {
        assert_eq!(check("\"é\"".as_bytes()), Some(Valid::Other));
        assert_eq!(
            check("[\"a\",\"😀 and more than eight bytes\"]".as_bytes()),
            Some(Valid::Other)
        );
        for invalid in [
            &b"\"\xff\""[..],
            b"\"\xc3\"",
            b"\"\x80abcdefgh\"",
            b"\"abcdefgh\xed\xa0\x80\"",
            b"[\"\xc3\xa9\",\"\xc3\"]",
            b"\xc3\xa9",
        ] {
            assert_eq!(check(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn tells_what_is_line_safe_as_is() {
        assert_eq!(check(b"{\"a\": [1, \"b\\n\"]}"), Some(Valid::LineSafe));
        assert_eq!(check(b"{\"a\":\r\n1}"), Some(Valid::Other));
        assert_eq!(check(b"[1,\n2]"), Some(Valid::Other));
        assert_eq!(check("\"\u{2028}\"".as_bytes()), Some(Valid::Other));
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_json_like_text(text in r#"[ \[\]{}",:0-9.eE+\-tfrulnas\\/é\x01\x1f]{0,40}"#) {
            prop_assert_eq!(is_json(text.as_bytes()), serde_accepts(&text));
        }

        #[test]
        fn agrees_with_serde_json_on_bytes(text in prop::collection::vec(prop_oneof![
            prop::sample::select(b"[]{}\",:0-9e-tnul\\ \r\nab".to_vec()),
            any::<u8>(),
        ], 0..40)) {
            prop_assert_eq!(is_json(&text), serde_accepts_bytes(&text));
        }

        #[test]
        fn line_safe_means_nothing_to_rewrite(text in "[ -~\r\n\u{85}\u{2028}é]{0,12}", wrap in any::<bool>()) {
            let json = if wrap { serde_json::to_string(&text).unwrap() } else { text };
            let json = format!("[{json}]");
            if let Some(valid) = check(json.as_bytes()) {
                let plain = json.is_ascii() && !json.contains(['\r', '\n']);
                prop_assert_eq!(valid == Valid::LineSafe, plain);
                prop_assert!(valid == Valid::Other || !needs_line_safety(json.as_bytes()));
            }
        }

        #[test]
        fn accepts_what_serde_json_writes(value in json_value()) {
            let text = serde_json::to_string(&value).unwrap();
            prop_assert!(is_json(text.as_bytes()));
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            prop_assert!(is_json(pretty.as_bytes()));
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }
}
