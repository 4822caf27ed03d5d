//! What the database readers share once a query runs: the page stream fed
//! by an async producer, the page budget shared among partitions, and the
//! making of events from rows.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

use crate::protocol::{Checkpoint, Cursor, Event, FeedItem, HeaderSelection, Headers, RawJson};
use crate::server::ReadError;

type Slot = Arc<Mutex<Option<FeedItem>>>;
type Producer = Pin<Box<dyn Future<Output = Result<(), ReadError>> + Send>>;

/// The page stream of the database feeds (`PostgresFeed`, `SqliteFeed`):
/// items come straight from the running query, one row at a time, and
/// dropping the stream drops the query and gives its connection back to the
/// pool.
pub struct OutboxPage {
    slot: Slot,
    producer: Option<Producer>,
}

impl OutboxPage {
    /// A page whose items `produce` hands to its [`Emitter`], one at a time:
    /// each `emit` waits until the consumer has taken the item.
    pub(crate) fn new<F, Fut>(produce: F) -> Self
    where
        F: FnOnce(Emitter) -> Fut,
        Fut: Future<Output = Result<(), ReadError>> + Send + 'static,
    {
        let slot = Slot::default();
        let producer = Box::pin(produce(Emitter {
            slot: Arc::clone(&slot),
        }));
        OutboxPage {
            slot,
            producer: Some(producer),
        }
    }
}

impl Stream for OutboxPage {
    type Item = Result<FeedItem, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(producer) = this.producer.as_mut() else {
            return Poll::Ready(None);
        };
        let finished = producer.as_mut().poll(cx);
        if let Some(item) = take(&this.slot) {
            return Poll::Ready(Some(Ok(item)));
        }
        match finished {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                this.producer = None;
                Poll::Ready(result.err().map(Err))
            }
        }
    }
}

impl fmt::Debug for OutboxPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxPage")
            .field("finished", &self.producer.is_none())
            .finish_non_exhaustive()
    }
}

fn take(slot: &Slot) -> Option<FeedItem> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Hands items from a page's producer to its [`OutboxPage`].
pub(crate) struct Emitter {
    slot: Slot,
}

impl Emitter {
    /// Hands `item` on, and returns once the stream has taken it.
    pub(crate) async fn emit(&self, item: FeedItem) {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(item);
        HandedOver(false).await;
    }
}

/// Pending once, so that the stream's `poll_next` returns the item; the
/// stream polls again when it is asked for the next one.
struct HandedOver(bool);

impl Future for HandedOver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            Poll::Pending
        }
    }
}

/// The page size shared among the requested partitions as
/// [`MemoryFeed`](crate::server::MemoryFeed) shares it: partitions in
/// turn, each given an equal part of what the ones before it left.
pub(crate) struct Budget {
    left: usize,
    partitions_left: usize,
}

impl Budget {
    pub(crate) fn new(page_size: usize, partitions: usize) -> Self {
        Budget {
            left: page_size,
            partitions_left: partitions,
        }
    }

    /// The share of the next partition.
    pub(crate) fn next_share(&self) -> usize {
        self.left.div_ceil(self.partitions_left.max(1))
    }

    /// Records that a partition gave `taken` events.
    pub(crate) fn spent(&mut self, taken: usize) {
        self.left -= taken.min(self.left);
        self.partitions_left = self.partitions_left.saturating_sub(1);
    }
}

/// An event of `partition` from a row's data and headers columns.
///
/// The data column is JSON checked by the database (PostgreSQL's `json`
/// type, SQLite's `json_valid` constraint), so it is kept without parsing
/// it again. Headers are parsed only when the consumer asked for some.
pub(crate) fn row_event(
    partition: u32,
    data: impl Into<Bytes>,
    headers: Option<&str>,
    selection: &HeaderSelection,
) -> Result<Event, ReadError> {
    let headers = match headers {
        Some(text) if !selection.is_none() => {
            let mut headers: Headers = serde_json::from_str(text).map_err(ReadError::internal)?;
            headers.retain(|name, _| selection.includes(name));
            headers
        }
        _ => Headers::new(),
    };
    Ok(Event {
        partition,
        headers,
        data: RawJson::from_valid(data.into()),
    })
}

/// Emits an event and the checkpoint after it.
pub(crate) async fn emit_event(emitter: &Emitter, event: Event, cursor: Cursor) {
    let partition = event.partition;
    emitter.emit(FeedItem::Event(event)).await;
    emitter
        .emit(FeedItem::Checkpoint(Checkpoint::new(partition, cursor)))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_like_the_memory_feed() {
        let mut budget = Budget::new(10, 3);
        assert_eq!(budget.next_share(), 4);
        budget.spent(1);
        assert_eq!(budget.next_share(), 5);
        budget.spent(5);
        assert_eq!(budget.next_share(), 4);
    }
}
