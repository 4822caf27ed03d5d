use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{CursorChange, CursorStore, Statements, StoreError, TableName, TableNames, cursors_of};
use crate::consumer::DeadLetter;
use crate::protocol::Cursor;

/// A cursor store in SQLite, the embedded default: the handler gets a
/// `sqlx::Transaction<'static, Sqlite>` and writes its effects in it; the
/// cursors commit with them.
///
/// SQLite serializes writers, so one instance of a consumer per database
/// file is the normal case, and every partition is its own. A second
/// instance over the same file would be fenced by the compare-and-set of
/// the cursors (one of the two pages rolls back), not kept idle. The tables
/// and statements are in the [module documentation](super).
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
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    tables: TableNames,
    statements: Statements,
}

impl SqliteStore {
    /// A store in the database of `pool`, with the default table names.
    pub fn new(pool: SqlitePool) -> Self {
        let tables = TableNames::default();
        let statements = Statements::new(&tables, |_| "?".to_owned());
        SqliteStore {
            pool,
            tables,
            statements,
        }
    }

    /// Names the cursor table and the dead-letter table (defaults
    /// `zeh_consumer_cursors` and `zeh_dead_letters`).
    pub fn with_tables(self, cursors: TableName, dead_letters: TableName) -> Self {
        let tables = TableNames {
            cursors,
            dead_letters,
        };
        let statements = Statements::new(&tables, |_| "?".to_owned());
        SqliteStore {
            tables,
            statements,
            ..self
        }
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates the store's tables if they do not exist; safe to run at
    /// every start.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let TableNames {
            cursors,
            dead_letters,
        } = &self.tables;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {cursors} (
                consumer  TEXT    NOT NULL,
                partition INTEGER NOT NULL,
                cursor    TEXT    NOT NULL,
                PRIMARY KEY (consumer, partition)
            )"
        ))
        .execute(&self.pool)
        .await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {dead_letters} (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                consumer     TEXT    NOT NULL,
                partition    INTEGER NOT NULL,
                after_cursor TEXT    NOT NULL,
                headers      TEXT    NOT NULL,
                data         TEXT    NOT NULL,
                error        TEXT    NOT NULL
            )"
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl CursorStore for SqliteStore {
    type Transaction = Transaction<'static, Sqlite>;

    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        Ok(self.pool.begin().await?)
    }

    async fn load(
        &self,
        consumer: &str,
        partitions: &[u32],
    ) -> Result<Vec<(u32, Cursor)>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        for &partition in partitions {
            sqlx::query(&self.statements.insert_first)
                .bind(consumer)
                .bind(i64::from(partition))
                .execute(&mut *transaction)
                .await?;
        }
        let rows: Vec<(i64, String)> = sqlx::query_as(&self.statements.select_cursors)
            .bind(consumer)
            .fetch_all(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(cursors_of(partitions, &rows))
    }

    async fn save(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        changes: &[CursorChange],
    ) -> Result<(), StoreError> {
        for change in changes {
            let updated = sqlx::query(&self.statements.compare_and_set)
                .bind(change.next.as_str())
                .bind(consumer)
                .bind(i64::from(change.partition))
                .bind(change.previous.as_str())
                .execute(&mut **transaction)
                .await?;
            if updated.rows_affected() != 1 {
                return Err(StoreError::conflict(change.partition));
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        sqlx::query(&self.statements.insert_dead_letter)
            .bind(consumer)
            .bind(i64::from(letter.partition))
            .bind(letter.after.as_str())
            .bind(letter.headers_json())
            .bind(letter.data.as_str())
            .bind(&letter.error)
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    async fn commit(&self, transaction: Self::Transaction) -> Result<(), StoreError> {
        Ok(transaction.commit().await?)
    }

    async fn claim(&self, _consumer: &str, partition_count: u32) -> Result<Vec<u32>, StoreError> {
        Ok((0..partition_count).collect())
    }

    async fn release(&self, _consumer: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
