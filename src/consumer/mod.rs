//! The consumer runtime: the consumption loop every consumer needs, done
//! once, exactly-once into the consumer's own database.
//!
//! A [`Runtime`] reads a feed through a [`Client`](crate::client::Client)
//! and hands each page's events to your [`Handler`] together with an open
//! transaction of the [`CursorStore`]'s database; it stores the next
//! cursors in that transaction as a compare-and-set on the previous ones,
//! and commits. Your effects and the cursors commit together or not at
//! all, so every event takes effect once, across crashes, restarts and
//! several instances.
//!
//! - [`Runtime::run`] hands events with their data as
//!   [`RawJson`](crate::protocol::RawJson); [`Runtime::run_as`]
//!   deserializes it into your type, and an event your type refuses is a
//!   *poison* event handled by the [`PoisonPolicy`] (stop, or record a
//!   [`DeadLetter`] and go on).
//! - Cursor stores ([`store`]): [`MemoryStore`] for tests and examples,
//!   `SqliteStore` (feature `sqlite`), `PostgresStore` (feature `postgres`),
//!   whose instances share the partitions of one consumer name.
//! - Failures are retried, never skipped; the runtime stops with an
//!   [`Error`] only on what a retry cannot change.
//! - [`Stats`] tells what the runtime handled, what failed, what it owns
//!   and whether it has caught up.
//!
//! # Consuming into a database
//!
//! ```
//! # #[cfg(feature = "server")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use zeroeventhub::BoxError;
//! use zeroeventhub::client::Client;
//! use zeroeventhub::consumer::{Handler, MemoryStore, MemoryTransaction, Runtime};
//! use zeroeventhub::protocol::{Event, RawJson};
//! use zeroeventhub::server::MemoryFeed;
//!
//! #[derive(serde::Deserialize)]
//! struct Greeting {
//!     hello: String,
//! }
//!
//! /// Stores each greeting, in the page's transaction.
//! struct Greetings;
//!
//! impl Handler<MemoryTransaction<String>, Greeting> for Greetings {
//!     type Error = BoxError;
//!
//!     async fn handle(
//!         &mut self,
//!         transaction: &mut MemoryTransaction<String>,
//!         events: &[Event<Greeting>],
//!     ) -> Result<(), BoxError> {
//!         for event in events {
//!             transaction.insert(event.data.hello.clone());
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let feed = MemoryFeed::new(2);
//! feed.append(Event::new(0, RawJson::from_bytes(r#"{"hello":"world"}"#)?))?;
//! feed.append(Event::new(1, RawJson::from_bytes(r#"{"hello":"you"}"#)?))?;
//! let client = Client::builder("http://feed.example/v1".parse()?, 2).build_with(feed.service());
//!
//! let store = MemoryStore::new();
//! let runtime = Runtime::new(client, store.clone(), "greeter");
//! let stats = runtime.stats();
//! // Here the runtime stops once it has caught up; a service stops it on SIGTERM.
//! runtime
//!     .run_as(Greetings, async move {
//!         stats.wait_for(|stats| stats.caught_up).await;
//!     })
//!     .await?;
//! assert_eq!(store.rows(), ["world", "you"]);
//! # Ok(())
//! # }
//! # #[cfg(feature = "server")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```

mod error;
mod handler;
#[cfg(feature = "postgres")]
pub(crate) mod ownership;
mod poison;
mod runtime;
mod stats;
pub mod store;

pub use error::Error;
pub use handler::Handler;
pub use poison::{DeadLetter, PoisonPolicy};
pub use runtime::Runtime;
pub use stats::{Stats, StatsSnapshot};
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{CursorChange, CursorStore, MemoryStore, MemoryTransaction, StoreError};
