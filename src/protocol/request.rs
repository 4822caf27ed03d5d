use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use percent_encoding::utf8_percent_encode;

use super::error::{ECHOED_CHARS, excerpt};
use super::query::{QUERY_VALUE, for_each_pair, parse_digits};
use super::{Cursor, RequestError};

/// Which event headers a consumer wants in the response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum HeaderSelection {
    /// No headers (the default).
    #[default]
    None,
    /// Every header (`headers=_all`).
    All,
    /// Only the headers with these names.
    Only(Vec<String>),
}

impl HeaderSelection {
    /// The wire name that asks for every header.
    pub const ALL: &'static str = "_all";

    /// Selects headers by name. Names must be non-empty and contain no
    /// comma; `_all` among them selects every header; no names selects none.
    pub fn only<I, S>(names: I) -> Result<Self, RequestError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut selected = Vec::new();
        for name in names {
            let name = name.into();
            if name.is_empty() || name.contains(',') {
                return Err(RequestError::InvalidHeaderName {
                    name: excerpt(&name, ECHOED_CHARS),
                });
            }
            if name == Self::ALL {
                return Ok(HeaderSelection::All);
            }
            selected.push(name);
        }
        Ok(Self::from_names(selected))
    }

    fn from_names(names: Vec<String>) -> Self {
        if names.is_empty() {
            HeaderSelection::None
        } else {
            HeaderSelection::Only(names)
        }
    }

    /// Whether a header of this name is selected.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            HeaderSelection::None => false,
            HeaderSelection::All => true,
            HeaderSelection::Only(names) => names.iter().any(|wanted| wanted == name),
        }
    }

    /// Whether no header is selected.
    pub fn is_none(&self) -> bool {
        matches!(self, HeaderSelection::None)
    }

    /// Parses the `headers` parameter's value: comma-separated names, empty
    /// names dropped.
    fn parse(value: &str) -> Self {
        let names = value.split(',').filter(|name| !name.is_empty());
        if names.clone().any(|name| name == Self::ALL) {
            return HeaderSelection::All;
        }
        Self::from_names(names.map(str::to_owned).collect())
    }
}

/// One request for a page of a feed: the partition count the consumer
/// expects, where to read each partition from, and hints for the answer.
///
/// A `FeedRequest` is always valid: at least one cursor, partitions unique
/// and below the partition count. The server parses it from the query string
/// with [`FeedRequest::from_query`]; the client writes it with
/// [`FeedRequest::to_query`].
///
/// ```
/// use zeroeventhub::protocol::{Cursor, FeedRequest};
///
/// let request = FeedRequest::new(2, [(0, Cursor::first()), (1, Cursor::new("17")?)])?
///     .with_page_size_hint(1000);
/// assert_eq!(request.to_query(), "n=2&cursor0=_first&cursor1=17&pagesizehint=1000");
/// assert_eq!(FeedRequest::from_query(&request.to_query())?, request);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRequest {
    partition_count: u32,
    cursors: Vec<(u32, Cursor)>,
    page_size_hint: Option<u32>,
    headers: HeaderSelection,
    /// Whole seconds; never `Some(0)`.
    wait: Option<u32>,
}

impl FeedRequest {
    /// A request for the given partitions of a feed of `partition_count`
    /// partitions. Refuses no cursors, a partition given twice and a
    /// partition not below `partition_count`.
    pub fn new(
        partition_count: u32,
        cursors: impl IntoIterator<Item = (u32, Cursor)>,
    ) -> Result<Self, RequestError> {
        let mut cursors: Vec<(u32, Cursor)> = cursors.into_iter().collect();
        if cursors.is_empty() {
            return Err(RequestError::CursorsMissing);
        }
        cursors.sort_by_key(|(partition, _)| *partition);
        if let Some(pair) = cursors.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(RequestError::DuplicatePartition {
                partition: pair[0].0,
            });
        }
        if let Some((partition, _)) = cursors.iter().find(|(p, _)| *p >= partition_count) {
            return Err(RequestError::PartitionOutOfRange {
                partition: *partition,
                partition_count,
            });
        }
        Ok(FeedRequest {
            partition_count,
            cursors,
            page_size_hint: None,
            headers: HeaderSelection::None,
            wait: None,
        })
    }

    /// Asks for about `hint` events in total; 0 means the feed's default.
    pub fn with_page_size_hint(mut self, hint: u32) -> Self {
        self.page_size_hint = (hint > 0).then_some(hint);
        self
    }

    /// Asks for these event headers.
    pub fn with_headers(mut self, headers: HeaderSelection) -> Self {
        self.headers = headers;
        self
    }

    /// Asks the server to hold the request for up to `wait` when none of
    /// the requested partitions has anything new, answering as soon as an
    /// event is appended to one of them (long polling, `wait=<seconds>`).
    ///
    /// The wire carries whole seconds: a fraction of a second counts as a
    /// whole one, so that a short wait never becomes no wait, and a wait
    /// past `u32::MAX` seconds is that many. Zero asks for
    /// an answer at once, as without a wait. Servers clamp the wait to
    /// their maximum, and servers that do not know `wait` answer at once:
    /// a consumer that gets an empty page back sooner than it asked sleeps
    /// its poll interval before asking again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use zeroeventhub::protocol::{Cursor, FeedRequest};
    ///
    /// let request = FeedRequest::new(1, [(0, Cursor::last())])?.with_wait(Duration::from_millis(1500));
    /// assert_eq!(request.wait(), Some(Duration::from_secs(2)));
    /// assert_eq!(request.to_query(), "n=1&cursor0=_last&wait=2");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_wait(mut self, wait: Duration) -> Self {
        let seconds = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0));
        self.wait = Some(u32::try_from(seconds).unwrap_or(u32::MAX)).filter(|&s| s > 0);
        self
    }

    /// The partition count the consumer expects the feed to have (`n`).
    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    /// The partitions to read and where to read each from, by partition.
    pub fn cursors(&self) -> &[(u32, Cursor)] {
        &self.cursors
    }

    /// Where to read `partition` from, if it is part of the request.
    pub fn cursor(&self, partition: u32) -> Option<&Cursor> {
        self.cursors
            .binary_search_by_key(&partition, |(p, _)| *p)
            .ok()
            .map(|index| &self.cursors[index].1)
    }

    /// How many events the consumer would like in total, if it said.
    pub fn page_size_hint(&self) -> Option<u32> {
        self.page_size_hint
    }

    /// Which event headers the consumer wants.
    pub fn headers(&self) -> &HeaderSelection {
        &self.headers
    }

    /// How long the consumer is willing to wait for new events, in whole
    /// seconds, if it asked to wait at all (`None` for no `wait` or `0`).
    pub fn wait(&self) -> Option<Duration> {
        self.wait
            .map(|seconds| Duration::from_secs(u64::from(seconds)))
    }

    /// Parses a request from a URL's query string (without the `?`),
    /// following every rule of the protocol: strict digits, no duplicate
    /// parameter, valid cursors, unknown parameters ignored.
    pub fn from_query(query: &str) -> Result<Self, RequestError> {
        Self::parse(query, None)
    }

    /// Parses like [`from_query`](Self::from_query), and checks `n` against
    /// the feed's partition count before anything that depends on it.
    pub(crate) fn parse(query: &str, feed_partitions: Option<u32>) -> Result<Self, RequestError> {
        let mut fields = RawFields::default();
        for_each_pair(query, |key, value| fields.add(key, value))?;

        let partition_count = match fields.n {
            None => return Err(RequestError::PartitionCountMissing),
            Some(value) => parse_digits(&value)
                .and_then(|count| u32::try_from(count).ok())
                .ok_or_else(|| RequestError::InvalidPartitionCount {
                    value: excerpt(&value, ECHOED_CHARS),
                })?,
        };
        if let Some(feed) = feed_partitions {
            if feed != partition_count {
                return Err(RequestError::PartitionCountMismatch {
                    feed,
                    requested: partition_count,
                });
            }
        }
        if fields.cursors.is_empty() {
            return Err(RequestError::CursorsMissing);
        }
        fields.cursors.sort_by_key(|(partition, _)| *partition);
        if let Some(pair) = fields
            .cursors
            .windows(2)
            .find(|pair| pair[0].0 == pair[1].0)
        {
            return Err(RequestError::DuplicateParameter {
                name: format!("cursor{}", pair[0].0),
            });
        }
        let mut cursors = Vec::with_capacity(fields.cursors.len());
        for (partition, value) in fields.cursors {
            if partition >= partition_count {
                return Err(RequestError::PartitionOutOfRange {
                    partition,
                    partition_count,
                });
            }
            let cursor = Cursor::new(&value)
                .map_err(|reason| RequestError::InvalidCursor { partition, reason })?;
            cursors.push((partition, cursor));
        }
        // Both only hints: a huge value means "as many (or as long) as you
        // will give", so it saturates; 0 means the same as no value.
        let page_size_hint = parse_hint(fields.page_size_hint, |value| {
            RequestError::InvalidPageSizeHint { value }
        })?;
        let wait = parse_hint(fields.wait, |value| RequestError::InvalidWait { value })?;
        Ok(FeedRequest {
            partition_count,
            cursors,
            page_size_hint,
            headers: fields.headers.map_or(HeaderSelection::None, |value| {
                HeaderSelection::parse(&value)
            }),
            wait,
        })
    }

    /// Writes the request as a query string (without the `?`), cursors and
    /// header names percent-encoded; `pagesizehint`, `headers` and `wait`
    /// only when set.
    pub fn to_query(&self) -> String {
        let mut query = String::with_capacity(32 + 24 * self.cursors.len());
        let _ = write!(query, "n={}", self.partition_count);
        for (partition, cursor) in &self.cursors {
            let _ = write!(
                query,
                "&cursor{partition}={}",
                utf8_percent_encode(cursor.as_str(), QUERY_VALUE)
            );
        }
        if let Some(hint) = self.page_size_hint {
            let _ = write!(query, "&pagesizehint={hint}");
        }
        match &self.headers {
            HeaderSelection::None => {}
            HeaderSelection::All => query.push_str("&headers=_all"),
            HeaderSelection::Only(names) => {
                query.push_str("&headers=");
                for (index, name) in names.iter().enumerate() {
                    if index > 0 {
                        query.push(',');
                    }
                    let _ = write!(query, "{}", utf8_percent_encode(name, QUERY_VALUE));
                }
            }
        }
        if let Some(wait) = self.wait {
            let _ = write!(query, "&wait={wait}");
        }
        query
    }

    /// Whether `key` is one of the parameters this protocol sets, which a
    /// client replaces in a base URL's query.
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub(crate) fn is_protocol_parameter(key: &str) -> bool {
        matches!(key, "n" | "pagesizehint" | "headers" | "wait") || key.starts_with("cursor")
    }
}

/// The protocol's parameters as found in a query, before validation.
#[derive(Default)]
struct RawFields<'q> {
    n: Option<Cow<'q, str>>,
    page_size_hint: Option<Cow<'q, str>>,
    headers: Option<Cow<'q, str>>,
    wait: Option<Cow<'q, str>>,
    cursors: Vec<(u32, Cow<'q, str>)>,
}

impl<'q> RawFields<'q> {
    fn add(&mut self, key: Cow<'q, str>, value: Cow<'q, str>) -> Result<(), RequestError> {
        let slot = match &*key {
            "n" => &mut self.n,
            "pagesizehint" => &mut self.page_size_hint,
            "headers" => &mut self.headers,
            "wait" => &mut self.wait,
            other => {
                if let Some(index) = other.strip_prefix("cursor") {
                    let partition = parse_partition_index(index).ok_or_else(|| {
                        RequestError::InvalidCursorParameter {
                            name: excerpt(other, ECHOED_CHARS),
                        }
                    })?;
                    self.cursors.push((partition, value));
                }
                // Unknown parameters are ignored, for forward compatibility.
                return Ok(());
            }
        };
        if slot.is_some() {
            return Err(RequestError::DuplicateParameter {
                name: key.into_owned(),
            });
        }
        *slot = Some(value);
        Ok(())
    }
}

/// Parses an optional numeric hint (`pagesizehint`, `wait`): ASCII digits
/// only, saturating at `u32::MAX`, `0` read as absent. `invalid` makes the
/// error from the shortened value.
fn parse_hint(
    value: Option<Cow<'_, str>>,
    invalid: impl FnOnce(String) -> RequestError,
) -> Result<Option<u32>, RequestError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let number = parse_digits(&value).ok_or_else(|| invalid(excerpt(&value, ECHOED_CHARS)))?;
    Ok(Some(u32::try_from(number).unwrap_or(u32::MAX)).filter(|&number| number > 0))
}

/// A partition number in plain decimal: digits, no leading zero.
fn parse_partition_index(text: &str) -> Option<u32> {
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    parse_digits(text).and_then(|index| u32::try_from(index).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_no_selection_is_none() {
        assert!(HeaderSelection::None.is_none());
        assert!(!HeaderSelection::All.is_none());
        assert!(!HeaderSelection::only(["trace"]).unwrap().is_none());
    }

    #[test]
    fn a_wait_rounds_up_to_whole_seconds_and_zero_is_no_wait() {
        let wait = |wait: Duration| {
            FeedRequest::new(1, [(0, Cursor::first())])
                .unwrap()
                .with_wait(wait)
                .wait()
        };
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(wait(Duration::from_millis(1500)), secs(2));
        assert_eq!(wait(Duration::from_millis(1)), secs(1));
        assert_eq!(wait(Duration::from_secs(1)), secs(1));
        assert_eq!(wait(Duration::from_secs(20)), secs(20));
        assert_eq!(wait(Duration::ZERO), None);
        assert_eq!(wait(Duration::MAX), secs(u64::from(u32::MAX)));
    }

    #[test]
    fn header_selection_parses_like_the_protocol_says() {
        assert_eq!(HeaderSelection::parse(""), HeaderSelection::None);
        assert_eq!(
            HeaderSelection::parse("a,,b,"),
            HeaderSelection::Only(vec!["a".into(), "b".into()])
        );
        assert_eq!(HeaderSelection::parse("a,_all"), HeaderSelection::All);
        assert!(HeaderSelection::only(["a,b"]).is_err());
        assert!(HeaderSelection::only([""]).is_err());
    }

    #[test]
    fn mismatch_is_reported_before_cursor_ranges() {
        assert_eq!(
            FeedRequest::parse("n=1&cursor1=x", Some(2)),
            Err(RequestError::PartitionCountMismatch {
                feed: 2,
                requested: 1
            })
        );
    }

    #[test]
    fn partition_indexes_are_plain_decimal() {
        assert_eq!(parse_partition_index("0"), Some(0));
        assert_eq!(parse_partition_index("10"), Some(10));
        assert_eq!(parse_partition_index("00"), None);
        assert_eq!(parse_partition_index("01"), None);
        assert_eq!(parse_partition_index(""), None);
        assert_eq!(parse_partition_index("99999999999"), None);
    }
}
