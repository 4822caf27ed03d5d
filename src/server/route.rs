//! A feed in front of any service: [`FeedLayer`] builds [`FeedRoute`],
//! which answers the requests for the feed's path with a [`FeedService`]
//! and hands every other request to the service it wraps.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use super::{FeedBody, FeedReader, FeedService, ReadError};
use crate::BoxError;
use crate::protocol::FeedItem;

/// Serves a feed on one path in front of a service, for
/// `tower::ServiceBuilder` or axum's `Router::layer`: builds [`FeedRoute`].
///
/// ```
/// use axum::Router;
/// use axum::routing::get;
/// use tower::ServiceBuilder;
/// use zeroeventhub::server::{FeedLayer, MemoryFeed};
///
/// let feed = MemoryFeed::new(2);
/// let app: Router = Router::new().route("/health", get(|| async { "ok" }));
///
/// // Around any service, axum's router included...
/// let service = ServiceBuilder::new()
///     .layer(FeedLayer::new("/feed/v1", feed.service()))
///     .service(app.clone());
/// // ...or inside the router, for every request it gets.
/// let app = app.layer(FeedLayer::new("/feed/v1", feed.service()));
/// # let _ = (service, app);
/// ```
pub struct FeedLayer<R> {
    path: Arc<str>,
    feed: FeedService<R>,
}

impl<R> FeedLayer<R> {
    /// A layer serving `feed` on `path`: the requests whose path is
    /// exactly `path` (see [`FeedRoute`]).
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/`, or has a query or a fragment
    /// (`?`, `#`): no request's path would ever be it.
    pub fn new(path: &str, feed: FeedService<R>) -> Self {
        assert!(
            path.starts_with('/'),
            "the feed's path {path:?} must start with `/`"
        );
        assert!(
            !path.contains(['?', '#']),
            "the feed's path {path:?} must have no query or fragment: the query is the request's"
        );
        FeedLayer {
            path: path.into(),
            feed,
        }
    }

    /// The path the feed is served on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The feed served there.
    pub fn feed(&self) -> &FeedService<R> {
        &self.feed
    }
}

impl<S, R> Layer<S> for FeedLayer<R> {
    type Service = FeedRoute<S, R>;

    fn layer(&self, inner: S) -> FeedRoute<S, R> {
        FeedRoute {
            inner,
            path: Arc::clone(&self.path),
            feed: self.feed.clone(),
        }
    }
}

impl<R> Clone for FeedLayer<R> {
    fn clone(&self) -> Self {
        FeedLayer {
            path: Arc::clone(&self.path),
            feed: self.feed.clone(),
        }
    }
}

impl<R> fmt::Debug for FeedLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedLayer")
            .field("path", &self.path)
            .field("feed", &self.feed)
            .finish()
    }
}

/// A service `S` with a feed routed in front of it: a request whose path
/// is the feed's goes to the [`FeedService`], any other to `S`.
/// [`FeedLayer`] builds it.
///
/// - The path must be equal to the request's, byte for byte, as the
///   service sees it (inside axum's `Router::nest`, without the nesting
///   prefix): no trailing slash is added or removed (`/feed/v1/` is not
///   `/feed/v1`), no percent-decoding is done. The query does not count:
///   `/feed/v1?n=2&cursor0=_first` is the feed's, as every feed request is.
/// - Every method on the path goes to the feed, which answers `GET` and
///   `HEAD` and refuses the others with `405`.
/// - Readiness is `S`'s (the feed is always ready), and so is the error:
///   the feed never fails, so over a service with `Error = Infallible`,
///   such as axum's router, the route is `Infallible` too.
/// - The body is a [`FeedRouteBody`]: the feed's [`FeedBody`] or `S`'s
///   body, neither boxed. `S`'s body must carry [`Bytes`] with an error
///   that boxes, as in axum and hyper.
///
/// With axum, `Router::layer` puts it in front of every route and of the
/// fallback, so the feed's path needs no route of its own. With
/// `Router::route_layer`, it runs only for requests that match a route,
/// and the feed answers only where a route matches its path; to mount a
/// feed on a route alone, `Router::route_service` with the
/// [`FeedService`] is simpler.
///
/// ```
/// # async fn run() {
/// use axum::Router;
/// use axum::body::Body;
/// use axum::routing::get;
/// use http::Request;
/// use tower::ServiceExt;
/// use zeroeventhub::server::{FeedLayer, MemoryFeed};
///
/// let feed = MemoryFeed::new(1);
/// let app = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .layer(FeedLayer::new("/feed/v1", feed.service()));
///
/// let page = Request::get("/feed/v1?n=1&cursor0=_first").body(Body::empty()).unwrap();
/// let page = app.clone().oneshot(page).await.unwrap();
/// assert_eq!(page.headers()["content-type"], "application/x-ndjson");
///
/// let health = Request::get("/health").body(Body::empty()).unwrap();
/// assert_eq!(app.oneshot(health).await.unwrap().status(), 200);
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
pub struct FeedRoute<S, R> {
    inner: S,
    path: Arc<str>,
    feed: FeedService<R>,
}

impl<S, R> FeedRoute<S, R> {
    /// `inner` with `feed` served on `path`, as
    /// [`FeedLayer::new`]`(path, feed)` makes it.
    ///
    /// # Panics
    ///
    /// As [`FeedLayer::new`].
    pub fn new(inner: S, path: &str, feed: FeedService<R>) -> Self {
        FeedLayer::new(path, feed).layer(inner)
    }

    /// The path the feed is served on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The feed served there.
    pub fn feed(&self) -> &FeedService<R> {
        &self.feed
    }

    /// The service every other request goes to.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The service every other request goes to, to change it.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The service every other request goes to, without the feed.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, R> Clone for FeedRoute<S, R> {
    fn clone(&self) -> Self {
        FeedRoute {
            inner: self.inner.clone(),
            path: Arc::clone(&self.path),
            feed: self.feed.clone(),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for FeedRoute<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedRoute")
            .field("inner", &self.inner)
            .field("path", &self.path)
            .field("feed", &self.feed)
            .finish()
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for FeedRoute<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: FeedReader,
{
    type Response = Response<FeedRouteBody<R::Stream, ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R::Stream>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A feed request leaves the readiness unused, as a middleware that
        // answers on its own does; `S` keeps it for the next call.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let kind = if request.uri().path() == &*self.path {
            Kind::Feed {
                future: self.feed.call(request),
            }
        } else {
            Kind::Inner {
                future: self.inner.call(request),
            }
        };
        ResponseFuture { kind }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`FeedRoute`]'s response: the feed's, or the inner
    /// service's `F`; `T` is the feed reader's stream, which the page is
    /// read from.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use axum::routing::future::RouteFuture;
    /// use zeroeventhub::server::route::ResponseFuture;
    /// use zeroeventhub::server::{FeedReader, MemoryFeed};
    ///
    /// // The future of a `FeedRoute` in front of axum's router, which a
    /// // server may spawn.
    /// type Answer = ResponseFuture<RouteFuture<Infallible>, <MemoryFeed as FeedReader>::Stream>;
    /// fn spawn(answer: Answer) {
    ///     tokio::spawn(answer);
    /// }
    /// ```
    pub struct ResponseFuture<F, T> {
        #[pin]
        kind: Kind<F, T>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, T> {
        Feed { future: super::service::ResponseFuture<T> },
        Inner { #[pin] future: F },
    }
}

impl<F, T, B, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<FeedRouteBody<T, B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Feed { future } => Pin::new(future).poll(cx).map(|result| match result {
                Ok(response) => Ok(response.map(|body| FeedRouteBody {
                    kind: BodyKind::Feed { body },
                })),
                Err(never) => match never {},
            }),
            KindProj::Inner { future } => future.poll(cx).map(|result| {
                result.map(|response| {
                    response.map(|body| FeedRouteBody {
                        kind: BodyKind::Inner { body },
                    })
                })
            }),
        }
    }
}

impl<F, T> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match self.kind {
            Kind::Feed { .. } => "feed",
            Kind::Inner { .. } => "inner",
        };
        f.debug_struct("ResponseFuture")
            .field("to", &to)
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The body of a [`FeedRoute`]'s response: a page (or message) of the
    /// feed, streamed from a reader's `T` as [`FeedBody`] streams it, or
    /// the inner service's body `B`, as it is.
    ///
    /// Neither is boxed, nor is a frame copied; only an error is, into a
    /// [`BoxError`]. `Default` is an empty body, for layers outside the
    /// route that answer on their own.
    ///
    /// ```
    /// use axum::body::Body;
    /// use http::Response;
    /// use zeroeventhub::server::route::FeedRouteBody;
    /// use zeroeventhub::server::{FeedReader, MemoryFeed};
    ///
    /// // What a `FeedRoute` in front of axum's router answers with.
    /// type Answer = Response<FeedRouteBody<<MemoryFeed as FeedReader>::Stream, Body>>;
    /// let empty: Answer = Response::new(FeedRouteBody::default());
    /// # let _ = empty;
    /// ```
    pub struct FeedRouteBody<T, B> {
        #[pin]
        kind: BodyKind<T, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<T, B> {
        Feed { #[pin] body: FeedBody<T> },
        Inner { #[pin] body: B },
    }
}

impl<T, B> Body for FeedRouteBody<T, B>
where
    T: Stream<Item = Result<FeedItem, ReadError>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyKindProj::Feed { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(Into::into))),
            BodyKindProj::Inner { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Feed { body } => body.is_end_stream(),
            BodyKind::Inner { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Feed { body } => body.size_hint(),
            BodyKind::Inner { body } => body.size_hint(),
        }
    }
}

impl<T, B> Default for FeedRouteBody<T, B> {
    fn default() -> Self {
        FeedRouteBody {
            kind: BodyKind::Feed {
                body: FeedBody::default(),
            },
        }
    }
}

impl<T, B> fmt::Debug for FeedRouteBody<T, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyKind::Feed { body } => f.debug_tuple("FeedRouteBody").field(body).finish(),
            BodyKind::Inner { .. } => f.debug_tuple("FeedRouteBody").field(&"inner").finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::StatusCode;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::protocol::{Event, RawJson};
    use crate::server::MemoryFeed;

    /// What the inner service answers: its own name and the path.
    async fn app(request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
        let text = format!("app {}", request.uri());
        Ok(Response::new(Full::new(text.into())))
    }

    fn route() -> FeedRoute<
        impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone,
        MemoryFeed,
    > {
        let feed = MemoryFeed::new(1);
        feed.append(Event::new(0, RawJson::from_bytes("1").unwrap()))
            .unwrap();
        ServiceBuilder::new()
            .layer(FeedLayer::new("/feed/v1", feed.service()))
            .service(tower::service_fn(app))
    }

    /// Sends a GET for `uri` and reads the answer: its status, content
    /// type and body.
    async fn get(uri: &str) -> (StatusCode, Option<String>, String) {
        let request = Request::get(uri).body(Full::default()).unwrap();
        let response = route()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_owned());
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn the_feed_answers_on_its_path_whatever_the_query() {
        let (status, content_type, body) = get("/feed/v1?n=1&cursor0=_first").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("application/x-ndjson"));
        assert_eq!(
            body,
            "{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"0\"}\n"
        );
        // Without a query, it is still the feed's request, and a bad one.
        let (status, _, body) = get("/feed/v1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("partition count missing"), "{body}");
    }

    #[tokio::test]
    async fn every_other_path_goes_to_the_inner_service() {
        for uri in [
            "/",
            "/health",
            "/feed/v1/",
            "/feed/v1/x",
            "/feed",
            "/FEED/v1",
            "/feed%2Fv1",
        ] {
            let (status, content_type, body) = get(uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(content_type, None, "{uri}");
            assert_eq!(body, format!("app {uri}"));
        }
        // An absolute URI, as a proxy sends it, has the same path.
        let (_, content_type, _) = get("http://feed.example/feed/v1?n=1&cursor0=_first").await;
        assert_eq!(content_type.as_deref(), Some("application/x-ndjson"));
    }

    #[tokio::test]
    async fn other_methods_on_the_path_are_the_feeds_to_refuse() {
        let request = Request::post("/feed/v1").body(Full::default()).unwrap();
        let response = route().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn readiness_and_errors_are_the_inner_services() {
        let mut route = FeedRoute::new(
            tower::service_fn(|_: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, _>("inner failed")
            }),
            "/feed/v1",
            MemoryFeed::new(1).service(),
        );
        let error = route
            .ready()
            .await
            .unwrap()
            .call(Request::get("/other").body(Full::default()).unwrap())
            .await
            .unwrap_err();
        assert_eq!(error, "inner failed");
        let page = route
            .ready()
            .await
            .unwrap()
            .call(
                Request::get("/feed/v1?n=1&cursor0=_first")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(route.path(), "/feed/v1");
        assert_eq!(route.feed().partition_count(), 1);
    }

    #[test]
    #[should_panic(expected = "must start with `/`")]
    fn a_path_without_its_slash_is_refused() {
        let _ = FeedLayer::new("feed/v1", MemoryFeed::new(1).service());
    }

    #[test]
    #[should_panic(expected = "must have no query")]
    fn a_path_with_a_query_is_refused() {
        let _ = FeedLayer::new("/feed/v1?n=1", MemoryFeed::new(1).service());
    }
}
