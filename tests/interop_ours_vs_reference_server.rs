//! Our client reading feeds served by the Python reference implementation
//! (`zeroeventhub` 0.2.4's FastAPI handler under uvicorn): every event is
//! checked field by field against what the reference served, its 400s must
//! surface as our typed status errors, and its mid-page failure as a
//! truncated body.

mod interop_support;

use std::time::Duration;

use futures_util::TryStreamExt;
use interop_support::model::{FeedModel, PageSummary, Received};
use interop_support::{ReferenceServer, Scenario};
use zeroeventhub::client::{Client, ClientStack, Error, HttpTransport};
use zeroeventhub::consumer::{Handler, MemoryStore, MemoryTransaction, Runtime};
use zeroeventhub::protocol::{Cursor, Event, FeedRequest, HeaderSelection};

/// Events in each partition of the standard workload served here.
const EVENTS: usize = 10;

type OurClient = Client<ClientStack<HttpTransport>>;

/// Our client of the reference server's feed, believing it has
/// `partitions` partitions.
fn client(server: &ReferenceServer, partitions: u32) -> OurClient {
    let url = server.url().parse().expect("a valid URL");
    Client::builder(url, partitions).build()
}

/// A request of a 2-partition feed.
fn request(cursors: &[(u32, &str)]) -> FeedRequest {
    let cursors = cursors
        .iter()
        .map(|(partition, cursor)| (*partition, Cursor::new(cursor).expect("a valid cursor")));
    FeedRequest::new(2, cursors).expect("a valid request")
}

/// Reads a page line by line: the lines that arrived, and the error that
/// ended it, if any.
async fn read(client: &OurClient, request: &FeedRequest) -> (Vec<Received>, Option<Error>) {
    let mut stream = match client.fetch(request).await {
        Ok(stream) => stream,
        Err(error) => return (Vec::new(), Some(error)),
    };
    let mut items = Vec::new();
    loop {
        match stream.try_next().await {
            Ok(Some(item)) => items.push(Received::from(item)),
            Ok(None) => return (items, None),
            Err(error) => return (items, Some(error)),
        }
    }
}

/// Reads a page that must end cleanly and checks it against `model`.
async fn read_checked(client: &OurClient, model: &FeedModel, request: &FeedRequest) -> PageSummary {
    let (items, error) = read(client, request).await;
    if let Some(error) = error {
        panic!("{request:?} failed: {error}");
    }
    check(model, request, &items)
}

/// Checks the lines of a page read with `request` against `model`.
fn check(model: &FeedModel, request: &FeedRequest, items: &[Received]) -> PageSummary {
    let cursors: Vec<(u32, String)> = request
        .cursors()
        .iter()
        .map(|(partition, cursor)| (*partition, cursor.as_str().to_owned()))
        .collect();
    model.check_page(&cursors, request.page_size_hint(), request.headers(), items)
}

/// The cursors of a summary, as a request's.
fn cursors_of(summary: &PageSummary) -> Vec<(u32, Cursor)> {
    summary
        .cursors
        .iter()
        .map(|(partition, cursor)| (*partition, Cursor::new(cursor).expect("a valid cursor")))
        .collect()
}

#[tokio::test]
async fn both_partitions_at_once_and_one_at_a_time() {
    let server = ReferenceServer::start(Scenario::Standard { events: EVENTS });
    let model = FeedModel::standard(EVENTS);
    let client = client(&server, 2);

    let page = read_checked(&client, &model, &request(&[(0, "_first"), (1, "_first")])).await;
    assert_eq!(page.events, 2 * EVENTS);
    let end = (EVENTS - 1).to_string();
    assert_eq!(page.cursors, [(0, end.clone()), (1, end)]);

    for partition in 0..2 {
        let page = read_checked(&client, &model, &request(&[(partition, "_first")])).await;
        assert_eq!(page.events, EVENTS);
    }
}

#[tokio::test]
async fn first_last_and_stored_cursors() {
    let server = ReferenceServer::start(Scenario::Standard { events: EVENTS });
    let model = FeedModel::standard(EVENTS);
    let client = client(&server, 2);
    let end = (EVENTS - 1).to_string();

    let (items, error) = read(&client, &request(&[(0, "_last"), (1, "_last")])).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(items, model.checkpoints_at_the_end());

    let page = read_checked(&client, &model, &request(&[(0, "3"), (1, "7")])).await;
    assert_eq!(page.events, (EVENTS - 4) + (EVENTS - 8));

    let page = read_checked(&client, &model, &request(&[(0, &end), (1, "_first")])).await;
    assert_eq!(page.events, EVENTS);
    assert_eq!(page.cursors[0], (0, end.clone()));

    let page = read_checked(&client, &model, &request(&[(0, "_last"), (1, "_first")])).await;
    assert_eq!(page.events, EVENTS);
    assert_eq!(page.cursors, [(0, end.clone()), (1, end)]);
}

#[tokio::test]
async fn page_size_hints_page_through_everything_once() {
    let server = ReferenceServer::start(Scenario::Standard { events: EVENTS });
    let model = FeedModel::standard(EVENTS);
    let client = client(&server, 2);

    // No hint: the reference's default page holds everything.
    let everything = request(&[(0, "_first"), (1, "_first")]);
    let page = read_checked(&client, &model, &everything).await;
    assert_eq!(page.events, 2 * EVENTS);

    for (hint, start, expected) in [
        (3, vec![(0, "_first"), (1, "_first")], 2 * EVENTS),
        (4, vec![(1, "_first")], EVENTS),
        (1, vec![(0, "5"), (1, "_first")], EVENTS - 6 + EVENTS),
    ] {
        let mut current = request(&start).with_page_size_hint(hint);
        let mut read_events = 0;
        loop {
            let summary = read_checked(&client, &model, &current).await;
            // The same page through `fetch_page`: the reference serves it
            // again the same, so the page must agree with the lines.
            let page = client.fetch_page(&current).await.expect("the page again");
            assert_eq!(page.events().len(), summary.events);
            assert!(page.trailing_events().is_empty());
            assert_eq!(page.next_cursors(), cursors_of(&summary));
            if summary.events == 0 {
                assert!(!page.made_progress());
                break;
            }
            read_events += summary.events;
            current = page.next_request(&current);
        }
        assert_eq!(read_events, expected, "hint {hint} from {start:?}");
    }
}

#[tokio::test]
async fn header_selection_absent_listed_and_all() {
    let server = ReferenceServer::start(Scenario::Standard { events: EVENTS });
    let model = FeedModel::standard(EVENTS);
    let client = client(&server, 2);

    for selection in [
        HeaderSelection::None,
        HeaderSelection::only(["trace"]).expect("a valid name"),
        HeaderSelection::only(["tenant", "trace", "not-there"]).expect("valid names"),
        HeaderSelection::All,
    ] {
        let current = request(&[(0, "_first"), (1, "_first")]).with_headers(selection.clone());
        let (items, error) = read(&client, &current).await;
        assert!(error.is_none(), "{error:?}");
        let summary = check(&model, &current, &items);
        assert_eq!(summary.events, 2 * EVENTS);
        let expected = if selection.is_none() {
            0
        } else {
            model.events_with_headers()
        };
        assert_eq!(summary.events_with_headers, expected, "{selection:?}");
    }
}

#[tokio::test]
async fn edge_data_and_cursors_that_need_escaping() {
    let server = ReferenceServer::start(Scenario::Edge);
    let model = FeedModel::edge();
    let client = client(&server, 2);

    let all = request(&[(0, "_first"), (1, "_first")]).with_headers(HeaderSelection::All);
    let page = read_checked(&client, &model, &all).await;
    assert_eq!(page.events, model.len());

    // One event at a time: each cursor goes back to the reference through
    // our query encoding, and its reader must recognise it.
    let mut current = request(&[(0, "_first"), (1, "_first")])
        .with_page_size_hint(1)
        .with_headers(HeaderSelection::only(["x-text", "x-trace"]).expect("valid names"));
    let mut read_events = 0;
    loop {
        let summary = read_checked(&client, &model, &current).await;
        if summary.events == 0 {
            break;
        }
        read_events += summary.events;
        current = FeedRequest::new(2, cursors_of(&summary))
            .expect("a valid request")
            .with_page_size_hint(1)
            .with_headers(current.headers().clone());
    }
    assert_eq!(read_events, model.len());
    assert!(
        current
            .cursors()
            .iter()
            .all(|(_, cursor)| cursor.as_str().starts_with(&model.cursor_prefix))
    );
}

#[tokio::test]
async fn reference_400s_are_typed_status_errors_with_their_body() {
    let server = ReferenceServer::start(Scenario::Standard { events: EVENTS });

    // A consumer that believes the feed has 3 partitions.
    let three = client(&server, 3);
    let mismatch = FeedRequest::new(3, [(0, Cursor::first())]).expect("a valid request");
    let unknown = request(&[(0, "nope")]);
    for (client, request, says) in [
        (
            &three,
            &mismatch,
            "Partition count doesn't match as expected",
        ),
        (
            &client(&server, 2),
            &unknown,
            "cursor0: not a cursor of this feed",
        ),
    ] {
        let error = client
            .fetch_page(request)
            .await
            .expect_err("the reference answers 400");
        assert!(error.is_status(), "{error}");
        assert_eq!(error.status(), Some(http::StatusCode::BAD_REQUEST));
        let excerpt = error.body_excerpt().expect("a body excerpt");
        assert!(
            excerpt.contains(says),
            "the excerpt {excerpt:?} should say {says:?}"
        );
        assert!(!error.is_truncated() && !error.is_decode());
    }
}

#[tokio::test]
async fn reference_mid_page_failure_is_a_truncated_body() {
    let server = ReferenceServer::start(Scenario::Failing {
        events: EVENTS,
        fail_after: 3,
    });
    let model = FeedModel::standard(EVENTS);
    let client = client(&server, 2);
    let current = request(&[(0, "_first"), (1, "_first")]);

    // Line by line: what came before the failure is handed out, checked,
    // and then the page fails.
    let (items, error) = read(&client, &current).await;
    let error = error.expect("a page cut short must fail");
    assert!(error.is_truncated(), "{error}");
    assert!(!error.is_status() && !error.is_decode());
    let summary = check(&model, &current, &items);
    assert_eq!(summary.events, 3);

    // As a whole page: an error, never a short page.
    let error = client
        .fetch_page(&current)
        .await
        .expect_err("a page cut short must fail");
    assert!(error.is_truncated(), "{error}");
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn with_a_wait_every_page_reads_as_without_one() {
    let server = ReferenceServer::start_logging_requests(Scenario::Standard { events: EVENTS });
    let model = FeedModel::standard(EVENTS);
    let client = client(&server, 2);

    // The reference ignores `wait` and answers at once: the pages are
    // those of a request without one, and the next request keeps the wait.
    let mut current = request(&[(0, "_first"), (1, "_first")])
        .with_page_size_hint(3)
        .with_headers(HeaderSelection::All)
        .with_wait(WAIT);
    let mut read_events = 0;
    loop {
        let summary = read_checked(&client, &model, &current).await;
        let page = client.fetch_page(&current).await.expect("the page again");
        assert_eq!(page.events().len(), summary.events);
        assert_eq!(page.next_cursors(), cursors_of(&summary));
        if summary.events == 0 {
            break;
        }
        read_events += summary.events;
        current = page.next_request(&current);
        assert_eq!(current.wait(), Some(WAIT));
    }
    assert_eq!(read_events, 2 * EVENTS);
    let requests = server.requests();
    assert!(!requests.is_empty(), "{}", server.stderr());
    assert!(
        requests.iter().all(|query| query.ends_with("&wait=20")),
        "{requests:?}"
    );
}

/// Stores the data of each event it is handed.
struct Keep;

impl Handler<MemoryTransaction<String>> for Keep {
    type Error = zeroeventhub::BoxError;

    async fn handle(
        &mut self,
        transaction: &mut MemoryTransaction<String>,
        events: &[Event],
    ) -> Result<(), Self::Error> {
        for event in events {
            transaction.insert(format!("{}:{}", event.partition, event.data));
        }
        Ok(())
    }
}

/// The consumer runtime asks the reference to wait, which it ignores: the
/// runtime reads every event once, and while idle asks no more than once
/// per poll interval.
#[tokio::test]
async fn the_runtime_polls_the_reference_at_its_interval_while_idle() {
    const POLL_INTERVAL: Duration = Duration::from_millis(500);
    const IDLE: Duration = Duration::from_secs(3);

    let server = ReferenceServer::start_logging_requests(Scenario::Standard { events: EVENTS });
    let store = MemoryStore::new();
    let runtime = Runtime::new(client(&server, 2), store.clone(), "interop")
        .with_page_size(3)
        .with_wait(WAIT)
        .with_poll_interval(POLL_INTERVAL);
    let stats = runtime.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        runtime
            .run(Keep, async {
                let _ = stopped.await;
            })
            .await
    });
    tokio::time::timeout(Duration::from_secs(60), stats.wait_for(|s| s.caught_up))
        .await
        .expect("the runtime catches up");
    // Let the log of the request that caught up arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = server.requests().len();
    tokio::time::sleep(IDLE).await;
    let idle: Vec<String> = server.requests().split_off(before);
    drop(stop);
    running
        .await
        .expect("the runtime ran")
        .expect("it stops cleanly");

    let rows = store.rows();
    assert_eq!(rows.len(), 2 * EVENTS, "{rows:?}");
    let distinct: std::collections::HashSet<&String> = rows.iter().collect();
    assert_eq!(
        distinct.len(),
        rows.len(),
        "an event stored twice: {rows:?}"
    );

    // 3 s at one request per 500 ms: 6, and 1 for the edges of the window.
    assert!(
        (2..=7).contains(&idle.len()),
        "{} requests while idle: {idle:?}",
        idle.len()
    );
    assert!(
        idle.iter().all(|query| query.ends_with("&wait=20")),
        "{idle:?}"
    );
}
