//! The outbox over PostgreSQL: rows ordered by the writing transaction's id,
//! served only below the oldest transaction still running.

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;

use sqlx::postgres::PgRow;
use sqlx::{Acquire, PgConnection, PgPool, Postgres, Row};

use super::event::check_partition;
use super::page::{Budget, OutboxPage, emit_event, row_event};
use super::pg_listener::{self, AppendListenerTask};
use super::wait::{Look, wait_for_rows};
use super::{OutboxError, OutboxEvent, TableName, cursor};
use crate::protocol::{Checkpoint, Cursor, FeedItem};
use crate::server::{AppendSignal, FeedReader, FeedService, ReadContext, ReadError};

/// The statements, with `{table}` standing for the table name. The crate
/// runs these and nothing else; `mod.rs` documents each of them.
pub(crate) mod sql {
    /// The table and its index, run by `migrate`.
    pub(crate) const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS {table} (
    partition integer NOT NULL CHECK (partition >= 0),
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    position bigint GENERATED ALWAYS AS IDENTITY,
    headers json,
    data json NOT NULL,
    PRIMARY KEY (partition, txid, position)
);";

    /// Serializes concurrent `migrate` calls.
    pub(crate) const MIGRATE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";

    /// One event, and the wake-up of the feed's listeners at commit.
    pub(crate) const APPEND: &str = "\
WITH appended AS (
    INSERT INTO {table} (partition, headers, data) VALUES ($1, $2::json, $3::json)
    RETURNING partition
)
SELECT pg_notify('{table}', partition::text) FROM appended";

    /// A batch of events in one statement, in order, and one wake-up per
    /// partition.
    pub(crate) const APPEND_BATCH: &str = "\
WITH appended AS (
    INSERT INTO {table} (partition, headers, data)
    SELECT p, h::json, d::json
    FROM unnest($1::integer[], $2::text[], $3::text[]) WITH ORDINALITY AS e(p, h, d, n)
    ORDER BY n
    RETURNING partition
)
SELECT pg_notify('{table}', p::text) FROM (SELECT DISTINCT partition AS p FROM appended) AS touched";

    /// Opens a page's read-only transaction: with sorts priced out of
    /// reach, the planner reads through the primary key whatever its
    /// statistics say, so that no page sorts the rows after its cursor.
    pub(crate) const PAGE_BEGIN: &str = "BEGIN READ ONLY; SET LOCAL enable_sort = off";

    /// A partition's servable events after a position, in order.
    pub(crate) const READ: &str = "\
SELECT txid::text::bigint AS tx, position AS pos, data::text AS data, headers::text AS headers
FROM {table}
WHERE partition = $1 AND (txid, position) > ($2::text::xid8, $3)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY txid, position
LIMIT $4";

    /// A partition's last servable position (for `_last`).
    pub(crate) const LAST: &str = "\
SELECT txid::text::bigint AS tx, position AS pos
FROM {table}
WHERE partition = $1 AND txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY txid DESC, position DESC
LIMIT 1";

    /// For each partition of a waiting request (`$1`), from its start
    /// (`$2`, `$3`), whether its next row is servable yet: no row, nothing
    /// to send; a `false`, committed rows waiting for the horizon.
    pub(crate) const NEWS: &str = "\
SELECT next.txid < pg_snapshot_xmin(pg_current_snapshot()) AS servable
FROM unnest($1::integer[], $2::bigint[], $3::bigint[]) AS after (partition, tx, pos)
CROSS JOIN LATERAL (
    SELECT txid FROM {table}
    WHERE partition = after.partition AND (txid, position) > (after.tx::text::xid8, after.pos)
    ORDER BY txid, position
    LIMIT 1
) AS next";

    /// Whether a cursor names a servable row of the partition: only those
    /// were handed out.
    pub(crate) const HANDED_OUT: &str = "\
SELECT EXISTS (
    SELECT 1 FROM {table}
    WHERE partition = $1 AND txid = $2::text::xid8 AND position = $3
      AND txid < pg_snapshot_xmin(pg_current_snapshot())
)";
}

/// The statements for one table.
struct Statements {
    table: TableName,
    partition_count: u32,
    schema: String,
    append: String,
    append_batch: String,
    read: String,
    last: String,
    handed_out: String,
    news: String,
}

/// An outbox table in PostgreSQL: its schema, and the writer that appends
/// events inside the caller's transaction.
///
/// Each row records the id of the transaction that wrote it (`txid`, an
/// `xid8`). The feed orders rows by `(txid, position)` and serves only those
/// whose transaction is older than every transaction still running
/// (`pg_snapshot_xmin(pg_current_snapshot())`): a transaction that could
/// still commit has an id at or above that horizon, so a cursor never
/// passes an event that becomes visible later. A long transaction holds back
/// delivery (of every feed of the cluster) until it ends; it never loses an
/// event.
///
/// Cheap to clone. See the [module docs](super#postgresql) for the table
/// and every statement.
///
/// ```no_run
/// use sqlx::PgPool;
/// use zeroeventhub::protocol::RawJson;
/// use zeroeventhub::server::{OutboxEvent, PostgresOutbox, TableName};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// let outbox = PostgresOutbox::new(TableName::new("order_events")?, 4);
/// outbox.migrate(&pool).await?;
///
/// let mut tx = pool.begin().await?;
/// // ... the business change, in `tx` ...
/// let data = RawJson::from_bytes(r#"{"order":"A-17","status":"paid"}"#)?;
/// outbox.append(&mut tx, &OutboxEvent::keyed("A-17", data)).await?;
/// tx.commit().await?; // readers see the event from now on, never before
///
/// let app: axum::Router = axum::Router::new().route_service("/feed/v1", outbox.feed(pool).service());
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresOutbox {
    statements: Arc<Statements>,
}

impl PostgresOutbox {
    /// The outbox in `table`, for a feed of `partition_count` partitions.
    ///
    /// # Panics
    ///
    /// If `partition_count` is 0: a feed has at least one partition.
    pub fn new(table: TableName, partition_count: u32) -> Self {
        assert!(partition_count > 0, "a feed has at least one partition");
        let fill = |template: &str| template.replace("{table}", table.as_str());
        PostgresOutbox {
            statements: Arc::new(Statements {
                schema: fill(sql::SCHEMA),
                append: fill(sql::APPEND),
                append_batch: fill(sql::APPEND_BATCH),
                read: fill(sql::READ),
                last: fill(sql::LAST),
                handed_out: fill(sql::HANDED_OUT),
                news: fill(sql::NEWS),
                table,
                partition_count,
            }),
        }
    }

    /// The table's name; also the `NOTIFY` channel of its appends.
    pub fn table(&self) -> &TableName {
        &self.statements.table
    }

    /// The feed's partition count.
    pub fn partition_count(&self) -> u32 {
        self.statements.partition_count
    }

    /// The SQL that [`migrate`](Self::migrate) runs, for users of their own
    /// migration tool.
    pub fn schema(&self) -> &str {
        &self.statements.schema
    }

    /// The statement that opens a page's transaction, and the query that
    /// reads one partition in it (see the [module docs](super)): for
    /// checking the page's plan with `EXPLAIN`.
    pub fn page_statements(&self) -> [&str; 2] {
        [sql::PAGE_BEGIN, &self.statements.read]
    }

    /// Creates the table if it does not exist. Idempotent, and safe to run
    /// from several processes at once (they take turns on an advisory lock).
    pub async fn migrate<'a, A>(&self, connection: A) -> Result<(), OutboxError>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        let mut tx = connection.begin().await?;
        sqlx::query(sql::MIGRATE_LOCK)
            .bind(self.table().as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(self.schema()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends `event` in the caller's transaction (or, on a connection
    /// outside a transaction, on its own). Readers see it once that
    /// transaction commits; a rollback leaves no trace. One statement.
    pub async fn append(
        &self,
        connection: &mut PgConnection,
        event: &OutboxEvent,
    ) -> Result<(), OutboxError> {
        let partition = event.checked_partition(self.partition_count())?;
        sqlx::query(&self.statements.append)
            .bind(partition as i32)
            .bind(event.headers_json())
            .bind(event.data().as_str())
            .execute(connection)
            .await?;
        Ok(())
    }

    /// Appends `events`, in this order, in the caller's transaction, with
    /// one statement. Nothing is written if one of them has a partition the
    /// feed lacks.
    pub async fn append_batch(
        &self,
        connection: &mut PgConnection,
        events: &[OutboxEvent],
    ) -> Result<(), OutboxError> {
        let mut partitions = Vec::with_capacity(events.len());
        let mut headers = Vec::with_capacity(events.len());
        let mut data = Vec::with_capacity(events.len());
        for event in events {
            partitions.push(event.checked_partition(self.partition_count())? as i32);
            headers.push(event.headers_json());
            data.push(event.data().as_str());
        }
        if events.is_empty() {
            return Ok(());
        }
        sqlx::query(&self.statements.append_batch)
            .bind(partitions)
            .bind(headers)
            .bind(data)
            .execute(connection)
            .await?;
        Ok(())
    }

    /// The feed of this table, reading with connections of `pool`.
    pub fn feed(&self, pool: PgPool) -> PostgresFeed {
        PostgresFeed {
            signal: AppendSignal::new(self.partition_count()),
            listener: pg_listener::shared(),
            outbox: self.clone(),
            pool,
        }
    }
}

impl fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("table", self.table())
            .field("partition_count", &self.partition_count())
            .finish()
    }
}

/// A [`FeedReader`] over a [`PostgresOutbox`] table: stateless, so any
/// number of replicas over one database serve the same cursors.
///
/// A page is one read-only transaction on one pooled connection (held for
/// the page, given back when the page ends or the consumer goes away), with
/// one query per requested partition, in turn, each streamed row by row; the page size is shared among
/// the partitions as [`MemoryFeed`](crate::server::MemoryFeed) shares it.
/// A cursor is the row's `txid` and `position`, in decimal, joined by `.`;
/// a cursor that names no servable row of its partition is
/// [`ReadError::UnknownCursor`]. `_last` starts at the last servable row.
///
/// # Long polling
///
/// A request that asks to wait is held, without a connection, until a
/// servable row comes past its cursors, or its deadline. The feed keeps
/// one connection of its pool for `LISTEN` on the table's channel (from
/// the first waiting request until the last clone of the feed is dropped);
/// the writer's `pg_notify` reaches it at commit, never after a rollback,
/// and wakes the requests waiting on that partition. A committed row that
/// waits for the horizon (an older transaction still running) is looked
/// at again after a backoff of 1 to 50 ms, never in a busy loop. If the
/// `LISTEN` connection drops, waiting requests look every 250 ms until a
/// new one is listening.
#[derive(Clone)]
pub struct PostgresFeed {
    outbox: PostgresOutbox,
    pool: PgPool,
    signal: AppendSignal,
    listener: Arc<AppendListenerTask>,
}

impl PostgresFeed {
    /// A [`FeedService`] serving this feed with the default page sizes.
    pub fn service(&self) -> FeedService<PostgresFeed> {
        FeedService::new(self.clone(), self.outbox.partition_count())
    }

    /// The pool the feed reads with.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The outbox the feed reads.
    pub fn outbox(&self) -> &PostgresOutbox {
        &self.outbox
    }

    /// The signal the feed's `LISTEN` connection notifies: its
    /// [`waiters`](AppendSignal::waiters) are the requests waiting now.
    pub fn append_signal(&self) -> &AppendSignal {
        &self.signal
    }

    /// Whether the partitions of a waiting request have something past
    /// their starts (one statement, on a pooled connection).
    async fn look(&self, starts: &[(u32, [u64; 2])]) -> Result<Look, ReadError> {
        let mut partitions = Vec::with_capacity(starts.len());
        let mut txids = Vec::with_capacity(starts.len());
        let mut positions = Vec::with_capacity(starts.len());
        for (partition, [txid, position]) in starts {
            partitions.push(*partition as i32);
            txids.push(*txid as i64);
            positions.push(*position as i64);
        }
        let next: Vec<bool> = sqlx::query_scalar(&self.outbox.statements.news)
            .bind(partitions)
            .bind(txids)
            .bind(positions)
            .fetch_all(&self.pool)
            .await
            .map_err(ReadError::internal)?;
        Ok(if next.contains(&true) {
            Look::News
        } else if next.is_empty() {
            Look::Nothing
        } else {
            Look::Pending
        })
    }

    /// Where reading `partition` from `cursor` starts (the key of the last
    /// row not to send), and the checkpoint to send first for `_last`.
    async fn start(
        &self,
        connection: &mut PgConnection,
        partition: u32,
        cursor: &Cursor,
    ) -> Result<([u64; 2], Option<Checkpoint>), ReadError> {
        let statements = &self.outbox.statements;
        check_partition(partition, statements.partition_count)?;
        if cursor.is_first() {
            return Ok(([0, 0], None));
        }
        if cursor.is_last() {
            let last = sqlx::query(&statements.last)
                .bind(partition as i32)
                .fetch_optional(connection)
                .await
                .map_err(ReadError::internal)?;
            return Ok(match last {
                None => ([0, 0], Some(Checkpoint::new(partition, Cursor::first()))),
                Some(row) => {
                    let key = row_key(&row)?;
                    (key, Some(Checkpoint::new(partition, cursor::encode(key))))
                }
            });
        }
        let unknown = ReadError::UnknownCursor { partition };
        let key = cursor::decode::<2>(cursor).ok_or(ReadError::UnknownCursor { partition })?;
        let (Ok(txid), Ok(position)) = (i64::try_from(key[0]), i64::try_from(key[1])) else {
            return Err(unknown);
        };
        let handed_out: bool = sqlx::query_scalar(&statements.handed_out)
            .bind(partition as i32)
            .bind(txid)
            .bind(position)
            .fetch_one(connection)
            .await
            .map_err(ReadError::internal)?;
        if handed_out {
            Ok((key, None))
        } else {
            Err(unknown)
        }
    }
}

impl fmt::Debug for PostgresFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresFeed")
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl FeedReader for PostgresFeed {
    type Stream = OutboxPage;

    async fn read(&self, context: ReadContext<'_>) -> Result<OutboxPage, ReadError> {
        let request = context.request();
        let mut starts = Vec::with_capacity(request.cursors().len());
        let mut opening = Vec::new();
        let mut tx = if context.wait_deadline().is_some() {
            // Single statements, outside a transaction: the starts are
            // fixed (`_last` waits for what comes after now), and the wait
            // holds no connection.
            let mut connection = self.pool.acquire().await.map_err(ReadError::internal)?;
            for (partition, cursor) in request.cursors() {
                let (key, checkpoint) = self.start(&mut connection, *partition, cursor).await?;
                opening.extend(checkpoint);
                starts.push((*partition, key));
            }
            drop(connection);
            self.listener
                .ensure_started(&self.pool, self.outbox.table(), &self.signal);
            wait_for_rows(&self.signal, &context, || self.look(&starts)).await?;
            self.pool
                .begin_with(sql::PAGE_BEGIN)
                .await
                .map_err(ReadError::internal)?
        } else {
            let mut tx = self
                .pool
                .begin_with(sql::PAGE_BEGIN)
                .await
                .map_err(ReadError::internal)?;
            for (partition, cursor) in request.cursors() {
                let (key, checkpoint) = self.start(&mut tx, *partition, cursor).await?;
                opening.extend(checkpoint);
                starts.push((*partition, key));
            }
            tx
        };
        let statements = Arc::clone(&self.outbox.statements);
        let selection = request.headers().clone();
        let mut budget = Budget::new(context.page_size(), starts.len());
        Ok(OutboxPage::new(move |emitter| async move {
            for checkpoint in opening {
                emitter.emit(FeedItem::Checkpoint(checkpoint)).await;
            }
            for (partition, [txid, position]) in starts {
                let share = budget.next_share();
                let mut taken = 0;
                if share > 0 {
                    let mut rows = sqlx::query(&statements.read)
                        .bind(partition as i32)
                        .bind(txid as i64)
                        .bind(position as i64)
                        .bind(i64::try_from(share).unwrap_or(i64::MAX))
                        .fetch(&mut *tx);
                    while let Some(row) = poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
                        let row = row.map_err(ReadError::internal)?;
                        let key = row_key(&row)?;
                        let data: String = row.try_get(2).map_err(ReadError::internal)?;
                        let headers: Option<&str> = row.try_get(3).map_err(ReadError::internal)?;
                        let event = row_event(partition, data, headers, &selection)?;
                        emit_event(&emitter, event, cursor::encode(key)).await;
                        taken += 1;
                    }
                }
                budget.spent(taken);
            }
            tx.commit().await.map_err(ReadError::internal)
        }))
    }
}

/// The `(tx, pos)` order key of a row.
fn row_key(row: &PgRow) -> Result<[u64; 2], ReadError> {
    let txid: i64 = row.try_get(0).map_err(ReadError::internal)?;
    let position: i64 = row.try_get(1).map_err(ReadError::internal)?;
    match (u64::try_from(txid), u64::try_from(position)) {
        (Ok(txid), Ok(position)) => Ok([txid, position]),
        _ => Err(ReadError::internal("a negative transaction id or position")),
    }
}
