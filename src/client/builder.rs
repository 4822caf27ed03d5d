use std::fmt;
use std::time::Duration;

use http::Uri;
use tower::layer::util::{Identity, Stack};
use tower::retry::{Retry, RetryLayer};
use tower_layer::Layer;

#[cfg(feature = "hyper-client")]
use super::transport::{HttpTransport, http_transport};
use super::{Client, HeadTimeout, HeadTimeoutLayer, RetryPolicy};
use crate::protocol::{LineDecoder, RawJson};

/// The stack the builder puts around a transport `S` (with the user's
/// layers): tower's retry with [`RetryPolicy`], outside the timeout on the
/// response head ([`HeadTimeout`]), so that each attempt has its own
/// timeout.
///
/// The same stack, composed with `tower::ServiceBuilder`, is this type
/// too:
///
/// ```
/// # #[cfg(feature = "server")] {
/// use tower::ServiceBuilder;
/// use tower::retry::RetryLayer;
/// use zeroeventhub::client::{ClientStack, HeadTimeoutLayer, RetryPolicy};
/// use zeroeventhub::server::{FeedService, MemoryFeed};
///
/// let stack: ClientStack<FeedService<MemoryFeed>> = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default()))
///     .layer(HeadTimeoutLayer::default())
///     .service(MemoryFeed::new(1).service());
/// # let _ = stack;
/// # }
/// ```
pub type ClientStack<S> = Retry<RetryPolicy, HeadTimeout<S>>;

impl Client<()> {
    /// A builder for a client of the feed at `url` with `partitions`
    /// partitions, with the default stack.
    pub fn builder(url: Uri, partitions: u32) -> ClientBuilder {
        ClientBuilder::new(url, partitions)
    }
}

/// Builds a [`Client`] with the default stack: retry with backoff, a
/// timeout on each attempt's response head, an idle timeout on the body,
/// and, with `build` (feature `hyper-client`), hyper-util's pooled client.
///
/// Requests go through, from the outside in: the retry
/// ([`RetryPolicy`]), the head timeout, the layers added with
/// [`layer`](Self::layer), the transport. The user's layers thus run on
/// every attempt.
///
/// ```
/// # #[cfg(feature = "server")] {
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use zeroeventhub::client::Client;
/// use zeroeventhub::server::MemoryFeed;
///
/// let feed = MemoryFeed::new(4);
/// let client = Client::builder("http://feed.example/v1".parse().unwrap(), 4)
///     .max_attempts(3)
///     .head_timeout(Duration::from_secs(10))
///     .layer(tower::util::MapRequestLayer::new(
///         |mut request: http::Request<Empty<Bytes>>| {
///             request.headers_mut().insert("x-consumer", "billing".parse().unwrap());
///             request
///         },
///     ))
///     .build_with(feed.service());
/// # let _ = client;
/// # }
/// ```
#[must_use = "a builder does nothing until it builds"]
pub struct ClientBuilder<L = Identity> {
    layer: L,
    settings: Settings,
}

/// Everything but the layers, so that adding a layer moves it whole.
#[derive(Debug)]
struct Settings {
    url: Uri,
    partitions: u32,
    retry: RetryPolicy,
    head_timeout: Duration,
    idle_timeout: Duration,
    page_timeout: Duration,
    max_line_length: usize,
    max_buffered_bytes: usize,
    #[cfg(feature = "hyper-client")]
    pool_idle_timeout: Duration,
    #[cfg(feature = "hyper-client")]
    http2_prior_knowledge: bool,
}

impl ClientBuilder {
    fn new(url: Uri, partitions: u32) -> Self {
        ClientBuilder {
            layer: Identity::new(),
            settings: Settings {
                url,
                partitions,
                retry: RetryPolicy::new(),
                head_timeout: Self::DEFAULT_HEAD_TIMEOUT,
                idle_timeout: Client::<()>::DEFAULT_IDLE_TIMEOUT,
                page_timeout: Client::<()>::DEFAULT_PAGE_TIMEOUT,
                max_line_length: LineDecoder::<RawJson>::DEFAULT_MAX_LINE_LENGTH,
                max_buffered_bytes: Client::<()>::DEFAULT_MAX_BUFFERED_BYTES,
                #[cfg(feature = "hyper-client")]
                pool_idle_timeout: Self::DEFAULT_POOL_IDLE_TIMEOUT,
                #[cfg(feature = "hyper-client")]
                http2_prior_knowledge: false,
            },
        }
    }
}

impl<L> ClientBuilder<L> {
    /// The default timeout on each attempt's response head: 30 s, that of
    /// [`HeadTimeoutLayer::default`].
    pub const DEFAULT_HEAD_TIMEOUT: Duration = HeadTimeoutLayer::DEFAULT_TIMEOUT;

    /// The default time an idle pooled connection is kept: 4 s.
    ///
    /// Below the shortest keep-alive of common servers (5 s for Node.js and
    /// Apache; nginx keeps 75 s, load balancers about 60 s), so that the
    /// pool rarely hands out a connection the server is closing. A consumer
    /// that reads pages back to back still reuses its connection; one that
    /// polls less often reconnects, which costs little next to the poll
    /// interval. When it happens anyway, the retry policy retries it.
    #[cfg(feature = "hyper-client")]
    pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

    /// Sets how many attempts are made in all, the first one included
    /// (default 5; `1` disables retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.settings.retry = self.settings.retry.with_max_attempts(attempts);
        self
    }

    /// Sets the backoff between attempts: about `base` before the first
    /// retry, doubling up to `max`, with jitter (defaults 100 ms and 5 s;
    /// both at most [`RetryPolicy::CEILING`]).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.retry = self.settings.retry.with_backoff(base, max);
        self
    }

    /// Sets the longest `Retry-After` waited for (default 60 s, at most
    /// [`RetryPolicy::CEILING`]); with a longer one, the status error is
    /// returned at once.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.settings.retry = self.settings.retry.with_max_retry_after(max);
        self
    }

    /// Replaces the retry policy as a whole.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.settings.retry = policy;
        self
    }

    /// Sets the timeout on each attempt's response head (default 30 s).
    /// A long-polling request
    /// ([`FeedRequest::with_wait`](crate::protocol::FeedRequest::with_wait))
    /// gets its wait on top, since the feed may hold the head that long.
    pub fn head_timeout(mut self, timeout: Duration) -> Self {
        self.settings.head_timeout = timeout;
        self
    }

    /// Sets how long a body may send nothing before the page fails
    /// (default 30 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.settings.idle_timeout = timeout;
        self
    }

    /// Sets the deadline for a whole page, from sending the request to the
    /// body's end (default 5 minutes,
    /// [`Client::DEFAULT_PAGE_TIMEOUT`](Client::DEFAULT_PAGE_TIMEOUT)); see
    /// [`Client::with_page_timeout`].
    pub fn page_timeout(mut self, timeout: Duration) -> Self {
        self.settings.page_timeout = timeout;
        self
    }

    /// Sets how many bytes of event lines a page may hold before a
    /// checkpoint covers them (default 64 MiB,
    /// [`Client::DEFAULT_MAX_BUFFERED_BYTES`](Client::DEFAULT_MAX_BUFFERED_BYTES));
    /// see [`Client::with_max_buffered_bytes`].
    pub fn max_buffered_bytes(mut self, max: usize) -> Self {
        self.settings.max_buffered_bytes = max;
        self
    }

    /// Sets the longest line accepted, in bytes (default 4 MiB).
    pub fn max_line_length(mut self, max: usize) -> Self {
        self.settings.max_line_length = max;
        self
    }

    /// Sets how long an idle pooled connection of the default transport is
    /// kept (default [`DEFAULT_POOL_IDLE_TIMEOUT`](Self::DEFAULT_POOL_IDLE_TIMEOUT)).
    #[cfg(feature = "hyper-client")]
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.settings.pool_idle_timeout = timeout;
        self
    }

    /// Makes the default transport speak HTTP/2 only, without asking
    /// first ("prior knowledge"): for a cleartext (`http://`) feed served
    /// by an HTTP/2-only server, such as tonic without `accept_http1`.
    ///
    /// By default the transport speaks HTTP/1.1 over `http://`; over
    /// `https://` (feature `rustls`) it offers both with ALPN and speaks
    /// HTTP/2 when the server picks it. Against an HTTP/2-only server an
    /// HTTP/1.1 client fails at once with an error that says so
    /// ([`Error::is_http2_only`](super::Error::is_http2_only)).
    #[cfg(feature = "hyper-client")]
    pub fn http2_prior_knowledge(mut self) -> Self {
        self.settings.http2_prior_knowledge = true;
        self
    }

    /// Adds a layer of the user's next to the transport, inside the retry
    /// and the head timeout, so that it runs on every attempt: auth
    /// (`tower_http::auth::AddAuthorizationLayer`), headers, tracing. Of
    /// several layers, the first added is the outermost, as with
    /// `tower::ServiceBuilder`.
    pub fn layer<T>(self, layer: T) -> ClientBuilder<Stack<T, L>> {
        ClientBuilder {
            layer: Stack::new(layer, self.layer),
            settings: self.settings,
        }
    }

    /// Builds the client over `transport`: any `tower::Service` for HTTP
    /// requests, such as a hyper-util client configured differently, or
    /// the crate's `FeedService` as an in-memory transport.
    pub fn build_with<S>(self, transport: S) -> Client<ClientStack<L::Service>>
    where
        L: Layer<S>,
    {
        // The layers a user composes with `ServiceBuilder` give the same.
        let service = RetryLayer::new(self.settings.retry).layer(
            HeadTimeoutLayer::new(self.settings.head_timeout).layer(self.layer.layer(transport)),
        );
        Client::new(service, self.settings.url, self.settings.partitions)
            .with_idle_timeout(self.settings.idle_timeout)
            .with_page_timeout(self.settings.page_timeout)
            .with_max_line_length(self.settings.max_line_length)
            .with_max_buffered_bytes(self.settings.max_buffered_bytes)
    }

    /// Builds the client over hyper-util's pooled client (HTTP and, with
    /// the `rustls` feature, HTTPS with the webpki roots), with
    /// `TCP_NODELAY` and the pool idle timeout set; HTTP/1.1 unless
    /// [`http2_prior_knowledge`](Self::http2_prior_knowledge) or ALPN says
    /// HTTP/2.
    #[cfg(feature = "hyper-client")]
    pub fn build(self) -> Client<ClientStack<L::Service>>
    where
        L: Layer<HttpTransport>,
    {
        let transport = http_transport(
            self.settings.pool_idle_timeout,
            self.settings.http2_prior_knowledge,
        );
        self.build_with(transport)
    }
}

impl<L> fmt::Debug for ClientBuilder<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The layers are the user's types, often without `Debug`.
        f.debug_struct("ClientBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
