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

/// The longest line, in bytes (without its `\n`), that the crate's client
/// accepts by default, and so the longest event an outbox writer takes: a
/// writer refuses what no consumer with the default settings could read.
/// [`LineDecoder::with_max_line_length`] (and the client's
/// `max_line_length`) raise a consumer's limit; raising the writer's is a
/// change of the protocol between publisher and consumers, not a setting.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
pub use decode::{DecodeError, DecodeErrorKind, LineDecoder};
pub use encode::LineEncoder;
pub use error::RequestError;
pub use item::{Checkpoint, Event, FeedItem, Headers};
pub use json::RawJson;
pub use request::{FeedRequest, HeaderSelection};
