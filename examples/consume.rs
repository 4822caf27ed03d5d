//! Consumes a feed into a database with the consumer runtime: each event
//! becomes a row of `received(partition INT, data TEXT)`, written in the
//! transaction that stores the cursors after it.
//!
//! ```text
//! cargo run --release --features postgres --example consume -- URL --partitions N \
//!     --database URL --name NAME [--page-size K] [--wait SECS] [--until-idle]
//! ```
//!
//! `--database` is a `postgres://` URL (feature `postgres`) or a
//! `sqlite://` one (a file, created if missing). The tables are created if
//! they do not exist: `received` has no unique constraint, so a duplicate
//! would show. Several `consume` processes with the same `--name` on one
//! PostgreSQL share the partitions; on SQLite, one process per file.
//!
//! `SIGINT` and `SIGTERM` stop it gracefully (the page in flight commits or
//! rolls back, the partitions are released) and it exits 0. With
//! `--until-idle`, it also exits 0 once it owns partitions and every one
//! is caught up and has stayed so for one wait (`--wait`, default 20 s). Any error the
//! runtime cannot retry exits 1 with a one-line message on stderr; the
//! figures go to stderr at the end.

use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use zeroeventhub::BoxError;
use zeroeventhub::client::{Client, HttpService};
use zeroeventhub::consumer::{CursorStore, Handler, Runtime, Stats};
use zeroeventhub::protocol::Event;

const USAGE: &str = "usage: consume URL --partitions N --database URL --name NAME \
[--page-size K] [--wait SECS] [--until-idle]";

struct Options {
    url: http::Uri,
    partitions: u32,
    database: String,
    name: String,
    page_size: u32,
    wait: Duration,
    until_idle: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut url = None;
    let mut partitions = None;
    let mut database = None;
    let mut name = None;
    let mut page_size = 0;
    let mut wait = Runtime::<(), ()>::DEFAULT_WAIT;
    let mut until_idle = false;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--partitions" => {
                partitions = Some(
                    value("--partitions")?
                        .parse()
                        .map_err(|_| "--partitions: not a number")?,
                )
            }
            "--database" => database = Some(value("--database")?),
            "--name" => name = Some(value("--name")?),
            "--page-size" => {
                page_size = value("--page-size")?
                    .parse()
                    .map_err(|_| "--page-size: not a number")?
            }
            "--wait" => {
                let seconds: u64 = value("--wait")?
                    .parse()
                    .map_err(|_| "--wait: not a number")?;
                wait = Duration::from_secs(seconds);
            }
            "--until-idle" => until_idle = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ if url.is_none() => url = Some(arg.parse().map_err(|_| format!("not a URL: {arg}"))?),
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    Ok(Options {
        url: url.ok_or("the feed's URL is missing")?,
        partitions: partitions.ok_or("--partitions is missing")?,
        database: database.ok_or("--database is missing")?,
        name: name.ok_or("--name is missing")?,
        page_size,
        wait,
        until_idle,
    })
}

/// Inserts each event as a row of `received`, in the page's transaction.
struct Received;

#[cfg(feature = "sqlite")]
impl Handler<sqlx::Transaction<'static, sqlx::Sqlite>> for Received {
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        events: &[Event],
    ) -> Result<(), sqlx::Error> {
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

#[cfg(feature = "postgres")]
impl Handler<sqlx::Transaction<'static, sqlx::Postgres>> for Received {
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        events: &[Event],
    ) -> Result<(), sqlx::Error> {
        // One statement per page: the events as two arrays.
        let partitions: Vec<i32> = events.iter().map(|event| event.partition as i32).collect();
        let data: Vec<&str> = events.iter().map(|event| event.data.as_str()).collect();
        sqlx::query(
            "INSERT INTO received (partition, data) SELECT * FROM unnest($1::int4[], $2::text[])",
        )
        .bind(&partitions)
        .bind(&data)
        .execute(&mut **transaction)
        .await?;
        Ok(())
    }
}

const CREATE_RECEIVED: &str = "CREATE TABLE IF NOT EXISTS received (partition INT, data TEXT)";

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("consume: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consume: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), BoxError> {
    let client = Client::builder(options.url.clone(), options.partitions).build();
    let database = options.database.clone();
    #[cfg(feature = "postgres")]
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        let pool = sqlx::PgPool::connect(&database).await?;
        // CREATE TABLE IF NOT EXISTS races with itself when several
        // processes start at once: one at a time.
        let mut transaction = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('zeroeventhub:consume:received'))")
            .execute(&mut *transaction)
            .await?;
        sqlx::query(CREATE_RECEIVED)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        let store = zeroeventhub::consumer::PostgresStore::new(pool);
        store.migrate().await?;
        return consume(client, store, &options).await;
    }
    #[cfg(feature = "sqlite")]
    if database.starts_with("sqlite:") {
        use std::str::FromStr;
        let connect =
            sqlx::sqlite::SqliteConnectOptions::from_str(&database)?.create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(connect).await?;
        sqlx::query(CREATE_RECEIVED).execute(&pool).await?;
        let store = zeroeventhub::consumer::SqliteStore::new(pool);
        store.migrate().await?;
        return consume(client, store, &options).await;
    }
    Err(format!(
        "--database {database}: a postgres:// (feature postgres) or sqlite:// URL is needed"
    )
    .into())
}

async fn consume<S, St>(client: Client<S>, store: St, options: &Options) -> Result<(), BoxError>
where
    S: HttpService + Clone,
    St: CursorStore,
    Received: Handler<St::Transaction>,
{
    let runtime = Runtime::new(client, store, options.name.clone())
        .with_page_size(options.page_size)
        .with_wait(options.wait);
    let stats = runtime.stats();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let idle = until_idle(stats.clone(), options.wait, options.until_idle);
    let shutdown = async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            () = idle => {}
        }
    };
    let result = runtime.run(Received, shutdown).await;
    let figures = stats.snapshot();
    eprintln!(
        "consume: {} events in {} pages ({:.0} events/s), {} errors ({} conflicts)",
        figures.events,
        figures.pages,
        figures.events_per_second(),
        figures.errors(),
        figures.conflicts,
    );
    Ok(result?)
}

/// With `--until-idle`, completes once the instance owns partitions, every
/// one is caught up, and no event came for one wait; never otherwise. (An
/// instance that owns nothing yet is waiting for its share, not idle.)
async fn until_idle(stats: Stats, wait: Duration, enabled: bool) {
    if !enabled {
        return std::future::pending().await;
    }
    loop {
        let caught_up = stats
            .wait_for(|stats| stats.caught_up && !stats.owned_partitions.is_empty())
            .await;
        tokio::time::sleep(wait).await;
        let now = stats.snapshot();
        if now.caught_up
            && !now.owned_partitions.is_empty()
            && now.events == caught_up.events
            && now.owned_partitions == caught_up.owned_partitions
        {
            return;
        }
    }
}
