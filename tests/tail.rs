//! The `tail` example, run as a program: `--state` makes an interrupted
//! run resume without loss or duplicate.
#![cfg(all(feature = "hyper-client", feature = "server"))]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn tail_binary() -> PathBuf {
    let mut features = Vec::new();
    for (name, enabled) in [
        ("server", cfg!(feature = "server")),
        ("client", cfg!(feature = "client")),
        ("hyper-client", cfg!(feature = "hyper-client")),
        ("rustls", cfg!(feature = "rustls")),
    ] {
        if enabled {
            features.push(name);
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--example",
            "tail",
            "--no-default-features",
            "--features",
        ])
        .arg(features.join(","))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the tail example builds");
    // Examples sit next to the `deps` folder this test runs from.
    let mut path = std::env::current_exe().expect("the test's path");
    path.pop();
    if path.ends_with("deps") {
        path.pop();
    }
    path.join("examples")
        .join(format!("tail{}", std::env::consts::EXE_SUFFIX))
}

/// A feed of `partitions` x `per_partition` numbered events, served on a
/// free loopback port by a runtime that lives as long as the test.
fn serve(partitions: u32, per_partition: u64) -> (tokio::runtime::Runtime, String) {
    let feed = zeroeventhub::server::MemoryFeed::new(partitions);
    append_numbered(&feed, 0..per_partition);
    let (runtime, addr) = serve_on(&feed, "127.0.0.1:0".parse().expect("an address"));
    (runtime, format!("http://{addr}/feed"))
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
    let mut child = Command::new(tail_binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tail starts");
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

#[test]
fn an_interrupted_run_resumes_from_its_state_without_loss_or_duplicate() {
    let (_runtime, url) = serve(3, 4000);
    let state_dir = std::env::temp_dir().join(format!("zeh-tail-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).unwrap();
    let state = state_dir.join("cursors.json");
    let _ = std::fs::remove_file(&state);
    let state = state.to_str().unwrap();

    let args = [
        &url,
        "--partitions",
        "3",
        "--page-size",
        "40",
        "--headers",
        "seq",
        "--state",
        state,
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
    std::fs::remove_dir_all(&state_dir).unwrap();
}

#[test]
fn a_killed_run_loses_nothing() {
    let (_runtime, url) = serve(2, 3000);
    let state_dir = std::env::temp_dir().join(format!("zeh-tail-kill-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).unwrap();
    let state = state_dir.join("cursors.json");
    let state = state.to_str().unwrap();
    let args = [
        &url,
        "--partitions",
        "2",
        "--page-size",
        "25",
        "--headers",
        "_all",
        "--state",
        state,
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
    std::fs::remove_dir_all(&state_dir).unwrap();
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
        let mut child = Command::new(tail_binary())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tail starts");
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
    let (runtime, addr) = serve_app(app, "127.0.0.1:0".parse().unwrap());
    (runtime, format!("http://{addr}/feed"), requests)
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
