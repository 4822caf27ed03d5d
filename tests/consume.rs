//! The `consume` example, run as a program against a feed served over
//! loopback HTTP: SIGINT and SIGTERM stop it cleanly, `--until-idle` ends
//! it once caught up, and several processes of one `--name` on PostgreSQL
//! share the partitions, one of them killed on the way, with every event
//! in `received` once.

mod support;

use std::collections::BTreeSet;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{PgPool, SqlitePool};
use support::database;
use support::transport::LIVENESS;
use tokio::process::{Child, Command};
use zeroeventhub::protocol::{Event, RawJson};
use zeroeventhub::server::MemoryFeed;

/// Appends `{"p":P,"i":I}` for `indices` to every partition of `feed`.
fn append(feed: &MemoryFeed, indices: std::ops::Range<u64>) {
    for index in indices {
        for partition in 0..feed.partition_count() {
            let data =
                RawJson::from_serialize(&serde_json::json!({"p": partition, "i": index})).unwrap();
            feed.append(Event::new(partition, data)).unwrap();
        }
    }
}

/// Serves `feed` at `/feed` on a free loopback port; returns its URL.
async fn serve(feed: &MemoryFeed) -> String {
    let app = axum::Router::new().route_service("/feed", feed.service());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/feed")
}

/// Starts `consume` reading `url` into `database` as consumer `name`.
fn start(url: &str, partitions: u32, database: &str, name: &str, extra: &[&str]) -> Child {
    Command::new(support::examples::binary("consume"))
        .arg(url)
        .args(["--partitions", &partitions.to_string()])
        .args(["--database", database, "--name", name])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("consume starts")
}

/// Waits for `child` to exit; its status and the events it says it
/// handled (its last line on stderr).
async fn finish(child: Child) -> (ExitStatus, u64) {
    let output = tokio::time::timeout(LIVENESS, child.wait_with_output())
        .await
        .expect("consume exits in time")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let events = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("consume: "))
        .find_map(|figures| figures.split_once(" events in "))
        .and_then(|(events, _)| events.parse().ok())
        .unwrap_or_else(|| panic!("consume prints its figures: {stderr}"));
    (output.status, events)
}

/// Sends `signal` (`-INT`, `-TERM`, `-KILL`) to `child`.
fn kill(child: &Child, signal: &str) {
    let pid = child.id().expect("a running child").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Checks that `rows` (partition, data) hold every event of `partitions`
/// x `per_partition` once.
fn assert_exactly_once(rows: Vec<(i64, String)>, partitions: u32, per_partition: u64) {
    let mut seen = BTreeSet::new();
    for (partition, data) in &rows {
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["p"].as_i64(), Some(*partition), "{data}");
        assert!(
            seen.insert((*partition, value["i"].as_u64().unwrap())),
            "{data} received twice"
        );
    }
    let expected: BTreeSet<(i64, u64)> = (0..i64::from(partitions))
        .flat_map(|p| (0..per_partition).map(move |i| (p, i)))
        .collect();
    assert_eq!(seen.len(), expected.len(), "events received");
    assert_eq!(seen, expected);
}

/// Polls until `count` reaches at least `at_least`.
async fn wait_for_rows<F, Fut>(mut count: F, at_least: i64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = i64>,
{
    let reached = async {
        while count().await < at_least {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(LIVENESS, reached)
        .await
        .expect("rows arrive in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_stop_it_cleanly_and_until_idle_ends_it_once_caught_up_on_sqlite() {
    const PARTITIONS: u32 = 3;
    const PER_PARTITION: u64 = 3_000;
    let feed = MemoryFeed::new(PARTITIONS);
    append(&feed, 0..PER_PARTITION);
    let url = serve(&feed).await;
    let database = database::sqlite_url("consume-signals");
    let args = ["--page-size", "20"];

    // Stopped twice in the middle of the work, by each signal...
    let mut handled = 0;
    for (signal, after) in [("-INT", 1), ("-TERM", 1_000)] {
        let child = start(&url, PARTITIONS, &database, "signals", &args);
        let pool = SqlitePool::connect_with(database.parse::<SqliteConnectOptions>().unwrap())
            .await
            .unwrap();
        wait_for_rows(
            || async {
                sqlx::query_scalar("SELECT count(*) FROM received")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0)
            },
            after,
        )
        .await;
        kill(&child, signal);
        let (status, events) = finish(child).await;
        assert!(status.success(), "{signal}: {status}");
        handled += events;
        pool.close().await;
    }
    assert!(handled < u64::from(PARTITIONS) * PER_PARTITION, "{handled}");

    // ...then run to the end.
    let child = start(
        &url,
        PARTITIONS,
        &database,
        "signals",
        &["--page-size", "500", "--wait", "1", "--until-idle"],
    );
    let (status, events) = finish(child).await;
    assert!(status.success(), "{status}");
    assert_eq!(handled + events, u64::from(PARTITIONS) * PER_PARTITION);

    let pool = SqlitePool::connect_with(database.parse::<SqliteConnectOptions>().unwrap())
        .await
        .unwrap();
    let rows = sqlx::query_as("SELECT partition, data FROM received")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_exactly_once(rows, PARTITIONS, PER_PARTITION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_of_one_name_share_the_partitions_on_postgres_through_a_kill() {
    const PARTITIONS: u32 = 8;
    let feed = MemoryFeed::new(PARTITIONS);
    append(&feed, 0..200);
    let url = serve(&feed).await;
    let database = database::postgres().await;
    let pool = PgPool::connect(&database.url).await.unwrap();

    // The feed keeps growing while the consumers come and go.
    let appended = Arc::new(AtomicU64::new(200));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (feed, appended, stop) = (feed.clone(), Arc::clone(&appended), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let next = appended.load(Ordering::Relaxed);
                append(&feed, next..next + 1);
                appended.store(next + 1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let args = ["--page-size", "100", "--wait", "1", "--until-idle"];
    let group: Vec<Child> = (0..3)
        .map(|_| start(&url, PARTITIONS, &database.url, "group", &args))
        .collect();
    let count = || async {
        sqlx::query_scalar("SELECT count(*) FROM received")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    // Every process owns partitions (its member lock and at least one
    // partition lock on its session) before the events are counted, so that
    // each has a share to work on however slowly it started.
    let owners = || async {
        sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pid FROM pg_locks \
             WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             GROUP BY pid HAVING count(*) >= 2) AS owning",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0)
    };
    wait_for_rows(owners, 3).await;
    wait_for_rows(count, 2_000).await;

    // One dies without a word; the others take its partitions.
    let mut group = group.into_iter();
    let killed = group.next().unwrap();
    kill(&killed, "-KILL");
    let status = tokio::time::timeout(LIVENESS, killed.wait_with_output())
        .await
        .expect("a killed process exits")
        .unwrap()
        .status;
    assert!(!status.success());
    let before = count().await;
    wait_for_rows(count, before + 1_000).await;

    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let mut survivors = 0;
    for child in group {
        let (status, events) = finish(child).await;
        assert!(status.success(), "{status}");
        // Each survivor had a share of the partitions.
        assert!(events > 0);
        survivors += 1;
    }
    assert_eq!(survivors, 2);

    let rows: Vec<(i32, String)> = sqlx::query_as("SELECT partition, data FROM received")
        .fetch_all(&pool)
        .await
        .unwrap();
    let rows = rows
        .into_iter()
        .map(|(partition, data)| (i64::from(partition), data))
        .collect();
    assert_exactly_once(rows, PARTITIONS, appended.load(Ordering::Relaxed));
}
