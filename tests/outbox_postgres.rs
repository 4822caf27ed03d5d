//! The PostgreSQL outbox: writes in the caller's transaction, a feed that
//! never skips an event whatever the commit order, replicas, restarts, and
//! the query plan.

mod support;

use std::time::Duration;

use futures_util::stream;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use support::database;
use support::outbox::{Race, data, id_of, read_to_end, run_race};
use support::readers::ItemStream;
use support::transport::{LoopbackServer, router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Checkpoint, Cursor, Event, FeedItem, FeedRequest, HeaderSelection};
use zeroeventhub::server::{
    FeedReader, FeedService, MemoryFeed, OutboxError, OutboxEvent, PostgresOutbox, ReadContext,
    ReadError, TableName,
};

async fn pool(url: &str, connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await
        .expect("connecting to the test database")
}

async fn outbox(pool: &PgPool, table: &str, partitions: u32) -> PostgresOutbox {
    let outbox = PostgresOutbox::new(TableName::new(table).unwrap(), partitions);
    outbox.migrate(pool).await.expect("migrating");
    outbox
}

/// Appends `events` in one committed transaction, and waits until the
/// feed serves them.
async fn commit(pool: &PgPool, outbox: &PostgresOutbox, events: &[OutboxEvent]) {
    let mut tx = pool.begin().await.unwrap();
    outbox.append_batch(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
    servable(pool, outbox).await;
}

/// Waits until every committed row is at or below the horizon: the writers
/// of a test may still be finishing their transactions.
async fn servable(pool: &PgPool, outbox: &PostgresOutbox) {
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

fn request(partitions: u32, cursors: impl IntoIterator<Item = (u32, Cursor)>) -> FeedRequest {
    FeedRequest::new(partitions, cursors).unwrap()
}

#[tokio::test]
async fn migrate_is_idempotent_and_its_sql_stands_alone() {
    let db = database::postgres().await;
    let pool = pool(&db.url, 4).await;
    let outbox = outbox(&pool, "events", 2).await;
    outbox.migrate(&pool).await.expect("migrating twice");
    let (first, second) = tokio::join!(outbox.migrate(&pool), outbox.migrate(&pool));
    first.and(second).expect("migrating concurrently");

    // A user's own migration tool runs the same SQL.
    let other = PostgresOutbox::new(TableName::new("other_events").unwrap(), 2);
    sqlx::raw_sql(other.schema()).execute(&pool).await.unwrap();
    commit(&pool, &other, &[OutboxEvent::in_partition(1, data(1))]).await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE tablename IN ('events', 'other_events')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 2);
}

#[tokio::test]
async fn events_appear_at_commit_and_rollbacks_leave_no_trace() {
    let db = database::postgres().await;
    let pool = pool(&db.url, 4).await;
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
    servable(&pool, &outbox).await;
    let page = client.fetch_page(&everything).await.unwrap();
    let expected = Event::new(1, data(1)).with_header("type", "Tested");
    assert_eq!(page.events(), [expected]);

    let mut tx = pool.begin().await.unwrap();
    outbox
        .append_batch(
            &mut tx,
            &[
                support::outbox::keyed_event(2),
                support::outbox::keyed_event(3),
            ],
        )
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let again = client.fetch_page(&everything).await.unwrap();
    assert_eq!(again.events().len(), 1);

    let mut connection = pool.acquire().await.unwrap();
    let beyond = OutboxEvent::in_partition(2, data(4));
    assert!(matches!(
        outbox.append(&mut connection, &beyond).await,
        Err(OutboxError::UnknownPartition(error)) if error.partition == 2
    ));
}

#[tokio::test]
async fn first_last_and_cursors_never_handed_out() {
    let db = database::postgres().await;
    let pool = pool(&db.url, 4).await;
    let outbox = outbox(&pool, "events", 2).await;
    let service = outbox.feed(pool.clone()).service();
    let client = Client::builder("http://feed/".parse().unwrap(), 2).build_with(service);

    // `_last` on an empty partition: a checkpoint a consumer can store.
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

    // A cursor of partition 0 is foreign to partition 1, and so are made-up
    // ones and a memory feed's.
    for foreign in [
        at_end.as_str(),
        "17",
        "1.2",
        "0.0",
        "1.02",
        "99999999999999999999.1",
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
        // The first bad cursor of a request is the one named, whether it
        // is malformed or names no row.
        let error = client
            .fetch_page(&request(
                2,
                [
                    (0, Cursor::new("1.2").unwrap()),
                    (1, Cursor::new("abc").unwrap()),
                ],
            ))
            .await
            .unwrap_err();
        let body = error.body_excerpt().unwrap_or_default();
        assert!(body.contains("\"cursor0\""), "{body}");
        // Beside a good cursor, plain or waiting, the error names the
        // partition whose cursor is foreign.
        let both = request(2, [(0, at_end.clone()), (1, Cursor::new(foreign).unwrap())]);
        for request in [both.clone(), both.with_wait(Duration::from_secs(5))] {
            let error = client.fetch_page(&request).await.unwrap_err();
            assert_eq!(error.status(), Some(http::StatusCode::BAD_REQUEST));
            let body = error.body_excerpt().unwrap_or_default();
            assert!(body.contains("\"cursor1\""), "{foreign}: {body}");
        }
    }
}

#[tokio::test]
async fn the_page_is_shared_among_partitions_like_the_memory_feed() {
    let db = database::postgres().await;
    let pool = pool(&db.url, 4).await;
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

/// The scenario of the commit-order race: 8 writers hold their
/// transactions open for random times and roll back one in ten, while 4
/// consumers (two of them long polling) read right behind them in small
/// pages.
const RACE: Race = Race {
    writers: 8,
    events: 20_000,
    batch: 12,
    max_hold: Duration::from_millis(4),
    consumers: 4,
    waiting_consumers: 2,
    page_size: 50,
};

async fn race_on<R: FeedReader>(
    pool: &PgPool,
    outbox: &PostgresOutbox,
    service: FeedService<R>,
) -> support::outbox::RaceOutcome {
    let server = LoopbackServer::start(router(service)).await;
    let writer_pool = pool.clone();
    let writer_outbox = outbox.clone();
    run_race(
        &server.url(""),
        outbox.partition_count(),
        RACE,
        move |events, hold, commit| {
            let pool = writer_pool.clone();
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
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_commit_order_loses_or_repeats_an_event() {
    let db = database::postgres().await;
    let pool = pool(&db.url, 24).await;
    let outbox = outbox(&pool, "events", 4).await;
    let outcome = race_on(&pool, &outbox, outbox.feed(pool.clone()).service()).await;
    outcome.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_race_catches_a_reader_ordered_by_position_alone() {
    let db = database::postgres().await;
    let pool = pool(&db.url, 24).await;
    let outbox = outbox(&pool, "events", 4).await;
    let naive = NaiveReader { pool: pool.clone() };
    let outcome = race_on(&pool, &outbox, FeedService::new(naive, 4)).await;
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
    let db = database::postgres().await;
    let setup = pool(&db.url, 2).await;
    let outbox = outbox(&setup, "events", 2).await;
    let events: Vec<_> = (0..300).map(support::outbox::keyed_event).collect();
    commit(&setup, &outbox, &events).await;
    let from_start = vec![(0, Cursor::first()), (1, Cursor::first())];

    // Two replicas, each with its own pool, over one database.
    let replica_a =
        LoopbackServer::start(router(outbox.feed(pool(&db.url, 2).await).service())).await;
    let replica_b =
        LoopbackServer::start(router(outbox.feed(pool(&db.url, 2).await).service())).await;
    let (mut seen, cursors) = read_to_end(&replica_a.url(""), 2, from_start, 40, 2).await;
    let (rest, cursors) = read_to_end(&replica_b.url(""), 2, cursors, 40, 3).await;
    seen.extend(rest);

    // A replica stops; another one starts, with fresh connections.
    let restarted_pool = pool(&db.url, 2).await;
    drop(replica_b);
    let restarted = LoopbackServer::start(router(outbox.feed(restarted_pool).service())).await;
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
    let db = database::postgres().await;
    let setup = pool(&db.url, 2).await;
    let outbox = outbox(&setup, "events", 1).await;
    // Far more than the socket buffers hold, so that the page is still
    // being read from the database when the consumer leaves.
    let filler = "x".repeat(1000);
    let events: Vec<_> = (0..20_000)
        .map(|id| {
            let text = format!(r#"{{"id":"e{id}","filler":"{filler}"}}"#);
            OutboxEvent::in_partition(
                0,
                zeroeventhub::protocol::RawJson::from_bytes(text).unwrap(),
            )
        })
        .collect();
    commit(&setup, &outbox, &events).await;
    // The feed's own pool: nothing else uses it.
    let pool = pool(&db.url, 4).await;
    let in_use = |pool: &PgPool| pool.size() as usize - pool.num_idle();
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
    let db = database::postgres().await;
    let pool = pool(&db.url, 2).await;
    let outbox = outbox(&pool, "events", 2).await;
    let events: Vec<_> = (0..20_000).map(support::outbox::keyed_event).collect();
    for chunk in events.chunks(5_000) {
        commit(&pool, &outbox, chunk).await;
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
