//! Chaos: 1,000 faults of four kinds while the feed keeps appending, and
//! the consumer's SQLite table still ends with every event exactly once.
//!
//! The kinds: the connection cut in the middle of a page (a transport
//! whose bodies break off), the handler failing after its inserts, the
//! runtime dropped wherever it is and a new one started (a process
//! restart), and the store's commit failing.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use support::database;
use support::faults::{Cutting, Fault, FaultPlan};
use zeroeventhub::BoxError;
use zeroeventhub::client::Client;
use zeroeventhub::consumer::{
    CursorChange, CursorStore, DeadLetter, Handler, Runtime, SqliteStore, StoreError,
};
use zeroeventhub::protocol::{Cursor, Event, RawJson};
use zeroeventhub::server::MemoryFeed;

const PARTITIONS: u32 = 4;
const FAULTS: usize = 1_000;
/// The chance, in percent, of a fault at each chance of one.
const PERCENT: u64 = 15;

/// Inserts each event into `received`, then fails when the plan says so.
struct Received {
    plan: FaultPlan,
}

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
        self.maybe_fail()
    }
}

impl Received {
    /// Fails after the inserts, when the plan says so.
    fn maybe_fail(&self) -> Result<(), BoxError> {
        if self.plan.inject(Fault::Handler, PERCENT) {
            return Err("injected handler failure".into());
        }
        Ok(())
    }
}

/// A store whose commits fail when the plan says so: half of them before
/// committing (rolled back), half after (committed, yet reported as failed,
/// as when the connection drops during COMMIT).
struct FlakyStore<St> {
    inner: St,
    plan: FaultPlan,
}

impl<St: CursorStore> CursorStore for FlakyStore<St> {
    type Transaction = St::Transaction;

    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        self.inner.begin().await
    }

    async fn load(
        &self,
        consumer: &str,
        partitions: &[u32],
    ) -> Result<Vec<(u32, Cursor)>, StoreError> {
        self.inner.load(consumer, partitions).await
    }

    async fn save(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        changes: &[CursorChange],
    ) -> Result<(), StoreError> {
        self.inner.save(transaction, consumer, changes).await
    }

    async fn dead_letter(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        self.inner.dead_letter(transaction, consumer, letter).await
    }

    async fn commit(&self, transaction: Self::Transaction) -> Result<(), StoreError> {
        if !self.plan.inject(Fault::Commit, PERCENT) {
            return self.inner.commit(transaction).await;
        }
        if self.plan.below(2) == 0 {
            drop(transaction);
        } else {
            self.inner.commit(transaction).await?;
        }
        Err(StoreError::database("injected commit failure"))
    }

    async fn claim(&self, consumer: &str, partition_count: u32) -> Result<Vec<u32>, StoreError> {
        self.inner.claim(consumer, partition_count).await
    }

    async fn release(&self, consumer: &str) -> Result<(), StoreError> {
        self.inner.release(consumer).await
    }
}

/// Appends small bursts of `{"p":P,"i":I}` until told to stop; returns how
/// many events each partition got.
async fn produce(feed: MemoryFeed, stop: Arc<AtomicBool>) -> u64 {
    let mut index = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..2 {
            for partition in 0..PARTITIONS {
                let data =
                    RawJson::from_serialize(&serde_json::json!({"p": partition, "i": index}))
                        .unwrap();
                feed.append(Event::new(partition, data)).unwrap();
            }
            index += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    index
}

/// Every row of `received`, (partition, data).
async fn rows(pool: &SqlitePool) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT partition, data FROM received")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_faults_and_every_event_exactly_once() {
    let options = database::sqlite_url("chaos")
        .parse::<SqliteConnectOptions>()
        .unwrap()
        .synchronous(SqliteSynchronous::Normal);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    sqlx::query("CREATE TABLE received (partition INTEGER NOT NULL, data TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let sqlite = SqliteStore::new(pool.clone());
    sqlite.migrate().await.unwrap();
    // Every "process" makes its store anew over the same database.
    let store = move || sqlite.clone();

    let started = std::time::Instant::now();
    let plan = FaultPlan::new(FAULTS, 0x5eed_cafe);
    let feed = MemoryFeed::new(PARTITIONS);
    let stop = Arc::new(AtomicBool::new(false));
    let mut producer = tokio::spawn(produce(feed.clone(), Arc::clone(&stop)));

    // Each turn is one "process": a new client, store and runtime over the
    // same database, dropped after a random while (a restart fault) unless
    // the work is done. Bounded: the faults come at a steady rate.
    let mut expected = None;
    for turn in 0.. {
        assert!(turn < 20_000, "the chaos test makes progress");
        if plan.done() {
            stop.store(true, Ordering::Relaxed);
        }
        if expected.is_none() && producer.is_finished() {
            expected = Some(u64::from(PARTITIONS) * (&mut producer).await.unwrap());
            break;
        }
        let client = Client::builder("http://feed.test/v1".parse().unwrap(), PARTITIONS)
            .max_attempts(1)
            .build_with(Cutting::new(feed.service(), plan.clone(), PERCENT));
        let store = FlakyStore {
            inner: store(),
            plan: plan.clone(),
        };
        let runtime = Runtime::new(client, store, "chaos")
            .with_page_size(40)
            .with_poll_interval(Duration::from_millis(1))
            .with_backoff(Duration::from_millis(1), Duration::from_millis(4));
        let lifetime = Duration::from_millis(3 + plan.below(25));
        let handler = Received { plan: plan.clone() };
        if let Ok(result) =
            tokio::time::timeout(lifetime, runtime.run(handler, std::future::pending())).await
        {
            panic!("the runtime stopped by itself: {result:?}");
        }
        if !plan.done() {
            plan.record(Fault::Restart);
        }
    }
    let expected = expected.unwrap();

    // The faults are over: one last runtime catches up with the feed.
    let client = Client::builder("http://feed.test/v1".parse().unwrap(), PARTITIONS)
        .build_with(feed.service());
    let runtime = Runtime::new(client, store(), "chaos").with_page_size(500);
    let stats = runtime.stats();
    let watched = stats.clone();
    let done = async move {
        stats.wait_for(|stats| stats.caught_up).await;
    };
    let caught_up = tokio::time::timeout(
        Duration::from_secs(30),
        runtime.run(Received { plan: plan.clone() }, done),
    )
    .await;
    assert!(
        caught_up.is_ok(),
        "the last runtime catches up: {:?}",
        watched.snapshot()
    );
    caught_up.unwrap().unwrap();

    let rows = rows(&pool).await;
    assert_eq!(rows.len() as u64, expected);
    let mut seen = BTreeSet::new();
    for (partition, data) in rows {
        let value: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(value["p"].as_i64(), Some(partition));
        assert!(
            seen.insert((partition, value["i"].as_u64().unwrap())),
            "event {data} stored twice"
        );
    }
    let per_partition = expected / u64::from(PARTITIONS);
    let complete: BTreeSet<(i64, u64)> = (0..i64::from(PARTITIONS))
        .flat_map(|p| (0..per_partition).map(move |i| (p, i)))
        .collect();
    assert_eq!(seen, complete, "every event, once");

    assert!(plan.injected() >= FAULTS, "{} faults", plan.injected());
    for kind in [
        Fault::CutMidPage,
        Fault::Handler,
        Fault::Restart,
        Fault::Commit,
    ] {
        assert!(
            plan.count(kind) >= 50,
            "{kind:?}: {} faults",
            plan.count(kind)
        );
    }
    println!(
        "{expected} events, {} faults in {:.1} s: {} cuts, {} handler, {} restarts, {} commits",
        plan.injected(),
        started.elapsed().as_secs_f64(),
        plan.count(Fault::CutMidPage),
        plan.count(Fault::Handler),
        plan.count(Fault::Restart),
        plan.count(Fault::Commit),
    );
}
