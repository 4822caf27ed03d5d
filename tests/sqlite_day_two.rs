//! Day two on SQLite files. The journal mode: both `migrate`s set a file in
//! another mode to WAL, say so once, leave an in-memory database alone, and
//! say what is needed when the mode cannot change. The lease: one instance
//! of a consumer name per file owns the partitions, a second one stays idle
//! and says why once, and takes over when the first releases its lease or
//! its heartbeat goes stale; two runtimes of one name over one file handle
//! every event once, with no conflicts.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool, Transaction};
use support::database;
use support::logs::Log;
use support::transport::LIVENESS;
use tokio::sync::oneshot;
use zeroeventhub::BoxError;
use zeroeventhub::client::Client;
use zeroeventhub::consumer::store::TableName;
use zeroeventhub::consumer::{CursorStore, Handler, Runtime, SqliteStore};
use zeroeventhub::protocol::{Event, RawJson};
use zeroeventhub::server::{MemoryFeed, SqliteOutbox};

const PARTITIONS: u32 = 3;

/// The partitions of an idle instance.
const NONE: [u32; 0] = [];

/// What the `migrate`s log when they set WAL on a file in `delete` mode.
const SET_WAL: &str = "journal mode from delete to WAL";

/// What an idle instance of consumer `billing` logs.
const IDLE_BILLING: &str = "another instance of consumer billing holds this database file";

/// The options of the SQLite file at `url`, which name no journal mode:
/// a connection opened with them finds the file's own.
fn options(url: &str) -> SqliteConnectOptions {
    url.parse().unwrap()
}

/// A pool of one connection on `url` that opens it in `delete` journal
/// mode, as a new file is (and as an older sqlx made it).
async fn delete_mode_pool(url: &str) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options(url).journal_mode(SqliteJournalMode::Delete))
        .await
        .unwrap()
}

/// The journal mode the pool's connection reports.
async fn journal_mode(pool: &SqlitePool) -> String {
    sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The journal mode of the file at `url`, on a new connection that names
/// none: the mode that stays with the file.
async fn file_journal_mode(url: &str) -> String {
    let mut connection = SqliteConnection::connect_with(&options(url)).await.unwrap();
    let mode = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    mode
}

#[tokio::test]
async fn the_stores_migrate_sets_a_delete_mode_file_to_wal_and_says_so_once() {
    let (log, _guard) = Log::capture();
    let url = database::sqlite_url("day-two-store-wal");
    let pool = delete_mode_pool(&url).await;
    assert_eq!(journal_mode(&pool).await, "delete");

    let store = SqliteStore::new(pool.clone());
    store.migrate().await.unwrap();
    assert_eq!(journal_mode(&pool).await, "wal");
    assert_eq!(log.count(SET_WAL), 1, "{}", log.text());
    // Once WAL, a migration has nothing to change, or to say.
    store.migrate().await.unwrap();
    assert_eq!(log.count(SET_WAL), 1, "{}", log.text());

    pool.close().await;
    assert_eq!(
        file_journal_mode(&url).await,
        "wal",
        "WAL stays with the file"
    );
}

#[tokio::test]
async fn the_outboxs_migrate_sets_a_delete_mode_file_to_wal_and_says_so_once() {
    let (log, _guard) = Log::capture();
    let url = database::sqlite_url("day-two-outbox-wal");
    let pool = delete_mode_pool(&url).await;
    assert_eq!(journal_mode(&pool).await, "delete");

    let outbox = SqliteOutbox::new(TableName::new("order_events").unwrap(), PARTITIONS);
    outbox.migrate(&pool).await.unwrap();
    assert_eq!(journal_mode(&pool).await, "wal");
    outbox.migrate(&pool).await.unwrap();
    assert_eq!(log.count(SET_WAL), 1, "{}", log.text());
    assert!(
        log.text().contains(".db"),
        "the file is named: {}",
        log.text()
    );

    pool.close().await;
    assert_eq!(
        file_journal_mode(&url).await,
        "wal",
        "WAL stays with the file"
    );
}

#[tokio::test]
async fn an_in_memory_database_keeps_its_mode_and_still_migrates() {
    let (log, _guard) = Log::capture();
    // One connection: each connection to `sqlite::memory:` is a database of
    // its own.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let store = SqliteStore::new(pool.clone());
    store.migrate().await.unwrap();
    let outbox = SqliteOutbox::new(TableName::new("order_events").unwrap(), PARTITIONS);
    outbox.migrate(&pool).await.unwrap();
    assert_eq!(journal_mode(&pool).await, "memory");
    assert_eq!(log.count("journal mode"), 0, "{}", log.text());

    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE name IN \
         ('zeh_consumer_cursors', 'zeh_dead_letters', 'zeh_consumer_cursors_lease', 'order_events')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 4);
}

#[tokio::test]
async fn a_mode_that_cannot_change_fails_the_migrations_with_what_is_needed() {
    let url = database::sqlite_url("day-two-wal-refused");
    let other = delete_mode_pool(&url).await;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(&other)
        .await
        .unwrap();
    // Another connection writes in a transaction: the file is locked.
    let mut writing = other.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut *writing)
        .await
        .unwrap();

    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options(&url).busy_timeout(Duration::from_millis(50)))
        .await
        .unwrap();
    let store = SqliteStore::new(pool.clone());
    let error = store.migrate().await.unwrap_err().to_string();
    assert!(error.contains("is in journal mode delete"), "{error}");
    assert!(error.contains("could not be set to WAL"), "{error}");
    assert!(error.contains("no other connection"), "{error}");
    let outbox = SqliteOutbox::new(TableName::new("order_events").unwrap(), PARTITIONS);
    let error = outbox.migrate(&pool).await.unwrap_err().to_string();
    assert!(error.contains("could not be set to WAL"), "{error}");

    // SQLite refuses the change in a transaction, too.
    writing.rollback().await.unwrap();
    let mut transaction = pool.begin().await.unwrap();
    let error = outbox.migrate(&mut *transaction).await.unwrap_err();
    assert!(
        error.to_string().contains("outside a transaction"),
        "{error}"
    );
    transaction.rollback().await.unwrap();

    // Free again, the file is set to WAL; then a migration in a
    // transaction has nothing to change, and runs as before.
    store.migrate().await.unwrap();
    assert_eq!(journal_mode(&pool).await, "wal");
    let mut transaction = pool.begin().await.unwrap();
    outbox.migrate(&mut *transaction).await.unwrap();
    transaction.commit().await.unwrap();
}

/// A pool of its own on `url`, as another process would open the file.
async fn pool_on(url: &str) -> SqlitePool {
    SqlitePool::connect_with(options(url)).await.unwrap()
}

#[tokio::test]
async fn a_second_instance_stays_idle_says_why_once_and_takes_over_at_a_release() {
    let (log, _guard) = Log::capture();
    let url = database::sqlite_url("day-two-lease");
    let first = SqliteStore::new(pool_on(&url).await);
    first.migrate().await.unwrap();
    let second = SqliteStore::new(pool_on(&url).await);
    second.migrate().await.unwrap();
    let every = (0..PARTITIONS).collect::<Vec<_>>();

    assert_eq!(first.claim("billing", PARTITIONS).await.unwrap(), every);
    for _ in 0..3 {
        assert_eq!(second.claim("billing", PARTITIONS).await.unwrap(), NONE);
        // The holder's claims refresh its lease.
        assert_eq!(first.claim("billing", PARTITIONS).await.unwrap(), every);
    }
    assert_eq!(log.count(IDLE_BILLING), 1, "{}", log.text());
    assert!(log.text().contains("stays idle"), "{}", log.text());
    assert!(log.text().contains("takes over"), "{}", log.text());

    // The lease is per consumer name.
    assert_eq!(second.claim("audit", PARTITIONS).await.unwrap(), every);

    // A release gives it up: the other takes over at its next claim, and
    // the first is now the idle one, which says so once.
    first.release("billing").await.unwrap();
    assert_eq!(second.claim("billing", PARTITIONS).await.unwrap(), every);
    assert_eq!(first.claim("billing", PARTITIONS).await.unwrap(), NONE);
    assert_eq!(first.claim("billing", PARTITIONS).await.unwrap(), NONE);
    assert_eq!(log.count(IDLE_BILLING), 2, "{}", log.text());

    // A clone is the same instance, holding the same lease.
    let clone = second.clone();
    assert_eq!(clone.claim("billing", PARTITIONS).await.unwrap(), every);
}

#[tokio::test]
async fn a_holder_whose_heartbeat_is_stale_is_taken_over() {
    let url = database::sqlite_url("day-two-stale");
    let tables = || {
        (
            TableName::new("app_cursors").unwrap(),
            TableName::new("app_dead_letters").unwrap(),
        )
    };
    let (cursors, dead_letters) = tables();
    let crashed = SqliteStore::new(pool_on(&url).await).with_tables(cursors, dead_letters);
    crashed.migrate().await.unwrap();
    let (cursors, dead_letters) = tables();
    let restarted = SqliteStore::new(pool_on(&url).await).with_tables(cursors, dead_letters);
    let every = (0..PARTITIONS).collect::<Vec<_>>();

    assert_eq!(crashed.claim("billing", PARTITIONS).await.unwrap(), every);
    assert_eq!(restarted.claim("billing", PARTITIONS).await.unwrap(), NONE);

    // The holder crashed: no release, and no claim since. Its heartbeat (in
    // the lease table, named after the cursor table) is aged past the
    // timeout rather than waited for.
    let stale = i64::try_from(SqliteStore::LEASE_TIMEOUT.as_millis()).unwrap() + 1_000;
    let moved = sqlx::query(
        "UPDATE app_cursors_lease SET heartbeat = heartbeat - ? WHERE consumer = 'billing'",
    )
    .bind(stale)
    .execute(restarted.pool())
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(moved, 1);
    assert_eq!(restarted.claim("billing", PARTITIONS).await.unwrap(), every);
    assert_eq!(crashed.claim("billing", PARTITIONS).await.unwrap(), NONE);

    let default_tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name LIKE 'zeh%'")
            .fetch_one(restarted.pool())
            .await
            .unwrap();
    assert_eq!(default_tables, 0, "with_tables names the lease table too");
}

/// Inserts each event's data into `received`, in the page's transaction.
struct Received;

impl Handler<Transaction<'static, Sqlite>> for Received {
    type Error = BoxError;

    async fn handle(
        &mut self,
        transaction: &mut Transaction<'static, Sqlite>,
        events: &[Event],
    ) -> Result<(), BoxError> {
        for event in events {
            sqlx::query("INSERT INTO received (partition, data) VALUES (?, ?)")
                .bind(i64::from(event.partition))
                .bind(event.data.as_str())
                .execute(&mut **transaction)
                .await?;
        }
        Ok(())
    }
}

/// Appends `{"p":P,"i":I}` for each I of `indices` to every partition.
fn append(feed: &MemoryFeed, indices: std::ops::Range<u64>) {
    for i in indices {
        for p in 0..PARTITIONS {
            let data = RawJson::from_serialize(&serde_json::json!({"p": p, "i": i})).unwrap();
            feed.append(Event::new(p, data)).unwrap();
        }
    }
}

/// Every row of `received` as (partition, index), checking that there is
/// no duplicate.
async fn received(pool: &SqlitePool) -> BTreeSet<(u32, u64)> {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT partition, data FROM received")
        .fetch_all(pool)
        .await
        .unwrap();
    let count = rows.len();
    let seen: BTreeSet<(u32, u64)> = rows
        .into_iter()
        .map(|(partition, data)| {
            let value: serde_json::Value = serde_json::from_str(&data).unwrap();
            assert_eq!(value["p"].as_i64(), Some(partition));
            (partition as u32, value["i"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(seen.len(), count, "no event stored twice");
    seen
}

/// Every (partition, index) of the first `per_partition` events of each
/// partition.
fn every_event(per_partition: u64) -> BTreeSet<(u32, u64)> {
    (0..PARTITIONS)
        .flat_map(|p| (0..per_partition).map(move |i| (p, i)))
        .collect()
}

/// One runtime of consumer `billing` on its own pool of the file at `url`,
/// run until its shutdown signal: the signal and the run.
async fn start_billing(
    url: &str,
    feed: &MemoryFeed,
) -> (
    zeroeventhub::consumer::Stats,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), zeroeventhub::consumer::Error>>,
) {
    let store = SqliteStore::new(pool_on(url).await);
    store.migrate().await.unwrap();
    let client = Client::builder("http://feed.test/v1".parse().unwrap(), PARTITIONS)
        .build_with(feed.service());
    let runtime = Runtime::new(client, store, "billing")
        .with_page_size(25)
        .with_ownership_interval(Duration::from_millis(50));
    let stats = runtime.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        runtime
            .run(Received, async {
                let _ = stopped.await;
            })
            .await
    });
    (stats, stop, run)
}

/// Waits, in time, until the rows of `received` are `expected`.
async fn wait_for_rows(pool: &SqlitePool, expected: &BTreeSet<(u32, u64)>) {
    let arrived = async {
        while received(pool).await != *expected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(LIVENESS, arrived)
        .await
        .expect("every event arrives in time");
}

/// Waits, in time, until `condition` holds.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let reached = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(LIVENESS, reached)
        .await
        .unwrap_or_else(|_| panic!("in time: {what}"));
}

#[tokio::test]
async fn two_runtimes_of_one_name_on_one_file_handle_every_event_once_without_conflicts() {
    let (log, _guard) = Log::capture();
    let url = database::sqlite_url("day-two-runtimes");
    let pool = pool_on(&url).await;
    sqlx::query("CREATE TABLE received (partition INTEGER NOT NULL, data TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let feed = MemoryFeed::new(PARTITIONS);
    append(&feed, 0..200);
    let every = (0..PARTITIONS).collect::<Vec<_>>();

    let ((first, stop_first, run_first), (second, stop_second, run_second)) =
        tokio::join!(start_billing(&url, &feed), start_billing(&url, &feed));
    wait_for_rows(&pool, &every_event(200)).await;
    // The figures follow the commits; the warning, the idle one's first claim.
    wait_until("the figures count every event", || {
        first.snapshot().events + second.snapshot().events == 600
    })
    .await;
    wait_until("the idle one says why", || log.count(IDLE_BILLING) == 1).await;
    let first_is_active = first.snapshot().owned_partitions == every;
    let (active, idle) = if first_is_active {
        (first.snapshot(), second.snapshot())
    } else {
        (second.snapshot(), first.snapshot())
    };
    assert_eq!(active.owned_partitions, every);
    assert_eq!(active.events, 600);
    assert_eq!(active.conflicts, 0);
    assert_eq!(idle.owned_partitions, NONE);
    assert_eq!(idle.events, 0);
    assert_eq!(idle.pages, 0);
    assert_eq!(idle.conflicts, 0, "the idle one never raced: {idle:?}");

    // The active one stops and releases its lease; the idle one takes over
    // and goes on from the cursors.
    let (stop_active, run_active, stop_idle, run_idle, idle_stats) = if first_is_active {
        (stop_first, run_first, stop_second, run_second, second)
    } else {
        (stop_second, run_second, stop_first, run_first, first)
    };
    stop_active.send(()).unwrap();
    run_active.await.unwrap().unwrap();
    append(&feed, 200..300);
    wait_for_rows(&pool, &every_event(300)).await;
    let took_over =
        tokio::time::timeout(LIVENESS, idle_stats.wait_for(|stats| stats.events == 300))
            .await
            .expect("the figures count every event in time");
    assert_eq!(took_over.owned_partitions, every);
    assert_eq!(took_over.conflicts, 0);
    assert_eq!(log.count(IDLE_BILLING), 1, "{}", log.text());
    stop_idle.send(()).unwrap();
    run_idle.await.unwrap().unwrap();
}
