//! The outbox over SQLite: one writer at a time, so row order is commit
//! order.

use std::fmt;
use std::sync::Arc;

use sqlx::{Acquire, Sqlite, SqliteConnection, SqlitePool};

use super::feed::SqliteFeed;
use super::journal::use_wal;
use crate::outbox::table::OutboxTable;
use crate::outbox::{OutboxError, OutboxEvent, Pruned, Retention, TableName, prune_partitions};
use crate::server::AppendSignal;

/// The statements, with `{table}` standing for the table name. The crate
/// runs these and nothing else; the module docs show each of them.
pub(crate) mod sql {
    /// The statements of one table, filled in.
    pub(crate) struct Statements {
        pub(crate) counter: String,
        pub(crate) jump: String,
        pub(crate) feed_id: String,
        pub(crate) kept: String,
        pub(crate) prune: String,
        pub(crate) remember_pruned: String,
        pub(crate) schema: String,
        pub(crate) append: String,
        pub(crate) read: String,
        pub(crate) last: String,
        pub(crate) handed_out: String,
        pub(crate) news: String,
    }

    /// The table and its index, run by `migrate`.
    pub(crate) const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS {table} (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    partition INTEGER NOT NULL CHECK (partition >= 0),
    headers TEXT CHECK (headers IS NULL OR json_valid(headers)),
    data TEXT NOT NULL CHECK (json_valid(data)),
    appended_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
CREATE INDEX IF NOT EXISTS {table}_by_partition ON {table} (partition, position);
CREATE TABLE IF NOT EXISTS {table}_pruned (
    partition INTEGER PRIMARY KEY,
    position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS {table}_gaps (
    after INTEGER NOT NULL,
    before INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS {table}_feed (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id INTEGER NOT NULL
);
INSERT INTO {table}_feed (one, id) VALUES (1, abs(random() % 4294967296))
ON CONFLICT (one) DO NOTHING;";

    /// The last position the table's counter handed out.
    pub(crate) const COUNTER: &str =
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0)";

    /// Moves the counter to `?2` (from `?1`), remembering the positions
    /// between as a gap that no row of this file ever had.
    pub(crate) const JUMP: &str = "\
INSERT INTO {table}_gaps (after, before) VALUES (?1, ?2);
UPDATE sqlite_sequence SET seq = ?2 WHERE name = '{table}';
INSERT INTO sqlite_sequence (name, seq)
SELECT '{table}', ?2 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '{table}')";

    /// The feed's id, which its cursors carry.
    pub(crate) const FEED_ID: &str = "SELECT id FROM {table}_feed";

    /// One event.
    pub(crate) const APPEND: &str =
        "INSERT INTO {table} (partition, headers, data) VALUES (?1, ?2, ?3)";

    /// A partition's events after a position, in order, as one text: for
    /// each row, its position, the byte lengths of its data and headers
    /// (`-1` for none), each followed by a space, then the data and the
    /// headers. One row for many spares sqlx a hand-over per row.
    pub(crate) const READ: &str = "\
SELECT group_concat(
    position || ' ' || appended_at || ' ' || octet_length(data) || ' '
        || coalesce(octet_length(headers), -1) || ' ' || data || coalesce(headers, ''),
    ''
)
FROM (
    SELECT position, appended_at, data, headers FROM {table}
    WHERE partition = ?1 AND position > ?2
    ORDER BY position
    LIMIT ?3
)";

    /// A partition's last position (for `_last`).
    pub(crate) const LAST: &str = "SELECT max(position) FROM {table} WHERE partition = ?1";

    /// Whether a partition has a row after a position (the look of a
    /// waiting request).
    pub(crate) const NEWS: &str =
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE partition = ?1 AND position > ?2)";

    /// Whether a cursor names a row of the partition: only those were
    /// handed out.
    pub(crate) const HANDED_OUT: &str = "\
SELECT EXISTS (SELECT 1 FROM {table} WHERE partition = ?1 AND position = ?2)
    OR EXISTS (SELECT 1 FROM {table}_pruned WHERE partition = ?1 AND position = ?2)
    OR EXISTS (SELECT 1 FROM {table}_gaps WHERE after < ?2 AND ?2 < before)";

    /// A partition's oldest kept position and the last one that `prune`
    /// deleted (`NULL`s where there is none): a cursor below either has
    /// lost events and expired.
    pub(crate) const KEPT: &str = "\
SELECT (SELECT min(position) FROM {table} WHERE partition = ?1),
    (SELECT position FROM {table}_pruned WHERE partition = ?1)";

    /// One batch of `prune` in partition `?1`: at most `?4` of its oldest
    /// rows, below its `?2 + 1`-th newest row, and appended more than `?3`
    /// milliseconds ago (when not `NULL`) like every row before them.
    pub(crate) const PRUNE: &str = "\
DELETE FROM {table} WHERE position IN (
    SELECT position FROM (
        SELECT t.position,
            min(?3 IS NULL OR t.appended_at
                < CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - ?3)
                OVER (ORDER BY t.position) AS old
        FROM {table} AS t
        WHERE t.partition = ?1 AND t.position < (
            SELECT position FROM {table} WHERE partition = ?1
            ORDER BY position DESC LIMIT 1 OFFSET ?2
        )
        ORDER BY t.position
        LIMIT ?4
    )
    WHERE old
)
RETURNING position";

    /// Remembers the last position `prune` deleted in partition `?1`, so
    /// that a cursor naming it stays valid.
    pub(crate) const REMEMBER_PRUNED: &str = "\
INSERT INTO {table}_pruned (partition, position) VALUES (?1, ?2)
ON CONFLICT (partition) DO UPDATE SET position = max(position, excluded.position)";

    #[cfg(test)]
    #[test]
    fn the_module_docs_show_every_statement() {
        let statements = [
            SCHEMA,
            COUNTER,
            JUMP,
            FEED_ID,
            APPEND,
            READ,
            LAST,
            HANDED_OUT,
            KEPT,
            PRUNE,
            REMEMBER_PRUNED,
            NEWS,
        ];
        crate::outbox::assert_documented(include_str!("outbox.md"), &statements);
    }
}

/// An outbox table in SQLite: its schema, and the writer that appends
/// events inside the caller's transaction.
///
/// SQLite lets one transaction write at a time and holds its write lock
/// from its first write to its commit, so positions (an `AUTOINCREMENT`
/// key, never reused) are handed out in commit order: a reader that
/// passed a position never sees a smaller one appear later. In WAL
/// journal mode readers do not block the writer: [`migrate`](Self::migrate)
/// sets it on the file when it is in another mode (sqlx sets none by
/// default).
///
/// The feeds made by [`feed`](Self::feed) from this outbox or its clones
/// hear of its commits at once (long polling): an append sets the
/// connection's commit hook (replacing any other), which wakes the waiting
/// requests of those feeds whenever that connection commits. Use one
/// `SqliteOutbox` per table in a process, cloned. Writes from other
/// processes are seen within the feed's poll interval.
///
/// Cheap to clone. See the [module docs](super) for the table and
/// every statement.
///
/// ```no_run
/// use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
/// use zeroeventhub::protocol::RawJson;
/// use zeroeventhub::server::{OutboxEvent, SqliteOutbox, TableName};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // WAL, so that the feed's readers never block the writer (`migrate`
/// // sets it on the file too, if it is in another mode).
/// let options = SqliteConnectOptions::new()
///     .filename("events.db")
///     .create_if_missing(true)
///     .journal_mode(SqliteJournalMode::Wal);
/// let pool = SqlitePool::connect_with(options).await?;
/// let outbox = SqliteOutbox::new(TableName::new("order_events")?, 4);
/// outbox.migrate(&pool).await?;
///
/// // The business change and its events, in one transaction.
/// let mut tx = pool.begin().await?;
/// let placed = RawJson::from_bytes(r#"{"order":"A-17","status":"placed"}"#)?;
/// let paid = RawJson::from_bytes(r#"{"order":"A-17","status":"paid"}"#)?;
/// let events = [OutboxEvent::keyed("A-17", placed), OutboxEvent::keyed("A-17", paid)];
/// outbox.append_batch(&mut tx, &events).await?;
/// tx.commit().await?;
///
/// let feed = outbox.feed(pool);
/// let app: axum::Router = axum::Router::new().route_service("/feed/v1", feed.service());
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteOutbox {
    pub(super) table: Arc<OutboxTable<sql::Statements>>,
    /// Notified by the commit hook of connections this writer appended on;
    /// shared by the feeds made with [`feed`](Self::feed).
    pub(super) committed: AppendSignal,
}

impl SqliteOutbox {
    /// The outbox in `table`, for a feed of `partition_count` partitions.
    ///
    /// # Panics
    ///
    /// If `partition_count` is 0: a feed has at least one partition.
    pub fn new(table: TableName, partition_count: u32) -> Self {
        let table = OutboxTable::new(table, partition_count, |fill| sql::Statements {
            schema: fill(sql::SCHEMA),
            feed_id: fill(sql::FEED_ID),
            counter: fill(sql::COUNTER),
            jump: fill(sql::JUMP),
            append: fill(sql::APPEND),
            read: fill(sql::READ),
            last: fill(sql::LAST),
            handed_out: fill(sql::HANDED_OUT),
            kept: fill(sql::KEPT),
            prune: fill(sql::PRUNE),
            remember_pruned: fill(sql::REMEMBER_PRUNED),
            news: fill(sql::NEWS),
        });
        SqliteOutbox {
            table: Arc::new(table),
            committed: AppendSignal::new(partition_count),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &TableName {
        self.table.name()
    }

    /// The feed's partition count.
    pub fn partition_count(&self) -> u32 {
        self.table.partition_count()
    }

    /// The SQL that [`migrate`](Self::migrate) runs, for users of their own
    /// migration tool.
    pub fn schema(&self) -> &str {
        &self.table.sql.schema
    }

    /// The query that reads one partition of a page (see the
    /// [module docs](super)): for checking its plan with `EXPLAIN`.
    pub fn read_statement(&self) -> &str {
        &self.table.sql.read
    }

    /// Creates the table and its index if they do not exist, in one
    /// transaction. Idempotent.
    ///
    /// First, outside that transaction, it sets the file to WAL journal
    /// mode if it is in another one (a new file is in `delete` mode: sqlx
    /// sets none unless its connect options name one), so that the feed's
    /// readers never block the writer; WAL stays with the file, and the
    /// change is logged once. An in-memory database keeps its `memory`
    /// mode. SQLite cannot change the mode inside a transaction, nor while
    /// another connection holds the file in a transaction or in
    /// `locking_mode=EXCLUSIVE`: then, unless the file is in WAL already,
    /// `migrate` fails with an error that says so.
    pub async fn migrate<'a, A>(&self, connection: A) -> Result<(), OutboxError>
    where
        A: Acquire<'a, Database = Sqlite>,
    {
        let mut connection = connection.acquire().await?;
        use_wal(&mut connection).await?;
        let mut tx = connection.begin().await?;
        sqlx::raw_sql(self.schema()).execute(&mut *tx).await?;
        // A file copied back from a backup counts on from the backup's last
        // position, below positions that consumers may have passed since:
        // at every start the counter jumps to the time in microseconds,
        // above every position handed out before (a table takes fewer than
        // a million rows a second), and the gap is remembered, so that a
        // cursor in it (of a row the restore lost) reads on from there.
        let counter: i64 = sqlx::query_scalar(&self.table.sql.counter)
            .fetch_one(&mut *tx)
            .await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as i64);
        if counter < now {
            for statement in self.table.sql.jump.split(';') {
                sqlx::query(statement)
                    .bind(counter)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Appends `event` in the caller's transaction (or, on a connection
    /// outside a transaction, on its own). Readers see it once that
    /// transaction commits; a rollback leaves no trace.
    pub async fn append(
        &self,
        connection: &mut SqliteConnection,
        event: &OutboxEvent,
    ) -> Result<(), OutboxError> {
        let (partition, headers) = event.checked(self.partition_count())?;
        self.wake_feeds_on_commit(connection).await?;
        sqlx::query(&self.table.sql.append)
            .bind(i64::from(partition))
            .bind(headers)
            .bind(event.data().as_str())
            .execute(connection)
            .await?;
        Ok(())
    }

    /// Appends `events`, in this order, in the caller's transaction. Nothing
    /// is written if one of them has a partition the feed lacks; run it in a
    /// transaction so that a failure half-way leaves nothing either.
    pub async fn append_batch(
        &self,
        connection: &mut SqliteConnection,
        events: &[OutboxEvent],
    ) -> Result<(), OutboxError> {
        let checked = events
            .iter()
            .map(|event| event.checked(self.partition_count()))
            .collect::<Result<Vec<_>, _>>()?;
        if !events.is_empty() {
            self.wake_feeds_on_commit(connection).await?;
        }
        for (event, (partition, headers)) in events.iter().zip(checked) {
            sqlx::query(&self.table.sql.append)
                .bind(i64::from(partition))
                .bind(headers)
                .bind(event.data().as_str())
                .execute(&mut *connection)
                .await?;
        }
        Ok(())
    }

    /// Sets the commit hook of `connection` to wake the feeds of this
    /// outbox. Set before the first write, so that a write outside a
    /// transaction (committed by its own statement) wakes them too.
    async fn wake_feeds_on_commit(
        &self,
        connection: &mut SqliteConnection,
    ) -> Result<(), OutboxError> {
        let committed = self.committed.clone();
        // The hook runs inside the commit: it must not touch the
        // connection. Readers it wakes that find nothing yet look again
        // shortly after.
        connection.lock_handle().await?.set_commit_hook(move || {
            committed.notify_all();
            true
        });
        Ok(())
    }

    /// Deletes what `retention` does not keep, in batches of short
    /// transactions on `pool`: safe while feeds serve and writers append
    /// (see [`Retention`] for what it deletes, and what consumers behind it
    /// get).
    pub async fn prune(
        &self,
        pool: &SqlitePool,
        retention: &Retention,
    ) -> Result<Pruned, OutboxError> {
        prune_partitions(retention, self.partition_count(), |partition| async move {
            let mut tx = pool.begin().await?;
            let deleted: Vec<i64> = sqlx::query_scalar(&self.table.sql.prune)
                .bind(i64::from(partition))
                .bind(retention.keep_offset())
                .bind(retention.age_millis())
                .bind(i64::from(retention.batch()))
                .fetch_all(&mut *tx)
                .await?;
            if let Some(last) = deleted.iter().max() {
                sqlx::query(&self.table.sql.remember_pruned)
                    .bind(i64::from(partition))
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(deleted.len() as u64)
        })
        .await
    }

    /// The feed of this table, reading with connections of `pool`.
    pub fn feed(&self, pool: SqlitePool) -> SqliteFeed {
        SqliteFeed::new(self.clone(), pool)
    }
}

impl fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.table.debug("SqliteOutbox", f)
    }
}
