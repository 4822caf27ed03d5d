//! The consumer side: a [`Client`] over any HTTP service, the default stack
//! around hyper-util's client, pages for exactly-once consumption, and
//! errors a caller can act on.
//!
//! - [`Client::builder`] assembles the default stack: retry with
//!   [`RetryPolicy`] (connection failures, `429`, `502`-`504`, with backoff
//!   and `Retry-After`), a timeout on each attempt's response head
//!   ([`HeadTimeout`], which a long-polling request's wait extends), your own
//!   layers (auth, tracing), and hyper-util's pooled client
//!   (`ClientBuilder::build`, feature `hyper-client`) or any transport
//!   ([`ClientBuilder::build_with`]). [`Client::new`] takes any
//!   [`HttpService`] as it is.
//! - [`Client::fetch`] streams a page's lines as they arrive
//!   ([`FeedStream`]), never holding the page; the body has an idle timeout
//!   and a line length limit, and a body that breaks off is an error, never
//!   a short page.
//! - [`Client::fetch_page`] gives a [`Page`]: the events safe to commit,
//!   those that are not, and the next cursors. To consume a feed into a
//!   database, the [`consumer`](crate::consumer) runtime runs this loop
//!   for you, with the transaction, retries and shutdown.
//! - [`Error`] tells apart what to retry from what is broken.
//!
//! Retries happen only before the first line is handed out: tower's retry
//! decides on the response head. After that an error ends the page, and the
//! consumer resumes from its stored cursors. That, and storing events with
//! the cursor that covers them in one transaction, is what makes
//! consumption exactly-once.
//!
//! # Consuming a feed
//!
//! The loop a consumer writes: fetch a page from the stored cursors, store
//! the covered events and the next cursors in one transaction, go on from
//! there. Here with the crate's in-memory feed as the transport; against a
//! real feed, use `ClientBuilder::build`.
//!
//! ```
//! # #[cfg(feature = "server")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use zeroeventhub::client::Client;
//! use zeroeventhub::protocol::{Cursor, Event, RawJson};
//! use zeroeventhub::server::MemoryFeed;
//!
//! let feed = MemoryFeed::new(2);
//! for i in 0..100 {
//!     feed.append(Event::new(i % 2, RawJson::from_serialize(&serde_json::json!({ "n": i }))?))?;
//! }
//!
//! let client = Client::builder("http://feed.example/events".parse()?, 2)
//!     .idle_timeout(Duration::from_secs(10))
//!     .build_with(feed.service());
//!
//! // What the consumer's database holds: its events, and one cursor per partition.
//! let mut stored_events = Vec::new();
//! let mut stored_cursors = vec![(0, Cursor::first()), (1, Cursor::first())];
//!
//! loop {
//!     let request = client.request(stored_cursors.clone())?.with_page_size_hint(30);
//!     let page = client.fetch_page(&request).await?;
//!     // One transaction: the covered events and the cursors that cover them.
//!     stored_events.extend(page.events().iter().cloned());
//!     stored_cursors = page.next_cursors().to_vec();
//!     if !page.has_new_events() {
//!         break; // caught up; a long-running consumer waits for more: see below
//!     }
//! }
//! assert_eq!(stored_events.len(), 100);
//! # Ok(())
//! # }
//! # #[cfg(feature = "server")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! # Long polling
//!
//! A caught-up consumer asks with a wait ([`FeedRequest::with_wait`]): a
//! feed that supports it holds the request until an event is appended to
//! one of its partitions, and answers within milliseconds of the append,
//! or with an empty page when the wait ends. The client's page deadline
//! and the head timeout of the builder's stack grow by the wait, and
//! [`Page::next_request`] keeps it.
//!
//! A feed that does not support it (the reference implementations ignore
//! `wait`) answers at once, often with an empty page. So a loop never asks
//! again at once after a page without new events: it waits until a poll
//! interval after it sent the request. Against a feed that held the
//! request, that interval has passed and the loop goes on at once; against
//! one that did not, the loop asks once per interval, as a polling loop
//! does. The [`consumer`](crate::consumer) runtime paces itself the same
//! way.
//!
//! [`FeedRequest::with_wait`]: crate::protocol::FeedRequest::with_wait
//!
//! ```no_run
//! # #[cfg(feature = "hyper-client")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tokio::time::{Instant, sleep_until};
//! use zeroeventhub::client::Client;
//! use zeroeventhub::protocol::Cursor;
//!
//! const POLL_INTERVAL: Duration = Duration::from_secs(1);
//!
//! let client = Client::builder("http://127.0.0.1:8080/feed/v1".parse()?, 2).build();
//! let cursors = [(0, Cursor::first()), (1, Cursor::first())]; // from the database
//! let mut request = client.request(cursors)?.with_wait(Duration::from_secs(20));
//! loop {
//!     let sent = Instant::now();
//!     let page = client.fetch_page(&request).await?;
//!     // BEGIN; insert page.events(); upsert page.next_cursors(); COMMIT;
//!     if !page.has_new_events() {
//!         // No time at all after a held request; a whole interval after
//!         // a fast empty answer.
//!         sleep_until(sent + POLL_INTERVAL).await;
//!     }
//!     request = page.next_request(&request);
//! }
//! # }
//! ```
//!
//! Reading lines as they arrive instead, for pages too large to hold:
//!
//! ```
//! # #[cfg(feature = "server")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::TryStreamExt;
//! use zeroeventhub::client::Client;
//! use zeroeventhub::protocol::{Cursor, Event, FeedItem, FeedRequest, RawJson};
//! use zeroeventhub::server::MemoryFeed;
//!
//! let feed = MemoryFeed::new(1);
//! feed.append(Event::new(0, RawJson::from_bytes(r#"{"hello":"world"}"#)?))?;
//! let client = Client::builder("http://feed.example/events".parse()?, 1).build_with(feed.service());
//!
//! let request = FeedRequest::new(1, [(0, Cursor::first())])?;
//! let mut lines = client.fetch(&request).await?;
//! while let Some(item) = lines.try_next().await? {
//!     match item {
//!         FeedItem::Event(event) => println!("event {}", event.data),
//!         FeedItem::Checkpoint(checkpoint) => println!("may resume from {}", checkpoint.cursor),
//!     }
//! }
//! # Ok(())
//! # }
//! # #[cfg(feature = "server")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! # Composing the stack yourself
//!
//! The builder is the short way. Its stack is made of layers a
//! `tower::ServiceBuilder` takes as well: tower's `RetryLayer` with
//! [`RetryPolicy`], then [`HeadTimeoutLayer`], then your own layers, then
//! the transport. Handed to [`Client::new`], such a stack behaves as the
//! builder's, and is the same type ([`ClientStack`]). The body's idle
//! timeout, the page timeout and the limits are the client's own, set on
//! it ([`Client::with_idle_timeout`] and the like) with the same defaults.
//!
//! ```
//! # #[cfg(feature = "server")] {
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower::retry::RetryLayer;
//! use zeroeventhub::client::{Client, HeadTimeoutLayer, HttpRequest, RetryPolicy};
//! use zeroeventhub::http::HeaderValue;
//! use zeroeventhub::server::MemoryFeed;
//!
//! fn tag(mut request: HttpRequest) -> HttpRequest {
//!     request.headers_mut().insert("x-consumer", HeaderValue::from_static("billing"));
//!     request
//! }
//!
//! let feed = MemoryFeed::new(2);
//! let url: http::Uri = "http://feed.example/events".parse().unwrap();
//!
//! // The short way...
//! let built = Client::builder(url.clone(), 2)
//!     .max_attempts(3)
//!     .head_timeout(Duration::from_secs(10))
//!     .layer(tower::util::MapRequestLayer::new(tag))
//!     .build_with(feed.service());
//!
//! // ...and the same client, composed by hand: the retry outermost, so
//! // that each attempt has its own head timeout and runs your layers.
//! let stack = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::new().with_max_attempts(3)))
//!     .layer(HeadTimeoutLayer::new(Duration::from_secs(10)))
//!     .map_request(tag)
//!     .service(feed.service());
//! let composed = Client::new(stack, url, 2);
//! # let _ = (built, composed);
//! # }
//! ```

mod builder;
mod classify;
mod error;
mod fetch;
mod page;
pub(crate) mod retry;
mod service;
mod stream;
pub mod timeout;
#[cfg(feature = "hyper-client")]
mod transport;

pub use builder::{ClientBuilder, ClientStack};
pub use error::Error;
pub use fetch::Client;
pub use page::Page;
pub use retry::RetryPolicy;
pub use service::{HttpRequest, HttpService};
pub use stream::FeedStream;
pub use timeout::{HeadTimeout, HeadTimeoutLayer};
#[cfg(feature = "hyper-client")]
pub use transport::{Checked, HttpTransport, HttpVersionCheck};
