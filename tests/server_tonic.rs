//! One tonic server, one port: a gRPC service (tonic-health) and the feed
//! side by side through `tonic::service::Routes`. With `accept_http1(true)`
//! the feed is read over HTTP/1.1; with tonic's default (HTTP/2 only) it is
//! read over HTTP/2 with prior knowledge. Either way every event comes
//! exactly once and the health check answers on the same port.
#![cfg(all(feature = "server", feature = "hyper-client"))]

use std::net::SocketAddr;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, Event, FeedRequest, RawJson};
use zeroeventhub::server::MemoryFeed;

const PARTITIONS: u32 = 2;
/// Enough data (about 3 MB) that the body outgrows HTTP/2's initial
/// flow-control windows: the feed only ends if window updates flow.
const PER_PARTITION: u64 = 15_000;

fn numbered_feed() -> MemoryFeed {
    let feed = MemoryFeed::new(PARTITIONS);
    for index in 0..PER_PARTITION {
        for partition in 0..PARTITIONS {
            let data = RawJson::from_serialize(&serde_json::json!({
                "p": partition,
                "i": index,
                "padding": "an event about a hundred bytes long, as real ones are",
            }))
            .expect("JSON");
            feed.append(Event::new(partition, data))
                .expect("the partition exists");
        }
    }
    feed
}

/// Serves tonic-health's service and the feed at `/feed/v1` from one tonic
/// server on a free loopback port.
async fn serve(feed: &MemoryFeed, accept_http1: bool) -> SocketAddr {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let feed_routes = axum::Router::new().route_service("/feed/v1", feed.service());
    let routes = tonic::service::Routes::from(feed_routes).add_service(health);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let server = tonic::transport::Server::builder()
        .accept_http1(accept_http1)
        .add_routes(routes)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    addr
}

/// The gRPC health check of the whole server, over HTTP/2 as gRPC is.
async fn assert_healthy(addr: SocketAddr) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await
        .expect("a gRPC connection");
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("a health answer")
        .into_inner();
    assert_eq!(answer.status, ServingStatus::Serving as i32);
}

/// Reads the feed from `_first` to its end, page by page, and checks every
/// event came once, in order.
async fn assert_read_exactly_once<S>(client: &Client<S>)
where
    S: zeroeventhub::client::HttpService + Clone,
{
    let mut request = FeedRequest::new(PARTITIONS, [(0, Cursor::first()), (1, Cursor::first())])
        .expect("a request")
        .with_page_size_hint(10_000);
    let mut next = [0u64; PARTITIONS as usize];
    // At most this many pages: the feed holds 30,000 events.
    for _ in 0..10 {
        let page = client.fetch_page(&request).await.expect("a page");
        if page.events().is_empty() {
            break;
        }
        for event in page.events() {
            let data: serde_json::Value = event.data.deserialize().expect("JSON data");
            let slot = &mut next[event.partition as usize];
            assert_eq!(data["i"], *slot, "partition {}", event.partition);
            *slot += 1;
        }
        request = page.next_request(&request);
    }
    assert_eq!(next, [PER_PARTITION; PARTITIONS as usize]);
}

#[tokio::test]
async fn grpc_and_the_feed_share_a_tonic_server_over_http1() {
    let feed = numbered_feed();
    let addr = serve(&feed, true).await;

    assert_healthy(addr).await;
    let client = Client::builder(
        format!("http://{addr}/feed/v1").parse().unwrap(),
        PARTITIONS,
    )
    .build();
    assert_read_exactly_once(&client).await;
    assert_healthy(addr).await;
}
#[tokio::test]
async fn grpc_and_the_feed_share_a_tonic_server_over_http2() {
    let feed = numbered_feed();
    let addr = serve(&feed, false).await;

    assert_healthy(addr).await;
    let url: http::Uri = format!("http://{addr}/feed/v1").parse().unwrap();
    let client = Client::builder(url.clone(), PARTITIONS)
        .http2_prior_knowledge()
        .build();
    assert_read_exactly_once(&client).await;
    assert_healthy(addr).await;

    // Over HTTP/1.1, the answer says why: the server speaks only HTTP/2.
    let http1 = Client::builder(url, PARTITIONS).build();
    let request = FeedRequest::new(PARTITIONS, [(0, Cursor::first())]).unwrap();
    let error = http1
        .fetch_page(&request)
        .await
        .expect_err("HTTP/1.1 is refused");
    assert!(error.is_http2_only(), "{error}");
}
