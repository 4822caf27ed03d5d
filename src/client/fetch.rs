use std::borrow::Cow;
use std::fmt;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use futures_core::Stream;
use http::uri::{Parts, PathAndQuery};
use http::{Request, Uri, header};
use http_body::Body;
use http_body_util::Empty;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument;

use super::classify::retry_after;
use super::stream::Limits;
use super::{Error, FeedStream, HttpService, Page};
use crate::protocol::query::decode;
use crate::protocol::{Cursor, FeedRequest, HeaderSelection, LineDecoder, RawJson, RequestError};

/// A consumer of one feed, over any HTTP service.
///
/// Configured with the feed's URL and partition count, it sends
/// [`FeedRequest`]s and decodes the answers. [`Client::builder`] makes one
/// with the default stack (retry, timeouts, hyper-util's pooled client);
/// [`Client::new`] takes any [`HttpService`] as it is.
///
/// Cloning is as cheap as cloning the service; clones share its connection
/// pool.
#[derive(Clone)]
pub struct Client<S> {
    service: S,
    url: Uri,
    /// The URL's own query parameters, without the protocol's.
    kept_query: String,
    /// The URL as errors and traces name it: no query, no credentials.
    feed: Arc<str>,
    partitions: u32,
    idle_timeout: Duration,
    page_timeout: Duration,
    max_line_length: usize,
    max_buffered_bytes: usize,
}

impl<S> Client<S> {
    /// The default idle timeout of a body: 30 s.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

    /// The default deadline for a whole page, from sending the request to
    /// the body's end: 5 minutes.
    pub const DEFAULT_PAGE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

    /// The default limit on the event lines a page may hold before a
    /// checkpoint covers them: 64 MiB.
    pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

    /// A client of the feed at `url` with `partitions` partitions, sending
    /// its requests through `service` as it is: no retry and no timeout on
    /// the response head unless the service has them. The body's idle
    /// timeout ([`DEFAULT_IDLE_TIMEOUT`](Self::DEFAULT_IDLE_TIMEOUT)) and
    /// the line length limit apply whatever the service.
    ///
    /// The URL's own query parameters are kept in every request, except
    /// those the protocol sets (`n`, `cursor...`, `pagesizehint`,
    /// `headers`, `wait`), which each request replaces.
    pub fn new(service: S, url: Uri, partitions: u32) -> Self {
        let kept_query = url.query().map(kept_parameters).unwrap_or_default();
        Client {
            service,
            feed: shown(&url).into(),
            url,
            kept_query,
            partitions,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            page_timeout: Self::DEFAULT_PAGE_TIMEOUT,
            max_line_length: LineDecoder::<RawJson>::DEFAULT_MAX_LINE_LENGTH,
            max_buffered_bytes: Self::DEFAULT_MAX_BUFFERED_BYTES,
        }
    }

    /// Sets how long a body may send nothing before the page fails with a
    /// timeout. Anything beyond a year (`Duration::MAX`, say) means a year.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.min(LONGEST_TIMEOUT);
        self
    }

    /// Sets the deadline for a whole page, from sending the request to the
    /// body's end (default [`DEFAULT_PAGE_TIMEOUT`](Self::DEFAULT_PAGE_TIMEOUT)):
    /// past it the page fails with a timeout, however steadily the feed
    /// sends. It bounds a feed that drips a byte now and then, which the
    /// idle timeout does not. A long-polling request
    /// ([`FeedRequest::with_wait`]) gets its wait on top. Anything beyond a
    /// year means a year.
    pub fn with_page_timeout(mut self, timeout: Duration) -> Self {
        self.page_timeout = timeout.min(LONGEST_TIMEOUT);
        self
    }

    /// Sets how many bytes of event lines a page may hold before a
    /// checkpoint of their partition covers them (default
    /// [`DEFAULT_MAX_BUFFERED_BYTES`](Self::DEFAULT_MAX_BUFFERED_BYTES)).
    ///
    /// A consumer holds such events until their checkpoint comes (a
    /// [`Page`] does, and so must anyone who commits exactly once), so a
    /// feed that sends events and no checkpoint would grow it without
    /// bound. Past the limit, the page fails with an error for which
    /// [`Error::is_buffer_limit`] is true.
    pub fn with_max_buffered_bytes(mut self, max: usize) -> Self {
        self.max_buffered_bytes = max;
        self
    }

    /// Sets the longest line accepted, in bytes (default 4 MiB).
    pub fn with_max_line_length(mut self, max: usize) -> Self {
        self.max_line_length = max;
        self
    }

    /// The deadline for a whole page, as configured.
    pub fn page_timeout(&self) -> Duration {
        self.page_timeout
    }

    /// The limit on event lines not yet covered by a checkpoint, in bytes,
    /// as configured.
    pub fn max_buffered_bytes(&self) -> usize {
        self.max_buffered_bytes
    }

    /// The feed's URL, as configured.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The feed's partition count, as configured.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// A request for the given partitions of this client's feed, with the
    /// client's partition count: the count is said once, to the builder.
    ///
    /// ```
    /// use zeroeventhub::client::Client;
    /// use zeroeventhub::protocol::Cursor;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = Client::new((), "http://feed.example/v1".parse()?, 3);
    /// let request = client.request([(0, Cursor::first()), (2, Cursor::first())])?;
    /// assert_eq!(request.partition_count(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn request(
        &self,
        cursors: impl IntoIterator<Item = (u32, Cursor)>,
    ) -> Result<FeedRequest, RequestError> {
        FeedRequest::new(self.partitions, cursors)
    }

    /// The service requests go through.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The URL the client sends `request` to: the feed's URL with the
    /// request's query parameters. Fails when the feed's URL cannot carry
    /// them (an authority without a scheme, say).
    pub fn url_for(&self, request: &FeedRequest) -> Result<Uri, Error> {
        let mut query = self.kept_query.clone();
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&request.to_query());
        let mut parts = Parts::default();
        parts.scheme = self.url.scheme().cloned();
        parts.authority = self.url.authority().cloned();
        let path = match self.url.path() {
            "" => "/",
            path => path,
        };
        parts.path_and_query = Some(
            PathAndQuery::try_from(format!("{path}?{query}")).map_err(Error::invalid_request)?,
        );
        Uri::from_parts(parts).map_err(Error::invalid_request)
    }

    /// Refuses a request this client must not send.
    fn check(&self, request: &FeedRequest) -> Result<(), Error> {
        if request.partition_count() != self.partitions {
            return Err(Error::invalid_request(
                RequestError::PartitionCountMismatch {
                    feed: self.partitions,
                    requested: request.partition_count(),
                },
            ));
        }
        if let HeaderSelection::Only(names) = request.headers() {
            // The variant is public: names may not have gone through
            // `HeaderSelection::only`, which refuses these.
            if let Some(name) = names
                .iter()
                .find(|name| name.is_empty() || name.contains(','))
            {
                return Err(Error::invalid_request(RequestError::InvalidHeaderName {
                    name: name.clone(),
                }));
            }
        }
        Ok(())
    }
}

impl<S: HttpService + Clone> Client<S> {
    /// Sends `request` and returns the page's lines as they arrive, with
    /// event data as [`RawJson`].
    ///
    /// Fails before sending when the request's partition count is not the
    /// client's; fails with a status error, with the status, `Retry-After`
    /// and the start of the body, when the answer is not 2xx. Retries, if
    /// the service does them, all happen before this returns.
    ///
    /// With a wait ([`FeedRequest::with_wait`]), a feed that supports long
    /// polling holds the answer until something is appended or the wait
    /// ends; the page deadline (and the head timeout of the builder's
    /// stack) are extended by the wait. A feed that does not support it
    /// answers at once, often with an empty page: see
    /// [the client's docs](crate::client#long-polling) for the loop that
    /// stays calm then.
    pub async fn fetch(&self, request: &FeedRequest) -> Result<FeedStream<S::ResponseBody>, Error> {
        self.fetch_as(request).await
    }

    /// Like [`fetch`](Self::fetch), with event data deserialized into `D`.
    pub async fn fetch_as<D: DeserializeOwned + 'static>(
        &self,
        request: &FeedRequest,
    ) -> Result<FeedStream<S::ResponseBody, D>, Error> {
        let span = tracing::debug_span!(
            "feed_fetch",
            url = %self.feed,
            partitions = request.cursors().len(),
            attempt = tracing::field::Empty,
        );
        let page_timeout = self.page_timeout_for(request);
        let deadline = Instant::now() + page_timeout;
        self.send(request, deadline, page_timeout)
            .instrument(span.clone())
            .await
            .map(|(head, body)| {
                let decoder =
                    LineDecoder::for_request(request).with_max_line_length(self.max_line_length);
                let limits = Limits {
                    idle_timeout: self.idle_timeout,
                    deadline,
                    page_timeout,
                    max_buffered_bytes: self.max_buffered_bytes,
                    close_delimited: is_close_delimited(&head),
                };
                FeedStream::new(body, decoder, limits, Arc::clone(&self.feed), span)
            })
            .map_err(|error| error.at(&self.feed))
    }

    /// Sends `request` and waits for a 2xx answer's head, until `deadline`.
    async fn send(
        &self,
        request: &FeedRequest,
        deadline: Instant,
        page_timeout: Duration,
    ) -> Result<(http::response::Parts, S::ResponseBody), Error> {
        self.check(request)?;
        let mut http_request = Request::new(Empty::new());
        *http_request.uri_mut() = self.url_for(request)?;
        http_request.headers_mut().insert(
            header::ACCEPT,
            header::HeaderValue::from_static("application/x-ndjson"),
        );

        let mut service = self.service.clone();
        let response = tokio::time::timeout_at(deadline, async {
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(|error| Error::transport(error.into()))?;
            service
                .call(http_request)
                .await
                .map_err(|error| Error::transport(error.into()))
        })
        .await
        .map_err(|_| Error::page_timeout(page_timeout))??;

        let (head, body) = response.into_parts();
        if !head.status.is_success() {
            let excerpt = read_excerpt(body, self.idle_timeout).await;
            return Err(Error::from_status(
                head.status,
                retry_after(&head.headers),
                excerpt,
            ));
        }
        // A compressed body would fail at its first line with a confusing
        // error; say what happened instead.
        if let Some(encoding) = head.headers.get(header::CONTENT_ENCODING) {
            if encoding != "identity" {
                let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
                return Err(Error::encoded(encoding));
            }
        }
        Ok((head, body))
    }

    /// How long the page that answers `request` may take: the page
    /// timeout, plus the wait a long-polling request asks the feed to hold
    /// it for.
    fn page_timeout_for(&self, request: &FeedRequest) -> Duration {
        let wait = request.wait().unwrap_or_default();
        self.page_timeout.saturating_add(wait).min(LONGEST_TIMEOUT)
    }

    /// Fetches a whole page and sorts it into what may be committed and
    /// what may not: see [`Page`] for the consumption loop. The page is held
    /// in memory; to stream it, use [`fetch`](Self::fetch).
    pub async fn fetch_page(&self, request: &FeedRequest) -> Result<Page, Error> {
        self.fetch_page_as(request).await
    }

    /// Like [`fetch_page`](Self::fetch_page), with event data deserialized
    /// into `D`.
    pub async fn fetch_page_as<D: DeserializeOwned + 'static>(
        &self,
        request: &FeedRequest,
    ) -> Result<Page<D>, Error> {
        let mut stream = self.fetch_as::<D>(request).await?;
        let mut items = Vec::new();
        while let Some(item) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            items.push(item?);
        }
        Ok(Page::new(request, items))
    }
}

impl<S> fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("partitions", &self.partitions)
            .field("idle_timeout", &self.idle_timeout)
            .field("page_timeout", &self.page_timeout)
            .field("max_line_length", &self.max_line_length)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .finish_non_exhaustive()
    }
}

/// `url` as errors and traces show it: scheme, host, port and path, never
/// the query (tokens) or credentials.
fn shown(url: &Uri) -> String {
    let mut shown = String::new();
    if let Some(scheme) = url.scheme_str() {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    if let Some(authority) = url.authority() {
        shown.push_str(authority.host());
        if let Some(port) = authority.port() {
            shown.push(':');
            shown.push_str(port.as_str());
        }
    }
    shown.push_str(url.path());
    shown
}

/// Whether the body of `head` ends when the connection closes (HTTP/1
/// with neither a length nor chunks): its end cannot be told from a cut.
fn is_close_delimited(head: &http::response::Parts) -> bool {
    head.version <= http::Version::HTTP_11
        && !head.headers.contains_key(header::CONTENT_LENGTH)
        && !head.headers.contains_key(header::TRANSFER_ENCODING)
}

/// The longest timeout taken as it is: beyond, timer arithmetic could
/// overflow.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The pairs of a URL's query that are not the protocol's, as they are
/// (keys compared once percent-decoded).
fn kept_parameters(query: &str) -> String {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            // A key that does not decode cannot name a protocol parameter
            // unless it does so literally.
            let decoded = decode(key, 0).unwrap_or(Cow::Borrowed(key));
            !FeedRequest::is_protocol_parameter(&decoded)
        })
        .collect();
    kept.join("&")
}

/// The first KiB of an error answer's body, read with the idle timeout;
/// whatever arrived when it ends, fails or stalls.
async fn read_excerpt<B: Body>(body: B, idle_timeout: Duration) -> String {
    const MAX: usize = 1024;
    let mut body = pin!(body);
    let mut excerpt = Vec::new();
    while excerpt.len() < MAX {
        let frame = tokio::time::timeout(idle_timeout, poll_fn(|cx| body.as_mut().poll_frame(cx)));
        match frame.await {
            Ok(Some(Ok(frame))) => {
                if let Ok(mut data) = frame.into_data() {
                    while data.has_remaining() && excerpt.len() < MAX {
                        let chunk = data.chunk();
                        let take = chunk.len().min(MAX - excerpt.len());
                        excerpt.extend_from_slice(&chunk[..take]);
                        data.advance(take);
                    }
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&excerpt).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_parameters_of_the_url_are_dropped() {
        assert_eq!(
            kept_parameters(
                "token=a%26b&n=3&cursor0=x&%63ursor1=y&pagesizehint=1&headers=h&x=1&&cursorless"
            ),
            "token=a%26b&x=1"
        );
        assert_eq!(kept_parameters("n+=1&a+b=2"), "n+=1&a+b=2");
    }

    #[test]
    fn a_page_timeout_grows_by_the_wait_up_to_a_year() {
        let client = |timeout: Duration| {
            crate::client::Client::builder("http://feed/".parse().unwrap(), 1)
                .page_timeout(timeout)
                .build_with(tower::service_fn(|_: crate::client::HttpRequest| {
                    std::future::pending::<
                        Result<
                            http::Response<http_body_util::Empty<bytes::Bytes>>,
                            crate::BoxError,
                        >,
                    >()
                }))
        };
        let request = FeedRequest::new(1, [(0, crate::protocol::Cursor::first())]).unwrap();
        let waiting = request.clone().with_wait(Duration::from_secs(20));
        let minute = client(Duration::from_secs(60));
        assert_eq!(minute.page_timeout_for(&request), Duration::from_secs(60));
        assert_eq!(minute.page_timeout_for(&waiting), Duration::from_secs(80));
        let year = Duration::from_secs(365 * 24 * 60 * 60);
        assert_eq!(client(Duration::MAX).page_timeout_for(&waiting), year);
    }
}
