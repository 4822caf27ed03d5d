//! The outbox over PostgreSQL: rows ordered by the writing transaction's id,
//! served only below the oldest transaction still running.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::postgres::PgRow;
use sqlx::{Acquire, PgConnection, PgPool, Postgres, Row, Transaction};

use super::event::check_partition;
use super::page::{Budget, OutboxPage, emit_event, row_event};
use super::pg_heads::{Heads, SharedLook, look_from, query_heads};
use super::pg_listener::{self, AppendListenerTask};
use super::pg_notifier::NotifyAfterCommit;
use super::pg_pages::{PageKey, SHARED_PAGE_ROWS, SharedPages};
use super::wait::{Look, wait_for_rows};
use super::{OutboxError, OutboxEvent, TableName, cursor};
use crate::protocol::{Checkpoint, Cursor, FeedItem, HeaderSelection};
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

    /// One event, without a wake-up (for `NotifyAfterCommit`).
    pub(crate) const INSERT: &str =
        "INSERT INTO {table} (partition, headers, data) VALUES ($1, $2::json, $3::json)";

    /// A batch of events in one statement, in order, without a wake-up.
    pub(crate) const INSERT_BATCH: &str = "\
INSERT INTO {table} (partition, headers, data)
SELECT p, h::json, d::json
FROM unnest($1::integer[], $2::text[], $3::text[]) WITH ORDINALITY AS e(p, h, d, n)
ORDER BY n";

    /// The wake-up of the partitions `$1`, sent after their commits.
    pub(crate) const NOTIFY: &str =
        "SELECT pg_notify('{table}', p::text) FROM unnest($1::integer[]) AS p";

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

    /// For each partition of `$1`, its last servable row (the start of
    /// `_last`) and its last committed row, servable or not: `NULL`s where
    /// there is none. A waiting request has news when the first is past
    /// its start, and rows to wait for when only the second is.
    pub(crate) const HEADS: &str = "\
SELECT asked.partition, servable.tx, servable.pos, newest.tx, newest.pos
FROM unnest($1::integer[]) AS asked (partition)
LEFT JOIN LATERAL (
    SELECT txid::text::bigint AS tx, position AS pos
    FROM {table}
    WHERE partition = asked.partition AND txid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY txid DESC, position DESC
    LIMIT 1
) AS servable ON true
LEFT JOIN LATERAL (
    SELECT txid::text::bigint AS tx, position AS pos
    FROM {table}
    WHERE partition = asked.partition
    ORDER BY txid DESC, position DESC
    LIMIT 1
) AS newest ON true";

    /// For each cursor (`$1` the partitions, `$2` and `$3` the txids and
    /// positions), whether it names a servable row of its partition: only
    /// those were handed out.
    pub(crate) const HANDED_OUT: &str = "\
SELECT asked.partition, EXISTS (
    SELECT 1 FROM {table}
    WHERE partition = asked.partition AND txid = asked.tx::text::xid8 AND position = asked.pos
      AND txid < pg_snapshot_xmin(pg_current_snapshot())
) AS handed_out
FROM unnest($1::integer[], $2::bigint[], $3::bigint[]) AS asked (partition, tx, pos)";
}

/// The statements for one table.
struct Statements {
    table: TableName,
    partition_count: u32,
    schema: String,
    append: String,
    append_batch: String,
    insert: String,
    insert_batch: String,
    notify: String,
    read: String,
    heads: String,
    handed_out: String,
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
                insert: fill(sql::INSERT),
                insert_batch: fill(sql::INSERT_BATCH),
                notify: fill(sql::NOTIFY),
                read: fill(sql::READ),
                heads: fill(sql::HEADS),
                handed_out: fill(sql::HANDED_OUT),
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
    /// transaction commits; a rollback leaves no trace. One statement,
    /// whose `pg_notify` wakes the feeds at the commit (see
    /// [`notify_after_commit`](Self::notify_after_commit) for its cost).
    pub async fn append(
        &self,
        connection: &mut PgConnection,
        event: &OutboxEvent,
    ) -> Result<(), OutboxError> {
        self.append_with(&self.statements.append, connection, event)
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
        self.append_batch_with(&self.statements.append_batch, connection, events)
            .await?;
        Ok(())
    }

    /// A writer over this outbox that appends without notifying and wakes
    /// the feeds after the caller's commit, on a connection opened with
    /// `pool`'s options: for many concurrent writers, whose notifying
    /// commits would take turns.
    pub fn notify_after_commit(&self, pool: PgPool) -> NotifyAfterCommit {
        NotifyAfterCommit::new(self.clone(), pool)
    }

    /// Appends `event` without a wake-up; returns its partition.
    pub(crate) async fn insert(
        &self,
        connection: &mut PgConnection,
        event: &OutboxEvent,
    ) -> Result<u32, OutboxError> {
        self.append_with(&self.statements.insert, connection, event)
            .await
    }

    /// Appends `events` without a wake-up; returns their partitions.
    pub(crate) async fn insert_batch(
        &self,
        connection: &mut PgConnection,
        events: &[OutboxEvent],
    ) -> Result<Vec<u32>, OutboxError> {
        self.append_batch_with(&self.statements.insert_batch, connection, events)
            .await
    }

    /// The statement that wakes the feeds of the partitions it is given.
    pub(crate) fn notify_statement(&self) -> &str {
        &self.statements.notify
    }

    /// Runs an append statement for one event; returns its partition.
    async fn append_with(
        &self,
        statement: &str,
        connection: &mut PgConnection,
        event: &OutboxEvent,
    ) -> Result<u32, OutboxError> {
        let partition = event.checked_partition(self.partition_count())?;
        sqlx::query(statement)
            .bind(partition as i32)
            .bind(event.headers_json())
            .bind(event.data().as_str())
            .execute(connection)
            .await?;
        Ok(partition)
    }

    /// Runs a batch append statement; returns the events' partitions.
    async fn append_batch_with(
        &self,
        statement: &str,
        connection: &mut PgConnection,
        events: &[OutboxEvent],
    ) -> Result<Vec<u32>, OutboxError> {
        let mut partitions = Vec::with_capacity(events.len());
        let mut headers = Vec::with_capacity(events.len());
        let mut data = Vec::with_capacity(events.len());
        for event in events {
            partitions.push(event.checked_partition(self.partition_count())?);
            headers.push(event.headers_json());
            data.push(event.data().as_str());
        }
        if events.is_empty() {
            return Ok(partitions);
        }
        sqlx::query(statement)
            .bind(partitions.iter().map(|&p| p as i32).collect::<Vec<_>>())
            .bind(headers)
            .bind(data)
            .execute(connection)
            .await?;
        Ok(partitions)
    }

    /// The feed of this table, reading with connections of `pool`.
    pub fn feed(&self, pool: PgPool) -> PostgresFeed {
        PostgresFeed {
            signal: AppendSignal::new(self.partition_count()),
            listener: pg_listener::shared(),
            looks: Arc::default(),
            pages: Arc::default(),
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
/// one connection for `LISTEN` on the table's channel, opened with its
/// pool's options but outside the pool (from
/// the first waiting request until the last clone of the feed is dropped);
/// the writer's `pg_notify` reaches it at commit, never after a rollback,
/// and wakes the requests waiting on that partition. The waiting requests
/// of a feed (and its clones) share their looks at the table: the requests
/// that one commit wakes cost one query between them, and each then reads
/// only the partitions that have news; woken requests for the same page
/// (caught-up consumers at the same cursors) share one read of it, of at
/// most 1,000 events. A committed row that
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
    looks: Arc<SharedLook>,
    pages: Arc<SharedPages>,
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

    /// Where reading each requested partition starts (the key of the last
    /// row not to send), in the request's order, and the checkpoints to
    /// send first for `_last`. At most two statements: one for the
    /// `_last` cursors, one for the others. On `connection` (a page's
    /// transaction), or, for a waiting request that holds none, with the
    /// feed's shared look and a pooled connection.
    async fn starts(
        &self,
        connection: Option<&mut PgConnection>,
        cursors: &[(u32, Cursor)],
    ) -> Result<(Starts, Vec<Checkpoint>), ReadError> {
        let statements = &self.outbox.statements;
        let mut starts = Vec::with_capacity(cursors.len());
        // The `_last` partitions, and the cursors to prove handed out.
        let mut lasts = Vec::new();
        let mut unproven = Vec::new();
        let mut malformed = None;
        for (partition, cursor) in cursors {
            let partition = *partition;
            check_partition(partition, statements.partition_count)?;
            let start = if cursor.is_first() {
                [0, 0]
            } else if cursor.is_last() {
                lasts.push(partition);
                [0, 0]
            } else {
                let key = cursor::decode::<2>(cursor)
                    .filter(|key| key.iter().all(|part| i64::try_from(*part).is_ok()));
                let Some(key) = key else {
                    // Not ours; but a cursor before it that names no row
                    // is the first error of the request.
                    malformed = Some(partition);
                    break;
                };
                if !self.pages.recently_handed_out(partition, cursor) {
                    unproven.push((partition, key));
                }
                key
            };
            starts.push((partition, start));
        }
        if let Some(partition) = malformed {
            // An earlier cursor that names no row comes first.
            self.prove(connection, &[], &unproven).await?;
            return Err(ReadError::UnknownCursor { partition });
        }
        let last_heads = self.prove(connection, &lasts, &unproven).await?;
        // `_last` starts at the last servable row, and says so first.
        let mut opening = Vec::with_capacity(lasts.len());
        for (partition, heads) in lasts.iter().zip(&last_heads) {
            let start = heads.servable.unwrap_or([0, 0]);
            let at = heads.servable.map_or_else(Cursor::first, cursor::encode);
            opening.push(Checkpoint::new(*partition, at));
            if let Some(slot) = starts.iter_mut().find(|(p, _)| p == partition) {
                slot.1 = start;
            }
        }
        Ok((starts, opening))
    }

    /// The heads of the `lasts` partitions; fails with `UnknownCursor`
    /// for the first of `unproven` that names no servable row. On
    /// `connection`, or with the feed's shared look and a pooled connection.
    async fn prove(
        &self,
        connection: Option<&mut PgConnection>,
        lasts: &[u32],
        unproven: &[(u32, [u64; 2])],
    ) -> Result<Vec<Heads>, ReadError> {
        let statements = &self.outbox.statements;
        let (heads, handed_out) = match connection {
            Some(connection) => {
                let heads = ordered_heads(&mut *connection, &statements.heads, lasts).await?;
                (heads, self.handed_out(connection, unproven).await?)
            }
            None => {
                let heads = if lasts.is_empty() {
                    Vec::new()
                } else {
                    let (_, heads) = self
                        .looks
                        .heads(&self.pool, &statements.heads, lasts)
                        .await?;
                    heads
                };
                let handed_out = if unproven.is_empty() {
                    Vec::new()
                } else {
                    let mut connection = self.pool.acquire().await.map_err(ReadError::internal)?;
                    self.handed_out(&mut connection, unproven).await?
                };
                (heads, handed_out)
            }
        };
        match unproven
            .iter()
            .find(|(partition, _)| !handed_out.contains(partition))
        {
            Some((partition, _)) => Err(ReadError::UnknownCursor {
                partition: *partition,
            }),
            None => Ok(heads),
        }
    }

    /// The partitions of `named` whose cursor names a servable row.
    async fn handed_out(
        &self,
        connection: &mut PgConnection,
        named: &[(u32, [u64; 2])],
    ) -> Result<Vec<u32>, ReadError> {
        if named.is_empty() {
            return Ok(Vec::new());
        }
        let partitions: Vec<i32> = named.iter().map(|(p, _)| *p as i32).collect();
        let txids: Vec<i64> = named.iter().map(|(_, key)| key[0] as i64).collect();
        let positions: Vec<i64> = named.iter().map(|(_, key)| key[1] as i64).collect();
        let rows: Vec<(i32, bool)> = sqlx::query_as(&self.outbox.statements.handed_out)
            .bind(partitions)
            .bind(txids)
            .bind(positions)
            .fetch_all(connection)
            .await
            .map_err(ReadError::internal)?;
        Ok(rows
            .into_iter()
            .filter(|(_, handed_out)| *handed_out)
            .map(|(partition, _)| partition as u32)
            .collect())
    }

    /// Holds a waiting request until one of its partitions has a servable
    /// row past its start, or its deadline.
    async fn wait(
        &self,
        context: &ReadContext<'_>,
        mut starts: Starts,
    ) -> Result<Woken, ReadError> {
        self.listener
            .ensure_started(&self.pool, self.outbox.table(), &self.signal, &self.pages);
        let partitions: Vec<u32> = starts.iter().map(|(partition, _)| *partition).collect();
        let news = Mutex::new(None);
        let deadline = context.wait_deadline();
        wait_for_rows(&self.signal, context, || async {
            let look = self
                .looks
                .heads(&self.pool, &self.outbox.statements.heads, &partitions);
            // A look held up (a pool with no connection to spare, a lock on
            // the table) ends with the wait: the page is read at once.
            let looked = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, look).await,
                None => Ok(look.await),
            };
            let Ok(looked) = looked else {
                return Ok(Look::Nothing);
            };
            let (look, heads) = looked?;
            let found = look_from(&starts, &heads);
            if found == Look::News {
                *news.lock().unwrap_or_else(PoisonError::into_inner) = Some((look, heads));
            }
            Ok(found)
        })
        .await?;
        Ok(
            match news.into_inner().unwrap_or_else(PoisonError::into_inner) {
                Some((look, heads)) => {
                    let mut heads = heads.iter();
                    starts.retain(|(_, start)| {
                        heads.next().is_some_and(|heads| heads.has_news(*start))
                    });
                    Woken::News { look, starts }
                }
                None => Woken::Deadline(starts),
            },
        )
    }

    /// Opens a page's transaction.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, ReadError> {
        self.pool
            .begin_with(sql::PAGE_BEGIN)
            .await
            .map_err(ReadError::internal)
    }

    /// The page that `tx` reads: the `opening` checkpoints, then each
    /// partition in turn from its start, row by row, sharing `page_size`
    /// among them.
    fn stream_page(
        &self,
        mut tx: Transaction<'static, Postgres>,
        opening: Vec<Checkpoint>,
        starts: Starts,
        selection: HeaderSelection,
        page_size: usize,
    ) -> OutboxPage {
        let statements = Arc::clone(&self.outbox.statements);
        let mut budget = Budget::new(page_size, starts.len());
        OutboxPage::new(move |emitter| async move {
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
        })
    }
}

/// How a waiting request's wait ended.
enum Woken {
    /// Look number `look` found servable rows in `starts`, the partitions
    /// that have some.
    News { look: u64, starts: Starts },
    /// The deadline passed: every partition is read once more.
    Deadline(Starts),
}

/// Each requested partition with the key of the last row not to send.
type Starts = Vec<(u32, [u64; 2])>;

/// Runs the heads statement for `partitions` on `connection`, in their
/// order.
async fn ordered_heads(
    connection: &mut PgConnection,
    statement: &str,
    partitions: &[u32],
) -> Result<Vec<Heads>, ReadError> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let found = query_heads(connection, statement, partitions).await?;
    partitions
        .iter()
        .map(|partition| {
            found
                .get(partition)
                .copied()
                .ok_or_else(|| ReadError::internal("the heads query left out a partition"))
        })
        .collect()
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
        let selection = request.headers().clone();
        if context.wait_deadline().is_none() {
            let mut tx = self.begin().await?;
            let (starts, opening) = self.starts(Some(&mut tx), request.cursors()).await?;
            return Ok(self.stream_page(tx, opening, starts, selection, context.page_size()));
        }
        // Single statements, outside a transaction: the starts are fixed
        // (`_last` waits for what comes after now), and the wait holds no
        // connection.
        let (starts, opening) = self.starts(None, request.cursors()).await?;
        match self.wait(&context, starts).await? {
            Woken::Deadline(starts) => {
                let tx = self.begin().await?;
                Ok(self.stream_page(tx, opening, starts, selection, context.page_size()))
            }
            Woken::News { look, starts } => {
                let key = PageKey {
                    starts,
                    page_size: context.page_size().min(SHARED_PAGE_ROWS),
                    headers: selection,
                };
                let read = || async {
                    let tx = self.begin().await?;
                    let key = key.clone();
                    Ok(self.stream_page(tx, Vec::new(), key.starts, key.headers, key.page_size))
                };
                let items = self
                    .pages
                    .page(key.clone(), look, self.looks.looks_done(), read)
                    .await?;
                Ok(OutboxPage::new(move |emitter| async move {
                    for checkpoint in opening {
                        emitter.emit(FeedItem::Checkpoint(checkpoint)).await;
                    }
                    for item in items.iter() {
                        emitter.emit(item.clone()).await;
                    }
                    Ok(())
                }))
            }
        }
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
