use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http_body::{Body, Frame, SizeHint};

use super::ReadError;
use crate::protocol::{FeedItem, LineEncoder};

/// Bytes gathered before a frame is handed to the connection. Large enough
/// that a page costs few writes, small enough that memory stays flat.
const FRAME_SIZE: usize = 64 * 1024;

/// What a page may gather before its head goes out, so as to be sent in
/// one write with a known length if it ends within it: room for the few
/// events of a woken long-polling request, little enough that a long
/// page's first byte is not held back.
const SETTLE_SIZE: usize = 8 * 1024;

/// Room for a full frame and the line that crosses its end, so that most
/// frames of a streamed page are cut from the buffer without a
/// reallocation.
const BUFFER_CAPACITY: usize = 72 * 1024;

/// The buffer a page starts with: enough for a small page, so that many
/// small pages answered at once (woken long-polling requests) do not each
/// hold a streaming buffer.
const FIRST_CAPACITY: usize = 1024;

/// The response body of [`FeedService`](super::FeedService): a fixed message,
/// or a page streamed from a [`FeedReader`](super::FeedReader) as NDJSON.
///
/// A page pulls items from the reader only when the connection asks for
/// more, packs their lines into frames of up to 64 KiB, and hands a frame
/// on as soon as the reader has nothing ready. The first line goes out on
/// its own, so that the consumer's first byte does not wait for a full
/// frame; but a page shorter than 8 KiB whose reader has ended by the
/// time the response starts (a woken long-polling request's few events) is
/// sent whole, with its length, in one write. A reader error after the
/// first line ends the body with [`FeedBodyError`], so that the server
/// aborts the response: the consumer sees a broken body, never a clean
/// short page. Lines buffered before the error are handed on first, but the
/// abort may still cut them short; that is safe, since a consumer commits
/// only what a checkpoint covers.
pub struct FeedBody<S> {
    kind: Kind<S>,
}

enum Kind<S> {
    Full(Option<Bytes>),
    Page(Page<S>),
}

struct Page<S> {
    /// `None` once the reader has ended or failed.
    stream: Option<Pin<Box<S>>>,
    encoder: LineEncoder,
    buffer: BytesMut,
    /// The length of the first line, at the buffer's start until sent.
    first_line: usize,
    first_line_sent: bool,
    /// Return `Pending` once (already woken) before going on. hyper gathers
    /// frames into one write while the body has more ready; a pause makes
    /// it flush what it has.
    pause: bool,
    failed: bool,
    /// When the page should end at its next checkpoint.
    deadline: Option<Instant>,
    /// Set once the deadline has passed: the next checkpoint ends the page.
    ending: bool,
    /// Whether an event was sent after the last checkpoint.
    uncovered: bool,
    events: u64,
    /// The request's span: entered while pulling from the reader, and told
    /// how many events were sent when the page ends.
    span: tracing::Span,
}

/// How a page is to be streamed.
pub(crate) struct PageSettings {
    /// The page ends at the first checkpoint after this moment.
    pub(crate) deadline: Option<Instant>,
    pub(crate) span: tracing::Span,
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

    /// A page whose `first` item was already read from `stream`.
    pub(crate) fn page(
        stream: Pin<Box<S>>,
        encoder: LineEncoder,
        first: &FeedItem,
        settings: PageSettings,
    ) -> Self {
        let mut page = Page {
            stream: Some(stream),
            encoder,
            buffer: BytesMut::with_capacity(FIRST_CAPACITY),
            first_line: 0,
            first_line_sent: false,
            pause: false,
            failed: false,
            deadline: settings.deadline,
            ending: false,
            uncovered: false,
            events: 0,
            span: settings.span,
        };
        page.encode(first);
        page.first_line = page.buffer.len();
        FeedBody {
            kind: Kind::Page(page),
        }
    }
}

impl<S> FeedBody<S>
where
    S: Stream<Item = Result<FeedItem, ReadError>>,
{
    /// Takes in what the page's reader has ready before the response
    /// goes out. A page shorter than 8 KiB that has ended becomes a body of
    /// known length, sent with its head in one write (a woken long-polling
    /// request's page, an in-memory feed's small page); a longer or slower
    /// one streams as it comes.
    pub(crate) fn settle(&mut self, cx: &mut Context<'_>) {
        if let Kind::Page(page) = &mut self.kind {
            if page.settle(cx) {
                let bytes = page.buffer.split().freeze();
                self.kind = Kind::Full(Some(bytes));
            }
        }
    }
}

/// An empty body, for layers that answer on their own (tower-http's
/// timeout, authorization and CORS layers build their responses with
/// `Default`).
impl<S> Default for FeedBody<S> {
    fn default() -> Self {
        FeedBody::empty()
    }
}

impl<S> fmt::Debug for FeedBody<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full(_) => "full",
            Kind::Page(_) => "page",
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
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Page(page) => page.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Page(_) => SizeHint::default(),
        }
    }
}

impl<S> Page<S>
where
    S: Stream<Item = Result<FeedItem, ReadError>>,
{
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FeedBodyError>>> {
        let span = self.span.clone();
        let _entered = span.enter();
        self.poll_lines(cx)
    }

    fn poll_lines(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FeedBodyError>>> {
        if std::mem::take(&mut self.pause) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // The clock is read once a frame, not once a line.
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            self.deadline = None;
            self.ending = true;
            if !self.uncovered {
                self.end_at_deadline();
            }
        }
        // The page's first item is in the buffer from the start.
        if !self.first_line_sent {
            self.first_line_sent = true;
            self.pause = true;
            let line = self.buffer.split_to(self.first_line).freeze();
            return Poll::Ready(Some(Ok(Frame::data(line))));
        }
        loop {
            if self.buffer.len() >= FRAME_SIZE {
                return self.flush();
            }
            let Some(stream) = &mut self.stream else {
                // The reader is done (or failed): send what is left, then end.
                if !self.buffer.is_empty() {
                    self.pause = self.failed;
                    return self.flush();
                }
                if std::mem::take(&mut self.failed) {
                    return Poll::Ready(Some(Err(FeedBodyError(()))));
                }
                return Poll::Ready(None);
            };
            let next = match stream.as_mut().poll_next(cx) {
                Poll::Pending if !self.buffer.is_empty() => return self.flush(),
                poll => ready!(poll),
            };
            self.take(next);
        }
    }

    /// Takes in the reader's next item, its error, or its end.
    fn take(&mut self, next: Option<Result<FeedItem, ReadError>>) {
        match next {
            Some(Ok(item)) => {
                self.encode(&item);
                if self.ending && !self.uncovered {
                    self.end_at_deadline();
                }
            }
            Some(Err(error)) => {
                tracing::error!(%error, "feed reader failed mid-page; aborting the response");
                self.failed = true;
                self.stream = None;
            }
            // Dropping the stream now releases the reader's resources
            // before the last frame is even written.
            None => self.stream = None,
        }
    }

    /// Encodes what the reader has ready now, up to [`SETTLE_SIZE`];
    /// whether the page ended cleanly within it.
    fn settle(&mut self, cx: &mut Context<'_>) -> bool {
        while self.buffer.len() < SETTLE_SIZE {
            let Some(stream) = &mut self.stream else {
                return !self.failed;
            };
            match stream.as_mut().poll_next(cx) {
                Poll::Ready(next) => self.take(next),
                Poll::Pending => break,
            }
        }
        // The page streams: room for its frames from now on.
        self.buffer
            .reserve(BUFFER_CAPACITY.saturating_sub(self.buffer.len()));
        false
    }

    fn flush(&mut self) -> Poll<Option<Result<Frame<Bytes>, FeedBodyError>>> {
        Poll::Ready(Some(Ok(Frame::data(self.buffer.split().freeze()))))
    }
}

impl<S> Page<S> {
    fn encode(&mut self, item: &FeedItem) {
        self.encoder.encode(item, &mut self.buffer);
        self.uncovered = matches!(item, FeedItem::Event(_));
        self.events += u64::from(self.uncovered);
    }

    /// Ends the page after what is buffered, which ends with a checkpoint
    /// (or has no event): a shorter page is always a valid one.
    fn end_at_deadline(&mut self) {
        if self.stream.take().is_some() {
            tracing::debug!("page reached its maximum duration; ending it at a checkpoint");
        }
    }
}

impl<S> Drop for Page<S> {
    fn drop(&mut self) {
        // Whether the page ended, failed or its consumer went away: what
        // was handed to the connection.
        self.span.record("events", self.events);
        tracing::debug!(parent: &self.span, events = self.events, "page done");
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
