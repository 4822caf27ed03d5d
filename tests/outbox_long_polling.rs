//! Long polling on the database feeds: a waiting request is woken by a
//! commit in another connection and not by a rollback, ends with an empty
//! page at its deadline, and never spins on a row that is not yet
//! servable. The pools count every connection they hand out: each look of
//! a waiting request takes one.

mod support;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Database, PgConnection, PgPool, SqlitePool};
use support::database;
use support::logs::Log;
use support::outbox::{data, id_of};
use support::outbox_suite::SqlOutbox;
use support::transport::LIVENESS;
use tokio::task::JoinHandle;
use zeroeventhub::client::{Client, ClientStack};
use zeroeventhub::protocol::{Cursor, FeedRequest, HeaderSelection};
use zeroeventhub::server::{
    AppendSignal, Appended, FeedReader, FeedService, NotifyAfterCommit, OutboxEvent, PostgresFeed,
    PostgresOutbox, SqliteOutbox, TableName,
};

/// Long enough that a request still waiting at the end of a test was never
/// answered by its deadline.
const LONG_WAIT: Duration = Duration::from_secs(120);

/// Pool options that count the connections handed out into `taken`.
fn counting<DB: Database>(options: PoolOptions<DB>, taken: &Arc<AtomicUsize>) -> PoolOptions<DB> {
    let on_acquire = Arc::clone(taken);
    let on_connect = Arc::clone(taken);
    options
        .before_acquire(move |_, _| {
            on_acquire.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(true) })
        })
        .after_connect(move |_, _| {
            on_connect.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        })
}

/// The ids of a page's events, and its next cursors.
type Fetched = (Vec<String>, Vec<(u32, Cursor)>);

/// A client of `service` in process, which waits for a page's head
/// longer than any request waits.
fn client<R: FeedReader + Clone>(service: &FeedService<R>) -> Client<ClientStack<FeedService<R>>> {
    Client::builder("http://feed/".parse().unwrap(), 2)
        .head_timeout(LONG_WAIT * 2)
        .build_with(service.clone())
}

/// Sends `request` on a task of its own; the task gives the ids of the
/// page's events and its next cursors.
fn spawn_fetch<R: FeedReader + Clone>(
    service: &FeedService<R>,
    request: FeedRequest,
) -> JoinHandle<Fetched> {
    let client = client(service);
    tokio::spawn(async move {
        let page = client.fetch_page(&request).await.expect("a page");
        let ids = page.events().iter().map(id_of).collect();
        (ids, page.next_cursors().to_vec())
    })
}

/// The answer of a request that must end soon.
async fn answer<T>(fetch: JoinHandle<T>) -> T {
    tokio::time::timeout(LIVENESS, fetch)
        .await
        .expect("the waiting request was never woken")
        .unwrap()
}

/// Waits until `check` holds.
async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    tokio::time::timeout(LIVENESS, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

async fn waiting(signal: &AppendSignal, count: usize) {
    until("requests waiting", || async { signal.waiters() == count }).await;
}

fn waiting_request(cursors: Vec<(u32, Cursor)>, wait: Duration) -> FeedRequest {
    FeedRequest::new(2, cursors).unwrap().with_wait(wait)
}

/// A request from `cursors`, sent on a task of its own, once it is the
/// one request waiting on `signal`.
async fn waiting_fetch<R: FeedReader + Clone>(
    service: &FeedService<R>,
    signal: &AppendSignal,
    cursors: Vec<(u32, Cursor)>,
) -> JoinHandle<Fetched> {
    let fetch = spawn_fetch(service, waiting_request(cursors, LONG_WAIT));
    waiting(signal, 1).await;
    fetch
}

/// Appends event `id` to partition 0 in a transaction on `connection`,
/// and commits it, or rolls it back.
async fn append<O: SqlOutbox>(
    connection: &mut <O::Database as Database>::Connection,
    outbox: &O,
    id: u64,
    commit: bool,
) {
    let mut tx = connection.begin().await.unwrap();
    outbox
        .append(&mut tx, &OutboxEvent::in_partition(0, data(id)))
        .await
        .unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

/// A request waiting from `cursors` is not woken by a rollback (it takes
/// no connection of the pool counting into `taken`), and is by the next
/// commit, which brings only the committed event. `append(id, commit)`
/// appends event `id` in another connection.
async fn a_rollback_wakes_nobody<R, F, Fut>(
    service: &FeedService<R>,
    signal: &AppendSignal,
    taken: &AtomicUsize,
    cursors: Vec<(u32, Cursor)>,
    append: F,
) where
    R: FeedReader + Clone,
    F: Fn(u64, bool) -> Fut,
    Fut: Future<Output = ()>,
{
    let second = waiting_fetch(service, signal, cursors).await;
    // Its first look is done once the count stays still.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = taken.load(Ordering::SeqCst);
    append(2, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        taken.load(Ordering::SeqCst),
        before,
        "a rollback made the waiting request look"
    );
    assert!(!second.is_finished());
    append(3, true).await;
    let (ids, _) = answer(second).await;
    assert_eq!(ids, ["e3"], "the rolled-back event never appears");
}

/// A request waiting 1 s on an empty feed ends with an empty page, its
/// cursors where they were (`_last` of an empty partition is `_first`),
/// and no longer waits on `signal`.
async fn a_wait_expires<R: FeedReader + Clone>(service: &FeedService<R>, signal: &AppendSignal) {
    let fetch = spawn_fetch(
        service,
        waiting_request(
            vec![(0, Cursor::first()), (1, Cursor::last())],
            Duration::from_secs(1),
        ),
    );
    let (ids, cursors) = answer(fetch).await;
    assert!(ids.is_empty());
    assert_eq!(cursors, [(0, Cursor::first()), (1, Cursor::first())]);
    assert_eq!(signal.waiters(), 0);
}

mod postgres {
    use super::*;

    /// A fresh database with the outbox `events` of 2 partitions, and a
    /// pool of 8 connections over it that counts those it hands out into
    /// the counter it comes with.
    async fn setup() -> (
        Arc<AtomicUsize>,
        database::TestPostgres,
        PgPool,
        PostgresOutbox,
    ) {
        let taken = Arc::new(AtomicUsize::new(0));
        let db = database::postgres().await;
        let pool = counting(PgPoolOptions::new().max_connections(8), &taken)
            .connect(&db.url)
            .await
            .unwrap();
        let outbox = PostgresOutbox::new(TableName::new("events").unwrap(), 2);
        outbox.migrate(&pool).await.unwrap();
        (taken, db, pool, outbox)
    }

    /// The feed of `outbox` over `pool`, and its service, which holds a
    /// waiting request for up to [`LONG_WAIT`].
    fn served(outbox: &PostgresOutbox, pool: PgPool) -> (PostgresFeed, FeedService<PostgresFeed>) {
        let feed = outbox.feed(pool);
        let service = feed.service().max_wait(LONG_WAIT);
        (feed, service)
    }

    /// Whether the feed's `LISTEN` connection is up.
    async fn listening(url: &str) -> bool {
        connections(url, "count(*)", "LISTEN").await > 0
    }

    /// `aggregate` (over `pid`) of the database's connections whose last
    /// statement starts with `statement`.
    async fn connections(url: &str, aggregate: &str, statement: &str) -> i64 {
        let mut connection = PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(&format!(
            "SELECT {aggregate} FROM pg_stat_activity \
             WHERE datname = current_database() AND starts_with(query, $1)"
        ))
        .bind(statement)
        .fetch_one(&mut connection)
        .await
        .unwrap()
    }

    /// Ends the database's connections whose last statement starts with
    /// `statement`; gives how many.
    async fn terminate(url: &str, statement: &str) -> i64 {
        connections(url, "count(pg_terminate_backend(pid))", statement).await
    }

    /// Appends event `id` to partition 0 on a connection of its own,
    /// outside the feed's pool, and commits it, or rolls it back.
    async fn append(url: &str, outbox: &PostgresOutbox, id: u64, commit: bool) {
        let mut connection = PgConnection::connect(url).await.unwrap();
        super::append(&mut connection, outbox, id, commit).await;
    }

    #[tokio::test]
    async fn a_commit_in_another_connection_wakes_a_waiting_request_and_a_rollback_does_not() {
        let (taken, db, pool, outbox) = setup().await;
        let (feed, service) = served(&outbox, pool);

        let first = listening_request(&service, &feed, &db.url, vec![(0, Cursor::last())]).await;
        append(&db.url, &outbox, 1, true).await;
        let (ids, cursors) = answer(first).await;
        assert_eq!(ids, ["e1"]);

        let append = |id, commit| append(&db.url, &outbox, id, commit);
        a_rollback_wakes_nobody(&service, feed.append_signal(), &taken, cursors, append).await;
    }

    #[tokio::test]
    async fn one_commit_wakes_the_requests_of_its_partition_with_shared_looks_and_pages() {
        let (taken, db, pool, outbox) = setup().await;
        let (feed, service) = served(&outbox, pool);

        let at_the_end = |partition, count| -> Vec<_> {
            (0..count)
                .map(|_| {
                    let request = waiting_request(vec![(partition, Cursor::last())], LONG_WAIT);
                    spawn_fetch(&service, request)
                })
                .collect()
        };
        let on_zero = at_the_end(0, 30);
        let on_one = at_the_end(1, 10);
        waiting(feed.append_signal(), 40).await;
        until("LISTEN", || listening(&db.url)).await;
        // The first looks are done once the count stays still.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = taken.load(Ordering::SeqCst);
        append(&db.url, &outbox, 1, true).await;
        for fetch in on_zero {
            let (ids, _) = answer(fetch).await;
            assert_eq!(ids, ["e1"]);
        }
        // The woken requests share their looks and their page: a few
        // queries between them, not two or more each.
        let connections = taken.load(Ordering::SeqCst) - before;
        assert!(
            (1..=10).contains(&connections),
            "{connections} connections for 30 woken requests"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            on_one.iter().all(|fetch| !fetch.is_finished()),
            "a commit to partition 0 answered a request waiting on partition 1"
        );
        assert_eq!(feed.append_signal().waiters(), 10);
    }

    #[tokio::test]
    async fn a_shared_page_keeps_each_requests_headers_and_stops_at_a_thousand_events() {
        let (_, db, pool, outbox) = setup().await;
        let (feed, service) = served(&outbox, pool);
        let fetch = |headers: HeaderSelection| {
            let client = Client::builder("http://feed/".parse().unwrap(), 2)
                .head_timeout(LONG_WAIT * 2)
                .build_with(service.clone());
            let request = waiting_request(vec![(0, Cursor::last())], LONG_WAIT)
                .with_headers(headers)
                .with_page_size_hint(5000);
            tokio::spawn(async move {
                let page = client.fetch_page(&request).await.expect("a page");
                (page.events().to_vec(), page.next_request(&request))
            })
        };
        let plain = fetch(HeaderSelection::None);
        let with_headers = fetch(HeaderSelection::All);
        waiting(feed.append_signal(), 2).await;
        until("LISTEN", || listening(&db.url)).await;

        // 1,500 events in one commit: more than a woken page holds.
        let mut connection = PgConnection::connect(&db.url).await.unwrap();
        let mut tx = connection.begin().await.unwrap();
        let events: Vec<_> = (0..1500)
            .map(|id| OutboxEvent::in_partition(0, data(id)).with_header("trace", "t"))
            .collect();
        outbox.append_batch(&mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();

        let (plain, next) = answer(plain).await;
        let (with_headers, _) = answer(with_headers).await;
        assert_eq!(plain.len(), 1000);
        assert_eq!(with_headers.len(), 1000);
        assert!(plain.iter().all(|event| event.headers.is_empty()));
        assert!(
            with_headers
                .iter()
                .all(|event| event.headers.get("trace").map(String::as_str) == Some("t"))
        );
        // The rest comes at once on the next request.
        let client = Client::builder("http://feed/".parse().unwrap(), 2)
            .head_timeout(LONG_WAIT * 2)
            .build_with(service.clone());
        let rest = tokio::time::timeout(LIVENESS, client.fetch_page(&next))
            .await
            .expect("the rest came at once")
            .unwrap();
        let ids: Vec<_> = plain.iter().chain(rest.events()).map(id_of).collect();
        let expected: Vec<_> = (0..1500).map(|id| format!("e{id}")).collect();
        assert_eq!(ids, expected);
    }

    #[tokio::test]
    async fn a_row_waiting_for_the_horizon_is_looked_at_with_a_backoff() {
        let (taken, db, pool, outbox) = setup().await;
        let (feed, service) = served(&outbox, pool);

        // An outbox writer that drew a lower position, still running: rows
        // committed after it stay above the horizon.
        let mut holder = PgConnection::connect(&db.url).await.unwrap();
        let mut held = holder.begin().await.unwrap();
        outbox
            .append(&mut held, &OutboxEvent::in_partition(1, data(0)))
            .await
            .unwrap();

        let fetch = listening_request(&service, &feed, &db.url, vec![(0, Cursor::last())]).await;
        append(&db.url, &outbox, 1, true).await;
        let before = taken.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let looks = taken.load(Ordering::SeqCst) - before;
        assert!(!fetch.is_finished(), "served a row above the horizon");
        // A look every 50 ms at most (plus the backoff's first steps), not
        // a busy loop.
        assert!(looks <= 40, "{looks} looks in a second");
        assert!(looks >= 1, "the pending row was never looked at again");

        held.rollback().await.unwrap();
        let (ids, _) = answer(fetch).await;
        assert_eq!(ids, ["e1"]);
    }

    #[tokio::test]
    async fn a_wait_expires_with_an_empty_page() {
        let (_, _, pool, outbox) = setup().await;
        let feed = outbox.feed(pool);
        a_wait_expires(&feed.service(), feed.append_signal()).await;
    }

    #[tokio::test]
    async fn a_feed_over_a_pool_of_one_connection_listens_outside_it() {
        let (_, db, _, outbox) = setup().await;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&db.url)
            .await
            .unwrap();
        let feed = outbox.feed(pool);
        let service = feed.service().max_wait(LONG_WAIT);

        let mut cursors = vec![(0, Cursor::last())];
        for id in 1..=2 {
            let fetch = listening_request(&service, &feed, &db.url, cursors).await;
            append(&db.url, &outbox, id, true).await;
            let (ids, next) = answer(fetch).await;
            assert_eq!(ids, [format!("e{id}")]);
            cursors = next;
        }
    }

    #[tokio::test]
    async fn the_last_clone_of_a_feed_dropped_stops_its_listen_connection() {
        let (_, db, pool, outbox) = setup().await;
        let (feed, service) = served(&outbox, pool);
        let fetch = listening_request(&service, &feed, &db.url, vec![(0, Cursor::last())]).await;
        append(&db.url, &outbox, 1, true).await;
        assert_eq!(answer(fetch).await.0, ["e1"]);
        assert!(
            listening(&db.url).await,
            "one listener serves every request"
        );

        drop((service, feed));
        until("the LISTEN connection closes", || async {
            !listening(&db.url).await
        })
        .await;
    }

    #[tokio::test]
    async fn a_dropped_listen_connection_is_replaced() {
        let (_, db, pool, outbox) = setup().await;
        let (feed, service) = served(&outbox, pool);

        let first = listening_request(&service, &feed, &db.url, vec![(0, Cursor::last())]).await;
        assert_eq!(terminate(&db.url, "LISTEN").await, 1);
        append(&db.url, &outbox, 1, true).await;
        let (ids, cursors) = answer(first).await;
        assert_eq!(ids, ["e1"]);

        // A new connection listens, and wakes the next request.
        until("LISTEN again", || listening(&db.url)).await;
        let second = waiting_fetch(&service, feed.append_signal(), cursors).await;
        append(&db.url, &outbox, 2, true).await;
        let (ids, _) = answer(second).await;
        assert_eq!(ids, ["e2"]);
    }
    /// Lets a waiting request finish the looks that follow the start of
    /// `LISTEN` (a wake-up of every request, then a few backed-off looks).
    async fn settled() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// A request waiting from `cursors`, once it waits and the feed
    /// listens.
    async fn listening_request(
        service: &FeedService<PostgresFeed>,
        feed: &PostgresFeed,
        url: &str,
        cursors: Vec<(u32, Cursor)>,
    ) -> JoinHandle<Fetched> {
        let fetch = waiting_fetch(service, feed.append_signal(), cursors).await;
        until("LISTEN", || listening(url)).await;
        fetch
    }

    /// A request waiting at the end of partition 0, once the feed listens
    /// and the request's first looks are done.
    async fn waiting_at_the_end(
        service: &FeedService<PostgresFeed>,
        feed: &PostgresFeed,
        url: &str,
    ) -> JoinHandle<Fetched> {
        let fetch = listening_request(service, feed, url, vec![(0, Cursor::last())]).await;
        settled().await;
        fetch
    }

    /// Commits one event on partition 0 through `writer`, on a connection
    /// of its own, without waking anyone; gives what to notify.
    async fn append_quietly(url: &str, writer: &NotifyAfterCommit, id: u64) -> Appended {
        let mut connection = PgConnection::connect(url).await.unwrap();
        let mut tx = connection.begin().await.unwrap();
        let appended = writer
            .append(&mut tx, &OutboxEvent::in_partition(0, data(id)))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        appended
    }

    #[tokio::test]
    async fn a_writer_notifying_after_commit_wakes_waiting_requests_when_told_and_not_before() {
        let (_, db, pool, outbox) = setup().await;
        let (feed, service) = served(&outbox, pool.clone());
        let writer = outbox.notify_after_commit(pool);

        let first = waiting_at_the_end(&service, &feed, &db.url).await;
        let appended = append_quietly(&db.url, &writer, 1).await;
        assert_eq!(appended.partitions().collect::<Vec<_>>(), [0]);
        let described = format!("{writer:?}");
        assert!(
            described.starts_with("NotifyAfterCommit { outbox: PostgresOutbox { table: ")
                && described.ends_with("pending_partitions: 0 }"),
            "{described}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!first.is_finished(), "the commit itself woke the request");
        writer.notify(appended);
        let (ids, cursors) = answer(first).await;
        assert_eq!(ids, ["e1"]);

        // A batch on both partitions, then a rollback: one wake-up for the
        // batch, and nothing of the rolled-back event.
        let second = waiting_fetch(&service, feed.append_signal(), cursors).await;
        let mut connection = PgConnection::connect(&db.url).await.unwrap();
        let mut tx = connection.begin().await.unwrap();
        let _ = writer
            .append(&mut tx, &OutboxEvent::in_partition(0, data(2)))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let mut tx = connection.begin().await.unwrap();
        let batch = [
            OutboxEvent::in_partition(1, data(3)),
            OutboxEvent::in_partition(0, data(4)),
            OutboxEvent::in_partition(0, data(5)),
        ];
        let appended = writer.append_batch(&mut tx, &batch).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(appended.partitions().collect::<Vec<_>>(), [0, 1]);
        assert!(
            writer
                .append_batch(&mut connection, &[])
                .await
                .unwrap()
                .is_empty(),
            "an empty batch appends to no partition"
        );
        writer.notify(appended);
        let (ids, _) = answer(second).await;
        assert_eq!(ids, ["e4", "e5"]);
    }

    #[tokio::test]
    async fn a_writer_notifying_after_commit_sends_what_is_pending_when_dropped() {
        let (_, db, pool, outbox) = setup().await;
        let (feed, service) = served(&outbox, pool.clone());
        let writer = outbox.notify_after_commit(pool.clone());

        let fetch = waiting_at_the_end(&service, &feed, &db.url).await;
        let appended = append_quietly(&db.url, &writer, 1).await;
        writer.notify(appended);
        drop(writer);
        let (ids, cursors) = answer(fetch).await;
        assert_eq!(ids, ["e1"], "what was pending went out");
        until("the writer's connection closes", || async {
            notifying_connections(&db.url).await == 0
        })
        .await;

        // A writer dropped while its task waits for work ends the task,
        // which closes its connection.
        let idle = outbox.notify_after_commit(pool);
        let fetch = waiting_fetch(&service, feed.append_signal(), cursors).await;
        let appended = append_quietly(&db.url, &idle, 2).await;
        idle.notify(appended);
        let (ids, _) = answer(fetch).await;
        assert_eq!(ids, ["e2"]);
        assert_eq!(notifying_connections(&db.url).await, 1);
        drop(idle);
        until("the writer's connection closes", || async {
            notifying_connections(&db.url).await == 0
        })
        .await;
    }

    #[tokio::test]
    async fn a_writer_notifying_after_commit_backs_off_while_it_fails_and_stops_once_dropped() {
        const FAILED: &str = "cannot notify the feeds";
        // The test's runtime runs the writer's task on this thread.
        let (log, _logging) = Log::capture();
        let (_, db, _, outbox) = setup().await;
        // Nothing listens on port 1: every NOTIFY fails.
        let unreachable = PgPoolOptions::new()
            .connect_lazy("postgres://postgres@127.0.0.1:1/test")
            .unwrap();
        let writer = outbox.notify_after_commit(unreachable);
        let appended = append_quietly(&db.url, &writer, 1).await;
        writer.notify(appended);

        tokio::time::sleep(Duration::from_millis(500)).await;
        let failures = log.count(FAILED);
        // Pauses of 10 ms doubling: about six attempts in half a second.
        assert!(
            (1..=12).contains(&failures),
            "{failures} failed attempts in 500 ms"
        );
        drop(writer);
        // The task gives up at its next attempt (the pause is at most 1 s).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = log.count(FAILED) - failures;
        assert!(
            after <= 1,
            "{after} more attempts after the writer went away"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_notifying_after_commit_sends_one_notify_per_millisecond_at_most() {
        let (_, db, pool, outbox) = setup().await;
        let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
        listener.listen("events").await.unwrap();
        let writer = outbox.notify_after_commit(pool);
        let appended = append_quietly(&db.url, &writer, 1).await;

        // Commits told every 0.2 ms, from a thread the writer's task does
        // not run on.
        let start = std::time::Instant::now();
        for _ in 0..50 {
            writer.notify(appended.clone());
            std::thread::sleep(Duration::from_micros(200));
        }
        let elapsed = start.elapsed();
        let mut heard = 0u128;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), listener.recv()).await
        {
            heard += 1;
        }
        assert!(heard >= 1, "the commits were never announced");
        let most = elapsed.as_millis() + 2;
        assert!(
            heard <= most,
            "{heard} NOTIFY in {elapsed:?}: more than one a millisecond"
        );
    }

    #[tokio::test]
    async fn a_writer_notifying_after_commit_gives_up_on_a_server_that_does_not_answer() {
        let (log, _logging) = Log::capture();
        let (_, db, _, outbox) = setup().await;
        // A server that takes connections and never says a word.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = silent.accept().await {
                held.push(connection);
            }
        });
        let mute = PgPoolOptions::new()
            .connect_lazy(&format!("postgres://postgres@127.0.0.1:{port}/test"))
            .unwrap();
        let writer = outbox.notify_after_commit(mute);
        let appended = append_quietly(&db.url, &writer, 1).await;
        writer.notify(appended);
        until("a wake-up given up", || async {
            log.count("did not answer within 5s") > 0
        })
        .await;
        held.abort();
    }

    /// How many connections have sent `NOTIFY` from a writer's task.
    async fn notifying_connections(url: &str) -> i64 {
        connections(url, "count(*)", "SELECT pg_notify").await
    }

    #[tokio::test]
    async fn a_writer_notifying_after_commit_replaces_a_lost_connection() {
        let (_, db, pool, outbox) = setup().await;
        let (feed, service) = served(&outbox, pool.clone());
        let writer = outbox.notify_after_commit(pool);

        let mut cursors = vec![(0, Cursor::last())];
        for id in 1..=2 {
            let fetch = listening_request(&service, &feed, &db.url, cursors).await;
            settled().await;
            let appended = append_quietly(&db.url, &writer, id).await;
            writer.notify(appended);
            let (ids, next) = answer(fetch).await;
            assert_eq!(ids, [format!("e{id}")]);
            cursors = next;
            if id == 1 {
                // The writer's own connection, the one that sent `NOTIFY`.
                assert_eq!(notifying_connections(&db.url).await, 1);
                assert_eq!(terminate(&db.url, "SELECT pg_notify").await, 1);
            }
        }
    }
}

mod sqlite {
    use super::*;

    async fn pool(url: &str, taken: &Arc<AtomicUsize>) -> SqlitePool {
        let options = SqliteConnectOptions::from_str(url)
            .unwrap()
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(20));
        counting(SqlitePoolOptions::new().max_connections(4), taken)
            .connect_with(options)
            .await
            .unwrap()
    }

    /// A fresh file for `test` with the outbox `events` of 2 partitions;
    /// a pool for the feed, counting the connections it hands out into
    /// `taken`, and one for the writers.
    async fn setup(test: &str, taken: &Arc<AtomicUsize>) -> (SqlitePool, SqlitePool, SqliteOutbox) {
        let url = database::sqlite_url(test);
        let feed_pool = pool(&url, taken).await;
        let writer_pool = pool(&url, &Arc::new(AtomicUsize::new(0))).await;
        let outbox = SqliteOutbox::new(TableName::new("events").unwrap(), 2);
        outbox.migrate(&writer_pool).await.unwrap();
        (feed_pool, writer_pool, outbox)
    }

    /// Appends event `id` to partition 0 on a connection of `pool`, and
    /// commits it, or rolls it back.
    async fn append(pool: &SqlitePool, outbox: &SqliteOutbox, id: u64, commit: bool) {
        let mut connection = pool.acquire().await.unwrap();
        super::append(&mut *connection, outbox, id, commit).await;
    }

    #[tokio::test]
    async fn a_commit_in_another_connection_wakes_a_waiting_request_and_a_rollback_does_not() {
        let taken = Arc::new(AtomicUsize::new(0));
        let (feed_pool, writer_pool, outbox) = setup("waking", &taken).await;
        // No polling: only the writer's commits wake a waiting request.
        let feed = outbox.feed(feed_pool).poll_every(LONG_WAIT);
        let service = feed.service().max_wait(LONG_WAIT);

        let first = waiting_fetch(&service, feed.append_signal(), vec![(0, Cursor::last())]).await;
        append(&writer_pool, &outbox, 1, true).await;
        let (ids, cursors) = answer(first).await;
        assert_eq!(ids, ["e1"]);

        let append = |id, commit| append(&writer_pool, &outbox, id, commit);
        a_rollback_wakes_nobody(&service, feed.append_signal(), &taken, cursors, append).await;
    }

    #[tokio::test]
    async fn a_writer_in_another_process_is_seen_within_the_poll_interval() {
        let taken = Arc::new(AtomicUsize::new(0));
        let (feed_pool, writer_pool, outbox) = setup("polling", &taken).await;
        let feed = outbox
            .feed(feed_pool)
            .poll_every(Duration::from_millis(100));
        let service = feed.service().max_wait(LONG_WAIT);
        // Another process's writer: an outbox of its own, unknown to the
        // feed.
        let elsewhere = SqliteOutbox::new(TableName::new("events").unwrap(), 2);

        let fetch = waiting_fetch(&service, feed.append_signal(), vec![(0, Cursor::last())]).await;
        let before = taken.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let looks = taken.load(Ordering::SeqCst) - before;
        assert!(
            (1..=15).contains(&looks),
            "{looks} looks in a second, polling every 100 ms"
        );
        append(&writer_pool, &elsewhere, 1, true).await;
        let (ids, _) = answer(fetch).await;
        assert_eq!(ids, ["e1"]);
    }

    #[tokio::test]
    async fn a_wait_expires_with_an_empty_page() {
        let (pool, _, outbox) = setup("expiring", &Arc::new(AtomicUsize::new(0))).await;
        let feed = outbox.feed(pool);
        a_wait_expires(&feed.service(), feed.append_signal()).await;
    }
}
