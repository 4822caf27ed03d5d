//! The default client stack over real loopback HTTP: hyper-util's client
//! against our feed service in axum, and against scripted raw servers.
#![cfg(all(feature = "hyper-client", feature = "server"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

mod support;

use axum::Router;
use support::auth::Bearer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower_http::auth::AddAuthorizationLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, Event, FeedItem, FeedRequest, RawJson};
use zeroeventhub::server::MemoryFeed;

/// Serves `router` on a free loopback port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

fn feed_with(partitions: u32, per_partition: u64) -> MemoryFeed {
    let feed = MemoryFeed::new(partitions);
    for index in 0..per_partition {
        for partition in 0..partitions {
            let data =
                RawJson::from_serialize(&serde_json::json!({"p": partition, "i": index})).unwrap();
            feed.append(Event::new(partition, data)).unwrap();
        }
    }
    feed
}

#[derive(serde::Deserialize)]
struct Numbered {
    p: u32,
    i: u64,
}

#[tokio::test]
async fn every_event_is_read_exactly_once_over_http() {
    let feed = feed_with(3, 2000);
    let base = serve(Router::new().route_service("/feed/v1", feed.service())).await;
    let client = Client::builder(
        format!("{base}/feed/v1?n=7&consumer=test").parse().unwrap(),
        3,
    )
    .build();

    let mut next: Vec<u64> = vec![0; 3];
    let mut request = FeedRequest::new(3, (0..3).map(|p| (p, Cursor::first())))
        .unwrap()
        .with_page_size_hint(700);
    loop {
        let page = client.fetch_page_as::<Numbered>(&request).await.unwrap();
        for event in page.events() {
            assert_eq!(event.data.p, event.partition);
            assert_eq!(
                event.data.i, next[event.partition as usize],
                "in order, once"
            );
            next[event.partition as usize] += 1;
        }
        if !page.made_progress() {
            break;
        }
        request = page.next_request(&request);
    }
    assert_eq!(next, [2000, 2000, 2000]);
}

#[tokio::test]
async fn lines_stream_over_http() {
    let feed = feed_with(1, 50_000);
    let base = serve(Router::new().route_service("/feed", feed.service())).await;
    let client = Client::builder(format!("{base}/feed").parse().unwrap(), 1).build();
    let request = FeedRequest::new(1, [(0, Cursor::first())])
        .unwrap()
        .with_page_size_hint(50_000);
    let mut lines = client.fetch(&request).await.unwrap();
    let mut events = 0;
    let mut last = None;
    while let Some(item) = futures_util::TryStreamExt::try_next(&mut lines)
        .await
        .unwrap()
    {
        match item {
            FeedItem::Event(_) => events += 1,
            FeedItem::Checkpoint(checkpoint) => last = Some(checkpoint.cursor),
        }
    }
    assert_eq!(events, 50_000);
    assert_eq!(last.unwrap().as_str(), "49999");
}

#[tokio::test]
async fn a_bearer_token_goes_through_a_user_layer() {
    let feed = feed_with(1, 3);
    let guard = ValidateRequestHeaderLayer::custom(Bearer::<axum::body::Body>::new("s3cret"));
    let base = serve(
        Router::new()
            .route_service("/feed", feed.service())
            .layer(guard),
    )
    .await;
    let url: http::Uri = format!("{base}/feed").parse().unwrap();
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();

    let client = Client::builder(url.clone(), 1)
        .layer(AddAuthorizationLayer::bearer("s3cret"))
        .build();
    assert_eq!(client.fetch_page(&request).await.unwrap().events().len(), 3);

    let client = Client::builder(url, 1)
        .layer(AddAuthorizationLayer::bearer("wrong"))
        .build();
    let error = client.fetch_page(&request).await.unwrap_err();
    assert_eq!(error.status(), Some(http::StatusCode::UNAUTHORIZED));
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::builder(format!("http://{address}/feed").parse().unwrap(), 1)
        .max_attempts(2)
        .backoff(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(1),
        )
        .build();
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();
    let error = client.fetch(&request).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
}

/// A pooled connection that the server closes just as the next request is
/// sent on it: hyper reports the request unanswered, and the retry policy
/// sends it again on a fresh connection.
#[tokio::test]
async fn a_stale_pooled_connection_is_retried() {
    let (address, connections) = closes_the_first_connection_after_one_answer().await;
    let client = Client::builder(format!("http://{address}/feed").parse().unwrap(), 1).build();
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();
    for _ in 0..2 {
        let page = client.fetch_page(&request).await.unwrap();
        assert_eq!(page.events().len(), 1);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    // Without retries, the same is an error that says to retry.
    let (address, _) = closes_the_first_connection_after_one_answer().await;
    let client = Client::builder(format!("http://{address}/feed").parse().unwrap(), 1)
        .max_attempts(1)
        .build();
    client.fetch_page(&request).await.unwrap();
    let error = client.fetch_page(&request).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
}

async fn closes_the_first_connection_after_one_answer() -> (std::net::SocketAddr, Arc<AtomicUsize>)
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let number = accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Serve one request per connection, keep-alive promised.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let read = socket.read(&mut buf).await.unwrap();
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..read]);
                    if request.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let body = "{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"0\"}\n";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                socket.write_all(head.as_bytes()).await.unwrap();
                socket.write_all(body.as_bytes()).await.unwrap();
                if number == 0 {
                    // Wait for the second request on this connection, then
                    // close without answering it.
                    let _ = socket.read(&mut buf).await;
                }
                drop(socket);
            });
        }
    });
    (address, connections)
}
