//! The Python reference client (`zeroeventhub` 0.2.4) reading feeds served
//! by our `FeedService`: every event it yields is checked field by field
//! against what the feed holds, our 400s must reach it as HTTP errors, and
//! our mid-page abort as an error, never as a clean page.

mod interop_support;

use std::pin::Pin;

use futures_core::Stream;
use futures_util::StreamExt;
use interop_support::model::{FeedModel, Received};
use interop_support::{
    BackgroundServer, ClientPage, ClientRequest, Outcome, ReferenceClient,
    run_reference_client_once,
};
use zeroeventhub::protocol::{Checkpoint, Cursor, FeedItem, FeedRequest, HeaderSelection};
use zeroeventhub::server::{FeedReader, FeedService, MemoryFeed, ReadContext, ReadError};

/// Events in each partition of the standard workload served here.
const EVENTS: usize = 10;

type BoxedPage = Pin<Box<dyn Stream<Item = Result<FeedItem, ReadError>> + Send>>;

/// Serves `service` at `/feed/v1`.
fn serve<R: FeedReader>(service: FeedService<R>) -> BackgroundServer {
    BackgroundServer::start(axum::Router::new().route_service("/feed/v1", service))
}

/// The selection a request's `headers` stand for.
fn selection(request: &ClientRequest) -> HeaderSelection {
    match &request.headers {
        None => HeaderSelection::None,
        Some(names) => HeaderSelection::only(names.clone()).expect("valid header names"),
    }
}

/// Runs `request`, requires a clean page, checks it against `model` and
/// returns how many events it held and where the next page starts.
fn fetch_checked(
    client: &mut ReferenceClient,
    model: &FeedModel,
    request: &ClientRequest,
) -> interop_support::model::PageSummary {
    let page = client.fetch(request);
    assert_eq!(page.outcome, Outcome::Complete, "request {request:?}");
    model.check_page(
        &request.cursors,
        request.page_size_hint,
        &selection(request),
        &page.items,
    )
}

#[test]
fn both_partitions_at_once_and_one_at_a_time() {
    let model = FeedModel::standard(EVENTS);
    let server = serve(model.memory_feed().service());
    let url = server.url("/feed/v1");
    let mut client = ReferenceClient::start();

    let both = ClientRequest::new(&url, &[(0, "_first"), (1, "_first")]);
    let page = fetch_checked(&mut client, &model, &both);
    assert_eq!(page.events, 2 * EVENTS);
    assert_eq!(
        page.cursors,
        [
            (0, format!("{}", EVENTS - 1)),
            (1, format!("{}", EVENTS - 1))
        ]
    );

    for partition in 0..2 {
        let one = ClientRequest::new(&url, &[(partition, "_first")]);
        let page = fetch_checked(&mut client, &model, &one);
        assert_eq!(page.events, EVENTS);
    }
    client.finish();
}

#[test]
fn first_last_and_stored_cursors() {
    let model = FeedModel::standard(EVENTS);
    let server = serve(model.memory_feed().service());
    let url = server.url("/feed/v1");
    let mut client = ReferenceClient::start();

    let last = ClientRequest::new(&url, &[(0, "_last"), (1, "_last")]);
    let page = client.fetch(&last);
    assert_eq!(page.outcome, Outcome::Complete);
    let end = format!("{}", EVENTS - 1);
    assert_eq!(page.items, model.checkpoints_at_the_end());

    // Stored cursors: what a consumer saved from an earlier page.
    let stored = ClientRequest::new(&url, &[(0, "3"), (1, "7")]);
    let page = fetch_checked(&mut client, &model, &stored);
    assert_eq!(page.events, (EVENTS - 4) + (EVENTS - 8));

    // A cursor at the end reads nothing and keeps its place.
    let at_end = ClientRequest::new(&url, &[(0, &end), (1, "_first")]);
    let page = fetch_checked(&mut client, &model, &at_end);
    assert_eq!(page.events, EVENTS);
    assert_eq!(page.cursors[0], (0, end.clone()));

    // `_first` on one partition, `_last` on the other.
    let mixed = ClientRequest::new(&url, &[(0, "_last"), (1, "_first")]);
    let page = fetch_checked(&mut client, &model, &mixed);
    assert_eq!(page.events, EVENTS);
    assert_eq!(page.cursors, [(0, end.clone()), (1, end)]);
    client.finish();
}

#[test]
fn page_size_hints_page_through_everything_once() {
    let model = FeedModel::standard(EVENTS);
    let server = serve(model.memory_feed().service());
    let url = server.url("/feed/v1");
    let mut client = ReferenceClient::start();

    for (hint, cursors) in [
        (3, vec![(0, "_first"), (1, "_first")]),
        (4, vec![(1, "_first")]),
        (1, vec![(0, "5"), (1, "_first")]),
    ] {
        let mut request = ClientRequest::new(&url, &cursors).page_size_hint(hint);
        let expected: usize = request
            .cursors
            .iter()
            .map(|(_, cursor)| match cursor.as_str() {
                "_first" => EVENTS,
                stored => EVENTS - 1 - stored.parse::<usize>().expect("a stored index"),
            })
            .sum();
        let mut read = 0;
        loop {
            let page = fetch_checked(&mut client, &model, &request);
            assert!(page.events <= hint as usize);
            if page.events == 0 {
                break;
            }
            read += page.events;
            request.cursors = page.cursors;
        }
        assert_eq!(read, expected, "hint {hint} from {cursors:?}");
    }
    client.finish();
}

#[test]
fn header_selection_absent_listed_and_all() {
    let model = FeedModel::standard(EVENTS);
    let server = serve(model.memory_feed().service());
    let url = server.url("/feed/v1");
    let mut client = ReferenceClient::start();

    let cursors = [(0, "_first"), (1, "_first")];
    for names in [
        None,
        Some(vec!["trace"]),
        Some(vec!["tenant", "trace", "not-there"]),
        Some(vec!["_all"]),
    ] {
        let mut request = ClientRequest::new(&url, &cursors);
        if let Some(names) = &names {
            request = request.headers(names);
        }
        let page = client.fetch(&request);
        assert_eq!(page.outcome, Outcome::Complete);
        let summary = model.check_page(&request.cursors, None, &selection(&request), &page.items);
        assert_eq!(summary.events, 2 * EVENTS);
        let expected = if names.is_none() {
            0
        } else {
            model.events_with_headers()
        };
        assert_eq!(summary.events_with_headers, expected, "headers {names:?}");
    }
    client.finish();
}

/// A reader that spells the cursors of an inner [`MemoryFeed`] with a prefix
/// full of characters that need escaping in a query string.
struct PrefixedCursors {
    inner: MemoryFeed,
    prefix: String,
}

impl FeedReader for PrefixedCursors {
    type Stream = BoxedPage;

    async fn read(&self, context: ReadContext<'_>) -> Result<BoxedPage, ReadError> {
        let request = context.request();
        let mut cursors = Vec::new();
        for (partition, cursor) in request.cursors() {
            let inner = if cursor.is_first() || cursor.is_last() {
                cursor.clone()
            } else {
                cursor
                    .as_str()
                    .strip_prefix(&self.prefix)
                    .and_then(|index| Cursor::new(index).ok())
                    .ok_or(ReadError::UnknownCursor {
                        partition: *partition,
                    })?
            };
            cursors.push((*partition, inner));
        }
        let inner_request = FeedRequest::new(request.partition_count(), cursors)
            .expect("the same partitions as a valid request")
            .with_headers(request.headers().clone());
        let page = self
            .inner
            .read(ReadContext::new(
                &inner_request,
                context.page_size(),
                context.extensions(),
            ))
            .await?;
        let prefix = self.prefix.clone();
        Ok(Box::pin(page.map(move |item| match item {
            Ok(FeedItem::Checkpoint(checkpoint)) if !checkpoint.cursor.is_first() => {
                let cursor = Cursor::new(format!("{prefix}{}", checkpoint.cursor))
                    .expect("a prefixed index is a valid cursor");
                Ok(FeedItem::Checkpoint(Checkpoint::new(
                    checkpoint.partition,
                    cursor,
                )))
            }
            other => other,
        })))
    }
}

#[test]
fn edge_data_and_cursors_that_need_escaping() {
    let model = FeedModel::edge();
    let reader = PrefixedCursors {
        inner: model.memory_feed(),
        prefix: model.cursor_prefix.clone(),
    };
    let server = serve(FeedService::new(reader, model.partition_count()));
    let url = server.url("/feed/v1");
    let mut client = ReferenceClient::start();

    // Everything at once, every header.
    let all = ClientRequest::new(&url, &[(0, "_first"), (1, "_first")]).headers(&["_all"]);
    let page = fetch_checked(&mut client, &model, &all);
    assert_eq!(page.events, model.len());

    // One event at a time, so every cursor goes back through the query
    // string; a selection of headers on the way.
    let mut request = ClientRequest::new(&url, &[(0, "_first"), (1, "_first")])
        .page_size_hint(1)
        .headers(&["x-text", "x-trace"]);
    let mut read = 0;
    loop {
        let page = fetch_checked(&mut client, &model, &request);
        if page.events == 0 {
            break;
        }
        read += page.events;
        request.cursors = page.cursors;
    }
    assert_eq!(read, model.len());
    assert!(
        request
            .cursors
            .iter()
            .all(|(_, c)| c.starts_with("a&b=c%2B+ /"))
    );
    client.finish();
}

#[test]
fn our_400s_reach_it_as_http_errors() {
    let model = FeedModel::standard(EVENTS);
    let server = serve(model.memory_feed().service());
    let url = server.url("/feed/v1");
    let mut client = ReferenceClient::start();

    let cases = [
        (
            ClientRequest::new(&url, &[(0, "_first")]).partitions(3),
            "partition count mismatch",
        ),
        (ClientRequest::new(&url, &[(0, "not-a-cursor")]), "cursor0"),
        (ClientRequest::new(&url, &[(1, "99")]), "cursor1"),
        // The reference client sends what it is given, even past `n`.
        (ClientRequest::new(&url, &[(2, "_first")]), "cursor2"),
    ];
    for (request, mentions) in cases {
        let page = client.fetch(&request);
        assert!(page.items.is_empty());
        match &page.outcome {
            Outcome::Status { status, body } => {
                assert_eq!(*status, 400, "{request:?}");
                assert!(
                    body.contains(mentions),
                    "{request:?}: the body {body:?} should mention {mentions:?}"
                );
            }
            other => panic!("{request:?}: expected a 400, got {other:?}"),
        }
    }
    client.finish();
}

/// A reader that fails after the first `items` lines of the inner feed's
/// page: a store that breaks in the middle of a page.
struct FailAfter {
    inner: MemoryFeed,
    items: usize,
    /// Whether the reader stalls before failing, which lets the server send
    /// the lines before the failure first.
    stall_before_failing: bool,
}

impl FeedReader for FailAfter {
    type Stream = BoxedPage;

    async fn read(&self, context: ReadContext<'_>) -> Result<BoxedPage, ReadError> {
        let page = self.inner.read(context).await?;
        let stall = self.stall_before_failing;
        let failure = futures_util::stream::once(async move {
            if stall {
                // Wait for another task of the server's single-threaded
                // runtime: it runs only once the connection's task has
                // yielded, which it does after writing out what it has.
                let (go, wait) = tokio::sync::oneshot::channel();
                tokio::spawn(async move { go.send(()) });
                let _ = wait.await;
            }
            Err(ReadError::internal(
                "the store went away in the middle of a page",
            ))
        });
        Ok(Box::pin(page.take(self.items).chain(failure)))
    }
}

/// The first `count` lines of partition 0's page from `_first`.
fn page_start(model: &FeedModel, count: usize) -> Vec<Received> {
    (0..)
        .flat_map(|index| {
            [
                model.expected_event(0, index, &HeaderSelection::None),
                Received::Checkpoint {
                    partition: 0,
                    cursor: model.cursor_of(index),
                },
            ]
        })
        .take(count)
        .collect()
}

#[test]
fn our_mid_page_abort_reaches_it_as_a_broken_body() {
    let model = FeedModel::standard(EVENTS);
    let reader = FailAfter {
        inner: model.memory_feed(),
        items: 6,
        stall_before_failing: true,
    };
    let server = serve(FeedService::new(reader, model.partition_count()));
    let request = ClientRequest::new(&server.url("/feed/v1"), &[(0, "_first")]);

    let check = |page: &ClientPage| {
        match &page.outcome {
            Outcome::BrokenBody { .. } => {}
            other => panic!("a page aborted mid-way must be a broken body, got {other:?}"),
        }
        // The lines sent before the failure arrived, and nothing else.
        assert_eq!(page.items, page_start(&model, 6));
    };
    let mut client = ReferenceClient::start();
    check(&client.fetch(&request));
    client.finish();

    // From the command line too: the exit code says so.
    let (page, code) = run_reference_client_once(&request);
    check(&page);
    assert_eq!(code, Some(3), "exit code of a broken body");
}

#[test]
fn our_abort_with_lines_still_buffered_is_an_error_too() {
    // The reader fails without ever stalling: the lines it produced before
    // the failure may still be in the server's buffers when the connection
    // is aborted. Whatever arrived must be the start of the page, and the
    // page must fail.
    let model = FeedModel::standard(EVENTS);
    let reader = FailAfter {
        inner: model.memory_feed(),
        items: 6,
        stall_before_failing: false,
    };
    let server = serve(FeedService::new(reader, model.partition_count()));
    let request = ClientRequest::new(&server.url("/feed/v1"), &[(0, "_first")]);
    let mut client = ReferenceClient::start();
    let page = client.fetch(&request);
    assert!(
        matches!(
            page.outcome,
            Outcome::BrokenBody { .. } | Outcome::Transport { .. }
        ),
        "a page aborted mid-way must be an error, got {:?}",
        page.outcome
    );
    assert_eq!(page.items, page_start(&model, page.items.len()));
    client.finish();
}

/// Our feed, noting the wait deadline each read was given.
struct WaitRecorder {
    inner: MemoryFeed,
    deadlines: std::sync::Arc<std::sync::Mutex<Vec<Option<tokio::time::Instant>>>>,
}

impl FeedReader for WaitRecorder {
    type Stream = <MemoryFeed as FeedReader>::Stream;

    async fn read(&self, context: ReadContext<'_>) -> Result<Self::Stream, ReadError> {
        self.deadlines
            .lock()
            .expect("not poisoned")
            .push(context.wait_deadline());
        self.inner.read(context).await
    }
}

/// Our server holds requests that ask to wait; the reference client never
/// asks, so it reads as before: every page, the caught-up one included, is
/// answered without a wait, and nothing is left waiting.
#[test]
fn long_polling_leaves_a_client_that_never_waits_unaffected() {
    let model = FeedModel::standard(EVENTS);
    let deadlines = std::sync::Arc::default();
    let service = FeedService::new(
        WaitRecorder {
            inner: model.memory_feed(),
            deadlines: std::sync::Arc::clone(&deadlines),
        },
        2,
    );
    let server = serve(service.clone());
    let url = server.url("/feed/v1");
    let mut client = ReferenceClient::start();

    let mut request = ClientRequest::new(&url, &[(0, "_first"), (1, "_first")]).page_size_hint(4);
    let mut read = 0;
    let mut caught_up = 0;
    while caught_up < 3 {
        let page = fetch_checked(&mut client, &model, &request);
        read += page.events;
        if page.events == 0 {
            caught_up += 1;
        }
        request.cursors = page.cursors;
    }
    client.finish();
    assert_eq!(read, 2 * EVENTS);

    let deadlines = deadlines.lock().expect("not poisoned");
    assert!(deadlines.len() >= 3, "{} reads", deadlines.len());
    assert!(deadlines.iter().all(Option::is_none), "{deadlines:?}");
    assert_eq!(service.waiting(), 0);
}
