//! The consumer's cursor store in SQLite, the embedded default.

use sqlx::Sqlite;
use sqlx::sqlite::SqliteQueryResult;

use crate::consumer::store::{Dialect, EveryPartition, SqlStore, sealed};

/// A cursor store in SQLite, the embedded default: the handler gets a
/// `sqlx::Transaction<'static, Sqlite>` and writes its effects in it; the
/// cursors commit with them.
///
/// SQLite serializes writers, so one instance of a consumer per database
/// file is the normal case, and every partition is its own. A second
/// instance over the same file would be fenced by the compare-and-set of
/// the cursors (one of the two pages rolls back), not kept idle. The tables
/// and statements are in the [store documentation](crate::consumer::store).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use zeroeventhub::consumer::SqliteStore;
///
/// let pool = sqlx::SqlitePool::connect("sqlite://consumer.db?mode=rwc").await?;
/// let store = SqliteStore::new(pool);
/// store.migrate().await?;
/// # Ok(())
/// # }
/// ```
pub type SqliteStore = SqlStore<Sqlite>;

impl sealed::Sealed for Sqlite {}

impl Dialect for Sqlite {
    type Group = EveryPartition;

    fn placeholder(_: usize) -> String {
        "?".to_owned()
    }

    const DEAD_LETTER_ID: &'static str = "INTEGER PRIMARY KEY AUTOINCREMENT";

    // SQLite takes the write lock at the first statement: migrations take
    // turns without one of their own.
    const MIGRATE_LOCK: Option<&'static str> = None;

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}
