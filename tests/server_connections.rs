//! `Server` against clients that hold connections without using them: a
//! silent connection, a request head that never ends, a kept-alive
//! connection left idle, more connections than the cap, and a consumer that
//! stops reading. Timers run on paused tokio time: the waits below are
//! virtual, and each one only says which timer must have fired first.
#![cfg(feature = "serve")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream;
use support::readers::{FnReader, checkpoint, drop_signal, event, guarded};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use zeroeventhub::protocol::{Event, RawJson};
use zeroeventhub::server::{FeedService, MemoryFeed, ReadContext, Server};

const REQUEST: &[u8] = b"GET /feed?n=1&cursor0=_first HTTP/1.1\r\nhost: feed\r\n\r\n";

/// A one-event feed served by `server` on a loopback port.
async fn start(server: Server) -> SocketAddr {
    let feed = MemoryFeed::new(1);
    feed.append(Event::new(0, RawJson::from_bytes(r#"{"n":1}"#).unwrap()))
        .unwrap();
    start_service(server, feed.service()).await
}

async fn start_service<R: zeroeventhub::server::FeedReader>(
    server: Server,
    service: FeedService<R>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, service));
    addr
}

/// Reads one whole answer to [`REQUEST`]: a head and a body, of the
/// announced length or chunked.
async fn read_answer(tcp: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while !answer_is_whole(&answer) {
        let read = tcp.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the answer is cut: {answer:?}");
        answer.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8(answer).unwrap()
}

fn answer_is_whole(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().unwrap())
    });
    match length {
        Some(length) => body.len() >= length,
        None => body.ends_with("\r\n0\r\n\r\n"),
    }
}

/// Whether the server closed `tcp` within `wait`.
async fn closed_within(tcp: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0; 1];
    match timeout(wait, tcp.read(&mut byte)).await {
        Err(_) => false,
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("the server sent something unasked"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let addr = start(Server::new()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert!(!closed_within(&mut tcp, Duration::from_secs(9)).await);
    assert!(closed_within(&mut tcp, Duration::from_secs(2)).await);
}

#[tokio::test(start_paused = true)]
async fn a_request_head_that_never_ends_is_closed_at_the_header_timeout() {
    let addr = start(Server::new()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&REQUEST[..30]).await.unwrap();
    assert!(!closed_within(&mut tcp, Duration::from_secs(9)).await);
    assert!(closed_within(&mut tcp, Duration::from_secs(2)).await);
}

#[tokio::test(start_paused = true)]
async fn a_kept_alive_connection_waits_the_idle_timeout_for_its_next_request() {
    let addr = start(Server::new()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(REQUEST).await.unwrap();
    assert!(read_answer(&mut tcp).await.starts_with("HTTP/1.1 200 OK"));
    // Well past the header timeout, the idle connection is still there
    // and serves its next request.
    assert!(!closed_within(&mut tcp, Duration::from_secs(50)).await);
    tcp.write_all(REQUEST).await.unwrap();
    assert!(read_answer(&mut tcp).await.starts_with("HTTP/1.1 200 OK"));
    assert!(!closed_within(&mut tcp, Duration::from_secs(59)).await);
    assert!(closed_within(&mut tcp, Duration::from_secs(2)).await);
}

#[tokio::test(start_paused = true)]
async fn the_next_request_head_has_the_header_timeout_from_its_first_byte() {
    let addr = start(Server::new()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(REQUEST).await.unwrap();
    read_answer(&mut tcp).await;
    assert!(!closed_within(&mut tcp, Duration::from_secs(30)).await);
    tcp.write_all(&REQUEST[..30]).await.unwrap();
    assert!(!closed_within(&mut tcp, Duration::from_secs(9)).await);
    assert!(closed_within(&mut tcp, Duration::from_secs(2)).await);
}

#[tokio::test(start_paused = true)]
async fn connections_past_the_cap_wait_until_idle_ones_are_closed() {
    let addr = start(Server::new().max_connections(3)).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // The kernel completes the handshake; the server does not take the
    // connection while three others hold every slot.
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting.write_all(REQUEST).await.unwrap();
    let mut first = [0; 1];
    assert!(
        timeout(Duration::from_secs(5), waiting.read(&mut first))
            .await
            .is_err(),
        "served while the cap is reached"
    );
    // Once the silent connections are closed at the header timeout, the
    // waiting one is served.
    for tcp in &mut silent {
        assert!(closed_within(tcp, Duration::from_secs(10)).await);
    }
    let answer = timeout(Duration::from_secs(5), read_answer(&mut waiting))
        .await
        .expect("served once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_stops_reading_is_cut_off_and_the_reader_dropped() {
    let (guard, mut dropped) = drop_signal();
    let guard = std::sync::Mutex::new(Some(guard));
    let endless = FnReader::new(move |_: &ReadContext<'_>| {
        let lines = (0u64..).flat_map(|n| {
            [
                Ok(event(0, &format!(r#"{{"padding":"{:0>200}"}}"#, n))),
                Ok(checkpoint(0, &n.to_string())),
            ]
        });
        let guard = guard.lock().unwrap().take().expect("one page only");
        Ok(guarded(stream::iter(lines).boxed(), guard))
    });
    let service = FeedService::new(endless, 1).max_page_duration(Duration::MAX);
    let addr = start_service(Server::new(), service).await;

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(REQUEST).await.unwrap();
    // The consumer reads the head and a little, then stops reading.
    let mut head = [0; 1024];
    assert!(tcp.read(&mut head).await.unwrap() > 0);
    assert!(
        timeout(Duration::from_secs(55), &mut dropped)
            .await
            .is_err(),
        "the reader lives while the stall is shorter than the timeout"
    );
    timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the reader is dropped at the stall timeout")
        .unwrap();
}

/// The `serve` example limited to 40 file descriptors, given more silent
/// connections than it can hold: accepts fail, back off, and resume as the
/// header timeout (1 s here, in real time) frees descriptors, so that a
/// consumer's request sent in the middle of it all is answered.
#[test]
fn running_out_of_file_descriptors_is_recovered_from() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};

    let serve = support::examples::binary("serve");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 40 && exec \"$0\" --addr 127.0.0.1:0 --partitions 1 --events 3 --header-timeout 1")
        .arg(&serve)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the serve example starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("serve says where it listens: {line:?}"));
    let addr: SocketAddr = url.trim_end_matches("/feed/v1").parse().unwrap();

    let silent: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut consumer = std::net::TcpStream::connect(addr).unwrap();
    consumer
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    consumer
        .write_all(
            b"GET /feed/v1?n=1&cursor0=_first HTTP/1.1\r\nhost: feed\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
    let mut answer = String::new();
    let outcome = consumer.read_to_string(&mut answer);

    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    drop(silent);
    outcome.expect("the consumer is answered");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
    assert!(
        answer.contains(r#"{"partition":0,"cursor":"2"}"#),
        "{answer:?}"
    );
    assert!(
        log.contains("accept failed") && log.contains("Too many open files"),
        "the descriptors ran out: {log}"
    );
}

#[tokio::test]
async fn http2_is_served_on_the_same_port() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let addr = start(Server::new()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<bytes::Bytes>>();
    let uri = format!("http://{addr}/feed?n=1&cursor0=_first")
        .parse()
        .unwrap();
    let response = timeout(Duration::from_secs(20), client.get(uri))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        "{\"partition\":0,\"data\":{\"n\":1}}\n{\"partition\":0,\"cursor\":\"0\"}\n"
    );
}
