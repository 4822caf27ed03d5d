//! The tests both outboxes pass, written once. Each database's test file
//! implements [`OutboxDb`] for its database, and runs each test here from
//! a test of its own name; [`SqlOutbox`], shared with the examples, is the
//! outboxes' one face.

use std::future::Future;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroeventhub::client::{Client, ClientStack};
use zeroeventhub::protocol::{Checkpoint, Cursor, Event, FeedRequest, HeaderSelection, RawJson};
use zeroeventhub::server::{
    FeedReader, FeedService, MemoryFeed, OutboxError, OutboxEvent, TableName,
};

use super::outbox::{Race, RaceOutcome, data, id_of, keyed_event, read_to_end, run_race};
use super::transport::{LoopbackServer, router};

/// The outboxes' common trait, shared with the examples.
#[path = "../../examples/support/outbox.rs"]
mod sql;
pub(crate) use sql::SqlOutbox;

/// A database the suite runs on: how to get a fresh one, pools over it,
/// and what its outbox does differently.
pub(crate) trait OutboxDb: Sized {
    /// The sqlx database.
    type Database: Database;
    /// Its outbox.
    type Outbox: SqlOutbox<Database = Self::Database>;

    /// Connections of the pool that the race's writers and its feed share.
    const RACE_CONNECTIONS: u32;
    /// How long a writer of the race holds its transaction open at most.
    const RACE_HOLD: Duration;
    /// Whether `migrate` may run on several connections at once.
    const MIGRATES_CONCURRENTLY: bool;
    /// A query counting the tables named `events` and `other_events`.
    const COUNT_TABLES: &'static str;
    /// Cursors the feed never hands out for partition 1, besides one it
    /// hands out for partition 0.
    const FOREIGN_CURSORS: [&'static str; 5];

    /// A fresh, empty database for the test `test`.
    fn create(test: &str) -> impl Future<Output = Self>;

    /// A pool of at most `connections` over the database.
    fn pool(&self, connections: u32) -> impl Future<Output = Pool<Self::Database>>;

    /// Waits until the feed of `outbox` serves every row committed to it;
    /// at once unless the database holds some back.
    fn servable(outbox: &Self::Outbox, pool: &Pool<Self::Database>) -> impl Future<Output = ()> {
        let _ = (outbox, pool);
        async {}
    }
}

/// A fresh database for `test`, a pool of `connections` over it, and its
/// outbox `events` of `partitions`, migrated.
pub(crate) async fn open<D: OutboxDb>(
    test: &str,
    connections: u32,
    partitions: u32,
) -> (D, Pool<D::Database>, D::Outbox) {
    let db = D::create(test).await;
    let pool = db.pool(connections).await;
    let outbox = outbox(&pool, "events", partitions).await;
    (db, pool, outbox)
}

/// The outbox in `table` of `partitions`, migrated with `pool`.
pub(crate) async fn outbox<O: SqlOutbox>(
    pool: &Pool<O::Database>,
    table: &str,
    partitions: u32,
) -> O {
    let outbox = O::new(TableName::new(table).unwrap(), partitions);
    outbox.migrate(pool).await.expect("migrating");
    outbox
}

/// Appends `events` in one committed transaction, and waits until the
/// feed serves them.
pub(crate) async fn commit<D: OutboxDb>(
    pool: &Pool<D::Database>,
    outbox: &D::Outbox,
    events: &[OutboxEvent],
) {
    let mut tx = pool.begin().await.unwrap();
    outbox.append_batch(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
    D::servable(outbox, pool).await;
}

fn request(partitions: u32, cursors: impl IntoIterator<Item = (u32, Cursor)>) -> FeedRequest {
    FeedRequest::new(partitions, cursors).unwrap()
}

/// A client of `service`, in process.
fn client<R: FeedReader>(
    service: FeedService<R>,
    partitions: u32,
) -> Client<ClientStack<FeedService<R>>> {
    Client::builder("http://feed/".parse().unwrap(), partitions).build_with(service)
}

/// How many of `pool`'s connections are in use.
fn in_use<DB: Database>(pool: &Pool<DB>) -> usize {
    pool.size() as usize - pool.num_idle()
}

pub(crate) async fn migrate_is_idempotent_and_its_sql_stands_alone<D: OutboxDb>() {
    let (_db, pool, outbox) = open::<D>("migrate", 4, 2).await;
    outbox.migrate(&pool).await.expect("migrating twice");
    if D::MIGRATES_CONCURRENTLY {
        let (first, second) = tokio::join!(outbox.migrate(&pool), outbox.migrate(&pool));
        first.and(second).expect("migrating concurrently");
    }

    // A user's own migration tool runs the same SQL.
    let other = D::Outbox::new(TableName::new("other_events").unwrap(), 2);
    D::Outbox::execute(&pool, other.schema()).await.unwrap();
    commit::<D>(&pool, &other, &[OutboxEvent::in_partition(1, data(1))]).await;
    assert_eq!(D::Outbox::count(&pool, D::COUNT_TABLES).await.unwrap(), 2);
}

pub(crate) async fn events_appear_at_commit_and_rollbacks_leave_no_trace<D: OutboxDb>() {
    let (_db, pool, outbox) = open::<D>("commit", 4, 2).await;
    let client = client(outbox.service(pool.clone()), 2);
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
    D::servable(&outbox, &pool).await;
    let page = client.fetch_page(&everything).await.unwrap();
    // Every header: the event's own, and its id and append time.
    let cursor = page.next_cursors()[1].1.clone();
    let mut served = page.events().to_vec();
    assert_eq!(served.len(), 1);
    assert_eq!(
        served[0].headers.remove("ce_id").as_deref(),
        Some(cursor.as_str())
    );
    assert!(served[0].headers.remove("ce_time").is_some());
    let expected = Event::new(1, data(1)).with_header("type", "Tested");
    assert_eq!(served, [expected]);

    let mut tx = pool.begin().await.unwrap();
    outbox
        .append_batch(&mut tx, &[keyed_event(2), keyed_event(3)])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let again = client.fetch_page(&everything).await.unwrap();
    assert_eq!(again.events().len(), 1);

    let mut connection: PoolConnection<D::Database> = pool.acquire().await.unwrap();
    let beyond = OutboxEvent::in_partition(2, data(4));
    assert!(matches!(
        outbox.append(&mut connection, &beyond).await,
        Err(OutboxError::UnknownPartition(error)) if error.partition == 2
    ));
    // The data column holds JSON only, whoever writes it.
    let invalid = D::Outbox::execute(
        &pool,
        "INSERT INTO events (partition, data) VALUES (0, 'not json')",
    )
    .await;
    assert!(invalid.is_err());
}

pub(crate) async fn first_last_and_cursors_never_handed_out<D: OutboxDb>() {
    let (_db, pool, outbox) = open::<D>("cursors", 4, 2).await;
    let client = client(outbox.service(pool.clone()), 2);

    // `_last` on an empty partition: a checkpoint a consumer can store.
    let last = client
        .fetch_page(&request(2, [(0, Cursor::last())]))
        .await
        .unwrap();
    assert_eq!(last.checkpoints(), [Checkpoint::new(0, Cursor::first())]);

    commit::<D>(&pool, &outbox, &[OutboxEvent::in_partition(0, data(1))]).await;
    let last = client
        .fetch_page(&request(2, [(0, Cursor::last())]))
        .await
        .unwrap();
    assert!(last.events().is_empty());
    let at_end = last.next_cursors()[0].1.clone();
    commit::<D>(&pool, &outbox, &[OutboxEvent::in_partition(0, data(2))]).await;
    let after = client
        .fetch_page(&request(2, [(0, at_end.clone())]))
        .await
        .unwrap();
    assert_eq!(after.events().iter().map(id_of).collect::<Vec<_>>(), ["e2"]);

    // A cursor of partition 0 is foreign to partition 1, and so are made-up
    // ones and a memory feed's.
    let foreign_cursors = std::iter::once(at_end.as_str()).chain(D::FOREIGN_CURSORS);
    for foreign in foreign_cursors {
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

pub(crate) async fn the_page_is_shared_among_partitions_like_the_memory_feed<D: OutboxDb>() {
    let (_db, pool, outbox) = open::<D>("share", 4, 4).await;
    let memory = MemoryFeed::new(4);
    let mut events = Vec::new();
    for (partition, count) in [(0u32, 1u64), (1, 9), (2, 4), (3, 9)] {
        for id in 0..count {
            events.push(OutboxEvent::in_partition(partition, data(id)));
            memory.append(Event::new(partition, data(id))).unwrap();
        }
    }
    commit::<D>(&pool, &outbox, &events).await;
    let from_start = request(4, (0..4).map(|p| (p, Cursor::first()))).with_page_size_hint(11);
    let counts = |events: &[Event]| {
        (0..4)
            .map(|p| events.iter().filter(|e| e.partition == p).count())
            .collect::<Vec<_>>()
    };
    let ours = client(outbox.service(pool.clone()), 4)
        .fetch_page(&from_start)
        .await
        .unwrap();
    let reference = client(memory.service(), 4)
        .fetch_page(&from_start)
        .await
        .unwrap();
    assert_eq!(counts(ours.events()), counts(reference.events()));
    assert_eq!(counts(ours.events()), [1, 4, 3, 3]);
}

/// The scenario of the commit-order race: 8 writers hold their
/// transactions open for random times (up to the database's
/// [`RACE_HOLD`](OutboxDb::RACE_HOLD)) and roll back one in ten, while 4
/// consumers (two of them long polling) read right behind them in small
/// pages.
pub(crate) fn race<D: OutboxDb>() -> Race {
    Race {
        writers: 8,
        events: 20_000,
        batch: 12,
        max_hold: D::RACE_HOLD,
        consumers: 4,
        waiting_consumers: 2,
        page_size: 50,
    }
}

/// Runs [`race`] with writers appending to `outbox` through `pool`, and
/// consumers reading `service` over loopback HTTP.
pub(crate) async fn race_on<D: OutboxDb, R: FeedReader>(
    pool: &Pool<D::Database>,
    outbox: &D::Outbox,
    service: FeedService<R>,
) -> RaceOutcome {
    let server = LoopbackServer::start(router(service)).await;
    let writer_pool = pool.clone();
    let writer_outbox = outbox.clone();
    run_race(
        &server.url(""),
        outbox.partition_count(),
        race::<D>(),
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

pub(crate) async fn no_commit_order_loses_or_repeats_an_event<D: OutboxDb>() {
    let (_db, pool, outbox) = open::<D>("race", D::RACE_CONNECTIONS, 4).await;
    let outcome = race_on::<D, _>(&pool, &outbox, outbox.service(pool.clone())).await;
    outcome.assert_exactly_once();
}

pub(crate) async fn a_cursor_from_one_replica_resumes_on_another_and_after_a_restart<
    D: OutboxDb,
>() {
    let (db, setup, outbox) = open::<D>("replicas", 2, 2).await;
    let events: Vec<_> = (0..300).map(keyed_event).collect();
    commit::<D>(&setup, &outbox, &events).await;
    let from_start = vec![(0, Cursor::first()), (1, Cursor::first())];

    // Two replicas, each with its own pool, over one database.
    let replica_a = LoopbackServer::start(router(outbox.service(db.pool(2).await))).await;
    let replica_b = LoopbackServer::start(router(outbox.service(db.pool(2).await))).await;
    let (mut seen, cursors) = read_to_end(&replica_a.url(""), 2, from_start, 40, 2).await;
    let (rest, cursors) = read_to_end(&replica_b.url(""), 2, cursors, 40, 3).await;
    seen.extend(rest);

    // A replica stops; another one starts, with fresh connections.
    let restarted_pool = db.pool(2).await;
    drop(replica_b);
    let restarted = LoopbackServer::start(router(outbox.service(restarted_pool))).await;
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

pub(crate) async fn a_consumer_leaving_mid_page_gives_the_connection_back<D: OutboxDb>() {
    let (db, setup, outbox) = open::<D>("leaving", 2, 1).await;
    // Far more than the socket buffers hold, so that the page is still
    // being read from the database when the consumer leaves.
    let filler = "x".repeat(1000);
    let events: Vec<_> = (0..20_000)
        .map(|id| {
            let text = format!(r#"{{"id":"e{id}","filler":"{filler}"}}"#);
            OutboxEvent::in_partition(0, RawJson::from_bytes(text).unwrap())
        })
        .collect();
    commit::<D>(&setup, &outbox, &events).await;
    // The feed's own pool: nothing else uses it.
    let pool = db.pool(4).await;
    assert_eq!(in_use(&pool), 0);

    let server = LoopbackServer::start(router(outbox.service(pool.clone()))).await;
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
