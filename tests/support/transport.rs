//! Two ways to reach a [`FeedService`]: called in-process with `oneshot`, and
//! mounted in axum under tower-http layers, served on a loopback port and
//! called with hyper-util's client. And a service served by hyper alone,
//! without axum.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{BoxError, Service, ServiceExt};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use zeroeventhub::server::{FeedReader, FeedService};

/// How long a whole exchange may take before the test calls the server
/// stuck: a bound on a hang, not a measure of speed.
pub(crate) const LIVENESS: Duration = Duration::from_secs(20);

/// Where the feed is mounted.
pub(crate) const FEED_PATH: &str = "/feed/v1";

/// The body POST requests carry, so that a 405 is about the method and not
/// a missing body.
const POST_BODY: &[u8] = b"{\"ignored\":true}";

/// How a test sends its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `tower::ServiceExt::oneshot` on the service itself.
    InProcess,
    /// Real HTTP/1.1 over a loopback TCP connection, through axum.
    Loopback,
}

/// A whole answer: status, headers and the collected body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// Reads a whole response.
    async fn read<B>(response: http::Response<B>) -> Reply
    where
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .expect("the body arrives whole")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// The value of header `name`, if present and text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body as text.
    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("the body is UTF-8")
    }
}

impl Transport {
    /// Sends `method` with `query` (without `?`) to `service` and collects
    /// the whole answer.
    pub(crate) async fn send<R: FeedReader>(
        self,
        service: FeedService<R>,
        method: Method,
        query: &str,
    ) -> Reply {
        tokio::time::timeout(LIVENESS, self.exchange(service, method, query))
            .await
            .expect("the server answers in time")
    }

    async fn exchange<R: FeedReader>(
        self,
        service: FeedService<R>,
        method: Method,
        query: &str,
    ) -> Reply {
        match self {
            Transport::InProcess => send_in_process(service, method, query).await,
            Transport::Loopback => {
                let server = LoopbackServer::start(router(service)).await;
                let response = client()
                    .request(server.request(method, query))
                    .await
                    .expect("the loopback server answers");
                Reply::read(response).await
            }
        }
    }
}

async fn send_in_process<R: FeedReader>(
    service: FeedService<R>,
    method: Method,
    query: &str,
) -> Reply {
    let request = request(method, &format!("{FEED_PATH}?{query}"));
    let response = service
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    Reply::read(response).await
}

/// A request of `method` to `uri`; POST and other methods that usually
/// carry a body get a small one.
pub(crate) fn request(method: Method, uri: &str) -> Request<Full<Bytes>> {
    let body = match method {
        Method::GET | Method::HEAD => Bytes::new(),
        _ => Bytes::from_static(POST_BODY),
    };
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body))
        .expect("a valid request")
}

/// `service` mounted at [`FEED_PATH`] the way an application mounts it:
/// with a request body limit and request tracing.
pub(crate) fn router<R: FeedReader>(service: FeedService<R>) -> Router {
    Router::new()
        .route_service(FEED_PATH, service)
        .layer(RequestBodyLimitLayer::new(64 * 1024))
        .layer(TraceLayer::new_for_http())
}

/// An HTTP client like a consumer's: hyper-util's pooled HTTP/1 client.
pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A listener on a free loopback port, and its address.
async fn bind_loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port is free");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    (listener, addr)
}

/// An axum app served on a loopback port, shut down when dropped.
pub(crate) struct LoopbackServer {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LoopbackServer {
    /// Binds `127.0.0.1:0` and serves `app` there.
    pub(crate) async fn start(app: Router) -> Self {
        let (listener, addr) = bind_loopback().await;
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the server runs");
        });
        LoopbackServer { addr, task }
    }

    /// The feed's URL with `query`.
    pub(crate) fn url(&self, query: &str) -> String {
        format!("http://{}{FEED_PATH}?{query}", self.addr)
    }

    /// A request of `method` for the feed with `query`.
    pub(crate) fn request(&self, method: Method, query: &str) -> Request<Full<Bytes>> {
        request(method, &self.url(query))
    }

    /// Sends a GET with `query` and returns the response, body unread.
    pub(crate) async fn get(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        query: &str,
    ) -> http::Response<Incoming> {
        client
            .request(self.request(Method::GET, query))
            .await
            .expect("the loopback server answers")
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a [`HyperServer`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocols {
    /// HTTP/1.1 and HTTP/2, as hyper-util's `auto` connection builder
    /// serves them.
    Auto,
    /// HTTP/2 only: no HTTP/1.1 upgrade, no fallback, as tonic serves by
    /// default.
    Http2Only,
}

/// A tower service served straight by hyper on a loopback port, without
/// axum: every path reaches it. Shut down when dropped.
pub(crate) struct HyperServer {
    pub(crate) addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HyperServer {
    /// Binds `127.0.0.1:0` and serves each connection to a clone of
    /// `service`, speaking `protocols`.
    pub(crate) async fn start<S, B>(service: S, protocols: Protocols) -> Self
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (listener, addr) = bind_loopback().await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.expect("a connection");
                counted.fetch_add(1, Ordering::SeqCst);
                let io = TokioIo::new(stream);
                let service = TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    // A connection's end, clean or not, is the client's affair.
                    let _ = match protocols {
                        Protocols::Auto => {
                            auto::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        }
                        Protocols::Http2Only => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                                .map_err(Into::into)
                        }
                    };
                });
            }
        });
        HyperServer {
            addr,
            accepted,
            task,
        }
    }

    /// The URL of `path` on this server.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many connections the server has accepted.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for HyperServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
