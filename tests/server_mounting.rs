//! The feed service mounted the ways a service owner mounts it: straight in
//! hyper without axum, and in axum behind tower-http's compression with
//! NDJSON left out of it, so that pages still stream.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::StreamExt;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use http::{HeaderValue, Request};
use http_body_util::Empty;
use support::transport::{HyperServer, LIVENESS, LoopbackServer, Protocols};
use tower::ServiceExt;
use tower_http::compression::predicate::{NotForContentType, Predicate};
use tower_http::compression::{CompressionLayer, DefaultPredicate};
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Checkpoint, Cursor, Event, FeedItem, FeedRequest, RawJson};
use zeroeventhub::server::{FeedReader, FeedService, MemoryFeed, ReadContext, ReadError};
use zeroeventhub::workload;

/// Asks for gzip, as proxies and HTTP stacks often do.
fn accept_gzip(mut request: Request<Empty<bytes::Bytes>>) -> Request<Empty<bytes::Bytes>> {
    request
        .headers_mut()
        .insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    request
}

#[tokio::test]
async fn served_by_hyper_without_axum() {
    let feed = MemoryFeed::new(2);
    workload::fill(&feed, 1_500);
    let server = HyperServer::start(feed.service(), Protocols::Auto).await;

    let client = Client::builder(server.url("/any/path").parse().unwrap(), 2).build();
    let seen = support::workload::read_to_end(&client, 700).await;
    assert_eq!(seen, [1_500, 1_500]);
}

/// Hands out one event and its checkpoint, then waits forever: only a
/// body that streams lets the consumer see them.
struct OneThenWait;

struct OneThenWaitStream {
    sent: usize,
}

impl Stream for OneThenWaitStream {
    type Item = Result<FeedItem, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.sent += 1;
        match self.sent {
            1 => Poll::Ready(Some(Ok(FeedItem::Event(Event::new(
                0,
                RawJson::from_bytes(r#"{"hello":"world"}"#).unwrap(),
            ))))),
            2 => Poll::Ready(Some(Ok(FeedItem::Checkpoint(Checkpoint::new(
                0,
                Cursor::new("1").unwrap(),
            ))))),
            // Never woken: the page stays open, as a long poll would.
            _ => Poll::Pending,
        }
    }
}

impl FeedReader for OneThenWait {
    type Stream = OneThenWaitStream;

    async fn read(&self, _: ReadContext<'_>) -> Result<OneThenWaitStream, ReadError> {
        Ok(OneThenWaitStream { sent: 0 })
    }
}

#[tokio::test]
async fn pages_stream_through_compression_that_leaves_ndjson_out() {
    let predicate =
        DefaultPredicate::new().and(NotForContentType::const_new("application/x-ndjson"));
    let app = axum::Router::new()
        .route_service("/feed", FeedService::new(OneThenWait, 1))
        .layer(CompressionLayer::new().compress_when(predicate));
    let server = LoopbackServer::start(app).await;
    let url = format!("http://{}/feed", server.addr);

    // A consumer that accepts gzip, as proxies and HTTP stacks often do.
    let client = Client::builder(url.parse().unwrap(), 1)
        .layer(tower::util::MapRequestLayer::new(accept_gzip))
        .build();
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();
    let mut lines = tokio::time::timeout(LIVENESS, client.fetch(&request))
        .await
        .expect("the head arrives")
        .unwrap();
    let first = tokio::time::timeout(LIVENESS, lines.next())
        .await
        .expect("the first line arrives while the page is still open");
    assert!(matches!(first, Some(Ok(FeedItem::Event(_)))), "{first:?}");
    let second = tokio::time::timeout(LIVENESS, lines.next())
        .await
        .expect("the checkpoint arrives while the page is still open");
    assert!(
        matches!(second, Some(Ok(FeedItem::Checkpoint(_)))),
        "{second:?}"
    );
}

#[tokio::test]
async fn other_answers_are_still_compressed_beside_the_feed() {
    // The same predicate compresses the rest of the service's answers.
    let predicate =
        DefaultPredicate::new().and(NotForContentType::const_new("application/x-ndjson"));
    let app = axum::Router::new()
        .route(
            "/status",
            axum::routing::get(|| async { "ok ".repeat(100) }),
        )
        .route_service("/feed", MemoryFeed::new(1).service())
        .layer(CompressionLayer::new().compress_when(predicate));
    let gzip = |uri: &str| {
        Request::get(uri)
            .header(ACCEPT_ENCODING, "gzip")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let status = app.clone().oneshot(gzip("/status")).await.unwrap();
    assert_eq!(status.headers().get(CONTENT_ENCODING).unwrap(), "gzip");
    let feed = app.oneshot(gzip("/feed?n=1&cursor0=_first")).await.unwrap();
    assert_eq!(feed.status(), 200);
    assert!(feed.headers().get(CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn a_compressed_page_is_read_through_a_decompression_layer_or_refused_clearly() {
    // Compression that does not leave NDJSON out.
    let feed = MemoryFeed::new(1);
    workload::fill(&feed, 300);
    let app = axum::Router::new()
        .route_service("/feed", feed.service())
        .layer(CompressionLayer::new());
    let server = LoopbackServer::start(app).await;
    let url: http::Uri = format!("http://{}/feed", server.addr).parse().unwrap();
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();

    // A client that asks for gzip but cannot read it is told so.
    let asks_for_gzip = Client::builder(url.clone(), 1)
        .layer(tower::util::MapRequestLayer::new(accept_gzip))
        .build();
    let error = asks_for_gzip.fetch(&request).await.unwrap_err();
    assert!(error.is_decode(), "{error}");
    assert!(
        error.to_string().contains("Content-Encoding: gzip"),
        "{error}"
    );

    // With tower-http's decompression under the retry, the page reads whole.
    let decompressing = Client::builder(url, 1)
        .layer(tower_http::decompression::DecompressionLayer::new())
        .build();
    let page = tokio::time::timeout(LIVENESS, decompressing.fetch_page(&request))
        .await
        .expect("the page arrives")
        .unwrap();
    assert_eq!(page.events().len(), 300);
    assert_eq!(page.next_cursors(), [(0, Cursor::new("299").unwrap())]);
}
