//! The consumer runtime through the public API: exactly once into an
//! in-memory store and into SQLite, over the in-process transport and over
//! loopback HTTP; poison events both ways; shutdown in the middle of a
//! page; caught-up detection; a stale instance fenced by the cursors'
//! compare-and-set.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Sqlite, SqlitePool, Transaction};
use support::database;
use support::transport::{FEED_PATH, LIVENESS, LoopbackServer, router};
use tokio::sync::{Notify, oneshot};
use zeroeventhub::BoxError;
use zeroeventhub::client::{Client, HttpService};
use zeroeventhub::consumer::{
    CursorStore, Handler, MemoryStore, MemoryTransaction, PoisonPolicy, Runtime, SqliteStore,
};
use zeroeventhub::protocol::{Event, RawJson};
use zeroeventhub::server::MemoryFeed;

const PARTITIONS: u32 = 3;

/// `{"p":P,"i":I}`, the I-th event of partition P.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
struct Numbered {
    p: u32,
    i: u64,
}

fn append(feed: &MemoryFeed, partition: u32, index: u64) {
    let data = RawJson::from_serialize(&serde_json::json!({"p": partition, "i": index})).unwrap();
    feed.append(Event::new(partition, data)).unwrap();
}

/// Appends the events `indices` to every partition of `feed`.
fn append_rows(feed: &MemoryFeed, indices: std::ops::Range<u64>) {
    for index in indices {
        for partition in 0..PARTITIONS {
            append(feed, partition, index);
        }
    }
}

fn feed_with(per_partition: u64) -> MemoryFeed {
    let feed = MemoryFeed::new(PARTITIONS);
    append_rows(&feed, 0..per_partition);
    feed
}

/// Every event of `per_partition` per partition, once each, in order.
fn assert_exactly_once(mut received: Vec<Numbered>, per_partition: u64) {
    received.sort();
    let expected: Vec<Numbered> = (0..PARTITIONS)
        .flat_map(|p| (0..per_partition).map(move |i| Numbered { p, i }))
        .collect();
    assert_eq!(received.len(), expected.len(), "events received");
    assert_eq!(received, expected);
}

/// How the runtime reaches the feed.
#[derive(Clone, Copy, Debug)]
enum Transport {
    InProcess,
    Loopback,
}

/// Runs `test` with a client of `feed` over `transport`.
async fn with_client<F, Fut>(feed: &MemoryFeed, transport: Transport, test: F)
where
    F: FnOnce(Client<zeroeventhub::client::ClientStack<BoxedTransport>>) -> Fut,
    Fut: Future<Output = ()>,
{
    let server;
    let (url, transport): (String, BoxedTransport) = match transport {
        Transport::InProcess => (
            format!("http://feed.test{FEED_PATH}"),
            boxed(feed.service()),
        ),
        Transport::Loopback => {
            server = LoopbackServer::start(router(feed.service())).await;
            let hyper =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<bytes::Bytes>>();
            (format!("http://{}{FEED_PATH}", server.addr), boxed(hyper))
        }
    };
    let client = Client::builder(url.parse().unwrap(), feed.partition_count())
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .build_with(transport);
    test(client).await;
}

/// Either transport behind one type, so that a test is written once.
type BoxedTransport = tower::util::BoxCloneSyncService<
    http::Request<http_body_util::Empty<bytes::Bytes>>,
    http::Response<http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>>,
    BoxError,
>;

/// `service` behind [`BoxedTransport`].
fn boxed<S, B>(service: S) -> BoxedTransport
where
    S: tower::Service<
            http::Request<http_body_util::Empty<bytes::Bytes>>,
            Response = http::Response<B>,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    tower::util::BoxCloneSyncService::new(
        service
            .map_response(|response: http::Response<B>| {
                response.map(|body| body.map_err(Into::into).boxed_unsync())
            })
            .map_err(Into::into),
    )
}

/// Keeps the events of each page as rows of a [`MemoryStore`].
struct Keep;

impl Handler<MemoryTransaction<Numbered>, Numbered> for Keep {
    type Error = BoxError;

    async fn handle(
        &mut self,
        transaction: &mut MemoryTransaction<Numbered>,
        events: &[Event<Numbered>],
    ) -> Result<(), BoxError> {
        for event in events {
            assert_eq!(event.partition, event.data.p);
            transaction.insert(event.data);
        }
        Ok(())
    }
}

/// Runs `runtime` with `handler` until it has caught up.
async fn run_until_caught_up<S, St, D, H>(runtime: &Runtime<S, St>, handler: H)
where
    S: HttpService + Clone,
    St: CursorStore,
    D: serde::de::DeserializeOwned + Send + Sync,
    H: Handler<St::Transaction, D>,
{
    in_time(runtime.run_as(handler, caught_up(runtime))).await;
}

/// Runs `runtime` with [`Keep`], never told to shut down, until an error
/// stops it, in time; gives the error.
async fn stopped_by_an_error<S>(
    runtime: &Runtime<S, MemoryStore<Numbered>>,
) -> zeroeventhub::consumer::Error
where
    S: HttpService + Clone,
{
    tokio::time::timeout(
        LIVENESS,
        runtime.run_as::<Numbered, _>(Keep, std::future::pending()),
    )
    .await
    .expect("the runtime stops in time")
    .unwrap_err()
}

/// A shutdown signal that comes once `runtime` has caught up.
fn caught_up<S, St>(runtime: &Runtime<S, St>) -> impl Future<Output = ()> + use<S, St>
where
    S: HttpService + Clone,
    St: CursorStore,
{
    let stats = runtime.stats();
    async move {
        stats.wait_for(|stats| stats.caught_up).await;
    }
}

/// Awaits `run`, a run of the runtime that must end in time and cleanly.
async fn in_time(run: impl Future<Output = Result<(), zeroeventhub::consumer::Error>>) {
    tokio::time::timeout(LIVENESS, run)
        .await
        .expect("the runtime catches up in time")
        .expect("the runtime stops cleanly");
}

#[tokio::test]
async fn every_event_is_handled_once_in_process_and_over_http() {
    for transport in [Transport::InProcess, Transport::Loopback] {
        let feed = feed_with(500);
        with_client(&feed, transport, |client| async move {
            let store = MemoryStore::new();
            let runtime = Runtime::new(client, store.clone(), "keeper").with_page_size(64);
            run_until_caught_up(&runtime, Keep).await;

            assert_exactly_once(store.rows(), 500);
            let stats = runtime.stats().snapshot();
            assert_eq!(stats.events, 1500, "{transport:?}");
            assert!(stats.pages >= 1500 / 64, "{transport:?}: {stats:?}");
            assert_eq!(stats.errors(), 0, "{transport:?}");
            assert!(stats.last_event_at.is_some());
            // Released on the way out.
            assert!(stats.owned_partitions.is_empty());
            let cursors: Vec<String> = store
                .cursors("keeper")
                .into_iter()
                .map(|(_, cursor)| cursor.to_string())
                .collect();
            assert_eq!(cursors, ["499", "499", "499"]);
        })
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn caught_up_turns_off_when_events_arrive_and_on_again() {
    let feed = feed_with(10);
    let appender = feed.clone();
    with_client(&feed, Transport::InProcess, |client| async move {
        let store = MemoryStore::new();
        let runtime = Runtime::new(client, store.clone(), "watcher")
            .with_poll_interval(Duration::from_millis(50));
        let stats = runtime.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = async {
            runtime
                .run_as(Keep, async {
                    let _ = stopped.await;
                })
                .await
        };
        let checks = async {
            let first = stats.wait_for(|stats| stats.caught_up).await;
            assert_eq!(first.events, 30);
            assert_eq!(first.owned_partitions, [0, 1, 2]);
            append(&appender, 1, 10);
            // Committing the new event turns it off (a watcher may miss
            // that moment, so only the end is awaited)...
            let busy = stats.wait_for(|stats| stats.events == 31).await;
            assert_eq!(busy.pages, first.pages + 1);
            // ...and the next empty page turns it on again.
            let again = stats
                .wait_for(|stats| stats.events == 31 && stats.caught_up)
                .await;
            assert_eq!(again.owned_partitions, [0, 1, 2]);
            stop.send(()).unwrap();
        };
        let (result, ()) = tokio::join!(running, checks);
        result.unwrap();
        assert_exactly_once(
            store.rows().into_iter().filter(|row| row.i < 10).collect(),
            10,
        );
    })
    .await;
}

/// Fails the first `failures` pages after writing their rows.
struct FailingAtFirst {
    failures: u32,
}

impl Handler<MemoryTransaction<Numbered>, Numbered> for FailingAtFirst {
    type Error = BoxError;

    async fn handle(
        &mut self,
        transaction: &mut MemoryTransaction<Numbered>,
        events: &[Event<Numbered>],
    ) -> Result<(), BoxError> {
        Keep.handle(transaction, events).await?;
        if self.failures > 0 {
            self.failures -= 1;
            return Err("the handler's database is busy".into());
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_handler_rolls_back_and_is_retried_after_a_backoff() {
    let feed = feed_with(40);
    with_client(&feed, Transport::InProcess, |client| async move {
        let store = MemoryStore::new();
        let runtime = Runtime::new(client, store.clone(), "retrier").with_page_size(10);
        run_until_caught_up(&runtime, FailingAtFirst { failures: 3 }).await;
        assert_exactly_once(store.rows(), 40);
        assert_eq!(runtime.stats().snapshot().handler_errors, 3);
    })
    .await;
}

#[tokio::test]
async fn poison_events_stop_the_runtime_by_default() {
    let feed = feed_with(5);
    feed.append(Event::new(
        1,
        RawJson::from_bytes(r#"{"p":"one"}"#).unwrap(),
    ))
    .unwrap();
    append(&feed, 1, 5);
    with_client(&feed, Transport::InProcess, |client| async move {
        let store = MemoryStore::new();
        let runtime = Runtime::new(client, store.clone(), "strict");
        let error = stopped_by_an_error(&runtime).await;
        assert!(error.is_poison() && !error.is_feed(), "{error:?}");
        assert_eq!(error.partition(), Some(1));
        assert!(error.to_string().contains("partition 1"), "{error}");
        // The whole page rolled back: nothing, not even the good events.
        assert!(store.rows().is_empty());
        assert!(store.cursors("strict").is_empty());
    })
    .await;
}

#[tokio::test]
async fn poison_events_go_to_the_dead_letters_when_asked() {
    let feed = feed_with(5);
    let poison = RawJson::from_bytes(r#"{"p":"one"}"#).unwrap();
    feed.append(Event::new(1, poison.clone())).unwrap();
    append_rows(&feed, 5..8);
    with_client(&feed, Transport::InProcess, |client| async move {
        let store = MemoryStore::new();
        let runtime = Runtime::new(client, store.clone(), "lenient")
            .with_poison_policy(PoisonPolicy::DeadLetter)
            .with_page_size(4);
        run_until_caught_up(&runtime, Keep).await;
        assert_exactly_once(store.rows(), 8);
        let letters = store.dead_letters("lenient");
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].partition, 1);
        assert_eq!(letters[0].data, poison);
        assert!(
            letters[0].error.contains("invalid type"),
            "{}",
            letters[0].error
        );
        assert_eq!(runtime.stats().snapshot().dead_letters, 1);
    })
    .await;
}

/// Writes each event as a row of `received(partition, data)` in the page's
/// SQLite transaction.
struct Received;

impl Handler<Transaction<'static, Sqlite>> for Received {
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        transaction: &mut Transaction<'static, Sqlite>,
        events: &[Event],
    ) -> Result<(), sqlx::Error> {
        for event in events {
            insert_received(transaction, event.partition, event.data.as_str()).await?;
        }
        Ok(())
    }
}

/// Writes a row of `received` in `transaction`.
async fn insert_received(
    transaction: &mut Transaction<'static, Sqlite>,
    partition: u32,
    data: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO received (partition, data) VALUES (?, ?)")
        .bind(i64::from(partition))
        .bind(data)
        .execute(&mut **transaction)
        .await?;
    Ok(())
}

/// A fresh SQLite file for `test`, opened with `options`, with the table
/// `received` of [`Received`].
async fn received_pool(
    test: &str,
    options: impl FnOnce(SqliteConnectOptions) -> SqliteConnectOptions,
) -> SqlitePool {
    let url = database::sqlite_url(test);
    let options = options(url.parse::<SqliteConnectOptions>().unwrap());
    let pool = SqlitePool::connect_with(options).await.unwrap();
    sqlx::query("CREATE TABLE received (partition INTEGER NOT NULL, data TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

async fn sqlite_store(test: &str) -> SqliteStore {
    let pool = received_pool(test, |options| {
        options.synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
    })
    .await;
    let store = SqliteStore::new(pool);
    store.migrate().await.unwrap();
    store
}

async fn received(pool: &SqlitePool) -> Vec<Numbered> {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT partition, data FROM received")
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(partition, data)| {
            let numbered: Numbered = serde_json::from_str(&data).unwrap();
            assert_eq!(i64::from(numbered.p), partition);
            numbered
        })
        .collect()
}

/// Runs `runtime` with [`Received`], events undecoded, until it has
/// caught up.
async fn run_raw_until_caught_up<S: HttpService + Clone>(runtime: &Runtime<S, SqliteStore>) {
    in_time(runtime.run(Received, caught_up(runtime))).await;
}

#[tokio::test]
async fn sqlite_effects_and_cursors_commit_together_and_a_restart_goes_on() {
    for transport in [Transport::InProcess, Transport::Loopback] {
        let feed = feed_with(300);
        let store = sqlite_store("runtime-restart").await;
        // Idempotent: a second migrate changes nothing.
        store.migrate().await.unwrap();
        with_client(&feed, transport, |client| {
            let store = store.clone();
            let feed = feed.clone();
            async move {
                let runtime =
                    Runtime::new(client.clone(), store.clone(), "sqlite").with_page_size(50);
                run_raw_until_caught_up(&runtime).await;
                assert_exactly_once(received(store.pool()).await, 300);

                // A new instance (a restarted process) reads the cursors back.
                append_rows(&feed, 300..400);
                let restarted = Runtime::new(client, store.clone(), "sqlite").with_page_size(50);
                run_raw_until_caught_up(&restarted).await;
                assert_exactly_once(received(store.pool()).await, 400);
                assert_eq!(restarted.stats().snapshot().events, 300);

                let cursors: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT partition, cursor FROM zeh_consumer_cursors \
                     WHERE consumer = 'sqlite' ORDER BY partition",
                )
                .fetch_all(store.pool())
                .await
                .unwrap();
                assert_eq!(
                    cursors,
                    [
                        (0, "399".to_owned()),
                        (1, "399".to_owned()),
                        (2, "399".to_owned())
                    ],
                    "{transport:?}"
                );
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_store_keeps_its_cursors_in_tables_named_by_the_outbox_rule() {
    use zeroeventhub::consumer::store::{InvalidTableName, TableName};

    // One rule and one type for every table the crate creates.
    let error: InvalidTableName = TableName::new("Cursors-2").unwrap_err();
    assert!(error.to_string().contains("\"Cursors-2\""), "{error}");
    let outbox_name: zeroeventhub::server::TableName = TableName::new("app_cursors").unwrap();

    let feed = feed_with(20);
    let pool = received_pool("runtime-tables", |options| options).await;
    let store = SqliteStore::new(pool.clone())
        .with_tables(outbox_name, TableName::new("app_dead_letters").unwrap());
    store.migrate().await.unwrap();
    with_client(&feed, Transport::InProcess, |client| async move {
        let runtime = Runtime::new(client, store, "named");
        run_raw_until_caught_up(&runtime).await;
    })
    .await;
    assert_exactly_once(received(&pool).await, 20);
    let cursors: Vec<String> =
        sqlx::query_scalar("SELECT cursor FROM app_cursors WHERE consumer = 'named'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(cursors, ["19", "19", "19"]);
    let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM app_dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(letters, 0);
    // The default tables were never made.
    let default_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('zeh_consumer_cursors', 'zeh_dead_letters')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(default_tables, 0);
}

#[tokio::test]
async fn sqlite_dead_letters_are_rows_of_the_same_transaction() {
    let feed = feed_with(3);
    feed.append(
        Event::new(2, RawJson::from_bytes(r#""two""#).unwrap()).with_header("kind", "list"),
    )
    .unwrap();
    append(&feed, 2, 3);
    let store = sqlite_store("runtime-dead-letters").await;
    with_client(&feed, Transport::InProcess, |client| {
        let store = store.clone();
        async move {
            /// Like [`Received`], typed.
            struct ReceivedNumbered;
            impl Handler<Transaction<'static, Sqlite>, Numbered> for ReceivedNumbered {
                type Error = sqlx::Error;
                async fn handle(
                    &mut self,
                    transaction: &mut Transaction<'static, Sqlite>,
                    events: &[Event<Numbered>],
                ) -> Result<(), sqlx::Error> {
                    for event in events {
                        let data = serde_json::json!({"p": event.data.p, "i": event.data.i});
                        insert_received(transaction, event.partition, &data.to_string()).await?;
                    }
                    Ok(())
                }
            }
            let runtime = Runtime::new(client, store.clone(), "typed")
                .with_poison_policy(PoisonPolicy::DeadLetter)
                .with_headers(zeroeventhub::protocol::HeaderSelection::All);
            run_until_caught_up(&runtime, ReceivedNumbered).await;
            let mut rows = received(store.pool()).await;
            rows.retain(|row| row.i < 3);
            assert_exactly_once(rows, 3);
            let letters: Vec<(String, i64, String, String, String)> = sqlx::query_as(
                "SELECT consumer, partition, after_cursor, headers, data FROM zeh_dead_letters",
            )
            .fetch_all(store.pool())
            .await
            .unwrap();
            assert_eq!(
                letters,
                [(
                    "typed".to_owned(),
                    2,
                    "_first".to_owned(),
                    r#"{"kind":"list"}"#.to_owned(),
                    r#""two""#.to_owned()
                )]
            );
        }
    })
    .await;
}

/// Writes rows, then waits for `release` before returning; counts its calls.
struct Holding {
    entered: Arc<Notify>,
    release: Arc<Notify>,
    calls: Arc<AtomicU32>,
}

impl Holding {
    /// Tells `entered` when it holds its first page, which it lets go at
    /// `release`.
    fn new(entered: &Arc<Notify>, release: &Arc<Notify>) -> Self {
        Holding {
            entered: Arc::clone(entered),
            release: Arc::clone(release),
            calls: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl Handler<MemoryTransaction<Numbered>, Numbered> for Holding {
    type Error = BoxError;

    async fn handle(
        &mut self,
        transaction: &mut MemoryTransaction<Numbered>,
        events: &[Event<Numbered>],
    ) -> Result<(), BoxError> {
        Keep.handle(transaction, events).await?;
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_during_a_page_rolls_it_back_and_a_restart_handles_it_once() {
    let feed = feed_with(20);
    with_client(&feed, Transport::InProcess, |client| async move {
        let store = MemoryStore::new();
        let entered = Arc::new(Notify::new());
        let runtime = Runtime::new(client.clone(), store.clone(), "stopping").with_page_size(6);
        let handler = Holding::new(&entered, &Arc::new(Notify::new()));
        // Shutdown comes while the handler holds the first page.
        let shutdown = async move { entered.notified().await };
        tokio::time::timeout(LIVENESS, runtime.run_as(handler, shutdown))
            .await
            .expect("shutdown ends the run")
            .unwrap();
        assert!(store.rows().is_empty(), "the page in flight rolled back");
        assert!(store.cursors("stopping").is_empty());
        assert_eq!(runtime.stats().snapshot().pages, 0);

        let restarted = Runtime::new(client, store.clone(), "stopping").with_page_size(6);
        run_until_caught_up(&restarted, Keep).await;
        assert_exactly_once(store.rows(), 20);
    })
    .await;
}

#[tokio::test]
async fn a_stale_instance_loses_its_compare_and_set_and_its_effects_roll_back() {
    let feed = feed_with(30);
    with_client(&feed, Transport::InProcess, |client| async move {
        let store = MemoryStore::new();
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let stale = Runtime::new(client.clone(), store.clone(), "shared").with_page_size(9);
        let stale_stats = stale.stats();
        let handler = Holding::new(&entered, &release);
        let (stop, stopped) = oneshot::channel::<()>();
        let stale_run = stale.run_as(handler, async {
            let _ = stopped.await;
        });
        let takeover = async {
            // The stale instance holds its first page, written but not
            // committed; another instance handles everything meanwhile.
            entered.notified().await;
            let fresh = Runtime::new(client.clone(), store.clone(), "shared").with_page_size(9);
            run_until_caught_up(&fresh, Keep).await;
            release.notify_one();
            stale_stats.wait_for(|stats| stats.conflicts >= 1).await;
            stale_stats.wait_for(|stats| stats.caught_up).await;
            stop.send(()).unwrap();
        };
        let (result, ()) =
            tokio::time::timeout(LIVENESS, async { tokio::join!(stale_run, takeover) })
                .await
                .expect("both instances finish");
        result.unwrap();
        // The stale page rolled back: every event once.
        assert_exactly_once(store.rows(), 30);
        let stale = stale_stats.snapshot();
        assert_eq!(stale.conflicts, 1);
        assert_eq!(stale.events, 0);
    })
    .await;
}

#[tokio::test]
async fn a_feed_that_refuses_the_request_stops_the_runtime() {
    // The client says 5 partitions; the feed has 3 and answers 400.
    let feed = feed_with(1);
    let client = Client::new(feed.service(), "http://feed.test/".parse().unwrap(), 5);
    let runtime = Runtime::new(client, MemoryStore::<Numbered>::new(), "mismatch");
    let error = stopped_by_an_error(&runtime).await;
    assert!(error.is_feed(), "{error:?}");
    let cause = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<zeroeventhub::client::Error>())
        .expect("the client's error is the cause");
    assert_eq!(cause.status(), Some(http::StatusCode::BAD_REQUEST));
}
