//! The publishing side: a feed as a tower [`Service`](tower_service::Service).
//!
//! Implement [`FeedReader`] over your store (or use the in-memory
//! [`MemoryFeed`]), wrap it in a [`FeedService`], and mount that in axum with
//! `Router::route_service`, in hyper, or behind any tower-http layer. The
//! service parses the consumer's cursors, calls the reader, and streams the
//! page as NDJSON through [`FeedBody`].
//!
//! # Adding a feed to an app as a layer
//!
//! [`FeedLayer`] serves a feed on one path in front of any service, as a
//! tower-http middleware does: requests for that path (whatever their
//! query) go to the feed, every other request to the app. With
//! `tower::ServiceBuilder` around an app, or with axum's `Router::layer`:
//!
//! ```
//! use axum::Router;
//! use axum::routing::get;
//! use tower::ServiceBuilder;
//! use zeroeventhub::server::{FeedLayer, MemoryFeed};
//!
//! let feed = MemoryFeed::new(2);
//! let app: Router = Router::new().route("/", get(|| async { "the app" }));
//!
//! // Around the app, to serve with `Server` (feature `serve`) or hyper...
//! let service = ServiceBuilder::new()
//!     .layer(FeedLayer::new("/feed/v1", feed.service()))
//!     .service(app.clone());
//! // ...or in the router, for `axum::serve`.
//! let app = app.layer(FeedLayer::new("/feed/v1", feed.service()));
//! # let _ = (service, app);
//! ```
//!
//! The route ([`FeedRoute`]) keeps the app's error type (`Infallible` for
//! axum's router) and streams the feed's pages unboxed; see its docs for
//! how the path is matched.
//!
//! # Long polling
//!
//! A request with `wait=<seconds>` asks the service to hold it until an
//! event is appended to one of its partitions. [`FeedService`] clamps the
//! wait, caps how many requests wait at once, and hands the reader a
//! deadline ([`ReadContext::wait_deadline`]). A reader honours it with an
//! [`AppendSignal`], which the store's writer notifies after each append:
//! [`AppendSignal::wait_for_news`] is the whole waiting step of a reader.
//! [`MemoryFeed`] does so; a reader that ignores the deadline simply answers
//! at once, which the protocol allows. Waiting needs a tokio runtime with
//! its timer.

mod body;
mod memory;
mod reader;
pub mod route;
#[cfg(feature = "serve")]
mod serve;
mod service;
mod wake;

pub use body::{FeedBody, FeedBodyError};
pub use memory::{MemoryFeed, MemoryPage, UnknownPartition};
pub use reader::{FeedReader, ReadContext, ReadError};
pub use route::{FeedLayer, FeedRoute};
#[cfg(feature = "serve")]
pub use serve::Server;
pub use service::{FeedService, ResponseFuture};
pub use wake::{AppendListener, AppendSignal, WaitEnd};

// The outbox feeds, where users look for them first.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use crate::outbox::{
    InvalidTableName, OutboxError, OutboxEvent, OutboxPage, TableName, partition_for_key,
};
#[cfg(feature = "postgres")]
pub use crate::postgres::{
    Appended, HorizonHolder, NotifyAfterCommit, PostgresFeed, PostgresOutbox,
};
#[cfg(feature = "sqlite")]
pub use crate::sqlite::{SqliteFeed, SqliteOutbox};
