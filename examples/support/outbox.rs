//! Both outboxes behind one trait, for the examples and tests that run
//! the same code on PostgreSQL and on SQLite: the outboxes' own methods,
//! named alike.

// Each example, and the tests, use their own part of it.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use sqlx::{Database, Pool};
use zeroeventhub::outbox::{Pruned, Retention};
use zeroeventhub::server::{FeedReader, FeedService, OutboxError, OutboxEvent, TableName};

/// An outbox and its database (`sql_outbox!` implements it for both).
pub(crate) trait SqlOutbox: Clone + Send + Sync + 'static {
    /// The sqlx database the outbox writes to.
    type Database: Database;
    /// The outbox's feed.
    type Feed: FeedReader;

    /// The outbox in `table`, for a feed of `partition_count` partitions.
    fn new(table: TableName, partition_count: u32) -> Self;

    /// The feed's partition count.
    fn partition_count(&self) -> u32;

    /// The SQL that `migrate` runs.
    fn schema(&self) -> &str;

    /// Creates the table if it does not exist.
    fn migrate(&self, pool: &Pool<Self::Database>)
    -> impl Future<Output = Result<(), OutboxError>>;

    /// Appends `event` on `connection`.
    fn append<'a>(
        &'a self,
        connection: &'a mut <Self::Database as Database>::Connection,
        event: &'a OutboxEvent,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send + 'a;

    /// Appends `events` on `connection`.
    fn append_batch<'a>(
        &'a self,
        connection: &'a mut <Self::Database as Database>::Connection,
        events: &'a [OutboxEvent],
    ) -> impl Future<Output = Result<(), OutboxError>> + Send + 'a;

    /// Deletes what `retention` does not keep.
    fn prune(
        &self,
        pool: &Pool<Self::Database>,
        retention: &Retention,
    ) -> impl Future<Output = Result<Pruned, OutboxError>> + Send;

    /// The outbox's feed, reading with `pool`.
    fn feed(&self, pool: Pool<Self::Database>) -> Self::Feed;

    /// The service of the outbox's feed, reading with `pool`.
    fn service(&self, pool: Pool<Self::Database>) -> FeedService<Self::Feed>;

    /// Runs `sql`, one or more statements without parameters.
    fn execute(
        pool: &Pool<Self::Database>,
        sql: &str,
    ) -> impl Future<Output = Result<(), sqlx::Error>>;

    /// The rows of two numbers, the second maybe NULL, that `sql`
    /// selects.
    fn pairs(
        pool: &Pool<Self::Database>,
        sql: &str,
    ) -> impl Future<Output = Result<Vec<(i64, Option<i64>)>, sqlx::Error>>;

    /// The number `sql` selects.
    fn count(
        pool: &Pool<Self::Database>,
        sql: &str,
    ) -> impl Future<Output = Result<i64, sqlx::Error>>;
}

/// Implements [`SqlOutbox`] for `$outbox`, the outbox of the sqlx database
/// `$database` whose feed is `$feed`, with the outbox's methods of the same
/// names.
macro_rules! sql_outbox {
    ($outbox:ty, $feed:ty, $database:ty) => {
        impl SqlOutbox for $outbox {
            type Database = $database;
            type Feed = $feed;

            fn new(table: TableName, partition_count: u32) -> Self {
                <$outbox>::new(table, partition_count)
            }

            fn partition_count(&self) -> u32 {
                <$outbox>::partition_count(self)
            }

            fn schema(&self) -> &str {
                <$outbox>::schema(self)
            }

            async fn migrate(&self, pool: &Pool<$database>) -> Result<(), OutboxError> {
                <$outbox>::migrate(self, pool).await
            }

            fn append<'a>(
                &'a self,
                connection: &'a mut <$database as Database>::Connection,
                event: &'a OutboxEvent,
            ) -> impl Future<Output = Result<(), OutboxError>> + Send + 'a {
                <$outbox>::append(self, connection, event)
            }

            fn append_batch<'a>(
                &'a self,
                connection: &'a mut <$database as Database>::Connection,
                events: &'a [OutboxEvent],
            ) -> impl Future<Output = Result<(), OutboxError>> + Send + 'a {
                <$outbox>::append_batch(self, connection, events)
            }

            fn prune(
                &self,
                pool: &Pool<$database>,
                retention: &Retention,
            ) -> impl Future<Output = Result<Pruned, OutboxError>> + Send {
                <$outbox>::prune(self, pool, retention)
            }

            fn feed(&self, pool: Pool<$database>) -> $feed {
                <$outbox>::feed(self, pool)
            }

            fn service(&self, pool: Pool<$database>) -> FeedService<$feed> {
                self.feed(pool).service()
            }

            async fn execute(pool: &Pool<$database>, sql: &str) -> Result<(), sqlx::Error> {
                sqlx::raw_sql(sql).execute(pool).await.map(drop)
            }

            async fn pairs(
                pool: &Pool<$database>,
                sql: &str,
            ) -> Result<Vec<(i64, Option<i64>)>, sqlx::Error> {
                sqlx::query_as(sql).fetch_all(pool).await
            }

            async fn count(pool: &Pool<$database>, sql: &str) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(sql).fetch_one(pool).await
            }
        }
    };
}

#[cfg(feature = "postgres")]
sql_outbox!(
    zeroeventhub::server::PostgresOutbox,
    zeroeventhub::server::PostgresFeed,
    sqlx::Postgres
);
#[cfg(feature = "sqlite")]
sql_outbox!(
    zeroeventhub::server::SqliteOutbox,
    zeroeventhub::server::SqliteFeed,
    sqlx::Sqlite
);

/// Appends `events` in one transaction of `pool`, which it holds open for
/// `hold` before it commits.
pub(crate) async fn commit<O: SqlOutbox>(
    pool: &Pool<O::Database>,
    outbox: &O,
    events: &[OutboxEvent],
    hold: Duration,
) -> Result<(), OutboxError> {
    let mut tx = pool.begin().await?;
    outbox.append_batch(&mut tx, events).await?;
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    tx.commit().await?;
    Ok(())
}
