//! The PostgreSQL outbox: writes in the caller's transaction, a feed that
//! never skips an event whatever the commit order, replicas, restarts, and
//! the query plan. The tests both outboxes pass are in
//! `support::outbox_suite`; this file gives them PostgreSQL and holds its
//! own.

mod support;

use std::time::Duration;

use futures_util::stream;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use support::database::{self, TestPostgres};
use support::outbox_suite::{self as suite, OutboxDb, commit, open};
use support::readers::ItemStream;
use zeroeventhub::protocol::{Checkpoint, Cursor, Event, FeedItem};
use zeroeventhub::server::{FeedReader, FeedService, PostgresOutbox, ReadContext, ReadError};

/// A database of its own for each test, on the test server.
struct Postgres(TestPostgres);

impl OutboxDb for Postgres {
    type Database = sqlx::Postgres;
    type Outbox = PostgresOutbox;

    const RACE_CONNECTIONS: u32 = 24;
    const RACE_HOLD: Duration = Duration::from_millis(4);
    const MIGRATES_CONCURRENTLY: bool = true;
    const COUNT_TABLES: &'static str =
        "SELECT count(*) FROM pg_tables WHERE tablename IN ('events', 'other_events')";
    const FOREIGN_CURSORS: [&'static str; 5] =
        ["17", "1.2", "0.0", "1.02", "99999999999999999999.1"];

    async fn create(_test: &str) -> Self {
        Postgres(database::postgres().await)
    }

    async fn pool(&self, connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(connections)
            .connect(&self.0.url)
            .await
            .expect("connecting to the test database")
    }

    /// Waits until every committed row is below the horizon: the tests of
    /// other databases of the cluster hold transactions open for a few
    /// milliseconds.
    async fn servable(outbox: &PostgresOutbox, pool: &PgPool) {
        let newest = format!("SELECT coalesce(max(position), 0) FROM {}", outbox.table());
        let feed = outbox.feed(pool.clone());
        for _ in 0..4000 {
            let newest: i64 = sqlx::query_scalar(&newest).fetch_one(pool).await.unwrap();
            if feed.horizon().await.unwrap() >= newest as u64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("an outbox writer stayed open for 20 s");
    }
}

#[tokio::test]
async fn migrate_is_idempotent_and_its_sql_stands_alone() {
    suite::migrate_is_idempotent_and_its_sql_stands_alone::<Postgres>().await;
}

#[tokio::test]
async fn events_appear_at_commit_and_rollbacks_leave_no_trace() {
    suite::events_appear_at_commit_and_rollbacks_leave_no_trace::<Postgres>().await;
}

#[tokio::test]
async fn first_last_and_cursors_never_handed_out() {
    suite::first_last_and_cursors_never_handed_out::<Postgres>().await;
}

#[tokio::test]
async fn the_page_is_shared_among_partitions_like_the_memory_feed() {
    suite::the_page_is_shared_among_partitions_like_the_memory_feed::<Postgres>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_commit_order_loses_or_repeats_an_event() {
    suite::no_commit_order_loses_or_repeats_an_event::<Postgres>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_race_catches_a_reader_ordered_by_position_alone() {
    let (_db, pool, outbox) = open::<Postgres>("race", Postgres::RACE_CONNECTIONS, 4).await;
    let naive = NaiveReader { pool: pool.clone() };
    let outcome = suite::race_on::<Postgres, _>(&pool, &outbox, FeedService::new(naive, 4)).await;
    assert!(
        outcome.lost() > 0,
        "the naive reader lost nothing: the race cannot catch the bug"
    );
}

/// The reader most outboxes start with: rows in `position` order, the
/// cursor the last position served. It skips a row whose transaction
/// commits after a later position was handed out.
struct NaiveReader {
    pool: PgPool,
}

impl FeedReader for NaiveReader {
    type Stream = ItemStream;

    async fn read(&self, context: ReadContext<'_>) -> Result<ItemStream, ReadError> {
        let mut items = Vec::new();
        for (partition, cursor) in context.request().cursors() {
            let after: i64 = if cursor.is_first() {
                0
            } else {
                cursor
                    .as_str()
                    .parse()
                    .map_err(|_| ReadError::UnknownCursor {
                        partition: *partition,
                    })?
            };
            let rows = sqlx::query(
                "SELECT position, data::text FROM events WHERE partition = $1 AND position > $2 \
                 ORDER BY position LIMIT $3",
            )
            .bind(*partition as i32)
            .bind(after)
            .bind(context.page_size() as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(ReadError::internal)?;
            for row in rows {
                let position: i64 = row.get(0);
                let text: String = row.get(1);
                let data = zeroeventhub::protocol::RawJson::from_bytes(text).unwrap();
                items.push(Ok(FeedItem::Event(Event::new(*partition, data))));
                let cursor = Cursor::new(position.to_string()).unwrap();
                items.push(Ok(FeedItem::Checkpoint(Checkpoint::new(
                    *partition, cursor,
                ))));
            }
        }
        Ok(Box::pin(stream::iter(items)))
    }
}

#[tokio::test]
async fn a_cursor_from_one_replica_resumes_on_another_and_after_a_restart() {
    suite::a_cursor_from_one_replica_resumes_on_another_and_after_a_restart::<Postgres>().await;
}

#[tokio::test]
async fn a_consumer_leaving_mid_page_gives_the_connection_back() {
    suite::a_consumer_leaving_mid_page_gives_the_connection_back::<Postgres>().await;
}

#[tokio::test]
async fn pages_are_read_through_the_index_without_a_sort() {
    let (Postgres(db), pool, outbox) = open::<Postgres>("plan", 2, 2).await;
    let events: Vec<_> = (0..20_000).map(support::outbox::keyed_event).collect();
    for chunk in events.chunks(5_000) {
        commit::<Postgres>(&pool, &outbox, chunk).await;
    }
    let mut connection = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("ANALYZE events")
        .execute(&mut connection)
        .await
        .unwrap();
    let [begin, read] = outbox.page_statements();
    let prepare = format!("PREPARE page(integer, bigint, bigint, bigint) AS {read}");
    let horizon = i64::MAX;
    sqlx::raw_sql(&prepare)
        .execute(&mut connection)
        .await
        .unwrap();
    let position: i64 = sqlx::query_scalar(
        "SELECT position FROM events WHERE partition = 1 ORDER BY position OFFSET 3000 LIMIT 1",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        for (after, limit) in [(0, 10_000), (position, 100), (position, 10_000)] {
            let explain = format!(
                "{begin}; SET LOCAL plan_cache_mode = {mode}; \
                 EXPLAIN EXECUTE page(1, {after}, {limit}, {horizon}); COMMIT"
            );
            let plan: Vec<String> = sqlx::raw_sql(&explain)
                .fetch_all(&mut connection)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(0))
                .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains("Index Scan using events_pkey"),
                "{mode}:\n{plan}"
            );
            assert!(!plan.contains("Sort"), "{mode}: a sort\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{mode}: a full scan\n{plan}");
        }
    }
}
