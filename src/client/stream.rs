use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_core::Stream;
use http_body::Body;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};

use super::Error;
use crate::BoxError;
use crate::protocol::{FeedItem, LineDecoder, RawJson};

/// The lines of one page, decoded as the body arrives: a
/// [`Stream`] of events and checkpoints, from
/// [`Client::fetch`](super::Client::fetch).
///
/// The body is never collected: each frame is decoded as soon as it
/// arrives, so memory stays bounded by the longest line whatever the
/// page size. The stream ends (`None`) only when the body ended cleanly
/// with every line valid. Otherwise its last item is an [`Error`]: the
/// body broke off ([`is_truncated`](Error::is_truncated)), sent nothing
/// for longer than the idle timeout ([`is_timeout`](Error::is_timeout)),
/// or held an invalid line ([`is_decode`](Error::is_decode)). The items
/// before it stay valid.
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
    state: State,
}

/// What bounds a page in time and memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) idle_timeout: Duration,
    pub(crate) deadline: Instant,
    pub(crate) page_timeout: Duration,
    pub(crate) max_buffered_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    BodyEnded,
    Done,
}

impl<B, D> FeedStream<B, D> {
    pub(crate) fn new(body: B, decoder: LineDecoder<D>, limits: Limits) -> Self {
        FeedStream {
            body: Box::pin(body),
            buf: BytesMut::new(),
            uncovered: vec![0; decoder.partitions().len()],
            decoder,
            timer: Box::pin(tokio::time::sleep_until(limits.deadline)),
            limits,
            waiting: false,
            buffered: 0,
            state: State::Reading,
        }
    }

    /// Counts what a line of `consumed` bytes adds to or takes from the
    /// bytes not yet covered by a checkpoint; an error past the limit.
    fn account<T>(&mut self, item: &FeedItem<T>, consumed: usize) -> Result<(), Error> {
        let Ok(slot) = self.decoder.partitions().binary_search(&item.partition()) else {
            return Ok(());
        };
        match item {
            FeedItem::Event(_) => {
                self.uncovered[slot] += consumed;
                self.buffered += consumed;
                if self.buffered > self.limits.max_buffered_bytes {
                    return Err(Error::buffer_limit(self.limits.max_buffered_bytes));
                }
            }
            FeedItem::Checkpoint(_) => {
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
        loop {
            let before = this.buf.len();
            let decoded = match &this.state {
                State::Done => return Poll::Ready(None),
                State::Reading => this.decoder.decode(&mut this.buf),
                State::BodyEnded => match this.decoder.decode_eof(&mut this.buf) {
                    None => {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                    decoded => decoded,
                },
            };
            if let Some(item) = decoded {
                let consumed = before - this.buf.len();
                let item = item
                    .map_err(Error::decode)
                    .and_then(|item| this.account(&item, consumed).map(|()| item));
                if item.is_err() {
                    this.state = State::Done;
                }
                return Poll::Ready(Some(item));
            }
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.waiting = false;
                    if let Ok(data) = frame.into_data() {
                        this.buf.put(data);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(Error::truncated(error.into()))));
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
                    this.state = State::Done;
                    let error = if Instant::now() >= limits.deadline {
                        Error::page_timeout(limits.page_timeout)
                    } else {
                        Error::idle_timeout(limits.idle_timeout)
                    };
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

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
