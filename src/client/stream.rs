use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_core::Stream;
use http_body::Body;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};

use super::Error;
use crate::BoxError;
use crate::protocol::{DecodeErrorKind, FeedItem, LineDecoder, RawJson};

/// The lines of one page, decoded as the body arrives: a
/// [`Stream`] of events and checkpoints, from
/// [`Client::fetch`](super::Client::fetch).
///
/// The body is never collected: each frame is decoded as soon as it
/// arrives, so memory stays bounded by the longest line whatever the
/// page size. The stream ends (`None`) only when the body ended cleanly
/// with every line valid. Otherwise its last item is an [`Error`]: the
/// body broke off ([`is_truncated`](Error::is_truncated), a line cut by
/// the connection's close included), sent nothing for longer than the idle
/// timeout or did not end within the page timeout
/// ([`is_timeout`](Error::is_timeout)), held an invalid line
/// ([`is_decode`](Error::is_decode)), or more uncovered events than the
/// limit ([`is_buffer_limit`](Error::is_buffer_limit)). The items before
/// it stay valid.
///
/// One error does not end the stream: an event whose data does not
/// deserialize into `D` ([`is_invalid_data`](Error::is_invalid_data)),
/// since its line keeps the protocol. The error holds the event as it
/// came, and the next item is the next line's.
///
/// The idle timeout counts only while the stream waits for the body,
/// not while the consumer is busy between two items, and any transport
/// gets it.
///
/// The stream is `Unpin` whatever the body, so `StreamExt::next` works
/// on it directly.
pub struct FeedStream<B, D = RawJson> {
    body: Pin<Box<B>>,
    buf: BytesMut,
    decoder: LineDecoder<D>,
    /// Fires at the idle timeout or the page's deadline, whichever is first.
    timer: Pin<Box<Sleep>>,
    limits: Limits,
    // Whether `timer` is armed for the current wait for the body.
    waiting: bool,
    /// Bytes of event lines not yet covered by a checkpoint, for each
    /// requested partition (in the decoder's order), and their sum.
    uncovered: Vec<usize>,
    buffered: usize,
    /// What the page brought so far, for its summary.
    events: u64,
    checkpoints: u64,
    bytes: u64,
    feed: Arc<str>,
    span: tracing::Span,
    state: State,
}

/// What bounds a page in time and memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) idle_timeout: Duration,
    pub(crate) deadline: Instant,
    pub(crate) page_timeout: Duration,
    pub(crate) max_buffered_bytes: usize,
    /// Whether the body's end is the connection's close: then a line cut
    /// at the end is a truncation, not a broken line.
    pub(crate) close_delimited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    BodyEnded,
    Done,
}

impl<B, D> FeedStream<B, D> {
    pub(crate) fn new(
        body: B,
        decoder: LineDecoder<D>,
        limits: Limits,
        feed: Arc<str>,
        span: tracing::Span,
    ) -> Self {
        FeedStream {
            body: Box::pin(body),
            buf: BytesMut::new(),
            uncovered: vec![0; decoder.partitions().len()],
            decoder,
            timer: Box::pin(tokio::time::sleep_until(limits.deadline)),
            limits,
            waiting: false,
            buffered: 0,
            events: 0,
            checkpoints: 0,
            bytes: 0,
            feed,
            span,
            state: State::Reading,
        }
    }

    /// Ends the stream with `error`, which names the feed.
    fn fail(&mut self, error: Error) -> Poll<Option<Result<FeedItem<D>, Error>>> {
        self.state = State::Done;
        tracing::debug!(error = %error, lines = self.decoder.lines(), "page failed");
        Poll::Ready(Some(Err(error.at(&self.feed))))
    }

    /// Counts what a line of `consumed` bytes adds to or takes from the
    /// bytes not yet covered by a checkpoint; an error past the limit.
    fn account<T>(&mut self, item: &FeedItem<T>, consumed: usize) -> Result<(), Error> {
        let Ok(slot) = self.decoder.partitions().binary_search(&item.partition()) else {
            return Ok(());
        };
        self.bytes += consumed as u64;
        match item {
            FeedItem::Event(_) => {
                self.events += 1;
                self.uncovered[slot] += consumed;
                self.buffered += consumed;
                if self.buffered > self.limits.max_buffered_bytes {
                    return Err(Error::buffer_limit(self.limits.max_buffered_bytes));
                }
            }
            FeedItem::Checkpoint(_) => {
                self.checkpoints += 1;
                self.buffered -= std::mem::take(&mut self.uncovered[slot]);
            }
        }
        Ok(())
    }

    /// How many lines were read so far, skipped ones included.
    pub fn lines(&self) -> u64 {
        self.decoder.lines()
    }
}

impl<B, D> Stream for FeedStream<B, D>
where
    B: Body<Error: Into<BoxError>>,
    D: DeserializeOwned + 'static,
{
    type Item = Result<FeedItem<D>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let span = this.span.clone();
        let _entered = span.enter();
        loop {
            let before = this.buf.len();
            let decoded = match &this.state {
                State::Done => return Poll::Ready(None),
                State::Reading => this.decoder.decode(&mut this.buf),
                State::BodyEnded => match this.decoder.decode(&mut this.buf) {
                    // What follows the last line break: a last line
                    // without one, or, when the close is the body's end, a
                    // cut.
                    None => match this.decoder.decode_eof(&mut this.buf) {
                        Some(Err(error)) if this.limits.close_delimited => {
                            let cut = CutMidLine { line: error.line() };
                            return this.fail(Error::truncated(cut.into()));
                        }
                        None => {
                            this.state = State::Done;
                            tracing::debug!(
                                events = this.events,
                                checkpoints = this.checkpoints,
                                bytes = this.bytes,
                                "page read"
                            );
                            return Poll::Ready(None);
                        }
                        decoded => decoded,
                    },
                    decoded => decoded,
                },
            };
            if let Some(item) = decoded {
                let consumed = before - this.buf.len();
                match item {
                    Ok(item) => match this.account(&item, consumed) {
                        Ok(()) => return Poll::Ready(Some(Ok(item))),
                        Err(error) => return this.fail(error),
                    },
                    // A poison event: the line keeps the protocol, so the
                    // page goes on after it.
                    Err(error) if error.kind() == DecodeErrorKind::InvalidData => {
                        let error = Error::decode(error).at(&this.feed);
                        tracing::debug!(error = %error, "event data refused");
                        return Poll::Ready(Some(Err(error)));
                    }
                    Err(error) => return this.fail(Error::decode(error)),
                }
            }
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.waiting = false;
                    if let Ok(data) = frame.into_data() {
                        this.buf.put(data);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    return this.fail(Error::truncated(error.into()));
                }
                Poll::Ready(None) => this.state = State::BodyEnded,
                Poll::Pending => {
                    let limits = &this.limits;
                    if !this.waiting {
                        // Armed once per wait rather than reset on every
                        // frame: a timer update per frame would cost more
                        // than decoding it.
                        let idle_end = Instant::now() + limits.idle_timeout;
                        this.timer.as_mut().reset(idle_end.min(limits.deadline));
                        this.waiting = true;
                    }
                    ready!(this.timer.as_mut().poll(cx));
                    let error = if Instant::now() >= limits.deadline {
                        Error::page_timeout(limits.page_timeout)
                    } else {
                        Error::idle_timeout(limits.idle_timeout)
                    };
                    return this.fail(error);
                }
            }
        }
    }
}

/// A close-delimited body ended in the middle of a line.
#[derive(Debug)]
struct CutMidLine {
    line: u64,
}

impl fmt::Display for CutMidLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the connection closed in the middle of line {}, with no length or chunks \
             to tell a cut from an end",
            self.line
        )
    }
}

impl std::error::Error for CutMidLine {}

impl<B, D> fmt::Debug for FeedStream<B, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedStream")
            .field("decoder", &self.decoder)
            .field("buffered", &self.buf.len())
            .field("limits", &self.limits)
            .field("uncovered", &self.buffered)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
