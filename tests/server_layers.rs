//! `FeedService` wrapped directly by the tower-http and tower layers that
//! answer on their own (authorization, `Accept` validation, CORS, timeout,
//! request body limit, concurrency limit), served by plain hyper without
//! axum: their own answers need a `FeedBody` of their making.
#![cfg(feature = "server")]

mod support;

use std::convert::Infallible;
use std::future::pending;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use http::header::{
    ACCEPT, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION,
    CONTENT_LENGTH, ORIGIN,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use support::auth::Bearer;
use support::readers::{FnReader, ItemStream, checkpoint, event};
use support::transport::{HyperServer, LIVENESS, Protocols, client};
use tower::limit::ConcurrencyLimitLayer;
use tower::{Service, ServiceBuilder};
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;
use zeroeventhub::server::{FeedBody, FeedService, ReadContext, ReadError};

const TOKEN: &str = "s3cret";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Serves partition 0 as one event and its checkpoint; a read of
/// partition 1 never produces its first line.
fn reader() -> FnReader<impl Fn(&ReadContext<'_>) -> Result<ItemStream, ReadError> + Send + Sync> {
    FnReader::new(|context: &ReadContext<'_>| {
        if context.request().cursor(1).is_some() {
            return Ok(stream::once(pending()).boxed());
        }
        Ok(stream::iter([Ok(event(0, r#"{"n":1}"#)), Ok(checkpoint(0, "1"))]).boxed())
    })
}

/// The feed wrapped directly by every layer, outermost first.
fn stack() -> impl Service<
    Request<Incoming>,
    Response = Response<impl http_body::Body<Data = Bytes, Error: Into<tower::BoxError>> + Send>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(RequestBodyLimitLayer::new(1024))
        .layer(CorsLayer::permissive())
        .layer(ValidateRequestHeaderLayer::custom(Bearer::<
            FeedBody<ItemStream>,
        >::new(TOKEN)))
        .layer(ValidateRequestHeaderLayer::accept("application/x-ndjson"))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            TIMEOUT,
        ))
        .layer(ConcurrencyLimitLayer::new(8))
        .service(FeedService::new(reader(), 2))
}

/// A request as the consumer this stack expects sends it.
fn authorized(uri: &str) -> http::request::Builder {
    Request::get(uri)
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(ACCEPT, "application/x-ndjson")
}

async fn send(request: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = tokio::time::timeout(LIVENESS, client().request(request))
        .await
        .expect("the server answers")
        .expect("a response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test(start_paused = true)]
async fn layers_that_answer_on_their_own_wrap_the_service_under_hyper() {
    let server = HyperServer::start(stack(), Protocols::Auto).await;
    let base = server.url("/feed");
    let page = format!("{base}?n=2&cursor0=_first");

    let request = authorized(&page).body(Full::default()).unwrap();
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "{\"partition\":0,\"data\":{\"n\":1}}\n{\"partition\":0,\"cursor\":\"1\"}\n"
    );

    let no_token = Request::get(&page)
        .header(ACCEPT, "application/x-ndjson")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(no_token).await.0, StatusCode::UNAUTHORIZED);

    let wants_html = Request::get(&page)
        .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(ACCEPT, "text/html")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(wants_html).await.0, StatusCode::NOT_ACCEPTABLE);

    let large_body = authorized(&page)
        .header(CONTENT_LENGTH, 4096)
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .unwrap();
    assert_eq!(send(large_body).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri(&page)
        .header(ORIGIN, "https://example.com")
        .header(ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .body(Full::default())
        .unwrap();
    let (status, headers, _) = send(preflight).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get(ACCESS_CONTROL_ALLOW_ORIGIN),
        Some(&HeaderValue::from_static("*"))
    );

    // Paused time runs the timeout out as soon as everything waits.
    let stuck = authorized(&format!("{base}?n=2&cursor1=_first"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(stuck).await.0, StatusCode::REQUEST_TIMEOUT);
}
