//! What the consumer runtime costs, and how fast a partition moves.
//!
//! ```text
//! cargo run --release --features postgres --example consume_bench [-- EVENTS]
//! ```
//!
//! 1. Events/s into a database, the same inserts (one row per event, in the
//!    page's transaction, with the cursors) done by a hand-written loop and
//!    by the runtime, on SQLite (a temporary file) and on PostgreSQL
//!    (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//!    alternating three times each; the feed is a `MemoryFeed` of 4
//!    partitions reached in-process, so that the figures are the
//!    consumer's.
//! 2. Partition moves on PostgreSQL: two runtimes share 8 partitions; one
//!    has its connections killed with `pg_terminate_backend`; the time
//!    until the other owns every partition, five times.

use std::time::{Duration, Instant};

use sqlx::{Executor, PgPool, Postgres, Sqlite, SqlitePool, Transaction};
use zeroeventhub::BoxError;
use zeroeventhub::client::{Client, HttpService};
use zeroeventhub::consumer::{CursorStore, Handler, PostgresStore, Runtime, SqliteStore};
use zeroeventhub::protocol::{Cursor, Event, FeedRequest};
use zeroeventhub::server::MemoryFeed;

const PARTITIONS: u32 = 4;
const PAGE_SIZE: u32 = 1_000;

/// One insert per event, as the runtime's handler and the loop both do.
struct Inserts {
    table: String,
}

impl Handler<Transaction<'static, Sqlite>> for Inserts {
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        transaction: &mut Transaction<'static, Sqlite>,
        events: &[Event],
    ) -> Result<(), sqlx::Error> {
        insert_sqlite(transaction, &self.table, events).await
    }
}

impl Handler<Transaction<'static, Postgres>> for Inserts {
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        transaction: &mut Transaction<'static, Postgres>,
        events: &[Event],
    ) -> Result<(), sqlx::Error> {
        insert_postgres(transaction, &self.table, events).await
    }
}

async fn insert_sqlite(
    transaction: &mut Transaction<'static, Sqlite>,
    table: &str,
    events: &[Event],
) -> Result<(), sqlx::Error> {
    let sql = format!("INSERT INTO {table} (partition, data) VALUES (?, ?)");
    for event in events {
        sqlx::query(&sql)
            .bind(i64::from(event.partition))
            .bind(event.data.as_str())
            .execute(&mut **transaction)
            .await?;
    }
    Ok(())
}

async fn insert_postgres(
    transaction: &mut Transaction<'static, Postgres>,
    table: &str,
    events: &[Event],
) -> Result<(), sqlx::Error> {
    let sql = format!("INSERT INTO {table} (partition, data) VALUES ($1, $2)");
    for event in events {
        sqlx::query(&sql)
            .bind(event.partition as i32)
            .bind(event.data.as_str())
            .execute(&mut **transaction)
            .await?;
    }
    Ok(())
}

/// The consumer people write by hand: cursors in a table of their own,
/// the events and the cursors in one transaction per page.
macro_rules! hand_written_loop {
    ($client:expr, $pool:expr, $table:expr, $insert:ident, $p:literal) => {{
        let cursors_table = format!("{}_cursors", $table);
        $pool
            .execute(
                format!(
                    "CREATE TABLE {cursors_table} (partition INT PRIMARY KEY, cursor TEXT NOT NULL)"
                )
                .as_str(),
            )
            .await?;
        let mut cursors: Vec<(u32, Cursor)> =
            (0..PARTITIONS).map(|p| (p, Cursor::first())).collect();
        let upsert = format!(
            "INSERT INTO {cursors_table} (partition, cursor) VALUES ({p}1, {p}2) \
             ON CONFLICT (partition) DO UPDATE SET cursor = excluded.cursor",
            p = $p
        );
        loop {
            let request =
                FeedRequest::new(PARTITIONS, cursors.clone())?.with_page_size_hint(PAGE_SIZE);
            let page = $client.fetch_page(&request).await?;
            if !page.made_progress() {
                break;
            }
            let mut transaction = $pool.begin().await?;
            $insert(&mut transaction, $table, page.events()).await?;
            for (partition, cursor) in page.next_cursors() {
                sqlx::query(&upsert)
                    .bind(*partition as i32)
                    .bind(cursor.as_str())
                    .execute(&mut *transaction)
                    .await?;
            }
            transaction.commit().await?;
            cursors = page.next_cursors().to_vec();
        }
    }};
}

async fn run_runtime<S, St>(client: Client<S>, store: St, table: &str) -> Result<u64, BoxError>
where
    S: HttpService + Clone,
    St: CursorStore,
    Inserts: Handler<St::Transaction>,
{
    let runtime = Runtime::new(client, store, format!("bench-{table}")).with_page_size(PAGE_SIZE);
    let stats = runtime.stats();
    let caught_up = async move {
        stats.wait_for(|stats| stats.caught_up).await;
    };
    runtime
        .run(
            Inserts {
                table: table.to_owned(),
            },
            caught_up,
        )
        .await?;
    Ok(runtime.stats().snapshot().events)
}

fn client(feed: &MemoryFeed) -> Client<impl HttpService + Clone> {
    Client::builder("http://feed.bench/v1".parse().unwrap(), PARTITIONS).build_with(feed.service())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let events: u64 = std::env::args().nth(1).map_or(Ok(100_000), |n| n.parse())?;
    let feed = MemoryFeed::new(PARTITIONS);
    zeroeventhub::workload::fill(&feed, events / u64::from(PARTITIONS));
    let total = events / u64::from(PARTITIONS) * u64::from(PARTITIONS);
    println!("{total} events, {PARTITIONS} partitions, pages of {PAGE_SIZE}, one INSERT per event");

    // SQLite.
    let dir = std::env::temp_dir().join(format!("zeh-consume-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let options = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display())
        .parse::<sqlx::sqlite::SqliteConnectOptions>()?
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let sqlite = SqlitePool::connect_with(options).await?;
    let store = SqliteStore::new(sqlite.clone());
    store.migrate().await?;
    let mut figures = (Vec::new(), Vec::new());
    for round in 0..3 {
        let table = format!("loop_{round}");
        sqlite
            .execute(format!("CREATE TABLE {table} (partition INT, data TEXT)").as_str())
            .await?;
        let started = Instant::now();
        hand_written_loop!(client(&feed), sqlite, &table, insert_sqlite, "?");
        figures.0.push(rate(total, started));

        let table = format!("runtime_{round}");
        sqlite
            .execute(format!("CREATE TABLE {table} (partition INT, data TEXT)").as_str())
            .await?;
        let started = Instant::now();
        let handled = run_runtime(client(&feed), store.clone(), &table).await?;
        assert_eq!(handled, total);
        figures.1.push(rate(total, started));
    }
    report("SQLite", &figures);
    std::fs::remove_dir_all(&dir)?;

    // PostgreSQL.
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = PgPool::connect(&url).await?;
    let database = format!("zeh_consume_bench_{}", std::process::id());
    admin
        .execute(format!("CREATE DATABASE {database}").as_str())
        .await?;
    let bench_url = with_database(&url, &database);
    let postgres = PgPool::connect(&bench_url).await?;
    let store = PostgresStore::new(postgres.clone());
    store.migrate().await?;
    let mut figures = (Vec::new(), Vec::new());
    for round in 0..3 {
        let table = format!("loop_{round}");
        postgres
            .execute(format!("CREATE TABLE {table} (partition INT, data TEXT)").as_str())
            .await?;
        let started = Instant::now();
        hand_written_loop!(client(&feed), postgres, &table, insert_postgres, "$");
        figures.0.push(rate(total, started));

        let table = format!("runtime_{round}");
        postgres
            .execute(format!("CREATE TABLE {table} (partition INT, data TEXT)").as_str())
            .await?;
        let started = Instant::now();
        let handled =
            run_runtime(client(&feed), PostgresStore::new(postgres.clone()), &table).await?;
        assert_eq!(handled, total);
        figures.1.push(rate(total, started));
    }
    report("PostgreSQL", &figures);

    partition_moves(&bench_url).await?;

    postgres.close().await;
    admin
        .execute(format!("DROP DATABASE {database} WITH (FORCE)").as_str())
        .await?;
    Ok(())
}

/// Two runtimes share 8 partitions; one loses its connections; how long
/// until the other owns them all.
async fn partition_moves(url: &str) -> Result<(), BoxError> {
    const SHARED: u32 = 8;
    let feed = MemoryFeed::new(SHARED);
    let admin = PgPool::connect(url).await?;
    let mut moves = Vec::new();
    for round in 0..5 {
        let instance = |name: String| {
            let feed = feed.clone();
            let url = url.to_owned();
            async move {
                let options = url
                    .parse::<sqlx::postgres::PgConnectOptions>()?
                    .application_name(&name);
                let pool = PgPool::connect_with(options).await?;
                let client = Client::builder("http://feed.bench/v1".parse().unwrap(), SHARED)
                    .build_with(feed.service());
                let runtime = Runtime::new(client, PostgresStore::new(pool), "moves")
                    .with_poll_interval(Duration::from_millis(50));
                Ok::<_, BoxError>(runtime)
            }
        };
        let dying = instance(format!("dying-{round}")).await?;
        let staying = instance(format!("staying-{round}")).await?;
        let (dying_stats, staying_stats) = (dying.stats(), staying.stats());
        let dying_task = tokio::spawn(async move {
            dying
                .run(
                    Inserts {
                        table: "unused".into(),
                    },
                    std::future::pending(),
                )
                .await
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let staying_task = tokio::spawn(async move {
            staying
                .run(
                    Inserts {
                        table: "unused".into(),
                    },
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
        });
        // Settled: four each.
        loop {
            let (a, b) = (dying_stats.snapshot(), staying_stats.snapshot());
            if a.owned_partitions.len() == 4 && b.owned_partitions.len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let killed = Instant::now();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(format!("dying-{round}"))
        .execute(&admin)
        .await?;
        dying_task.abort();
        staying_stats
            .wait_for(|stats| stats.owned_partitions.len() == SHARED as usize)
            .await;
        moves.push(killed.elapsed());
        let _ = stop.send(());
        staying_task.await??;
    }
    moves.sort();
    println!(
        "partition move after its owner's connection is killed (ownership interval {:?}): \
         median {:.0} ms, max {:.0} ms over {} runs",
        Runtime::<(), ()>::DEFAULT_OWNERSHIP_INTERVAL,
        moves[moves.len() / 2].as_secs_f64() * 1e3,
        moves[moves.len() - 1].as_secs_f64() * 1e3,
        moves.len()
    );
    Ok(())
}

fn rate(events: u64, started: Instant) -> f64 {
    events as f64 / started.elapsed().as_secs_f64()
}

fn report(database: &str, (hand, runtime): &(Vec<f64>, Vec<f64>)) {
    let best = |figures: &[f64]| figures.iter().copied().fold(0.0, f64::max);
    println!(
        "{database}: hand-written loop {:.0} events/s, runtime {:.0} events/s (best of 3 each): \
         the runtime at {:.0}% of the loop",
        best(hand),
        best(runtime),
        100.0 * best(runtime) / best(hand)
    );
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rfind('/').map_or(base, |slash| &base[..slash]);
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}
