//! `MemoryFeed`, the embedded feed: concurrent appends and reads, `_last`,
//! the page size shared across partitions, and what it refuses.
#![cfg(feature = "server")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use http::{Extensions, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};
use tower::ServiceExt;
use zeroeventhub::protocol::{Cursor, Event, FeedItem, FeedRequest, RawJson};
use zeroeventhub::server::{
    FeedReader, FeedService, MemoryFeed, ReadContext, ReadError, UnknownPartition,
};

/// The body of a GET of `service` with `query`, which must be a page.
async fn page_text(service: &FeedService<MemoryFeed>, query: &str) -> String {
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("/feed?{query}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(status, StatusCode::OK, "{query}: {text}");
    text
}

/// The lines of a page, parsed.
async fn page(service: &FeedService<MemoryFeed>, query: &str) -> Vec<Value> {
    page_text(service, query)
        .await
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn data(value: Value) -> RawJson {
    RawJson::from_serialize(&value).unwrap()
}

/// A feed whose every partition holds `events` events `{"p":P,"i":I}`.
fn filled(partitions: u32, events: &[u64]) -> MemoryFeed {
    let feed = MemoryFeed::new(partitions);
    for (partition, &count) in events.iter().enumerate() {
        for index in 0..count {
            feed.append(Event::new(
                partition as u32,
                data(json!({ "p": partition, "i": index })),
            ))
            .unwrap();
        }
    }
    feed
}

/// The indexes (`i`) of the events of each partition in `lines`, in order.
fn indexes(lines: &[Value], partitions: usize) -> Vec<Vec<u64>> {
    let mut by_partition = vec![Vec::new(); partitions];
    for line in lines {
        if let Some(data) = line.get("data") {
            let partition = line["partition"].as_u64().unwrap() as usize;
            by_partition[partition].push(data["i"].as_u64().unwrap());
        }
    }
    by_partition
}

/// Reads every partition from `_first` in pages of `page_size`, following
/// checkpoints, until a page started after `done` was set comes back empty.
/// Returns, per partition, each event's data with the cursor that followed it.
/// Fails as soon as more than `appended` events are read.
async fn read_everything(
    service: FeedService<MemoryFeed>,
    done: Arc<AtomicBool>,
    page_size: usize,
    appended: usize,
) -> Vec<Vec<(String, Value)>> {
    let partitions = service.partition_count() as usize;
    let mut cursors = vec![Cursor::FIRST.to_owned(); partitions];
    let mut read = vec![Vec::new(); partitions];
    loop {
        let finished = done.load(Ordering::SeqCst);
        let mut query = format!("n={partitions}&pagesizehint={page_size}");
        for (partition, cursor) in cursors.iter().enumerate() {
            query.push_str(&format!("&cursor{partition}={cursor}"));
        }
        let mut pending: Vec<Option<Value>> = vec![None; partitions];
        let mut events = 0;
        for line in page(&service, &query).await {
            let partition = line["partition"].as_u64().unwrap() as usize;
            match line.get("cursor") {
                Some(cursor) => {
                    let cursor = cursor.as_str().unwrap().to_owned();
                    let data = pending[partition]
                        .take()
                        .expect("this feed checkpoints after every event");
                    read[partition].push((cursor.clone(), data));
                    cursors[partition] = cursor;
                }
                None => {
                    assert!(
                        pending[partition].is_none(),
                        "a checkpoint after each event"
                    );
                    pending[partition] = Some(line["data"].clone());
                    events += 1;
                }
            }
        }
        assert!(
            pending.iter().all(Option::is_none),
            "a page ends on checkpoints"
        );
        let total: usize = read.iter().map(Vec::len).sum();
        assert!(
            total <= appended,
            "{total} events read of {appended} appended"
        );
        assert!(
            events <= page_size,
            "{events} events in a page of {page_size}"
        );
        if events == 0 && finished {
            return read;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_and_readers_see_every_event_once_in_order() {
    const PARTITIONS: u32 = 3;
    const WRITERS: u64 = 4;
    const EVENTS_PER_WRITER: u64 = 1500;
    let feed = MemoryFeed::new(PARTITIONS);
    let done = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = [7, 50, 333]
        .into_iter()
        .map(|page_size| {
            tokio::spawn(read_everything(
                feed.service(),
                Arc::clone(&done),
                page_size,
                (WRITERS * EVENTS_PER_WRITER) as usize,
            ))
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let feed = feed.clone();
            tokio::spawn(async move {
                let mut appended = Vec::new();
                for seq in 0..EVENTS_PER_WRITER {
                    let partition = ((writer + seq) % u64::from(PARTITIONS)) as u32;
                    let value = json!({ "writer": writer, "seq": seq });
                    let cursor = feed
                        .append(Event::new(partition, data(value.clone())))
                        .unwrap();
                    appended.push((partition, cursor, value));
                    if seq % 8 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                appended
            })
        })
        .collect();

    // What each partition holds, in the order of the cursors the appends
    // returned: 0, 1, 2... with no gap.
    let mut expected: Vec<Vec<(usize, Value)>> = vec![Vec::new(); PARTITIONS as usize];
    for writer in writers {
        for (partition, cursor, value) in writer.await.unwrap() {
            let index: usize = cursor.as_str().parse().unwrap();
            expected[partition as usize].push((index, value));
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut total = 0;
    for (partition, events) in expected.iter_mut().enumerate() {
        events.sort_by_key(|(index, _)| *index);
        assert!(
            events
                .iter()
                .enumerate()
                .all(|(at, (index, _))| at == *index),
            "partition {partition}'s cursors run 0, 1, 2..."
        );
        assert_eq!(feed.len(partition as u32), events.len());
        total += events.len();
    }
    assert_eq!(total as u64, WRITERS * EVENTS_PER_WRITER);
    let expected: Vec<Vec<(String, Value)>> = expected
        .into_iter()
        .map(|events| {
            events
                .into_iter()
                .map(|(index, value)| (index.to_string(), value))
                .collect()
        })
        .collect();

    for reader in readers {
        let read = reader.await.unwrap();
        for (partition, events) in read.iter().enumerate() {
            assert_eq!(
                events.len(),
                expected[partition].len(),
                "events of partition {partition} read once each"
            );
        }
        assert_eq!(read, expected);
    }
}

#[tokio::test]
async fn last_is_a_checkpoint_at_the_end_and_reads_only_what_follows() {
    let feed = filled(2, &[5, 0]);
    let service = feed.service();

    let now = page_text(&service, "n=2&cursor0=_last&cursor1=_last").await;
    assert_eq!(
        now,
        "{\"partition\":0,\"cursor\":\"4\"}\n{\"partition\":1,\"cursor\":\"_first\"}\n"
    );

    for (partition, value) in [
        (0, json!("late-0")),
        (1, json!("late-1")),
        (0, json!("late-2")),
    ] {
        feed.append(Event::new(partition, data(value))).unwrap();
    }
    // Resuming from the checkpoints `_last` gave reads only the new events.
    let next = page_text(&service, "n=2&cursor0=4&cursor1=_first").await;
    assert_eq!(
        next,
        concat!(
            "{\"partition\":0,\"data\":\"late-0\"}\n",
            "{\"partition\":0,\"cursor\":\"5\"}\n",
            "{\"partition\":0,\"data\":\"late-2\"}\n",
            "{\"partition\":0,\"cursor\":\"6\"}\n",
            "{\"partition\":1,\"data\":\"late-1\"}\n",
            "{\"partition\":1,\"cursor\":\"0\"}\n",
        )
    );
    // `_last` again, now that both partitions have events.
    let now = page(&service, "n=2&cursor0=_last&cursor1=_last").await;
    assert_eq!(
        now,
        [
            json!({ "partition": 0, "cursor": "6" }),
            json!({ "partition": 1, "cursor": "0" })
        ]
    );
}

#[tokio::test]
async fn last_beside_first_reads_only_the_first_partition() {
    let feed = filled(2, &[2, 3]);
    let lines = page(&feed.service(), "n=2&cursor0=_first&cursor1=_last").await;
    assert_eq!(indexes(&lines, 2), [vec![0, 1], vec![]]);
    let checkpoints: Vec<&Value> = lines.iter().filter(|l| l.get("cursor").is_some()).collect();
    assert!(checkpoints.contains(&&json!({ "partition": 1, "cursor": "2" })));
    assert!(checkpoints.contains(&&json!({ "partition": 0, "cursor": "1" })));
}

#[tokio::test]
async fn page_size_is_shared_across_partitions() {
    let service = filled(2, &[10, 10])
        .service()
        .default_page_size(4)
        .max_page_size(8);
    let both = "n=2&cursor0=_first&cursor1=_first";

    let default = page(&service, both).await;
    assert_eq!(indexes(&default, 2), [vec![0, 1], vec![0, 1]]);
    let hinted = page(&service, &format!("{both}&pagesizehint=6")).await;
    assert_eq!(indexes(&hinted, 2), [vec![0, 1, 2], vec![0, 1, 2]]);
    let clamped = page(&service, &format!("{both}&pagesizehint=100")).await;
    assert_eq!(indexes(&clamped, 2), [vec![0, 1, 2, 3], vec![0, 1, 2, 3]]);
    let one = page(&service, "n=2&cursor1=3&pagesizehint=6").await;
    assert_eq!(indexes(&one, 2), [vec![], vec![4, 5, 6, 7, 8, 9]]);
}

#[tokio::test]
async fn a_page_larger_than_a_read_batch_is_shared_evenly() {
    // Pages span many of the feed's internal read batches: each partition
    // still gets its half, not whatever the first one reads first.
    let service = filled(2, &[20_000, 20_000]).service();
    let lines = page(
        &service,
        "n=2&cursor0=_first&cursor1=_first&pagesizehint=10000",
    )
    .await;
    let [first, second] = indexes(&lines, 2).try_into().expect("two partitions");
    assert_eq!(first, (0..5_000).collect::<Vec<u64>>());
    assert_eq!(second, (0..5_000).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_service_with_more_partitions_than_its_feed_fails_loudly() {
    let service = FeedService::new(filled(2, &[3, 3]), 3);
    let request = Request::get("/?n=3&cursor2=_first")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_short_partition_leaves_its_share_to_the_next() {
    let service = filled(2, &[1, 10]).service();
    let lines = page(&service, "n=2&cursor0=_first&cursor1=_first&pagesizehint=6").await;
    assert_eq!(indexes(&lines, 2), [vec![0], vec![0, 1, 2, 3, 4]]);
}

#[tokio::test]
async fn pages_follow_one_another_without_gap_or_repeat() {
    let service = filled(2, &[23, 9]).service();
    let mut cursors = [Cursor::FIRST.to_owned(), Cursor::FIRST.to_owned()];
    let mut seen = [Vec::new(), Vec::new()];
    for pages in 0.. {
        // Every page but the last brings at least one of the 32 events.
        assert!(pages <= 32, "paging does not end");
        let query = format!(
            "n=2&cursor0={}&cursor1={}&pagesizehint=5",
            cursors[0], cursors[1]
        );
        let lines = page(&service, &query).await;
        if lines.is_empty() {
            break;
        }
        for (partition, found) in indexes(&lines, 2).into_iter().enumerate() {
            seen[partition].extend(found);
        }
        for line in &lines {
            if let Some(cursor) = line.get("cursor") {
                let partition = line["partition"].as_u64().unwrap() as usize;
                cursors[partition] = cursor.as_str().unwrap().to_owned();
            }
        }
    }
    assert_eq!(seen[0], (0..23).collect::<Vec<u64>>());
    assert_eq!(seen[1], (0..9).collect::<Vec<u64>>());
}

#[tokio::test]
async fn only_the_selected_headers_are_served() {
    let feed = MemoryFeed::new(1);
    let event = Event::new(0, data(json!(1)))
        .with_header("a", "1")
        .with_header("b", "2");
    feed.append(event).unwrap();
    let service = feed.service();
    let text = |headers: &'static str| {
        let service = service.clone();
        async move { page_text(&service, &format!("n=1&cursor0=_first{headers}")).await }
    };
    let checkpoint = "{\"partition\":0,\"cursor\":\"0\"}\n";
    assert_eq!(
        text("").await,
        format!("{{\"partition\":0,\"data\":1}}\n{checkpoint}")
    );
    assert_eq!(
        text("&headers=b").await,
        format!("{{\"partition\":0,\"headers\":{{\"b\":\"2\"}},\"data\":1}}\n{checkpoint}")
    );
    assert_eq!(
        text("&headers=_all").await,
        format!(
            "{{\"partition\":0,\"headers\":{{\"a\":\"1\",\"b\":\"2\"}},\"data\":1}}\n{checkpoint}"
        )
    );
}

#[test]
#[should_panic(expected = "a feed has at least one partition")]
fn a_feed_without_partitions_is_refused() {
    let _ = MemoryFeed::new(0);
}

#[test]
fn a_feed_is_empty_until_any_partition_has_an_event() {
    let feed = MemoryFeed::new(3);
    assert!(feed.is_empty());
    feed.append(Event::new(1, data(json!("one")))).unwrap();
    assert!(!feed.is_empty());
}

#[test]
fn debug_shows_the_events_of_each_partition() {
    let feed = filled(3, &[2, 0, 1]);
    assert_eq!(format!("{feed:?}"), "MemoryFeed { events: [2, 0, 1] }");
}

#[tokio::test]
async fn a_page_shows_its_budget() {
    let feed = filled(1, &[3]);
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();
    let extensions = Extensions::new();
    let page = feed
        .read(ReadContext::new(&request, 7, &extensions))
        .await
        .unwrap();
    assert_eq!(format!("{page:?}"), "MemoryPage { budget: 7, .. }");
}

#[tokio::test]
async fn a_partition_of_many_thousand_events_counts_and_ends_right() {
    let feed = MemoryFeed::new(1);
    for n in 0..10_000 {
        feed.append(Event::new(0, data(json!(n)))).unwrap();
    }
    assert_eq!(feed.len(0), 10_000);
    let service = feed.service();
    let last = page(&service, "n=1&cursor0=_last").await;
    assert_eq!(last, [json!({"partition": 0, "cursor": "9999"})]);
    let tail = page(&service, "n=1&cursor0=9997").await;
    assert_eq!(tail[0], json!({"partition": 0, "data": 9998}));
    assert_eq!(tail.len(), 4, "two events and their checkpoints");
}

#[test]
fn appending_to_a_partition_the_feed_lacks_is_an_error() {
    let feed = filled(2, &[1, 1]);
    let error = feed
        .append(Event::new(2, data(json!("lost"))))
        .expect_err("partition 2 of 2");
    assert_eq!(
        error,
        UnknownPartition {
            partition: 2,
            partition_count: 2
        }
    );
    assert_eq!(
        error.to_string(),
        "partition 2 does not exist: the feed has 2 partitions"
    );
    assert!(feed.append(Event::new(u32::MAX, data(json!(0)))).is_err());
    assert_eq!((feed.len(0), feed.len(1), feed.len(2)), (1, 1, 0));
}

#[tokio::test]
async fn cursors_the_feed_never_handed_out_are_unknown() {
    let feed = filled(2, &[5, 0]);
    let extensions = Extensions::new();
    for cursor in [
        "5",
        "-1",
        "01",
        "+1",
        "1.0",
        "abc",
        "99999999999999999999999",
        "4 ",
    ] {
        let request = FeedRequest::new(2, [(0, Cursor::new(cursor).unwrap())]).unwrap();
        let result = feed.read(ReadContext::new(&request, 10, &extensions)).await;
        assert!(
            matches!(result, Err(ReadError::UnknownCursor { partition: 0 })),
            "cursor {cursor:?}"
        );
    }
    // Partition 1 is empty: only `_first` and `_last` are cursors there.
    let request = FeedRequest::new(2, [(1, Cursor::new("0").unwrap())]).unwrap();
    let result = feed.read(ReadContext::new(&request, 10, &extensions)).await;
    assert!(matches!(
        result,
        Err(ReadError::UnknownCursor { partition: 1 })
    ));

    // The last cursor handed out is known, and has nothing after it.
    let request = FeedRequest::new(2, [(0, Cursor::new("4").unwrap())]).unwrap();
    let page = feed
        .read(ReadContext::new(&request, 10, &extensions))
        .await
        .unwrap();
    let items: Vec<FeedItem> = page.map(Result::unwrap).collect().await;
    assert!(items.is_empty());
}
