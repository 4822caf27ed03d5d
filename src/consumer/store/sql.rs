//! The cursor store over a SQL database, written once: the tables, the
//! statements and the transaction logic are the same on every database,
//! and what differs (placeholders, the id column, the migration's lock and
//! what must come before it, who owns which partition) is the database's
//! [`Dialect`].

use std::fmt;
use std::future::Future;

use sqlx::{
    Connection, Database, Decode, Encode, Executor, IntoArguments, Pool, Transaction, Type,
};

use super::{CursorChange, CursorStore, StoreError, TableName};
use crate::consumer::DeadLetter;
use crate::protocol::Cursor;

/// A cursor store in the database of a sqlx [`Pool`]: the handler gets a
/// `sqlx::Transaction<'static, DB>` and writes its effects in it; the
/// cursors commit with them.
///
/// Use it through its aliases, as sqlx's `PgPool` is a `Pool<Postgres>`:
/// `SqliteStore` (feature `sqlite`) and `PostgresStore` (feature
/// `postgres`). The tables and statements are in the [module
/// documentation](super).
pub struct SqlStore<DB: Dialect> {
    pool: Pool<DB>,
    tables: TableNames,
    statements: Statements,
    group: DB::Group,
}

/// What a database brings to [`SqlStore`]: its SQL where it differs, and
/// how the instances of a consumer share its partitions.
///
/// Sealed: the crate implements it for the databases it supports.
pub trait Dialect: Database + sealed::Sealed {
    /// How the instances of one consumer name share the partitions.
    #[doc(hidden)]
    type Group: Group<Self>;

    /// The `n`-th bound parameter, from 1.
    #[doc(hidden)]
    fn placeholder(n: usize) -> String;

    /// The type and constraint of the dead-letter table's `id` column.
    #[doc(hidden)]
    const DEAD_LETTER_ID: &'static str;

    /// The statement that makes concurrent migrations take turns, run first
    /// in the migration's transaction, if the database needs one.
    #[doc(hidden)]
    const MIGRATE_LOCK: Option<&'static str>;

    /// The rows a statement changed.
    #[doc(hidden)]
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// Readies the database for the store on `connection`, before the
    /// migration's transaction: what cannot run inside one (SQLite's
    /// journal mode).
    #[doc(hidden)]
    fn prepare(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = connection;
        std::future::ready(Ok(()))
    }
}

/// How the instances of a consumer share its partitions: see
/// [`CursorStore::claim`].
#[doc(hidden)]
pub trait Group<DB: Database>: Default + Send + Sync + 'static {
    /// The group of a store whose cursor table is `cursors`: a group with a
    /// table of its own names it after that one.
    fn for_cursors(cursors: &TableName) -> Self {
        let _ = cursors;
        Self::default()
    }

    /// The statements that create the group's tables, run by `migrate` in
    /// its transaction after the store's own.
    fn schema(&self) -> &[String] {
        &[]
    }

    /// The partitions this instance owns now.
    fn claim(
        &self,
        pool: &Pool<DB>,
        consumer: &str,
        partition_count: u32,
    ) -> impl Future<Output = Result<Vec<u32>, StoreError>> + Send;

    /// Gives up every partition this instance owns.
    fn release(&self, consumer: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

pub(crate) mod sealed {
    /// Keeps [`Dialect`](super::Dialect) to the crate's databases.
    pub trait Sealed {}
}

impl<DB: Dialect> SqlStore<DB> {
    /// A store in the database of `pool`, with the default table names.
    pub fn new(pool: Pool<DB>) -> Self {
        let tables = TableNames::default();
        SqlStore {
            statements: Statements::new::<DB>(&tables),
            group: DB::Group::for_cursors(&tables.cursors),
            tables,
            pool,
        }
    }

    /// Names the cursor table and the dead-letter table (defaults
    /// `zeh_consumer_cursors` and `zeh_dead_letters`); SQLite's lease table
    /// is named after the cursor table (`<cursors>_lease`).
    pub fn with_tables(self, cursors: TableName, dead_letters: TableName) -> Self {
        let tables = TableNames {
            cursors,
            dead_letters,
        };
        SqlStore {
            statements: Statements::new::<DB>(&tables),
            group: DB::Group::for_cursors(&tables.cursors),
            tables,
            ..self
        }
    }

    /// The pool the store uses for its transactions.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

impl<DB: Dialect> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    /// Creates the store's tables if they do not exist; safe to run at
    /// every start, from several instances at once. On SQLite it first sets
    /// the file to WAL journal mode (see `SqliteStore`), and fails if the
    /// mode cannot change.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        DB::prepare(&mut connection).await?;
        let mut transaction = connection.begin().await?;
        if let Some(lock) = DB::MIGRATE_LOCK {
            sqlx::query(lock).execute(&mut *transaction).await?;
        }
        let group = self.group.schema().iter().map(String::as_str);
        for statement in self.statements.schema().into_iter().chain(group) {
            sqlx::query(statement).execute(&mut *transaction).await?;
        }
        transaction.commit().await
    }
}

impl<DB: Dialect> Clone for SqlStore<DB>
where
    DB::Group: Clone,
{
    fn clone(&self) -> Self {
        SqlStore {
            pool: self.pool.clone(),
            tables: self.tables.clone(),
            statements: self.statements.clone(),
            group: self.group.clone(),
        }
    }
}

impl<DB: Dialect> fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("database", &DB::NAME)
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl<DB: Dialect> CursorStore for SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'r> (i32, String): sqlx::FromRow<'r, DB::Row>,
{
    type Transaction = Transaction<'static, DB>;

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
                .bind(partition_key(partition)?)
                .execute(&mut *transaction)
                .await?;
        }
        let rows: Vec<(i32, String)> = sqlx::query_as(&self.statements.select_cursors)
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
                .bind(partition_key(change.partition)?)
                .bind(change.previous.as_str())
                .execute(&mut **transaction)
                .await?;
            if DB::rows_affected(&updated) != 1 {
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
            .bind(partition_key(letter.partition)?)
            .bind(letter.after.as_str())
            .bind(letter.headers_json())
            .bind(letter.data.as_str())
            .bind(letter.error.as_str())
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    async fn commit(&self, transaction: Self::Transaction) -> Result<(), StoreError> {
        Ok(transaction.commit().await?)
    }

    async fn claim(&self, consumer: &str, partition_count: u32) -> Result<Vec<u32>, StoreError> {
        self.group
            .claim(&self.pool, consumer, partition_count)
            .await
    }

    async fn release(&self, consumer: &str) -> Result<(), StoreError> {
        self.group.release(consumer).await
    }
}

/// The names of a database store's tables.
#[derive(Debug, Clone)]
struct TableNames {
    cursors: TableName,
    dead_letters: TableName,
}

/// The default name of the cursor table.
pub(crate) const DEFAULT_CURSOR_TABLE: &str = "zeh_consumer_cursors";

impl Default for TableNames {
    fn default() -> Self {
        TableNames {
            cursors: TableName::new(DEFAULT_CURSOR_TABLE).expect("a plain identifier"),
            dead_letters: TableName::new("zeh_dead_letters").expect("a plain identifier"),
        }
    }
}

/// The statements of the store, with the dialect's placeholders: see the
/// module documentation.
#[derive(Debug, Clone)]
struct Statements {
    create_cursors: String,
    create_dead_letters: String,
    insert_first: String,
    select_cursors: String,
    compare_and_set: String,
    insert_dead_letter: String,
}

impl Statements {
    fn new<DB: Dialect>(tables: &TableNames) -> Self {
        let p = DB::placeholder;
        let TableNames {
            cursors,
            dead_letters,
        } = tables;
        let id = DB::DEAD_LETTER_ID;
        Statements {
            create_cursors: format!(
                "CREATE TABLE IF NOT EXISTS {cursors} (
                consumer  TEXT    NOT NULL,
                partition INTEGER NOT NULL,
                cursor    TEXT    NOT NULL,
                PRIMARY KEY (consumer, partition)
            )"
            ),
            create_dead_letters: format!(
                "CREATE TABLE IF NOT EXISTS {dead_letters} (
                id           {id},
                consumer     TEXT    NOT NULL,
                partition    INTEGER NOT NULL,
                after_cursor TEXT    NOT NULL,
                headers      TEXT    NOT NULL,
                data         TEXT    NOT NULL,
                error        TEXT    NOT NULL
            )"
            ),
            insert_first: format!(
                "INSERT INTO {cursors} (consumer, partition, cursor) VALUES ({}, {}, '_first') \
                 ON CONFLICT (consumer, partition) DO NOTHING",
                p(1),
                p(2)
            ),
            select_cursors: format!(
                "SELECT partition, cursor FROM {cursors} WHERE consumer = {}",
                p(1)
            ),
            compare_and_set: format!(
                "UPDATE {cursors} SET cursor = {} WHERE consumer = {} AND partition = {} \
                 AND cursor = {}",
                p(1),
                p(2),
                p(3),
                p(4)
            ),
            insert_dead_letter: format!(
                "INSERT INTO {dead_letters} \
                 (consumer, partition, after_cursor, headers, data, error) \
                 VALUES ({}, {}, {}, {}, {}, {})",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6)
            ),
        }
    }

    /// The tables, as `migrate` creates them.
    fn schema(&self) -> [&str; 2] {
        [&self.create_cursors, &self.create_dead_letters]
    }
}

/// A partition as the tables' `INTEGER` column takes it.
fn partition_key(partition: u32) -> Result<i32, StoreError> {
    i32::try_from(partition).map_err(|_| {
        StoreError::database(format!(
            "partition {partition} does not fit an INTEGER column"
        ))
    })
}

/// The stored cursors of `partitions` among `rows` (partition, cursor),
/// `_first` for a partition without a row or with a cursor that is not one.
fn cursors_of(partitions: &[u32], rows: &[(i32, String)]) -> Vec<(u32, Cursor)> {
    let mut cursors: Vec<(u32, Cursor)> = partitions
        .iter()
        .map(|&partition| {
            let stored = rows
                .iter()
                .find(|(p, _)| i64::from(*p) == i64::from(partition))
                .and_then(|(_, cursor)| Cursor::new(cursor).ok());
            (partition, stored.unwrap_or_else(Cursor::first))
        })
        .collect();
    cursors.sort_by_key(|(partition, _)| *partition);
    cursors
}
