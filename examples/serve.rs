//! Serves the protocol's standard workload from a `MemoryFeed` through axum,
//! for benchmarks, interop checks and trying a client against.
//!
//! ```text
//! cargo run --release --example serve -- --addr 127.0.0.1:8080 --partitions 2 --events 200000
//!     [--token SECRET] [--append-rate N] [--max-page-size K]
//!     [--header-timeout SECS] [--idle-timeout SECS] [--stall-timeout SECS]
//!     [--max-connections N] [--max-wait SECS]
//! ```
//!
//! `--events` is per partition. `--token` requires `Authorization: Bearer
//! SECRET` (401 otherwise). `--append-rate` keeps appending N events per
//! second to every partition. Port 0 picks a free port. Once connections are
//! accepted it prints `listening on http://ADDR/feed/v1` on stdout.
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
use std::process::ExitCode;
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use tower_http::trace::TraceLayer;
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};
use zeroeventhub::server::{FeedService, MemoryFeed, Server};
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
}

const USAGE: &str = "usage: serve --addr HOST:PORT --partitions N --events N [--token SECRET] [--append-rate N] [--max-page-size K] [--header-timeout SECS] [--idle-timeout SECS] [--stall-timeout SECS] [--max-connections N] [--max-wait SECS]";

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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let feed = MemoryFeed::new(options.partitions);
    workload::fill(&feed, options.events);
    if options.append_rate > 0 {
        tokio::spawn(append_forever(feed.clone(), options.append_rate));
    }

    let service = feed
        .service()
        .max_page_size(options.max_page_size)
        .max_wait(options.max_wait);
    let mut app = axum::Router::new().route_service("/feed/v1", service);
    if let Some(token) = &options.token {
        app = app.route_layer(ValidateRequestHeaderLayer::custom(BearerToken::new(token)));
    }
    let app = app.layer(TraceLayer::new_for_http());

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
    options.server.serve(listener, app).await;
    ExitCode::SUCCESS
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
/// of 10 ms.
async fn append_forever(feed: MemoryFeed, rate: u64) {
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let mut owed = 0u64;
    loop {
        ticks.tick().await;
        owed += rate;
        let due = owed / 100;
        owed %= 100;
        if due > 0 {
            workload::fill(&feed, due);
        }
    }
}
