use std::convert::Infallible;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::sync::watch;
use tracing::Instrument;

use super::body::PageSettings;
use super::{FeedBody, FeedReader, ReadContext, ReadError};
use crate::protocol::{FeedRequest, LineEncoder, RequestError};

const NDJSON: &str = "application/x-ndjson";
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// A feed as a [`tower::Service`](tower_service::Service): parses the query's
/// cursors, calls the [`FeedReader`] and streams its page as NDJSON.
///
/// - `GET` and `HEAD` are served; other methods get `405` with `Allow`.
///   `HEAD` is answered as `GET` would be, through the reader (a cursor the
///   reader refuses is a `400` on both), but never with a body.
/// - An invalid query gets `400 text/plain` with one line naming the
///   parameter and the reason ([`RequestError`]), as does a cursor the reader
///   reports as [`ReadError::UnknownCursor`].
/// - A reader error before the first line gets a generic `500`; after it,
///   the body fails so that the connection is aborted (see [`FeedBody`]).
/// - A `GET` with `wait` (long polling) gives the reader a deadline
///   ([`ReadContext::wait_deadline`]): the wait clamped to
///   [`max_wait`](Self::max_wait), counted from the request's arrival.
///   At most [`max_waiting`](Self::max_waiting) requests hold a deadline at
///   once; past that, a request is answered as if it had no wait. `HEAD`
///   never waits. When the consumer goes away, the server drops the
///   response future and the wait ends with it. For a graceful shutdown,
///   [`end_waits`](Self::end_waits) answers every waiting request at once.
/// - A page ends at its first checkpoint after
///   [`max_page_duration`](FeedService::max_page_duration), so that a reader
///   (a database query and its snapshot) is not held for long by a slow
///   consumer.
/// - Each response runs in a `feed_page` span (at debug level) naming the
///   partitions read and the page size aimed at; it records the number of
///   events sent when the page ends.
///
/// The service is always ready, cheap to clone, and never fails
/// (`Error = Infallible`), so it mounts directly with axum's
/// `Router::route_service` and under any tower-http layer. Keep
/// `application/x-ndjson` out of response compression, or compress per
/// frame, so that pages stay streamed.
///
/// ```
/// use axum::Router;
/// use zeroeventhub::server::{FeedService, MemoryFeed};
///
/// let feed = MemoryFeed::new(2);
/// let app: Router = Router::new().route_service("/feed/v1", FeedService::new(feed.clone(), 2));
/// ```
pub struct FeedService<R> {
    reader: Arc<R>,
    config: Config,
    /// Requests holding a wait deadline now, shared by the clones.
    waiting: Arc<AtomicUsize>,
    /// Set by `end_waits`, for every clone.
    waits_ended: Arc<watch::Sender<bool>>,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    partition_count: u32,
    default_page_size: usize,
    max_page_size: usize,
    max_wait: Duration,
    max_waiting: usize,
    max_page_duration: Duration,
}

impl<R: FeedReader> FeedService<R> {
    /// The default number of events in a page when the consumer gives no hint.
    pub const DEFAULT_PAGE_SIZE: usize = 1_000;

    /// The default largest page a consumer can ask for.
    pub const DEFAULT_MAX_PAGE_SIZE: usize = 100_000;

    /// The default longest wait granted to a long-polling request: 30 s,
    /// below the idle timeouts of common proxies and load balancers (60 s).
    pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

    /// The default number of requests that may wait at once: 10,000, a few
    /// tens of MiB of connections and wait state.
    pub const DEFAULT_MAX_WAITING: usize = 10_000;
    /// The default time after which a page ends at its next checkpoint.
    pub const DEFAULT_MAX_PAGE_DURATION: Duration = Duration::from_secs(60);

    /// A feed of `partition_count` partitions served from `reader`.
    pub fn new(reader: R, partition_count: u32) -> Self {
        FeedService {
            reader: Arc::new(reader),
            config: Config {
                partition_count,
                default_page_size: Self::DEFAULT_PAGE_SIZE,
                max_page_size: Self::DEFAULT_MAX_PAGE_SIZE,
                max_wait: Self::DEFAULT_MAX_WAIT,
                max_waiting: Self::DEFAULT_MAX_WAITING,
                max_page_duration: Self::DEFAULT_MAX_PAGE_DURATION,
            },
            waiting: Arc::new(AtomicUsize::new(0)),
            waits_ended: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Sets the page size used when the request has no `pagesizehint` (or
    /// `0`). Raised to 1 if 0; the maximum follows if it is smaller.
    pub fn default_page_size(mut self, size: usize) -> Self {
        self.config.default_page_size = size.max(1);
        self.config.max_page_size = self.config.max_page_size.max(self.config.default_page_size);
        self
    }

    /// Sets the largest page a consumer can ask for; larger hints are
    /// clamped to it. Raised to 1 if 0; the default follows if it is larger.
    pub fn max_page_size(mut self, size: usize) -> Self {
        self.config.max_page_size = size.max(1);
        self.config.default_page_size =
            self.config.default_page_size.min(self.config.max_page_size);
        self
    }

    /// Sets the longest wait granted to a request with `wait` (default
    /// [`DEFAULT_MAX_WAIT`](Self::DEFAULT_MAX_WAIT)); longer waits are
    /// clamped to it. Whole seconds count; below one second, requests never
    /// wait.
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.config.max_wait = Duration::from_secs(max.as_secs());
        self
    }

    /// Sets how many requests may wait at once (default
    /// [`DEFAULT_MAX_WAITING`](Self::DEFAULT_MAX_WAITING)); past it, a
    /// request with `wait` is answered at once. 0: no request waits.
    pub fn max_waiting(mut self, max: usize) -> Self {
        self.config.max_waiting = max;
        self
    }

    /// The number of requests holding a wait deadline now, across the
    /// service's clones.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Ends long polling on this service and its clones, for a graceful
    /// shutdown: every request waiting now is answered at once, with what
    /// its partitions hold (an empty page if nothing came), and requests
    /// from now on do not wait. Consumers then take their next page from
    /// wherever they reconnect, while the server lets the pages being
    /// sent finish.
    pub fn end_waits(&self) {
        self.waits_ended.send_replace(true);
    }

    /// Sets how long a page may stream: past it, the page ends cleanly at
    /// its next checkpoint (a shorter page is always valid; the consumer asks
    /// again from there). The clock is looked at whenever the page moves on,
    /// so a reader that produces nothing is not cut short by it.
    /// `Duration::MAX` lets pages run as long as their reader.
    pub fn max_page_duration(mut self, duration: Duration) -> Self {
        self.config.max_page_duration = duration;
        self
    }

    /// The feed's partition count.
    pub fn partition_count(&self) -> u32 {
        self.config.partition_count
    }

    /// The reader behind the service.
    pub fn reader(&self) -> &R {
        &self.reader
    }
}

impl<R> Clone for FeedService<R> {
    fn clone(&self) -> Self {
        FeedService {
            reader: Arc::clone(&self.reader),
            config: self.config,
            waiting: Arc::clone(&self.waiting),
            waits_ended: Arc::clone(&self.waits_ended),
        }
    }
}

impl<R> fmt::Debug for FeedService<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedService")
            .field("partition_count", &self.config.partition_count)
            .field("default_page_size", &self.config.default_page_size)
            .field("max_page_size", &self.config.max_page_size)
            .field("max_wait", &self.config.max_wait)
            .field("max_waiting", &self.config.max_waiting)
            .field("max_page_duration", &self.config.max_page_duration)
            .finish_non_exhaustive()
    }
}

impl<R, B> tower_service::Service<Request<B>> for FeedService<R>
where
    R: FeedReader,
{
    type Response = Response<FeedBody<R::Stream>>;
    type Error = Infallible;
    type Future = ResponseFuture<R::Stream>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = request.method().clone();
        if method != Method::GET && method != Method::HEAD {
            return ResponseFuture::ready(method_not_allowed(&method));
        }
        // HEAD takes GET's whole path, reader included, so that both give
        // the same status; only the body is left out.
        let head = method == Method::HEAD;
        let query = request.uri().query().unwrap_or("");
        let feed_request = match FeedRequest::parse(query, Some(self.config.partition_count)) {
            Ok(feed_request) => feed_request,
            Err(error) => return ResponseFuture::ready(without_body_if(head, bad_request(&error))),
        };
        let page_size = feed_request
            .page_size_hint()
            .map_or(self.config.default_page_size, |hint| {
                (hint as usize).min(self.config.max_page_size)
            });
        let wait = match method {
            Method::GET => self.admit_wait(&feed_request),
            _ => None,
        };
        let waits_ended = wait.as_ref().map(|_| self.waits_ended.subscribe());
        let span = tracing::debug_span!(
            "feed_page",
            partitions = ?feed_request.cursors().iter().map(|(partition, _)| partition).collect::<Vec<_>>(),
            page_size,
            events = tracing::field::Empty,
        );
        let reader = Arc::clone(&self.reader);
        let max_page_duration = self.config.max_page_duration;
        let extensions = request.into_parts().0.extensions;
        let respond = async move {
            // Held until the answer's head is ready, or the consumer goes
            // away and the server drops this future.
            let (wait_deadline, _slot) = wait.unzip();
            let context = ReadContext::new(&feed_request, page_size, &extensions)
                .with_wait_deadline(wait_deadline);
            let encoder = LineEncoder::new(feed_request.headers().clone());
            let response = match read_until_waits_end(&*reader, context, waits_ended).await {
                Ok(stream) => {
                    let settings = PageSettings {
                        deadline: Instant::now().checked_add(max_page_duration),
                        span: tracing::Span::current(),
                    };
                    first_lines(stream, encoder, settings).await
                }
                Err(error) => Err(error),
            };
            Ok(without_body_if(head, response.unwrap_or_else(read_error)))
        };
        ResponseFuture {
            inner: Box::pin(respond.instrument(span)),
        }
    }
}

impl<R> FeedService<R> {
    /// The deadline of a request that asks to wait, and its place among
    /// the waiting requests; `None` when it does not wait, or when the
    /// waiting requests are at their cap.
    fn admit_wait(&self, request: &FeedRequest) -> Option<(tokio::time::Instant, WaitSlot)> {
        let wait = request.wait()?.min(self.config.max_wait);
        if wait.is_zero() || *self.waits_ended.borrow() {
            return None;
        }
        let arrival = tokio::time::Instant::now();
        let Some(slot) = WaitSlot::take(&self.waiting, self.config.max_waiting) else {
            tracing::debug!(
                max_waiting = self.config.max_waiting,
                "too many waiting requests; answering at once"
            );
            return None;
        };
        Some((arrival + wait, slot))
    }
}

/// Reads the page of `context`. A read that waits is cut short when
/// `waits_ended` turns true ([`FeedService::end_waits`]): it is dropped, and
/// the page read again without the wait.
async fn read_until_waits_end<R: FeedReader>(
    reader: &R,
    context: ReadContext<'_>,
    waits_ended: Option<watch::Receiver<bool>>,
) -> Result<R::Stream, ReadError> {
    let Some(mut waits_ended) = waits_ended else {
        return reader.read(context).await;
    };
    let waited = {
        let mut read = pin!(reader.read(context));
        let mut ended = pin!(async {
            // Every clone of the service gone (a lone `oneshot`) ends
            // nothing: the wait runs its course.
            if waits_ended.wait_for(|ended| *ended).await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        poll_fn(|cx| match read.as_mut().poll(cx) {
            Poll::Ready(read) => Poll::Ready(Some(read)),
            Poll::Pending => ended.as_mut().poll(cx).map(|()| None),
        })
        .await
    };
    match waited {
        Some(read) => read,
        None => reader.read(context.with_wait_deadline(None)).await,
    }
}

/// One of the places among the waiting requests, given back when dropped.
struct WaitSlot(Arc<AtomicUsize>);

impl WaitSlot {
    fn take(waiting: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()?;
        Some(WaitSlot(Arc::clone(waiting)))
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads the page's first item before answering, so that a reader that
/// fails at once gets a proper status instead of a broken `200`.
async fn first_lines<S>(
    stream: S,
    encoder: LineEncoder,
    settings: PageSettings,
) -> Result<Response<FeedBody<S>>, ReadError>
where
    S: futures_core::Stream<Item = Result<crate::protocol::FeedItem, ReadError>>,
{
    let mut stream = Box::pin(stream);
    let first = poll_fn(|cx| stream.as_mut().poll_next(cx)).await;
    let mut body = match first {
        None => FeedBody::empty(),
        Some(Err(error)) => return Err(error),
        Some(Ok(item)) => FeedBody::page(stream, encoder, &item, settings),
    };
    poll_fn(|cx| {
        body.settle(cx);
        Poll::Ready(())
    })
    .await;
    Ok(page_response(body))
}

/// Drops the body of an answer to `HEAD` (and with it the page's reader),
/// keeping the length a `GET` would have announced.
fn without_body_if<S>(head: bool, response: Response<FeedBody<S>>) -> Response<FeedBody<S>>
where
    S: futures_core::Stream<Item = Result<crate::protocol::FeedItem, ReadError>>,
{
    if !head {
        return response;
    }
    let length = response.body().size_hint().exact();
    let mut response = response.map(|_| FeedBody::empty());
    if let Some(length) = length {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

fn page_response<S>(body: FeedBody<S>) -> Response<FeedBody<S>> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    // A page depends on the moment it is read; no cache may replay it.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text_response<S>(status: StatusCode, message: String) -> Response<FeedBody<S>> {
    let mut response = Response::new(FeedBody::full(message + "\n"));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PLAIN_TEXT));
    response
}

fn bad_request<S>(error: &RequestError) -> Response<FeedBody<S>> {
    tracing::debug!(%error, "rejected feed request");
    text_response(StatusCode::BAD_REQUEST, error.to_string())
}

fn method_not_allowed<S>(method: &Method) -> Response<FeedBody<S>> {
    let mut response = text_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed: a feed is read with GET"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

fn read_error<S>(error: ReadError) -> Response<FeedBody<S>> {
    match error {
        ReadError::UnknownCursor { partition } => {
            bad_request(&RequestError::UnknownCursor { partition })
        }
        expired @ ReadError::ExpiredCursor { .. } => {
            tracing::debug!(error = %expired, "refused an expired cursor");
            text_response(StatusCode::GONE, expired.to_string())
        }
        error => {
            tracing::error!(%error, "feed reader failed before the first line");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error while reading the feed".to_owned(),
            )
        }
    }
}

type BoxedResponse<S> =
    Pin<Box<dyn Future<Output = Result<Response<FeedBody<S>>, Infallible>> + Send>>;

/// The future of [`FeedService`]'s response.
pub struct ResponseFuture<S> {
    inner: BoxedResponse<S>,
}

impl<S: Send + 'static> ResponseFuture<S> {
    fn ready(response: Response<FeedBody<S>>) -> Self {
        ResponseFuture {
            inner: Box::pin(std::future::ready(Ok(response))),
        }
    }
}

impl<S> Future for ResponseFuture<S> {
    type Output = Result<Response<FeedBody<S>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
