//! A JSON validator for event data, faster than deserializing into
//! `IgnoredAny`: the decoder's hot path checks every event's data, and most
//! of it is strings, which are scanned eight bytes at a time here.
//!
//! It accepts what `serde_json` accepts when it skips a value (RFC 8259
//! JSON with any `\uXXXX` escape, surrounding whitespace allowed), except
//! that it refuses values nested deeper than 128 levels, which bounds its
//! recursion: the caller leaves those to `serde_json`. The input is already
//! known to be UTF-8.

/// The deepest nesting of arrays and objects accepted.
const MAX_DEPTH: usize = 128;

/// Whether `text` is exactly one JSON value, with optional whitespace
/// around it.
pub(super) fn is_json(text: &[u8]) -> bool {
    let mut checker = Checker { text, at: 0 };
    checker.whitespace();
    if checker.value(0).is_none() {
        return false;
    }
    checker.whitespace();
    checker.at == text.len()
}

struct Checker<'a> {
    text: &'a [u8],
    at: usize,
}

impl Checker<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.text[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.whitespace();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            self.string()?;
            self.whitespace();
            self.eat(b':')?;
            self.whitespace();
            self.value(depth)?;
            self.whitespace();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.whitespace();
                }
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.whitespace();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.whitespace();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.whitespace();
                }
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string, from its opening quote.
    fn string(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            self.skip_plain();
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {
                    self.at += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.text.get(self.at + 1..self.at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                // A control character, which must be escaped.
                _ => return None,
            }
        }
    }

    /// Moves to the next byte that is a quote, a backslash or a control
    /// character, eight bytes at a time while there are eight.
    fn skip_plain(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        while let Some(chunk) = self.text.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            // The classic "has a zero byte" and "has a byte below n" tests;
            // their lowest flagged byte is always a true match.
            let quote = word ^ (ONES * u64::from(b'"'));
            let backslash = word ^ (ONES * u64::from(b'\\'));
            let found = (quote.wrapping_sub(ONES) & !quote)
                | (backslash.wrapping_sub(ONES) & !backslash)
                | (word.wrapping_sub(ONES * 0x20) & !word);
            let found = found & HIGHS;
            if found != 0 {
                self.at += (found.trailing_zeros() / 8) as usize;
                return;
            }
            self.at += 8;
        }
        while let Some(byte) = self.peek() {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::is_json;

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
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
        ];
        for case in cases {
            assert_eq!(is_json(case.as_bytes()), serde_accepts(case), "{case:?}");
        }
        let deep = |n| "[".repeat(n) + &"]".repeat(n);
        assert!(is_json(deep(128).as_bytes()));
        assert!(!is_json(deep(129).as_bytes()));
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_json_like_text(text in r#"[ \[\]{}",:0-9.eE+\-tfrulnas\\/é\x01\x1f]{0,40}"#) {
            prop_assert_eq!(is_json(text.as_bytes()), serde_accepts(&text));
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
