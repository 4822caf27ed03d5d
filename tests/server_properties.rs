//! Properties of the request model and the service, over generated inputs:
//! every request the model builds survives its query string, no query
//! string makes the parser or the service panic, and the service answers
//! every request with 200, 400 or 405, consistently with the parser.
#![cfg(feature = "server")]

mod support;

use std::collections::HashSet;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use proptest::prelude::*;
use support::readers::{RecordingReader, Seen};
use support::transport::request;
use tower::ServiceExt;
use zeroeventhub::protocol::{Cursor, Event, FeedRequest, HeaderSelection, RawJson};
use zeroeventhub::server::{FeedService, MemoryFeed};

fn cursor() -> impl Strategy<Value = Cursor> {
    prop_oneof![
        1 => Just(Cursor::first()),
        1 => Just(Cursor::last()),
        4 => "[ -~]{1,40}".prop_map(|text| Cursor::new(text).unwrap()),
        1 => proptest::collection::vec(b' '..=b'~', 4000..=Cursor::MAX_LEN)
            .prop_map(|bytes| Cursor::new(String::from_utf8(bytes).unwrap()).unwrap()),
    ]
}

fn header_selection() -> impl Strategy<Value = HeaderSelection> {
    prop_oneof![
        Just(HeaderSelection::None),
        Just(HeaderSelection::All),
        proptest::collection::vec("[^,]{1,12}", 1..5)
            .prop_map(|names| HeaderSelection::only(names).unwrap()),
    ]
}

/// Any request the model can build: a partition count, distinct partitions
/// below it with any valid cursor, any hint, any header selection.
fn feed_request() -> impl Strategy<Value = FeedRequest> {
    let partition_count = prop_oneof![1u32..=8, 1u32..=u32::MAX];
    (
        partition_count,
        proptest::collection::vec((any::<u32>(), cursor()), 1..6),
        proptest::option::of(any::<u32>()),
        header_selection(),
    )
        .prop_map(|(partition_count, cursors, hint, headers)| {
            let mut partitions = HashSet::new();
            let cursors: Vec<(u32, Cursor)> = cursors
                .into_iter()
                .map(|(partition, cursor)| (partition % partition_count, cursor))
                .filter(|(partition, _)| partitions.insert(*partition))
                .collect();
            let request = FeedRequest::new(partition_count, cursors)
                .unwrap()
                .with_headers(headers);
            match hint {
                Some(hint) => request.with_page_size_hint(hint),
                None => request,
            }
        })
}

/// Pieces of the protocol's queries, and of ways to get them wrong.
const TOKENS: &[&str] = &[
    "n",
    "=",
    "&",
    "cursor",
    "Cursor",
    "cursor0",
    "cursor1",
    "cursor00",
    "pagesizehint",
    "headers",
    "_all",
    "_first",
    "_last",
    "0",
    "1",
    "2",
    "9",
    "00",
    "4294967295",
    "4294967296",
    "99999999999999999999",
    "-",
    "+",
    "%",
    "%2",
    "%20",
    "%25",
    "%26",
    "%2B",
    "%3D",
    "%zz",
    "%FF",
    "%C3%A9",
    "%E2%80%A8",
    "%00",
    "%0A",
    ",",
    ",,",
    " ",
    "\u{2028}",
    "é",
    "x",
];

const KEYS: &[&str] = &[
    "n",
    "n",
    "cursor0",
    "cursor0",
    "cursor1",
    "cursor2",
    "cursor00",
    "Cursor0",
    "cursor",
    "cursor-1",
    "cursor%30",
    "%6E",
    "pagesizehint",
    "headers",
    "wait",
    "",
];

const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "2",
    "2",
    "3",
    "02",
    "-1",
    "+2",
    "%2B2",
    "_first",
    "_first",
    "_last",
    "a%26b",
    "%zz",
    "%",
    "%FF",
    "x%20y",
    "4294967296",
    "99999999999999999999",
    "a,,b,",
    "_all",
    "%0A",
    "%C3%A9",
    "%E2%80%A9",
];

/// Near misses: protocol tokens in any order.
fn token_soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..24)
        .prop_map(|tokens| tokens.concat())
}

/// Near misses shaped like queries: `key=value` pairs of the protocol's
/// keys and of values right and wrong, some without `=`.
fn structured_query() -> impl Strategy<Value = String> {
    let pair = (
        proptest::sample::select(KEYS),
        proptest::sample::select(VALUES),
        proptest::bool::weighted(0.9),
    )
        .prop_map(|(key, value, with_equals)| {
            if with_equals {
                format!("{key}={value}")
            } else {
                format!("{key}{value}")
            }
        });
    proptest::collection::vec(pair, 0..7).prop_map(|pairs| pairs.join("&"))
}

/// Queries that are often valid for the test feed of two partitions, and
/// sometimes wrong by a hair (`5` is a cursor the feed never handed out).
fn nearly_valid_query() -> impl Strategy<Value = String> {
    use proptest::option::weighted;
    use proptest::sample::select;

    let cursor = || {
        select(
            &[
                "_first", "_last", "0", "1", "2", "%32", "_first", "5", "", "a%zz",
            ][..],
        )
    };
    let parts = (
        select(&["n=2", "n=2", "n=2", "n=2", "%6E=2", "n=02", "n=3", "n=+2"][..]),
        weighted(0.7, cursor().prop_map(|cursor| format!("cursor0={cursor}"))),
        weighted(0.7, cursor().prop_map(|cursor| format!("cursor1={cursor}"))),
        weighted(0.3, select(&["0", "2", "1000000", "-1", ""][..]))
            .prop_map(|hint| hint.map(|hint| format!("pagesizehint={hint}"))),
        weighted(0.3, select(&["a", "_all", "a,,b,", "", "%61"][..]))
            .prop_map(|headers| headers.map(|headers| format!("headers={headers}"))),
        weighted(
            0.3,
            select(&["wait=1", "x", "Cursor0=_first", "cursor00=1", "n=2"][..]),
        ),
    );
    parts
        .prop_map(|(n, cursor0, cursor1, hint, headers, extra)| {
            let mut pairs = vec![n.to_owned()];
            pairs.extend([cursor0, cursor1, hint, headers].into_iter().flatten());
            pairs.extend(extra.map(str::to_owned));
            pairs
        })
        .prop_shuffle()
        .prop_map(|pairs| pairs.join("&"))
}

fn any_query() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "[ -~]{0,60}",
        1 => token_soup(),
        1 => structured_query(),
        2 => nearly_valid_query(),
    ]
}

/// What cannot stand raw in a URI's query; everything else, `%` included,
/// is left for the server to judge.
const NOT_IN_URI: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::GET),
        1 => Just(Method::HEAD),
        1 => Just(Method::POST),
        1 => Just(Method::PUT),
        1 => Just(Method::DELETE),
        1 => Just(Method::PATCH),
        1 => Just(Method::OPTIONS),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A feed of two partitions of three events each: cursors 0, 1 and 2 exist.
fn small_feed() -> MemoryFeed {
    let feed = MemoryFeed::new(2);
    for partition in 0..2 {
        for index in 0..3 {
            let data = RawJson::from_serialize(&index).unwrap();
            let event = Event::new(partition, data).with_header("a", "1");
            feed.append(event).unwrap();
        }
    }
    feed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encoded_requests_parse_back_to_themselves(request in feed_request()) {
        prop_assert_eq!(FeedRequest::from_query(&request.to_query()), Ok(request));
    }

    #[test]
    fn parsed_queries_encode_to_the_same_request(query in any_query()) {
        // No query makes the parser panic; what it accepts, it can write back.
        if let Ok(request) = FeedRequest::from_query(&query) {
            prop_assert_eq!(FeedRequest::from_query(&request.to_query()), Ok(request));
        }
    }

    #[test]
    fn the_reader_gets_the_request_the_consumer_encoded(request in feed_request()) {
        let reader = RecordingReader::default();
        let service = FeedService::new(reader.clone(), request.partition_count())
            .default_page_size(10)
            .max_page_size(1000);
        let uri = format!("/feed?{}", request.to_query());
        let response = runtime()
            .block_on(service.oneshot(support::transport::request(Method::GET, &uri)))
            .unwrap();
        prop_assert_eq!(response.status(), StatusCode::OK);
        let page_size = request
            .page_size_hint()
            .map_or(10, |hint| (hint as usize).min(1000));
        prop_assert_eq!(reader.seen(), vec![Seen::new(request, page_size)]);
    }

    #[test]
    fn the_service_answers_200_400_or_405(method in method(), query in any_query()) {
        let query = utf8_percent_encode(&query, NOT_IN_URI).to_string();
        let uri = format!("/feed?{query}");
        let service = small_feed().service();
        let (status, headers, body) = runtime().block_on(async {
            let response = service
                .oneshot(request(method.clone(), &uri))
                .await
                .unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("a sound body").to_bytes();
            (parts.status, parts.headers, body)
        });
        let content_type = headers.get("content-type").map(|v| v.to_str().unwrap());
        let body = std::str::from_utf8(&body).expect("a UTF-8 body");
        let parsed = FeedRequest::from_query(&query);

        if method != Method::GET && method != Method::HEAD {
            prop_assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            prop_assert_eq!(headers.get("allow").unwrap(), "GET, HEAD");
            return Ok(());
        }
        match status {
            StatusCode::OK => {
                prop_assert_eq!(content_type, Some("application/x-ndjson"));
                let request = parsed.clone().expect("a served query parses");
                prop_assert_eq!(request.partition_count(), 2);
                if method == Method::HEAD {
                    prop_assert_eq!(body, "");
                }
                for line in body.lines() {
                    let line: serde_json::Value = serde_json::from_str(line).unwrap();
                    let partition = line["partition"].as_u64().unwrap() as u32;
                    prop_assert!(request.cursor(partition).is_some(), "{}", line);
                }
            }
            StatusCode::BAD_REQUEST => {
                prop_assert_eq!(content_type, Some("text/plain; charset=utf-8"));
                if method == Method::HEAD {
                    prop_assert_eq!(body, "");
                } else {
                    prop_assert!(body.ends_with('\n') && body.lines().count() == 1, "{:?}", body);
                }
            }
            other => prop_assert!(false, "status {} for {:?}", other, query),
        }
        if parsed.is_err() {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST);
        }
    }
}
