//! The default transport over HTTP/2: with prior knowledge against an
//! HTTP/2-only server on loopback, and the error an HTTP/1.1 client gets
//! from such a server.
#![cfg(all(feature = "hyper-client", feature = "server"))]

mod support;

use support::transport::{HyperServer, LIVENESS, Protocols};
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, FeedRequest};
use zeroeventhub::server::MemoryFeed;
use zeroeventhub::workload;

#[tokio::test]
async fn http2_prior_knowledge_reads_a_feed_to_the_end() {
    let feed = MemoryFeed::new(2);
    workload::fill(&feed, 3_000);
    let server = HyperServer::start(feed.service(), Protocols::Http2Only).await;
    let client = Client::builder(server.url("/feed").parse().unwrap(), 2)
        .http2_prior_knowledge()
        .build();

    let seen = support::workload::read_to_end(&client, 1_000).await;
    assert_eq!(seen, [3_000, 3_000]);
    // HTTP/2 multiplexes every page over one connection.
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn an_http1_client_is_told_the_server_speaks_only_http2() {
    let feed = MemoryFeed::new(1);
    workload::fill(&feed, 10);
    let server = HyperServer::start(feed.service(), Protocols::Http2Only).await;
    let client = Client::builder(server.url("/feed").parse().unwrap(), 1).build();
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
    assert_eq!(server.accepted(), 1);
}
