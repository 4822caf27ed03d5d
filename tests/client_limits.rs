//! What bounds a page: a deadline for the whole page, however steadily the
//! feed drips, and a limit on the events held before a checkpoint covers
//! them. In-process transports, in paused time.
#![cfg(feature = "client")]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{Empty, StreamBody};
use zeroeventhub::BoxError;
use zeroeventhub::client::{Client, ClientBuilder, Error, HttpService};
use zeroeventhub::protocol::{Cursor, FeedRequest};

type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, BoxError>>>;

/// A client whose transport answers every request with the body `make`
/// builds.
fn client_of(
    builder: ClientBuilder,
    make: impl Fn() -> BoxStream<'static, Bytes> + Send + Sync + 'static,
) -> Client<impl HttpService + Clone> {
    let make = Arc::new(make);
    builder.build_with(tower::service_fn(move |_request: Request<Empty<Bytes>>| {
        let frames = make().map(|bytes| Ok(Frame::data(bytes)));
        let body: Body = StreamBody::new(frames.boxed());
        std::future::ready(Ok::<_, BoxError>(Response::new(body)))
    }))
}

fn builder(partitions: u32) -> ClientBuilder {
    Client::builder("http://feed.example/events".parse().unwrap(), partitions)
}

fn request(partitions: u32) -> FeedRequest {
    FeedRequest::new(partitions, (0..partitions).map(|p| (p, Cursor::first()))).unwrap()
}

/// A complete page, sent one byte every 10 s.
fn drip() -> BoxStream<'static, Bytes> {
    let page = b"{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"1\"}\n";
    stream::iter(page.iter().copied())
        .then(|byte| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Bytes::from(vec![byte])
        })
        .boxed()
}

#[tokio::test(start_paused = true)]
async fn a_feed_that_drips_a_byte_every_10s_fails_at_the_page_timeout() {
    let client = client_of(builder(1).page_timeout(Duration::from_secs(60)), drip);
    assert_eq!(client.page_timeout(), Duration::from_secs(60));
    let start = tokio::time::Instant::now();
    let error = client.fetch_page(&request(1)).await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(error.to_string().contains("page timeout of 60s"), "{error}");
    assert_eq!(start.elapsed(), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn the_default_page_timeout_bounds_a_drip_feed() {
    assert!(Client::<()>::DEFAULT_PAGE_TIMEOUT <= Duration::from_secs(5 * 60));
    let client = client_of(builder(1), drip);
    let start = tokio::time::Instant::now();
    let error = client.fetch_page(&request(1)).await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(start.elapsed(), Client::<()>::DEFAULT_PAGE_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_page_within_its_timeout_is_read_whole() {
    // 56 bytes at 10 s each: 560 s.
    let client = client_of(builder(1).page_timeout(Duration::from_secs(600)), drip);
    let page = client.fetch_page(&request(1)).await.unwrap();
    assert_eq!(page.events().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_page_timeout_covers_the_wait_for_the_head() {
    let hang = tower::service_fn(|_request: Request<Empty<Bytes>>| {
        std::future::pending::<Result<Response<Body>, BoxError>>()
    });
    let client = builder(1)
        .head_timeout(Duration::from_secs(3600))
        .page_timeout(Duration::from_secs(90))
        .build_with(hang);
    let start = tokio::time::Instant::now();
    let error = client.fetch(&request(1)).await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(90));
}

/// `count` events of `partition` of about 1 KiB each, then a checkpoint
/// when `checkpoint` is set.
fn events(partition: u32, count: usize, checkpoint: Option<&str>) -> Vec<Bytes> {
    let data = "x".repeat(1000);
    let mut lines: Vec<Bytes> = (0..count)
        .map(|_| format!("{{\"partition\":{partition},\"data\":\"{data}\"}}\n").into())
        .collect();
    if let Some(cursor) = checkpoint {
        lines.push(format!("{{\"partition\":{partition},\"cursor\":\"{cursor}\"}}\n").into());
    }
    lines
}

fn page_of(lines: Vec<Vec<Bytes>>) -> impl Fn() -> BoxStream<'static, Bytes> + Send + Sync {
    let lines: Vec<Bytes> = lines.into_iter().flatten().collect();
    move || stream::iter(lines.clone()).boxed()
}

fn is_buffer_limit(error: &Error) -> bool {
    error.is_buffer_limit() && !error.is_decode() && !error.is_truncated()
}

#[tokio::test(start_paused = true)]
async fn events_without_a_checkpoint_stop_at_the_buffer_limit() {
    // 100 KiB of events, no checkpoint.
    let client = client_of(
        builder(1).max_buffered_bytes(64 * 1024),
        page_of(vec![events(0, 100, None)]),
    );
    assert_eq!(client.max_buffered_bytes(), 64 * 1024);
    let error = client.fetch_page(&request(1)).await.unwrap_err();
    assert!(is_buffer_limit(&error), "{error:?}");
    assert!(error.to_string().contains("65536 bytes"), "{error}");

    // The streaming fetch stops there too, after the lines under the limit.
    let mut lines = client.fetch(&request(1)).await.unwrap();
    let mut received = 0;
    let error = loop {
        match lines.next().await.expect("the stream ends with an error") {
            Ok(_) => received += 1,
            Err(error) => break error,
        }
    };
    assert!(is_buffer_limit(&error), "{error:?}");
    assert_eq!(received, 63, "each event line is 1,027 bytes");
}

#[tokio::test(start_paused = true)]
async fn checkpoints_free_what_they_cover() {
    // 3 x 40 KiB, each covered by its checkpoint: never 64 KiB at once.
    let client = client_of(
        builder(1).max_buffered_bytes(64 * 1024),
        page_of(vec![
            events(0, 40, Some("a")),
            events(0, 40, Some("b")),
            events(0, 40, Some("c")),
        ]),
    );
    let page = client.fetch_page(&request(1)).await.unwrap();
    assert_eq!(page.events().len(), 120);
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_frees_only_its_own_partition() {
    // Partition 1's checkpoints do not cover partition 0's events.
    let client = client_of(
        builder(2).max_buffered_bytes(64 * 1024),
        page_of(vec![
            events(0, 40, None),
            events(1, 10, Some("a")),
            events(0, 30, None),
            events(1, 10, Some("b")),
        ]),
    );
    let error = client.fetch_page(&request(2)).await.unwrap_err();
    assert!(is_buffer_limit(&error), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn the_default_buffer_limit_is_64_mib() {
    assert_eq!(Client::<()>::DEFAULT_MAX_BUFFERED_BYTES, 64 * 1024 * 1024);
    // 65 MiB of events in 1 MiB frames, no checkpoint.
    let line = Bytes::from(format!(
        "{{\"partition\":0,\"data\":\"{}\"}}\n",
        "x".repeat(1024 * 1024 - 26)
    ));
    assert_eq!(line.len(), 1024 * 1024);
    let client = client_of(builder(1), move || {
        stream::iter(std::iter::repeat_n(line.clone(), 65)).boxed()
    });
    let error = client.fetch_page(&request(1)).await.unwrap_err();
    assert!(is_buffer_limit(&error), "{error:?}");
}
