use std::fmt;

use crate::server::UnknownPartition;

/// Why an append to an outbox table, or its migration, failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OutboxError {
    /// The event's partition is not below the feed's partition count;
    /// nothing was written.
    UnknownPartition(UnknownPartition),
    /// The database failed. The caller's transaction should be rolled back.
    Database(sqlx::Error),
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboxError::UnknownPartition(error) => write!(f, "cannot append: {error}"),
            OutboxError::Database(error) => write!(f, "outbox database error: {error}"),
        }
    }
}

impl std::error::Error for OutboxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OutboxError::UnknownPartition(error) => Some(error),
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
