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
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    // Whether `idle` is armed for the current wait for the body.
    waiting: bool,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    BodyEnded,
    Done,
}

impl<B, D> FeedStream<B, D> {
    pub(crate) fn new(body: B, decoder: LineDecoder<D>, idle_timeout: Duration) -> Self {
        FeedStream {
            body: Box::pin(body),
            buf: BytesMut::new(),
            decoder,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            waiting: false,
            state: State::Reading,
        }
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
                if item.is_err() {
                    this.state = State::Done;
                }
                return Poll::Ready(Some(item.map_err(Error::decode)));
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
                    if !this.waiting {
                        // Armed once per wait rather than reset on every
                        // frame: a timer update per frame would cost more
                        // than decoding it.
                        this.idle.as_mut().reset(Instant::now() + this.idle_timeout);
                        this.waiting = true;
                    }
                    ready!(this.idle.as_mut().poll(cx));
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(Error::idle_timeout(this.idle_timeout))));
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
            .field("idle_timeout", &self.idle_timeout)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
