use std::fmt;

use super::InvalidCursor;

/// Why a feed request is invalid.
///
/// The server answers each of these with `400 Bad Request` and the
/// [`Display`](fmt::Display) text as the body; the client refuses to send a
/// request that has one. Messages name the parameter and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The query string is not valid percent-encoded UTF-8.
    InvalidEncoding {
        /// The byte offset in the query where decoding failed.
        position: usize,
    },
    /// A parameter appears more than once.
    DuplicateParameter {
        /// The parameter's name.
        name: String,
    },
    /// The `n` parameter is absent.
    PartitionCountMissing,
    /// The `n` parameter is not a partition count in ASCII digits.
    InvalidPartitionCount {
        /// The value given (shortened when long).
        value: String,
    },
    /// `n` differs from the feed's partition count.
    PartitionCountMismatch {
        /// The feed's partition count.
        feed: u32,
        /// The count the request gave.
        requested: u32,
    },
    /// No `cursor<P>` parameter was given.
    CursorsMissing,
    /// A parameter starts with `cursor` but is not `cursor<P>` with `P` a
    /// partition number in plain decimal.
    InvalidCursorParameter {
        /// The parameter's name (shortened when long).
        name: String,
    },
    /// A cursor's partition is not below the partition count.
    PartitionOutOfRange {
        /// The partition.
        partition: u32,
        /// The partition count.
        partition_count: u32,
    },
    /// The same partition is given twice.
    DuplicatePartition {
        /// The partition.
        partition: u32,
    },
    /// A cursor's value is not a valid cursor.
    InvalidCursor {
        /// The partition whose cursor is invalid.
        partition: u32,
        /// What is wrong with it.
        reason: InvalidCursor,
    },
    /// The feed does not recognise a cursor: it never handed it out.
    UnknownCursor {
        /// The partition whose cursor is unknown.
        partition: u32,
    },
    /// `pagesizehint` is not a number in ASCII digits.
    InvalidPageSizeHint {
        /// The value given (shortened when long).
        value: String,
    },
    /// `wait` is not a number of seconds in ASCII digits.
    InvalidWait {
        /// The value given (shortened when long).
        value: String,
    },
    /// A wanted header name is empty or contains a comma.
    InvalidHeaderName {
        /// The name given (shortened when long).
        name: String,
    },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::InvalidEncoding { position } => write!(
                f,
                "query string is not valid percent-encoded UTF-8 at byte {position}"
            ),
            RequestError::DuplicateParameter { name } => {
                write!(f, "parameter {name:?} is given more than once")
            }
            RequestError::PartitionCountMissing => {
                f.write_str("handshake error: partition count missing")
            }
            RequestError::InvalidPartitionCount { value } => write!(
                f,
                "parameter \"n\" must be a partition count in ASCII digits, at most 4294967295, got {value:?}"
            ),
            // Go's text first, which clients of the reference match on.
            RequestError::PartitionCountMismatch { feed, requested } => write!(
                f,
                "handshake error: partition count mismatch (the feed has {feed} partitions, \
                 the request says n={requested})"
            ),
            RequestError::CursorsMissing => f.write_str("cursors are missing"),
            RequestError::InvalidCursorParameter { name } => write!(
                f,
                "parameter {name:?} must be cursor<P> with P a partition number in plain decimal"
            ),
            RequestError::PartitionOutOfRange {
                partition,
                partition_count,
            } => write!(
                f,
                "parameter \"cursor{partition}\": partition {partition} is not below n={partition_count}"
            ),
            RequestError::DuplicatePartition { partition } => {
                write!(f, "partition {partition} is given more than once")
            }
            RequestError::InvalidCursor { partition, reason } => {
                write!(f, "parameter \"cursor{partition}\": {reason}")
            }
            RequestError::UnknownCursor { partition } => write!(
                f,
                "parameter \"cursor{partition}\": not a cursor this feed handed out"
            ),
            RequestError::InvalidPageSizeHint { value } => write!(
                f,
                "parameter \"pagesizehint\" must be a number in ASCII digits, got {value:?}"
            ),
            RequestError::InvalidWait { value } => write!(
                f,
                "parameter \"wait\" must be a number of seconds in ASCII digits, got {value:?}"
            ),
            RequestError::InvalidHeaderName { name } => write!(
                f,
                "header name {name:?} is invalid: it must be non-empty and contain no comma"
            ),
        }
    }
}

impl std::error::Error for RequestError {}

/// How much of a value a request error echoes.
pub(crate) const ECHOED_CHARS: usize = 64;

/// Shortens text echoed in an error message to `max_chars` characters, so
/// that hostile input cannot make the message large.
pub(crate) fn excerpt(value: &str, max_chars: usize) -> String {
    match value.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_owned(),
    }
}
