//! ZeroEventHub: broker-less event feeds over plain HTTP, exactly once.
//!
//! A publisher keeps its events in its own database and serves them as a
//! *feed*: a GET endpoint that consumers poll with one cursor per partition.
//! The answer is NDJSON, events and checkpoints; a consumer stores the last
//! checkpoint of each partition in the same database transaction as the
//! effect of the events before it, and so consumes every event exactly once,
//! with no broker and no state on the server.
//!
//! This crate is the Rust implementation, built on tower:
//!
//! - [`protocol`]: the wire model both sides share: [`Cursor`](protocol::Cursor),
//!   [`FeedRequest`](protocol::FeedRequest), events and checkpoints, and the
//!   NDJSON line codec.
//! - `server`: the feed as a `tower::Service` (`server::FeedService`) over
//!   a `server::FeedReader` you implement, and `server::MemoryFeed`, an
//!   in-memory feed.
//! - `outbox`: feeds over a database table that the publisher writes in its
//!   own transactions, and what they share; `postgres` and `sqlite`, one
//!   room per database: its outbox writer, its feed and its cursor store.
//! - `client`: a consumer over any HTTP `tower::Service`, with retry and
//!   timeouts, pages that tell apart what is safe to commit, and typed errors.
//! - `consumer`: the consumer runtime over the client: your handler gets
//!   each page's events in a transaction of your database that also stores
//!   the cursors, with cursor stores in memory, SQLite and PostgreSQL.
//! - [`guide`]: the guides, one page a topic: serving, connections, tonic,
//!   databases, the runtime, consuming by hand, long polling, `tail`,
//!   performance and the layout.
//!
//! # A feed and a consumer in a few lines
//!
//! ```
//! use zeroeventhub::client::Client;
//! use zeroeventhub::protocol::{Cursor, Event, FeedRequest, RawJson};
//! use zeroeventhub::server::MemoryFeed;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The publisher: an in-memory feed of two partitions.
//! let feed = MemoryFeed::new(2);
//! feed.append(Event::new(0, RawJson::from_bytes(r#"{"hello":"world"}"#)?))?;
//!
//! // `feed.service()` is a tower Service: mount it with axum's
//! // `Router::route_service("/feed/v1", feed.service())`. Here the consumer
//! // uses it directly as its transport, with no network in between.
//! let client = Client::builder("http://localhost/feed/v1".parse()?, 2).build_with(feed.service());
//!
//! // The consumer: read both partitions from the start.
//! let request = FeedRequest::new(2, [(0, Cursor::first()), (1, Cursor::first())])?;
//! let page = client.fetch_page(&request).await?;
//! assert_eq!(page.events()[0].data.as_str(), r#"{"hello":"world"}"#);
//! // Store the events and these cursors in one transaction, then go on from them.
//! assert_eq!(page.next_cursors()[0], (0, Cursor::new("0")?));
//! assert_eq!(page.next_cursors()[1], (1, Cursor::first()));
//! # Ok(())
//! # }
//! ```
//!
//! # Serving a feed with axum
//!
//! ```no_run
//! use zeroeventhub::protocol::{Event, RawJson};
//! use zeroeventhub::server::{MemoryFeed, Server};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let feed = MemoryFeed::new(2);
//! feed.append(Event::new(0, RawJson::from_bytes(r#"{"hello":"world"}"#)?))?;
//!
//! let app = axum::Router::new().route_service("/feed/v1", feed.service());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // `axum::serve`, with timeouts for idle and stalled connections and a cap.
//! Server::new().serve(listener, app).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Consuming into your database
//!
//! `consumer::Runtime` is the loop, done once: it hands each page's events
//! to your handler with an open transaction of your database, stores the
//! next cursors in the same transaction, and commits, retrying what fails
//! and sharing partitions between instances (on PostgreSQL).
//!
//! ```
//! # #[cfg(all(feature = "server", feature = "sqlite"))]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sqlx::{Sqlite, Transaction};
//! use zeroeventhub::client::Client;
//! use zeroeventhub::consumer::{Handler, Runtime, SqliteStore};
//! use zeroeventhub::protocol::{Event, RawJson};
//! use zeroeventhub::server::MemoryFeed;
//!
//! /// Keeps each event's data as a row, in the page's transaction.
//! struct Keep;
//!
//! impl Handler<Transaction<'static, Sqlite>> for Keep {
//!     type Error = sqlx::Error;
//!
//!     async fn handle(
//!         &mut self,
//!         transaction: &mut Transaction<'static, Sqlite>,
//!         events: &[Event],
//!     ) -> Result<(), sqlx::Error> {
//!         for event in events {
//!             sqlx::query("INSERT INTO kept (data) VALUES (?)")
//!                 .bind(event.data.as_str())
//!                 .execute(&mut **transaction)
//!                 .await?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let feed = MemoryFeed::new(2);
//! feed.append(Event::new(0, RawJson::from_bytes(r#"{"hello":"world"}"#)?))?;
//! let client = Client::builder("http://localhost/feed/v1".parse()?, 2).build_with(feed.service());
//!
//! // One connection: each connection to `sqlite::memory:` is a database of its own.
//! let pool = sqlx::sqlite::SqlitePoolOptions::new()
//!     .max_connections(1)
//!     .connect("sqlite::memory:")
//!     .await?;
//! sqlx::query("CREATE TABLE kept (data TEXT NOT NULL)").execute(&pool).await?;
//! let store = SqliteStore::new(pool.clone());
//! store.migrate().await?;
//!
//! let runtime = Runtime::new(client, store, "keeper");
//! let stats = runtime.stats();
//! // Here it stops once caught up; a service stops it on SIGTERM.
//! runtime.run(Keep, async move { stats.wait_for(|stats| stats.caught_up).await; }).await?;
//! let kept: Vec<String> = sqlx::query_scalar("SELECT data FROM kept").fetch_all(&pool).await?;
//! assert_eq!(kept, [r#"{"hello":"world"}"#]);
//! # Ok(())
//! # }
//! # #[cfg(all(feature = "server", feature = "sqlite"))]
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! `examples/quickstart.rs` runs it all on SQLite files over real HTTP: a
//! shop that writes orders and their events in one transaction (an outbox
//! table) and serves them, a billing service that consumes them with the
//! runtime, crashes half-way and restarts, and a summary that checks every
//! order was invoiced exactly once.
//!
//! # Features
//!
//! | feature        | default | what it adds |
//! |----------------|---------|--------------|
//! | `server`       | yes     | `FeedService`, `FeedReader`, `MemoryFeed` |
//! | `serve`        | yes     | `Server`: TCP serving with header, idle and stall timeouts and a connection cap |
//! | `client`       | yes     | the client over any HTTP service, pages, retry policy, the consumer runtime |
//! | `hyper-client` | yes     | the default transport: hyper-util's pooled client, HTTP/1.1 or HTTP/2 |
//! | `rustls`       | no      | HTTPS for the default transport, through hyper-rustls |
//! | `sqlite`       | yes     | with `server`: `SqliteOutbox` and `SqliteFeed`, an outbox table and its feed over SQLite; with `client`: the cursor store `SqliteStore` |
//! | `postgres`     | no      | with `server`: `PostgresOutbox` and `PostgresFeed`, the same over PostgreSQL, and `NotifyAfterCommit`, a writer for many concurrent transactions; with `client`: `PostgresStore`, whose instances share the partitions |
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod protocol;

#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "client")]
pub mod consumer;

#[cfg(all(feature = "server", any(feature = "postgres", feature = "sqlite")))]
pub mod outbox;

#[cfg(all(feature = "postgres", any(feature = "server", feature = "client")))]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;

#[cfg(all(feature = "sqlite", any(feature = "server", feature = "client")))]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

pub mod workload;

pub mod guide;

// The table-name rule the outbox feeds and the cursor stores share.
#[cfg(all(
    any(feature = "postgres", feature = "sqlite"),
    any(feature = "server", feature = "client")
))]
mod table;

// The README's examples are compiled with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The `http` crate, whose types the client's requests and responses are
/// made of: a layer of one's own needs no dependency on it.
#[cfg(feature = "client")]
pub use http;

/// A boxed error, as tower and hyper use them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
