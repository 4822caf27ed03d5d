use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http_body::{Body, Frame, SizeHint};

use super::ReadError;
use crate::protocol::{FeedItem, LineEncoder};

/// Bytes gathered before a frame is handed to the connection. Large enough
/// that a page costs few writes, small enough that memory stays flat.
const FRAME_SIZE: usize = 64 * 1024;

/// The response body of [`FeedService`](super::FeedService): a fixed message,
/// or a page streamed from a [`FeedReader`](super::FeedReader) as NDJSON.
///
/// A page pulls items from the reader only when the connection asks for
/// more, packs their lines into frames of up to 64 KiB, and hands a frame
/// on as soon as the reader has nothing ready. A reader error after the
/// first line ends the body with [`FeedBodyError`] once the lines before it
/// are out, so that the server aborts the response: the consumer sees a
/// broken body, never a clean short page.
pub struct FeedBody<S> {
    kind: Kind<S>,
}

enum Kind<S> {
    Full(Option<Bytes>),
    Page {
        stream: Option<Pin<Box<S>>>,
        encoder: LineEncoder,
        buffer: BytesMut,
        failed: bool,
        head_start: HeadStart,
    },
}

/// How the page's first line leaves: on its own, then a pause, so that the
/// connection writes it at once instead of gathering a large first write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadStart {
    Send,
    Yield,
    Done,
}

impl<S> FeedBody<S> {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        FeedBody {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    pub(crate) fn empty() -> Self {
        FeedBody {
            kind: Kind::Full(None),
        }
    }

    /// A page whose first item was already read (and is in `buffer`).
    pub(crate) fn page(stream: Pin<Box<S>>, encoder: LineEncoder, buffer: BytesMut) -> Self {
        FeedBody {
            kind: Kind::Page {
                stream: Some(stream),
                encoder,
                buffer,
                failed: false,
                head_start: HeadStart::Send,
            },
        }
    }
}

impl<S> fmt::Debug for FeedBody<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full(_) => "full",
            Kind::Page { .. } => "page",
        };
        f.debug_struct("FeedBody").field("kind", &kind).finish()
    }
}

impl<S> Body for FeedBody<S>
where
    S: Stream<Item = Result<FeedItem, ReadError>>,
{
    type Data = Bytes;
    type Error = FeedBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FeedBodyError>>> {
        let (stream_slot, encoder, buffer, failed, head_start) = match &mut self.get_mut().kind {
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Page {
                stream,
                encoder,
                buffer,
                failed,
                head_start,
            } => (stream, encoder, buffer, failed, head_start),
        };
        // hyper keeps gathering frames into one write while the body has
        // more ready; a single pause after the first line makes it flush, so
        // the first byte leaves before the rest of the page is encoded.
        match head_start {
            HeadStart::Send if !buffer.is_empty() => {
                *head_start = HeadStart::Yield;
                return Poll::Ready(Some(Ok(Frame::data(buffer.split().freeze()))));
            }
            HeadStart::Yield => {
                *head_start = HeadStart::Done;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            _ => {}
        }
        loop {
            if buffer.len() >= FRAME_SIZE {
                return Poll::Ready(Some(Ok(Frame::data(buffer.split().freeze()))));
            }
            let Some(stream) = stream_slot else {
                // The reader is done (or failed): send what is left, then end.
                if !buffer.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(buffer.split().freeze()))));
                }
                if std::mem::take(failed) {
                    return Poll::Ready(Some(Err(FeedBodyError(()))));
                }
                return Poll::Ready(None);
            };
            let next = match stream.as_mut().poll_next(cx) {
                Poll::Pending if !buffer.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(buffer.split().freeze()))));
                }
                poll => ready!(poll),
            };
            match next {
                Some(Ok(item)) => encoder.encode(&item, buffer),
                Some(Err(error)) => {
                    tracing::error!(%error, "feed reader failed mid-page; aborting the response");
                    *failed = true;
                    *stream_slot = None;
                }
                // Dropping the stream now releases the reader's resources
                // before the last frame is even written.
                None => *stream_slot = None,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Page { .. } => SizeHint::default(),
        }
    }
}

/// The error that ends a [`FeedBody`] when its reader fails mid-page.
///
/// It carries no detail on purpose: the detail is logged where it happened,
/// and the consumer only needs to see that the page is broken.
#[derive(Debug)]
pub struct FeedBodyError(());

impl fmt::Display for FeedBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("feed reader failed mid-page; the response was aborted")
    }
}

impl std::error::Error for FeedBodyError {}
