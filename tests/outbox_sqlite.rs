//! The SQLite outbox: writes in the caller's transaction, a feed that
//! serves every committed event exactly once, replicas, restarts, and the
//! query plan.

mod support;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use support::database;
use support::outbox::{Race, data, id_of, keyed_event, read_to_end, run_race};
use support::transport::{LoopbackServer, router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Checkpoint, Cursor, Event, FeedRequest, HeaderSelection, RawJson};
use zeroeventhub::server::{MemoryFeed, OutboxError, OutboxEvent, SqliteOutbox, TableName};

async fn pool(url: &str, connections: u32) -> SqlitePool {
    let options = SqliteConnectOptions::from_str(url)
        .unwrap()
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(20));
    SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .expect("opening the test database")
}

async fn outbox(pool: &SqlitePool, table: &str, partitions: u32) -> SqliteOutbox {
    let outbox = SqliteOutbox::new(TableName::new(table).unwrap(), partitions);
    outbox.migrate(pool).await.expect("migrating");
    outbox
}

/// Appends `events` in one committed transaction.
async fn commit(pool: &SqlitePool, outbox: &SqliteOutbox, events: &[OutboxEvent]) {
    let mut tx = pool.begin().await.unwrap();
    outbox.append_batch(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

fn request(partitions: u32, cursors: impl IntoIterator<Item = (u32, Cursor)>) -> FeedRequest {
    FeedRequest::new(partitions, cursors).unwrap()
}

#[tokio::test]
async fn migrate_is_idempotent_and_its_sql_stands_alone() {
    let pool = pool(&database::sqlite_url("migrate"), 2).await;
    let outbox = outbox(&pool, "events", 2).await;
    outbox.migrate(&pool).await.expect("migrating twice");

    let other = SqliteOutbox::new(TableName::new("other_events").unwrap(), 2);
    sqlx::raw_sql(other.schema()).execute(&pool).await.unwrap();
    commit(&pool, &other, &[OutboxEvent::in_partition(1, data(1))]).await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('events', 'other_events')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 2);
}

#[tokio::test]
async fn events_appear_at_commit_and_rollbacks_leave_no_trace() {
    let pool = pool(&database::sqlite_url("commit"), 4).await;
    let outbox = outbox(&pool, "events", 2).await;
    let client = Client::builder("http://feed/".parse().unwrap(), 2)
        .build_with(outbox.feed(pool.clone()).service());
    let everything =
        request(2, [(0, Cursor::first()), (1, Cursor::first())]).with_headers(HeaderSelection::All);

    let mut tx = pool.begin().await.unwrap();
    let event = OutboxEvent::in_partition(1, data(1)).with_header("type", "Tested");
    outbox.append(&mut tx, &event).await.unwrap();
    assert!(
        client
            .fetch_page(&everything)
            .await
            .unwrap()
            .events()
            .is_empty()
    );
    tx.commit().await.unwrap();
    let page = client.fetch_page(&everything).await.unwrap();
    assert_eq!(
        page.events(),
        [Event::new(1, data(1)).with_header("type", "Tested")]
    );

    let mut tx = pool.begin().await.unwrap();
    outbox
        .append_batch(&mut tx, &[keyed_event(2), keyed_event(3)])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        client.fetch_page(&everything).await.unwrap().events().len(),
        1
    );

    let mut connection = pool.acquire().await.unwrap();
    assert!(matches!(
        outbox.append(&mut connection, &OutboxEvent::in_partition(2, data(4))).await,
        Err(OutboxError::UnknownPartition(error)) if error.partition == 2
    ));
    // The data column holds JSON only, whoever writes it.
    let invalid = sqlx::query("INSERT INTO events (partition, data) VALUES (0, 'not json')")
        .execute(&mut *connection)
        .await;
    assert!(invalid.is_err());
}

#[tokio::test]
async fn first_last_and_cursors_never_handed_out() {
    let pool = pool(&database::sqlite_url("cursors"), 4).await;
    let outbox = outbox(&pool, "events", 2).await;
    let client = Client::builder("http://feed/".parse().unwrap(), 2)
        .build_with(outbox.feed(pool.clone()).service());

    let last = client
        .fetch_page(&request(2, [(0, Cursor::last())]))
        .await
        .unwrap();
    assert_eq!(last.checkpoints(), [Checkpoint::new(0, Cursor::first())]);

    commit(&pool, &outbox, &[OutboxEvent::in_partition(0, data(1))]).await;
    let last = client
        .fetch_page(&request(2, [(0, Cursor::last())]))
        .await
        .unwrap();
    assert!(last.events().is_empty());
    let at_end = last.next_cursors()[0].1.clone();
    commit(&pool, &outbox, &[OutboxEvent::in_partition(0, data(2))]).await;
    let after = client
        .fetch_page(&request(2, [(0, at_end.clone())]))
        .await
        .unwrap();
    assert_eq!(after.events().iter().map(id_of).collect::<Vec<_>>(), ["e2"]);

    for foreign in [
        at_end.as_str(),
        "17",
        "1.2",
        "0",
        "01",
        "99999999999999999999",
    ] {
        let error = client
            .fetch_page(&request(2, [(1, Cursor::new(foreign).unwrap())]))
            .await
            .unwrap_err();
        assert_eq!(
            error.status(),
            Some(http::StatusCode::BAD_REQUEST),
            "{foreign}"
        );
    }
}

#[tokio::test]
async fn the_page_is_shared_among_partitions_like_the_memory_feed() {
    let pool = pool(&database::sqlite_url("share"), 4).await;
    let outbox = outbox(&pool, "events", 4).await;
    let memory = MemoryFeed::new(4);
    let mut events = Vec::new();
    for (partition, count) in [(0u32, 1u64), (1, 9), (2, 4), (3, 9)] {
        for id in 0..count {
            events.push(OutboxEvent::in_partition(partition, data(id)));
            memory.append(Event::new(partition, data(id))).unwrap();
        }
    }
    commit(&pool, &outbox, &events).await;
    let from_start = request(4, (0..4).map(|p| (p, Cursor::first()))).with_page_size_hint(11);
    let counts = |events: &[Event]| {
        (0..4)
            .map(|p| events.iter().filter(|e| e.partition == p).count())
            .collect::<Vec<_>>()
    };
    let ours = Client::builder("http://feed/".parse().unwrap(), 4)
        .build_with(outbox.feed(pool.clone()).service())
        .fetch_page(&from_start)
        .await
        .unwrap();
    let reference = Client::builder("http://feed/".parse().unwrap(), 4)
        .build_with(memory.service())
        .fetch_page(&from_start)
        .await
        .unwrap();
    assert_eq!(counts(ours.events()), counts(reference.events()));
    assert_eq!(counts(ours.events()), [1, 4, 3, 3]);
}

/// A partition's share is read in chunks of rows; a page that spans
/// several gives every event once, in order, with its headers, and its
/// cursors resume exactly where it stopped.
#[tokio::test]
async fn a_page_longer_than_a_chunk_reads_every_row_once_in_order() {
    let pool = pool(&database::sqlite_url("chunks"), 4).await;
    let outbox = outbox(&pool, "events", 2).await;
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
    commit(&pool, &outbox, &events).await;
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
    let pool = pool(&database::sqlite_url("race"), 16).await;
    let outbox = outbox(&pool, "events", 4).await;
    let server = LoopbackServer::start(router(outbox.feed(pool.clone()).service())).await;
    let race = Race {
        writers: 8,
        events: 20_000,
        batch: 12,
        max_hold: Duration::from_millis(1),
        consumers: 4,
        waiting_consumers: 2,
        page_size: 50,
    };
    let writer_outbox = outbox.clone();
    let outcome = run_race(&server.url(""), 4, race, move |events, hold, commit| {
        let pool = pool.clone();
        let outbox = writer_outbox.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            outbox.append_batch(&mut tx, &events).await.unwrap();
            tokio::time::sleep(hold).await;
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
        }
    })
    .await;
    outcome.assert_exactly_once();
}

#[tokio::test]
async fn a_cursor_from_one_replica_resumes_on_another_and_after_a_restart() {
    let url = database::sqlite_url("replicas");
    let setup = pool(&url, 2).await;
    let outbox = outbox(&setup, "events", 2).await;
    let events: Vec<_> = (0..300).map(keyed_event).collect();
    commit(&setup, &outbox, &events).await;
    let from_start = vec![(0, Cursor::first()), (1, Cursor::first())];

    let replica_a = LoopbackServer::start(router(outbox.feed(pool(&url, 2).await).service())).await;
    let replica_b = LoopbackServer::start(router(outbox.feed(pool(&url, 2).await).service())).await;
    let (mut seen, cursors) = read_to_end(&replica_a.url(""), 2, from_start, 40, 2).await;
    let (rest, cursors) = read_to_end(&replica_b.url(""), 2, cursors, 40, 3).await;
    seen.extend(rest);

    drop(replica_b);
    let restarted = LoopbackServer::start(router(outbox.feed(pool(&url, 2).await).service())).await;
    let (rest, _) = read_to_end(&restarted.url(""), 2, cursors, 40, 100).await;
    seen.extend(rest);

    let mut expected: Vec<String> = (0..300).map(|id| format!("e{id}")).collect();
    expected.sort();
    seen.sort();
    assert_eq!(
        seen, expected,
        "every event exactly once across replicas and a restart"
    );
}

#[tokio::test]
async fn a_consumer_leaving_mid_page_gives_the_connection_back() {
    let url = database::sqlite_url("leaving");
    let setup = pool(&url, 2).await;
    let outbox = outbox(&setup, "events", 1).await;
    let filler = "x".repeat(1000);
    let events: Vec<_> = (0..20_000)
        .map(|id| {
            let text = format!(r#"{{"id":"e{id}","filler":"{filler}"}}"#);
            OutboxEvent::in_partition(0, RawJson::from_bytes(text).unwrap())
        })
        .collect();
    commit(&setup, &outbox, &events).await;
    let pool = pool(&url, 4).await;
    let in_use = |pool: &SqlitePool| pool.size() as usize - pool.num_idle();
    assert_eq!(in_use(&pool), 0);

    let server = LoopbackServer::start(router(outbox.feed(pool.clone()).service())).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let get = "GET /feed/v1?n=1&cursor0=_first&pagesizehint=20000 HTTP/1.1\r\nhost: feed\r\n\r\n";
    socket.write_all(get.as_bytes()).await.unwrap();
    let mut start = [0u8; 4096];
    let read = socket.read(&mut start).await.unwrap();
    assert!(start[..read].starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        in_use(&pool),
        1,
        "the page holds one connection while it streams"
    );

    drop(socket);
    for _ in 0..200 {
        if in_use(&pool) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        in_use(&pool),
        0,
        "the page's connection went back to the pool"
    );
}

#[tokio::test]
async fn pages_are_read_through_the_index_without_a_sort() {
    let pool = pool(&database::sqlite_url("plan"), 2).await;
    let outbox = outbox(&pool, "events", 2).await;
    let events: Vec<_> = (0..2_000).map(keyed_event).collect();
    commit(&pool, &outbox, &events).await;
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
