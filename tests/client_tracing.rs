//! The client's traces: a span per fetch, its retries with their cause and
//! delay, and a summary of the page. One test alone in its binary, so that
//! no other thread races the subscriber for the callsites.
#![cfg(feature = "client")]

#[path = "support/logs.rs"]
#[allow(dead_code)]
mod logs;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{Empty, StreamBody};
use zeroeventhub::BoxError;
use zeroeventhub::client::Client;
use zeroeventhub::protocol::Cursor;

use logs::Log;

type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, BoxError>>>;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn fetches_are_traced_with_their_retries_and_a_page_summary() {
    let captured = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(captured.writer())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let calls = Arc::new(Mutex::new(0));
    let client = Client::builder("http://feed.test/events?token=t0ken".parse().unwrap(), 1)
        .build_with(tower::service_fn(move |_request: Request<Empty<Bytes>>| {
            let mut calls = calls.lock().unwrap();
            *calls += 1;
            let (status, body): (u16, &'static [u8]) = if *calls == 1 {
                (503, b"busy")
            } else {
                (
                    200,
                    b"{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"1\"}\n",
                )
            };
            let frames = stream::iter([Ok(Frame::data(Bytes::from_static(body)))]);
            let mut response = Response::new(Body::new(frames.boxed()));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            std::future::ready(Ok::<_, BoxError>(response))
        }));
    let request = client.request([(0, Cursor::first())]).unwrap();
    client.fetch_page(&request).await.unwrap();

    let log = captured.text();
    assert!(
        log.contains("feed_fetch{url=http://feed.test/events partitions=1"),
        "{log}"
    );
    assert!(
        log.contains("retrying") && log.contains("status=503"),
        "{log}"
    );
    assert!(log.contains("delay="), "{log}");
    assert!(log.contains("attempt=2"), "{log}");
    assert!(
        log.contains("page read events=1 checkpoints=1 bytes=54"),
        "{log}"
    );
    assert!(!log.contains("t0ken"), "{log}");
}
