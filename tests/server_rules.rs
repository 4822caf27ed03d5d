//! Every request rule of the protocol, one case each, checked on the status,
//! the content type and the exact body, and on what the reader was given.
//!
//! The table is written once and run twice: in-process with `oneshot`, and
//! over loopback HTTP through axum and tower-http layers.
#![cfg(feature = "server")]

mod support;

use futures_util::StreamExt;
use futures_util::stream;
use http::{Method, StatusCode};
use support::readers::{Consumer, FnReader, ReadFn, RecordingReader, Seen};
use support::transport::{LoopbackServer, Transport, client, router};
use zeroeventhub::protocol::{Cursor, Event, FeedRequest, HeaderSelection, RawJson};
use zeroeventhub::server::{FeedService, MemoryFeed, ReadContext, ReadError};

const PARTITIONS: u32 = 2;
const DEFAULT_PAGE_SIZE: usize = 7;
const MAX_PAGE_SIZE: usize = 50;
const NDJSON: &str = "application/x-ndjson";
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// What a failing reader says; it must never reach the consumer.
const SECRET: &str = "connection to db-7.internal:5432 refused for user feed_ro";

/// The reader behind a case.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// [`RecordingReader`] behind a service with page sizes 7 (default)
    /// and 50 (maximum).
    Recording,
    /// [`memory_feed`].
    Memory,
    /// A reader whose `read` fails.
    ReadFails,
    /// A reader whose stream fails on its first item.
    FirstItemFails,
    /// A reader whose stream reports partition 1's cursor as unknown.
    FirstItemUnknownCursor,
    /// A reader with nothing to say.
    Empty,
}

struct Case {
    feed: Feed,
    method: Method,
    query: String,
    status: StatusCode,
    content_type: &'static str,
    allow: Option<&'static str>,
    body: String,
    /// What the recording reader must have been given (nothing when empty).
    seen: Vec<Seen>,
}

fn get(query: impl Into<String>) -> Case {
    with_method(Method::GET, query)
}

fn with_method(method: Method, query: impl Into<String>) -> Case {
    Case {
        feed: Feed::Recording,
        method,
        query: query.into(),
        status: StatusCode::OK,
        content_type: NDJSON,
        allow: None,
        body: String::new(),
        seen: Vec::new(),
    }
}

impl Case {
    fn on(mut self, feed: Feed) -> Self {
        self.feed = feed;
        self
    }

    /// Expects `400 Bad Request` with `message` as the body's one line.
    fn rejected(self, message: &str) -> Self {
        self.answered(StatusCode::BAD_REQUEST, message)
    }

    /// Expects a plain-text answer with `message` as the body's one line.
    fn answered(mut self, status: StatusCode, message: &str) -> Self {
        self.status = status;
        self.content_type = PLAIN_TEXT;
        self.body = format!("{message}\n");
        self
    }

    /// Expects `405 Method Not Allowed` for this case's method.
    fn not_allowed(mut self) -> Self {
        let message = format!(
            "method {} is not allowed: a feed is read with GET",
            self.method
        );
        self = self.answered(StatusCode::METHOD_NOT_ALLOWED, &message);
        self.allow = Some("GET, HEAD");
        self
    }

    /// Expects `200 OK` with `body` as the NDJSON page.
    fn served(mut self, body: impl Into<String>) -> Self {
        self.status = StatusCode::OK;
        self.content_type = NDJSON;
        self.body = body.into();
        self
    }

    /// Expects the reader to have been called once with `request`, aiming
    /// at `page_size` events.
    fn read_as(mut self, request: FeedRequest, page_size: usize) -> Self {
        self.seen = vec![Seen::new(request, page_size)];
        self
    }
}

/// A request of the test feed for these cursors.
fn request(cursors: &[(u32, &str)]) -> FeedRequest {
    FeedRequest::new(
        PARTITIONS,
        cursors
            .iter()
            .map(|(partition, cursor)| (*partition, Cursor::new(cursor).unwrap())),
    )
    .unwrap()
}

/// The page [`RecordingReader`] answers for these cursors, written out:
/// `headers` is the JSON members of the `headers` object, or empty when the
/// line has no `headers`.
fn page(cursors: &[(u32, &str)], headers: &str) -> String {
    let headers = if headers.is_empty() {
        String::new()
    } else {
        format!(",\"headers\":{{{headers}}}")
    };
    cursors
        .iter()
        .map(|(partition, cursor)| {
            format!(
                "{{\"partition\":{partition}{headers},\"data\":{{\"from\":\"{cursor}\"}}}}\n\
                 {{\"partition\":{partition},\"cursor\":\"next-{partition}\"}}\n"
            )
        })
        .collect()
}

/// `get(query)` of partition 0 from `_first`, served with the default page.
fn plain(query: &str) -> Case {
    get(query)
        .served(page(&[(0, "_first")], ""))
        .read_as(request(&[(0, "_first")]), DEFAULT_PAGE_SIZE)
}

/// The same request with `pagesizehint` given as `hint` (as written in the
/// query), which the parsed request holds as `parsed`; the reader must aim
/// at `page_size`.
fn with_hint(hint: &str, parsed: u32, page_size: usize) -> Case {
    get(format!("n=2&cursor0=_first&pagesizehint={hint}"))
        .served(page(&[(0, "_first")], ""))
        .read_as(
            request(&[(0, "_first")]).with_page_size_hint(parsed),
            page_size,
        )
}

/// The same request with `headers` given as `value`; the reader must get
/// `selection` and the body must show the headers `shown`.
fn with_headers(value: &str, selection: HeaderSelection, shown: &str) -> Case {
    get(format!("n=2&cursor0=_first&headers={value}"))
        .served(page(&[(0, "_first")], shown))
        .read_as(
            request(&[(0, "_first")]).with_headers(selection),
            DEFAULT_PAGE_SIZE,
        )
}

fn only(names: &[&str]) -> HeaderSelection {
    HeaderSelection::only(names.iter().copied()).unwrap()
}

fn invalid_n(value: &str) -> String {
    format!(
        "parameter \"n\" must be a partition count in ASCII digits, at most 4294967295, got {value:?}"
    )
}

fn invalid_hint(value: &str) -> String {
    format!("parameter \"pagesizehint\" must be a number in ASCII digits, got {value:?}")
}

fn invalid_cursor_key(name: &str) -> String {
    format!("parameter {name:?} must be cursor<P> with P a partition number in plain decimal")
}

fn not_printable(partition: u32, position: usize) -> String {
    format!(
        "parameter \"cursor{partition}\": cursor has a character outside printable ASCII at byte {position}"
    )
}

fn bad_encoding(position: usize) -> String {
    format!("query string is not valid percent-encoded UTF-8 at byte {position}")
}

const MISMATCH: &str = "handshake error: partition count mismatch";
const N_MISSING: &str = "handshake error: partition count missing";
const CURSORS_MISSING: &str = "cursors are missing";

/// A memory feed of two partitions: `{"n":0}` and `{"n":1}` in partition 0,
/// `{"n":10}` with header `h: v` in partition 1.
fn memory_feed() -> MemoryFeed {
    let feed = MemoryFeed::new(PARTITIONS);
    for (partition, data) in [(0, r#"{"n":0}"#), (0, r#"{"n":1}"#)] {
        feed.append(Event::new(partition, RawJson::from_bytes(data).unwrap()))
            .unwrap();
    }
    feed.append(Event::new(1, RawJson::from_bytes(r#"{"n":10}"#).unwrap()).with_header("h", "v"))
        .unwrap();
    feed
}

fn scripted_reader(feed: Feed) -> FnReader<impl ReadFn> {
    FnReader::new(move |_: &ReadContext<'_>| match feed {
        Feed::ReadFails => Err(ReadError::internal(SECRET)),
        Feed::FirstItemFails => Ok(stream::iter([Err(ReadError::internal(SECRET))]).boxed()),
        Feed::FirstItemUnknownCursor => {
            Ok(stream::iter([Err(ReadError::UnknownCursor { partition: 1 })]).boxed())
        }
        Feed::Empty => Ok(stream::empty().boxed()),
        Feed::Recording | Feed::Memory => unreachable!("not a scripted reader"),
    })
}

async fn check(transport: Transport, case: Case) {
    let Case {
        feed,
        method,
        query,
        ..
    } = &case;
    let reply = match feed {
        Feed::Recording => {
            let reader = RecordingReader::default();
            let service = FeedService::new(reader.clone(), PARTITIONS)
                .default_page_size(DEFAULT_PAGE_SIZE)
                .max_page_size(MAX_PAGE_SIZE);
            let reply = transport.send(service, method.clone(), query).await;
            assert_eq!(
                reader.seen(),
                case.seen,
                "what the reader was given for {query:?}"
            );
            reply
        }
        Feed::Memory => {
            transport
                .send(memory_feed().service(), method.clone(), query)
                .await
        }
        scripted => {
            let service = FeedService::new(scripted_reader(*scripted), PARTITIONS);
            transport.send(service, method.clone(), query).await
        }
    };

    assert_eq!(reply.status, case.status, "status for {method} {query:?}");
    assert_eq!(
        reply.header("content-type"),
        Some(case.content_type),
        "content type for {method} {query:?}"
    );
    assert_eq!(
        reply.header("allow"),
        case.allow,
        "Allow for {method} {query:?}"
    );
    if *method == Method::HEAD {
        // GET's answer without its body, but with the length GET announces.
        assert_eq!(reply.text(), "", "body for {method} {query:?}");
        if case.content_type == PLAIN_TEXT {
            let length = case.body.len().to_string();
            assert_eq!(reply.header("content-length"), Some(length.as_str()));
        }
    } else {
        assert_eq!(reply.text(), case.body, "body for {method} {query:?}");
    }
    assert!(!reply.text().contains(SECRET), "the reader's error leaked");
}

macro_rules! rules {
    ($($name:ident => $case:expr;)*) => {
        mod in_process {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    check(Transport::InProcess, $case).await;
                }
            )*
        }

        mod loopback {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    check(Transport::Loopback, $case).await;
                }
            )*
        }
    };
}

rules! {
    // A request that follows every rule.
    plain_request_is_served => plain("n=2&cursor0=_first");
    both_partitions_are_served => get("n=2&cursor0=_first&cursor1=17")
        .served(page(&[(0, "_first"), (1, "17")], ""))
        .read_as(request(&[(0, "_first"), (1, "17")]), DEFAULT_PAGE_SIZE);
    cursors_reach_the_reader_by_partition => get("n=2&cursor1=_last&cursor0=_first")
        .served(page(&[(0, "_first"), (1, "_last")], ""))
        .read_as(request(&[(0, "_first"), (1, "_last")]), DEFAULT_PAGE_SIZE);

    // `n`: required, ASCII digits only, equal to the feed's count.
    n_missing => get("cursor0=_first").rejected(N_MISSING);
    query_empty => get("").rejected(N_MISSING);
    n_empty => get("n=&cursor0=_first").rejected(&invalid_n(""));
    n_without_equals => get("n&cursor0=_first").rejected(&invalid_n(""));
    n_not_numeric => get("n=two&cursor0=_first").rejected(&invalid_n("two"));
    n_hexadecimal => get("n=0x2&cursor0=_first").rejected(&invalid_n("0x2"));
    n_fractional => get("n=2.0&cursor0=_first").rejected(&invalid_n("2.0"));
    n_negative => get("n=-2&cursor0=_first").rejected(&invalid_n("-2"));
    n_with_plus_sign => get("n=%2B2&cursor0=_first").rejected(&invalid_n("+2"));
    n_spaced_with_plus => get("n=+2+&cursor0=_first").rejected(&invalid_n(" 2 "));
    n_spaced_with_escape => get("n=%202&cursor0=_first").rejected(&invalid_n(" 2"));
    n_with_trailing_tab => get("n=2%09&cursor0=_first").rejected(&invalid_n("2\t"));
    n_huge => get("n=99999999999999999999999&cursor0=_first")
        .rejected(&invalid_n("99999999999999999999999"));
    n_just_above_u32 => get("n=4294967296&cursor0=_first").rejected(&invalid_n("4294967296"));
    n_long_value_is_shortened_in_the_message => get(format!("n={}&cursor0=_first", "x".repeat(300)))
        .rejected(&invalid_n(&format!("{}...", "x".repeat(64))));
    n_below_the_feed => get("n=1&cursor0=_first").rejected(MISMATCH);
    n_above_the_feed => get("n=3&cursor0=_first").rejected(MISMATCH);
    n_zero => get("n=0&cursor0=_first").rejected(MISMATCH);
    n_u32_max => get("n=4294967295&cursor0=_first").rejected(MISMATCH);
    n_mismatch_comes_before_cursor_ranges => get("n=1&cursor1=_first").rejected(MISMATCH);
    n_percent_encoded => plain("%6E=%32&cursor0=_first");

    // A parameter given twice is ambiguous.
    n_twice => get("n=2&n=2&cursor0=_first").rejected(r#"parameter "n" is given more than once"#);
    n_twice_with_different_values => get("n=2&cursor0=_first&n=3")
        .rejected(r#"parameter "n" is given more than once"#);
    n_twice_spelled_differently => get("n=2&%6E=2&cursor0=_first")
        .rejected(r#"parameter "n" is given more than once"#);
    cursor_twice => get("n=2&cursor0=1&cursor0=2")
        .rejected(r#"parameter "cursor0" is given more than once"#);
    cursor_twice_with_the_same_value => get("n=2&cursor1=_first&cursor1=_first")
        .rejected(r#"parameter "cursor1" is given more than once"#);
    pagesizehint_twice => get("n=2&cursor0=_first&pagesizehint=5&pagesizehint=5")
        .rejected(r#"parameter "pagesizehint" is given more than once"#);
    headers_twice => get("n=2&cursor0=_first&headers=a&headers=b")
        .rejected(r#"parameter "headers" is given more than once"#);
    headers_twice_empty => get("n=2&cursor0=_first&headers=&headers=")
        .rejected(r#"parameter "headers" is given more than once"#);

    // At least one cursor.
    cursors_missing => get("n=2").rejected(CURSORS_MISSING);
    cursors_missing_beside_other_parameters => get("n=2&pagesizehint=10&headers=a&wait=1")
        .rejected(CURSORS_MISSING);

    // Cursor values: non-empty printable ASCII of bounded length.
    cursor_empty => get("n=2&cursor0=").rejected(r#"parameter "cursor0": cursor is empty"#);
    cursor_without_equals => get("n=2&cursor1").rejected(r#"parameter "cursor1": cursor is empty"#);
    cursor_with_tab => get("n=2&cursor0=ab%09c").rejected(&not_printable(0, 2));
    cursor_with_newline => get("n=2&cursor1=%0A").rejected(&not_printable(1, 0));
    cursor_with_nul => get("n=2&cursor0=a%00").rejected(&not_printable(0, 1));
    cursor_with_delete => get("n=2&cursor0=abc%7F").rejected(&not_printable(0, 3));
    cursor_not_ascii => get("n=2&cursor0=caf%C3%A9").rejected(&not_printable(0, 3));
    cursor_over_long => get(format!("n=2&cursor1={}", "x".repeat(4097)))
        .rejected(r#"parameter "cursor1": cursor is 4097 bytes long, above the limit of 4096"#);
    cursor_over_long_once_decoded => get(format!("n=2&cursor0={}", "%41".repeat(4097)))
        .rejected(r#"parameter "cursor0": cursor is 4097 bytes long, above the limit of 4096"#);
    cursor_at_the_length_limit => get(format!("n=2&cursor0={}", "x".repeat(4096)))
        .served(page(&[(0, &"x".repeat(4096))], ""))
        .read_as(request(&[(0, &"x".repeat(4096))]), DEFAULT_PAGE_SIZE);
    cursor_of_one_space => get("n=2&cursor0=+")
        .served(page(&[(0, " ")], ""))
        .read_as(request(&[(0, " ")]), DEFAULT_PAGE_SIZE);

    // Cursor keys: `cursor<P>`, P plain decimal and below n.
    cursor_index_equal_to_n => get("n=2&cursor2=_first")
        .rejected(r#"parameter "cursor2": partition 2 is not below n=2"#);
    cursor_index_far_above_n => get("n=2&cursor0=_first&cursor4294967295=_first")
        .rejected(r#"parameter "cursor4294967295": partition 4294967295 is not below n=2"#);
    cursor_index_above_u32 => get("n=2&cursor4294967296=_first")
        .rejected(&invalid_cursor_key("cursor4294967296"));
    cursor_index_with_leading_zero => get("n=2&cursor00=_first")
        .rejected(&invalid_cursor_key("cursor00"));
    cursor_index_with_leading_zero_before_digit => get("n=2&cursor01=_first")
        .rejected(&invalid_cursor_key("cursor01"));
    cursor_index_missing => get("n=2&cursor=_first").rejected(&invalid_cursor_key("cursor"));
    cursor_index_negative => get("n=2&cursor-1=_first").rejected(&invalid_cursor_key("cursor-1"));
    cursor_index_with_plus_sign => get("n=2&cursor%2B1=_first")
        .rejected(&invalid_cursor_key("cursor+1"));
    cursor_index_spaced => get("n=2&cursor+0=_first").rejected(&invalid_cursor_key("cursor 0"));
    cursor_index_not_a_number => get("n=2&cursorx=_first").rejected(&invalid_cursor_key("cursorx"));
    cursor_key_malformed_beside_valid_cursors => get("n=2&cursor0=_first&cursor00=x")
        .rejected(&invalid_cursor_key("cursor00"));
    unknown_parameter_starting_with_cursor => get("n=2&cursor0=_first&cursorless=1")
        .rejected(&invalid_cursor_key("cursorless"));
    cursor_key_long_is_shortened_in_the_message => get(format!("n=2&cursor{}=_first", "1".repeat(100)))
        .rejected(&invalid_cursor_key(&format!("cursor{}...", "1".repeat(58))));
    capitalised_cursor_key_is_an_unknown_parameter => get("n=2&Cursor0=_first")
        .rejected(CURSORS_MISSING);
    capitalised_cursor_key_is_ignored_beside_a_cursor => get("n=2&Cursor0=zz&cursor1=_last")
        .served(page(&[(1, "_last")], ""))
        .read_as(request(&[(1, "_last")]), DEFAULT_PAGE_SIZE);

    // Percent-encoding: decoded before use; a bad escape is a 400.
    encoded_cursors_reach_the_reader_decoded => get("n=2&cursor0=a%26b%25c%2Bd+e%2Ff&cursor1=x%20y/z%3D")
        .served(page(&[(0, "a&b%c+d e/f"), (1, "x y/z=")], ""))
        .read_as(request(&[(0, "a&b%c+d e/f"), (1, "x y/z=")]), DEFAULT_PAGE_SIZE);
    cursor_with_raw_equals_slash_and_question_mark => get("n=2&cursor0=a=b/c?d")
        .served(page(&[(0, "a=b/c?d")], ""))
        .read_as(request(&[(0, "a=b/c?d")]), DEFAULT_PAGE_SIZE);
    empty_pairs_are_skipped => plain("&&n=2&&cursor0=_first&");
    bad_escape => get("n=2&cursor0=%zz").rejected(&bad_encoding(12));
    truncated_escape => get("n=2&cursor0=ab%4").rejected(&bad_encoding(14));
    escape_cut_by_the_end => get("n=2&cursor0=ab%").rejected(&bad_encoding(14));
    escape_cut_by_the_next_pair => get("n=2&cursor0=ab%&x=1").rejected(&bad_encoding(14));
    bad_escape_in_a_key => get("n=2&cur%sor0=x").rejected(&bad_encoding(7));
    bad_escape_first => get("%zz&n=2&cursor0=_first").rejected(&bad_encoding(0));
    escape_of_invalid_utf8 => get("n=2&cursor0=ab%FF").rejected(&bad_encoding(14));
    escape_of_overlong_utf8 => get("n=2&cursor0=%C0%AF").rejected(&bad_encoding(12));
    bad_escape_in_an_unknown_parameter => get("n=2&cursor0=_first&x=%zz").rejected(&bad_encoding(21));

    // `pagesizehint`: non-negative digits; 0 or absent is the default; clamped.
    pagesizehint_absent_means_the_default => plain("n=2&cursor0=_first");
    pagesizehint_zero_means_the_default => with_hint("0", 0, DEFAULT_PAGE_SIZE);
    pagesizehint_within_the_maximum => with_hint("20", 20, 20);
    pagesizehint_with_leading_zeros => with_hint("0020", 20, 20);
    pagesizehint_one => with_hint("1", 1, 1);
    pagesizehint_at_the_maximum => with_hint("50", 50, MAX_PAGE_SIZE);
    pagesizehint_above_the_maximum_is_clamped => with_hint("51", 51, MAX_PAGE_SIZE);
    pagesizehint_huge_is_clamped => with_hint("99999999999999999999", u32::MAX, MAX_PAGE_SIZE);
    pagesizehint_negative => get("n=2&cursor0=_first&pagesizehint=-1").rejected(&invalid_hint("-1"));
    pagesizehint_empty => get("n=2&cursor0=_first&pagesizehint=").rejected(&invalid_hint(""));
    pagesizehint_with_plus_sign => get("n=2&cursor0=_first&pagesizehint=%2B5")
        .rejected(&invalid_hint("+5"));
    pagesizehint_spaced => get("n=2&cursor0=_first&pagesizehint=+5").rejected(&invalid_hint(" 5"));
    pagesizehint_fractional => get("n=2&cursor0=_first&pagesizehint=1.5")
        .rejected(&invalid_hint("1.5"));
    pagesizehint_not_a_number => get("n=2&cursor0=_first&pagesizehint=many")
        .rejected(&invalid_hint("many"));

    // `headers`: comma-separated names, empty names dropped, `_all`.
    headers_absent_means_none => plain("n=2&cursor0=_first");
    headers_empty_means_none => with_headers("", HeaderSelection::None, "");
    headers_only_commas_means_none => with_headers(",,,", HeaderSelection::None, "");
    headers_with_empty_names => with_headers("a,,b,", only(&["a", "b"]), r#""a":"1","b":"2""#);
    headers_all => with_headers("_all", HeaderSelection::All, r#""a":"1","b":"2","c":"3""#);
    headers_all_among_names => with_headers("c,_all", HeaderSelection::All, r#""a":"1","b":"2","c":"3""#);
    headers_percent_encoded => with_headers("%61%2Cc", only(&["a", "c"]), r#""a":"1","c":"3""#);
    headers_none_matching_omits_the_member => with_headers("zzz", only(&["zzz"]), "");

    // Methods: GET and HEAD only.
    post_is_not_allowed => with_method(Method::POST, "n=2&cursor0=_first").not_allowed();
    put_is_not_allowed => with_method(Method::PUT, "n=2&cursor0=_first").not_allowed();
    delete_is_not_allowed => with_method(Method::DELETE, "n=2&cursor0=_first").not_allowed();
    options_is_not_allowed => with_method(Method::OPTIONS, "n=2&cursor0=_first").not_allowed();
    post_with_an_invalid_query_is_not_allowed => with_method(Method::POST, "n=x").not_allowed();
    head_reads_as_get_does => with_method(Method::HEAD, "n=2&cursor0=_first")
        .served(page(&[(0, "_first")], ""))
        .read_as(request(&[(0, "_first")]), DEFAULT_PAGE_SIZE);
    head_with_an_invalid_query_is_rejected => with_method(Method::HEAD, "n=2")
        .rejected(CURSORS_MISSING);
    head_with_a_cursor_the_feed_never_handed_out_is_rejected =>
        with_method(Method::HEAD, "n=2&cursor0=_first&cursor1=5")
            .on(Feed::Memory)
            .rejected(r#"parameter "cursor1": not a cursor this feed handed out"#);
    head_with_a_cursor_the_stream_reports_unknown_is_rejected => with_method(Method::HEAD, "n=2&cursor1=abc")
        .on(Feed::FirstItemUnknownCursor)
        .rejected(r#"parameter "cursor1": not a cursor this feed handed out"#);
    head_when_the_reader_fails_is_a_generic_500 => with_method(Method::HEAD, "n=2&cursor0=_first")
        .on(Feed::FirstItemFails)
        .answered(StatusCode::INTERNAL_SERVER_ERROR, "internal error while reading the feed");

    // Unknown parameters are ignored.
    unknown_parameters_are_ignored => plain("n=2&wait=5&cursor0=_first&foo=bar&flag&=x&N=9&CURSOR1=");

    // What the reader says.
    cursor_the_feed_never_handed_out => get("n=2&cursor0=_first&cursor1=5")
        .on(Feed::Memory)
        .rejected(r#"parameter "cursor1": not a cursor this feed handed out"#);
    cursor_the_feed_never_handed_out_in_that_form => get("n=2&cursor0=01")
        .on(Feed::Memory)
        .rejected(r#"parameter "cursor0": not a cursor this feed handed out"#);
    cursor_reported_unknown_by_the_stream => get("n=2&cursor1=abc")
        .on(Feed::FirstItemUnknownCursor)
        .rejected(r#"parameter "cursor1": not a cursor this feed handed out"#);
    memory_feed_serves_its_events => get("n=2&cursor0=_first&cursor1=_first&headers=_all")
        .on(Feed::Memory)
        .served(concat!(
            "{\"partition\":0,\"data\":{\"n\":0}}\n",
            "{\"partition\":0,\"cursor\":\"0\"}\n",
            "{\"partition\":0,\"data\":{\"n\":1}}\n",
            "{\"partition\":0,\"cursor\":\"1\"}\n",
            "{\"partition\":1,\"headers\":{\"h\":\"v\"},\"data\":{\"n\":10}}\n",
            "{\"partition\":1,\"cursor\":\"0\"}\n",
        ));
    memory_feed_resumes_after_a_cursor => get("n=2&cursor0=0")
        .on(Feed::Memory)
        .served("{\"partition\":0,\"data\":{\"n\":1}}\n{\"partition\":0,\"cursor\":\"1\"}\n");
    reader_failure_is_a_generic_500 => get("n=2&cursor0=_first")
        .on(Feed::ReadFails)
        .answered(StatusCode::INTERNAL_SERVER_ERROR, "internal error while reading the feed");
    reader_failure_on_the_first_item_is_a_generic_500 => get("n=2&cursor0=_first")
        .on(Feed::FirstItemFails)
        .answered(StatusCode::INTERNAL_SERVER_ERROR, "internal error while reading the feed");
    empty_page_is_an_empty_body => get("n=2&cursor0=_first").on(Feed::Empty).served("");
}

/// An authentication layer's identity reaches the reader through the
/// request's extensions, in-process and through axum.
#[tokio::test]
async fn request_extensions_reach_the_reader() {
    let reader = RecordingReader::default();
    let service = FeedService::new(reader.clone(), PARTITIONS);

    let mut in_process = support::transport::request(Method::GET, "/feed/v1?n=2&cursor0=_first");
    in_process
        .extensions_mut()
        .insert(Consumer("alice".to_owned()));
    let response = tower::ServiceExt::oneshot(service.clone(), in_process)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A stand-in for an authentication layer: it names the consumer from a
    // request header.
    let identify =
        tower::util::MapRequestLayer::new(|mut request: http::Request<axum::body::Body>| {
            let name = request
                .headers()
                .get("x-consumer")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            if let Some(name) = name {
                request.extensions_mut().insert(Consumer(name));
            }
            request
        });
    let server = LoopbackServer::start(router(service).layer(identify)).await;
    let mut over_http = server.request(Method::GET, "n=2&cursor0=_first");
    over_http
        .headers_mut()
        .insert("x-consumer", http::HeaderValue::from_static("bob"));
    let response = client().request(over_http).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let consumers: Vec<Option<Consumer>> = reader.seen().into_iter().map(|s| s.consumer).collect();
    assert_eq!(
        consumers,
        [
            Some(Consumer("alice".to_owned())),
            Some(Consumer("bob".to_owned()))
        ]
    );
}
