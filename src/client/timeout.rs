//! The timeout on each attempt's response head, which a long-polling
//! request's wait extends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Request;
use tokio::time::Sleep;
use tower::timeout::error::Elapsed;
use tower_layer::Layer;

use crate::BoxError;

/// Builds [`HeadTimeout`] around a service, for `tower::ServiceBuilder`.
///
/// Put it inside tower's `RetryLayer` with [`RetryPolicy`](super::RetryPolicy),
/// so that each attempt has its own timeout: that is the stack
/// [`Client::builder`](super::Client::builder) builds
/// ([`ClientStack`](super::ClientStack)).
///
/// ```
/// # #[cfg(feature = "server")] {
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower::retry::RetryLayer;
/// use zeroeventhub::client::{Client, HeadTimeoutLayer, RetryPolicy};
/// use zeroeventhub::server::MemoryFeed;
///
/// let feed = MemoryFeed::new(1);
/// let stack = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::new().with_max_attempts(3)))
///     .layer(HeadTimeoutLayer::new(Duration::from_secs(10)))
///     .service(feed.service());
/// let client = Client::new(stack, "http://feed.example/v1".parse().unwrap(), 1);
/// # let _ = client;
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HeadTimeoutLayer {
    timeout: Duration,
}

impl HeadTimeoutLayer {
    /// The default timeout beside a request's wait: 30 s, as
    /// [`ClientBuilder::DEFAULT_HEAD_TIMEOUT`](super::ClientBuilder::DEFAULT_HEAD_TIMEOUT).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A layer giving each response head `timeout`, beside the request's
    /// wait.
    pub fn new(timeout: Duration) -> Self {
        HeadTimeoutLayer { timeout }
    }

    /// The timeout beside a request's wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The layer with [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT), the
/// builder's default.
impl Default for HeadTimeoutLayer {
    fn default() -> Self {
        Self::new(Self::DEFAULT_TIMEOUT)
    }
}

impl<S> Layer<S> for HeadTimeoutLayer {
    type Service = HeadTimeout<S>;

    fn layer(&self, inner: S) -> HeadTimeout<S> {
        HeadTimeout::new(inner, self.timeout)
    }
}

/// The timeout on each attempt's response head, as
/// [`ClientBuilder::head_timeout`](super::ClientBuilder::head_timeout) sets
/// it, extended by the `wait` the request asks for: a feed that honours the
/// wait may hold the head that long before it answers (long polling).
///
/// tower's `Timeout`, but for that extension; past the time, the attempt
/// fails with tower's [`Elapsed`], which
/// [`Error::is_timeout`](super::Error::is_timeout) recognises and the retry
/// policy does not retry. [`HeadTimeoutLayer`] builds it in a
/// `tower::ServiceBuilder`.
///
/// ```
/// # #[cfg(feature = "server")] {
/// use std::time::Duration;
/// use zeroeventhub::client::HeadTimeout;
/// use zeroeventhub::server::MemoryFeed;
///
/// let transport = HeadTimeout::new(MemoryFeed::new(1).service(), Duration::from_secs(10));
/// assert_eq!(transport.timeout(), Duration::from_secs(10));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HeadTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> HeadTimeout<S> {
    /// Wraps `inner`, with `timeout` on each response head beside the
    /// request's wait.
    pub fn new(inner: S, timeout: Duration) -> Self {
        HeadTimeout { inner, timeout }
    }

    /// The timeout beside a request's wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S, B> tower_service::Service<Request<B>> for HeadTimeout<S>
where
    S: tower_service::Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timeout = self
            .timeout
            .saturating_add(requested_wait(request.uri().query()));
        ResponseFuture {
            response: self.inner.call(request),
            sleep: tokio::time::sleep(timeout),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`HeadTimeout`]'s response.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        response: F,
        #[pin]
        sleep: Sleep,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.response.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        ready!(this.sleep.poll(cx));
        Poll::Ready(Err(Elapsed::new().into()))
    }
}

/// The `wait` of a request's query, as the client writes it (`wait=` and
/// ASCII digits); zero without one. The feed's own URL never carries a
/// `wait` of its own: the client drops it.
fn requested_wait(query: Option<&str>) -> Duration {
    query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter_map(|pair| pair.strip_prefix("wait="))
        .filter(|seconds| !seconds.is_empty() && seconds.bytes().all(|b| b.is_ascii_digit()))
        .map(|seconds| Duration::from_secs(seconds.parse().unwrap_or(u64::MAX)))
        .next_back()
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_read_from_the_query() {
        let secs = Duration::from_secs;
        assert_eq!(requested_wait(None), Duration::ZERO);
        assert_eq!(requested_wait(Some("n=1&cursor0=_first")), Duration::ZERO);
        assert_eq!(requested_wait(Some("n=1&cursor0=_first&wait=20")), secs(20));
        assert_eq!(requested_wait(Some("wait=7&n=1")), secs(7));
        assert_eq!(requested_wait(Some("n=1&await=9&wait=x")), Duration::ZERO);
        assert_eq!(
            requested_wait(Some("wait=99999999999999999999999")),
            secs(u64::MAX)
        );
    }
}
