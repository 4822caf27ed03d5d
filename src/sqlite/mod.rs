//! SQLite, the embedded default: the outbox writer and its feed (with
//! `server`), and the consumer's cursor store (with `client`). Every
//! SQLite-specific decision of the crate is here.
//!
//! | file | what it holds |
//! |---|---|
//! | `outbox.rs` | [`SqliteOutbox`]: the table, the writer, and every statement |
//! | `feed.rs` | [`SqliteFeed`]: pages read in chunks, in commit order |
//! | `store.rs` | [`SqliteStore`]: the consumer's cursors, and the lease that keeps one instance of a consumer per file |
//! | `journal.rs` | the WAL journal mode, set by both `migrate`s |
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
//! - **WAL is the file's, not sqlx's.** sqlx sets no journal mode unless
//!   its connect options name one, and a new file is in `delete` mode, where
//!   a reader blocks the writer. Both `migrate`s set WAL when the file is in
//!   another mode (it stays with the file) and log it once; an in-memory
//!   database keeps its `memory` mode. The change cannot run in a
//!   transaction, so it comes before the migration's, and it fails while
//!   another connection holds the file in a transaction or in
//!   `locking_mode=EXCLUSIVE`: `migrate` then says so. Connect options that
//!   name another mode set it again at each connection they open, taking
//!   the file out of WAL: they must name WAL, or none.
//! - **A backup copied back counts again.** AUTOINCREMENT's counter is in
//!   the file: a backup copied back hands out again positions that
//!   consumers may have passed. Every `migrate` moves the counter to the
//!   time in microseconds and remembers the gap; a cursor in a gap (of a
//!   row the restore lost) reads on from it.
//! - **One instance of a consumer per file.** SQLite serializes writers, so
//!   two instances of one consumer name over one file would only trade
//!   their pages' conflicts. The store keeps a lease row per consumer name
//!   (its instance and a heartbeat, refreshed at each claim): the holder
//!   owns every partition, another instance owns none and waits, and takes
//!   over when the holder releases it at its stop or its heartbeat is older
//!   than [`SqliteStore::LEASE_TIMEOUT`]. The cursors' compare-and-set stays
//!   the fence.
//!
//! # The outbox table and its statements
#![doc = include_str!("outbox.md")]

#[cfg(feature = "server")]
mod feed;
mod journal;
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
