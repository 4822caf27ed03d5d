//! Serving over TCP with the protections a public feed needs: what
//! `axum::serve` and a bare hyper accept loop leave out.
//!
//! See [`Server`].

mod activity;
mod connection;
mod io;

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

use crate::BoxError;
use activity::Timeouts;

/// The first wait after a failed accept; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// The longest wait between two failed accepts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Serves a tower service over TCP with timeouts for every way a client can
/// hold a connection without using it, and a cap on connections.
///
/// It accepts connections and serves any tower service on them
/// (a [`FeedService`](crate::server::FeedService), an axum `Router`, a tower-http
/// stack), over HTTP/1.1 and HTTP/2:
///
/// - a request head must arrive within the header timeout (default 10 s) of
///   the connection's start or of its first byte;
/// - a kept-alive connection waiting for its next request is closed after
///   the idle timeout (default 60 s);
/// - a response whose consumer stops reading is aborted after the stall
///   timeout (default 60 s), which drops the page's reader (and its
///   database query); hyper holds at most 64 KiB of it meanwhile;
/// - at most `max_connections` (default 1,024) are served at once; more wait
///   in the listen backlog until one closes;
/// - an accept that fails (out of file descriptors) is retried after a
///   backoff doubling from 10 ms to 1 s, so that service resumes as soon as
///   descriptors are free again.
///
/// ```no_run
/// use zeroeventhub::server::{MemoryFeed, Server};
///
/// # async fn run() -> std::io::Result<()> {
/// let feed = MemoryFeed::new(2);
/// let app = axum::Router::new().route_service("/feed/v1", feed.service());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// Server::new().serve(listener, app).await;
/// # Ok(())
/// # }
/// ```
///
/// A server that accepts its own connections (TLS, a Unix socket) keeps its
/// accept loop and hands each connection to [`Server::serve_connection`],
/// which applies the timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    header_timeout: Duration,
    idle_timeout: Duration,
    stall_timeout: Duration,
    max_connections: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// The default time a request head may take to arrive.
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

    /// The default time a kept-alive connection may wait for its next request.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    /// The default time a response may wait for its consumer to read.
    pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

    /// The default number of connections served at once: the usual soft
    /// limit on a process's file descriptors.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

    /// A server with the default limits.
    pub fn new() -> Self {
        Server {
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            stall_timeout: Self::DEFAULT_STALL_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// Sets how long a request head may take to arrive, counted from the
    /// connection's start, or on a kept-alive connection from the next
    /// request's first byte. A connection past it is closed.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets how long a kept-alive connection may wait for its next request
    /// before it is closed.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets how long a response may wait for its consumer to read before it
    /// is aborted, dropping the page's reader.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Sets how many connections are served at once (at least 1). Keep it
    /// below the process's file descriptor limit.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: self.header_timeout,
            idle: self.idle_timeout,
        }
    }

    /// Accepts connections on `listener` and serves `service` on each, for
    /// as long as the returned future is polled. Connections get
    /// `TCP_NODELAY`, so that a small page is not held back by Nagle's
    /// algorithm.
    pub async fn serve<S, B>(self, listener: TcpListener, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let mut backoff = FIRST_BACKOFF;
        loop {
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) if is_per_connection(&error) => continue,
                Err(error) => {
                    tracing::error!(%error, retry_in = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = FIRST_BACKOFF;
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                self.serve_connection(stream, service).await;
                drop(permit);
            });
        }
    }

    /// Serves `service` on one connection the caller accepted, with the
    /// header, idle and stall timeouts, until the connection ends.
    pub async fn serve_connection<I, S, B>(&self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        connection::serve(self, io, service).await;
    }
}

/// Whether an accept error concerns only the connection being accepted
/// (which the peer already gave up), not the listener.
fn is_per_connection(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    )
}
