//! The wire model shared by the server and the client: cursors, the feed
//! request and its query string, events and checkpoints, and the NDJSON line
//! codec in each direction.
//!
//! Everything here is plain data and pure functions; no I/O.

mod cursor;
mod decode;
mod encode;
pub(crate) mod error;
mod item;
mod json;
pub(crate) mod query;
mod request;

pub use cursor::{Cursor, InvalidCursor};
pub use decode::{DecodeError, DecodeErrorKind, LineDecoder};
pub use encode::LineEncoder;
pub use error::RequestError;
pub use item::{Checkpoint, Event, FeedItem, Headers};
pub use json::RawJson;
pub use request::{FeedRequest, HeaderSelection};
