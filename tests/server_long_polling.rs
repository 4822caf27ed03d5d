//! Long polling (`wait`) on the server: a waiting request is answered by an
//! append to one of its partitions and by nothing else, at its deadline with
//! a valid page otherwise; the wait is clamped, capped, never taken by HEAD,
//! and ends when the consumer goes away.
//!
//! In-process tests run on paused tokio time: the clock moves only when
//! every task waits, so elapsed times are exact.
#![cfg(feature = "server")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::readers::FnReader;
use support::transport::{FEED_PATH, LIVENESS, LoopbackServer, request, router};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;
use zeroeventhub::protocol::{Event, RawJson};
use zeroeventhub::server::{FeedReader, FeedService, MemoryFeed, ReadContext};

/// Sends a GET with `query` to `service` in-process, on a task of its own;
/// the task gives the answer and how long it took.
fn spawn_get<R: FeedReader>(
    service: &FeedService<R>,
    query: &str,
) -> JoinHandle<(Answer, Duration)> {
    spawn_request(service, Method::GET, query)
}

fn spawn_request<R: FeedReader>(
    service: &FeedService<R>,
    method: Method,
    query: &str,
) -> JoinHandle<(Answer, Duration)> {
    let request = request(method, &format!("{FEED_PATH}?{query}"));
    let service = service.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let response = service.oneshot(request).await.unwrap();
        let elapsed = start.elapsed();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let answer = Answer {
            status: parts.status,
            content_type: parts.headers.get("content-type").cloned(),
            text: String::from_utf8(body.to_vec()).unwrap(),
        };
        (answer, elapsed)
    })
}

/// A whole answer, read in-process.
struct Answer {
    status: StatusCode,
    content_type: Option<http::HeaderValue>,
    text: String,
}

/// Lets the other tasks run until `done` holds; fails after a bounded
/// number of turns (the clock does not move meanwhile).
async fn settle(mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the condition never held");
}

fn event(partition: u32, data: &str) -> Event {
    Event::new(partition, RawJson::from_bytes(data.to_owned()).unwrap())
}

/// A feed of two partitions: two events in partition 0, none in 1.
fn feed() -> MemoryFeed {
    let feed = MemoryFeed::new(2);
    feed.append(event(0, r#"{"n":0}"#)).unwrap();
    feed.append(event(0, r#"{"n":1}"#)).unwrap();
    feed
}

#[tokio::test(start_paused = true)]
async fn an_append_to_a_requested_partition_ends_the_wait_and_one_to_another_does_not() {
    let feed = feed();
    let service = feed.service();
    let waiting = spawn_get(&service, "n=2&cursor1=_first&wait=10");
    settle(|| feed.append_signal().waiters() == 1).await;

    feed.append(event(0, r#"{"n":2}"#)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !waiting.is_finished(),
        "an append to partition 0 woke a wait on 1"
    );

    feed.append(event(1, r#"{"m":0}"#)).unwrap();
    let (reply, elapsed) = waiting.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.text,
        "{\"partition\":1,\"data\":{\"m\":0}}\n{\"partition\":1,\"cursor\":\"0\"}\n"
    );
    assert_eq!(elapsed, Duration::from_secs(3));
    assert_eq!(feed.append_signal().waiters(), 0);
    assert_eq!(service.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_expires_answers_a_valid_empty_page_at_its_deadline() {
    let feed = feed();
    let service = feed.service();
    let (reply, elapsed) = spawn_get(&service, "n=2&cursor0=1&cursor1=_first&wait=5")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type.unwrap(), "application/x-ndjson");
    assert_eq!(reply.text, "");
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed <= Duration::from_millis(5_100),
        "answered after {elapsed:?}"
    );
    assert_eq!(feed.append_signal().waiters(), 0);
    assert_eq!(service.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_with_events_to_send_is_answered_at_once() {
    let feed = feed();
    let service = feed.service();
    let (reply, elapsed) = spawn_get(&service, "n=2&cursor0=0&cursor1=_first&wait=30")
        .await
        .unwrap();
    assert_eq!(
        reply.text,
        "{\"partition\":0,\"data\":{\"n\":1}}\n{\"partition\":0,\"cursor\":\"1\"}\n"
    );
    assert_eq!(elapsed, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn last_with_a_wait_brings_only_the_events_appended_after_the_request_arrived() {
    let feed = feed();
    let service = feed.service();
    let waiting = spawn_get(&service, "n=2&cursor0=_last&wait=10");
    settle(|| feed.append_signal().waiters() == 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    feed.append(event(0, r#"{"n":2}"#)).unwrap();

    let (reply, elapsed) = waiting.await.unwrap();
    assert_eq!(
        reply.text,
        concat!(
            "{\"partition\":0,\"cursor\":\"1\"}\n",
            "{\"partition\":0,\"data\":{\"n\":2}}\n",
            "{\"partition\":0,\"cursor\":\"2\"}\n",
        )
    );
    assert_eq!(elapsed, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn last_with_a_wait_on_an_idle_feed_answers_its_checkpoint_at_the_deadline() {
    let feed = feed();
    let (reply, elapsed) = spawn_get(&feed.service(), "n=2&cursor0=_last&cursor1=_last&wait=2")
        .await
        .unwrap();
    assert_eq!(
        reply.text,
        "{\"partition\":0,\"cursor\":\"1\"}\n{\"partition\":1,\"cursor\":\"_first\"}\n"
    );
    assert_eq!(elapsed, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn one_append_wakes_every_waiter_of_its_partition_and_no_other() {
    let feed = feed();
    let service = feed.service();
    let on_one: Vec<_> = (0..200)
        .map(|_| spawn_get(&service, "n=2&cursor1=_first&wait=20"))
        .collect();
    let on_zero: Vec<_> = (0..20)
        .map(|_| spawn_get(&service, "n=2&cursor0=1&wait=20"))
        .collect();
    settle(|| feed.append_signal().waiters() == 220).await;
    assert_eq!(service.waiting(), 220);

    feed.append(event(1, r#"{"m":0}"#)).unwrap();
    for waiting in on_one {
        let (reply, elapsed) = waiting.await.unwrap();
        assert_eq!(
            reply.text,
            "{\"partition\":1,\"data\":{\"m\":0}}\n{\"partition\":1,\"cursor\":\"0\"}\n"
        );
        assert_eq!(elapsed, Duration::ZERO);
    }
    assert_eq!(feed.append_signal().waiters(), 20);
    assert!(on_zero.iter().all(|waiting| !waiting.is_finished()));

    for waiting in on_zero {
        let (reply, elapsed) = waiting.await.unwrap();
        assert_eq!(reply.text, "");
        assert_eq!(elapsed, Duration::from_secs(20));
    }
    assert_eq!(service.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn past_the_cap_a_waiting_request_is_answered_at_once() {
    let feed = feed();
    let service = feed.service().max_waiting(2);
    let first = spawn_get(&service, "n=2&cursor1=_first&wait=10");
    let second = spawn_get(&service, "n=2&cursor1=_first&wait=10");
    settle(|| service.waiting() == 2 && feed.append_signal().waiters() == 2).await;

    let (reply, elapsed) = spawn_get(&service, "n=2&cursor1=_first&wait=10")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text, "");
    assert_eq!(elapsed, Duration::ZERO);

    for waiting in [first, second] {
        assert_eq!(waiting.await.unwrap().1, Duration::from_secs(10));
    }
    // Places are given back: the next request waits again.
    let (_, elapsed) = spawn_get(&service, "n=2&cursor1=_first&wait=1")
        .await
        .unwrap();
    assert_eq!(elapsed, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn ending_waits_answers_the_waiting_requests_at_once_and_no_request_waits_after() {
    let feed = feed();
    let service = feed.service();
    let mounted = service.clone();
    let idle = spawn_get(&mounted, "n=2&cursor1=_first&wait=10");
    let behind = spawn_get(&mounted, "n=2&cursor0=0&cursor1=_first&wait=10");
    let (reply, elapsed) = behind.await.unwrap();
    assert_eq!(elapsed, Duration::ZERO, "events to send are never held");
    assert_eq!(reply.text.lines().count(), 2);
    settle(|| service.waiting() == 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!idle.is_finished());

    // A clone ends the waits of every clone.
    service.clone().end_waits();
    let (reply, elapsed) = idle.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text, "", "a valid empty page");
    assert_eq!(elapsed, Duration::from_secs(2));
    assert_eq!(service.waiting(), 0);
    assert_eq!(feed.append_signal().waiters(), 0);

    let (reply, elapsed) = spawn_get(&mounted, "n=2&cursor0=_last&wait=10")
        .await
        .unwrap();
    assert_eq!(
        elapsed,
        Duration::ZERO,
        "a request after the end does not wait"
    );
    assert_eq!(reply.text, "{\"partition\":0,\"cursor\":\"1\"}\n");
}

#[tokio::test(start_paused = true)]
async fn a_wait_runs_its_course_when_the_service_that_took_it_is_gone() {
    let feed = feed();
    let start = Instant::now();
    // `oneshot` consumes the only clone of the service.
    let response = feed
        .service()
        .oneshot(request(
            Method::GET,
            &format!("{FEED_PATH}?n=2&cursor1=_first&wait=3"),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_cap_of_zero_turns_waiting_off() {
    let feed = feed();
    let service = feed.service().max_waiting(0);
    let (_, elapsed) = spawn_get(&service, "n=2&cursor1=_first&wait=10")
        .await
        .unwrap();
    assert_eq!(elapsed, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn head_never_waits() {
    let feed = feed();
    let service = feed.service();
    let (reply, elapsed) = spawn_request(&service, Method::HEAD, "n=2&cursor1=_first&wait=30")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(elapsed, Duration::ZERO);
    assert_eq!(service.waiting(), 0);
}

/// A reader that records the wait deadline it is given and answers an
/// empty page at once.
fn deadline_recorder() -> (
    FnReader<impl support::readers::ReadFn>,
    Arc<Mutex<Vec<Option<Instant>>>>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let reader = FnReader::new(move |context: &ReadContext<'_>| {
        record.lock().unwrap().push(context.wait_deadline());
        Ok(stream::empty().boxed())
    });
    (reader, seen)
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_the_wait_clamped_to_the_maximum_from_the_arrival() {
    let (reader, seen) = deadline_recorder();
    let service = FeedService::new(reader, 2).max_wait(Duration::from_secs(5));
    let arrival = Instant::now();
    for query in [
        "n=2&cursor0=_first",
        "n=2&cursor0=_first&wait=0",
        "n=2&cursor0=_first&wait=3",
        "n=2&cursor0=_first&wait=5",
        "n=2&cursor0=_first&wait=6",
        "n=2&cursor0=_first&wait=99999999999999",
    ] {
        spawn_get(&service, query).await.unwrap();
    }
    let seconds = |s| Some(arrival + Duration::from_secs(s));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![None, None, seconds(3), seconds(5), seconds(5), seconds(5)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_maximum_wait_is_thirty_seconds() {
    let feed = feed();
    let (_, elapsed) = spawn_get(&feed.service(), "n=2&cursor1=_first&wait=3600")
        .await
        .unwrap();
    assert_eq!(elapsed, FeedService::<MemoryFeed>::DEFAULT_MAX_WAIT);
    assert_eq!(elapsed, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_maximum_below_one_second_turns_waiting_off() {
    let (reader, seen) = deadline_recorder();
    let service = FeedService::new(reader, 2).max_wait(Duration::from_millis(900));
    spawn_get(&service, "n=2&cursor0=_first&wait=10")
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![None]);
}

/// Over real HTTP: a consumer that hangs up while waiting ends the wait at
/// once, and nothing is left waiting.
#[tokio::test]
async fn a_consumer_that_goes_away_ends_its_wait() {
    let feed = feed();
    let service = feed.service();
    let server = LoopbackServer::start(router(service.clone())).await;
    let mut connection = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET {FEED_PATH}?n=2&cursor1=_first&wait=30 HTTP/1.1\r\nhost: {}\r\n\r\n",
        server.addr
    );
    connection.write_all(request.as_bytes()).await.unwrap();
    eventually(|| feed.append_signal().waiters() == 1 && service.waiting() == 1).await;

    drop(connection);
    eventually(|| feed.append_signal().waiters() == 0 && service.waiting() == 0).await;
}

/// Over real HTTP, a waiting request is answered by an append, and one
/// whose wait ends is answered with an empty page after waiting.
#[tokio::test]
async fn waiting_works_over_loopback_http() {
    let feed = feed();
    let service = feed.service();
    let server = LoopbackServer::start(router(service.clone())).await;
    let client = support::transport::client();

    let woken = {
        let client = client.clone();
        let request = server.request(Method::GET, "n=2&cursor1=_first&wait=30");
        tokio::spawn(async move { client.request(request).await.unwrap() })
    };
    eventually(|| feed.append_signal().waiters() == 1).await;
    feed.append(event(1, r#"{"m":0}"#)).unwrap();
    let response = tokio::time::timeout(LIVENESS, woken)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let start = Instant::now();
    let response = client
        .request(server.request(Method::GET, "n=2&cursor1=0&wait=1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "answered before the wait ended"
    );
    assert_eq!(service.waiting(), 0);
}

/// Polls `done` every 10 ms until it holds; fails after [`LIVENESS`].
async fn eventually(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < LIVENESS, "the condition never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
