//! The feed service mounted the ways a service owner mounts it: straight in
//! hyper without axum, in axum behind tower-http's compression with NDJSON
//! left out of it, so that pages still stream, and as a layer in front of
//! an app (`FeedLayer`), in axum and in hyper.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::StreamExt;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use support::transport::{HyperServer, LIVENESS, LoopbackServer, Protocols};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::compression::predicate::{NotForContentType, Predicate};
use tower_http::compression::{CompressionLayer, DefaultPredicate};
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Checkpoint, Cursor, Event, FeedItem, FeedRequest, RawJson};
use zeroeventhub::server::{
    FeedLayer, FeedReader, FeedService, MemoryFeed, ReadContext, ReadError,
};
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

/// A plain GET of `url` over hyper-util's client: the status, the content
/// type and the whole body.
async fn get(url: &str) -> (http::StatusCode, Option<String>, String) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let request = Request::get(url).body(Empty::new()).unwrap();
    let response = tokio::time::timeout(LIVENESS, client.request(request))
        .await
        .expect("the head arrives")
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap().to_owned());
    let body = tokio::time::timeout(LIVENESS, response.into_body().collect())
        .await
        .expect("the body arrives")
        .unwrap()
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// Reads the whole feed at `url` page by page with the crate's client:
/// how many events each partition had, each checked against the workload.
async fn read_all(url: &str, partitions: u32) -> Vec<u64> {
    let client = Client::builder(url.parse().unwrap(), partitions).build();
    support::workload::read_to_end(&client, 200).await
}

#[tokio::test]
async fn a_feed_layer_on_an_axum_router_serves_the_feed_beside_the_app() {
    let feed = MemoryFeed::new(2);
    workload::fill(&feed, 500);
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "the app" }))
        .route("/feed/v1/about", axum::routing::get(|| async { "about" }))
        .layer(FeedLayer::new("/feed/v1", feed.service()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // The feed answers on its path, which has no route of its own, pages
    // and all; a query of the feed URL's own goes along in every request.
    assert_eq!(read_all(&format!("{base}/feed/v1"), 2).await, [500, 500]);
    assert_eq!(
        read_all(&format!("{base}/feed/v1?consumer=billing"), 2).await,
        [500, 500]
    );
    let (status, content_type, body) = get(&format!(
        "{base}/feed/v1?n=2&cursor0=_first&cursor1=_last&pagesizehint=1"
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("application/x-ndjson"));
    assert!(body.starts_with("{\"partition\":"), "{body}");

    // Every other path is the app's: its routes, its fallback.
    let (status, content_type, body) = get(&format!("{base}/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "the app"));
    assert_eq!(content_type.as_deref(), Some("text/plain; charset=utf-8"));
    let (status, _, body) = get(&format!("{base}/feed/v1/about")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "about"));
    for path in ["/feed/v1/", "/feed", "/nowhere?n=1&cursor0=_first"] {
        let (status, content_type, _) = get(&format!("{base}{path}")).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(content_type, None, "{path}");
    }
    server.abort();
}

#[tokio::test]
async fn a_page_streams_through_the_feed_layer() {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "the app" }))
        .layer(FeedLayer::new("/feed", FeedService::new(OneThenWait, 1)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/feed", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(url.parse().unwrap(), 1).build();
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();
    let mut lines = tokio::time::timeout(LIVENESS, client.fetch(&request))
        .await
        .expect("the head arrives")
        .unwrap();
    for _ in 0..2 {
        let line = tokio::time::timeout(LIVENESS, lines.next())
            .await
            .expect("the line arrives while the page is still open");
        assert!(matches!(line, Some(Ok(_))), "{line:?}");
    }
    server.abort();
}

#[tokio::test]
async fn with_route_layer_the_feed_answers_where_a_route_matches_its_path() {
    let feed = MemoryFeed::new(1);
    workload::fill(&feed, 3);
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "the app" }))
        .route("/feed/v1", axum::routing::get(|| async { "never seen" }))
        .route_layer(FeedLayer::new("/feed/v1", feed.service()));
    let send = |uri: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::get(uri).body(axum::body::Body::empty()).unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (status, page) = send("/feed/v1?n=1&cursor0=_first").await;
    assert_eq!(status, 200);
    // Three events, each with its checkpoint.
    assert_eq!(page.lines().count(), 6, "{page}");
    assert_eq!(
        page.lines().last(),
        Some("{\"partition\":0,\"cursor\":\"2\"}")
    );
    assert_eq!(send("/").await, (200, "the app".to_owned()));
    // No route, so no route layer: the router's own 404.
    assert_eq!(send("/elsewhere").await.0, 404);
}

#[tokio::test]
async fn a_feed_layer_around_a_plain_tower_service_served_by_hyper() {
    let feed = MemoryFeed::new(2);
    workload::fill(&feed, 400);
    let app = tower::service_fn(|request: Request<hyper::body::Incoming>| async move {
        let text = format!("the app at {}", request.uri());
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(text),
        )))
    });
    let service = ServiceBuilder::new()
        .layer(FeedLayer::new("/events", feed.service()))
        .service(app);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    assert_eq!(read_all(&format!("{base}/events"), 2).await, [400, 400]);
    let (status, _, body) = get(&format!("{base}/elsewhere?n=2")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "the app at /elsewhere?n=2");
    server.abort();
}
