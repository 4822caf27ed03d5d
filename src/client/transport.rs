use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};

use super::classify::Http2OnlyServer;

/// The default transport: hyper-util's pooled client, speaking HTTP/1.1 or,
/// when asked, HTTP/2; able to speak HTTPS when the `rustls` feature is on.
pub type HttpTransport =
    hyper_util::client::legacy::Client<HttpVersionCheck, http_body_util::Empty<bytes::Bytes>>;

#[cfg(not(feature = "rustls"))]
type Inner = HttpConnector;

#[cfg(feature = "rustls")]
type Inner = hyper_rustls::HttpsConnector<HttpConnector>;

/// Builds the default transport: `TCP_NODELAY`, the pool idle timeout,
/// HTTP/2 only when `http2` (prior knowledge), ALPN over TLS.
pub(super) fn http_transport(pool_idle_timeout: Duration, http2: bool) -> HttpTransport {
    use hyper_util::rt::{TokioExecutor, TokioTimer};

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    #[cfg(feature = "rustls")]
    let inner = {
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http();
        if http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_all_versions().wrap_connector(http)
        }
    };
    #[cfg(not(feature = "rustls"))]
    let inner = http;
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        // hyper grows each connection's read buffer up to about 400 KiB;
        // 128 KiB reads a page just as fast and keeps many consumers in a
        // process small.
        .http1_max_buf_size(128 * 1024)
        .http2_only(http2)
        .build(HttpVersionCheck {
            inner,
            check: !http2,
        })
}

/// The default transport's connector: TCP (and TLS with `rustls`), which
/// tells an HTTP/2-only server apart when the client speaks HTTP/1.1.
///
/// Such a server's first bytes are an HTTP/2 `SETTINGS` frame, which hyper's
/// HTTP/1.1 client reads as a broken answer or a closed connection, and the
/// client would retry in vain. The connector looks at the first bytes a
/// connection receives and fails it with an error that says what happened
/// ([`Error::is_http2_only`](super::Error::is_http2_only)).
#[derive(Clone)]
pub struct HttpVersionCheck {
    inner: Inner,
    /// Whether the client speaks HTTP/1.1 unless ALPN says otherwise.
    check: bool,
}

impl fmt::Debug for HttpVersionCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpVersionCheck")
            .field("check", &self.check)
            .finish_non_exhaustive()
    }
}

impl tower_service::Service<Uri> for HttpVersionCheck {
    type Response = Checked<<Inner as tower_service::Service<Uri>>::Response>;
    type Error = <Inner as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = tower_service::Service::call(&mut self.inner, uri);
        let check = self.check;
        Box::pin(async move {
            let io = connecting.await?;
            let check = check && !io.connected().is_negotiated_h2();
            Ok(Checked { io, check })
        })
    }
}

/// A connection of [`HttpVersionCheck`]'s: the first bytes it reads are
/// checked for an HTTP/2 server's preface.
#[derive(Debug)]
pub struct Checked<T> {
    io: T,
    /// Whether the first read is still to be checked.
    check: bool,
}

impl<T: Read + Unpin> Read for Checked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.check {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // Once per connection: read into a buffer of our own to look at
        // the bytes, then hand them on.
        let mut storage = vec![0; buf.remaining().min(16 * 1024)];
        let mut first = ReadBuf::new(&mut storage);
        ready!(Pin::new(&mut this.io).poll_read(cx, first.unfilled()))?;
        let bytes = first.filled();
        if is_http2_preface(bytes) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Http2OnlyServer,
            )));
        }
        buf.put_slice(bytes);
        this.check = bytes.is_empty();
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for Checked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Checked<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// Whether `bytes`, the first a connection received, start with the frame
/// an HTTP/2 server sends first (RFC 9113, 3.4): a `SETTINGS` frame
/// (type 4) on stream 0. An HTTP/1 answer starts with `HTTP/`.
fn is_http2_preface(bytes: &[u8]) -> bool {
    const SETTINGS: u8 = 0x4;
    bytes.len() >= 9 && bytes[3] == SETTINGS && bytes[5..9] == [0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_settings_frame_is_told_from_an_http1_answer() {
        // An empty SETTINGS frame, then one with one setting.
        assert!(is_http2_preface(&[0, 0, 0, 4, 0, 0, 0, 0, 0]));
        assert!(is_http2_preface(&[
            0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100
        ]));
        assert!(!is_http2_preface(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_http2_preface(&[0, 0, 0, 4, 0, 0, 0, 0]));
        // A SETTINGS frame on another stream is not a preface.
        assert!(!is_http2_preface(&[0, 0, 0, 4, 0, 0, 0, 0, 1]));
    }
}
