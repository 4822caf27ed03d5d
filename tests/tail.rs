//! The `tail` example, run as a program: `--state` makes an interrupted
//! run resume without loss or duplicate.
#![cfg(all(feature = "hyper-client", feature = "server"))]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
    use zeroeventhub::protocol::{Event, RawJson};
    let feed = zeroeventhub::server::MemoryFeed::new(partitions);
    for index in 0..per_partition {
        for partition in 0..partitions {
            let data = RawJson::from_serialize(&serde_json::json!({"p": partition, "i": index}))
                .expect("JSON");
            feed.append(Event::new(partition, data).with_header("seq", index.to_string()))
                .expect("the partition exists");
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}/feed", listener.local_addr().expect("an address"));
        let app = axum::Router::new().route_service("/feed", feed.service());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    });
    (runtime, url)
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
