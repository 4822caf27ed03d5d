//! The publishing side: a feed as a tower [`Service`](tower_service::Service).
//!
//! Implement [`FeedReader`] over your store (or use the in-memory
//! [`MemoryFeed`]), wrap it in a [`FeedService`], and mount that in axum with
//! `Router::route_service`, in hyper, or behind any tower-http layer. The
//! service parses the consumer's cursors, calls the reader, and streams the
//! page as NDJSON through [`FeedBody`].

mod body;
mod memory;
mod reader;
#[cfg(feature = "serve")]
mod serve;
mod service;

pub use body::{FeedBody, FeedBodyError};
pub use memory::{MemoryFeed, MemoryPage, UnknownPartition};
pub use reader::{FeedReader, ReadContext, ReadError};
#[cfg(feature = "serve")]
pub use serve::Server;
pub use service::{FeedService, ResponseFuture};
