//! The `serve` example over a database, run as a program: it loads the
//! workload only into an empty table, appends events with ids unique across
//! restarts, and on SIGTERM or SIGINT stops and says how many it appended.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use support::database;
use support::outbox::read_to_end;
use support::transport::LIVENESS;
use zeroeventhub::client::Client;
use zeroeventhub::protocol::Cursor;

const PARTITIONS: u32 = 2;
const LOADED: u64 = 50;

/// A running `serve`.
struct Serving {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    url: String,
}

impl Serving {
    fn start(database: &str, append_rate: u64) -> Serving {
        Serving::start_with(database, append_rate, &[])
    }

    /// `start`, with `extra` arguments.
    fn start_with(database: &str, append_rate: u64, extra: &[&str]) -> Serving {
        let mut child = Command::new(support::examples::binary("serve"))
            .args(["--addr", "127.0.0.1:0", "--database", database])
            .args(["--partitions", &PARTITIONS.to_string()])
            .args(["--events", &LOADED.to_string()])
            .args(["--append-rate", &append_rate.to_string()])
            .args(["--writers", "4"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = stdout.next().expect("serve says where").unwrap();
        let url = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Serving { child, stdout, url }
    }

    /// Sends `signal`; returns the count of the last line, `appended N
    /// events`, once serve has exited cleanly.
    fn stop(mut self, signal: &str) -> u64 {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let lines: Vec<String> = self.stdout.by_ref().map(Result::unwrap).collect();
        assert!(self.child.wait().unwrap().success(), "serve exits cleanly");
        let last = lines.last().expect("serve prints its count");
        last.strip_prefix("appended ")
            .and_then(|rest| rest.strip_suffix(" events"))
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("unexpected last line {last:?}"))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every event id the feed at `url` serves, once it serves at least
/// `count`.
async fn ids_once_at_least(url: &str, count: u64) -> Vec<String> {
    let from_start: Vec<_> = (0..PARTITIONS).map(|p| (p, Cursor::first())).collect();
    let give_up = tokio::time::Instant::now() + LIVENESS;
    loop {
        let (ids, _) = read_to_end(url, PARTITIONS, from_start.clone(), 1000, 10_000).await;
        if ids.len() as u64 >= count {
            return ids;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the feed served {} events, never {count}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two runs that append, then one that only reads: the table holds the
/// loaded events once and every appended event, all with distinct ids.
async fn appends_survive_restarts(database: &str) {
    let loaded = LOADED * u64::from(PARTITIONS);
    let first = Serving::start(database, 100);
    ids_once_at_least(&first.url, loaded + 20).await;
    let first_run = first.stop("-TERM");
    assert!(first_run >= 20, "{first_run}");

    let second = Serving::start(database, 100);
    ids_once_at_least(&second.url, loaded + first_run + 20).await;
    let second_run = second.stop("-INT");
    assert!(second_run >= 20, "{second_run}");

    let reading = Serving::start(database, 0);
    let total = loaded + first_run + second_run;
    let ids = ids_once_at_least(&reading.url, total).await;
    // A request waiting for events at shutdown gets its page at once.
    let client = Client::builder(reading.url.parse().unwrap(), PARTITIONS).build();
    let waiting = tokio::spawn(async move {
        let request = client
            .request((0..PARTITIONS).map(|p| (p, Cursor::last())))
            .unwrap()
            .with_wait(Duration::from_secs(30));
        client.fetch_page(&request).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the request waits");
    let stopping = tokio::task::spawn_blocking(move || reading.stop("-TERM"));
    let page = tokio::time::timeout(LIVENESS, waiting)
        .await
        .expect("a wait of 30 s ended with the server")
        .unwrap()
        .expect("a page, not a cut connection");
    assert!(page.events().is_empty());
    assert_eq!(stopping.await.unwrap(), 0);
    assert_eq!(ids.len() as u64, total, "the workload loaded once");
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "ids unique across restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_postgres_appends_with_unique_ids_across_restarts() {
    let db = database::postgres().await;
    appends_survive_restarts(&db.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_sqlite_appends_with_unique_ids_across_restarts() {
    let path = database::sqlite_path("serve");
    appends_survive_restarts(&format!("sqlite://{}", path.display())).await;
}

#[tokio::test]
async fn serve_prunes_what_is_older_than_it_keeps() {
    let path = database::sqlite_path("serve_prune");
    let url = format!("sqlite://{}", path.display());
    let serving = Serving::start_with(&url, 0, &["--prune-older-than", "1"]);
    let client = Client::builder(serving.url.parse().unwrap(), PARTITIONS).build();
    // A cursor taken at once, before the loaded rows are a second old.
    let request = zeroeventhub::protocol::FeedRequest::new(PARTITIONS, [(0, Cursor::first())])
        .unwrap()
        .with_page_size_hint(1);
    let first = client.fetch_page(&request).await.unwrap();
    let early = first.next_request(&request);
    // Within a few seconds, every partition keeps only its newest row.
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let (ids, _) = read_to_end(
            &serving.url,
            PARTITIONS,
            (0..PARTITIONS).map(|p| (p, Cursor::first())).collect(),
            1000,
            10,
        )
        .await;
        if ids.len() == PARTITIONS as usize {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} rows left",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let error = client.fetch_page(&early).await.unwrap_err();
    assert!(error.is_cursor_expired(), "{error}");
    assert_eq!(serving.stop("-TERM"), 0);
}
