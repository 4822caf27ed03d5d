//! The default transport over HTTP/2: with prior knowledge against an
//! HTTP/2-only server on loopback, and the error an HTTP/1.1 client gets
//! from such a server.
#![cfg(all(feature = "hyper-client", feature = "server"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, FeedRequest};
use zeroeventhub::server::MemoryFeed;
use zeroeventhub::workload;

/// A bound on a hang, not a measure of speed.
const LIVENESS: Duration = Duration::from_secs(20);

/// Serves `feed` over HTTP/2 only (no HTTP/1.1 upgrade, no fallback), as
/// tonic does by default. Returns the feed's URL and the count of
/// connections accepted.
async fn serve_http2_only(feed: &MemoryFeed) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/feed", listener.local_addr().unwrap());
    let service = feed.service();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn http2_prior_knowledge_reads_a_feed_to_the_end() {
    let feed = MemoryFeed::new(2);
    workload::fill(&feed, 3_000);
    let (url, connections) = serve_http2_only(&feed).await;
    let client = Client::builder(url.parse().unwrap(), 2)
        .http2_prior_knowledge()
        .build();

    let mut request = FeedRequest::new(2, [(0, Cursor::first()), (1, Cursor::first())])
        .unwrap()
        .with_page_size_hint(1_000);
    let mut seen = [0u64; 2];
    loop {
        let page = tokio::time::timeout(LIVENESS, client.fetch_page(&request))
            .await
            .expect("the page arrives")
            .unwrap();
        for event in page.events() {
            let partition = event.partition as usize;
            assert_eq!(
                event.data,
                workload::event_data(event.partition, seen[partition])
            );
            seen[partition] += 1;
        }
        if page.events().is_empty() {
            break;
        }
        request = page.next_request(&request);
    }
    assert_eq!(seen, [3_000, 3_000]);
    // HTTP/2 multiplexes every page over one connection.
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_http1_client_is_told_the_server_speaks_only_http2() {
    let feed = MemoryFeed::new(1);
    workload::fill(&feed, 10);
    let (url, connections) = serve_http2_only(&feed).await;
    let client = Client::builder(url.parse().unwrap(), 1).build();
    let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();

    let error = tokio::time::timeout(LIVENESS, client.fetch_page(&request))
        .await
        .expect("the answer arrives")
        .unwrap_err();
    assert!(error.is_http2_only(), "{error:?}");
    assert!(!error.is_connect(), "{error:?}");
    assert!(error.to_string().contains("only HTTP/2"), "{error}");
    assert!(
        error.to_string().contains("http2_prior_knowledge"),
        "{error}"
    );
    // Not retried: another attempt would meet the same server.
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}
