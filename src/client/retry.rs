use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Empty;
use tower::retry::Policy;

use super::classify::{Chain, is_connection_failure, retry_after};
use crate::BoxError;

/// The client's retry policy for [`tower::retry`]: retries exactly what is
/// safe and useful for a feed's GET.
///
/// Retried:
/// - connection failures: refused, reset, aborted, broken pipe, closed
///   before the answer (found anywhere in the error's chain of causes),
///   including a pooled connection that the server closed under the request;
/// - `429`, `502`, `503` and `504`: after a capped exponential backoff with
///   jitter, or, when the answer has `Retry-After` (seconds or an HTTP
///   date), after exactly that long, unless it is longer than
///   [`max_retry_after`](Self::max_retry_after), in which case the status
///   is returned for the caller to see.
///
/// Never retried: any other status (`400`, `401`, `404`...), a timeout of
/// the response head, any other error. At most
/// [`max_attempts`](Self::max_attempts) attempts are made in all.
///
/// tower's retry decides when the response *head* arrives, so a retry never
/// happens once a line of the body was handed to the caller: after that, an
/// error ends the page and the consumer resumes from its stored cursors,
/// which is what keeps consumption exactly-once.
///
/// The policy is for the requests the client sends (`GET`, empty body);
/// the error type is [`BoxError`], as tower's timeout layer makes it, and
/// as [`HeadTimeoutLayer`](super::HeadTimeoutLayer) does. With tower's
/// `RetryLayer` outside that layer, it makes the stack
/// [`Client::builder`](super::Client::builder) builds:
///
/// ```
/// # #[cfg(feature = "server")] {
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use tower::retry::RetryLayer;
/// use zeroeventhub::client::{Client, HeadTimeoutLayer, RetryPolicy};
/// use zeroeventhub::server::MemoryFeed;
///
/// let policy = RetryPolicy::new()
///     .with_max_attempts(3)
///     .with_backoff(Duration::from_millis(50), Duration::from_secs(2));
/// let stack = ServiceBuilder::new()
///     .layer(RetryLayer::new(policy))
///     .layer(HeadTimeoutLayer::default())
///     .service(MemoryFeed::new(1).service());
/// let client = Client::new(stack, "http://feed.example/v1".parse().unwrap(), 1);
/// # let _ = client;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
    /// Attempts made so far for the request this copy of the policy serves
    /// (tower's retry clones the policy for each request).
    attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            backoff_base: Self::DEFAULT_BACKOFF_BASE,
            backoff_max: Self::DEFAULT_BACKOFF_MAX,
            max_retry_after: Self::DEFAULT_MAX_RETRY_AFTER,
            attempts: 0,
        }
    }
}

impl RetryPolicy {
    /// The default number of attempts in all: 5.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
    /// The default delay before the first retry: 100 ms.
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
    /// The default longest delay between attempts: 5 s.
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
    /// The default longest `Retry-After` honoured: 60 s.
    pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
    /// The ceiling of the backoff settings and of
    /// [`max_retry_after`](Self::max_retry_after): 15 minutes. A longer
    /// setting is taken as this, so that neither a setting nor a server's
    /// `Retry-After` parks a consumer for longer.
    pub const CEILING: Duration = Duration::from_secs(15 * 60);

    /// The policy with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many attempts are made in all, the first one included;
    /// `1` disables retries (`0` counts as `1`).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the backoff: the `n`th retry waits about `base * 2^(n-1)`,
    /// at most `max`, with jitter taking it down to as little as half.
    /// Both are taken as at most [`CEILING`](Self::CEILING).
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base.min(Self::CEILING);
        self.backoff_max = max.min(Self::CEILING).max(self.backoff_base);
        self
    }

    /// Sets the longest `Retry-After` honoured, at most
    /// [`CEILING`](Self::CEILING); a longer one is not waited for, and its
    /// status is returned instead.
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max.min(Self::CEILING);
        self
    }

    /// How many attempts are made in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The longest `Retry-After` honoured.
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// The delay before the next retry, `attempts` having failed.
    fn backoff(&self) -> Duration {
        backoff(self.backoff_base, self.backoff_max, self.attempts)
    }

    /// The delay the answer asks for, if it is retryable; `None` when it
    /// must be returned to the caller.
    fn delay_for(&self, response_status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        match response_status.as_u16() {
            429 | 502 | 503 | 504 => match retry_after(headers) {
                Some(wait) if wait > self.max_retry_after => None,
                Some(wait) => Some(wait),
                None => Some(self.backoff()),
            },
            _ => None,
        }
    }
}

impl<B> Policy<Request<Empty<Bytes>>, Response<B>, BoxError> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<Empty<Bytes>>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        self.attempts = self.attempts.saturating_add(1);
        if self.attempts >= self.max_attempts {
            return None;
        }
        let delay = match result {
            Ok(response) => {
                let delay = self.delay_for(response.status(), response.headers())?;
                tracing::info!(
                    attempt = self.attempts,
                    status = response.status().as_u16(),
                    ?delay,
                    "the feed answered with a retryable status; retrying"
                );
                delay
            }
            Err(error) if is_connection_failure(&**error) => {
                let delay = self.backoff();
                tracing::info!(
                    attempt = self.attempts,
                    cause = %Chain(&**error),
                    ?delay,
                    "the connection to the feed failed; retrying"
                );
                delay
            }
            Err(_) => return None,
        };
        // The fetch's span, which has the field.
        tracing::Span::current().record("attempt", self.attempts + 1);
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, request: &Request<Empty<Bytes>>) -> Option<Request<Empty<Bytes>>> {
        let mut clone = Request::new(Empty::new());
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

/// The delay before retrying after `failures` failures in a row (at least
/// 1): about `base * 2^(failures-1)`, at most `max`, with jitter taking it
/// down to as little as half.
pub(crate) fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << doublings).min(max);
    // "Equal jitter": half fixed, half random, so that clients that failed
    // together do not retry together, yet never hammer at once.
    let half = ceiling / 2;
    let half_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let random = jitter(failures) % half_nanos.saturating_add(1);
    half.saturating_add(Duration::from_nanos(random))
}

/// A pseudo-random number for jitter, without a dependency: std's
/// `RandomState` is seeded randomly per thread and differs on each call.
fn jitter(salt: u32) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(salt);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, retry_after: Option<&str>) -> Result<Response<()>, BoxError> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(value) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, value.parse().unwrap());
        }
        Ok(response)
    }

    fn decide(policy: &mut RetryPolicy, mut result: Result<Response<()>, BoxError>) -> bool {
        let mut request = Request::new(Empty::new());
        policy.retry(&mut request, &mut result).is_some()
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let mut policy = RetryPolicy::new()
            .with_backoff(Duration::from_millis(100), Duration::from_millis(700))
            .with_max_attempts(100);
        for (attempts, ceiling) in [(1, 100), (2, 200), (3, 400), (4, 700), (30, 700), (99, 700)] {
            policy.attempts = attempts;
            for _ in 0..20 {
                let delay = policy.backoff();
                let ceiling = Duration::from_millis(ceiling);
                assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?}");
            }
        }
    }

    #[test]
    fn the_jitter_differs_from_one_call_to_the_next() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| backoff(Duration::from_secs(1), Duration::from_secs(1), 1))
            .collect();
        assert!(delays.len() > 1, "{delays:?}");
    }

    #[tokio::test]
    async fn only_the_safe_cases_are_retried() {
        for (status, retry_after, retried) in [
            (503, None, true),
            (502, None, true),
            (504, None, true),
            (503, Some("3"), true),
            (429, Some("3"), true),
            (429, None, true),
            (429, Some("60"), true),
            (429, Some("61"), false),
            (500, None, false),
            (400, None, false),
            (401, None, false),
            (404, None, false),
            (200, None, false),
        ] {
            let mut policy = RetryPolicy::new();
            assert_eq!(
                decide(&mut policy, response(status, retry_after)),
                retried,
                "{status} {retry_after:?}"
            );
        }
        let reset: BoxError = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(decide(&mut RetryPolicy::new(), Err(reset)));
        let other: BoxError = "invalid URI".into();
        assert!(!decide(&mut RetryPolicy::new(), Err(other)));
        let elapsed: BoxError = tower::timeout::error::Elapsed::new().into();
        assert!(!decide(&mut RetryPolicy::new(), Err(elapsed)));
    }

    #[tokio::test]
    async fn attempts_are_capped() {
        let mut policy = RetryPolicy::new().with_max_attempts(3);
        assert!(decide(&mut policy, response(503, None)));
        assert!(decide(&mut policy, response(503, None)));
        assert!(!decide(&mut policy, response(503, None)));
        assert!(!decide(
            &mut RetryPolicy::new().with_max_attempts(0),
            response(503, None)
        ));
    }

    #[test]
    fn clones_keep_everything_but_the_body() {
        let mut request = Request::get("http://feed/x?n=1&cursor0=_first")
            .header("authorization", "Bearer t")
            .body(Empty::new())
            .unwrap();
        request.extensions_mut().insert(7u8);
        let clone =
            Policy::<_, Response<()>, BoxError>::clone_request(&mut RetryPolicy::new(), &request)
                .unwrap();
        assert_eq!(clone.uri(), request.uri());
        assert_eq!(clone.headers(), request.headers());
        assert_eq!(clone.extensions().get::<u8>(), Some(&7));
    }
}
