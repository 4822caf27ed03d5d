//! Long polling on the consumer side, in paused time: a request's wait
//! extends the head timeout and the page deadline, a feed that holds the
//! request answers within them, and the consumer runtime never loops hot
//! on a feed that ignores `wait`, yet hears of an append at once from one
//! that honours it.
#![cfg(all(feature = "client", feature = "server"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use tokio::time::Instant;
use zeroeventhub::BoxError;
use zeroeventhub::client::{Client, ClientBuilder, HttpRequest};
use zeroeventhub::consumer::{Handler, MemoryStore, MemoryTransaction, Runtime};
use zeroeventhub::protocol::{Cursor, Event, FeedRequest, RawJson};
use zeroeventhub::server::MemoryFeed;

const SECOND: Duration = Duration::from_secs(1);

fn builder(partitions: u32) -> ClientBuilder {
    Client::builder("http://feed.example/events".parse().unwrap(), partitions)
}

fn request(wait: Duration) -> FeedRequest {
    FeedRequest::new(1, [(0, Cursor::first())])
        .unwrap()
        .with_wait(wait)
}

/// A transport that never answers.
fn hang() -> impl tower::Service<
    HttpRequest,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    tower::service_fn(|_request: HttpRequest| {
        std::future::pending::<Result<Response<Full<Bytes>>, BoxError>>()
    })
}

fn event(partition: u32, n: u32) -> Event {
    Event::new(partition, RawJson::from_serialize(&n).unwrap())
}

#[tokio::test(start_paused = true)]
async fn the_head_timeout_of_an_attempt_grows_by_the_wait() {
    let client = builder(1)
        .head_timeout(5 * SECOND)
        .page_timeout(3600 * SECOND)
        .max_attempts(1)
        .build_with(hang());
    for (wait, timeout) in [(0, 5), (20, 25), (1, 6)] {
        let start = Instant::now();
        let error = client
            .fetch(&request(wait * SECOND))
            .await
            .expect_err("nothing answers");
        assert!(error.is_timeout(), "{error:?}");
        assert_eq!(start.elapsed(), timeout * SECOND, "wait {wait}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_page_deadline_grows_by_the_wait() {
    let client = builder(1)
        .head_timeout(3600 * SECOND)
        .page_timeout(10 * SECOND)
        .build_with(hang());
    let start = Instant::now();
    let error = client.fetch_page(&request(20 * SECOND)).await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(error.to_string().contains("page timeout of 30s"), "{error}");
    assert_eq!(start.elapsed(), 30 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_feed_that_holds_the_request_answers_within_the_extended_timeouts() {
    let feed = MemoryFeed::new(2);
    // Both timeouts far below the wait: only the extension lets it through.
    let client = builder(2)
        .head_timeout(2 * SECOND)
        .page_timeout(3 * SECOND)
        .build_with(feed.service());
    let waiting = FeedRequest::new(2, [(0, Cursor::first()), (1, Cursor::first())])
        .unwrap()
        .with_wait(10 * SECOND);

    // Nothing comes: an empty page when the wait ends.
    let start = Instant::now();
    let page = client.fetch_page(&waiting).await.unwrap();
    assert_eq!(start.elapsed(), 10 * SECOND);
    assert!(!page.has_new_events() && !page.made_progress());
    assert_eq!(page.next_request(&waiting), waiting);

    // An append 4 s in ends the wait then.
    let appender = {
        let feed = feed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(4 * SECOND).await;
            feed.append(event(1, 7)).unwrap();
        })
    };
    let start = Instant::now();
    let page = client.fetch_page(&waiting).await.unwrap();
    assert_eq!(start.elapsed(), 4 * SECOND);
    assert_eq!(page.events(), [event(1, 7)]);
    assert_eq!(page.next_request(&waiting).wait(), Some(10 * SECOND));
    appender.await.unwrap();
}

/// Keeps the data of the events it is handed, and when.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(u32, Instant)>>>);

impl Handler<MemoryTransaction<u32>> for Recorder {
    type Error = BoxError;

    async fn handle(
        &mut self,
        transaction: &mut MemoryTransaction<u32>,
        events: &[Event],
    ) -> Result<(), BoxError> {
        for event in events {
            let n: u32 = event.data.deserialize()?;
            transaction.insert(n);
            self.0.lock().unwrap().push((n, Instant::now()));
        }
        Ok(())
    }
}

/// The queries a transport was asked, with when.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(String, Instant)>>>);

impl Log {
    fn record(&self, request: &Request<Empty<Bytes>>) {
        let query = request.uri().query().unwrap_or_default().to_owned();
        self.0.lock().unwrap().push((query, Instant::now()));
    }

    fn entries(&self) -> Vec<(String, Instant)> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn the_runtime_polls_at_its_interval_when_the_feed_answers_waits_at_once() {
    // A feed that ignores `wait`, as the reference implementations do:
    // every request gets an empty page at once.
    let log = Log::default();
    let transport = {
        let log = log.clone();
        tower::service_fn(move |request: HttpRequest| {
            log.record(&request);
            let mut response = Response::new(Full::new(Bytes::new()));
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, 0.into());
            std::future::ready(Ok::<_, BoxError>(response))
        })
    };
    let client = builder(2).build_with(transport);
    let runtime = Runtime::new(client, MemoryStore::<u32>::new(), "pacing")
        // Claims count in the system's time, which paused time does not move.
        .with_ownership_interval(3600 * SECOND)
        .with_wait(20 * SECOND)
        .with_poll_interval(SECOND);
    let start = Instant::now();
    runtime
        .run(
            Recorder::default(),
            tokio::time::sleep(Duration::from_millis(10_500)),
        )
        .await
        .unwrap();

    let entries = log.entries();
    // The first request, without a wait, says the consumer caught up; from
    // then on every request waits, and they come a poll interval apart.
    assert!(!entries[0].0.contains("wait="), "{}", entries[0].0);
    assert_eq!(entries[0].1, start);
    let waiting = &entries[1..];
    assert!(waiting.iter().all(|(query, _)| query.ends_with("&wait=20")));
    let times: Vec<Duration> = waiting.iter().map(|(_, at)| *at - start).collect();
    let expected: Vec<Duration> = (0..=10).map(|n| n * SECOND).collect();
    assert_eq!(times, expected);
}

#[tokio::test(start_paused = true)]
async fn the_runtime_hears_of_an_append_at_once_from_a_feed_that_waits() {
    let feed = MemoryFeed::new(2);
    feed.append(event(0, 1)).unwrap();
    feed.append(event(1, 2)).unwrap();
    let log = Log::default();
    let client = {
        let log = log.clone();
        builder(2)
            .layer(tower::util::MapRequestLayer::new(
                move |request: HttpRequest| {
                    log.record(&request);
                    request
                },
            ))
            .build_with(feed.service())
    };
    let runtime = Runtime::new(client, MemoryStore::<u32>::new(), "waiting")
        // Claims count in the system's time, which paused time does not move.
        .with_ownership_interval(3600 * SECOND)
        .with_wait(20 * SECOND)
        .with_poll_interval(2 * SECOND);
    let appender = {
        let feed = feed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(5 * SECOND).await;
            feed.append(event(1, 3)).unwrap();
            // During the second wait, which starts at 5 s + 20 s.
            tokio::time::sleep(26 * SECOND).await;
            feed.append(event(0, 4)).unwrap();
        })
    };
    let recorder = Recorder::default();
    let start = Instant::now();
    runtime
        .run(recorder.clone(), tokio::time::sleep(50 * SECOND))
        .await
        .unwrap();
    appender.await.unwrap();

    let handled: Vec<(u32, Duration)> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(n, at)| (*n, *at - start))
        .collect();
    assert_eq!(
        handled,
        [
            (1, Duration::ZERO),
            (2, Duration::ZERO),
            (3, 5 * SECOND),
            (4, 31 * SECOND)
        ]
    );
    // Each page with events is followed by one without a wait, which finds
    // nothing and says the consumer caught up; then it waits: from 0 s
    // (ended by the append at 5 s), 5 s (ran out at 25 s), 25 s (ended at
    // 31 s) and 31 s (still waiting at the shutdown).
    let entries = log.entries();
    let waits: Vec<Duration> = entries
        .iter()
        .filter(|(query, _)| query.ends_with("&wait=20"))
        .map(|(_, at)| *at - start)
        .collect();
    assert_eq!(waits, [0, 5, 25, 31].map(|s| s * SECOND));
    assert_eq!(entries.len(), 8, "{:?}", entries);
}
