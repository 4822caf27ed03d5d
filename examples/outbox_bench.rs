//! The database feeds' benchmark: reading, appending and long polling, each
//! beside its comparison measured in the same run, with the protocol's
//! standard workload (2 partitions).
//!
//! ```text
//! cargo run --release --example outbox_bench --features postgres -- \
//!     [--postgres postgres://postgres@127.0.0.1:5432/test] [--events 250000]
//!     [--appends 2000] [--consumers 100] [--receipts 200]
//! ```
//!
//! - End to end: our client reads every event (`--events` per partition)
//!   from `_first` with `pagesizehint=10000`, over loopback HTTP from a
//!   `PostgresFeed`, then from a `SqliteFeed`; beside it, a bare sqlx
//!   streaming `SELECT` of the same rows from PostgreSQL.
//! - Append: 4 writers, one event per transaction (`--appends` each), with
//!   the outbox writer (notifying in the transaction, and
//!   `NotifyAfterCommit`) and with a plain `INSERT` of the same row into a
//!   table of the same schema and rows, alternated over 5
//!   rounds (median).
//! - Append to receipt: `--consumers` clients long polling a `PostgresFeed`
//!   while one writer commits `--receipts` events, 50 ms apart; the time
//!   from the start of each commit to each consumer's receipt. Once more
//!   while `prune` runs every 10 ms (keeping the newest 1,000 rows of each
//!   partition, in batches of 1,000), deleting the loaded rows.
//!
//! It works in a database `zeh_outbox_bench` of the PostgreSQL server
//! (dropped and created again) and in a SQLite file under `target/`.

use std::collections::HashMap;
use std::future::Future;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{
    ColumnIndex, Connection, Database, Decode, Encode, Executor, IntoArguments, PgConnection,
    PgPool, Pool, Row, SqlitePool, Type,
};
use zeroeventhub::client::Client;
use zeroeventhub::outbox::Retention;
use zeroeventhub::protocol::{Cursor, FeedItem, FeedRequest};
use zeroeventhub::server::{
    FeedReader, FeedService, NotifyAfterCommit, OutboxEvent, PostgresOutbox, Server, SqliteOutbox,
    TableName,
};
use zeroeventhub::workload;

#[path = "support/outbox.rs"]
mod outbox;

use outbox::{SqlOutbox, commit};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const PARTITIONS: u32 = 2;
const PAGE_SIZE: u32 = 10_000;
const WRITERS: usize = 4;
/// Rounds of each append series, alternated; the median is reported.
const ROUNDS: usize = 5;
const DATABASE: &str = "zeh_outbox_bench";

struct Options {
    postgres: String,
    events: u64,
    appends: u64,
    consumers: usize,
    receipts: u64,
}

fn parse_options() -> Result<Options, BoxError> {
    let mut options = Options {
        postgres: "postgres://postgres@127.0.0.1:5432/test".to_owned(),
        events: 250_000,
        appends: 2_000,
        consumers: 100,
        receipts: 200,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--postgres" => options.postgres = value,
            "--events" => options.events = value.parse()?,
            "--appends" => options.appends = value.parse()?,
            "--consumers" => options.consumers = value.parse()?,
            "--receipts" => options.receipts = value.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    match parse_options().and_then(|options| runtime.block_on(run(&options))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("outbox_bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options) -> Result<(), BoxError> {
    let pg_url = fresh_database(&options.postgres).await?;
    // No ping before each use of a pooled connection: a round trip saved
    // on every page and every look of a waiting request.
    let pg = PgPoolOptions::new()
        .max_connections(32)
        .test_before_acquire(false)
        .connect(&pg_url)
        .await?;
    let sqlite = sqlite_pool().await?;
    let total = options.events * u64::from(PARTITIONS);
    println!(
        "standard workload, {PARTITIONS} partitions x {} events, pagesizehint={PAGE_SIZE}",
        options.events
    );

    // End to end.
    let outbox: PostgresOutbox = migrated(&pg, "events").await?;
    load(options.events, &pg, &outbox).await?;
    sqlx::raw_sql("VACUUM ANALYZE events").execute(&pg).await?;
    let ours_pg = end_to_end(outbox.feed(pg.clone()).service(), total).await?;
    let bare = bare_select(
        &pg,
        "SELECT position, data::text, headers::text, \
         (date_part('epoch', appended_at) * 1000)::bigint FROM events \
         WHERE partition = $1 ORDER BY position",
        total,
    )
    .await?;
    let ours_pg_again = end_to_end(outbox.feed(pg.clone()).service(), total).await?;
    let ours_pg = ours_pg.max(ours_pg_again);

    let sqlite_outbox: SqliteOutbox = migrated(&sqlite, "events").await?;
    load(options.events, &sqlite, &sqlite_outbox).await?;
    let ours_sqlite = end_to_end(sqlite_outbox.feed(sqlite.clone()).service(), total).await?;
    let bare_sqlite = bare_select(
        &sqlite,
        "SELECT position, data, headers, appended_at FROM events \
         WHERE partition = ?1 ORDER BY position",
        total,
    )
    .await?;

    println!();
    println!("| end to end, {total} events | events/s |");
    println!("|---|---:|");
    println!("| PostgreSQL, our client over loopback HTTP | {ours_pg:.0} |");
    println!("| PostgreSQL, bare sqlx streaming SELECT of the same rows | {bare:.0} |");
    println!("| SQLite, our client over loopback HTTP | {ours_sqlite:.0} |");
    println!("| SQLite, bare sqlx streaming SELECT of the same rows | {bare_sqlite:.0} |");
    println!(
        "ours / bare SELECT on PostgreSQL: {:.2} (goal >= 0.5); on SQLite: {:.2}",
        ours_pg / bare,
        ours_sqlite / bare_sqlite
    );

    // Appends.
    let _: PostgresOutbox = migrated(&pg, "plain_events").await?;
    // The same rows as the outbox, so that both inserts go into indexes of
    // the same depth.
    sqlx::query(
        "INSERT INTO plain_events (partition, headers, data) \
         SELECT partition, headers, data FROM events ORDER BY position",
    )
    .execute(&pg)
    .await?;
    sqlx::query("VACUUM ANALYZE plain_events")
        .execute(&pg)
        .await?;
    sqlx::query("VACUUM ANALYZE events").execute(&pg).await?;
    let plain_insert =
        "INSERT INTO plain_events (partition, headers, data) VALUES ($1, $2::json, $3::json)";
    let mut pg_outbox_rates = Vec::new();
    let mut pg_after_commit_rates = Vec::new();
    let mut pg_plain_rates = Vec::new();
    let after_commit = outbox.notify_after_commit(pg.clone());
    for _ in 0..ROUNDS {
        pg_plain_rates.push(plain_rate(options.appends, &pg, plain_insert).await?);
        for (writer, rates) in [
            (Writer::Notifying(outbox.clone()), &mut pg_outbox_rates),
            (
                Writer::AfterCommit(after_commit.clone()),
                &mut pg_after_commit_rates,
            ),
        ] {
            let pg = pg.clone();
            rates.push(
                append_rate(options.appends, move |event| {
                    let (pool, writer) = (pg.clone(), writer.clone());
                    async move { writer.commit(&pool, &event, || {}).await }
                })
                .await?,
            );
        }
    }
    let _: SqliteOutbox = migrated(&sqlite, "plain_events").await?;
    sqlx::query(
        "INSERT INTO plain_events (partition, headers, data) \
         SELECT partition, headers, data FROM events ORDER BY position",
    )
    .execute(&sqlite)
    .await?;
    let sqlite_insert = "INSERT INTO plain_events (partition, headers, data) VALUES (?1, ?2, ?3)";
    let mut sqlite_outbox_rates = Vec::new();
    let mut sqlite_plain_rates = Vec::new();
    for _ in 0..ROUNDS {
        sqlite_plain_rates.push(plain_rate(options.appends, &sqlite, sqlite_insert).await?);
        sqlite_outbox_rates.push({
            let (sqlite, sqlite_outbox) = (sqlite.clone(), sqlite_outbox.clone());
            append_rate(options.appends, move |event| {
                let (pool, outbox) = (sqlite.clone(), sqlite_outbox.clone());
                async move {
                    let mut tx = pool.begin().await?;
                    let spent = timed(outbox.append(&mut tx, &event)).await?;
                    tx.commit().await?;
                    Ok(spent)
                }
            })
            .await?
        });
    }
    println!();
    println!(
        "| append, one event per transaction, {WRITERS} writers | outbox writer, events/s | plain INSERT, events/s | cost per transaction | outbox statement | plain INSERT statement | cost per statement |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, ours, plain) in [
        ("PostgreSQL", pg_outbox_rates, pg_plain_rates.clone()),
        (
            "PostgreSQL, NotifyAfterCommit",
            pg_after_commit_rates,
            pg_plain_rates,
        ),
        ("SQLite", sqlite_outbox_rates, sqlite_plain_rates),
    ] {
        let ours_rate = median(ours.iter().map(|r| r.events_per_second).collect());
        let plain_rate = median(plain.iter().map(|r| r.events_per_second).collect());
        let ours_statement = median(ours.iter().map(|r| r.statement_micros).collect());
        let plain_statement = median(plain.iter().map(|r| r.statement_micros).collect());
        println!(
            "| {name} | {ours_rate:.0} | {plain_rate:.0} | {:+.1}% | {ours_statement:.0} µs | {plain_statement:.0} µs | {:+.1}% |",
            (plain_rate / ours_rate - 1.0) * 100.0,
            (ours_statement / plain_statement - 1.0) * 100.0,
        );
    }
    println!(
        "(goal: the writer at most 15% over the plain INSERT; per transaction is the inverse of the rate, commit included)"
    );

    // Append to receipt with long polling.
    println!();
    for (writer, pruning) in [
        (Writer::Notifying(outbox.clone()), false),
        (Writer::AfterCommit(after_commit.clone()), false),
        (Writer::AfterCommit(after_commit), true),
    ] {
        let name = writer.name();
        let latencies = receipts(&pg, writer, options.consumers, options.receipts, pruning).await?;
        let while_pruning = if pruning { ", while prune runs" } else { "" };
        println!(
            "append to receipt, PostgreSQL, long polling, {name}{while_pruning}, {} consumers x {} events: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal: p99 <= 20 ms)",
            options.consumers,
            options.receipts,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
    }
    Ok(())
}

/// Drops and creates the bench's database; returns its URL.
async fn fresh_database(admin_url: &str) -> Result<String, BoxError> {
    let mut admin = PgConnection::connect(admin_url).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)").as_str())
        .await?;
    admin
        .execute(format!("CREATE DATABASE {DATABASE}").as_str())
        .await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or("the PostgreSQL URL names no database")?;
    Ok(format!("{base}/{DATABASE}"))
}

async fn sqlite_pool() -> Result<SqlitePool, BoxError> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("outbox_bench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30));
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?)
}

/// The outbox in `table`, created if missing, with `pool`.
async fn migrated<O: SqlOutbox>(pool: &Pool<O::Database>, table: &str) -> Result<O, BoxError> {
    let outbox = O::new(TableName::new(table)?, PARTITIONS);
    outbox.migrate(pool).await?;
    Ok(outbox)
}

/// Appends `events` standard events to each partition of `outbox`,
/// 10,000 per transaction.
async fn load<O: SqlOutbox>(
    events: u64,
    pool: &Pool<O::Database>,
    outbox: &O,
) -> Result<(), BoxError> {
    for partition in 0..PARTITIONS {
        let mut index = 0;
        while index < events {
            let end = (index + 10_000).min(events);
            let batch: Vec<_> = (index..end)
                .map(|i| OutboxEvent::in_partition(partition, workload::event_data(partition, i)))
                .collect();
            commit(pool, outbox, &batch, Duration::ZERO).await?;
            index = end;
        }
    }
    Ok(())
}

/// Serves `service` at `/feed/v1` on a free loopback port: its URL, and
/// the server's task.
async fn serve<R: FeedReader>(
    service: FeedService<R>,
) -> Result<(String, tokio::task::JoinHandle<()>), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/feed/v1", listener.local_addr()?);
    let app = axum::Router::new().route_service("/feed/v1", service);
    Ok((url, tokio::spawn(Server::new().serve(listener, app))))
}

/// Serves `service` on loopback and reads it all from `_first`; events/s.
async fn end_to_end<R: FeedReader>(service: FeedService<R>, total: u64) -> Result<f64, BoxError> {
    let (url, server) = serve(service).await?;
    let client = Client::builder(url.parse()?, PARTITIONS).build();
    let mut request = FeedRequest::new(PARTITIONS, (0..PARTITIONS).map(|p| (p, Cursor::first())))?
        .with_page_size_hint(PAGE_SIZE);
    let start = Instant::now();
    let mut received = 0;
    loop {
        let mut stream = client.fetch(&request).await?;
        let mut cursors: HashMap<u32, Cursor> = request.cursors().iter().cloned().collect();
        let mut progressed = false;
        while let Some(item) = stream.next().await {
            match item? {
                FeedItem::Event(_) => received += 1,
                FeedItem::Checkpoint(checkpoint) => {
                    cursors.insert(checkpoint.partition, checkpoint.cursor);
                    progressed = true;
                }
            }
        }
        if !progressed {
            break;
        }
        request = FeedRequest::new(PARTITIONS, cursors)?.with_page_size_hint(PAGE_SIZE);
    }
    let rate = received as f64 / start.elapsed().as_secs_f64();
    server.abort();
    if received != total {
        return Err(format!("read {received} events of {total}").into());
    }
    Ok(rate)
}

/// Streams every row of the table with sqlx, partition by partition, in the
/// feed's order (`select` takes the partition and gives the data third),
/// touching each row's data; events/s.
async fn bare_select<DB>(pool: &Pool<DB>, select: &str, total: u64) -> Result<f64, BoxError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    i32: for<'q> Encode<'q, DB> + Type<DB>,
    for<'r> &'r str: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let start = Instant::now();
    let mut rows = 0u64;
    let mut bytes = 0usize;
    for partition in 0..PARTITIONS {
        let mut stream = sqlx::query::<DB>(select).bind(partition as i32).fetch(pool);
        while let Some(row) = stream.next().await {
            let row = row?;
            let data: &str = row.try_get(1)?;
            bytes += data.len();
            rows += 1;
        }
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    if rows != total || bytes == 0 {
        return Err(format!("selected {rows} rows of {total}").into());
    }
    Ok(rate)
}

/// Runs `WRITERS` writers, each committing `appends` transactions of one
/// event through `transaction` (which gives the time its appending
/// statement took).
async fn append_rate<F, Fut>(appends: u64, transaction: F) -> Result<Rates, BoxError>
where
    F: Fn(OutboxEvent) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Duration, BoxError>> + Send,
{
    let start = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let transaction = transaction.clone();
            tokio::spawn(async move {
                let mut spent = Duration::ZERO;
                for index in 0..appends {
                    let partition = (index % u64::from(PARTITIONS)) as u32;
                    let index = 1_000_000_000 + writer as u64 * 1_000_000 + index;
                    let data = workload::event_data(partition, index);
                    spent += transaction(OutboxEvent::in_partition(partition, data)).await?;
                }
                Ok::<_, BoxError>(spent)
            })
        })
        .collect();
    let mut spent = Duration::ZERO;
    for writer in writers {
        spent += writer.await??;
    }
    let transactions = appends * WRITERS as u64;
    Ok(Rates {
        events_per_second: transactions as f64 / start.elapsed().as_secs_f64(),
        statement_micros: spent.as_secs_f64() * 1e6 / transactions as f64,
    })
}

/// [`append_rate`] of `insert`, a plain `INSERT` of an event's partition,
/// headers (none) and data, each in a transaction of its own on `pool`.
async fn plain_rate<DB>(
    appends: u64,
    pool: &Pool<DB>,
    insert: &'static str,
) -> Result<Rates, BoxError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    i32: for<'q> Encode<'q, DB> + Type<DB>,
    Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let pool = pool.clone();
    append_rate(appends, move |event| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            let spent = timed(
                sqlx::query::<DB>(insert)
                    .bind(event.partition(PARTITIONS) as i32)
                    .bind(Option::<String>::None)
                    .bind(event.data().as_str())
                    .execute(&mut *tx),
            )
            .await?;
            tx.commit().await?;
            Ok(spent)
        }
    })
    .await
}

/// What an append run measured.
#[derive(Debug, Clone, Copy)]
struct Rates {
    events_per_second: f64,
    /// The mean time of the appending statement alone, in its transaction.
    statement_micros: f64,
}

/// Times `statement`.
async fn timed<T, E>(statement: impl Future<Output = Result<T, E>>) -> Result<Duration, E> {
    let start = Instant::now();
    statement.await?;
    Ok(start.elapsed())
}

/// `consumers` clients long poll a feed over loopback HTTP while one
/// writer commits `count` events 50 ms apart; every consumer's latency
/// from the start of each commit to its receipt, in milliseconds.
async fn receipts(
    pool: &PgPool,
    writer: Writer,
    consumers: usize,
    count: u64,
    pruning: bool,
) -> Result<Vec<f64>, BoxError> {
    let outbox = writer.outbox();
    let pruner = pruning.then(|| {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        tokio::spawn(async move {
            let retention = Retention::keep_last(1_000).with_batch(1_000);
            loop {
                if let Err(error) = outbox.prune(&pool, &retention).await {
                    eprintln!("prune: {error}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    let service = outbox.feed(pool.clone()).service();
    let feed = service.reader().clone();
    let (url, server) = serve(service).await?;
    let committing: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();

    let mut tasks = Vec::with_capacity(consumers);
    for _ in 0..consumers {
        let client = Client::builder(url.parse()?, PARTITIONS).build();
        tasks.push(tokio::spawn(async move {
            let mut request =
                FeedRequest::new(PARTITIONS, (0..PARTITIONS).map(|p| (p, Cursor::last())))?
                    .with_wait(Duration::from_secs(30));
            let mut received = Vec::new();
            while (received.len() as u64) < count {
                let page = client.fetch_page(&request).await?;
                let now = Instant::now();
                for event in page.events() {
                    let value: serde_json::Value = event.data.deserialize()?;
                    let id = value["id"].as_str().unwrap_or_default().to_owned();
                    received.push((id, now));
                }
                request = page.next_request(&request);
            }
            Ok::<_, BoxError>(received)
        }));
    }
    // Every consumer is waiting before the first commit.
    while feed.append_signal().waiters() < consumers {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for index in 0..count {
        let partition = (index % u64::from(PARTITIONS)) as u32;
        let data = workload::event_data(partition, 2_000_000_000 + index);
        let value: serde_json::Value = data.deserialize()?;
        let id = value["id"].as_str().unwrap_or_default().to_owned();
        let event = OutboxEvent::in_partition(partition, data);
        writer
            .commit(pool, &event, || {
                committing.lock().unwrap().insert(id, Instant::now());
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let committing = committing.lock().unwrap().clone();
    let mut latencies = Vec::with_capacity(consumers * count as usize);
    for task in tasks {
        for (id, at) in task.await?? {
            let start = committing.get(&id).ok_or("an event nobody committed")?;
            latencies.push(at.duration_since(*start).as_secs_f64() * 1e3);
        }
    }
    server.abort();
    if let Some(pruner) = pruner {
        pruner.abort();
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// An outbox writer, by how it wakes the feed.
#[derive(Clone)]
enum Writer {
    /// `pg_notify` in its transaction.
    Notifying(PostgresOutbox),
    /// After its commit.
    AfterCommit(NotifyAfterCommit),
}

impl Writer {
    fn name(&self) -> &'static str {
        match self {
            Writer::Notifying(_) => "notifying at commit",
            Writer::AfterCommit(_) => "NotifyAfterCommit",
        }
    }

    fn outbox(&self) -> &PostgresOutbox {
        match self {
            Writer::Notifying(outbox) => outbox,
            Writer::AfterCommit(writer) => writer.outbox(),
        }
    }

    /// Appends `event` in a transaction of its own and commits it, calling
    /// `committing` just before the commit; gives the time the appending
    /// statement took.
    async fn commit(
        &self,
        pool: &PgPool,
        event: &OutboxEvent,
        committing: impl FnOnce(),
    ) -> Result<Duration, BoxError> {
        let mut tx = pool.begin().await?;
        let start = Instant::now();
        let appended = match self {
            Writer::Notifying(outbox) => {
                outbox.append(&mut tx, event).await?;
                None
            }
            Writer::AfterCommit(writer) => Some(writer.append(&mut tx, event).await?),
        };
        let spent = start.elapsed();
        committing();
        tx.commit().await?;
        if let (Writer::AfterCommit(writer), Some(appended)) = (self, appended) {
            writer.notify(appended);
        }
        Ok(spent)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `q` quantile of sorted `values`.
fn percentile(values: &[f64], q: f64) -> f64 {
    let index = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[index.min(values.len() - 1)]
}
