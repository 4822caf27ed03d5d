//! The connection's IO, watched: reads tell the connection's activity that a
//! request is coming, and a write that cannot go on for the stall timeout
//! fails, so that the response is aborted and its reader dropped.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::activity::Activity;

/// `io` with a write stall timeout, reporting reads to `activity`.
///
/// When the peer stops reading, hyper stops polling the response body, so
/// no timer inside the body would ever fire; the blocked write is the one
/// place where the stall shows.
pub(super) struct GuardedIo<I> {
    io: I,
    activity: Arc<Activity>,
    stall_timeout: Duration,
    /// Armed while writes are blocked; kept to be reset, not reallocated.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl<I> GuardedIo<I> {
    pub(super) fn new(io: I, activity: Arc<Activity>, stall_timeout: Duration) -> Self {
        GuardedIo {
            io,
            activity,
            stall_timeout,
            stall: None,
            stalled: false,
        }
    }

    /// Passes on what a write gave, and turns a write blocked for the stall
    /// timeout into an error.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if write.is_ready() {
            self.stalled = false;
            return write;
        }
        let deadline = Instant::now()
            .checked_add(self.stall_timeout)
            .unwrap_or_else(far_future);
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !std::mem::replace(&mut self.stalled, true) {
            stall.as_mut().reset(deadline);
        }
        ready!(stall.as_mut().poll(cx));
        tracing::debug!(timeout = ?self.stall_timeout, "peer stopped reading; aborting the response");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer stopped reading the response",
        )))
    }
}

/// A deadline no connection lives to see, for a timeout too large to add.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

impl<I: AsyncRead + Unpin> AsyncRead for GuardedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for GuardedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, write)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flush = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let shutdown = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, shutdown)
    }
}
