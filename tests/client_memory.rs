//! The client through the public API, with the crate's feed service as an
//! in-memory transport.
#![cfg(all(feature = "client", feature = "server"))]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::TryStreamExt;
use futures_util::stream;
use http::{Request, StatusCode};
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{
    Checkpoint, Cursor, Event, FeedItem, FeedRequest, HeaderSelection, InvalidCursor, RawJson,
    RequestError,
};
use zeroeventhub::server::{FeedReader, FeedService, MemoryFeed, ReadContext, ReadError};

/// A feed whose events say where they belong: `{"p":P,"i":I}`.
fn numbered_feed(counts: &[u64]) -> MemoryFeed {
    let feed = MemoryFeed::new(counts.len() as u32);
    let longest = counts.iter().copied().max().unwrap_or(0);
    // Interleaved, as producers of several partitions append.
    for index in 0..longest {
        for (partition, count) in counts.iter().enumerate() {
            if index < *count {
                let data =
                    RawJson::from_serialize(&serde_json::json!({"p": partition, "i": index}))
                        .unwrap();
                feed.append(Event::new(partition as u32, data).with_header("i", index.to_string()))
                    .unwrap();
            }
        }
    }
    feed
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct Numbered {
    p: u32,
    i: u64,
}

fn first_cursors(partitions: u32) -> FeedRequest {
    FeedRequest::new(partitions, (0..partitions).map(|p| (p, Cursor::first()))).unwrap()
}

#[tokio::test]
async fn every_event_is_read_exactly_once_in_order() {
    let counts = [250, 0, 1000, 7];
    let feed = numbered_feed(&counts);
    let client =
        Client::builder("http://feed.test/events".parse().unwrap(), 4).build_with(feed.service());

    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); counts.len()];
    let mut request = first_cursors(4).with_page_size_hint(97);
    let mut pages = 0;
    loop {
        let page = client.fetch_page_as::<Numbered>(&request).await.unwrap();
        pages += 1;
        for event in page.events() {
            assert_eq!(event.data.p, event.partition);
            seen[event.partition as usize].push(event.data.i);
        }
        if !page.made_progress() {
            break;
        }
        request = page.next_request(&request);
    }
    assert!(pages > 10, "the page size hint was honoured: {pages} pages");
    for (partition, count) in counts.iter().enumerate() {
        let expected: Vec<u64> = (0..*count).collect();
        assert_eq!(seen[partition], expected, "partition {partition}");
    }
    // Caught up: the stored cursors read nothing new.
    let page = client.fetch_page(&request).await.unwrap();
    assert!(page.events().is_empty() && page.trailing_events().is_empty());
    assert_eq!(page.next_cursors(), request.cursors());
}

#[tokio::test]
async fn streaming_fetch_yields_lines_in_order_with_headers() {
    let feed = numbered_feed(&[3, 2]);
    let client = Client::new(
        feed.service(),
        "http://feed.test/events".parse().unwrap(),
        2,
    );
    let request = first_cursors(2).with_headers(HeaderSelection::only(["i"]).unwrap());
    let items: Vec<FeedItem> = client
        .fetch(&request)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let events: Vec<(u32, String)> = items
        .iter()
        .filter_map(|item| match item {
            FeedItem::Event(event) => Some((event.partition, event.headers["i"].clone())),
            FeedItem::Checkpoint(_) => None,
        })
        .collect();
    let of = |p: u32| {
        events
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, i)| i.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(of(0), ["0", "1", "2"]);
    assert_eq!(of(1), ["0", "1"]);
    assert_eq!(
        items
            .iter()
            .filter(|item| matches!(item, FeedItem::Checkpoint(_)))
            .count(),
        5
    );
}

#[test]
fn the_url_keeps_its_own_parameters_and_loses_clashing_ones() {
    let client = Client::new(
        (),
        "https://feed.test/v1/events?token=a%2Fb&n=9&cursor0=stale&pagesizehint=1&headers=x&region=eu"
            .parse()
            .unwrap(),
        2,
    );
    let request = FeedRequest::new(
        2,
        [(1, Cursor::new("a b&c=d%/?#+é".replace('é', "e")).unwrap())],
    )
    .unwrap()
    .with_page_size_hint(500)
    .with_headers(HeaderSelection::only(["trace-id", "kind"]).unwrap());
    assert_eq!(
        client.url_for(&request).unwrap().to_string(),
        "https://feed.test/v1/events?token=a%2Fb&region=eu&n=2&cursor1=a%20b%26c%3Dd%25%2F%3F%23%2Be\
         &pagesizehint=500&headers=trace-id,kind"
    );
    // A URL without a path or query gets both.
    let client = Client::new((), "http://feed.test".parse().unwrap(), 1);
    assert_eq!(
        client.url_for(&first_cursors(1)).unwrap().to_string(),
        "http://feed.test/?n=1&cursor0=_first"
    );
}

#[test]
fn the_url_carries_the_requests_wait_and_never_the_base_urls() {
    let client = Client::new(
        (),
        "https://feed.test/v1/events?wait=99&region=eu"
            .parse()
            .unwrap(),
        2,
    );
    let request = first_cursors(2);
    assert_eq!(
        client.url_for(&request).unwrap().to_string(),
        "https://feed.test/v1/events?region=eu&n=2&cursor0=_first&cursor1=_first"
    );
    assert_eq!(
        client
            .url_for(&request.with_wait(std::time::Duration::from_secs(20)))
            .unwrap()
            .to_string(),
        "https://feed.test/v1/events?region=eu&n=2&cursor0=_first&cursor1=_first&wait=20"
    );
}

/// A reader that answers each partition with a checkpoint at the cursor it
/// was given: what our server decoded from the query.
#[derive(Clone)]
struct Echo;

impl FeedReader for Echo {
    type Stream = stream::Iter<std::vec::IntoIter<Result<FeedItem, ReadError>>>;

    async fn read(&self, context: ReadContext<'_>) -> Result<Self::Stream, ReadError> {
        let items: Vec<Result<FeedItem, ReadError>> = context
            .request()
            .cursors()
            .iter()
            .map(|(partition, cursor)| {
                Ok(FeedItem::Checkpoint(Checkpoint::new(
                    *partition,
                    cursor.clone(),
                )))
            })
            .collect();
        Ok(stream::iter(items))
    }
}

#[tokio::test]
async fn cursors_with_reserved_characters_reach_the_server_unchanged() {
    let client = Client::new(
        FeedService::new(Echo, 3),
        "http://feed.test/x?cursor2=no".parse().unwrap(),
        3,
    );
    let cursors = ["a b&c=d", "%2F/?#+;,", "\"quoted\" \\ ~`!@$^*()[]{}|<>'"];
    let request = FeedRequest::new(
        3,
        cursors
            .iter()
            .enumerate()
            .map(|(p, c)| (p as u32, Cursor::new(c).unwrap())),
    )
    .unwrap();
    let page = client.fetch_page(&request).await.unwrap();
    assert_eq!(page.next_cursors(), request.cursors());
    assert_eq!(page.checkpoints().len(), 3);
}

#[tokio::test]
async fn requests_the_client_must_not_send_are_refused_before_sending() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let feed = MemoryFeed::new(2);
    let transport = tower::ServiceBuilder::new()
        .map_request(move |request: Request<_>| {
            counter.fetch_add(1, Ordering::SeqCst);
            request
        })
        .service(feed.service());
    let client = Client::new(transport, "http://feed.test/".parse().unwrap(), 2);
    let error = client.fetch_page(&first_cursors(3)).await.unwrap_err();
    assert!(error.is_invalid_request());
    assert!(matches!(
        std::error::Error::source(&error)
            .unwrap()
            .downcast_ref::<RequestError>(),
        Some(RequestError::PartitionCountMismatch {
            feed: 2,
            requested: 3
        })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // The protocol's other refusals cannot even be expressed: the request
    // types refuse them when they are made.
    assert_eq!(FeedRequest::new(2, []), Err(RequestError::CursorsMissing));
    assert_eq!(
        FeedRequest::new(2, [(1, Cursor::first()), (1, Cursor::last())]),
        Err(RequestError::DuplicatePartition { partition: 1 })
    );
    assert_eq!(
        FeedRequest::new(2, [(2, Cursor::first())]),
        Err(RequestError::PartitionOutOfRange {
            partition: 2,
            partition_count: 2
        })
    );
    assert_eq!(Cursor::new(""), Err(InvalidCursor::Empty));
    assert_eq!(
        Cursor::new("a\nb"),
        Err(InvalidCursor::NotPrintable { position: 1 })
    );
    assert!(matches!(
        HeaderSelection::only(["a,b"]),
        Err(RequestError::InvalidHeaderName { .. })
    ));
}

#[tokio::test]
async fn a_refused_request_is_a_status_error_with_the_reason() {
    let feed = numbered_feed(&[1]);
    let client =
        Client::builder("http://feed.test/".parse().unwrap(), 1).build_with(feed.service());
    let request = FeedRequest::new(1, [(0, Cursor::new("no-such-cursor").unwrap())]).unwrap();
    let error = client.fetch(&request).await.unwrap_err();
    assert!(error.is_status());
    assert_eq!(error.status(), Some(StatusCode::BAD_REQUEST));
    assert!(error.body_excerpt().unwrap().contains("cursor0"), "{error}");
    assert!(error.to_string().contains("cursor0"), "{error}");
}

#[tokio::test]
async fn a_url_that_cannot_carry_a_query_is_refused_not_a_panic() {
    // "localhost:8080" parses as an authority without a scheme.
    let client = Client::new(
        MemoryFeed::new(1).service(),
        "localhost:8080".parse().unwrap(),
        1,
    );
    let error = client.fetch(&first_cursors(1)).await.unwrap_err();
    assert!(error.is_invalid_request(), "{error}");
}

#[tokio::test]
async fn header_names_the_protocol_cannot_carry_are_refused() {
    let client = Client::new(MemoryFeed::new(1).service(), "/feed".parse().unwrap(), 1);
    for name in ["a,b", ""] {
        let request =
            first_cursors(1).with_headers(HeaderSelection::Only(vec!["ok".into(), name.into()]));
        let error = client.fetch(&request).await.unwrap_err();
        assert!(error.is_invalid_request(), "{error}");
        assert!(error.to_string().contains("header name"), "{error}");
    }
}

#[tokio::test]
async fn an_unbounded_idle_timeout_does_not_overflow() {
    // A body that makes the client wait, so that the idle timer is armed.
    let transport = tower::service_fn(|_: Request<http_body_util::Empty<bytes::Bytes>>| async {
        let lines = stream::unfold(0, |sent| async move {
            if sent == 2 {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let line: &'static [u8] = if sent == 0 {
                b"{\"partition\":0,\"data\":1}\n"
            } else {
                b"{\"partition\":0,\"cursor\":\"0\"}\n"
            };
            let frame = http_body::Frame::data(bytes::Bytes::from_static(line));
            Some((Ok::<_, Infallible>(frame), sent + 1))
        });
        Ok::<_, Infallible>(http::Response::new(http_body_util::StreamBody::new(lines)))
    });
    let client = Client::new(transport, "/feed".parse().unwrap(), 1)
        .with_idle_timeout(std::time::Duration::MAX);
    let page = client.fetch_page(&first_cursors(1)).await.unwrap();
    assert_eq!(page.events().len(), 1);
    assert_eq!(page.next_cursors(), [(0, Cursor::new("0").unwrap())]);
}
