//! The page is streamed: produced lazily as the client reads, sent while the
//! reader waits, broken (never cut short cleanly) when the reader fails
//! mid-page, and dropped as soon as the client goes away.
//!
//! Timeouts here only bound how long a broken server can hang a test; no
//! assertion depends on how long anything takes.
#![cfg(feature = "server")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, StreamExt};
use http::{Method, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use support::logs::Log;
use support::readers::{FnReader, ItemStream, ReadFn, checkpoint, drop_signal, event, guarded};
use support::transport::{LIVENESS, LoopbackServer, client, request, router};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tower::ServiceExt;
use zeroeventhub::protocol::FeedItem;
use zeroeventhub::server::{FeedService, ReadContext, ReadError};

/// The events of the big page.
const TOTAL: u64 = 1_000_000;

/// A page's memory bound: lines produced but not yet handed to the
/// connection may not exceed this many bytes (two 64 KiB frames), whatever
/// the size of the page.
const MAX_BUFFERED_BYTES: usize = 128 * 1024;

/// What a failing reader says; it must never reach the consumer.
const SECRET: &str = "disk /dev/sdb3 failed reading table events_p0";

/// The data of event `seq`.
fn data(seq: u64) -> String {
    format!(r#"{{"seq":{seq}}}"#)
}

/// The NDJSON line of event `seq` of partition 0.
fn line(seq: u64) -> String {
    format!("{{\"partition\":0,\"data\":{}}}\n", data(seq))
}

/// A reader of one partition whose page is `TOTAL` events made one at a
/// time as they are pulled, counting them in `produced`.
fn lazy_reader(produced: Arc<AtomicU64>) -> FnReader<impl ReadFn> {
    FnReader::new(move |_: &ReadContext<'_>| {
        let produced = Arc::clone(&produced);
        Ok(stream::iter(0..TOTAL)
            .map(move |seq| {
                produced.fetch_add(1, Ordering::SeqCst);
                Ok(event(0, &data(seq)))
            })
            .boxed())
    })
}

/// A reader whose single page is whatever arrives on a channel, so that the
/// test decides when the reader has something and when it waits.
fn channel_reader() -> (
    mpsc::UnboundedSender<Result<FeedItem, ReadError>>,
    FnReader<impl ReadFn>,
) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let receiver = Mutex::new(Some(receiver));
    let reader = FnReader::new(move |_: &ReadContext<'_>| {
        let receiver = receiver.lock().unwrap().take().expect("one page only");
        Ok(stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        })
        .boxed())
    });
    (sender, reader)
}

/// Reads frames of `body` until `count` lines have arrived, and returns
/// them; fails if the body ends or errs first.
async fn read_lines<B>(body: &mut B, count: usize) -> String
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut received = BytesMut::new();
    while received.iter().filter(|&&b| b == b'\n').count() < count {
        let frame = timeout(LIVENESS, body.frame())
            .await
            .expect("the server is not stuck")
            .expect("the body goes on")
            .expect("the body is sound");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    String::from_utf8(received.to_vec()).expect("the body is UTF-8")
}

/// Everything `body` yields until it ends, and how it ended.
async fn read_to_end<B>(body: &mut B) -> (String, Result<(), B::Error>)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut received = BytesMut::new();
    let end = loop {
        match timeout(LIVENESS, body.frame())
            .await
            .expect("the server is not stuck")
        {
            None => break Ok(()),
            Some(Err(error)) => break Err(error),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                }
            }
        }
    };
    let text = String::from_utf8(received.to_vec()).expect("the body is UTF-8");
    (text, end)
}

#[tokio::test]
async fn a_million_events_stream_through_a_bounded_buffer() {
    let produced = Arc::new(AtomicU64::new(0));
    let service = FeedService::new(lazy_reader(Arc::clone(&produced)), 1);
    let max_in_flight = (MAX_BUFFERED_BYTES / line(0).len()) as u64;

    let response = service
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        produced.load(Ordering::SeqCst) <= max_in_flight,
        "the answer started only after {} events were produced",
        produced.load(Ordering::SeqCst)
    );

    let mut body = response.into_body();
    let (mut lines, mut frames) = (0u64, 0u64);
    let mut partial = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame
            .expect("the body is sound")
            .into_data()
            .expect("only data");
        frames += 1;
        assert!(
            data.len() <= MAX_BUFFERED_BYTES,
            "a frame of {} bytes",
            data.len()
        );
        partial.extend_from_slice(&data);
        let complete = partial
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        for text in std::str::from_utf8(&partial[..complete])
            .unwrap()
            .split_inclusive('\n')
        {
            assert_eq!(text, line(lines), "line {lines}");
            lines += 1;
        }
        partial.drain(..complete);

        // Everything produced so far has been handed out, but for a bounded
        // remainder that does not depend on the page's size.
        let in_flight = produced.load(Ordering::SeqCst) - lines;
        assert!(
            in_flight <= max_in_flight,
            "{in_flight} events produced and not yet sent after {lines} lines"
        );
    }
    assert!(partial.is_empty(), "the body ends with a whole line");
    assert_eq!(lines, TOTAL);
    assert_eq!(produced.load(Ordering::SeqCst), TOTAL);
    assert!(
        frames >= TOTAL * line(0).len() as u64 / MAX_BUFFERED_BYTES as u64,
        "the page came in {frames} frames"
    );
}

#[tokio::test]
async fn the_first_line_is_a_frame_of_its_own() {
    // Even from a reader that always has more ready, the first line leaves
    // alone and the body pauses once, so the connection writes it at once
    // instead of gathering a large first write.
    let produced = Arc::new(AtomicU64::new(0));
    let service = FeedService::new(lazy_reader(Arc::clone(&produced)), 1);
    let response = service
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, line(0).as_bytes());
    let paused = futures_util::poll!(body.frame());
    assert!(paused.is_pending(), "the body pauses after the first line");
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(second.starts_with(line(1).as_bytes()));
    assert!(
        second.len() > 1024,
        "later lines are packed into large frames"
    );
}

#[tokio::test]
async fn first_bytes_arrive_over_http_before_the_page_is_produced() {
    let produced = Arc::new(AtomicU64::new(0));
    let service = FeedService::new(lazy_reader(Arc::clone(&produced)), 1);
    let server = LoopbackServer::start(router(service)).await;
    let client = client();

    let response = server.get(&client, "n=1&cursor0=_first").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = read_lines(&mut body, 1).await;
    let produced_at_first = produced.load(Ordering::SeqCst);
    assert!(first.starts_with(&line(0)), "the page starts with event 0");
    assert!(
        produced_at_first < TOTAL,
        "the first bytes arrived only after the whole page was produced"
    );
}

#[tokio::test]
async fn lines_are_sent_while_the_reader_waits() {
    let (sender, reader) = channel_reader();
    let server = LoopbackServer::start(router(FeedService::new(reader, 2))).await;
    let client = client();

    sender.send(Ok(event(0, r#"{"a":1}"#))).unwrap();
    sender.send(Ok(checkpoint(0, "c1"))).unwrap();
    sender.send(Ok(event(1, r#"{"b":2}"#))).unwrap();
    let response = server
        .get(&client, "n=2&cursor0=_first&cursor1=_first")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    // The reader has nothing more yet: what it gave must be on the wire.
    let before = read_lines(&mut body, 3).await;
    assert_eq!(
        before,
        concat!(
            "{\"partition\":0,\"data\":{\"a\":1}}\n",
            "{\"partition\":0,\"cursor\":\"c1\"}\n",
            "{\"partition\":1,\"data\":{\"b\":2}}\n",
        )
    );

    sender.send(Ok(checkpoint(1, "c2"))).unwrap();
    drop(sender);
    let (after, end) = read_to_end(&mut body).await;
    assert_eq!(after, "{\"partition\":1,\"cursor\":\"c2\"}\n");
    assert!(end.is_ok(), "the page ends cleanly: {end:?}");
}

#[tokio::test]
async fn reader_error_mid_page_breaks_the_body_after_the_lines_sent() {
    let (sender, reader) = channel_reader();
    let server = LoopbackServer::start(router(FeedService::new(reader, 1))).await;
    let client = client();

    let mut expected = String::new();
    for seq in 0..3000 {
        sender.send(Ok(event(0, &data(seq)))).unwrap();
        expected.push_str(&line(seq));
    }
    let response = server.get(&client, "n=1&cursor0=_first").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let received = read_lines(&mut body, 3000).await;
    assert_eq!(received, expected);

    sender.send(Err(ReadError::internal(SECRET))).unwrap();
    let (rest, end) = read_to_end(&mut body).await;
    assert_eq!(rest, "", "nothing follows the lines sent");
    assert!(
        end.is_err(),
        "the client sees a broken body, not a short page"
    );
}

#[tokio::test]
async fn reader_error_right_after_lines_is_never_a_clean_page() {
    let items: Vec<Result<FeedItem, ReadError>> = (0..3000)
        .map(|seq| Ok(event(0, &data(seq))))
        .chain([Err(ReadError::internal(SECRET))])
        .collect();
    let items = Mutex::new(Some(items));
    let reader = FnReader::new(move |_: &ReadContext<'_>| {
        let items = items.lock().unwrap().take().expect("one page only");
        Ok(stream::iter(items).boxed())
    });
    let server = LoopbackServer::start(router(FeedService::new(reader, 1))).await;
    let client = client();

    // The failure may reach the client before the head or after some of the
    // lines; either way it must be an error, and what came before it right.
    let received = match client
        .request(server.request(Method::GET, "n=1&cursor0=_first"))
        .await
    {
        Err(_) => String::new(),
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::OK);
            let (received, end) = read_to_end(&mut response.into_body()).await;
            assert!(end.is_err(), "a clean end after {} bytes", received.len());
            received
        }
    };
    let complete = received.rfind('\n').map_or(0, |at| at + 1);
    for (seq, text) in received[..complete].split_inclusive('\n').enumerate() {
        assert_eq!(text, line(seq as u64), "line {seq}");
    }
    assert!(!received.contains(SECRET));
}

#[tokio::test]
async fn reader_error_mid_page_fails_the_body_in_process() {
    let items: Vec<Result<FeedItem, ReadError>> = vec![
        Ok(event(0, r#"{"a":1}"#)),
        Ok(checkpoint(0, "c1")),
        Err(ReadError::internal(SECRET)),
        Ok(event(0, r#"{"never":"sent"}"#)),
    ];
    let items = Mutex::new(Some(items));
    let reader = FnReader::new(move |_: &ReadContext<'_>| {
        let items = items.lock().unwrap().take().expect("one page only");
        Ok(stream::iter(items).boxed())
    });
    let response = FeedService::new(reader, 1)
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (received, end) = read_to_end(&mut response.into_body()).await;
    assert_eq!(
        received,
        "{\"partition\":0,\"data\":{\"a\":1}}\n{\"partition\":0,\"cursor\":\"c1\"}\n"
    );
    let error = end.expect_err("the body fails");
    assert_eq!(
        error.to_string(),
        "feed reader failed mid-page; the response was aborted"
    );
}

#[tokio::test]
async fn reader_error_before_the_first_line_is_logged_not_sent() {
    let (log, _logging) = Log::capture();

    let reader = FnReader::new(|_: &ReadContext<'_>| Err(ReadError::internal(SECRET)));
    let response = FeedService::new(reader, 1)
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"internal error while reading the feed\n");

    let logged = log.text();
    assert!(
        logged.contains(SECRET),
        "the detail is in the log: {logged:?}"
    );
}

/// Serves a page that never ends, guarded, and returns the server and the
/// signal of the page's drop.
async fn endless_page(waits: bool) -> (LoopbackServer, tokio::sync::oneshot::Receiver<()>) {
    let (guard, dropped) = drop_signal();
    let guard = Mutex::new(Some(guard));
    let reader = FnReader::new(move |_: &ReadContext<'_>| {
        let guard = guard.lock().unwrap().take().expect("one page only");
        let page: ItemStream = if waits {
            // A few events, then waiting for more that never come.
            stream::iter((0..10).map(|seq| Ok(event(0, &data(seq)))))
                .chain(stream::pending())
                .boxed()
        } else {
            stream::iter((0..).map(|seq| Ok(event(0, &data(seq))))).boxed()
        };
        Ok(guarded(page, guard))
    });
    let server = LoopbackServer::start(router(FeedService::new(reader, 1))).await;
    (server, dropped)
}

async fn leave_mid_page(waits: bool) {
    let (server, dropped) = endless_page(waits).await;
    let client = client();
    let response = server.get(&client, "n=1&cursor0=_first").await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = read_lines(&mut body, 10).await;
    assert!(first.starts_with(&line(0)));

    drop(body);
    drop(client);
    timeout(LIVENESS, dropped)
        .await
        .expect("the reader's stream is dropped when the client leaves")
        .expect("the guard signals its drop");
}

#[tokio::test]
async fn client_leaving_while_the_reader_produces_drops_the_reader() {
    leave_mid_page(false).await;
}

#[tokio::test]
async fn client_leaving_while_the_reader_waits_drops_the_reader() {
    leave_mid_page(true).await;
}

#[tokio::test]
async fn dropping_the_body_in_process_drops_the_reader() {
    let (guard, mut dropped) = drop_signal();
    let guard = Mutex::new(Some(guard));
    let reader = FnReader::new(move |_: &ReadContext<'_>| {
        let guard = guard.lock().unwrap().take().expect("one page only");
        Ok(guarded(
            stream::iter((0..).map(|seq| Ok(event(0, &data(seq))))).boxed(),
            guard,
        ))
    });
    let response = FeedService::new(reader, 1)
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    let mut body = response.into_body();
    read_lines(&mut body, 1).await;
    assert!(dropped.try_recv().is_err(), "the page is still being read");
    drop(body);
    assert!(
        dropped.try_recv().is_ok(),
        "dropping the body dropped the page"
    );
}

/// A fixed answer (a 400, an empty page, an answer to HEAD) announces its
/// exact length, so that hyper sends `Content-Length` instead of chunks,
/// and says when it has nothing more; a page knows neither.
#[tokio::test]
async fn fixed_answers_know_their_length_and_their_end() {
    let empty = FnReader::new(|_: &ReadContext<'_>| Ok(stream::empty().boxed()));
    let service = FeedService::new(empty, 1);
    let answer = |uri: &'static str| service.clone().oneshot(request(Method::GET, uri));

    let message = "cursors are missing\n";
    let rejected = answer("/feed?n=1").await.unwrap();
    assert_eq!(rejected.status(), StatusCode::BAD_REQUEST);
    let mut body = rejected.into_body();
    assert_eq!(body.size_hint().exact(), Some(message.len() as u64));
    assert!(!body.is_end_stream());
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, message);
    assert!(body.is_end_stream());
    assert!(body.frame().await.is_none());

    let nothing = answer("/feed?n=1&cursor0=_first").await.unwrap();
    assert_eq!(nothing.status(), StatusCode::OK);
    assert_eq!(nothing.body().size_hint().exact(), Some(0));
    assert!(nothing.body().is_end_stream());
}

/// A page that is whole before its head goes out and shorter than 8 KiB (a
/// few ready events) knows its length; a longer one, or one whose reader
/// still waits, streams and knows neither its length nor its end.
#[tokio::test]
async fn a_page_knows_its_length_only_when_it_is_whole_at_once() {
    let one = FnReader::new(|_: &ReadContext<'_>| {
        Ok(stream::iter([Ok(event(0, r#"{"a":1}"#)), Ok(checkpoint(0, "1"))]).boxed())
    });
    let page = FeedService::new(one, 1)
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    let expected = "{\"partition\":0,\"data\":{\"a\":1}}\n{\"partition\":0,\"cursor\":\"1\"}\n";
    let mut body = page.into_body();
    assert_eq!(body.size_hint().exact(), Some(expected.len() as u64));
    assert!(!body.is_end_stream());
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, expected, "the whole page in one frame");
    assert!(body.is_end_stream());

    // Up to 8 KiB is whole at once: here about 6 KiB.
    let several = FnReader::new(|_: &ReadContext<'_>| {
        Ok(stream::iter((0..180).map(|seq| Ok(event(0, &data(seq))))).boxed())
    });
    let page = FeedService::new(several, 1)
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    let length = page.body().size_hint().exact();
    let text = page.into_body().collect().await.unwrap().to_bytes();
    assert!(text.len() > 4096, "{} bytes", text.len());
    assert_eq!(length, Some(text.len() as u64));

    // The line of one event with a string of `fill` bytes is 26 bytes more.
    let one_line = |fill: usize| {
        FnReader::new(move |_: &ReadContext<'_>| {
            let text = serde_json::to_string(&"x".repeat(fill)).unwrap();
            Ok(stream::iter([Ok(event(0, &text))]).boxed())
        })
    };
    for (fill, whole) in [(8165, true), (8166, false)] {
        let page = FeedService::new(one_line(fill), 1)
            .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
            .await
            .unwrap();
        let length = page.body().size_hint().exact();
        let text = page.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text.len(), fill + 26);
        assert_eq!(length.is_some(), whole, "a page of {} bytes", text.len());
    }

    let produced = Arc::new(AtomicU64::new(0));
    let long = FeedService::new(lazy_reader(Arc::clone(&produced)), 1)
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    assert_eq!(long.body().size_hint().exact(), None);
    assert!(!long.body().is_end_stream());
    let gathered = produced.load(Ordering::SeqCst);
    assert!(
        gathered < TOTAL && (gathered as usize) * line(0).len() < 9 * 1024,
        "{gathered} events read before the head"
    );

    let (sender, waits) = channel_reader();
    sender.send(Ok(event(0, r#"{"a":1}"#))).unwrap();
    let waiting = FeedService::new(waits, 1)
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    assert_eq!(waiting.body().size_hint().exact(), None);
    assert!(zeroeventhub::server::FeedBody::<ItemStream>::default().is_end_stream());
}

/// Over HTTP the exact length is the `Content-Length` of a fixed answer.
#[tokio::test]
async fn fixed_answers_are_sent_with_their_length() {
    let server = LoopbackServer::start(router(FeedService::new(
        FnReader::new(|_: &ReadContext<'_>| Ok(stream::empty().boxed())),
        1,
    )))
    .await;
    for (query, length) in [("n=1", "20"), ("n=1&cursor0=_first", "0")] {
        let response = timeout(LIVENESS, server.get(&client(), query))
            .await
            .expect("an answer");
        assert_eq!(
            response
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap()),
            Some(length),
            "{query}"
        );
        assert!(
            response.headers().get("transfer-encoding").is_none(),
            "{query}"
        );
    }
}

/// Over HTTP a page that is whole at once goes out with its length, in
/// one piece: no chunk framing to end it.
#[tokio::test]
async fn a_small_page_is_sent_with_its_length() {
    let one = FnReader::new(|_: &ReadContext<'_>| {
        Ok(stream::iter([Ok(event(0, r#"{"a":1}"#)), Ok(checkpoint(0, "1"))]).boxed())
    });
    let server = LoopbackServer::start(router(FeedService::new(one, 1))).await;
    let response = timeout(LIVENESS, server.get(&client(), "n=1&cursor0=_first"))
        .await
        .expect("an answer");
    let length = response.headers().get("content-length").cloned();
    assert!(response.headers().get("transfer-encoding").is_none());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        length.map(|v| v.to_str().unwrap().to_owned()),
        Some(body.len().to_string())
    );
}

/// An event, then, after a pause longer than the page's maximum duration,
/// its checkpoint, and so on without end.
fn slow_endless_reader(pause: Duration) -> FnReader<impl ReadFn> {
    FnReader::new(move |_: &ReadContext<'_>| {
        let lines = stream::iter(0u64..).flat_map(move |n| {
            let event = stream::iter([Ok(event(0, &data(n)))]);
            let checkpoint = stream::once(async move {
                tokio::time::sleep(pause).await;
                Ok(checkpoint(0, &n.to_string()))
            });
            event.chain(checkpoint)
        });
        Ok(lines.boxed())
    })
}

#[tokio::test]
async fn a_page_past_its_maximum_duration_ends_cleanly_at_its_next_checkpoint() {
    // The duration runs out while the page waits for the first checkpoint:
    // the page goes on to that checkpoint and ends there, not before.
    let service = FeedService::new(slow_endless_reader(Duration::from_millis(200)), 1)
        .max_page_duration(Duration::from_millis(20));
    let response = service
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    let (received, end) = timeout(LIVENESS, read_to_end(&mut response.into_body()))
        .await
        .expect("the endless page ends");
    end.expect("a clean end");
    assert_eq!(
        received,
        format!("{}{{\"partition\":0,\"cursor\":\"0\"}}\n", line(0))
    );
}

/// Lines the reader has ready are packed into frames of 64 KiB: a frame
/// per line would cost a write each.
#[tokio::test]
async fn ready_lines_are_packed_into_large_frames() {
    let reader = FnReader::new(|_: &ReadContext<'_>| {
        Ok(stream::iter((0..20_000u64).map(|seq| Ok(event(0, &data(seq))))).boxed())
    });
    let response = FeedService::new(reader, 1)
        .oneshot(request(Method::GET, "/feed?n=1&cursor0=_first"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        frames.push(frame.unwrap().into_data().unwrap().len());
    }
    // The first line goes alone; the last frame is what is left.
    assert!(frames.len() > 3, "{frames:?}");
    for &length in &frames[1..frames.len() - 1] {
        assert!(length >= 64 * 1024, "{frames:?}");
        assert!(length < 65 * 1024, "{frames:?}");
    }
}

#[test]
fn the_service_and_its_bodies_describe_themselves() {
    let service = FeedService::new(
        FnReader::new(|_: &ReadContext<'_>| Ok(stream::empty().boxed())),
        3,
    )
    .default_page_size(5)
    .max_page_size(9)
    .max_page_duration(Duration::from_secs(7));
    assert_eq!(service.partition_count(), 3);
    assert_eq!(
        format!("{service:?}"),
        "FeedService { partition_count: 3, default_page_size: 5, max_page_size: 9, max_wait: 30s, max_waiting: 10000, max_page_duration: 7s, .. }"
    );
    let body = zeroeventhub::server::FeedBody::<ItemStream>::default();
    assert_eq!(format!("{body:?}"), r#"FeedBody { kind: "full" }"#);
}

#[tokio::test]
async fn the_page_span_names_partitions_page_size_and_events_sent() {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.writer())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let reader = FnReader::new(|_: &ReadContext<'_>| {
        let lines = [
            Ok(event(1, r#"{"a":1}"#)),
            Ok(event(1, r#"{"a":2}"#)),
            Ok(checkpoint(1, "2")),
        ];
        Ok(stream::iter(lines).boxed())
    });
    let response = FeedService::new(reader, 3)
        .oneshot(request(
            Method::GET,
            "/feed?n=3&cursor1=_first&cursor2=7&pagesizehint=40",
        ))
        .await
        .unwrap();
    let (_, end) = read_to_end(&mut response.into_body()).await;
    end.unwrap();

    let logged = log.text();
    let closed = logged
        .lines()
        .find(|line| line.contains("feed_page") && line.contains("close"))
        .unwrap_or_else(|| panic!("the span closes: {logged}"));
    for field in ["partitions=[1, 2]", "page_size=40", "events=2"] {
        assert!(closed.contains(field), "{field} in {closed:?}");
    }
}
