use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;

/// One JSON value, kept as its text: event data that is passed through
/// without being parsed into a tree.
///
/// A `RawJson` always holds valid JSON that is safe to put on one NDJSON
/// line: it contains no raw `\r` or `\n`, and U+2028, U+2029 and U+0085 are
/// written escaped, since line readers in some languages split on them.
/// Constructors restore that form where the input lacks it, so the server
/// writes the bytes as they are. Cloning is cheap (shared storage).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Bytes);

impl RawJson {
    /// Checks that `text` is one JSON value and keeps it, made line-safe.
    pub fn from_bytes(text: impl Into<Bytes>) -> Result<Self, serde_json::Error> {
        let text = text.into();
        serde_json::from_slice::<serde::de::IgnoredAny>(&text)?;
        Ok(Self::from_valid(text))
    }

    /// Serializes `value` as compact JSON.
    pub fn from_serialize<T: serde::Serialize + ?Sized>(
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        let text = serde_json::to_vec(value)?;
        Ok(Self::from_valid(Bytes::from(text)))
    }

    /// Keeps text already known to be valid JSON, escaping what a line
    /// reader could split on.
    pub(crate) fn from_valid(text: Bytes) -> Self {
        if needs_line_safety(&text) {
            RawJson(make_line_safe(&text))
        } else {
            RawJson(text)
        }
    }

    /// Keeps text already known to be valid JSON and line-safe, as the
    /// decoder's validator reports it, saving the scan for what to escape.
    pub(crate) fn from_line_safe(text: Bytes) -> Self {
        debug_assert!(!needs_line_safety(&text), "not line-safe: {text:?}");
        RawJson(text)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Every constructor checked or produced JSON, which is UTF-8, and
        // escaping keeps it so; a failure here would be a bug in this type.
        std::str::from_utf8(&self.0).expect("RawJson holds UTF-8")
    }

    /// The JSON text as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text as shared bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Parses the value into `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(self.as_str()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        let text: Box<str> = raw.into();
        Ok(RawJson::from_valid(Bytes::from(text.into_boxed_bytes())))
    }
}

/// Whether valid JSON `text` holds a raw line break or a character that
/// some line readers split on.
pub(crate) fn needs_line_safety(text: &[u8]) -> bool {
    memchr::memchr3(b'\n', b'\r', 0xE2, text).is_some() || memchr::memchr(0xC2, text).is_some()
}

/// Rewrites valid JSON so that it fits on one NDJSON line.
///
/// Valid JSON has raw `\r` and `\n` only as whitespace between tokens (a
/// space does the same there), and non-ASCII characters only inside strings
/// (where `\uXXXX` means the same), so no parsing state is needed.
fn make_line_safe(text: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(at) = rest
        .iter()
        .position(|&b| matches!(b, b'\n' | b'\r' | 0xE2 | 0xC2))
    {
        out.put_slice(&rest[..at]);
        rest = &rest[at..];
        match rest {
            [b'\n' | b'\r', ..] => {
                out.put_u8(b' ');
                rest = &rest[1..];
            }
            [0xE2, 0x80, 0xA8, ..] => {
                out.put_slice(b"\\u2028");
                rest = &rest[3..];
            }
            [0xE2, 0x80, 0xA9, ..] => {
                out.put_slice(b"\\u2029");
                rest = &rest[3..];
            }
            [0xC2, 0x85, ..] => {
                out.put_slice(b"\\u0085");
                rest = &rest[2..];
            }
            _ => {
                out.put_u8(rest[0]);
                rest = &rest[1..];
            }
        }
    }
    out.put_slice(rest);
    out.freeze()
}

/// Writes `text` as a JSON string literal (with its quotes), escaping what
/// JSON requires and what line readers split on.
pub(crate) fn write_json_string(out: &mut BytesMut, text: &str) {
    out.put_u8(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let escape: Option<&[u8]> = match byte {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x00..=0x1F => None,
            0xE2 if bytes[i + 1..].starts_with(&[0x80, 0xA8]) => Some(b"\\u2028"),
            0xE2 if bytes[i + 1..].starts_with(&[0x80, 0xA9]) => Some(b"\\u2029"),
            0xC2 if bytes.get(i + 1) == Some(&0x85) => Some(b"\\u0085"),
            _ => {
                i += 1;
                continue;
            }
        };
        out.put_slice(&bytes[start..i]);
        let width = match byte {
            0xE2 => 3,
            0xC2 => 2,
            _ => 1,
        };
        match escape {
            Some(escape) => out.put_slice(escape),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.put_slice(b"\\u00");
                out.put_u8(HEX[usize::from(byte >> 4)]);
                out.put_u8(HEX[usize::from(byte & 0xF)]);
            }
        }
        i += width;
        start = i;
    }
    out.put_slice(&bytes[start..]);
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_between_tokens_become_spaces() {
        let json = RawJson::from_bytes("{\r\n  \"a\": [1,\n2]\n}").unwrap();
        assert!(!json.as_str().contains(['\n', '\r']));
        let value: serde_json::Value = json.deserialize().unwrap();
        assert_eq!(value, serde_json::json!({"a": [1, 2]}));
    }

    #[test]
    fn separators_inside_strings_are_escaped() {
        let json = RawJson::from_serialize(&"a\u{2028}b\u{2029}c\u{85}d é").unwrap();
        assert_eq!(json.as_str(), "\"a\\u2028b\\u2029c\\u0085d é\"");
        assert_eq!(
            json.deserialize::<String>().unwrap(),
            "a\u{2028}b\u{2029}c\u{85}d é"
        );
    }

    #[test]
    fn invalid_json_is_refused() {
        assert!(RawJson::from_bytes("{\"a\":").is_err());
        assert!(RawJson::from_bytes("1 2").is_err());
        assert!(RawJson::from_bytes("").is_err());
    }

    #[test]
    fn strings_are_escaped_for_json_and_lines() {
        let mut out = BytesMut::new();
        write_json_string(&mut out, "q\"b\\n\nc\u{1}\u{2028}\u{85}é😀");
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text, r#""q\"b\\n\nc\u0001\u2028\u0085é😀""#);
        let back: String = serde_json::from_str(text).unwrap();
        assert_eq!(back, "q\"b\\n\nc\u{1}\u{2028}\u{85}é😀");
    }
}
