//! Bodies that break, from a scripted raw TCP server on loopback: each is
//! an error after the lines already received, never a short page.
#![cfg(feature = "hyper-client")]

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zeroeventhub::client::{Client, Error};
use zeroeventhub::protocol::{Cursor, FeedItem, FeedRequest};

/// How the scripted server ends after writing its bytes.
#[derive(Clone, Copy)]
enum End {
    Close,
    Reset,
    Hang,
}

/// Serves one connection: reads the request head, writes `response`, then
/// ends as told. Returns the URL to fetch.
async fn scripted(response: &'static str, end: End) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = socket.read(&mut buf).await.unwrap();
            assert!(read > 0, "the client sent a whole request head");
            head.extend_from_slice(&buf[..read]);
        }
        socket.write_all(response.as_bytes()).await.unwrap();
        socket.flush().await.unwrap();
        match end {
            End::Close => drop(socket),
            End::Reset => {
                socket.set_zero_linger().unwrap();
                drop(socket);
            }
            End::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(socket);
            }
        }
    });
    format!("http://{address}/feed")
}

/// Fetches from `url`: the items received before the stream's end, and the
/// error it ended with, if any.
async fn fetch(url: String) -> (Vec<FeedItem>, Option<Error>) {
    let client = Client::builder(url.parse().unwrap(), 1)
        .idle_timeout(Duration::from_millis(300))
        .build();
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();
    let mut lines = client.fetch(&request).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = lines.next().await {
        match item {
            Ok(item) => items.push(item),
            Err(error) => {
                assert!(lines.next().await.is_none(), "an error ends the stream");
                return (items, Some(error));
            }
        }
    }
    (items, None)
}

/// A chunked 200 answer's head followed by `$chunks`, as one literal.
macro_rules! chunked {
    ($chunks:literal) => {
        concat!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
            $chunks
        )
    };
}

/// One chunk holding an event and its checkpoint, and no last chunk.
const EVENT_AND_CHECKPOINT: &str =
    chunked!("37\r\n{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"c1\"}\n\r\n");

#[tokio::test]
async fn a_complete_chunked_body_is_a_clean_page() {
    let url = scripted(
        concat!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "19\r\n{\"partition\":0,\"data\":1}\n\r\n",
            "1e\r\n{\"partition\":0,\"cursor\":\"c1\"}\n\r\n",
            "0\r\n\r\n"
        ),
        End::Hang,
    )
    .await;
    let (items, error) = fetch(url).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(items.len(), 2);
}

#[tokio::test]
async fn a_chunked_body_cut_mid_line() {
    let url = scripted(
        chunked!(
            "19\r\n{\"partition\":0,\"data\":1}\n\r\n30\r\n{\"partition\":0,\"cursor\":\"c1\"}\n{\"partition\":0,\"da"
        ),
        End::Close,
    )
    .await;
    let (items, error) = fetch(url).await;
    // The second chunk is cut too: its complete line counts, its partial
    // line does not.
    assert_eq!(items.len(), 2, "{items:?}");
    let error = error.expect("an error");
    assert!(error.is_truncated(), "{error:?}");
}

#[tokio::test]
async fn a_chunked_body_cut_between_lines() {
    let url = scripted(EVENT_AND_CHECKPOINT, End::Close).await;
    let (items, error) = fetch(url).await;
    assert_eq!(items.len(), 2);
    assert!(error.expect("an error").is_truncated());
}

#[tokio::test]
async fn a_content_length_not_met() {
    let url = scripted(
        concat!(
            "HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n",
            "{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"c1\"}\n"
        ),
        End::Close,
    )
    .await;
    let (items, error) = fetch(url).await;
    assert_eq!(items.len(), 2);
    assert!(error.expect("an error").is_truncated());
}

#[tokio::test]
async fn a_connection_reset() {
    let url = scripted(EVENT_AND_CHECKPOINT, End::Reset).await;
    let (items, error) = fetch(url).await;
    // The reset may overtake data still in flight; what arrived is intact.
    assert!(items.len() <= 2);
    assert!(error.expect("an error").is_truncated());
}

#[tokio::test]
async fn headers_then_silence() {
    let url = scripted(
        chunked!("19\r\n{\"partition\":0,\"data\":1}\n\r\n"),
        End::Hang,
    )
    .await;
    let (items, error) = fetch(url).await;
    assert_eq!(items.len(), 1);
    let error = error.expect("an error");
    assert!(error.is_timeout() && !error.is_truncated(), "{error:?}");
}

#[tokio::test]
async fn a_status_error_reads_only_the_start_of_its_body() {
    let url = scripted(
        Box::leak(
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nretry-after: 120\r\ncontent-length: 100000\r\n\r\n{}",
                "x".repeat(5000)
            )
            .into_boxed_str(),
        ),
        End::Hang,
    )
    .await;
    let client = Client::builder(url.parse().unwrap(), 1)
        .idle_timeout(Duration::from_millis(300))
        .max_retry_after(Duration::from_secs(60))
        .build();
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();
    let error = client.fetch(&request).await.unwrap_err();
    assert_eq!(error.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(error.body_excerpt().unwrap().len(), 1024);
}

#[tokio::test]
async fn a_close_delimited_body_cut_mid_line_is_truncated() {
    // No length, no chunks: the body ends when the connection closes.
    let url = scripted(
        concat!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n",
            "{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"c1\"}\n{\"partition\":0,\"da"
        ),
        End::Close,
    )
    .await;
    let (items, error) = fetch(url).await;
    assert_eq!(items.len(), 2);
    let error = error.expect("an error");
    assert!(error.is_truncated() && !error.is_decode(), "{error:?}");
    assert!(error.is_retryable());
    assert!(
        error.to_string().contains("closed in the middle of line 3"),
        "{error}"
    );
}

#[tokio::test]
async fn a_close_delimited_body_whose_last_line_has_no_newline_is_whole() {
    let url = scripted(
        concat!(
            "HTTP/1.1 200 OK\r\n\r\n",
            "{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"c1\"}"
        ),
        End::Close,
    )
    .await;
    let (items, error) = fetch(url).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(items.len(), 2);
}

#[tokio::test]
async fn a_length_delimited_body_with_a_broken_last_line_is_a_decode_error() {
    // The length says the body is whole: the feed sent a broken line.
    let url = scripted(
        concat!(
            "HTTP/1.1 200 OK\r\ncontent-length: 43\r\n\r\n",
            "{\"partition\":0,\"data\":1}\n{\"partition\":0,\"da"
        ),
        End::Hang,
    )
    .await;
    let (items, error) = fetch(url).await;
    assert_eq!(items.len(), 1);
    let error = error.expect("an error");
    assert!(error.is_decode() && !error.is_truncated(), "{error:?}");
    assert!(!error.is_retryable());
}
