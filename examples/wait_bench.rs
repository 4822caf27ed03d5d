//! Long polling, measured: how soon a waiting consumer has an event after
//! `MemoryFeed::append`, what a waiting request costs the server, and the
//! same latency with a 1 s polling loop for comparison, in one run.
//!
//! ```text
//! cargo run --release --example wait_bench -- [--idle-seconds 30] [--max-consumers 2000]
//! ```
//!
//! This process serves a one-partition `MemoryFeed` over loopback HTTP
//! (`server::Server`); the consumers run in a child process of their own
//! (`wait_bench consume ...`), each task a consumer with a client and a
//! connection of its own. Each appended event carries the wall-clock time
//! of its append in nanoseconds; a consumer that has the page (decoded, its
//! checkpoint in) reports the difference. Figures:
//!
//! - latency p50/p99 with 1, 100 and 2,000 consumers waiting (`wait=20`),
//!   one event per round, the next appended once every consumer waits
//!   again;
//! - the server's memory per waiting request: its RSS growth while the
//!   2,000 consumers wait, over 2,000;
//! - the server's CPU while they wait on an idle feed for `--idle-seconds`
//!   (each wait of 20 s runs out and is asked again in that time), from
//!   `/proc/self/stat`;
//! - the same latency with consumers that poll every second without a wait,
//!   events appended at random moments;
//! - the machine's floor for the same fan-out: a bare tokio TCP server and
//!   bare TCP consumers, in the same two-process layout, with no HTTP
//!   library on either side; no HTTP stack here can do better.
//!
//! 2,000 connections need as many descriptors on each side: the bench
//! stops at once when `ulimit -n` is below 4,096 (`ulimit -n 8192` first).

#[path = "support/procfs.rs"]
mod procfs;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use procfs::{cpu_seconds, status_kb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, Event, RawJson};
use zeroeventhub::server::{FeedService, MemoryFeed, Server};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The wait the consumers ask for.
const WAIT: Duration = Duration::from_secs(20);

/// The polling loop's interval, and the least time between two requests of
/// a waiting consumer.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The descriptors a run with 2,000 connections needs on each side.
const MIN_DESCRIPTORS: u64 = 4096;

/// How long any step may take before the run fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("consume") {
        consume_main(&args[1..])
    } else {
        orchestrate(&args)
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wait_bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Wall-clock nanoseconds: the two processes share the clock.
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The server side and the orchestration.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Wait,
    Poll,
    /// The machine's floor: bare tokio TCP on both sides, no HTTP library.
    Raw,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Wait => "wait",
            Mode::Poll => "poll",
            Mode::Raw => "raw",
        }
    }
}

fn orchestrate(args: &[String]) -> Result<(), BoxError> {
    let mut idle_seconds = 30u64;
    let mut max_consumers = 2000usize;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--idle-seconds" => idle_seconds = value.parse()?,
            "--max-consumers" => max_consumers = value.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let descriptors = open_files_limit()?;
    if descriptors < MIN_DESCRIPTORS && max_consumers >= 2000 {
        return Err(format!(
            "the open files limit is {descriptors}; 2,000 connections need {MIN_DESCRIPTORS} \
             (run `ulimit -n 8192` first)"
        )
        .into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(idle_seconds, max_consumers))
}

/// The soft limit on open files.
fn open_files_limit() -> Result<u64, BoxError> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .ok_or("no open files limit in /proc/self/limits")?;
    let soft = line
        .split_whitespace()
        .nth(3)
        .ok_or("unexpected /proc/self/limits")?;
    Ok(soft.parse().unwrap_or(u64::MAX))
}

async fn run(idle_seconds: u64, max_consumers: usize) -> Result<(), BoxError> {
    let feed = MemoryFeed::new(1);
    // So that `_last` has a cursor to give.
    feed.append(Event::new(
        0,
        RawJson::from_serialize(&serde_json::json!({ "t": 0 }))?,
    ))?;
    let service = feed.service();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/feed/v1", listener.local_addr()?);
    tokio::spawn(
        Server::new()
            .max_connections(3 * max_consumers.max(1000))
            .serve(listener, service.clone()),
    );
    let counts: Vec<usize> = [1, 100, 2000]
        .into_iter()
        .filter(|&n| n <= max_consumers)
        .collect();
    let largest = *counts.last().ok_or("--max-consumers must be at least 1")?;

    // The largest group first, on a fresh server: memory, idle CPU, latency.
    let rss_before = status_kb("self", "VmRSS:")?;
    let consumers = Consumers::start(&url, largest, Mode::Wait)?;
    consumers.ready().await?;
    until(|| service.waiting() == largest, "every consumer waits").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_waiting = status_kb("self", "VmRSS:")?;
    let per_waiter_kib = (rss_waiting.saturating_sub(rss_before)) as f64 / largest as f64;
    eprintln!("{largest} consumers waiting; idle for {idle_seconds} s");
    let cpu_before = cpu_seconds("self")?;
    let idle_start = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let idle_cpu = (cpu_seconds("self")? - cpu_before) / idle_start.elapsed().as_secs_f64() * 100.0;
    let waiting_after_idle = service.waiting();
    let mut results = vec![(
        largest,
        Mode::Wait,
        feed_latencies(&feed, &service, &consumers, largest, Mode::Wait).await?,
    )];
    drop(consumers);

    for &count in counts.iter().rev().skip(1) {
        let consumers = Consumers::start(&url, count, Mode::Wait)?;
        consumers.ready().await?;
        let measured = feed_latencies(&feed, &service, &consumers, count, Mode::Wait).await?;
        results.push((count, Mode::Wait, measured));
    }
    for &count in &counts {
        let consumers = Consumers::start(&url, count, Mode::Poll)?;
        consumers.ready().await?;
        let measured = feed_latencies(&feed, &service, &consumers, count, Mode::Poll).await?;
        results.push((count, Mode::Poll, measured));
    }
    for &count in &counts {
        results.push((count, Mode::Raw, floor_latencies(count).await?));
    }

    println!();
    println!("Append-to-receipt latency over loopback, consumers in another process:");
    println!();
    println!(
        "| consumers | long polling p50 | p99 | 1 s polling p50 | p99 | p50 ratio | raw TCP floor p50 | p99 | samples (wait/poll/raw) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &count in &counts {
        let find = |mode| {
            results
                .iter()
                .find(|(n, m, _)| *n == count && *m == mode)
                .map(|(_, _, figures)| figures)
        };
        let (Some(wait), Some(poll), Some(raw)) =
            (find(Mode::Wait), find(Mode::Poll), find(Mode::Raw))
        else {
            continue;
        };
        println!(
            "| {count} | {:.2} ms | {:.2} ms | {:.0} ms | {:.0} ms | {:.0}× | {:.2} ms | {:.2} ms | {}/{}/{} |",
            wait.p50_ms,
            wait.p99_ms,
            poll.p50_ms,
            poll.p99_ms,
            poll.p50_ms / wait.p50_ms,
            raw.p50_ms,
            raw.p99_ms,
            wait.samples,
            poll.samples,
            raw.samples,
        );
    }
    println!();
    println!(
        "The raw TCP floor: the same fan-out with no HTTP library on either side (tokio \
         sockets, one small response per waiting connection), measured in this run."
    );
    println!();
    println!(
        "Server memory per waiting request: {per_waiter_kib:.1} KiB (RSS {rss_before} kB -> {rss_waiting} kB with {largest} waiting)"
    );
    println!(
        "Server CPU while {largest} consumers wait on an idle feed for {idle_seconds} s: {idle_cpu:.2}% of a core ({waiting_after_idle} waiting at the end)"
    );
    Ok(())
}

/// Latency figures of one group.
struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    samples: usize,
}

/// Appends one stamped event per round to the `MemoryFeed` and collects
/// what every consumer reports for it.
async fn feed_latencies(
    feed: &MemoryFeed,
    service: &FeedService<MemoryFeed>,
    consumers: &Consumers,
    count: usize,
    mode: Mode,
) -> Result<Figures, BoxError> {
    let append = || {
        let data = RawJson::from_serialize(&serde_json::json!({ "t": now_nanos() }))?;
        feed.append(Event::new(0, data))?;
        Ok(())
    };
    latencies(consumers, count, mode, || service.waiting(), append).await
}

/// Runs the rounds of a group: in each, once every consumer waits
/// (`waiting`; or at a random moment of the polling cycle), `append` one
/// event stamped with the time, and wait until every consumer has it.
async fn latencies(
    consumers: &Consumers,
    count: usize,
    mode: Mode,
    waiting: impl Fn() -> usize,
    append: impl Fn() -> Result<(), BoxError>,
) -> Result<Figures, BoxError> {
    let rounds = rounds(mode, count);
    eprintln!("{} consumers, {}: {rounds} rounds", count, mode.name());
    let mut random = Jitter::new();
    for round in 0..rounds {
        match mode {
            Mode::Wait | Mode::Raw => {
                until(|| waiting() == count, "every consumer waits again").await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Anywhere in the polling cycle.
            Mode::Poll => tokio::time::sleep(random.below(POLL_INTERVAL)).await,
        }
        append()?;
        let expected = count * (round + 1);
        until(
            || consumers.received() >= expected,
            "every consumer has the event",
        )
        .await?;
    }
    Ok(figures(consumers.take_latencies()))
}

/// The rounds of a group.
fn rounds(mode: Mode, count: usize) -> usize {
    match (mode, count) {
        (Mode::Wait | Mode::Raw, 1) => 300,
        (Mode::Wait | Mode::Raw, 100) => 50,
        (Mode::Wait | Mode::Raw, _) => 20,
        (Mode::Poll, 1) => 20,
        (Mode::Poll, 100) => 10,
        (Mode::Poll, _) => 5,
    }
}

/// The percentiles of `latencies`, in nanoseconds.
fn figures(mut latencies: Vec<u64>) -> Figures {
    latencies.sort_unstable();
    let at = |fraction: f64| {
        let index = ((latencies.len() as f64 * fraction) as usize).min(latencies.len() - 1);
        latencies[index] as f64 / 1e6
    };
    Figures {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        samples: latencies.len(),
    }
}

/// The same rounds against the floor: a bare tokio TCP server whose
/// connections, once they have read a request head, wait for the round's
/// signal and write one fixed response carrying the append's time.
async fn floor_latencies(count: usize) -> Result<Figures, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let round = Arc::new(tokio::sync::Notify::new());
    let stamp = Arc::new(AtomicU64::new(0));
    let waiting = Arc::new(AtomicUsize::new(0));
    let server = {
        let (round, stamp, waiting) = (round.clone(), stamp.clone(), waiting.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (round, stamp, waiting) = (round.clone(), stamp.clone(), waiting.clone());
                tokio::spawn(raw_serve(stream, round, stamp, waiting));
            }
        })
    };
    let consumers = Consumers::start(&addr, count, Mode::Raw)?;
    let append = || {
        stamp.store(now_nanos(), Ordering::SeqCst);
        round.notify_waiters();
        Ok(())
    };
    let waiting = || waiting.load(Ordering::SeqCst);
    let outcome = async {
        consumers.ready().await?;
        latencies(&consumers, count, Mode::Raw, waiting, append).await
    }
    .await;
    server.abort();
    outcome
}

/// One raw connection: reads a request head, waits for the round, answers.
async fn raw_serve(
    mut stream: tokio::net::TcpStream,
    round: Arc<tokio::sync::Notify>,
    stamp: Arc<AtomicU64>,
    waiting: Arc<AtomicUsize>,
) {
    let mut buffer = vec![0u8; 1024];
    loop {
        if raw_read_until(&mut stream, &mut buffer, b"\r\n\r\n")
            .await
            .is_none()
        {
            return;
        }
        let next = round.notified();
        waiting.fetch_add(1, Ordering::SeqCst);
        next.await;
        waiting.fetch_sub(1, Ordering::SeqCst);
        let body = format!(
            "{{\"partition\":0,\"data\":{{\"t\":{}}}}}\n{{\"partition\":0,\"cursor\":\"1\"}}\n",
            stamp.load(Ordering::SeqCst)
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncache-control: no-store\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads into `buffer` until what came ends with `end`; gives its length,
/// or `None` at the end of the stream (or of the buffer).
async fn raw_read_until(
    stream: &mut tokio::net::TcpStream,
    buffer: &mut [u8],
    end: &[u8],
) -> Option<usize> {
    let mut filled = 0;
    while !buffer[..filled].ends_with(end) {
        match stream.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => filled += read,
        }
        if filled == buffer.len() {
            return None;
        }
    }
    Some(filled)
}

/// Polls `done` every millisecond until it holds.
async fn until(mut done: impl FnMut() -> bool, what: &str) -> Result<(), BoxError> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > STEP_TIMEOUT {
            return Err(format!("timed out: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// A consumer process, its reports gathered by a thread; killed on drop.
struct Consumers {
    child: Child,
    ready: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    latencies: Arc<Mutex<Vec<u64>>>,
}

impl Consumers {
    fn start(url: &str, count: usize, mode: Mode) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["consume", url, "--consumers", &count.to_string()])
            .args(["--mode", mode.name()])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let ready = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        {
            let (ready, received, latencies) = (ready.clone(), received.clone(), latencies.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line == "READY" {
                        ready.fetch_add(1, Ordering::SeqCst);
                    } else if let Some(nanos) = line.strip_prefix("L ") {
                        if let Ok(nanos) = nanos.parse() {
                            latencies
                                .lock()
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .push(nanos);
                        }
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        Ok(Consumers {
            child,
            ready,
            received,
            latencies,
        })
    }

    /// Waits until every consumer has read its first page (the child
    /// says `READY` once).
    async fn ready(&self) -> Result<(), BoxError> {
        until(
            || self.ready.load(Ordering::SeqCst) > 0,
            "the consumers start",
        )
        .await
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(
            &mut self
                .latencies
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small pseudo-random source for the polling rounds' append times.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        Jitter(now_nanos() | 1)
    }

    /// A duration in `[0, max)`.
    fn below(&mut self, max: Duration) -> Duration {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_nanos(self.0 % (max.as_nanos() as u64).max(1))
    }
}

// ---------------------------------------------------------------------------
// The consumer side: `wait_bench consume URL --consumers N --mode wait|poll`.
// Prints `READY` once all consumers have read their first page, then
// `L <nanoseconds>` for each event a consumer has.

fn consume_main(args: &[String]) -> Result<(), BoxError> {
    let url = args.first().ok_or("consume needs a URL")?.clone();
    let (mut consumers, mut mode) = (1usize, Mode::Wait);
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--consumers" => consumers = value.parse()?,
            "--mode" if value == "wait" => mode = Mode::Wait,
            "--mode" if value == "poll" => mode = Mode::Poll,
            "--mode" if value == "raw" => mode = Mode::Raw,
            other => return Err(format!("unknown argument {other:?} {value:?}").into()),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = Arc::new(AtomicUsize::new(0));
        let reporter = Reporter::start();
        let mut tasks = Vec::with_capacity(consumers);
        for _ in 0..consumers {
            let (started, reporter) = (started.clone(), reporter.clone());
            let task = if mode == Mode::Raw {
                tokio::spawn(consume_raw(url.clone(), started, consumers, reporter))
            } else {
                // A client each, as consumers in services of their own have.
                let client = Client::builder(url.parse()?, 1).build();
                tokio::spawn(consume(client, mode, started, consumers, reporter))
            };
            tasks.push(task);
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    })
}

/// One raw consumer of the floor: a bare TCP connection to `addr` that
/// sends a fixed request head and reads one response after another.
async fn consume_raw(
    addr: String,
    started: Arc<AtomicUsize>,
    consumers: usize,
    reporter: Reporter,
) -> Result<(), BoxError> {
    const REQUEST: &[u8] = b"GET /feed/v1?n=1&cursor0=1&wait=20 HTTP/1.1\r\nhost: feed\r\n\r\n";
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let mut buffer = vec![0u8; 4096];
    let mut first = true;
    loop {
        stream.write_all(REQUEST).await?;
        if first {
            first = false;
            if started.fetch_add(1, Ordering::SeqCst) + 1 == consumers {
                reporter.send("READY".to_owned());
            }
        }
        // The response ends with its checkpoint line.
        let Some(filled) = raw_read_until(&mut stream, &mut buffer, b"\"}\n").await else {
            return Ok(());
        };
        let now = now_nanos();
        let text = std::str::from_utf8(&buffer[..filled])?;
        let stamp = text
            .split_once("\"t\":")
            .and_then(|(_, rest)| rest.split_once('}'))
            .and_then(|(stamp, _)| stamp.parse::<u64>().ok())
            .ok_or("a response without its time")?;
        reporter.send(format!("L {}", now.saturating_sub(stamp)));
    }
}

/// Hands the latency of each of `events`, had at `now`, to the process's
/// [`Reporter`].
fn report(reporter: &Reporter, events: &[Event], now: u64) -> Result<(), BoxError> {
    for event in events {
        let stamp: serde_json::Value = event.data.deserialize()?;
        let stamp = stamp["t"].as_u64().ok_or("an event without its time")?;
        reporter.send(format!("L {}", now.saturating_sub(stamp)));
    }
    Ok(())
}

/// Writes the consumers' report lines to stdout from a thread of its own,
/// as many in one write as have come: the consumers' tasks never wait on
/// the pipe, so that reporting costs the measured path next to nothing.
#[derive(Clone)]
struct Reporter(std::sync::mpsc::Sender<String>);

impl Reporter {
    fn start() -> Self {
        let (sender, receiver) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut out = std::io::stdout().lock();
            while let Ok(first) = receiver.recv() {
                let mut lines = first + "\n";
                for more in receiver.try_iter() {
                    lines.push_str(&more);
                    lines.push('\n');
                }
                if out
                    .write_all(lines.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return;
                }
            }
        });
        Reporter(sender)
    }

    fn send(&self, line: String) {
        // The writer only stops when stdout is gone, and the run with it.
        let _ = self.0.send(line);
    }
}

type HttpClient = Client<zeroeventhub::client::ClientStack<zeroeventhub::client::HttpTransport>>;

/// One consumer: from `_last` (asked once without a wait, to learn where
/// the end is), then with a wait or polling, reporting the latency of each
/// event it has. The loop is the one the client's docs give: ask again at
/// once after events, otherwise a poll interval after the last request.
async fn consume(
    client: HttpClient,
    mode: Mode,
    started: Arc<AtomicUsize>,
    consumers: usize,
    reporter: Reporter,
) -> Result<(), BoxError> {
    let wait = match mode {
        Mode::Wait | Mode::Raw => WAIT,
        Mode::Poll => Duration::ZERO,
    };
    let mut request = client.request([(0, Cursor::last())])?;
    let mut first = true;
    loop {
        let sent = Instant::now();
        let page = match client.fetch_page(&request).await {
            Ok(page) => page,
            Err(error) => {
                eprintln!("consumer: {error}");
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
        };
        report(&reporter, page.events(), now_nanos())?;
        if first {
            first = false;
            request = page.next_request(&request).with_wait(wait);
            if started.fetch_add(1, Ordering::SeqCst) + 1 == consumers {
                reporter.send("READY".to_owned());
            }
            continue;
        }
        if !page.has_new_events() {
            tokio::time::sleep_until(sent + POLL_INTERVAL).await;
        }
        request = page.next_request(&request);
    }
}
