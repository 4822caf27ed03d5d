//! The SQLite outbox: writes in the caller's transaction, a feed that
//! serves every committed event exactly once, replicas, restarts, and the
//! query plan. The tests both outboxes pass are in
//! `support::outbox_suite`; this file gives them SQLite and holds its own.

mod support;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use support::database;
use support::outbox::{data, id_of, keyed_event};
use support::outbox_suite::{self as suite, OutboxDb, commit, open};
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, FeedRequest, HeaderSelection};
use zeroeventhub::server::{OutboxEvent, SqliteOutbox};

/// A file of its own for each test.
struct Sqlite {
    url: String,
}

impl OutboxDb for Sqlite {
    type Database = sqlx::Sqlite;
    type Outbox = SqliteOutbox;

    const RACE_CONNECTIONS: u32 = 16;
    const RACE_HOLD: Duration = Duration::from_millis(1);
    const MIGRATES_CONCURRENTLY: bool = false;
    const COUNT_TABLES: &'static str = "SELECT count(*) FROM sqlite_master \
         WHERE type = 'table' AND name IN ('events', 'other_events')";
    const FOREIGN_CURSORS: [&'static str; 5] = ["17", "1.2", "0", "01", "99999999999999999999"];

    async fn create(test: &str) -> Self {
        Sqlite {
            url: database::sqlite_url(test),
        }
    }

    async fn pool(&self, connections: u32) -> SqlitePool {
        let options = SqliteConnectOptions::from_str(&self.url)
            .unwrap()
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(20));
        SqlitePoolOptions::new()
            .max_connections(connections)
            .connect_with(options)
            .await
            .expect("opening the test database")
    }
}

fn request(partitions: u32, cursors: impl IntoIterator<Item = (u32, Cursor)>) -> FeedRequest {
    FeedRequest::new(partitions, cursors).unwrap()
}

#[tokio::test]
async fn migrate_is_idempotent_and_its_sql_stands_alone() {
    suite::migrate_is_idempotent_and_its_sql_stands_alone::<Sqlite>().await;
}

#[tokio::test]
async fn events_appear_at_commit_and_rollbacks_leave_no_trace() {
    suite::events_appear_at_commit_and_rollbacks_leave_no_trace::<Sqlite>().await;
}

#[tokio::test]
async fn first_last_and_cursors_never_handed_out() {
    suite::first_last_and_cursors_never_handed_out::<Sqlite>().await;
}

#[tokio::test]
async fn the_page_is_shared_among_partitions_like_the_memory_feed() {
    suite::the_page_is_shared_among_partitions_like_the_memory_feed::<Sqlite>().await;
}

/// A partition's share is read in chunks of rows; a page that spans
/// several gives every event once, in order, with its headers, and its
/// cursors resume exactly where it stopped.
#[tokio::test]
async fn a_page_longer_than_a_chunk_reads_every_row_once_in_order() {
    let (_db, pool, outbox) = open::<Sqlite>("chunks", 4, 2).await;
    let events: Vec<_> = (0..300)
        .map(|id| {
            let event = OutboxEvent::in_partition(id % 2, data(u64::from(id)));
            if id % 3 == 0 {
                event.with_header("n", format!("é{id}"))
            } else {
                event
            }
        })
        .collect();
    commit::<Sqlite>(&pool, &outbox, &events).await;
    let client = Client::builder("http://feed/".parse().unwrap(), 2)
        .build_with(outbox.feed(pool.clone()).service());
    let first = request(2, [(0, Cursor::first()), (1, Cursor::first())])
        .with_page_size_hint(290)
        .with_headers(HeaderSelection::All);
    let page = client.fetch_page(&first).await.unwrap();
    assert_eq!(page.events().len(), 290);
    let rest = client.fetch_page(&page.next_request(&first)).await.unwrap();
    let all: Vec<_> = page.events().iter().chain(rest.events()).collect();
    for partition in 0..2u32 {
        let got: Vec<_> = all.iter().filter(|e| e.partition == partition).collect();
        let ids: Vec<String> = got.iter().map(|e| id_of(e)).collect();
        let expected: Vec<String> = (0..300u32)
            .filter(|id| id % 2 == partition)
            .map(|id| format!("e{id}"))
            .collect();
        assert_eq!(ids, expected, "partition {partition}");
        for (event, id) in got.iter().zip((0..300u32).filter(|id| id % 2 == partition)) {
            let header = event.headers.get("n").map(String::as_str);
            let wanted = (id % 3 == 0).then(|| format!("é{id}"));
            assert_eq!(header, wanted.as_deref(), "e{id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_readers_see_every_event_exactly_once() {
    suite::no_commit_order_loses_or_repeats_an_event::<Sqlite>().await;
}

#[tokio::test]
async fn a_cursor_from_one_replica_resumes_on_another_and_after_a_restart() {
    suite::a_cursor_from_one_replica_resumes_on_another_and_after_a_restart::<Sqlite>().await;
}

#[tokio::test]
async fn a_consumer_leaving_mid_page_gives_the_connection_back() {
    suite::a_consumer_leaving_mid_page_gives_the_connection_back::<Sqlite>().await;
}

#[tokio::test]
async fn pages_are_read_through_the_index_without_a_sort() {
    let (_db, pool, outbox) = open::<Sqlite>("plan", 2, 2).await;
    let events: Vec<_> = (0..2_000).map(keyed_event).collect();
    commit::<Sqlite>(&pool, &outbox, &events).await;
    sqlx::raw_sql("ANALYZE").execute(&pool).await.unwrap();
    let explain = format!("EXPLAIN QUERY PLAN {}", outbox.read_statement());
    let plan: Vec<String> = sqlx::query(&explain)
        .bind(1i64)
        .bind(100i64)
        .bind(1000i64)
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("USING INDEX events_by_partition"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "a sort:\n{plan}");
    assert!(!plan.starts_with("SCAN"), "a full scan:\n{plan}");
}
