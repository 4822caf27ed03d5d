//! Where a consumer keeps its cursors: in the database of its own effects,
//! so that both commit together.
//!
//! A [`CursorStore`] gives the runtime transactions of its database, loads
//! and compare-and-sets cursors in them, records dead letters, and says
//! which partitions this instance owns. Three are provided:
//!
//! | store | feature | transaction handed to the handler | ownership |
//! |---|---|---|---|
//! | [`MemoryStore`] | `client` | [`MemoryTransaction`] (rows of your type) | every partition |
//! | `SqliteStore` | `sqlite` | `sqlx::Transaction<'static, Sqlite>` | every partition, to one instance per file (a lease) |
//! | `PostgresStore` | `postgres` | `sqlx::Transaction<'static, Postgres>` | shared by advisory locks |
//!
//! # The tables of the database stores
//!
//! `migrate` creates them if they do not exist (it is safe to run at every
//! start; on SQLite it first sets the file to WAL journal mode); the names
//! below are the defaults, `with_tables` changes them
//! (each a `TableName`, the rule the outbox tables follow too: 1 to 48
//! lowercase ASCII letters, digits and `_`, not starting with a digit).
//! Users of another database library can create and read them the same
//! way.
//!
//! ```sql
//! -- One row per consumer name and partition: where to read from next.
//! CREATE TABLE IF NOT EXISTS zeh_consumer_cursors (
//!     consumer   TEXT    NOT NULL,  -- the consumer's name
//!     partition  INTEGER NOT NULL,  -- the feed's partition
//!     cursor     TEXT    NOT NULL,  -- the feed's cursor ('_first' before any commit)
//!     PRIMARY KEY (consumer, partition)
//! );
//! -- One row per event the consumer's type could not take, when the
//! -- poison policy is to record them.
//! CREATE TABLE IF NOT EXISTS zeh_dead_letters (
//!     id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- BIGSERIAL on PostgreSQL
//!     consumer     TEXT    NOT NULL,
//!     partition    INTEGER NOT NULL,
//!     after_cursor TEXT    NOT NULL,  -- the partition's cursor before the page
//!     headers      TEXT    NOT NULL,  -- the event's headers, a JSON object
//!     data         TEXT    NOT NULL,  -- the event's data, as the feed sent it
//!     error        TEXT    NOT NULL   -- why the consumer's type refused it
//! );
//! -- SQLite only, named after the cursor table: which instance of a
//! -- consumer name works on this file.
//! CREATE TABLE IF NOT EXISTS zeh_consumer_cursors_lease (
//!     consumer  TEXT    NOT NULL PRIMARY KEY,
//!     instance  TEXT    NOT NULL,  -- the holding store: its process id and a random number
//!     heartbeat INTEGER NOT NULL   -- its last claim, milliseconds since the Unix epoch
//! );
//! ```
//!
//! The statements the stores run, with `$n` (PostgreSQL) or `?` (SQLite):
//!
//! ```sql
//! -- load: every owned partition gets a row, then the rows are read.
//! INSERT INTO zeh_consumer_cursors (consumer, partition, cursor) VALUES ($1, $2, '_first')
//!     ON CONFLICT (consumer, partition) DO NOTHING;
//! SELECT partition, cursor FROM zeh_consumer_cursors WHERE consumer = $1;
//! -- save, in the page's transaction: compare-and-set, one row per moved partition;
//! -- no row updated means another instance moved the cursor, and the page rolls back.
//! UPDATE zeh_consumer_cursors SET cursor = $1 WHERE consumer = $2 AND partition = $3 AND cursor = $4;
//! -- dead_letter, in the page's transaction:
//! INSERT INTO zeh_dead_letters (consumer, partition, after_cursor, headers, data, error)
//!     VALUES ($1, $2, $3, $4, $5, $6);
//! ```
//!
//! On SQLite, `claim` takes or refreshes the lease (`?1` the consumer, `?2`
//! this instance, `?3` `SqliteStore::LEASE_TIMEOUT` in milliseconds, `now`
//! standing for `CAST((julianday('now') - 2440587.5) * 86400000 AS
//! INTEGER)`); one row changed means every partition is this instance's,
//! none means none is, and it reads the holder to say who has them.
//! `release` gives the lease up:
//!
//! ```sql
//! INSERT INTO zeh_consumer_cursors_lease (consumer, instance, heartbeat) VALUES (?1, ?2, now)
//!     ON CONFLICT (consumer) DO UPDATE SET instance = excluded.instance, heartbeat = excluded.heartbeat
//!     WHERE instance = excluded.instance OR heartbeat < excluded.heartbeat - ?3;
//! SELECT instance, now - heartbeat FROM zeh_consumer_cursors_lease WHERE consumer = ?1;
//! DELETE FROM zeh_consumer_cursors_lease WHERE consumer = ?1 AND instance = ?2;
//! ```

mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

pub use memory::{MemoryStore, MemoryTransaction};
#[cfg(feature = "sqlite")]
pub(crate) use sql::DEFAULT_CURSOR_TABLE;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[doc(hidden)]
pub use sql::Group;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use sql::sealed;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::{Dialect, SqlStore};

#[cfg(feature = "postgres")]
pub use crate::postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use crate::sqlite::SqliteStore;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use crate::table::{InvalidTableName, TableName};

use super::DeadLetter;
use crate::BoxError;
use crate::protocol::Cursor;

/// The runtime's view of a database: transactions, cursors in them, and
/// the partitions this instance owns.
///
/// Implement it to keep cursors in a database of your own; the handler
/// then gets your [`Transaction`](Self::Transaction). What must hold:
/// [`save`](Self::save) is a compare-and-set that fails with
/// [`StoreError::conflict`] (there, or at [`commit`](Self::commit)) when a
/// cursor is no longer the previous one, and everything written in a
/// transaction commits or rolls back together. Dropping a transaction
/// without committing rolls it back.
pub trait CursorStore: Send + Sync + 'static {
    /// An open transaction of the store's database; the handler writes its
    /// effects in it.
    type Transaction: Send;

    /// Begins a transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send;

    /// The stored cursors of `consumer` for `partitions`, `_first` for a
    /// partition it never committed, by partition.
    fn load(
        &self,
        consumer: &str,
        partitions: &[u32],
    ) -> impl Future<Output = Result<Vec<(u32, Cursor)>, StoreError>> + Send;

    /// Moves the cursors of `consumer` in `transaction`, each from its
    /// [`previous`](CursorChange::previous) value to its
    /// [`next`](CursorChange::next) one, failing with
    /// [`StoreError::conflict`] when one is no longer the previous value.
    fn save(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        changes: &[CursorChange],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records an event the consumer's type refused, in `transaction`.
    fn dead_letter(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        letter: &DeadLetter,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Commits `transaction`.
    fn commit(
        &self,
        transaction: Self::Transaction,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The partitions of a feed of `partition_count` partitions that this
    /// instance of `consumer` owns now, taking its share and giving up
    /// what is no longer its share. The runtime calls it regularly; a
    /// store that does not share partitions returns them all.
    fn claim(
        &self,
        consumer: &str,
        partition_count: u32,
    ) -> impl Future<Output = Result<Vec<u32>, StoreError>> + Send;

    /// Gives up every partition this instance of `consumer` owns; the
    /// runtime calls it when it stops.
    fn release(&self, consumer: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One cursor moved by a page: from where the page was read to where the
/// next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorChange {
    /// The partition.
    pub partition: u32,
    /// The cursor the page was read from: the stored one, if no other
    /// instance moved it.
    pub previous: Cursor,
    /// The cursor to store.
    pub next: Cursor,
}

/// Why a store operation failed.
///
/// A [`conflict`](Self::is_conflict) means another instance moved a cursor
/// first: the page rolls back and the runtime reads ownership and cursors
/// again. Anything else is the database's error (the
/// [`source`](StdError::source)); the runtime retries it after a backoff.
pub struct StoreError {
    kind: StoreErrorKind,
    source: Option<BoxError>,
}

#[derive(Debug)]
enum StoreErrorKind {
    Conflict { partition: u32 },
    Database,
}

impl StoreError {
    /// The compare-and-set of `partition`'s cursor found another value.
    pub fn conflict(partition: u32) -> Self {
        StoreError {
            kind: StoreErrorKind::Conflict { partition },
            source: None,
        }
    }

    /// The database failed.
    pub fn database(error: impl Into<BoxError>) -> Self {
        StoreError {
            kind: StoreErrorKind::Database,
            source: Some(error.into()),
        }
    }

    /// Whether another instance moved a cursor first.
    pub fn is_conflict(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Conflict { .. })
    }

    /// The partition whose cursor was moved by another instance, for a
    /// conflict.
    pub fn partition(&self) -> Option<u32> {
        match self.kind {
            StoreErrorKind::Conflict { partition } => Some(partition),
            StoreErrorKind::Database => None,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreErrorKind::Conflict { partition } => write!(
                f,
                "the cursor of partition {partition} was moved by another instance of the \
                 consumer; the page was rolled back"
            ),
            StoreErrorKind::Database => match &self.source {
                Some(source) => write!(f, "the cursor store's database failed: {source}"),
                None => f.write_str("the cursor store's database failed"),
            },
        }
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|source| &**source as &(dyn StdError + 'static))
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::database(error)
    }
}
