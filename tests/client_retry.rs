//! Retry and timeouts of the default stack, over a scripted transport in
//! paused time: every wait below is virtual, and exact.
#![cfg(feature = "client")]

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{Empty, StreamBody};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::retry::RetryLayer;
use zeroeventhub::BoxError;
use zeroeventhub::client::{
    Client, ClientBuilder, Error, HeadTimeoutLayer, HttpService, RetryPolicy,
};
use zeroeventhub::protocol::{Cursor, FeedItem, FeedRequest};

type Body = StreamBody<BoxStream<'static, Result<Frame<Bytes>, BoxError>>>;

/// What the scripted transport does for one request.
enum Step {
    /// Fails to send, with an I/O error of this kind as the cause.
    Fail(ErrorKind),
    /// Fails to send, with this error.
    FailWith(BoxError),
    /// Never answers.
    Hang,
    /// Answers with a status, headers and a body made of these chunks; a
    /// `None` chunk is a body error, and `then_hang` leaves the body open.
    Answer {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        chunks: Vec<Option<&'static str>>,
        then_hang: bool,
    },
}

fn answer(status: u16, chunks: &[&'static str]) -> Step {
    Step::Answer {
        status,
        headers: Vec::new(),
        chunks: chunks.iter().map(|chunk| Some(*chunk)).collect(),
        then_hang: false,
    }
}

fn ok_page() -> Step {
    answer(200, &[EVENT, CHECKPOINT])
}

const EVENT: &str = "{\"partition\":0,\"data\":{\"n\":1}}\n";
const CHECKPOINT: &str = "{\"partition\":0,\"cursor\":\"1\"}\n";

#[derive(Clone, Default)]
struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    calls: Arc<AtomicUsize>,
}

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Script {
            steps: Arc::new(Mutex::new(steps.into_iter().collect())),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn transport(
        &self,
    ) -> impl tower::Service<
        Request<Empty<Bytes>>,
        Response = Response<Body>,
        Error = BoxError,
        Future = impl Send,
    > + Clone {
        let script = self.clone();
        tower::service_fn(move |_request: Request<Empty<Bytes>>| {
            script.calls.fetch_add(1, Ordering::SeqCst);
            let step = script.steps.lock().unwrap().pop_front();
            async move {
                match step.expect("the script has a step for every request") {
                    Step::Fail(kind) => Err(BoxError::from(std::io::Error::from(kind))),
                    Step::FailWith(error) => Err(error),
                    Step::Hang => std::future::pending().await,
                    Step::Answer {
                        status,
                        headers,
                        chunks,
                        then_hang,
                    } => {
                        let frames = stream::iter(chunks.into_iter().map(|chunk| match chunk {
                            Some(text) => Ok(Frame::data(Bytes::from_static(text.as_bytes()))),
                            None => Err(BoxError::from(std::io::Error::from(
                                ErrorKind::UnexpectedEof,
                            ))),
                        }));
                        let frames: BoxStream<'static, _> = if then_hang {
                            frames.chain(stream::pending()).boxed()
                        } else {
                            frames.boxed()
                        };
                        let mut response = Response::new(StreamBody::new(frames));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        for (name, value) in headers {
                            response.headers_mut().insert(name, value.parse().unwrap());
                        }
                        Ok(response)
                    }
                }
            }
        })
    }
}

fn client(script: &Script) -> Client<impl HttpService + Clone> {
    Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .max_attempts(4)
        .build_with(script.transport())
}

fn request() -> FeedRequest {
    FeedRequest::new(1, [(0, Cursor::first())]).unwrap()
}

async fn read_page<S>(client: &Client<S>) -> Result<Vec<FeedItem>, Error>
where
    S: HttpService + Clone,
{
    client.fetch(&request()).await?.try_collect().await
}

#[tokio::test(start_paused = true)]
async fn a_503_is_retried_after_a_backoff() {
    let script = Script::new([answer(503, &["busy"]), ok_page()]);
    let started = Instant::now();
    let items = read_page(&client(&script)).await.unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(script.calls(), 2);
    // The first retry waits the base backoff (100 ms), jittered down to half.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(50) && waited <= Duration::from_millis(100),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_exactly_its_retry_after() {
    let script = Script::new([
        Step::Answer {
            status: 429,
            headers: vec![("retry-after", "7")],
            chunks: vec![Some("slow down")],
            then_hang: false,
        },
        ok_page(),
    ]);
    let started = Instant::now();
    let items = read_page(&client(&script)).await.unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(script.calls(), 2);
    assert_eq!(started.elapsed().as_millis(), 7000);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_maximum_is_returned_not_waited() {
    let script = Script::new([Step::Answer {
        status: 503,
        headers: vec![("retry-after", "3600")],
        chunks: vec![Some("down for maintenance\n"), Some("back soon")],
        then_hang: false,
    }]);
    let started = Instant::now();
    let error = read_page(&client(&script)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(script.calls(), 1);
    assert!(error.is_status());
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(
        error.body_excerpt(),
        Some("down for maintenance\nback soon")
    );
    assert_eq!(
        error.to_string(),
        "feed http://feed.test/events: the feed answered 503 Service Unavailable \
         (retry after 3600s): down for maintenance; retry later"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_under_the_request_is_retried() {
    // What a stale pooled connection looks like once its cause is reached:
    // the server closed or reset it while the request was on its way.
    for kind in [
        ErrorKind::ConnectionReset,
        ErrorKind::UnexpectedEof,
        ErrorKind::BrokenPipe,
    ] {
        let script = Script::new([Step::Fail(kind), ok_page()]);
        let items = read_page(&client(&script)).await.unwrap();
        assert_eq!(items.len(), 2, "{kind:?}");
        assert_eq!(script.calls(), 2, "{kind:?}");
    }
}

/// hyper's errors for a connection that the server closed, made for real
/// over loopback: the request was on its way (`incomplete`), or the
/// connection was gone before it was sent (`closed`, `canceled`).
async fn hyper_errors_of_a_closed_connection() -> Vec<hyper::Error> {
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // The first connection is closed once the request came; the second
        // at once.
        let (mut socket, _) = listener.accept().await.unwrap();
        let _ = socket.read(&mut [0; 1024]).await;
        drop(socket);
        let (socket, _) = listener.accept().await.unwrap();
        drop(socket);
    });
    let connect = || async {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap()
    };
    let get = || Request::get("/feed").body(Empty::new()).unwrap();

    let (mut sender, connection) = connect().await;
    tokio::spawn(connection);
    let incomplete = sender.send_request(get()).await.unwrap_err();
    assert!(incomplete.is_incomplete_message(), "{incomplete:?}");

    let (mut sender, connection) = connect().await;
    let _ = connection.await;
    let closed = sender.ready().await.unwrap_err();
    assert!(closed.is_closed(), "{closed:?}");
    let canceled = sender.send_request(get()).await.unwrap_err();
    assert!(canceled.is_canceled(), "{canceled:?}");
    vec![incomplete, closed, canceled]
}

#[tokio::test]
async fn hyper_errors_of_a_closed_connection_are_retried() {
    for error in hyper_errors_of_a_closed_connection().await {
        let shown = format!("{error:?}");
        let script = Script::new([Step::FailWith(error.into()), ok_page()]);
        let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
            .retry_policy(
                RetryPolicy::new().with_backoff(Duration::from_millis(1), Duration::from_millis(1)),
            )
            .build_with(script.transport());
        let items = read_page(&client).await.unwrap();
        assert_eq!(items.len(), 2, "{shown}");
        assert_eq!(script.calls(), 2, "{shown}");
    }
}

#[tokio::test(start_paused = true)]
async fn attempts_are_capped() {
    let script = Script::new((0..10).map(|_| answer(502, &[])));
    let started = Instant::now();
    let error = read_page(&client(&script)).await.unwrap_err();
    assert_eq!(script.calls(), 4);
    assert_eq!(error.status(), Some(StatusCode::BAD_GATEWAY));
    // Three backoffs of at most 100, 200 and 400 ms, at least half each.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited <= Duration::from_millis(700),
        "{waited:?}"
    );

    let script = Script::new((0..10).map(|_| Step::Fail(ErrorKind::ConnectionRefused)));
    let error = read_page(&client(&script)).await.unwrap_err();
    assert_eq!(script.calls(), 4);
    assert!(error.is_connect(), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn no_retry_once_a_line_was_handed_out() {
    let script = Script::new([
        Step::Answer {
            status: 200,
            headers: Vec::new(),
            chunks: vec![
                Some(EVENT),
                Some(CHECKPOINT),
                Some("{\"partition\":0,"),
                None,
            ],
            then_hang: false,
        },
        ok_page(),
    ]);
    let client = client(&script);
    let mut lines = client.fetch(&request()).await.unwrap();
    assert!(matches!(lines.next().await, Some(Ok(FeedItem::Event(_)))));
    assert!(matches!(
        lines.next().await,
        Some(Ok(FeedItem::Checkpoint(_)))
    ));
    let error = lines.next().await.unwrap().unwrap_err();
    assert!(error.is_truncated(), "{error:?}");
    assert!(lines.next().await.is_none());
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_retried() {
    for status in [400, 401, 403, 404, 500] {
        let script = Script::new([answer(status, &["no"]), ok_page()]);
        let error = read_page(&client(&script)).await.unwrap_err();
        assert_eq!(script.calls(), 1, "{status}");
        assert_eq!(error.status().map(|s| s.as_u16()), Some(status));
    }
    let script = Script::new([Step::Fail(ErrorKind::InvalidData), ok_page()]);
    let error = read_page(&client(&script)).await.unwrap_err();
    assert_eq!(script.calls(), 1);
    assert!(!error.is_connect() && !error.is_timeout() && !error.is_status());
}

#[tokio::test(start_paused = true)]
async fn a_head_that_never_comes_times_out_and_is_not_retried() {
    let script = Script::new([Step::Hang, ok_page()]);
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .head_timeout(Duration::from_secs(5))
        .build_with(script.transport());
    let started = Instant::now();
    let error = read_page(&client).await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_goes_quiet_times_out_after_the_lines_received() {
    let script = Script::new([Step::Answer {
        status: 200,
        headers: Vec::new(),
        chunks: vec![Some(EVENT), Some("{\"partition\":0,\"cur")],
        then_hang: true,
    }]);
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .idle_timeout(Duration::from_secs(3))
        .build_with(script.transport());
    let mut lines = client.fetch(&request()).await.unwrap();
    assert!(matches!(lines.next().await, Some(Ok(FeedItem::Event(_)))));
    // The consumer being slow does not count as the feed being idle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let waiting = Instant::now();
    let error = lines.next().await.unwrap().unwrap_err();
    assert!(error.is_timeout() && !error.is_truncated(), "{error:?}");
    assert_eq!(waiting.elapsed(), Duration::from_secs(3));
    assert!(lines.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn user_layers_run_on_every_attempt() {
    let script = Script::new([answer(503, &[]), answer(504, &[]), ok_page()]);
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .layer(tower::util::MapRequestLayer::new(
            move |request: Request<Empty<Bytes>>| {
                counter.fetch_add(1, Ordering::SeqCst);
                request
            },
        ))
        .build_with(script.transport());
    read_page(&client).await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

fn retry_after(status: u16, seconds: &'static str) -> Step {
    Step::Answer {
        status,
        headers: vec![("retry-after", seconds)],
        chunks: Vec::new(),
        then_hang: false,
    }
}

#[tokio::test(start_paused = true)]
async fn the_largest_backoff_is_clamped_not_a_panic() {
    let policy = RetryPolicy::new().with_backoff(Duration::MAX, Duration::MAX);
    let script = Script::new([answer(503, &[]), ok_page()]);
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .retry_policy(policy)
        .page_timeout(Duration::MAX)
        .build_with(script.transport());
    let started = Instant::now();
    read_page(&client).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= RetryPolicy::CEILING / 2 && waited <= RetryPolicy::CEILING,
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unbounded_max_retry_after_is_clamped_to_the_ceiling() {
    let policy = RetryPolicy::new().with_max_retry_after(Duration::MAX);
    assert_eq!(policy.max_retry_after(), RetryPolicy::CEILING);
    // A day is past the ceiling: returned at once, not waited for.
    let script = Script::new([retry_after(503, "86400"), ok_page()]);
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .max_retry_after(Duration::MAX)
        .build_with(script.transport());
    let started = Instant::now();
    let error = read_page(&client).await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(86400)));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_ceiling_is_fifteen_minutes_and_a_wait_below_it_is_honoured() {
    assert_eq!(RetryPolicy::CEILING, Duration::from_secs(15 * 60));
    // Ten minutes is under the ceiling: with the largest setting, waited.
    let script = Script::new([retry_after(503, "600"), ok_page()]);
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .max_retry_after(Duration::MAX)
        .page_timeout(Duration::MAX)
        .build_with(script.transport());
    let started = Instant::now();
    read_page(&client).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(600));
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_lower_max_retry_after_returns_what_the_default_would_wait_for() {
    let policy = RetryPolicy::new().with_max_retry_after(Duration::from_secs(5));
    assert_eq!(policy.max_retry_after(), Duration::from_secs(5));
    let script = Script::new([retry_after(429, "10"), ok_page()]);
    let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
        .retry_policy(policy)
        .build_with(script.transport());
    let error = read_page(&client).await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_of_the_policy_is_what_is_made() {
    for attempts in [1, 2, 3] {
        let policy = RetryPolicy::new().with_max_attempts(attempts);
        assert_eq!(policy.max_attempts(), attempts);
        let script = Script::new((0..5).map(|_| answer(503, &[])));
        let client = Client::builder("http://feed.test/events".parse().unwrap(), 1)
            .retry_policy(policy)
            .build_with(script.transport());
        assert!(read_page(&client).await.unwrap_err().is_status());
        assert_eq!(script.calls(), attempts as usize);
    }
    assert_eq!(RetryPolicy::new().with_max_attempts(0).max_attempts(), 1);
    assert_eq!(
        RetryPolicy::new().max_attempts(),
        RetryPolicy::DEFAULT_MAX_ATTEMPTS
    );
}

/// The builder's client, and the same one composed by hand: tower's
/// `RetryLayer` with the policy, `HeadTimeoutLayer`, the transport, handed
/// to `Client::new`. Both in one array, so they are one type, too.
fn both_ways(
    script: &Script,
    policy: RetryPolicy,
    head_timeout: Duration,
) -> [Client<impl HttpService + Clone>; 2] {
    let url: http::Uri = "http://feed.test/events".parse().unwrap();
    let built = Client::builder(url.clone(), 1)
        .retry_policy(policy.clone())
        .head_timeout(head_timeout)
        .build_with(script.transport());
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(HeadTimeoutLayer::new(head_timeout))
        .service(script.transport());
    let composed = Client::new(stack, url, 1);
    [built, composed]
}

/// What a client did with a script: what it read (or its error), how many
/// requests it sent, and how long it took.
#[derive(Debug, PartialEq)]
struct Outcome {
    read: Result<Vec<FeedItem>, String>,
    calls: usize,
    took: Duration,
}

/// Runs `steps` through the client both ways, each over a fresh script,
/// reading a page for `request`.
async fn run_both_ways(
    steps: impl Fn() -> Vec<Step>,
    policy: RetryPolicy,
    head_timeout: Duration,
    request: &FeedRequest,
) -> [Outcome; 2] {
    let mut outcomes = Vec::new();
    for way in 0..2 {
        let script = Script::new(steps());
        let client = both_ways(&script, policy.clone(), head_timeout)
            .into_iter()
            .nth(way)
            .unwrap();
        let started = Instant::now();
        let read = match client.fetch(request).await {
            Ok(lines) => lines.try_collect().await,
            Err(error) => Err(error),
        };
        outcomes.push(Outcome {
            read: read.map_err(|error| error.to_string()),
            calls: script.calls(),
            took: started.elapsed(),
        });
    }
    outcomes.try_into().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_stack_composed_with_service_builder_behaves_as_the_builders() {
    // No jitter to tell the two apart: Retry-After waits are exact.
    let policy = RetryPolicy::new().with_max_attempts(3);
    let timeout = Duration::from_secs(5);
    let items = vec![
        FeedItem::Event(zeroeventhub::protocol::Event::new(
            0,
            zeroeventhub::protocol::RawJson::from_bytes(r#"{"n":1}"#).unwrap(),
        )),
        FeedItem::Checkpoint(zeroeventhub::protocol::Checkpoint::new(
            0,
            Cursor::new("1").unwrap(),
        )),
    ];

    // The same page.
    let [built, composed] =
        run_both_ways(|| vec![ok_page()], policy.clone(), timeout, &request()).await;
    assert_eq!(built.read.as_ref(), Ok(&items));
    assert_eq!((built.calls, built.took), (1, Duration::ZERO));
    assert_eq!(composed, built);

    // A 503 that asks for two seconds, then the page: retried once, after
    // exactly that long.
    let [built, composed] = run_both_ways(
        || vec![retry_after(503, "2"), ok_page()],
        policy.clone(),
        timeout,
        &request(),
    )
    .await;
    assert_eq!(built.read.as_ref(), Ok(&items));
    assert_eq!((built.calls, built.took), (2, Duration::from_secs(2)));
    assert_eq!(composed, built);

    // A 503 without Retry-After: the backoff, jittered differently each
    // time, so the times are compared with the bounds.
    let [built, composed] = run_both_ways(
        || vec![answer(503, &["busy"]), ok_page()],
        policy.clone(),
        timeout,
        &request(),
    )
    .await;
    for outcome in [&built, &composed] {
        assert_eq!(outcome.read.as_ref(), Ok(&items));
        assert_eq!(outcome.calls, 2);
        assert!(
            outcome.took >= Duration::from_millis(50) && outcome.took <= Duration::from_millis(100),
            "{outcome:?}"
        );
    }

    // The policy's cap on attempts: three 503s, then the status.
    let [built, composed] = run_both_ways(
        || (0..5).map(|_| retry_after(503, "1")).collect(),
        policy.clone(),
        timeout,
        &request(),
    )
    .await;
    assert!(
        built.read.as_ref().unwrap_err().contains("503"),
        "{built:?}"
    );
    assert_eq!((built.calls, built.took), (3, Duration::from_secs(2)));
    assert_eq!(composed, built);

    // A head that never comes: the head timeout, not retried.
    let [built, composed] = run_both_ways(
        || vec![Step::Hang, ok_page()],
        policy.clone(),
        timeout,
        &request(),
    )
    .await;
    assert_eq!(
        built.read.as_ref().unwrap_err(),
        "feed http://feed.test/events: the feed did not answer in time; \
         it may be overloaded, retry later; cause: request timed out"
    );
    assert_eq!((built.calls, built.took), (1, timeout));
    assert_eq!(composed, built);

    // A long-polling request's wait extends the head timeout the same way.
    let waiting = request().with_wait(Duration::from_secs(20));
    let [built, composed] =
        run_both_ways(|| vec![Step::Hang], policy.clone(), timeout, &waiting).await;
    assert!(built.read.is_err(), "{built:?}");
    assert_eq!(built.took, Duration::from_secs(25));
    assert_eq!(composed, built);
}

#[test]
fn the_head_timeout_layer_defaults_to_the_builders_timeout() {
    assert_eq!(
        HeadTimeoutLayer::default().timeout(),
        <ClientBuilder>::DEFAULT_HEAD_TIMEOUT
    );
    assert_eq!(
        HeadTimeoutLayer::DEFAULT_TIMEOUT,
        <ClientBuilder>::DEFAULT_HEAD_TIMEOUT
    );
}
