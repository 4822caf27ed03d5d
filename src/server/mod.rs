//! The publishing side: a feed as a tower [`Service`](tower_service::Service).
//!
//! Implement [`FeedReader`] over your store (or use the in-memory
//! [`MemoryFeed`]), wrap it in a [`FeedService`], and mount that in axum with
//! `Router::route_service`, in hyper, or behind any tower-http layer. The
//! service parses the consumer's cursors, calls the reader, and streams the
//! page as NDJSON through [`FeedBody`].
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
#[cfg(feature = "serve")]
mod serve;
mod service;
mod wake;

pub use body::{FeedBody, FeedBodyError};
pub use memory::{MemoryFeed, MemoryPage, UnknownPartition};
pub use reader::{FeedReader, ReadContext, ReadError};
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
pub use crate::postgres::{Appended, NotifyAfterCommit, PostgresFeed, PostgresOutbox};
#[cfg(feature = "sqlite")]
pub use crate::sqlite::{SqliteFeed, SqliteOutbox};
