use std::future::Future;

use crate::BoxError;
use crate::protocol::{Event, RawJson};

/// The consumer's own logic: what to do with a page's events, in the
/// transaction that will store the cursors after them.
///
/// `T` is the cursor store's transaction (for the SQLite store,
/// `sqlx::Transaction<'static, Sqlite>`); `D` the events' data, [`RawJson`]
/// with [`Runtime::run`](super::Runtime::run) or your own type with
/// [`Runtime::run_as`](super::Runtime::run_as).
///
/// The events are those of one page covered by a checkpoint, in the order
/// the feed sent them (partitions interleaved as they came). Write their
/// effects in `transaction` and return: the runtime stores the cursors in
/// the same transaction and commits. An error rolls everything back; the
/// runtime retries the page after a backoff, so a handler must be a pure
/// function of its events and its database, with no effect outside the
/// transaction that a retry would repeat.
///
/// ```
/// use zeroeventhub::BoxError;
/// use zeroeventhub::consumer::{Handler, MemoryTransaction};
/// use zeroeventhub::protocol::Event;
///
/// #[derive(serde::Deserialize)]
/// struct Order {
///     id: u64,
/// }
///
/// struct Orders;
///
/// impl Handler<MemoryTransaction<u64>, Order> for Orders {
///     type Error = BoxError;
///
///     async fn handle(
///         &mut self,
///         transaction: &mut MemoryTransaction<u64>,
///         events: &[Event<Order>],
///     ) -> Result<(), BoxError> {
///         for event in events {
///             transaction.insert(event.data.id);
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Handler<T, D = RawJson>: Send {
    /// The handler's error; it rolls the page back.
    type Error: Into<BoxError>;

    /// Writes the effects of `events` in `transaction`.
    fn handle(
        &mut self,
        transaction: &mut T,
        events: &[Event<D>],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
