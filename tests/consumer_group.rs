//! Several instances of one consumer on PostgreSQL: they share the
//! partitions through advisory locks, a dead instance's partitions move to
//! the others, a new instance gets its share, and an instance that lost a
//! partition without knowing it is fenced by the cursors' compare-and-set.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use support::database;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use zeroeventhub::BoxError;
use zeroeventhub::client::Client;
use zeroeventhub::consumer::{Error, Handler, PostgresStore, Runtime, Stats};
use zeroeventhub::protocol::{Event, RawJson};
use zeroeventhub::server::MemoryFeed;

/// How long ownership may take to settle: the bound.
const MOVE_BOUND: Duration = Duration::from_secs(10);
const CLAIMS: Duration = Duration::from_millis(300);

/// Inserts each event into `received`; the first call may wait for a
/// signal after its inserts.
struct Received {
    hold: Option<(Arc<Notify>, Arc<Notify>)>,
}

impl Handler<Transaction<'static, Postgres>> for Received {
    type Error = BoxError;

    async fn handle(
        &mut self,
        transaction: &mut Transaction<'static, Postgres>,
        events: &[Event],
    ) -> Result<(), BoxError> {
        for event in events {
            sqlx::query("INSERT INTO received (partition, data) VALUES ($1, $2)")
                .bind(event.partition as i32)
                .bind(event.data.as_str())
                .execute(&mut **transaction)
                .await?;
        }
        if let Some((entered, release)) = self.hold.take() {
            entered.notify_one();
            release.notified().await;
        }
        Ok(())
    }
}

fn append(feed: &MemoryFeed, partition: u32, index: u64) {
    let data = RawJson::from_serialize(&serde_json::json!({"p": partition, "i": index})).unwrap();
    feed.append(Event::new(partition, data)).unwrap();
}

/// A pool whose connections say which instance they belong to.
async fn pool(url: &str, instance: &str) -> PgPool {
    let options = url
        .parse::<PgConnectOptions>()
        .unwrap()
        .application_name(instance);
    PgPoolOptions::new()
        .max_connections(3)
        .connect_with(options)
        .await
        .unwrap()
}

/// A running instance of consumer "group".
struct Instance {
    stats: Stats,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), Error>>,
}

async fn start(feed: &MemoryFeed, url: &str, instance: &str, handler: Received) -> Instance {
    let client = Client::builder(
        "http://feed.test/v1".parse().unwrap(),
        feed.partition_count(),
    )
    .build_with(feed.service());
    let store = PostgresStore::new(pool(url, instance).await);
    store.migrate().await.unwrap();
    let runtime = Runtime::new(client, store, "group")
        .with_page_size(50)
        .with_poll_interval(Duration::from_millis(20))
        .with_ownership_interval(CLAIMS);
    let stats = runtime.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        runtime
            .run(handler, async {
                let _ = stopped.await;
            })
            .await
    });
    Instance { stats, stop, task }
}

impl Instance {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Waits until `instances` own every partition of `partitions` between
/// them, each its even share, no partition twice.
async fn wait_for_shares(instances: &[&Instance], partitions: u32) {
    let settled = async {
        loop {
            let owned: Vec<Vec<u32>> = instances
                .iter()
                .map(|instance| instance.stats.snapshot().owned_partitions)
                .collect();
            let all: BTreeSet<u32> = owned.iter().flatten().copied().collect();
            let total: usize = owned.iter().map(Vec::len).sum();
            let fair = partitions as usize / instances.len();
            if total == partitions as usize
                && all.len() == total
                && owned.iter().all(|share| share.len() >= fair)
            {
                return owned;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let owned = tokio::time::timeout(MOVE_BOUND, settled)
        .await
        .expect("ownership settles within the bound");
    println!("shares: {owned:?}");
}

/// Kills every connection of `instance` with `pg_terminate_backend`.
async fn terminate(admin: &PgPool, instance: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(instance)
    .fetch_one(admin)
    .await
    .unwrap()
}

async fn received(pool: &PgPool) -> Vec<(i32, String)> {
    sqlx::query_as("SELECT partition, data FROM received")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Every event of `per_partition` per partition, once each.
fn assert_exactly_once(rows: Vec<(i32, String)>, partitions: u32, per_partition: u64) {
    let mut seen = BTreeSet::new();
    for (partition, data) in &rows {
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["p"].as_i64(), Some(i64::from(*partition)));
        assert!(
            seen.insert((*partition as u32, value["i"].as_u64().unwrap())),
            "{data} stored twice"
        );
    }
    let expected: BTreeSet<(u32, u64)> = (0..partitions)
        .flat_map(|p| (0..per_partition).map(move |i| (p, i)))
        .collect();
    assert_eq!(seen.len(), expected.len());
    assert_eq!(seen, expected);
}

async fn setup() -> (String, PgPool) {
    let database = database::postgres().await;
    let admin = pool(&database.url, "test").await;
    sqlx::query("CREATE TABLE received (partition INT NOT NULL, data TEXT NOT NULL)")
        .execute(&admin)
        .await
        .unwrap();
    (database.url, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_eight_partitions_through_a_death_and_a_join() {
    const PARTITIONS: u32 = 8;
    let (url, admin) = setup().await;
    let feed = MemoryFeed::new(PARTITIONS);

    // The feed keeps appending through it all.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let feed = feed.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut index = 0;
            while !stop.load(Ordering::Relaxed) {
                for partition in 0..PARTITIONS {
                    append(&feed, partition, index);
                }
                index += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            index
        })
    };

    let a = start(&feed, &url, "instance-a", Received { hold: None }).await;
    let b = start(&feed, &url, "instance-b", Received { hold: None }).await;
    let c = start(&feed, &url, "instance-c", Received { hold: None }).await;
    wait_for_shares(&[&a, &b, &c], PARTITIONS).await;

    // A dies: its connections are killed, and the process with them.
    assert!(terminate(&admin, "instance-a").await >= 1);
    a.task.abort();
    wait_for_shares(&[&b, &c], PARTITIONS).await;

    // D joins and gets its share.
    let d = start(&feed, &url, "instance-d", Received { hold: None }).await;
    wait_for_shares(&[&b, &c, &d], PARTITIONS).await;

    stop.store(true, Ordering::Relaxed);
    let per_partition = producer.await.unwrap();
    for instance in [&b, &c, &d] {
        let caught_up = instance.stats.wait_for(|stats| stats.caught_up);
        tokio::time::timeout(MOVE_BOUND, caught_up)
            .await
            .expect("every instance catches up");
    }
    // The last pages may still be committing: wait for the count.
    let expected = u64::from(PARTITIONS) * per_partition;
    let complete = async {
        while (received(&admin).await.len() as u64) < expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(MOVE_BOUND, complete)
        .await
        .expect("every event arrives");
    for instance in [b, c, d] {
        instance.stop().await;
    }
    assert_exactly_once(received(&admin).await, PARTITIONS, per_partition);
    // Stopped instances let their partitions go.
    let (locks,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(locks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_fails_its_commit_and_its_effects_roll_back() {
    const PARTITIONS: u32 = 2;
    let (url, admin) = setup().await;
    let feed = MemoryFeed::new(PARTITIONS);
    for index in 0..40 {
        for partition in 0..PARTITIONS {
            append(&feed, partition, index);
        }
    }

    // The stale instance writes its first page and holds it.
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let stale = start(
        &feed,
        &url,
        "stale",
        Received {
            hold: Some((Arc::clone(&entered), Arc::clone(&release))),
        },
    )
    .await;
    tokio::time::timeout(MOVE_BOUND, entered.notified())
        .await
        .expect("the stale instance starts a page");

    // Its lock session dies; it does not know, being in its handler.
    let (session,): (i32,) = sqlx::query_as(
        "SELECT DISTINCT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND a.application_name = 'stale'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(session)
        .execute(&admin)
        .await
        .unwrap();

    // Another instance takes every partition and handles everything.
    let fresh = start(&feed, &url, "fresh", Received { hold: None }).await;
    let done = fresh
        .stats
        .wait_for(|stats| stats.caught_up && stats.events == 80);
    tokio::time::timeout(MOVE_BOUND, done)
        .await
        .expect("the new owner handles every event");

    // The stale page's compare-and-set fails; its inserts roll back.
    release.notify_one();
    let fenced = stale.stats.wait_for(|stats| stats.conflicts >= 1);
    tokio::time::timeout(MOVE_BOUND, fenced)
        .await
        .expect("the stale commit is refused");
    assert_eq!(stale.stats.snapshot().events, 0);
    stale.stop().await;
    fresh.stop().await;
    assert_exactly_once(received(&admin).await, PARTITIONS, 40);
}
