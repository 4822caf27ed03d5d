//! The outbox over PostgreSQL: rows ordered by a position drawn after the
//! writer announced itself, served only below what a running writer can
//! still add.

use std::fmt;
use std::sync::Arc;

use sqlx::{Acquire, PgConnection, PgPool, Postgres};

use super::feed::{PostgresFeed, horizon};
use super::locks::lock_space;
use super::notifier::NotifyAfterCommit;
use crate::outbox::table::OutboxTable;
use crate::outbox::{OutboxError, OutboxEvent, Pruned, Retention, TableName, prune_partitions};

/// The statements, with `{table}` standing for the table name. The crate
/// runs these and nothing else; the module docs show each of them.
pub(crate) mod sql {
    /// The statements for one table.
    pub(crate) struct Statements {
        pub(crate) kept: String,
        pub(crate) prune: String,
        pub(crate) schema: String,
        pub(crate) append: String,
        pub(crate) append_batch: String,
        pub(crate) insert: String,
        pub(crate) insert_batch: String,
        pub(crate) notify: String,
        pub(crate) feed_id: String,
        pub(crate) counter: String,
        pub(crate) repair_counter: String,
        pub(crate) horizon: String,
        pub(crate) holders: String,
        pub(crate) read: String,
        pub(crate) heads: String,
        pub(crate) handed_out: String,
    }

    /// The table and its index, run by `migrate`.
    pub(crate) const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS {table} (
    partition integer NOT NULL CHECK (partition >= 0),
    position bigint GENERATED ALWAYS AS IDENTITY (CACHE 1),
    headers json,
    data json NOT NULL,
    appended_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (partition, position)
);
CREATE TABLE IF NOT EXISTS {table}_pruned (
    partition integer PRIMARY KEY,
    position bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {table}_feed (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    id bigint NOT NULL
);
INSERT INTO {table}_feed (id) VALUES (floor(random() * 4294967296)::bigint)
ON CONFLICT (one) DO NOTHING;";

    /// The feed's id, which its cursors carry.
    pub(crate) const FEED_ID: &str = "SELECT id FROM {table}_feed";

    /// Serializes concurrent `migrate` calls.
    pub(crate) const MIGRATE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";

    /// How every append announces its writer, before its rows draw their
    /// positions (`{announce}` in the appends): a shared transaction-level
    /// advisory lock in the outbox's key space, whose second key is the low
    /// 32 bits of the last position drawn so far; every position the writer
    /// draws is above that. And durable before visible: a transaction that
    /// appends commits at least with `synchronous_commit = local`, so that
    /// the WAL is flushed before its rows can be read, and no crash takes
    /// back an event a feed served.
    pub(crate) const ANNOUNCE: &str = "\
announced AS MATERIALIZED (
    SELECT pg_advisory_xact_lock_shared({space}, substring(
        (CASE WHEN is_called THEN last_value ELSE last_value - 1 END)::bit(64) from 33)::int4),
        set_config('synchronous_commit', CASE current_setting('synchronous_commit')
            WHEN 'off' THEN 'local' ELSE current_setting('synchronous_commit') END, true)
    FROM {table}_position_seq
)";

    /// One event, and the wake-up of the feed's listeners at commit.
    pub(crate) const APPEND: &str = "\
WITH {announce}, appended AS (
    INSERT INTO {table} (partition, headers, data)
    SELECT $1, $2::json, $3::json FROM announced
    RETURNING partition
)
SELECT pg_notify('{table}', partition::text) FROM appended";

    /// A batch of events in one statement, in order, and one wake-up per
    /// partition.
    pub(crate) const APPEND_BATCH: &str = "\
WITH {announce}, appended AS (
    INSERT INTO {table} (partition, headers, data)
    SELECT p, h::json, d::json
    FROM announced, unnest($1::integer[], $2::text[], $3::text[]) WITH ORDINALITY AS e(p, h, d, n)
    ORDER BY n
    RETURNING partition
)
SELECT pg_notify('{table}', p::text) FROM (SELECT DISTINCT partition AS p FROM appended) AS touched";

    /// One event, without a wake-up (for `NotifyAfterCommit`).
    pub(crate) const INSERT: &str = "\
WITH {announce}
INSERT INTO {table} (partition, headers, data)
SELECT $1, $2::json, $3::json FROM announced";

    /// A batch of events in one statement, in order, without a wake-up.
    pub(crate) const INSERT_BATCH: &str = "\
WITH {announce}
INSERT INTO {table} (partition, headers, data)
SELECT p, h::json, d::json
FROM announced, unnest($1::integer[], $2::text[], $3::text[]) WITH ORDINALITY AS e(p, h, d, n)
ORDER BY n";

    /// The wake-up of the partitions `$1`, sent after their commits.
    pub(crate) const NOTIFY: &str =
        "SELECT pg_notify('{table}', p::text) FROM unnest($1::integer[]) AS p";

    /// The last position the counter handed out, and the highest position
    /// stored (one probe of the primary key per partition, `$1` the
    /// partition count): the first below the second means the rows came
    /// without their sequence.
    pub(crate) const COUNTER: &str = "\
SELECT drawn.last, stored.position
FROM (
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS last
    FROM {table}_position_seq
) AS drawn, LATERAL (
    SELECT max(newest.position) AS position
    FROM generate_series(0, $1 - 1) AS p (partition), LATERAL (
        SELECT position FROM {table} WHERE partition = p.partition
        ORDER BY position DESC
        LIMIT 1
    ) AS newest
) AS stored";

    /// Moves the counter past the highest position stored (`$1`).
    pub(crate) const REPAIR_COUNTER: &str = "SELECT setval('{table}_position_seq', $1)";

    /// The horizon: the highest position that no running writer can still
    /// add a row at or below. Every position drawn so far (the sequence's
    /// value, read first), and at most the lowest that an announced writer
    /// still running saw drawn before it drew (read after it, from
    /// `pg_locks`; the lock's 32 bits widened back against the sequence's
    /// value). A
    /// statement whose snapshot is taken after this one sees every row at
    /// or below it that will ever commit.
    pub(crate) const HORIZON: &str = "\
SELECT least(drawn.last, min(announced.saw))
FROM (
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS last
    FROM {table}_position_seq
) AS drawn
LEFT JOIN LATERAL (
    SELECT drawn.last - ((drawn.last - l.objid::bigint) % 4294967296 + 4294967296) % 4294967296
        AS saw
    FROM pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.classid = {space} AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
) AS announced ON true
GROUP BY drawn.last";

    /// The announced writers still running, one row each, oldest first:
    /// what `pg_stat_activity` says of them, or, for a prepared
    /// transaction, its global id.
    pub(crate) const HOLDERS: &str = "\
SELECT pid, datname, state, age, query, gid FROM (
    SELECT DISTINCT ON (l.virtualtransaction)
        a.pid, coalesce(a.datname, current_database()) AS datname, a.state,
        extract(epoch FROM now() - coalesce(a.xact_start, p.prepared))::float8 AS age,
        a.query, p.gid
    FROM pg_locks AS l
    LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
    LEFT JOIN pg_locks AS x ON l.pid IS NULL AND x.locktype = 'transactionid'
        AND x.virtualtransaction = l.virtualtransaction
    LEFT JOIN pg_prepared_xacts AS p ON p.transaction = x.transactionid
    WHERE l.locktype = 'advisory' AND l.classid = {space} AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    ORDER BY l.virtualtransaction
) AS holders
ORDER BY age DESC NULLS LAST";

    /// Opens a page's read-only transaction: read committed, so that each
    /// statement sees what committed before it (after the horizon, its
    /// first statement), whatever the server's default; and with sorts
    /// priced out of reach, so that the planner reads through the primary
    /// key whatever its statistics say, and no page sorts the rows after its
    /// cursor.
    pub(crate) const PAGE_BEGIN: &str =
        "BEGIN READ ONLY ISOLATION LEVEL READ COMMITTED; SET LOCAL enable_sort = off";

    /// A partition's servable events after a position (`$2`), up to the
    /// horizon (`$4`), in order.
    pub(crate) const READ: &str = "\
SELECT position AS pos, data::text AS data, headers::text AS headers,
    (date_part('epoch', appended_at) * 1000)::bigint AS appended_ms
FROM {table}
WHERE partition = $1 AND position > $2 AND position <= $4
ORDER BY position
LIMIT $3";

    /// For each partition of `$1`, its last servable row (at or below the
    /// horizon `$2`: the start of `_last`) and its last committed row,
    /// servable or not: `NULL`s where there is none. A waiting request has
    /// news when the first is past its start, and rows to wait for when
    /// only the second is.
    pub(crate) const HEADS: &str = "\
SELECT asked.partition, servable.pos, newest.pos
FROM unnest($1::integer[]) AS asked (partition)
LEFT JOIN LATERAL (
    SELECT position AS pos FROM {table}
    WHERE partition = asked.partition AND position <= $2
    ORDER BY position DESC
    LIMIT 1
) AS servable ON true
LEFT JOIN LATERAL (
    SELECT position AS pos FROM {table}
    WHERE partition = asked.partition
    ORDER BY position DESC
    LIMIT 1
) AS newest ON true";

    /// For each cursor (`$1` the partitions, `$2` the positions), whether
    /// it names a servable row of its partition (at or below the horizon
    /// `$3`), or the last row that `prune` deleted there: only those were
    /// handed out.
    pub(crate) const HANDED_OUT: &str = "\
SELECT asked.partition, EXISTS (
    SELECT 1 FROM {table}
    WHERE partition = asked.partition AND position = asked.pos AND position <= $3
) OR EXISTS (
    SELECT 1 FROM {table}_pruned
    WHERE partition = asked.partition AND position = asked.pos
) AS handed_out
FROM unnest($1::integer[], $2::bigint[]) AS asked (partition, pos)";

    /// For each partition of `$1` (whose cursor named no row), its oldest
    /// kept row and the last row that `prune` deleted, `NULL`s where there
    /// is none: a cursor below either has lost events and expired.
    pub(crate) const KEPT: &str = "\
SELECT asked.partition,
    (SELECT min(position) FROM {table} WHERE partition = asked.partition),
    (SELECT position FROM {table}_pruned WHERE partition = asked.partition)
FROM unnest($1::integer[]) AS asked (partition)";

    /// One batch of `prune` in partition `$1`: at most `$4` of its oldest
    /// rows at or below the horizon `$5`, below its `$2 + 1`-th newest row,
    /// and appended more than `$3` milliseconds ago (when not `NULL`) like
    /// every row before them; the last one deleted is remembered, so that a
    /// cursor naming it stays valid.
    pub(crate) const PRUNE: &str = "\
WITH kept AS (
    SELECT position FROM {table}
    WHERE partition = $1
    ORDER BY position DESC
    OFFSET $2 LIMIT 1
), oldest AS (
    SELECT t.position,
        bool_and($3::bigint IS NULL
            OR t.appended_at < statement_timestamp() - $3 * interval '1 millisecond')
            OVER (ORDER BY t.position) AS old
    FROM {table} AS t, kept
    WHERE t.partition = $1 AND t.position < kept.position AND t.position <= $5
    ORDER BY t.position
    LIMIT $4
), deleted AS (
    DELETE FROM {table} AS t USING oldest
    WHERE oldest.old AND t.partition = $1 AND t.position = oldest.position
    RETURNING t.position
), remembered AS (
    INSERT INTO {table}_pruned AS p (partition, position)
    SELECT $1, max(position) FROM deleted HAVING count(*) > 0
    ON CONFLICT (partition) DO UPDATE SET position = greatest(p.position, excluded.position)
)
SELECT count(*) FROM deleted";

    #[cfg(test)]
    #[test]
    fn the_module_docs_show_every_statement() {
        let statements = [
            SCHEMA,
            MIGRATE_LOCK,
            PAGE_BEGIN,
            APPEND,
            APPEND_BATCH,
            INSERT,
            INSERT_BATCH,
            NOTIFY,
            READ,
            FEED_ID,
            COUNTER,
            REPAIR_COUNTER,
            HORIZON,
            HOLDERS,
            HEADS,
            HANDED_OUT,
            KEPT,
            PRUNE,
        ];
        crate::outbox::assert_documented(include_str!("outbox.md"), &statements);
    }
}

/// An outbox table in PostgreSQL: its schema, and the writer that appends
/// events inside the caller's transaction.
///
/// Each append announces its transaction before the row draws its
/// position (a shared advisory lock saying how far the position sequence
/// was), and the feed serves only positions that no announced writer still
/// running can add a row below: a cursor never passes an event that
/// becomes visible later. An outbox writer that stays open holds back its
/// own feed, and nothing else, until it ends; it never loses an event.
/// Transactions that never append never hold a feed back.
///
/// Cheap to clone. See the [module docs](super) for the table
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
    pub(super) table: Arc<OutboxTable<sql::Statements>>,
}

impl PostgresOutbox {
    /// The outbox in `table`, for a feed of `partition_count` partitions.
    ///
    /// # Panics
    ///
    /// If `partition_count` is 0: a feed has at least one partition.
    pub fn new(table: TableName, partition_count: u32) -> Self {
        let space = lock_space("outbox", table.as_str()).to_string();
        let table = OutboxTable::new(table, partition_count, |fill_table| {
            let fill = |template: &str| {
                fill_table(&template.replace("{announce}", sql::ANNOUNCE))
                    .replace("{space}", &space)
            };
            sql::Statements {
                schema: fill(sql::SCHEMA),
                append: fill(sql::APPEND),
                append_batch: fill(sql::APPEND_BATCH),
                insert: fill(sql::INSERT),
                insert_batch: fill(sql::INSERT_BATCH),
                notify: fill(sql::NOTIFY),
                feed_id: fill(sql::FEED_ID),
                counter: fill(sql::COUNTER),
                repair_counter: fill(sql::REPAIR_COUNTER),
                horizon: fill(sql::HORIZON),
                holders: fill(sql::HOLDERS),
                read: fill(sql::READ),
                heads: fill(sql::HEADS),
                handed_out: fill(sql::HANDED_OUT),
                kept: fill(sql::KEPT),
                prune: fill(sql::PRUNE),
            }
        });
        PostgresOutbox {
            table: Arc::new(table),
        }
    }

    /// The table's name; also the `NOTIFY` channel of its appends.
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

    /// The statement that opens a page's transaction, and the query that
    /// reads one partition in it (see the [module docs](super)): for
    /// checking the page's plan with `EXPLAIN`.
    pub fn page_statements(&self) -> [&str; 2] {
        [sql::PAGE_BEGIN, &self.table.sql.read]
    }

    /// Creates the table if it does not exist, and moves its position
    /// counter past the rows it holds if they came without it (a restore
    /// or a copy of the rows alone: see [`check_counter`](Self::check_counter)).
    /// Idempotent, and safe to run from several processes at once (they take
    /// turns on an advisory lock). Run it before any writer appends.
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
        if let Err(OutboxError::CounterBehind { stored, .. }) = self.check_counter(&mut *tx).await {
            sqlx::query(&self.table.sql.repair_counter)
                .bind(stored)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Fails with [`OutboxError::CounterBehind`] if the table holds a
    /// position above the last one its counter handed out: the rows were
    /// restored or copied without their sequence (`pg_dump --data-only`,
    /// logical replication, a managed service's blue/green switch), and
    /// new rows would sort before rows already served. The feed checks it
    /// at its first read and every 10 s, and refuses to serve until
    /// [`migrate`](Self::migrate) repairs it. One probe of the primary key
    /// per partition.
    pub async fn check_counter<'a, A>(&self, connection: A) -> Result<(), OutboxError>
    where
        A: Acquire<'a, Database = Postgres>,
    {
        let mut connection = connection.acquire().await?;
        let (counter, stored): (i64, Option<i64>) = sqlx::query_as(&self.table.sql.counter)
            .bind(self.partition_count() as i32)
            .fetch_one(&mut *connection)
            .await?;
        match stored {
            Some(stored) if stored > counter => Err(OutboxError::CounterBehind {
                table: self.table().to_string(),
                counter,
                stored,
            }),
            _ => Ok(()),
        }
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
        self.append_with(&self.table.sql.append, connection, event)
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
        self.append_batch_with(&self.table.sql.append_batch, connection, events)
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
        self.append_with(&self.table.sql.insert, connection, event)
            .await
    }

    /// Appends `events` without a wake-up; returns their partitions.
    pub(crate) async fn insert_batch(
        &self,
        connection: &mut PgConnection,
        events: &[OutboxEvent],
    ) -> Result<Vec<u32>, OutboxError> {
        self.append_batch_with(&self.table.sql.insert_batch, connection, events)
            .await
    }

    /// The statement that wakes the feeds of the partitions it is given.
    pub(crate) fn notify_statement(&self) -> &str {
        &self.table.sql.notify
    }

    /// Runs an append statement for one event; returns its partition.
    async fn append_with(
        &self,
        statement: &str,
        connection: &mut PgConnection,
        event: &OutboxEvent,
    ) -> Result<u32, OutboxError> {
        let (partition, headers) = event.checked(self.partition_count())?;
        sqlx::query(statement)
            .bind(partition as i32)
            .bind(headers)
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
            let (partition, event_headers) = event.checked(self.partition_count())?;
            partitions.push(partition);
            headers.push(event_headers);
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

    /// Deletes what `retention` does not keep, in batches of short
    /// statements on `pool`: safe while feeds serve and writers append (see
    /// [`Retention`] for what it deletes, and what consumers behind it get).
    pub async fn prune(&self, pool: &PgPool, retention: &Retention) -> Result<Pruned, OutboxError> {
        prune_partitions(retention, self.partition_count(), |partition| async move {
            let mut connection = pool.acquire().await?;
            let horizon = horizon(&mut connection, &self.table.sql.horizon).await?;
            let deleted: i64 = sqlx::query_scalar(&self.table.sql.prune)
                .bind(partition as i32)
                .bind(retention.keep_offset())
                .bind(retention.age_millis())
                .bind(i64::from(retention.batch()))
                .bind(horizon as i64)
                .fetch_one(&mut *connection)
                .await?;
            Ok(deleted as u64)
        })
        .await
    }

    /// The feed of this table, reading with connections of `pool`.
    pub fn feed(&self, pool: PgPool) -> PostgresFeed {
        PostgresFeed::new(self.clone(), pool)
    }
}

impl fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.table.debug("PostgresOutbox", f)
    }
}
