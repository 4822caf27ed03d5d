use std::fmt;
use std::future::Future;

use futures_core::Stream;
use tokio::time::Instant;

use crate::BoxError;
use crate::protocol::{Cursor, FeedItem, FeedRequest};

/// The source of a feed's pages: what a publisher implements over its store.
///
/// [`FeedService`](super::FeedService) parses and validates the HTTP request,
/// then calls [`read`](FeedReader::read) once per request and streams the
/// returned items to the consumer as they are produced, pulling the next item
/// only when the previous ones are on their way (so a reader can stream
/// straight from a database cursor without loading the page). When the
/// consumer goes away, the stream is dropped at once: a database query behind
/// it is cancelled by its own `Drop`.
///
/// # The checkpoint contract
///
/// A [`Checkpoint`](crate::protocol::Checkpoint) of partition `P` with cursor
/// `C` promises: a consumer that has stored every event of `P` that came
/// before this checkpoint in the page may later read `P` from `C` and miss
/// nothing and see nothing twice. Events between two checkpoints may come in
/// any order; checkpoints may differ between two identical requests. Only
/// partitions of the request may appear, and every cursor the reader hands
/// out must be accepted by it later.
///
/// # Reading a request
///
/// - [`ReadContext::request`] has the cursors (one per partition to read;
///   `_first` and `_last` included), and the wanted headers (the service
///   also filters headers, so a reader may hand out all of them).
/// - [`ReadContext::page_size`] is the number of events to aim for in total,
///   the consumer's hint resolved against the service's default and maximum.
/// - [`ReadContext::wait_deadline`] is when to answer at the latest if the
///   request asked to wait (long polling): a reader over a store that can
///   tell it of appends waits with an [`AppendSignal`](super::AppendSignal)
///   before its first item, and answers at once when it has something to
///   send. Ignoring it is allowed: the answer then comes at once.
/// - [`ReadContext::extensions`] are the HTTP request's extensions: an auth
///   layer's consumer identity reaches the reader there, for per-consumer
///   decisions.
///
/// A cursor the reader never handed out is the consumer's error: return
/// [`ReadError::UnknownCursor`] (a `400` naming the partition), not an
/// internal error (a `500`).
pub trait FeedReader: Send + Sync + 'static {
    /// The items of one page.
    type Stream: Stream<Item = Result<FeedItem, ReadError>> + Send + 'static;

    /// Starts reading the page `context` asks for.
    fn read(
        &self,
        context: ReadContext<'_>,
    ) -> impl Future<Output = Result<Self::Stream, ReadError>> + Send;
}

/// What one call of [`FeedReader::read`] is asked for.
///
/// Its fields are private so that protocol extensions (such as the
/// long-polling [`wait_deadline`](Self::wait_deadline), or virtual
/// partitions later) arrive as new accessors without breaking readers.
#[derive(Debug, Clone, Copy)]
pub struct ReadContext<'a> {
    request: &'a FeedRequest,
    page_size: usize,
    extensions: &'a http::Extensions,
    wait_deadline: Option<Instant>,
}

impl<'a> ReadContext<'a> {
    /// A context for `request`, aiming at `page_size` events, with the HTTP
    /// request's `extensions`. Tests of a reader make one directly.
    pub fn new(
        request: &'a FeedRequest,
        page_size: usize,
        extensions: &'a http::Extensions,
    ) -> Self {
        ReadContext {
            request,
            page_size,
            extensions,
            wait_deadline: None,
        }
    }

    /// Sets when the reader must answer at the latest, if it may wait for
    /// new events (see [`wait_deadline`](Self::wait_deadline)).
    pub fn with_wait_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.wait_deadline = deadline;
        self
    }

    /// The validated feed request.
    pub fn request(&self) -> &'a FeedRequest {
        self.request
    }

    /// How many events to aim for in total across the request's partitions.
    /// Never 0.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// When the consumer asked to wait (`wait`, clamped by the service):
    /// the moment to answer by, even with an empty page, if the requested
    /// partitions have nothing past their cursors. `None`: answer at once.
    /// The deadline counts from the request's arrival.
    pub fn wait_deadline(&self) -> Option<Instant> {
        self.wait_deadline
    }

    /// The HTTP request's extensions (for example, the identity an
    /// authentication layer put there).
    pub fn extensions(&self) -> &'a http::Extensions {
        self.extensions
    }
}

/// Why a [`FeedReader`] could not read.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// The cursor given for this partition was never handed out by the feed:
    /// the consumer's error, answered with `400 Bad Request`.
    UnknownCursor {
        /// The partition whose cursor is unknown.
        partition: u32,
    },
    /// The cursor given for this partition is well formed, but the events
    /// after it are no longer kept (retention pruned them, or an operator
    /// deleted them): answered with `410 Gone`, so that the consumer can
    /// tell "fell behind retention" from a cursor of its own making.
    ExpiredCursor {
        /// The partition whose cursor expired.
        partition: u32,
        /// The cursor of the oldest event the partition still keeps, if it
        /// keeps any.
        oldest: Option<Cursor>,
    },
    /// The store failed. Answered with a generic `500` before the first
    /// line, or by aborting the response after it; the detail is logged,
    /// never sent.
    Internal(BoxError),
}

impl ReadError {
    /// An internal error from the store.
    pub fn internal(error: impl Into<BoxError>) -> Self {
        ReadError::Internal(error.into())
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::UnknownCursor { partition } => {
                write!(f, "cursor of partition {partition} was never handed out")
            }
            ReadError::ExpiredCursor { partition, oldest } => {
                write!(
                    f,
                    "parameter \"cursor{partition}\": expired: the feed no longer keeps the \
                     events after this cursor ("
                )?;
                match oldest {
                    Some(oldest) => write!(f, "the oldest it keeps is {oldest}")?,
                    None => f.write_str("the partition keeps none")?,
                }
                f.write_str("); read the partition from _first to start again")
            }
            ReadError::Internal(error) => write!(f, "feed reader failed: {error}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::UnknownCursor { .. } | ReadError::ExpiredCursor { .. } => None,
            ReadError::Internal(error) => Some(&**error),
        }
    }
}
