use std::future::Future;

use crate::BoxError;
use crate::protocol::{Checkpoint, Event, RawJson};

/// Receives the lines of a page one at a time, as they arrive: the
/// callback style of the reference clients, for
/// [`Client::fetch_into`](super::Client::fetch_into).
///
/// To consume exactly once, keep the events of each partition until a
/// checkpoint of that partition arrives, then store them and the cursor in
/// one transaction. Events still kept when the page ends came after the
/// last checkpoint of their partition: drop them, the next request (from
/// the stored cursors) serves them again.
///
/// ```
/// use std::collections::HashMap;
/// use zeroeventhub::BoxError;
/// use zeroeventhub::client::EventReceiver;
/// use zeroeventhub::protocol::{Checkpoint, Cursor, Event};
///
/// #[derive(Default)]
/// struct Consumer {
///     pending: HashMap<u32, Vec<Event>>,
///     /// Stands for the database.
///     committed: Vec<Event>,
///     cursors: HashMap<u32, Cursor>,
/// }
///
/// impl EventReceiver for Consumer {
///     type Error = BoxError;
///
///     async fn event(&mut self, event: Event) -> Result<(), BoxError> {
///         self.pending.entry(event.partition).or_default().push(event);
///         Ok(())
///     }
///
///     async fn checkpoint(&mut self, checkpoint: Checkpoint) -> Result<(), BoxError> {
///         // One transaction: the events before the checkpoint and its cursor.
///         let events = self.pending.remove(&checkpoint.partition).unwrap_or_default();
///         self.committed.extend(events);
///         self.cursors.insert(checkpoint.partition, checkpoint.cursor);
///         Ok(())
///     }
/// }
/// ```
pub trait EventReceiver<D = RawJson> {
    /// The receiver's error; it ends the page with an
    /// [`Error`](super::Error) whose source it is.
    type Error: Into<BoxError>;

    /// Receives an event.
    fn event(&mut self, event: Event<D>) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Receives a checkpoint: every event of its partition before it was
    /// delivered.
    fn checkpoint(
        &mut self,
        checkpoint: Checkpoint,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
