//! Errors a caller can act on: what to retry, where the feed is, why it
//! failed, and a poison event told apart from a broken feed.
#![cfg(all(feature = "hyper-client", feature = "server"))]

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use zeroeventhub::BoxError;
use zeroeventhub::client::{Client, HttpRequest, HttpService};
use zeroeventhub::protocol::{Cursor, Event, FeedItem, RawJson};
use zeroeventhub::server::MemoryFeed;

type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, BoxError>>>;

/// A client of one partition whose transport always answers `status` with
/// `body`, or fails with `error`'s kind; no retries.
fn answering(status: u16, body: &'static str) -> Client<impl HttpService + Clone> {
    Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .max_attempts(1)
        .build_with(tower::service_fn(move |_request: HttpRequest| {
            let frames = stream::iter([Ok(Frame::data(Bytes::from_static(body.as_bytes())))]);
            let mut response = Response::new(Body::new(frames.boxed()));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            std::future::ready(Ok::<_, BoxError>(response))
        }))
}

#[tokio::test]
async fn retryable_errors_are_those_a_later_try_may_fix() {
    for (status, retryable) in [
        (408, true),
        (429, true),
        (500, true),
        (502, true),
        (503, true),
        (504, true),
        (400, false),
        (401, false),
        (404, false),
        (501, false),
    ] {
        let client = answering(status, "no");
        let request = client.request([(0, Cursor::first())]).unwrap();
        let error = client.fetch_page(&request).await.unwrap_err();
        assert_eq!(error.is_retryable(), retryable, "{status}");
    }

    // A broken line: the feed is broken, trying again meets it again.
    let client = answering(200, "{\"partition\":0,\"data\":1,\"data\":2}\n");
    let request = client.request([(0, Cursor::first())]).unwrap();
    let error = client.fetch_page(&request).await.unwrap_err();
    assert!(error.is_decode() && !error.is_retryable());

    // A body that breaks off: resume from the stored cursors.
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 1).build_with(
        tower::service_fn(|_request: HttpRequest| {
            let frames = stream::iter([
                Ok(Frame::data(Bytes::from_static(b"{\"partition\":0,\"da"))),
                Err(BoxError::from(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                ))),
            ]);
            std::future::ready(Ok::<_, BoxError>(Response::new(Body::new(frames.boxed()))))
        }),
    );
    let request = client.request([(0, Cursor::first())]).unwrap();
    let error = client.fetch_page(&request).await.unwrap_err();
    assert!(error.is_truncated() && error.is_retryable(), "{error:?}");

    // A request the client refuses: fix the code.
    let error = client
        .fetch_page(&zeroeventhub::protocol::FeedRequest::new(2, [(0, Cursor::first())]).unwrap())
        .await
        .unwrap_err();
    assert!(error.is_invalid_request() && !error.is_retryable());
}

#[tokio::test]
async fn a_refused_connection_names_the_feed_and_the_cause_never_the_secrets() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::builder(
        format!("http://reader:s3cret@{address}/feed/v1?token=t0ken&x=1")
            .parse()
            .unwrap(),
        1,
    )
    .max_attempts(1)
    .build();
    let request = client.request([(0, Cursor::first())]).unwrap();
    let error = client.fetch_page(&request).await.unwrap_err();
    assert!(error.is_connect() && error.is_retryable(), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("feed http://{address}/feed/v1: ")),
        "{message}"
    );
    assert!(message.contains("Connection refused"), "{message}");
    assert!(
        !message.contains("s3cret") && !message.contains("t0ken") && !message.contains("reader"),
        "{message}"
    );
}

#[tokio::test]
async fn the_partition_count_is_said_once() {
    let feed = MemoryFeed::new(3);
    let client =
        Client::builder("http://feed.example/v1".parse().unwrap(), 3).build_with(feed.service());
    let request = client
        .request([(2, Cursor::first()), (0, Cursor::first())])
        .unwrap();
    assert_eq!(request.partition_count(), 3);
    assert_eq!(request.to_query(), "n=3&cursor0=_first&cursor2=_first");
    client.fetch_page(&request).await.unwrap();
    // Partitions the client's feed does not have are refused there.
    assert!(client.request([(3, Cursor::first())]).is_err());
}

#[tokio::test]
async fn the_feeds_mismatch_answer_says_both_counts() {
    let feed = MemoryFeed::new(2);
    // A client told the wrong count, and no check of its own to stop it:
    // the feed answers.
    let client = Client::new(feed.service(), "http://feed.example/v1".parse().unwrap(), 3);
    let request = client.request([(0, Cursor::first())]).unwrap();
    let error = client.fetch_page(&request).await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(
        error.body_excerpt().unwrap().trim_end(),
        "handshake error: partition count mismatch (the feed has 2 partitions, the request says n=3)"
    );
}

#[derive(Debug, serde::Deserialize)]
struct Order {
    #[allow(dead_code)]
    id: u64,
}

/// A client of a feed of orders, one of them poison, and a request for
/// all of it.
fn orders_with_a_poison_event() -> (
    Client<impl HttpService + Clone>,
    zeroeventhub::protocol::FeedRequest,
) {
    let feed = MemoryFeed::new(2);
    for (partition, data) in [
        (1, r#"{"id":1}"#),
        (1, r#"{"id":2}"#),
        (1, r#"{"id":"three"}"#),
        (1, r#"{"id":4}"#),
        (0, r#"{"id":5}"#),
    ] {
        feed.append(Event::new(partition, RawJson::from_bytes(data).unwrap()))
            .unwrap();
    }
    let client =
        Client::builder("http://feed.example/v1".parse().unwrap(), 2).build_with(feed.service());
    let request = client
        .request([(0, Cursor::first()), (1, Cursor::first())])
        .unwrap();
    (client, request)
}

#[tokio::test]
async fn a_poison_event_is_its_own_error_not_a_broken_feed() {
    let (client, request) = orders_with_a_poison_event();
    let error = client.fetch_page_as::<Order>(&request).await.unwrap_err();
    assert!(error.is_invalid_data(), "{error:?}");
    assert!(!error.is_decode() && !error.is_retryable());
    assert_eq!(error.partition(), Some(1));
    assert!(error.line().is_some());
    let message = error.to_string();
    assert!(
        message.contains("partition 1") && message.contains("invalid type: string \"three\""),
        "{message}"
    );
    assert_eq!(
        error.invalid_event().unwrap().data.as_str(),
        r#"{"id":"three"}"#
    );

    // The rest of the page, raw: the consumer deserializes what it can.
    let page = client.fetch_page(&request).await.unwrap();
    assert_eq!(page.events().len(), 5);
}

#[tokio::test]
async fn the_stream_goes_on_after_a_poison_event() {
    let (client, request) = orders_with_a_poison_event();
    let mut lines = client.fetch_as::<Order>(&request).await.unwrap();
    let (mut events, mut checkpoints, mut refused) = (0, 0, Vec::new());
    while let Some(item) = lines.next().await {
        match item {
            Ok(FeedItem::Event(_)) => events += 1,
            Ok(FeedItem::Checkpoint(_)) => checkpoints += 1,
            Err(error) => {
                assert!(error.is_invalid_data(), "{error:?}");
                refused.push(error.invalid_event().unwrap().data.clone());
            }
        }
    }
    assert_eq!((events, refused.len()), (4, 1));
    assert!(checkpoints >= 2);
    assert_eq!(refused[0].as_str(), r#"{"id":"three"}"#);
}

/// A client whose transport answers `200` with one checkpoint line and
/// this `Content-Encoding`.
fn encoded(encoding: &'static str) -> Client<impl HttpService + Clone> {
    Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .max_attempts(1)
        .build_with(tower::service_fn(move |_request: HttpRequest| {
            let line = Bytes::from_static(b"{\"partition\":0,\"cursor\":\"1\"}\n");
            let frames = stream::iter([Ok(Frame::data(line))]);
            let mut response = Response::new(Body::new(frames.boxed()));
            response
                .headers_mut()
                .insert(http::header::CONTENT_ENCODING, encoding.parse().unwrap());
            std::future::ready(Ok::<_, BoxError>(response))
        }))
}

#[tokio::test]
async fn a_compressed_body_is_named_and_identity_is_read() {
    let request = encoded("identity").request([(0, Cursor::first())]).unwrap();
    let page = encoded("identity").fetch_page(&request).await.unwrap();
    assert_eq!(page.next_cursors(), [(0, Cursor::new("1").unwrap())]);

    let error = encoded("gzip").fetch_page(&request).await.unwrap_err();
    assert!(error.is_decode() && !error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("gzip"), "{error}");
}

#[test]
fn a_client_shows_what_it_was_built_with() {
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 3).build();
    assert_eq!(client.url(), "http://feed.test/events");
    assert_eq!(client.partition_count(), 3);
    let shown = format!("{client:?}");
    for part in ["Client", "feed.test", "partitions: 3", "page_timeout: 300s"] {
        assert!(shown.contains(part), "{part} in {shown}");
    }
    // The documented defaults.
    assert_eq!(
        Client::<()>::DEFAULT_MAX_BUFFERED_BYTES,
        64 * 1024 * 1024,
        "64 MiB"
    );
    assert_eq!(client.max_buffered_bytes(), 64 << 20);
}

#[tokio::test(start_paused = true)]
async fn an_error_answer_is_read_up_to_a_kib_and_not_a_byte_longer() {
    // 2 KiB of explanation, then a body that never ends.
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .max_attempts(1)
        .build_with(tower::service_fn(|_request: HttpRequest| {
            let text = Bytes::from("x".repeat(2048));
            let frames = stream::iter([Ok(Frame::data(text))]).chain(stream::pending());
            let mut response = Response::new(Body::new(frames.boxed()));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            std::future::ready(Ok::<_, BoxError>(response))
        }));
    let request = client.request([(0, Cursor::first())]).unwrap();
    let start = tokio::time::Instant::now();
    let error = client.fetch_page(&request).await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        std::time::Duration::ZERO,
        "no wait for more"
    );
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    assert!(
        error
            .body_excerpt()
            .is_some_and(|text| text.starts_with("xxx"))
    );
}
