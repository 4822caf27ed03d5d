//! Serves the protocol's standard workload from a `MemoryFeed`, or from an
//! outbox table in PostgreSQL or SQLite, through axum, for benchmarks,
//! interop checks and trying a client against.
//!
//! ```text
//! cargo run --release --example serve -- --addr 127.0.0.1:8080 --partitions 2 --events 200000
//!     [--token SECRET] [--append-rate N] [--max-page-size K]
//!     [--header-timeout SECS] [--idle-timeout SECS] [--stall-timeout SECS]
//!     [--max-connections N] [--max-wait SECS]
//!     [--database postgres://...|sqlite://PATH [--table NAME] [--writers W]
//!      [--prune-older-than SECS]]
//! ```
//!
//! `--events` is per partition. `--token` requires `Authorization: Bearer
//! SECRET` (401 otherwise). `--append-rate` keeps appending N events per
//! second to every partition. Port 0 picks a free port. Once connections are
//! accepted it prints `listening on http://ADDR/feed/v1` on stdout.
//!
//! With `--database` (features `postgres` and `sqlite`), the feed is the
//! outbox table `--table` (default `events`) of that database: its schema is
//! created if missing, `--events` are loaded only into an empty table, and
//! appends go through the outbox writer from `--writers` tasks (default 4),
//! each holding its transaction open a random 0-20 ms before committing, so
//! that commit order differs from insert order. Appended events continue
//! each partition's numbering from the largest `person_id` in the table, so
//! their ids stay unique across restarts. `--prune-older-than SECS` deletes
//! the rows appended more than SECS seconds ago (keeping the newest of each
//! partition), at start and then every SECS/10 seconds (1 s to 60 s); a
//! consumer that falls behind gets `410 Gone`.
//!
//! On SIGINT or SIGTERM it stops appending and accepting, answers the
//! requests waiting for events at once (`FeedService::end_waits`), lets
//! the pages being sent finish (up to 30 s), and prints
//! `appended N events` as the last line of stdout.
//!
//! Connections are served by `zeroeventhub::server::Server`: a request head
//! must arrive within `--header-timeout` (10 s), a kept-alive connection is
//! closed after `--idle-timeout` (60 s) without a request, a response whose
//! consumer stops reading is aborted after `--stall-timeout` (60 s), and at
//! most `--max-connections` (1024) are served at once.
//!
//! A request with `wait` (long polling) is held until an event is appended
//! to one of its partitions, for at most `--max-wait` seconds (30; 0 turns
//! waiting off).

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use http::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use tokio::sync::watch;
use tower_http::trace::TraceLayer;
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};
use zeroeventhub::protocol::FeedItem;
use zeroeventhub::server::{FeedReader, FeedService, MemoryFeed, ReadContext, ReadError, Server};
use zeroeventhub::workload;

struct Options {
    addr: SocketAddr,
    partitions: u32,
    events: u64,
    token: Option<String>,
    append_rate: u64,
    max_page_size: usize,
    max_wait: Duration,
    server: Server,
    database: Option<String>,
    table: String,
    writers: usize,
    prune_older_than: Option<Duration>,
}

const USAGE: &str = "usage: serve --addr HOST:PORT --partitions N --events N [--token SECRET] [--append-rate N] [--max-page-size K] [--header-timeout SECS] [--idle-timeout SECS] [--stall-timeout SECS] [--max-connections N] [--max-wait SECS] [--database postgres://...|sqlite://PATH] [--table NAME] [--writers W] [--prune-older-than SECS]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        partitions: 2,
        events: 200_000,
        token: None,
        append_rate: 0,
        max_page_size: 1_000_000,
        max_wait: FeedService::<MemoryFeed>::DEFAULT_MAX_WAIT,
        server: Server::new(),
        database: None,
        table: "events".to_owned(),
        writers: 4,
        prune_older_than: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => options.addr = parse(&flag, &value()?)?,
            "--partitions" => options.partitions = parse(&flag, &value()?)?,
            "--events" => options.events = parse(&flag, &value()?)?,
            "--token" => options.token = Some(value()?),
            "--append-rate" => options.append_rate = parse(&flag, &value()?)?,
            "--max-page-size" => options.max_page_size = parse(&flag, &value()?)?,
            "--max-wait" => options.max_wait = Duration::from_secs(parse(&flag, &value()?)?),
            "--database" => options.database = Some(value()?),
            "--table" => options.table = value()?,
            "--writers" => options.writers = parse(&flag, &value()?)?,
            "--prune-older-than" => {
                options.prune_older_than = Some(seconds(&flag, &value()?)?);
            }
            "--header-timeout" => {
                options.server = options.server.header_timeout(seconds(&flag, &value()?)?);
            }
            "--idle-timeout" => {
                options.server = options.server.idle_timeout(seconds(&flag, &value()?)?);
            }
            "--stall-timeout" => {
                options.server = options.server.stall_timeout(seconds(&flag, &value()?)?);
            }
            "--max-connections" => {
                options.server = options.server.max_connections(parse(&flag, &value()?)?);
            }
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if options.partitions == 0 {
        return Err("--partitions must be at least 1".to_owned());
    }
    if options.writers == 0 {
        return Err("--writers must be at least 1".to_owned());
    }
    Ok(options)
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|error| format!("{flag} {value:?}: {error}"))
}

/// A duration given in (possibly fractional) seconds.
fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(parse(flag, value)?)
        .map_err(|error| format!("{flag} {value:?}: {error}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,sqlx::query=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let (stop, stopped) = watch::channel(false);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (app, appenders): (_, Vec<tokio::task::JoinHandle<u64>>) = match &options.database {
        None => {
            let feed = MemoryFeed::new(options.partitions);
            workload::fill(&feed, options.events);
            let appenders = (options.append_rate > 0)
                .then(|| {
                    tokio::spawn(append_forever(
                        feed.clone(),
                        options.append_rate,
                        stopped.clone(),
                    ))
                })
                .into_iter()
                .collect();
            (app(feed, &options, &in_flight, &stopped), appenders)
        }
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        Some(url) => match database::open(url, &options, &in_flight, &stopped).await {
            Ok(served) => served,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::FAILURE;
            }
        },
        #[cfg(not(any(feature = "postgres", feature = "sqlite")))]
        Some(_) => {
            eprintln!("--database needs the `postgres` or `sqlite` feature");
            return ExitCode::FAILURE;
        }
    };

    let listener = match tokio::net::TcpListener::bind(options.addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot listen on {}: {error}", options.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    println!("listening on http://{addr}/feed/v1");
    let _ = std::io::stdout().flush();
    tokio::select! {
        () = options.server.serve(listener, app) => {}
        () = shutdown_signal() => {}
    }

    // Stop appending (transactions under way commit) and waiting, stop
    // accepting, and let the requests under way finish.
    let _ = stop.send(true);
    let mut appended = 0u64;
    for appender in appenders {
        appended += appender.await.unwrap_or(0);
    }
    let grace = tokio::time::Instant::now() + Duration::from_secs(30);
    while in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("appended {appended} events");
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

/// The router serving `reader`'s feed at `/feed/v1`, with the options'
/// page size, token and tracing, counting its requests in flight in
/// `in_flight`; once `stopped`, no request waits.
fn app<R: FeedReader>(
    reader: R,
    options: &Options,
    in_flight: &Arc<AtomicUsize>,
    stopped: &watch::Receiver<bool>,
) -> axum::Router {
    let reader = Counted {
        reader,
        in_flight: Arc::clone(in_flight),
    };
    let service = FeedService::new(reader, options.partitions)
        .max_page_size(options.max_page_size)
        .max_wait(options.max_wait);
    let (ending, mut stopped) = (service.clone(), stopped.clone());
    tokio::spawn(async move {
        if stopped.wait_for(|stop| *stop).await.is_ok() {
            ending.end_waits();
        }
    });
    let mut app = axum::Router::new().route_service("/feed/v1", service);
    if let Some(token) = &options.token {
        app = app.route_layer(ValidateRequestHeaderLayer::custom(BearerToken::new(token)));
    }
    app.layer(TraceLayer::new_for_http())
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// A reader that counts its requests from the read (a wait included) to
/// the end of the page, so that shutdown can let them finish: waits end at
/// once then.
struct Counted<R> {
    reader: R,
    in_flight: Arc<AtomicUsize>,
}

impl<R: FeedReader> FeedReader for Counted<R> {
    type Stream = CountedPage;

    async fn read(&self, context: ReadContext<'_>) -> Result<CountedPage, ReadError> {
        let in_flight = InFlight::new(&self.in_flight);
        let stream = self.reader.read(context).await?;
        Ok(CountedPage {
            stream: Box::pin(stream),
            _in_flight: in_flight,
        })
    }
}

struct CountedPage {
    stream: Pin<Box<dyn Stream<Item = Result<FeedItem, ReadError>> + Send>>,
    _in_flight: InFlight,
}

impl Stream for CountedPage {
    type Item = Result<FeedItem, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// One request counted, from its read until its page is dropped (or the
/// read itself is, when the consumer goes away or a wait ends).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Lets through only requests with `Authorization: Bearer <token>`.
#[derive(Clone)]
struct BearerToken {
    expected: HeaderValue,
}

impl BearerToken {
    fn new(token: &str) -> Self {
        let expected = HeaderValue::try_from(format!("Bearer {token}"))
            .expect("--token must be printable ASCII");
        BearerToken { expected }
    }
}

impl<B> ValidateRequest<B> for BearerToken {
    type ResponseBody = axum::body::Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response<Self::ResponseBody>> {
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        // Compare every byte whatever the first difference, so that the
        // answer's timing says nothing about the token.
        let matches = given.is_some_and(|given| {
            given.len() == self.expected.len()
                && given
                    .iter()
                    .zip(self.expected.as_bytes())
                    .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                    == 0
        });
        if matches {
            return Ok(());
        }
        let mut response = Response::new(axum::body::Body::from("missing or wrong bearer token\n"));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(response)
    }
}

/// Appends `rate` standard events per second to every partition, in ticks
/// of 10 ms, until stopped; returns how many it appended.
async fn append_forever(feed: MemoryFeed, rate: u64, mut stopped: watch::Receiver<bool>) -> u64 {
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut owed = 0u64;
    let mut appended = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return appended,
        }
        owed += rate;
        let due = owed / 100;
        owed %= 100;
        if due > 0 {
            workload::fill(&feed, due);
            appended += due * u64::from(feed.partition_count());
        }
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[path = "support/outbox.rs"]
mod outbox;

/// The feed over an outbox table, and its writers.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod database {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    use sqlx::Pool;
    use tokio::sync::watch;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;
    use zeroeventhub::outbox::Retention;
    use zeroeventhub::server::{OutboxError, OutboxEvent, TableName};
    use zeroeventhub::workload;

    use super::Options;
    use super::outbox::{SqlOutbox, commit};

    /// Events appended per transaction at most, when writers are behind.
    const MAX_BATCH: u64 = 1_000;
    /// Events loaded per transaction.
    const LOAD_BATCH: u64 = 10_000;

    /// An outbox whose rows `serve` asks about.
    pub(super) trait Numbered: SqlOutbox {
        /// A query of each partition of `table` with rows, and its largest
        /// `person_id`, both as 64-bit integers.
        fn largest_person_ids(table: &TableName) -> String;
    }

    #[cfg(feature = "postgres")]
    impl Numbered for zeroeventhub::server::PostgresOutbox {
        fn largest_person_ids(table: &TableName) -> String {
            format!(
                "SELECT partition::bigint, max((data->>'person_id')::bigint) FROM {table} GROUP BY partition"
            )
        }
    }

    #[cfg(feature = "sqlite")]
    impl Numbered for zeroeventhub::server::SqliteOutbox {
        fn largest_person_ids(table: &TableName) -> String {
            format!(
                "SELECT partition, max(json_extract(data, '$.person_id')) FROM {table} GROUP BY partition"
            )
        }
    }

    /// An outbox table, and the pool its writers append with.
    struct Table<O: SqlOutbox> {
        pool: Pool<O::Database>,
        outbox: O,
        name: TableName,
    }

    impl<O: SqlOutbox> Clone for Table<O> {
        fn clone(&self) -> Self {
            Table {
                pool: self.pool.clone(),
                outbox: self.outbox.clone(),
                name: self.name.clone(),
            }
        }
    }

    impl<O: Numbered> Table<O> {
        /// Appends `events` in one transaction held open for `hold`
        /// before it commits.
        async fn commit(
            &self,
            events: Vec<OutboxEvent>,
            hold: Duration,
        ) -> Result<(), OutboxError> {
            commit(&self.pool, &self.outbox, &events, hold).await
        }

        /// The next unused index of each partition: one past its largest
        /// `person_id` (0 for an empty partition).
        async fn next_indices(&self, partitions: u32) -> Result<Vec<u64>, sqlx::Error> {
            let query = O::largest_person_ids(&self.name);
            let largest = O::pairs(&self.pool, &query).await?;
            let mut next = vec![0; partitions as usize];
            for (partition, max) in largest {
                if let (Some(slot), Some(max)) = (next.get_mut(partition as usize), max) {
                    *slot = u64::try_from(max).map_or(0, |max| max + 1);
                }
            }
            Ok(next)
        }
    }

    /// Opens the feed of `url`: the router serving it, and the writer tasks.
    pub(super) async fn open(
        url: &str,
        options: &Options,
        in_flight: &Arc<AtomicUsize>,
        stopped: &watch::Receiver<bool>,
    ) -> Result<(axum::Router, Vec<JoinHandle<u64>>), String> {
        let table = TableName::new(&options.table).map_err(|error| error.to_string())?;
        let connections = options.writers as u32 + 16;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(connections)
                    .connect(url)
                    .await
                    .map_err(|error| format!("cannot connect to {url}: {error}"))?;
                return serve::<zeroeventhub::server::PostgresOutbox>(
                    pool, table, options, in_flight, stopped,
                )
                .await;
            }
            #[cfg(not(feature = "postgres"))]
            return Err("this build lacks the `postgres` feature".to_owned());
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            #[cfg(feature = "sqlite")]
            {
                use sqlx::sqlite::{
                    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
                };
                let connect = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30));
                let pool = SqlitePoolOptions::new()
                    .max_connections(connections)
                    .connect_with(connect)
                    .await
                    .map_err(|error| format!("cannot open {path}: {error}"))?;
                return serve::<zeroeventhub::server::SqliteOutbox>(
                    pool, table, options, in_flight, stopped,
                )
                .await;
            }
            #[cfg(not(feature = "sqlite"))]
            return Err(format!("this build lacks the `sqlite` feature for {path}"));
        }
        Err(format!(
            "--database {url:?}: not postgres://... or sqlite://PATH"
        ))
    }

    /// Serves the outbox in `table`, its schema created if missing, over
    /// `pool`: the router, and the writer tasks.
    async fn serve<O: Numbered>(
        pool: Pool<O::Database>,
        name: TableName,
        options: &Options,
        in_flight: &Arc<AtomicUsize>,
        stopped: &watch::Receiver<bool>,
    ) -> Result<(axum::Router, Vec<JoinHandle<u64>>), String> {
        let outbox = O::new(name.clone(), options.partitions);
        outbox
            .migrate(&pool)
            .await
            .map_err(|error| error.to_string())?;
        let feed = outbox.feed(pool.clone());
        if let Some(age) = options.prune_older_than {
            tokio::spawn(prune(outbox.clone(), pool.clone(), age, stopped.clone()));
        }
        let writers = start(Table { pool, outbox, name }, options, stopped).await?;
        Ok((super::app(feed, options, in_flight, stopped), writers))
    }

    /// Deletes the rows older than `age` now and every `age / 10` (1 s to
    /// 60 s) until stopped, saying what it deleted.
    async fn prune<O: SqlOutbox>(
        outbox: O,
        pool: Pool<O::Database>,
        age: Duration,
        mut stopped: watch::Receiver<bool>,
    ) {
        let retention = Retention::older_than(age);
        let every = (age / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            match outbox.prune(&pool, &retention).await {
                Ok(pruned) if pruned.rows > 0 => {
                    eprintln!("pruned {} rows older than {age:?}", pruned.rows);
                }
                Ok(_) => {}
                Err(error) => eprintln!("pruning failed: {error}"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    /// Loads the workload into an empty table, and starts the writers.
    async fn start<O: Numbered>(
        outbox: Table<O>,
        options: &Options,
        stopped: &watch::Receiver<bool>,
    ) -> Result<Vec<JoinHandle<u64>>, String> {
        let failed = |error: sqlx::Error| format!("cannot read the table: {error}");
        let mut next = outbox
            .next_indices(options.partitions)
            .await
            .map_err(failed)?;
        if next.iter().all(|&index| index == 0) {
            for partition in 0..options.partitions {
                let mut index = 0;
                while index < options.events {
                    let end = (index + LOAD_BATCH).min(options.events);
                    let events = (index..end)
                        .map(|i| {
                            OutboxEvent::in_partition(partition, workload::event_data(partition, i))
                        })
                        .collect();
                    outbox
                        .commit(events, Duration::ZERO)
                        .await
                        .map_err(|error| format!("cannot load the workload: {error}"))?;
                    index = end;
                }
            }
            next = outbox
                .next_indices(options.partitions)
                .await
                .map_err(failed)?;
        }
        if options.append_rate == 0 {
            return Ok(Vec::new());
        }
        let next: Arc<[AtomicU64]> = next.into_iter().map(AtomicU64::new).collect();
        let per_writer =
            (options.append_rate * u64::from(options.partitions)) as f64 / options.writers as f64;
        Ok((0..options.writers)
            .map(|writer| {
                tokio::spawn(write(
                    outbox.clone(),
                    Arc::clone(&next),
                    per_writer,
                    writer as u64,
                    stopped.clone(),
                ))
            })
            .collect())
    }

    /// Appends `rate` events per second, one transaction at a time, each
    /// held open 0-20 ms, until stopped; returns how many it committed.
    async fn write<O: Numbered>(
        outbox: Table<O>,
        next: Arc<[AtomicU64]>,
        rate: f64,
        writer: u64,
        stopped: watch::Receiver<bool>,
    ) -> u64 {
        let partitions = next.len() as u64;
        let mut random = Random::new(writer);
        let mut turn = writer;
        let start = Instant::now();
        let mut appended = 0;
        while !*stopped.borrow() {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            let owed = due.saturating_sub(appended).min(MAX_BATCH);
            if owed == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            let events = (0..owed)
                .map(|_| {
                    let partition = (turn % partitions) as u32;
                    turn += 1;
                    let index = next[partition as usize].fetch_add(1, Ordering::Relaxed);
                    OutboxEvent::in_partition(partition, workload::event_data(partition, index))
                })
                .collect();
            let hold = Duration::from_micros(random.below(20_001));
            match outbox.commit(events, hold).await {
                Ok(()) => appended += owed,
                Err(error) => {
                    tracing::warn!(%error, "an append failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        appended
    }

    /// A small seeded random source (xorshift).
    struct Random(u64);

    impl Random {
        fn new(seed: u64) -> Self {
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.subsec_nanos() as u64);
            Random((seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ time | 1)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound.max(1)
        }
    }
}
