#![doc = include_str!("outbox.md")]

mod cursor;
mod error;
mod event;
mod page;
#[cfg(feature = "postgres")]
mod pg_heads;
#[cfg(feature = "postgres")]
mod pg_listener;
#[cfg(feature = "postgres")]
mod pg_notifier;
#[cfg(feature = "postgres")]
mod pg_pages;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod wait;

pub use crate::table::{InvalidTableName, TableName};
pub use error::OutboxError;
pub use event::{OutboxEvent, partition_for_key};
pub use page::OutboxPage;
#[cfg(feature = "postgres")]
pub use pg_notifier::{Appended, NotifyAfterCommit};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresFeed, PostgresOutbox};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteFeed, SqliteOutbox};

#[cfg(test)]
mod tests {
    /// Every statement the crate runs is written out in the docs.
    #[test]
    fn the_docs_show_every_statement() {
        let docs = include_str!("outbox.md");
        #[cfg(feature = "postgres")]
        {
            use super::postgres::sql;
            for statement in [
                sql::SCHEMA,
                sql::MIGRATE_LOCK,
                sql::PAGE_BEGIN,
                sql::APPEND,
                sql::APPEND_BATCH,
                sql::INSERT,
                sql::INSERT_BATCH,
                sql::NOTIFY,
                sql::READ,
                sql::HEADS,
                sql::HANDED_OUT,
            ] {
                assert!(docs.contains(statement), "undocumented: {statement}");
            }
        }
        #[cfg(feature = "sqlite")]
        {
            use super::sqlite::sql;
            for statement in [
                sql::SCHEMA,
                sql::APPEND,
                sql::READ,
                sql::LAST,
                sql::HANDED_OUT,
                sql::NEWS,
            ] {
                assert!(docs.contains(statement), "undocumented: {statement}");
            }
        }
        let _ = docs;
    }
}
