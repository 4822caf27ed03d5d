use std::fmt;
use std::sync::Arc;

/// A position in one partition of a feed, as the feed handed it out.
///
/// Cursors are opaque to consumers: store them and send them back. Two values
/// are special and understood by every feed: [`Cursor::first`] (`_first`,
/// from the beginning) and [`Cursor::last`] (`_last`, from about now).
///
/// A cursor is non-empty printable ASCII (`0x20..=0x7E`) of at most
/// [`Cursor::MAX_LEN`] bytes, so that it survives a query string, a log line
/// and a database column unchanged. Cloning is cheap (shared storage).
// Not `Ord`: cursors are opaque, and their text says nothing about order.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor(Arc<str>);

impl Cursor {
    /// The longest cursor accepted, in bytes.
    pub const MAX_LEN: usize = 4096;

    /// The text of the `_first` cursor.
    pub const FIRST: &'static str = "_first";

    /// The text of the `_last` cursor.
    pub const LAST: &'static str = "_last";

    /// Checks `value` and makes a cursor of it.
    pub fn new(value: impl AsRef<str>) -> Result<Self, InvalidCursor> {
        let value = value.as_ref();
        validate(value)?;
        Ok(Cursor(Arc::from(value)))
    }

    /// The cursor that reads a partition from its beginning.
    pub fn first() -> Self {
        Cursor(Arc::from(Self::FIRST))
    }

    /// The cursor that reads a partition from about now: only events
    /// appended after the request.
    pub fn last() -> Self {
        Cursor(Arc::from(Self::LAST))
    }

    /// Whether this is the `_first` cursor.
    pub fn is_first(&self) -> bool {
        &*self.0 == Self::FIRST
    }

    /// Whether this is the `_last` cursor.
    pub fn is_last(&self) -> bool {
        &*self.0 == Self::LAST
    }

    /// The cursor's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(value: &str) -> Result<(), InvalidCursor> {
    if value.is_empty() {
        return Err(InvalidCursor::Empty);
    }
    if value.len() > Cursor::MAX_LEN {
        return Err(InvalidCursor::TooLong { len: value.len() });
    }
    match value.bytes().position(|b| !(0x20..=0x7E).contains(&b)) {
        Some(position) => Err(InvalidCursor::NotPrintable { position }),
        None => Ok(()),
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Cursor {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cursor::new(s)
    }
}

impl TryFrom<&str> for Cursor {
    type Error = InvalidCursor;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Cursor::new(value)
    }
}

impl TryFrom<String> for Cursor {
    type Error = InvalidCursor;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        validate(&value)?;
        Ok(Cursor(Arc::from(value)))
    }
}

impl serde::Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Cursor::new(text).map_err(serde::de::Error::custom)
    }
}

/// Why a text is not a valid [`Cursor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidCursor {
    /// The cursor is the empty string.
    Empty,
    /// The cursor is longer than [`Cursor::MAX_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The cursor has a byte outside printable ASCII (`0x20..=0x7E`).
    NotPrintable {
        /// The byte offset of the first such byte.
        position: usize,
    },
}

impl fmt::Display for InvalidCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidCursor::Empty => f.write_str("cursor is empty"),
            InvalidCursor::TooLong { len } => write!(
                f,
                "cursor is {len} bytes long, above the limit of {}",
                Cursor::MAX_LEN
            ),
            InvalidCursor::NotPrintable { position } => write!(
                f,
                "cursor has a character outside printable ASCII at byte {position}"
            ),
        }
    }
}

impl std::error::Error for InvalidCursor {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_cursors_are_recognised() {
        assert!(Cursor::first().is_first());
        assert!(Cursor::last().is_last());
        assert!(!Cursor::new("42").unwrap().is_first());
    }

    #[test]
    fn invalid_cursors_say_why() {
        assert_eq!(Cursor::new(""), Err(InvalidCursor::Empty));
        assert_eq!(
            Cursor::new("ab\tc"),
            Err(InvalidCursor::NotPrintable { position: 2 })
        );
        assert_eq!(
            Cursor::new("é"),
            Err(InvalidCursor::NotPrintable { position: 0 })
        );
        let long = "x".repeat(Cursor::MAX_LEN + 1);
        assert_eq!(
            Cursor::new(&long),
            Err(InvalidCursor::TooLong {
                len: Cursor::MAX_LEN + 1
            })
        );
        assert!(Cursor::new("x".repeat(Cursor::MAX_LEN)).is_ok());
    }
}
