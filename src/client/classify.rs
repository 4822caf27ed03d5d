//! What an attempt's outcome says, for the retry policy, the errors and the
//! default transport alike: whether the connection failed before the
//! answer, whether the server speaks only HTTP/2, whether the head timed
//! out, and how long an answer asks to wait. It depends on no other part
//! of the client, so that each of them can use it.

use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// An error and its causes, `: `-separated, for a message or a log line.
pub(super) struct Chain<'a>(pub(super) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = String::new();
        for cause in causes(self.0) {
            let text = cause.to_string();
            // Wrappers often repeat their cause's message.
            if text != previous && !text.is_empty() {
                if !previous.is_empty() {
                    f.write_str(": ")?;
                }
                f.write_str(&text)?;
                previous = text;
            }
        }
        Ok(())
    }
}

/// `error` and its chain of causes.
fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&error| error.source())
}

/// Whether the connection failed before the answer's head: safe to retry
/// for an idempotent GET, since the feed cannot have answered.
pub(super) fn is_connection_failure(error: &(dyn StdError + 'static)) -> bool {
    // Another attempt would meet the same server.
    if is_http2_only(error) {
        return false;
    }
    causes(error).any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | BrokenPipe
                    | UnexpectedEof
                    | NotConnected
            );
        }
        #[cfg(feature = "hyper-client")]
        {
            if let Some(legacy) = cause.downcast_ref::<hyper_util::client::legacy::Error>() {
                if legacy.is_connect() {
                    return true;
                }
            }
            if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
                // A pooled connection that the server closed while the
                // request was on its way: the request was not answered.
                return hyper.is_incomplete_message() || hyper.is_canceled() || hyper.is_closed();
            }
        }
        false
    })
}

/// Whether `error` or one of its causes is tower's timeout, as the head
/// timeout fails an attempt.
pub(super) fn is_elapsed(error: &(dyn StdError + 'static)) -> bool {
    causes(error).any(|cause| cause.is::<tower::timeout::error::Elapsed>())
}

/// The server answered an HTTP/1.1 request as an HTTP/2-only server does;
/// the default transport's connector says so with this error.
#[cfg(feature = "hyper-client")]
#[derive(Debug)]
pub(super) struct Http2OnlyServer;

#[cfg(feature = "hyper-client")]
impl fmt::Display for Http2OnlyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server speaks only HTTP/2 and the client spoke HTTP/1.1")
    }
}

#[cfg(feature = "hyper-client")]
impl StdError for Http2OnlyServer {}

/// Whether `error` or a cause is [`Http2OnlyServer`]'s, on its own or
/// inside an I/O error; never without the default transport, the only one
/// that tells.
pub(super) fn is_http2_only(error: &(dyn StdError + 'static)) -> bool {
    #[cfg(feature = "hyper-client")]
    return causes(error).any(|cause| {
        cause.is::<Http2OnlyServer>()
            || cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<Http2OnlyServer>())
    });
    #[cfg(not(feature = "hyper-client"))]
    return {
        let _ = error;
        false
    };
}

/// The wait a `Retry-After` header asks for: seconds, or an HTTP date
/// (a date in the past means now).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, " 12 ".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        let later = SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            http::header::RETRY_AFTER,
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        headers.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    /// An error with a message and maybe a cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|cause| cause as _)
        }
    }

    #[test]
    fn a_chain_names_each_cause_once() {
        let chain = |error: &Layer| Chain(error).to_string();
        assert_eq!(chain(&Layer("refused", None)), "refused");
        let wrapped = Layer("connect", Some(Box::new(Layer("refused", None))));
        assert_eq!(chain(&wrapped), "connect: refused");
        // A wrapper that repeats its cause, or says nothing, adds nothing.
        let repeated = Layer("refused", Some(Box::new(Layer("refused", None))));
        assert_eq!(chain(&repeated), "refused");
        let silent = Layer("", Some(Box::new(Layer("refused", None))));
        assert_eq!(chain(&silent), "refused");
    }

    #[test]
    fn connection_failures_are_found_among_the_causes() {
        let reset: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(is_connection_failure(&*reset));
        let other: BoxError = "invalid URI".into();
        assert!(!is_connection_failure(&*other));
        let elapsed: BoxError = tower::timeout::error::Elapsed::new().into();
        assert!(is_elapsed(&*elapsed) && !is_connection_failure(&*elapsed));
    }

    #[cfg(feature = "hyper-client")]
    #[test]
    fn an_http2_only_server_is_told_and_not_a_connection_failure() {
        let bare: BoxError = Http2OnlyServer.into();
        assert!(is_http2_only(&*bare));
        // As the connector raises it: inside an I/O error whose kind alone
        // would not say.
        let io = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, Http2OnlyServer);
        assert!(is_http2_only(&io));
        assert!(!is_connection_failure(&io));
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(!is_http2_only(&eof) && is_connection_failure(&eof));
    }
}
