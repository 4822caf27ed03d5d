//! Table names written into SQL: one rule for every table the crate
//! creates (outbox tables, cursor and dead-letter tables).

use std::fmt;

/// The name of a table the crate creates and queries (an outbox table, a
/// cursor store's tables), checked to be a plain SQL identifier, so that it
/// can be written into SQL without quoting or escaping.
///
/// A name is 1 to 48 bytes of lowercase ASCII letters, digits and `_`, not
/// starting with a digit. The limit leaves room under PostgreSQL's 63-byte
/// identifiers for the index names derived from it. The table lives in the
/// connection's default schema (PostgreSQL's `search_path`, SQLite's
/// `main`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TableName(Box<str>);

impl TableName {
    /// The longest name accepted, in bytes.
    pub const MAX_LEN: usize = 48;

    /// Checks `name`.
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidTableName> {
        let name = name.as_ref();
        let valid = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && !name.as_bytes()[0].is_ascii_digit()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(TableName(name.into()))
        } else {
            Err(InvalidTableName {
                name: name.chars().take(Self::MAX_LEN + 16).collect(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A table name that is not a plain identifier (see [`TableName`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTableName {
    /// The name given (cut after 64 characters).
    pub name: String,
}

impl fmt::Display for InvalidTableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "table name {:?} is not 1 to {} lowercase ASCII letters, digits and '_' \
             starting with a letter or '_'",
            self.name,
            TableName::MAX_LEN
        )
    }
}

impl std::error::Error for InvalidTableName {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_pass() {
        for good in ["events", "_outbox", "orders_feed_2", &"a".repeat(48)] {
            assert_eq!(TableName::new(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "2events",
            "Events",
            "events; DROP TABLE x",
            "a\"b",
            "schema.table",
            "évents",
            &"a".repeat(49),
        ] {
            assert!(TableName::new(bad).is_err(), "{bad:?}");
        }
    }
}
