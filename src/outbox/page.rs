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

/// The header that carries an outbox event's id, when asked for: its
/// cursor, unique in its feed (the CloudEvents name).
pub(crate) const ID_HEADER: &str = "ce_id";

/// The header that carries when an outbox event was appended, when asked
/// for: RFC 3339 in UTC, to the millisecond (the CloudEvents name).
pub(crate) const TIME_HEADER: &str = "ce_time";

/// A stored row as an event of `partition`, with the headers `selection`
/// asks for: the stored ones, and `ce_id` (`cursor`) and `ce_time`
/// (`appended_ms`, milliseconds since the Unix epoch) unless the row stores
/// its own. Why not, for a row the feed cannot serve (written by other
/// means than the writer): its headers are not a JSON object of strings.
pub(crate) fn row_event(
    partition: u32,
    data: impl Into<Bytes>,
    headers: Option<&str>,
    selection: &HeaderSelection,
    cursor: &Cursor,
    appended_ms: i64,
) -> Result<Event, String> {
    let mut headers = match headers {
        Some(text) if !selection.is_none() => {
            let mut headers: Headers = serde_json::from_str(text).map_err(|error| {
                format!("its headers are not a JSON object of strings: {error}")
            })?;
            headers.retain(|name, _| selection.includes(name));
            headers
        }
        _ => Headers::new(),
    };
    if selection.includes(ID_HEADER) && !headers.contains_key(ID_HEADER) {
        headers.insert(ID_HEADER.to_owned(), cursor.as_str().to_owned());
    }
    if selection.includes(TIME_HEADER) && !headers.contains_key(TIME_HEADER) {
        headers.insert(TIME_HEADER.to_owned(), rfc3339_millis(appended_ms));
    }
    Ok(Event {
        partition,
        headers,
        data: RawJson::from_valid(data.into()),
    })
}

/// `millis` since the Unix epoch as RFC 3339 in UTC, to the millisecond:
/// `2026-12-04T19:52:36.123Z`.
pub(crate) fn rfc3339_millis(millis: i64) -> String {
    let days = millis.div_euclid(86_400_000);
    let in_day = millis.rem_euclid(86_400_000);
    // The civil date of a day count (Hinnant's algorithm, proleptic
    // Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let of_era = z.rem_euclid(146_097);
    let year_of_era = (of_era - of_era / 1460 + of_era / 36_524 - of_era / 146_096) / 365;
    let day_of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// The error of a page that reached a row of `table` it cannot serve: the
/// partition stops before it (and the rest of the page goes on), and the
/// log names the table, partition and row.
pub(crate) fn unservable(table: &str, partition: u32, position: i64, why: &str) -> ReadError {
    let message = format!(
        "outbox {table}, partition {partition}, row at position {position} cannot be served: \
         {why}; the partition stops before it until the row is mended or deleted"
    );
    tracing::error!(%table, partition, position, "{message}");
    ReadError::internal(message)
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

#[cfg(test)]
mod time_tests {
    use super::rfc3339_millis;

    #[test]
    fn times_are_rfc_3339_in_utc_to_the_millisecond() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_796_413_956_123),
            "2026-12-04T19:52:36.123Z"
        );
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_millis(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
    }
}
