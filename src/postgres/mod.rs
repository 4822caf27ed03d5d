//! PostgreSQL: the outbox writer and its feed (with `server`), and the
//! consumer's cursor store whose instances share the partitions (with
//! `client`). Every PostgreSQL-specific decision of the crate is here.
//!
//! | file | what it holds |
//! |---|---|
//! | `outbox.rs` | [`PostgresOutbox`]: the table, the writer, and every statement |
//! | `notifier.rs` | [`NotifyAfterCommit`]: a writer that wakes the feeds after the caller's commit |
//! | `feed.rs` | [`PostgresFeed`]: pages read below the transaction horizon |
//! | `heads.rs` | the look at the partitions' heads that waiting requests share |
//! | `holders.rs` | the outbox writers that hold the horizon, named and reported |
//! | `pages.rs` | the page read that woken requests for the same page share |
//! | `listener.rs` | the `LISTEN` connection that wakes waiting requests |
//! | `store.rs` | [`PostgresStore`]: the consumer's cursors |
//! | `group.rs` | the advisory locks that share the partitions between instances |
//! | `locks.rs` | the advisory-lock key spaces: groups, migrations, announced writers |
//!
//! The traps a maintainer must hold in mind:
//!
//! - **The horizon.** `position` is taken at insert, not at commit, so a
//!   row may commit after a higher one was served. Writers announce
//!   themselves with an advisory lock before they draw, and the feed serves
//!   only up to the lowest position an announced writer still running may
//!   hold. `pg_snapshot_xmin` would be simpler, and wrong: it is the oldest
//!   transaction of the whole cluster, so any idle transaction anywhere
//!   would stop every feed. An outbox writer that stays open holds its feed
//!   back, and is named (`HorizonHolder`); it never loses an event.
//! - **The sequence must not cache.** The horizon takes "drawn so far" from
//!   the sequence's last value: the identity is `CACHE 1`, and must stay so.
//! - **Visible is not durable.** With `synchronous_commit = off` a commit is
//!   visible before its WAL is flushed, and a crash takes it back (and its
//!   positions, which new rows then reuse). The announcement sets the
//!   appending transaction's `synchronous_commit` to at least `local`, so
//!   that what a feed can read is flushed. Gating pages on the WAL flush
//!   instead would make every page wait for unrelated asynchronous commits
//!   (`NotifyAfterCommit`'s own `NOTIFY` transaction is one).
//! - **Counters move with the cluster, not the rows.** A copy of the rows
//!   alone brings them without their sequence: the feed refuses to serve
//!   while the counter is behind, and `migrate` repairs it.
//! - **`NOTIFY` serializes commits.** A `pg_notify` in the writer's
//!   transaction takes a database-wide lock at commit, held through the WAL
//!   flush: [`NotifyAfterCommit`] moves it out of the writers' commits.
//! - **Session state.** `LISTEN` and the group's advisory locks live on a
//!   server session: each runs on a connection of its own, outside the
//!   pool.
//! - **Failover.** A new `LISTEN` connection may find a new server: what
//!   the feed remembers of earlier pages is forgotten whenever it is lost.
//!
//! # The outbox table and its statements
#![doc = include_str!("outbox.md")]

#[cfg(feature = "server")]
mod feed;
#[cfg(feature = "client")]
mod group;
#[cfg(feature = "server")]
mod heads;
#[cfg(feature = "server")]
mod holders;
#[cfg(feature = "server")]
mod listener;
mod locks;
#[cfg(feature = "server")]
mod notifier;
#[cfg(feature = "server")]
mod outbox;
#[cfg(feature = "server")]
mod pages;
#[cfg(feature = "client")]
mod store;

#[cfg(feature = "server")]
pub use feed::PostgresFeed;
#[cfg(feature = "server")]
pub use holders::HorizonHolder;
#[cfg(feature = "server")]
pub use notifier::{Appended, NotifyAfterCommit};
#[cfg(feature = "server")]
pub use outbox::PostgresOutbox;
#[cfg(feature = "client")]
pub use store::PostgresStore;
