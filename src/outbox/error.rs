use std::fmt;

use crate::server::UnknownPartition;

/// Why an append to an outbox table, or its migration, failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OutboxError {
    /// The event's partition is not below the feed's partition count;
    /// nothing was written.
    UnknownPartition(UnknownPartition),
    /// The event would be served as a line longer than the protocol's
    /// limit ([`MAX_LINE_BYTES`](crate::protocol::MAX_LINE_BYTES)), which
    /// no consumer with the default settings can read; nothing was written.
    EventTooLarge {
        /// The longest line the event could be served as.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The outbox's position counter is behind the positions its table
    /// holds: the rows were restored or copied into this database without
    /// their sequence (a data-only copy, logical replication). New rows
    /// would sort before rows already served, and consumers would skip
    /// them; the feed refuses to serve until it is repaired, which
    /// `migrate` does.
    CounterBehind {
        /// The outbox table.
        table: String,
        /// The last position the counter handed out.
        counter: i64,
        /// The highest position stored.
        stored: i64,
    },
    /// The database failed. The caller's transaction should be rolled back.
    Database(sqlx::Error),
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboxError::UnknownPartition(error) => write!(f, "cannot append: {error}"),
            OutboxError::EventTooLarge { bytes, limit } => write!(
                f,
                "cannot append: the event would be served as a line of {bytes} bytes, over \
                 the protocol's limit of {limit} bytes that consumers read"
            ),
            OutboxError::CounterBehind {
                table,
                counter,
                stored,
            } => write!(
                f,
                "the position counter of outbox {table} is at {counter}, behind the highest \
                 position stored ({stored}): its rows came without their sequence (a restore \
                 or a copy), and new rows would sort before rows already served; run the \
                 outbox's migrate, or SELECT setval('{table}_position_seq', {stored}), before \
                 any writer appends"
            ),
            OutboxError::Database(error) => write!(f, "outbox database error: {error}"),
        }
    }
}

impl std::error::Error for OutboxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OutboxError::UnknownPartition(error) => Some(error),
            OutboxError::EventTooLarge { .. } | OutboxError::CounterBehind { .. } => None,
            OutboxError::Database(error) => Some(error),
        }
    }
}

impl From<sqlx::Error> for OutboxError {
    fn from(error: sqlx::Error) -> Self {
        OutboxError::Database(error)
    }
}

impl From<UnknownPartition> for OutboxError {
    fn from(error: UnknownPartition) -> Self {
        OutboxError::UnknownPartition(error)
    }
}
