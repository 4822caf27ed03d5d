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
//! - `server`: the feed as a `tower::Service` ([`server::FeedService`]) over
//!   a [`server::FeedReader`] you implement, and [`server::MemoryFeed`], an
//!   in-memory feed.
//! - `client`: a consumer over any HTTP `tower::Service`, with retry and
//!   timeouts, pages that tell apart what is safe to commit, and typed errors.
//!
//! # Serving a feed with axum
//!
//! ```no_run
//! use zeroeventhub::protocol::{Event, RawJson};
//! use zeroeventhub::server::MemoryFeed;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let feed = MemoryFeed::new(2);
//! feed.append(Event::new(0, RawJson::from_bytes(r#"{"hello":"world"}"#)?))?;
//!
//! let app = axum::Router::new().route_service("/feed/v1", feed.service());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! | feature        | default | what it adds |
//! |----------------|---------|--------------|
//! | `server`       | yes     | `FeedService`, `FeedReader`, `MemoryFeed` |
//! | `client`       | yes     | the client over any HTTP service, pages, retry policy |
//! | `hyper-client` | yes     | the default transport: hyper-util's pooled HTTP/1 client |
//! | `rustls`       | no      | HTTPS for the default transport, through hyper-rustls |
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod protocol;

#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "client")]
pub mod client;

pub mod workload;

/// A boxed error, as tower and hyper use them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
