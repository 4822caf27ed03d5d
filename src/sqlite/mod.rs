//! SQLite, the embedded default: the outbox writer and its feed (with
//! `server`), and the consumer's cursor store (with `client`). Every
//! SQLite-specific decision of the crate is here.
//!
//! | file | what it holds |
//! |---|---|
//! | `outbox.rs` | [`SqliteOutbox`]: the table, the writer, and every statement |
//! | `feed.rs` | [`SqliteFeed`]: pages read in chunks, in commit order |
//! | `store.rs` | [`SqliteStore`]: the consumer's cursors |
//!
//! The traps a maintainer must hold in mind:
//!
//! - **One writer at a time.** SQLite holds its write lock from a
//!   transaction's first write to its commit, so positions are handed out
//!   in commit order and the feed orders by `position` alone.
//! - **No notifications between processes.** A writer in this process wakes
//!   the feeds at its commit (a commit hook); rows written by another
//!   process are found by polling.
//! - **Many small statements are cheap, a hand-over to sqlx's thread is
//!   not.** A page reads its rows in chunks, each one statement.
//!
//! # The outbox table and its statements
#![doc = include_str!("outbox.md")]

#[cfg(feature = "server")]
mod feed;
#[cfg(feature = "server")]
mod outbox;
#[cfg(feature = "client")]
mod store;

#[cfg(feature = "server")]
pub use feed::SqliteFeed;
#[cfg(feature = "server")]
pub use outbox::SqliteOutbox;
#[cfg(feature = "client")]
pub use store::SqliteStore;
