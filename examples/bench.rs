//! The end-to-end benchmark: our client against our `serve` example over
//! loopback HTTP, with the protocol's standard workload, and optionally the
//! Python reference in the same run.
//!
//! ```text
//! cargo run --release --example bench -- [--runs 5] [--events 200000] [--no-scaling]
//!     [--compare --python PATH] [--connections-only]
//! ```
//!
//! It builds and starts `serve` as its own process, then runs every consumer
//! measurement in a fresh child process of its own (`bench consume ...`), so
//! that CPU time and peak memory are each side's alone: CPU from
//! `/proc/PID/stat`, peak RSS from `VmHWM` in `/proc/PID/status`. Every
//! figure is the median of `--runs` runs. With `--compare`, the reference
//! server (`zeroeventhub==0.2.4` under uvicorn) and client are measured too,
//! in the four pairings; `benches/compare.sh` sets that up.
//!
//! Our pair is measured over HTTP/1.1 and over HTTP/2 (prior knowledge:
//! `serve` speaks both on one port), and the `tail` example printing to
//! `/dev/null` against the consumer, runs interleaved.
//!
//! Then, on a fresh `serve`: time to first byte while 1,000 idle
//! connections are open beside the quiet figure, and the server's memory per
//! consumer that asks for a large page and stops reading (RSS growth over
//! 200 of them). `--connections-only` measures only these.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, FeedItem, FeedRequest};

#[path = "support/procfs.rs"]
mod procfs;

use procfs::{cpu_seconds, status_kb};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if args.first().map(String::as_str) == Some("consume") {
        consume_main(&args[1..])
    } else {
        Options::parse(&args).and_then(|options| orchestrate(&options))
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Orchestration: servers, consumer processes, the table.

struct Options {
    runs: usize,
    events: u64,
    scaling: bool,
    connections_only: bool,
    python: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, BoxError> {
        let mut options = Options {
            runs: 5,
            events: 200_000,
            scaling: true,
            connections_only: false,
            python: None,
        };
        let mut compare = false;
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--runs" => options.runs = value()?.parse()?,
                "--events" => options.events = value()?.parse()?,
                "--no-scaling" => options.scaling = false,
                "--connections-only" => options.connections_only = true,
                "--compare" => compare = true,
                "--python" => options.python = Some(PathBuf::from(value()?)),
                other => return Err(format!("unknown argument {other:?}").into()),
            }
        }
        if compare && options.python.is_none() {
            return Err("--compare needs --python PATH (a Python with zeroeventhub==0.2.4; benches/compare.sh finds it)".into());
        }
        if options.runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        Ok(options)
    }
}

/// The scaling curve's page sizes.
const SCALING_PAGE_SIZES: [u64; 5] = [100, 1_000, 10_000, 100_000, 1_000_000];
/// Events read per run at each page size of the scaling curve.
const SCALING_EVENTS: u64 = 1_000_000;
/// Events read by each of the reference pairings (the reference is slow).
const REFERENCE_EVENTS: u64 = 20_000;

fn orchestrate(options: &Options) -> Result<(), BoxError> {
    let serve = build_example("serve")?;
    if options.connections_only {
        return connection_figures(&serve, options.runs);
    }
    let tail = build_example("tail")?;
    let stored = if options.scaling {
        options.events.max(SCALING_EVENTS)
    } else {
        options.events
    };
    let events_arg = stored.to_string();
    let server = Server::start(
        Command::new(&serve).args([
            "--addr",
            "127.0.0.1:0",
            "--partitions",
            "2",
            "--events",
            &events_arg,
            "--max-page-size",
            "1000000",
        ]),
        |line| line.strip_prefix("listening on ").map(str::to_owned),
    )?;
    let ours = server.url.clone();
    let idle_rss_kb = status_kb(server.pid(), "VmRSS:")?;
    reset_peak_rss(server.pid())?;

    println!(
        "end to end over loopback, standard workload, medians of {} runs ({}, {} cores)",
        options.runs,
        today(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{}", Row::header());
    let runs = options.runs;
    let events = options.events.to_string();
    let ours_client = |extra: &[&str]| consumer_command(&ours, extra);
    let single_1k = measure(runs, Some(&server), || {
        ours_client(&["--events", &events, "--page-size", "1000"])
    })?;
    single_1k.print("ours/ours pagesizehint=1000");
    let single_10k = measure(runs, Some(&server), || {
        ours_client(&["--events", &events, "--page-size", "10000"])
    })?;
    single_10k.print("ours/ours pagesizehint=10000");
    let http2_1k = measure(runs, Some(&server), || {
        ours_client(&["--events", &events, "--page-size", "1000", "--http2"])
    })?;
    http2_1k.print("ours/ours HTTP/2 pagesizehint=1000");
    let http2_10k = measure(runs, Some(&server), || {
        ours_client(&["--events", &events, "--page-size", "10000", "--http2"])
    })?;
    http2_10k.print("ours/ours HTTP/2 pagesizehint=10000");
    let (tail_rate, consumer_rate) = measure_tail(runs, &tail, &ours, &events)?;
    println!(
        "tail to /dev/null, pagesizehint=10000: {tail_rate:.0} events/s, {:.0}% of the consumer's {consumer_rate:.0} (both timed from process start to exit, runs interleaved)",
        100.0 * tail_rate / consumer_rate
    );
    let concurrent = measure(runs, Some(&server), || {
        ours_client(&[
            "--consumers",
            "16",
            "--events",
            "20000",
            "--page-size",
            "10000",
        ])
    })?;
    concurrent.print("ours/ours 16 consumers x 20000");
    let ttfb = measure(runs, Some(&server), || {
        ours_client(&["--ttfb", "200", "--page-size", "1000"])
    })?;
    println!(
        "time to first byte, pagesizehint=1000 (median of 200 requests): {:.3} ms",
        ttfb.ttfb_ms.unwrap_or(f64::NAN)
    );

    if options.scaling {
        println!("\nscaling curve: {SCALING_EVENTS} events per run at each page size");
        println!("{}", Row::header());
        for page_size in SCALING_PAGE_SIZES {
            let page = page_size.to_string();
            let events = SCALING_EVENTS.to_string();
            measure(runs, Some(&server), || {
                ours_client(&["--events", &events, "--page-size", &page])
            })?
            .print(&format!("ours/ours pagesizehint={page_size}"));
        }
    }
    let peak_rss_kb = status_kb(server.pid(), "VmHWM:")?;
    println!(
        "\nserver RSS: {:.1} MB idle, peak growth while serving {:.1} MB",
        idle_rss_kb as f64 / 1024.0,
        peak_rss_kb.saturating_sub(idle_rss_kb) as f64 / 1024.0
    );

    if let Some(python) = &options.python {
        compare(python, &ours, runs, &single_10k)?;
    }
    drop(server);
    connection_figures(&serve, runs)
}

/// The four pairings with the Python reference, and our ratios.
fn compare(python: &Path, ours: &str, runs: usize, ours_ours: &Row) -> Result<(), BoxError> {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference_server = scripts.join("tests/interop/reference_server.py");
    let reference_consume = scripts.join("benches/reference_consume.py");
    let stored = REFERENCE_EVENTS.to_string();
    let reference = Server::start(
        Command::new(python).arg(&reference_server).args([
            "0",
            "standard",
            "--events",
            &stored,
            "--default-page-size",
            "1000",
        ]),
        |line| {
            line.strip_prefix("READY ")
                .map(|port| format!("http://127.0.0.1:{port}/feed/v1"))
        },
    )?;
    let events = REFERENCE_EVENTS.to_string();
    let python_client = |url: &str| {
        let mut command = Command::new(python);
        command
            .arg(&reference_consume)
            .args([url, "--events", &events, "--page-size", "10000"]);
        command
    };
    println!(
        "\nwith the Python reference (zeroeventhub 0.2.4), {REFERENCE_EVENTS} events per run, pagesizehint=10000"
    );
    println!("{}", Row::header());
    let ours_to_reference = measure(runs, Some(&reference), || {
        consumer_command(
            &reference.url,
            &["--events", &events, "--page-size", "10000"],
        )
    })?;
    ours_to_reference.print("ours client -> reference server");
    let reference_to_ours = measure(runs, None, || python_client(ours))?;
    reference_to_ours.print("reference client -> ours server");
    let reference_pair = measure(runs, Some(&reference), || python_client(&reference.url))?;
    reference_pair.print("reference/reference");
    ours_ours.print("ours/ours (from above)");
    println!(
        "ours/ours is {:.0}x the reference pair; our client {:.1}x theirs on their server; our server {:.1}x theirs for their client",
        ours_ours.events_per_second / reference_pair.events_per_second,
        ours_to_reference.events_per_second / reference_pair.events_per_second,
        reference_to_ours.events_per_second / reference_pair.events_per_second,
    );
    Ok(())
}

/// Builds the example `name` in this profile, with this benchmark's own
/// features (so that one build of the crate serves both), and returns its
/// path.
fn build_example(name: &str) -> Result<PathBuf, BoxError> {
    let features: Vec<&str> = [
        ("server", cfg!(feature = "server")),
        ("serve", cfg!(feature = "serve")),
        ("client", cfg!(feature = "client")),
        ("hyper-client", cfg!(feature = "hyper-client")),
        ("rustls", cfg!(feature = "rustls")),
        ("postgres", cfg!(feature = "postgres")),
        ("sqlite", cfg!(feature = "sqlite")),
    ]
    .into_iter()
    .filter_map(|(name, enabled)| enabled.then_some(name))
    .collect();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "--example",
        name,
        "--no-default-features",
        "--features",
        &features.join(","),
    ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let status = command.status()?;
    if !status.success() {
        return Err(format!("building the {name} example failed").into());
    }
    let examples = std::env::current_exe()?
        .parent()
        .ok_or("the benchmark binary has no folder")?
        .to_owned();
    Ok(examples.join(name))
}

/// The `tail` example printing `events` events of partition 0 to
/// `/dev/null`, against the benchmark's consumer reading the same, runs
/// interleaved; each timed from its process's start to its exit. The
/// medians of both, in events/s.
fn measure_tail(runs: usize, tail: &Path, url: &str, events: &str) -> Result<(f64, f64), BoxError> {
    let count: f64 = events.parse()?;
    let timed = |command: &mut Command| -> Result<f64, BoxError> {
        let start = Instant::now();
        let status = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()?;
        let seconds = start.elapsed().as_secs_f64();
        if !status.success() {
            return Err(format!("a run failed ({status})").into());
        }
        Ok(count / seconds)
    };
    let (mut tail_rates, mut consumer_rates) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        tail_rates.push(timed(Command::new(tail).args([
            url,
            "--partitions",
            "2",
            "--cursor",
            "0=_first",
            "--page-size",
            "10000",
            "--max-events",
            events,
        ]))?);
        consumer_rates.push(timed(&mut consumer_command(
            url,
            &["--events", events, "--page-size", "10000"],
        ))?);
    }
    Ok((median(tail_rates), median(consumer_rates)))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn consumer_command(url: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.args(["consume", url]).args(extra);
    command
}

/// The medians of one scenario.
struct Row {
    events_per_second: f64,
    client_us_per_event: f64,
    server_us_per_event: Option<f64>,
    client_peak_rss_mb: f64,
    ttfb_ms: Option<f64>,
}

impl Row {
    fn header() -> String {
        format!(
            "{:<36} {:>12} {:>12} {:>12} {:>14}",
            "scenario", "events/s", "client us/ev", "server us/ev", "client peak MB"
        )
    }

    fn print(&self, name: &str) {
        let server = self
            .server_us_per_event
            .map_or("-".to_owned(), |us| format!("{us:.3}"));
        println!(
            "{name:<36} {:>12.0} {:>12.3} {server:>12} {:>14.1}",
            self.events_per_second, self.client_us_per_event, self.client_peak_rss_mb
        );
    }
}

/// Runs the consumer `runs` times, measuring `server`'s CPU around each run,
/// and returns the medians.
fn measure(
    runs: usize,
    server: Option<&Server>,
    mut consumer: impl FnMut() -> Command,
) -> Result<Row, BoxError> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let server_before = server.map(|s| cpu_seconds(s.pid())).transpose()?;
        let output = consumer().stderr(Stdio::inherit()).output()?;
        let server_after = server.map(|s| cpu_seconds(s.pid())).transpose()?;
        if !output.status.success() {
            return Err(format!("a consumer run failed ({})", output.status).into());
        }
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|error| format!("a consumer printed no report: {error}"))?;
        let number = |key: &str| report[key].as_f64().ok_or(format!("report lacks {key}"));
        let events = number("events")?;
        samples.push(Row {
            events_per_second: events / number("seconds")?,
            client_us_per_event: number("cpu_seconds")? * 1e6 / events,
            server_us_per_event: server_before
                .zip(server_after)
                .map(|(before, after)| (after - before) * 1e6 / events),
            client_peak_rss_mb: number("peak_rss_kb")? / 1024.0,
            ttfb_ms: report["ttfb_ms"].as_f64(),
        });
    }
    let median_of = |value: &dyn Fn(&Row) -> f64| median(samples.iter().map(value).collect());
    Ok(Row {
        events_per_second: median_of(&|row| row.events_per_second),
        client_us_per_event: median_of(&|row| row.client_us_per_event),
        server_us_per_event: server
            .map(|_| median_of(&|row| row.server_us_per_event.unwrap_or(0.0))),
        client_peak_rss_mb: median_of(&|row| row.client_peak_rss_mb),
        ttfb_ms: samples[0]
            .ttfb_ms
            .map(|_| median_of(&|row| row.ttfb_ms.unwrap_or(0.0))),
    })
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts `command` and waits for the line from which `ready` reads the
    /// feed's URL.
    fn start(
        command: &mut Command,
        ready: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, BoxError> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut server = Server {
            child,
            url: String::new(),
        };
        for line in BufReader::new(stdout).lines() {
            if let Some(url) = ready(&line?) {
                server.url = url;
                return Ok(server);
            }
        }
        Err("a server ended before it was ready".into())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `VmHWM` start again from the current RSS.
fn reset_peak_rss(pid: impl std::fmt::Display) -> Result<(), BoxError> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

fn today() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map_or_else(|| "date unknown".to_owned(), |date| date.trim().to_owned())
}

// ---------------------------------------------------------------------------
// Connections that cost the server without reading: memory per consumer that
// stopped reading, and time to first byte beside 1,000 idle connections.

/// Consumers that ask for a large page and stop reading.
const SLOW_READERS: usize = 200;
/// Idle connections held open beside the time-to-first-byte requests.
const IDLE_CONNECTIONS: usize = 1_000;

fn connection_figures(serve: &Path, runs: usize) -> Result<(), BoxError> {
    // Timeouts far above the measurement, so that nothing is closed during it.
    let server = Server::start(
        Command::new(serve).args([
            "--addr",
            "127.0.0.1:0",
            "--partitions",
            "2",
            "--events",
            "200000",
            "--max-page-size",
            "1000000",
            "--header-timeout",
            "600",
            "--idle-timeout",
            "600",
            "--stall-timeout",
            "600",
            "--max-connections",
            "4096",
        ]),
        |line| line.strip_prefix("listening on ").map(str::to_owned),
    )?;
    let addr = server
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .ok_or("no address in the URL")?
        .to_owned();
    println!("\nconnections that do not read ({}):", today());

    let ttfb = |label: &str| -> Result<f64, BoxError> {
        let row = measure(runs, None, || {
            consumer_command(&server.url, &["--ttfb", "200", "--page-size", "1000"])
        })?;
        let ms = row.ttfb_ms.unwrap_or(f64::NAN);
        println!("time to first byte, pagesizehint=1000, {label}: {ms:.3} ms");
        Ok(ms)
    };
    let quiet = ttfb("quiet")?;
    let idle: Vec<std::net::TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(&addr))
        .collect::<Result<_, _>>()?;
    wait_for_descriptors(server.pid(), IDLE_CONNECTIONS)?;
    let loaded = ttfb(&format!("{IDLE_CONNECTIONS} idle connections open"))?;
    println!("  ratio: {:.2}x the quiet figure", loaded / quiet);
    drop(idle);
    std::thread::sleep(Duration::from_secs(1));

    let before_kb = status_kb(server.pid(), "VmRSS:")?;
    let request = format!(
        "GET /feed/v1?n=2&cursor0=_first&cursor1=_first&pagesizehint=1000000 HTTP/1.1\r\nhost: {addr}\r\n\r\n"
    );
    let mut slow = Vec::with_capacity(SLOW_READERS);
    for _ in 0..SLOW_READERS {
        let mut tcp = std::net::TcpStream::connect(&addr)?;
        std::io::Write::write_all(&mut tcp, request.as_bytes())?;
        slow.push(tcp);
    }
    let after_kb = settled_rss_kb(server.pid())?;
    println!(
        "server memory per consumer that stopped reading ({SLOW_READERS} of them, pagesizehint=1000000): {:.0} KiB",
        after_kb.saturating_sub(before_kb) as f64 / SLOW_READERS as f64
    );
    drop(slow);
    Ok(())
}

/// Waits until process `pid` holds at least `count` open descriptors.
fn wait_for_descriptors(pid: u32, count: usize) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() < count {
        if Instant::now() > deadline {
            return Err("the server did not accept the idle connections".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The RSS of process `pid` once it stops moving: the stalled responses
/// have filled the sockets and wait.
fn settled_rss_kb(pid: u32) -> Result<u64, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = status_kb(pid, "VmRSS:")?;
    let mut steady = 0;
    while steady < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = status_kb(pid, "VmRSS:")?;
        steady = if now.abs_diff(last) * 200 < last {
            steady + 1
        } else {
            0
        };
        last = now;
    }
    Ok(last)
}

// ---------------------------------------------------------------------------
// A consumer run: `bench consume URL [--events N] [--page-size K]
// [--consumers C] [--ttfb R] [--partition P] [--http2]`, printing one JSON
// report. `--http2` speaks HTTP/2 with prior knowledge.

fn consume_main(args: &[String]) -> Result<(), BoxError> {
    let url = args.first().ok_or("consume needs a URL")?.clone();
    let (mut events, mut page_size, mut consumers, mut ttfb, mut partition) =
        (200_000u64, 1_000u32, 1usize, 0usize, 0u32);
    let mut http2 = false;
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        if flag == "--http2" {
            http2 = true;
            continue;
        }
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--events" => events = value.parse()?,
            "--page-size" => page_size = value.parse()?,
            "--consumers" => consumers = value.parse()?,
            "--ttfb" => ttfb = value.parse()?,
            "--partition" => partition = value.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut builder = Client::builder(url.parse()?, 2);
        if http2 {
            builder = builder.http2_prior_knowledge();
        }
        let client = builder.build();
        // One small page first, so that the connection is open before timing.
        read_events(&client, partition, 1, 1).await?;
        let cpu_before = cpu_seconds("self")?;
        let start = Instant::now();
        let mut report = serde_json::Map::new();
        let received = if ttfb > 0 {
            let mut latencies = Vec::with_capacity(ttfb);
            for _ in 0..ttfb {
                latencies.push(first_byte(&client, partition, page_size).await?);
            }
            latencies.sort();
            let median = latencies[latencies.len() / 2];
            report.insert("ttfb_ms".into(), (median.as_secs_f64() * 1e3).into());
            (ttfb as u64) * u64::from(page_size)
        } else {
            let mut tasks = Vec::with_capacity(consumers);
            for consumer in 0..consumers {
                let client = client.clone();
                let partition = if consumers > 1 {
                    consumer as u32 % 2
                } else {
                    partition
                };
                tasks.push(tokio::spawn(async move {
                    read_events(&client, partition, events, page_size).await
                }));
            }
            let mut total = 0;
            for task in tasks {
                total += task.await??;
            }
            total
        };
        let seconds = start.elapsed().as_secs_f64();
        report.insert("events".into(), received.into());
        report.insert("seconds".into(), seconds.into());
        report.insert(
            "cpu_seconds".into(),
            (cpu_seconds("self")? - cpu_before).into(),
        );
        report.insert("peak_rss_kb".into(), status_kb("self", "VmHWM:")?.into());
        println!("{}", serde_json::Value::Object(report));
        Ok(())
    })
}

type HttpClient = Client<zeroeventhub::client::ClientStack<zeroeventhub::client::HttpTransport>>;

/// Reads `events` events of `partition` from `_first`, page after page.
async fn read_events(
    client: &HttpClient,
    partition: u32,
    events: u64,
    page_size: u32,
) -> Result<u64, BoxError> {
    let mut cursor = Cursor::first();
    let mut received = 0;
    while received < events {
        let request =
            FeedRequest::new(2, [(partition, cursor.clone())])?.with_page_size_hint(page_size);
        let mut stream = client.fetch(&request).await?;
        let mut progressed = false;
        while let Some(item) = stream.next().await {
            match item? {
                FeedItem::Event(_) => received += 1,
                FeedItem::Checkpoint(checkpoint) => {
                    cursor = checkpoint.cursor;
                    progressed = true;
                }
            }
        }
        if !progressed {
            return Err(format!("the feed ran out after {received} events").into());
        }
    }
    Ok(received)
}

/// The time from sending a request to its first line, reading the page to
/// its end so that the connection is reused.
async fn first_byte(
    client: &HttpClient,
    partition: u32,
    page_size: u32,
) -> Result<Duration, BoxError> {
    let request =
        FeedRequest::new(2, [(partition, Cursor::first())])?.with_page_size_hint(page_size);
    let start = Instant::now();
    let mut stream = client.fetch(&request).await?;
    let first = stream.next().await.ok_or("an empty page")??;
    let elapsed = start.elapsed();
    drop(first);
    while let Some(item) = stream.next().await {
        item?;
    }
    Ok(elapsed)
}
