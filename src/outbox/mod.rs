#![doc = include_str!("outbox.md")]

pub(crate) mod cursor;
mod error;
pub(crate) mod event;
pub(crate) mod page;
mod retention;
pub(crate) mod table;
pub(crate) mod wait;

pub use crate::table::{InvalidTableName, TableName};
pub use error::OutboxError;
pub use event::{OutboxEvent, partition_for_key};
pub use page::OutboxPage;
pub(crate) use retention::prune_partitions;
pub use retention::{Pruned, Retention};

/// Fails for a statement that `docs` do not show: the crate runs exactly
/// the statements its docs list.
#[cfg(test)]
pub(crate) fn assert_documented(docs: &str, statements: &[&str]) {
    for statement in statements {
        assert!(docs.contains(statement), "undocumented: {statement}");
    }
}
