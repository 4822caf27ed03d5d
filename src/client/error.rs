use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::classify::{Chain, is_connection_failure, is_elapsed, is_http2_only};
use crate::BoxError;
use crate::protocol::error::excerpt as shortened;
use crate::protocol::{DecodeError, DecodeErrorKind, Event, RawJson};

/// Why fetching a page failed.
///
/// One opaque type, with predicates to decide what to do: a caller must be
/// able to tell "retry later" from "this feed is broken" without parsing
/// strings. The cause, when there is one, is the [`source`](StdError::source).
///
/// | predicate | what happened | what to do |
/// |---|---|---|
/// | [`is_invalid_request`](Self::is_invalid_request) | the request was refused before sending | fix the calling code |
/// | [`is_connect`](Self::is_connect) | no connection, or it broke before the answer | retry later |
/// | [`is_http2_only`](Self::is_http2_only) | the server speaks only HTTP/2 | use `http2_prior_knowledge` |
/// | [`is_request`](Self::is_request) | the transport failed otherwise before an answer | see the cause |
/// | [`is_timeout`](Self::is_timeout) | no answer in time, the body went idle, or the page took too long | retry later, from the stored cursors |
/// | [`is_buffer_limit`](Self::is_buffer_limit) | too many events came without a checkpoint | smaller pages, or a higher limit |
/// | [`is_status`](Self::is_status) | the feed answered with a non-2xx status | see [`status`](Self::status) |
/// | [`is_truncated`](Self::is_truncated) | the body broke off before its end | resume from the stored cursors |
/// | [`is_decode`](Self::is_decode) | a line breaks the protocol | the feed is broken: report it |
/// | [`is_invalid_data`](Self::is_invalid_data) | an event does not fit the consumer's type | set it aside, or read raw |
///
/// [`is_retryable`](Self::is_retryable) sums the table up for a consumer
/// loop. `Display` names the feed (scheme, host and path: never the query
/// or credentials) and the chain of causes.
///
/// An error after some lines were handed out never makes those lines
/// wrong: the consumer keeps what it committed and resumes from its last
/// stored cursors.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    source: Option<BoxError>,
    /// The feed's URL without its query and credentials.
    feed: Option<Arc<str>>,
}

#[derive(Debug)]
enum Kind {
    InvalidRequest,
    Connect,
    Http2Only,
    Request,
    HeadTimeout,
    IdleTimeout(Duration),
    PageTimeout(Duration),
    BufferLimit(usize),
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        excerpt: String,
    },
    Decode {
        line: u64,
    },
    InvalidData {
        line: u64,
        partition: u32,
    },
    Encoded(String),
    Truncated,
}

impl Error {
    fn new(kind: Kind, source: Option<BoxError>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                source,
                feed: None,
            }),
        }
    }

    /// Names the feed the error is about, in `Display`.
    pub(crate) fn at(mut self, feed: &Arc<str>) -> Self {
        self.inner.feed = Some(Arc::clone(feed));
        self
    }

    pub(crate) fn invalid_request(error: impl Into<BoxError>) -> Self {
        Self::new(Kind::InvalidRequest, Some(error.into()))
    }

    /// A transport error, classified by what its chain of causes says.
    pub(crate) fn transport(error: BoxError) -> Self {
        let kind = if is_elapsed(&*error) {
            Kind::HeadTimeout
        } else if is_http2_only(&*error) {
            Kind::Http2Only
        } else if is_connection_failure(&*error) {
            Kind::Connect
        } else {
            Kind::Request
        };
        Self::new(kind, Some(error))
    }

    pub(crate) fn idle_timeout(after: Duration) -> Self {
        Self::new(Kind::IdleTimeout(after), None)
    }

    pub(crate) fn page_timeout(after: Duration) -> Self {
        Self::new(Kind::PageTimeout(after), None)
    }

    pub(crate) fn buffer_limit(limit: usize) -> Self {
        Self::new(Kind::BufferLimit(limit), None)
    }

    pub(crate) fn from_status(
        status: StatusCode,
        retry_after: Option<Duration>,
        excerpt: String,
    ) -> Self {
        Self::new(
            Kind::Status {
                status,
                retry_after,
                excerpt,
            },
            None,
        )
    }

    pub(crate) fn decode(error: DecodeError) -> Self {
        let kind = match error.event() {
            Some(event) if error.kind() == DecodeErrorKind::InvalidData => Kind::InvalidData {
                line: error.line(),
                partition: event.partition,
            },
            _ => Kind::Decode { line: error.line() },
        };
        Self::new(kind, Some(error.into()))
    }

    pub(crate) fn encoded(content_encoding: String) -> Self {
        Self::new(Kind::Encoded(content_encoding), None)
    }

    pub(crate) fn truncated(error: BoxError) -> Self {
        Self::new(Kind::Truncated, Some(error))
    }

    /// Whether the request was refused before sending: it breaks a rule of
    /// the protocol, or does not match the client (partition count).
    pub fn is_invalid_request(&self) -> bool {
        matches!(self.inner.kind, Kind::InvalidRequest)
    }

    /// Whether the connection could not be made, or broke before the
    /// answer's head arrived (a refused or reset connection, a pooled
    /// connection closed under the request).
    pub fn is_connect(&self) -> bool {
        matches!(self.inner.kind, Kind::Connect)
    }

    /// Whether the feed's server speaks only HTTP/2 and the client spoke
    /// HTTP/1.1: build the client with
    /// [`http2_prior_knowledge`](super::ClientBuilder::http2_prior_knowledge),
    /// or have the server accept HTTP/1.1 (tonic's `accept_http1`). Told
    /// by the default transport; never retried.
    pub fn is_http2_only(&self) -> bool {
        matches!(self.inner.kind, Kind::Http2Only)
    }

    /// Whether the transport failed for another reason before an answer
    /// (one that is neither a connection failure nor a timeout); the
    /// [`source`](StdError::source) says which.
    pub fn is_request(&self) -> bool {
        matches!(self.inner.kind, Kind::Request)
    }

    /// Whether the answer's head did not arrive in time, its body sent
    /// nothing for longer than the idle timeout, or the page did not end
    /// within the page timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.inner.kind,
            Kind::HeadTimeout | Kind::IdleTimeout(_) | Kind::PageTimeout(_)
        )
    }

    /// Whether the page held more event lines not yet covered by a
    /// checkpoint than the client's limit
    /// ([`Client::with_max_buffered_bytes`](super::Client::with_max_buffered_bytes)):
    /// the feed checkpoints too rarely for it. Ask for smaller pages or
    /// raise the limit; retrying as it is meets the same page.
    pub fn is_buffer_limit(&self) -> bool {
        matches!(self.inner.kind, Kind::BufferLimit(_))
    }

    /// Whether the feed answered with a status other than 2xx.
    pub fn is_status(&self) -> bool {
        matches!(self.inner.kind, Kind::Status { .. })
    }

    /// The status the feed answered with, for a status error.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.inner.kind {
            Kind::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the feed asked to wait (`Retry-After`, in seconds or as a
    /// date), for a status error that had one.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.inner.kind {
            Kind::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The start of the answer's body (at most 1 KiB, invalid UTF-8
    /// replaced), for a status error. For a 400 from a ZeroEventHub server
    /// it names the wrong parameter.
    pub fn body_excerpt(&self) -> Option<&str> {
        match &self.inner.kind {
            Kind::Status { excerpt, .. } => Some(excerpt),
            _ => None,
        }
    }

    /// Whether the feed answered `410 Gone`: a cursor of the request is
    /// well formed but the feed no longer keeps the events after it (its
    /// retention pruned them). Retrying cannot help and resetting the cursor
    /// skips events: a person decides, from
    /// [`cursor_partition`](Self::cursor_partition) and the
    /// [`body_excerpt`](Self::body_excerpt), which names the oldest event
    /// the partition keeps.
    pub fn is_cursor_expired(&self) -> bool {
        self.status() == Some(StatusCode::GONE)
    }

    /// The partition whose cursor the feed refused, for a `400` or `410`
    /// whose line names it as a ZeroEventHub server writes it
    /// (`parameter "cursor3": ...`).
    pub fn cursor_partition(&self) -> Option<u32> {
        let excerpt = self.body_excerpt()?;
        let rest = excerpt.strip_prefix("parameter \"cursor")?;
        let digits = rest.split('"').next()?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// Whether the answer cannot be read as a page: a line breaks the
    /// protocol (the source is the [`DecodeError`], and
    /// [`line`](Self::line) says which), or the body is compressed
    /// (`Content-Encoding`) and nothing decompressed it.
    pub fn is_decode(&self) -> bool {
        matches!(self.inner.kind, Kind::Decode { .. } | Kind::Encoded(_))
    }

    /// The number of the offending line (from 1), for a decode or an
    /// invalid data error.
    pub fn line(&self) -> Option<u64> {
        match self.inner.kind {
            Kind::Decode { line } | Kind::InvalidData { line, .. } => Some(line),
            _ => None,
        }
    }

    /// Whether an event's data does not deserialize into the consumer's
    /// type (`fetch_as::<T>`, `fetch_page_as::<T>`): a poison event, not a
    /// broken feed. [`partition`](Self::partition) and [`line`](Self::line)
    /// say where, `Display` has serde's message, and
    /// [`invalid_event`](Self::invalid_event) holds the event as it came.
    ///
    /// The line keeps the protocol, so a [`FeedStream`](super::FeedStream)
    /// goes on after it: a consumer can set the event aside and read on.
    /// The rest of the page can also be read raw
    /// ([`Client::fetch`](super::Client::fetch), data as `RawJson`).
    pub fn is_invalid_data(&self) -> bool {
        matches!(self.inner.kind, Kind::InvalidData { .. })
    }

    /// The partition of the event, for an invalid data error.
    pub fn partition(&self) -> Option<u32> {
        match self.inner.kind {
            Kind::InvalidData { partition, .. } => Some(partition),
            _ => None,
        }
    }

    /// The event whose data the consumer's type refused, as it came, for an
    /// invalid data error.
    pub fn invalid_event(&self) -> Option<&Event<RawJson>> {
        self.source()?.downcast_ref::<DecodeError>()?.event()
    }

    /// Whether trying again later, from the stored cursors, may succeed
    /// with nothing changed: connection failures, timeouts, a body that
    /// broke off, and the statuses `408`, `429`, `500`, `502`, `503` and
    /// `504`. What a consumer loop retries (after a pause); anything else
    /// needs a person: the request, the client's settings, the consumer's
    /// type or the feed is wrong.
    pub fn is_retryable(&self) -> bool {
        match &self.inner.kind {
            Kind::Connect
            | Kind::HeadTimeout
            | Kind::IdleTimeout(_)
            | Kind::PageTimeout(_)
            | Kind::Truncated => true,
            Kind::Status { status, .. } => {
                matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
            }
            Kind::InvalidRequest
            | Kind::Http2Only
            | Kind::Request
            | Kind::BufferLimit(_)
            | Kind::Decode { .. }
            | Kind::InvalidData { .. }
            | Kind::Encoded(_) => false,
        }
    }

    /// Whether the answer's body broke off before its end (connection
    /// closed or reset, length not met, chunked framing cut).
    pub fn is_truncated(&self) -> bool {
        matches!(self.inner.kind, Kind::Truncated)
    }
}

impl fmt::Display for Error {
    /// `feed URL: what happened and what to do; cause: the chain of causes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(feed) = &self.inner.feed {
            write!(f, "feed {feed}: ")?;
        }
        self.describe(f)?;
        if let Some(source) = self.source() {
            write!(f, "; cause: {}", Chain(source))?;
        }
        Ok(())
    }
}

impl Error {
    /// What happened and what to do, without the feed and the causes.
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.kind {
            Kind::InvalidRequest => {
                f.write_str("refused to send an invalid feed request; fix the calling code")
            }
            Kind::Connect => f.write_str(
                "the connection to the feed failed before it answered; \
                 check the URL and that the feed is up, then retry",
            ),
            Kind::Http2Only => f.write_str(
                "the feed's server speaks only HTTP/2 and the client spoke HTTP/1.1; \
                 build the client with http2_prior_knowledge(), or have the server accept HTTP/1.1",
            ),
            Kind::Request => {
                f.write_str("the request to the feed failed before an answer; see the cause")
            }
            Kind::HeadTimeout => {
                f.write_str("the feed did not answer in time; it may be overloaded, retry later")
            }
            Kind::IdleTimeout(after) => write!(
                f,
                "the feed sent nothing for {after:?} in the middle of a page; \
                 resume from the last stored cursors"
            ),
            Kind::PageTimeout(after) => write!(
                f,
                "the page did not end within the page timeout of {after:?}; \
                 resume from the last stored cursors"
            ),
            Kind::BufferLimit(limit) => write!(
                f,
                "the page held more than {limit} bytes of events that no checkpoint \
                 covered yet; ask for smaller pages, or raise the client's \
                 max_buffered_bytes"
            ),
            Kind::Status {
                status,
                retry_after,
                excerpt,
            } => {
                write!(f, "the feed answered {status}")?;
                if let Some(wait) = retry_after {
                    write!(f, " (retry after {}s)", wait.as_secs())?;
                }
                let detail = excerpt.lines().next().unwrap_or("").trim();
                if !detail.is_empty() {
                    write!(f, ": {}", shortened(detail, 200))?;
                }
                f.write_str(match status.as_u16() {
                    400 => "; the feed refused the request: check the partition count and cursors",
                    401 | 403 => "; check the credentials",
                    404 => "; check the feed URL",
                    410 => {
                        "; the consumer fell behind the feed's retention: the events after its \
                         cursor are gone, and only a person can decide where to go on"
                    }
                    429 | 502..=504 => "; retry later",
                    500..=599 => "; the feed failed, retry later or tell its owner",
                    _ => "",
                })
            }
            Kind::Decode { .. } => f.write_str(
                "the feed sent a line that breaks the protocol; report it to the feed's owner",
            ),
            Kind::InvalidData { line, partition } => write!(
                f,
                "the event on line {line} (partition {partition}) does not fit the consumer's \
                 type; the feed kept the protocol: set the event aside or read it raw"
            ),
            Kind::Encoded(encoding) => write!(
                f,
                "the feed's answer is compressed (Content-Encoding: {encoding}); send no \
                 Accept-Encoding, or add a decompression layer (tower_http::decompression) \
                 to the client"
            ),
            Kind::Truncated => f.write_str(
                "the feed's answer broke off before its end; resume from the last stored cursors",
            ),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug.field("kind", &self.inner.kind);
        if let Some(source) = &self.inner.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|source| &**source as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_say_what_to_do() {
        let error = Error::from_status(
            StatusCode::BAD_REQUEST,
            None,
            "parameter \"cursor0\": not a cursor this feed handed out\n".into(),
        );
        assert!(error.is_status() && !error.is_timeout());
        assert_eq!(
            error.to_string(),
            "the feed answered 400 Bad Request: parameter \"cursor0\": not a cursor this feed \
             handed out; the feed refused the request: check the partition count and cursors"
        );
        let error = Error::from_status(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(7)),
            String::new(),
        );
        assert_eq!(
            error.to_string(),
            "the feed answered 429 Too Many Requests (retry after 7s); retry later"
        );
        assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
        assert!(!error.is_cursor_expired());
        assert_eq!(error.cursor_partition(), None);
    }

    #[test]
    fn an_expired_cursor_names_its_partition() {
        let error = Error::from_status(
            StatusCode::GONE,
            None,
            "parameter \"cursor12\": expired: the feed no longer keeps the events after this \
             cursor (the oldest it keeps is 7); read the partition from _first to start again\n"
                .into(),
        );
        assert!(error.is_cursor_expired() && !error.is_retryable());
        assert_eq!(error.cursor_partition(), Some(12));
        assert!(
            error
                .to_string()
                .contains("fell behind the feed's retention")
        );
        let unknown = Error::from_status(
            StatusCode::BAD_REQUEST,
            None,
            "parameter \"cursor3\": not a cursor this feed handed out".into(),
        );
        assert!(!unknown.is_cursor_expired());
        assert_eq!(unknown.cursor_partition(), Some(3));
        for excerpt in [
            "parameter \"cursor\": x",
            "parameter \"cursorx1\": x",
            "other",
        ] {
            let error = Error::from_status(StatusCode::GONE, None, excerpt.into());
            assert_eq!(error.cursor_partition(), None, "{excerpt}");
        }
    }

    #[test]
    fn transport_errors_are_classified_by_their_causes() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(Error::transport(refused.into()).is_connect());
        let elapsed: BoxError = tower::timeout::error::Elapsed::new().into();
        assert!(Error::transport(elapsed).is_timeout());
        let other = Error::transport("bad uri".into());
        assert!(!other.is_connect() && !other.is_timeout());
        assert_eq!(other.source().unwrap().to_string(), "bad uri");
    }
}
