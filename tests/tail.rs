//! The `tail` example, run as a program: `--state` makes an interrupted
//! run resume without loss or duplicate.
#![cfg(all(feature = "hyper-client", feature = "server"))]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod support {
    pub(crate) mod examples;
}

fn tail_binary() -> PathBuf {
    support::examples::binary("tail")
}

/// A feed of `partitions` x `per_partition` numbered events, served on a
/// free loopback port by a runtime that lives as long as the test.
fn serve(partitions: u32, per_partition: u64) -> (tokio::runtime::Runtime, String) {
    let feed = zeroeventhub::server::MemoryFeed::new(partitions);
    append_numbered(&feed, 0..per_partition);
    let app = axum::Router::new().route_service("/feed", feed.service());
    serve_at_feed(app)
}

/// Appends the events numbered `indices` to every partition of `feed`.
fn append_numbered(feed: &zeroeventhub::server::MemoryFeed, indices: std::ops::Range<u64>) {
    use zeroeventhub::protocol::{Event, RawJson};
    for index in indices {
        for partition in 0..feed.partition_count() {
            let data = RawJson::from_serialize(&serde_json::json!({"p": partition, "i": index}))
                .expect("JSON");
            feed.append(Event::new(partition, data).with_header("seq", index.to_string()))
                .expect("the partition exists");
        }
    }
}

/// Serves `feed` at `/feed` on `addr`, on a runtime of its own: dropping
/// the runtime stops the server and closes its connections.
fn serve_on(
    feed: &zeroeventhub::server::MemoryFeed,
    addr: std::net::SocketAddr,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let app = axum::Router::new().route_service("/feed", feed.service());
    serve_app(app, addr)
}

/// Serves `app`, which routes `/feed`, on a free loopback port, on a
/// runtime of its own; gives the runtime and the URL of `/feed`.
fn serve_at_feed(app: axum::Router) -> (tokio::runtime::Runtime, String) {
    let (runtime, addr) = serve_app(app, "127.0.0.1:0".parse().expect("an address"));
    (runtime, format!("http://{addr}/feed"))
}

fn serve_app(
    app: axum::Router,
    addr: std::net::SocketAddr,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("a port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });
    (runtime, addr)
}

/// Starts tail with `args`, its stdout and stderr piped.
fn spawn_tail(args: &[&str]) -> std::process::Child {
    Command::new(tail_binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tail starts")
}

/// An event line as tail prints it: (partition, index).
fn parse_line(line: &str) -> (u32, u64) {
    let value: serde_json::Value = serde_json::from_str(line).expect("an NDJSON line");
    let partition = value["partition"].as_u64().expect("a partition") as u32;
    let index = value["data"]["i"].as_u64().expect("numbered data");
    assert_eq!(value["data"]["p"], partition, "{line}");
    assert_eq!(value["headers"]["seq"], index.to_string(), "{line}");
    (partition, index)
}

/// Runs tail with `args`; once `stop_after` lines are out, sends it
/// `signal`. Returns the lines it printed and whether it exited cleanly.
fn run_tail(args: &[&str], stop_after: Option<(usize, &str)>) -> (Vec<String>, bool) {
    let mut child = spawn_tail(args);
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut lines = Vec::new();
    for line in stdout.lines() {
        lines.push(line.expect("UTF-8 output"));
        if let Some((after, signal)) = stop_after {
            if lines.len() == after {
                let status = Command::new("kill")
                    .args([signal, &child.id().to_string()])
                    .status()
                    .expect("kill runs");
                assert!(status.success());
            }
        }
    }
    let output = child.wait_with_output().expect("tail exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.lines().count() <= 1,
        "at most one line on stderr: {stderr}"
    );
    (lines, output.status.success())
}

/// Checks that `lines` hold every event of the feed once, in order per
/// partition.
fn assert_exactly_once(lines: &[String], partitions: u32, per_partition: u64) {
    let mut next = vec![0u64; partitions as usize];
    for line in lines {
        let (partition, index) = parse_line(line);
        assert_eq!(
            index, next[partition as usize],
            "partition {partition}: no loss, no duplicate"
        );
        next[partition as usize] += 1;
    }
    assert_eq!(next, vec![per_partition; partitions as usize]);
}

/// A scratch folder for state files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("zeh-tail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        Scratch(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("a UTF-8 path").to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn an_interrupted_run_resumes_from_its_state_without_loss_or_duplicate() {
    let (_runtime, url) = serve(3, 4000);
    let scratch = Scratch::new("resume");
    let state = scratch.file("cursors.json");

    let args = [
        &url,
        "--partitions",
        "3",
        "--page-size",
        "40",
        "--headers",
        "seq",
        "--state",
        &state,
    ];
    let mut follow = args.to_vec();
    follow.push("--follow");
    // Stopped mid-run: the pipe holds it back, so it cannot be far ahead.
    let (first, clean) = run_tail(&follow, Some((1000, "-TERM")));
    assert!(clean, "SIGTERM ends the page in progress and exits cleanly");
    assert!(
        first.len() >= 1000 && first.len() < 12_000,
        "{}",
        first.len()
    );

    // Restarted: it goes on from the saved cursors and stops when caught up.
    let (second, clean) = run_tail(&args, None);
    assert!(clean);
    assert!(!second.is_empty());
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_exactly_once(&all, 3, 4000);

    // Caught up: a third run prints nothing.
    let (third, clean) = run_tail(&args, None);
    assert!(clean && third.is_empty());
}

#[test]
fn a_killed_run_loses_nothing() {
    let (_runtime, url) = serve(2, 3000);
    let scratch = Scratch::new("kill");
    let state = scratch.file("cursors.json");
    let args = [
        &url,
        "--partitions",
        "2",
        "--page-size",
        "25",
        "--headers",
        "_all",
        "--state",
        &state,
    ];

    let (first, clean) = run_tail(&args, Some((700, "-KILL")));
    assert!(!clean);
    let (second, clean) = run_tail(&args, None);
    assert!(clean);

    // At most the page in progress is printed twice: never a loss.
    let mut seen = std::collections::BTreeSet::new();
    let mut repeated = 0;
    for line in first.iter().chain(&second) {
        if !seen.insert(parse_line(line)) {
            repeated += 1;
        }
    }
    assert_eq!(seen.len(), 6000);
    assert!(repeated <= 25, "{repeated} repeated");
}

#[test]
fn cursors_and_max_events_select_what_is_printed() {
    let (_runtime, url) = serve(3, 100);
    let (lines, clean) = run_tail(
        &[
            &url,
            "--partitions",
            "3",
            "--cursor",
            "2=49",
            "--cursor",
            "0=97",
            "--headers",
            "seq",
        ],
        None,
    );
    assert!(clean);
    let events: Vec<(u32, u64)> = lines.iter().map(|line| parse_line(line)).collect();
    assert_eq!(events.iter().filter(|(p, _)| *p == 0).count(), 2);
    assert_eq!(events.iter().filter(|(p, _)| *p == 2).count(), 50);
    assert!(events.iter().all(|(p, _)| *p != 1));

    let (lines, clean) = run_tail(
        &[
            &url,
            "--partitions",
            "3",
            "--max-events",
            "7",
            "--headers",
            "seq",
        ],
        None,
    );
    assert!(clean);
    assert_eq!(lines.len(), 7);
}

#[test]
fn errors_exit_non_zero_with_one_line() {
    let (_runtime, url) = serve(1, 1);
    for args in [
        vec![url.as_str(), "--partitions", "2"],
        vec![url.as_str()],
        vec![
            url.as_str(),
            "--partitions",
            "1",
            "--cursor",
            "0=never-handed-out",
        ],
        vec!["http://127.0.0.1:1/feed", "--partitions", "1"],
        vec![
            url.as_str(),
            "--partitions",
            "1",
            "--cursor",
            "0=_first",
            "--cursor",
            "0=_last",
        ],
    ] {
        let output = Command::new(tail_binary())
            .args(&args)
            .output()
            .expect("tail runs");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("tail: "), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn a_run_with_cursors_keeps_the_saved_progress_of_other_partitions() {
    let (_runtime, url) = serve(2, 30);
    let scratch = Scratch::new("cursor-state");
    let state = scratch.file("cursors.json");
    let base = [
        &url,
        "--partitions",
        "2",
        "--headers",
        "seq",
        "--state",
        &state,
    ];

    let (first, clean) = run_tail(&base, None);
    assert!(clean);
    assert_exactly_once(&first, 2, 30);

    // Only partition 0 asked for: its saved cursor wins over `_first`.
    let mut only_zero = base.to_vec();
    only_zero.extend(["--cursor", "0=_first"]);
    let (second, clean) = run_tail(&only_zero, None);
    assert!(clean && second.is_empty(), "{second:?}");

    // Partition 1's progress is still in the file: nothing comes again.
    let (third, clean) = run_tail(&base, None);
    assert!(clean);
    assert!(third.is_empty(), "{} events printed again", third.len());
}

/// A running `tail`, its output lines arriving on channels.
struct Running {
    child: std::process::Child,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = spawn_tail(args);
        let forward = |pipe: Box<dyn std::io::Read + Send>| {
            let (sender, receiver) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
            receiver
        };
        let stdout = forward(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = forward(Box::new(child.stderr.take().expect("piped stderr")));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// The next `count` lines of stdout; fails if they take more than 30 s.
    fn lines(&self, count: usize) -> Vec<String> {
        (0..count)
            .map(|got| {
                self.stdout
                    .recv_timeout(std::time::Duration::from_secs(30))
                    .unwrap_or_else(|error| panic!("line {got} of {count} missing: {error}"))
            })
            .collect()
    }

    /// Waits for tail to exit by itself, at most 20 s; whether it was
    /// clean, and its stderr.
    fn exit(mut self) -> (bool, Vec<String>) {
        for _ in 0..200 {
            if let Some(exit) = self.child.try_wait().expect("tail's status") {
                return (exit.success(), self.stderr.iter().collect());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("tail did not exit within 20 s");
    }

    /// Waits for tail to exit by itself with an error: one line on
    /// stderr, which names `cause`.
    fn fails_with(self, cause: &str) {
        let (clean, stderr) = self.exit();
        assert!(!clean);
        assert_eq!(stderr.len(), 1, "{stderr:?}");
        assert!(
            stderr[0].starts_with("tail: ") && stderr[0].contains(cause),
            "{stderr:?}"
        );
    }

    /// Sends `SIGTERM` and waits for the exit; whether it was clean, and
    /// what remained on stderr.
    fn stop(mut self) -> (bool, Vec<String>) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = self.child.wait().expect("tail exits");
        (exit.success(), self.stderr.iter().collect())
    }
}

#[test]
fn follow_rides_out_a_server_restart() {
    let feed = zeroeventhub::server::MemoryFeed::new(2);
    append_numbered(&feed, 0..50);
    let (server, addr) = serve_on(&feed, "127.0.0.1:0".parse().unwrap());
    let url = format!("http://{addr}/feed");
    let tail = Running::start(&[&url, "--partitions", "2", "--headers", "seq", "--follow"]);
    let mut lines = tail.lines(100);

    // The server goes away; tail says so on stderr, and keeps trying.
    server.shutdown_background();
    append_numbered(&feed, 50..80);
    let failure = tail
        .stderr
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a line on stderr for the failure");
    assert!(failure.starts_with("tail: "), "{failure}");

    // Back on the same port: tail goes on where it was.
    let (_server, _) = serve_on(&feed, addr);
    lines.extend(tail.lines(60));
    let (clean, stderr) = tail.stop();
    assert!(clean, "{stderr:?}");
    assert!(
        stderr.iter().all(|line| line.starts_with("tail: ")),
        "{stderr:?}"
    );
    assert_exactly_once(&lines, 2, 80);
}

/// A feed of one partition that never has events, counting the requests
/// it answers. With `moving`, every answer is a checkpoint with a new
/// cursor (`c0`, `c1`, ...), as a feed skipping rows its consumer may not
/// see may send; otherwise every answer is empty (caught up).
fn eventless_feed(moving: bool) -> (tokio::runtime::Runtime, String, Arc<AtomicU64>) {
    let requests = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&requests);
    let app = axum::Router::new().route(
        "/feed",
        axum::routing::get(move || {
            let answer = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = if moving {
                    format!("{{\"partition\":0,\"cursor\":\"c{answer}\"}}\n")
                } else {
                    String::new()
                };
                ([(http::header::CONTENT_TYPE, "application/x-ndjson")], body)
            }
        }),
    );
    let (runtime, url) = serve_at_feed(app);
    (runtime, url, requests)
}

#[test]
fn follow_paces_a_feed_that_moves_its_cursor_on_eventless_pages() {
    let (_moving_server, moving_url, moving_requests) = eventless_feed(true);
    let (_idle_server, idle_url, idle_requests) = eventless_feed(false);
    let scratch = Scratch::new("eventless");
    let state = scratch.file("cursors.json");

    // Both run side by side for the same while.
    let moving = Running::start(&[
        &moving_url,
        "--partitions",
        "1",
        "--follow",
        "--state",
        &state,
    ]);
    let idle = Running::start(&[&idle_url, "--partitions", "1", "--follow"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (moving_clean, moving_stderr) = moving.stop();
    let (idle_clean, idle_stderr) = idle.stop();
    assert!(
        moving_clean && idle_clean,
        "{moving_stderr:?} {idle_stderr:?}"
    );

    let moving = moving_requests.load(Ordering::SeqCst);
    let idle = idle_requests.load(Ordering::SeqCst);
    assert!(idle >= 1, "the caught-up feed was asked");
    assert!(
        moving <= 2 * idle + 2,
        "{moving} requests to the moving feed, {idle} to the caught-up one"
    );

    // The moved cursor is stored: the last answer's.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("a state file")).expect("JSON");
    assert_eq!(saved["cursors"]["0"], format!("c{}", moving - 1), "{saved}");
}

/// A feed at `/feed` answering every request with `body` (a stream of
/// chunks), on a free loopback port.
fn serve_body<S>(
    body: impl Fn() -> S + Clone + Send + Sync + 'static,
) -> (tokio::runtime::Runtime, String)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> + Send + 'static,
{
    let app = axum::Router::new().route(
        "/feed",
        axum::routing::get(move || {
            let body = body();
            async move {
                (
                    [(http::header::CONTENT_TYPE, "application/x-ndjson")],
                    axum::body::Body::from_stream(body),
                )
            }
        }),
    );
    serve_at_feed(app)
}

#[test]
fn a_page_that_drips_ends_at_the_page_timeout() {
    // A blank line every 100 ms: never idle, never done.
    let (_server, url) = serve_body(|| {
        futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Some((Ok(bytes::Bytes::from_static(b"\n")), ()))
        })
    });
    let tail = Running::start(&[&url, "--partitions", "1", "--page-timeout", "1"]);
    tail.fails_with("page timeout");
}

#[test]
fn events_without_a_checkpoint_past_the_limit_end_tail_even_when_following() {
    // 100 KB of events and never a checkpoint.
    let (_server, url) = serve_body(|| {
        let line = format!("{{\"partition\":0,\"data\":\"{}\"}}\n", "x".repeat(1000));
        futures_util::stream::iter((0..100).map(move |_| Ok(bytes::Bytes::from(line.clone()))))
    });
    let tail = Running::start(&[
        &url,
        "--partitions",
        "1",
        "--follow",
        "--max-buffered-bytes",
        "50000",
    ]);
    tail.fails_with("checkpoint");
}

#[test]
fn http2_reads_a_feed_behind_an_http2_only_server() {
    let feed = zeroeventhub::server::MemoryFeed::new(2);
    append_numbered(&feed, 0..500);
    // tonic's server, as it is by default: HTTP/2 only.
    let routes =
        tonic::service::Routes::from(axum::Router::new().route_service("/feed", feed.service()));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}/feed", listener.local_addr().expect("an address"));
        let server = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        url
    });

    let (lines, clean) = run_tail(
        &[&url, "--partitions", "2", "--headers", "seq", "--http2"],
        None,
    );
    assert!(clean);
    assert_exactly_once(&lines, 2, 500);
}

/// A feed of one partition that never has events and ignores `wait`, as the
/// reference implementations do: every request is answered at once with an
/// empty page. Keeps the query of every request.
fn feed_ignoring_wait() -> (tokio::runtime::Runtime, String, Arc<Mutex<Vec<String>>>) {
    let queries = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&queries);
    let app = axum::Router::new().route(
        "/feed",
        axum::routing::get(move |uri: http::Uri| {
            seen.lock()
                .unwrap()
                .push(uri.query().unwrap_or_default().to_owned());
            async { [(http::header::CONTENT_TYPE, "application/x-ndjson")] }
        }),
    );
    let (runtime, url) = serve_at_feed(app);
    (runtime, url, queries)
}

#[test]
fn follow_asks_to_wait_and_keeps_to_its_poll_interval_when_the_feed_does_not() {
    let (_server, url, queries) = feed_ignoring_wait();
    let tail = Running::start(&[&url, "--partitions", "1", "--follow"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (clean, stderr) = tail.stop();
    assert!(clean, "{stderr:?}");

    let queries = queries.lock().unwrap().clone();
    // 2 s at one request per 500 ms, the first at once: 5 at most.
    assert!(
        (1..=5).contains(&queries.len()),
        "{} requests in 2 s",
        queries.len()
    );
    assert!(
        queries.iter().all(|query| query.ends_with("&wait=20")),
        "{queries:?}"
    );
}

#[test]
fn follow_waits_for_an_append_instead_of_polling() {
    use std::sync::atomic::AtomicUsize;

    let feed = zeroeventhub::server::MemoryFeed::new(2);
    append_numbered(&feed, 0..3);
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    let service = feed.service();
    let app = axum::Router::new()
        .route_service("/feed", service.clone())
        .layer(tower::util::MapRequestLayer::new(
            move |request: http::Request<axum::body::Body>| {
                counter.fetch_add(1, Ordering::SeqCst);
                request
            },
        ));
    let (_server, url) = serve_at_feed(app);
    let tail = Running::start(&[
        &url,
        "--partitions",
        "2",
        "--headers",
        "seq",
        "--follow",
        "--wait",
        "30",
    ]);
    let mut lines = tail.lines(6);
    // Caught up: one request waits, and no other comes while it does.
    let waiting = || service.waiting() == 1 && feed.append_signal().waiters() == 1;
    eventually(waiting);
    let asked = requests.load(Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        requests.load(Ordering::SeqCst),
        asked,
        "asked again while waiting"
    );

    // Appends answer the waiting request; then tail waits again. One
    // append per partition: the first may end the wait before the second,
    // which the next request then brings, and one more waits.
    append_numbered(&feed, 3..4);
    lines.extend(tail.lines(2));
    eventually(waiting);
    let more = requests.load(Ordering::SeqCst) - asked;
    assert!((1..=3).contains(&more), "{more} requests for 2 appends");

    // A stop while waiting ends the wait and the run.
    let (clean, stderr) = tail.stop();
    assert!(clean, "{stderr:?}");
    assert_exactly_once(&lines, 2, 4);
    eventually(|| service.waiting() == 0 && feed.append_signal().waiters() == 0);
}

/// Polls `done` every 10 ms until it holds; fails after 30 s.
fn eventually(done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the condition never held"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `serve --max-wait` clamps what a request asks for: `tail --wait 30`,
/// without following, stops at its first empty page, which the server
/// sends when its own maximum of 1 s has passed, not 30 s.
#[cfg(feature = "serve")]
#[test]
fn serve_holds_a_waiting_request_no_longer_than_its_max_wait() {
    let serve = support::examples::binary("serve");
    let mut server = Command::new(serve)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--partitions",
            "1",
            "--events",
            "0",
        ])
        .args(["--max-wait", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("serve says where it listens");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve says where it listens: {line:?}"))
        .to_owned();

    let tail = Running::start(&[&url, "--partitions", "1", "--wait", "30"]);
    let (clean, stderr) = tail.exit();
    server.kill().expect("serve stops");
    server.wait().expect("serve exits");
    assert!(clean, "{stderr:?}");
}
