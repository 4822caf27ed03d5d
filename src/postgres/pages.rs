//! The pages of woken requests, read once for every request that asks for
//! the same one: consumers caught up with a feed wait at the same cursors,
//! so one commit wakes them all for the same rows. The first of them reads
//! the page; the others take copies of its items.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures_core::Stream;
use tokio::sync::OnceCell;

use super::heads::SharedFailure;
use crate::outbox::page::OutboxPage;
use crate::protocol::{Cursor, FeedItem, HeaderSelection};
use crate::server::ReadError;

/// The most rows a shared page holds: a woken page is short (the rows
/// appended while its consumers waited); a consumer that fell further
/// behind gets the rest on its next request.
pub(crate) const SHARED_PAGE_ROWS: usize = 1000;
/// The most event data a shared page holds before it ends early.
const SHARED_PAGE_BYTES: usize = 1 << 20;
/// How many handed-out cursors the feed remembers, so that the next
/// request of a woken consumer needs no query to prove its cursors.
const REMEMBERED_CURSORS: usize = 4096;

/// What makes two requests' pages the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PageKey {
    /// The partitions to read and where each starts.
    pub(crate) starts: Vec<(u32, u64)>,
    /// The page size, at most [`SHARED_PAGE_ROWS`].
    pub(crate) page_size: usize,
    pub(crate) headers: HeaderSelection,
}

/// One read of a page, and every request waiting for it.
struct Flight {
    /// Only requests woken by a look numbered at most this join the read:
    /// the read starts after that look ended, so it sees what the look saw.
    after_look: u64,
    /// The page, or why it could not be read: a failure answers every
    /// request that waited for it, rather than each reading in turn.
    items: OnceCell<Result<Arc<[FeedItem]>, Arc<str>>>,
}

/// Woken pages in flight, by key, and the cursors recently handed out.
#[derive(Default)]
pub(crate) struct SharedPages {
    flights: Mutex<HashMap<PageKey, Arc<Flight>>>,
    handed_out: Mutex<RecentCursors>,
}

impl SharedPages {
    /// The items of the page `key`, read by `read` once for the requests
    /// that ask for it while it is read. `looked` is the number of the look
    /// that woke this request, and `looks_done` the number of the last look
    /// that has ended.
    pub(crate) async fn page<F, Fut>(
        &self,
        key: PageKey,
        looked: u64,
        looks_done: u64,
        read: F,
    ) -> Result<Arc<[FeedItem]>, ReadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<OutboxPage, ReadError>>,
    {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&key) {
                Some(flight) if flight.after_look >= looked => Arc::clone(flight),
                _ => {
                    let flight = Arc::new(Flight {
                        after_look: looks_done,
                        items: OnceCell::new(),
                    });
                    flights.insert(key.clone(), Arc::clone(&flight));
                    flight
                }
            }
        };
        // Whoever leaves first, done or dropped, takes the read off the
        // table; later requests read afresh.
        let _leave = Leave {
            pages: self,
            key: &key,
            flight: &flight,
        };
        let items = flight
            .items
            .get_or_init(|| async {
                let items = match read().await {
                    Ok(page) => collect(page).await,
                    Err(error) => Err(error),
                };
                match items {
                    Ok(items) => {
                        self.remember(&items);
                        Ok(items)
                    }
                    Err(error) => Err(Arc::from(error.to_string())),
                }
            })
            .await;
        match items {
            Ok(items) => Ok(Arc::clone(items)),
            Err(error) => Err(ReadError::internal(SharedFailure {
                what: "read of the page",
                cause: Arc::clone(error),
            })),
        }
    }

    /// Forgets the cursors handed out so far: each is proved again by a
    /// query the next time it comes.
    pub(crate) fn forget_cursors(&self) {
        *self
            .handed_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = RecentCursors::default();
    }

    /// Whether `cursor` was handed out for `partition` by a recent shared
    /// page.
    pub(crate) fn recently_handed_out(&self, partition: u32, cursor: &Cursor) -> bool {
        self.handed_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(partition, cursor)
    }

    fn remember(&self, items: &[FeedItem]) {
        let mut handed_out = self
            .handed_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for item in items {
            if let FeedItem::Checkpoint(checkpoint) = item {
                handed_out.insert(checkpoint.partition, &checkpoint.cursor);
            }
        }
    }
}

impl std::fmt::Debug for SharedPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPages").finish_non_exhaustive()
    }
}

/// Takes a flight off the table when its request leaves.
struct Leave<'a> {
    pages: &'a SharedPages,
    key: &'a PageKey,
    flight: &'a Arc<Flight>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut flights = self
            .pages
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if flights
            .get(self.key)
            .is_some_and(|flight| Arc::ptr_eq(flight, self.flight))
        {
            flights.remove(self.key);
        }
    }
}

/// Reads a page's items into memory, up to [`SHARED_PAGE_BYTES`] of event
/// data (the page then ends at the checkpoint after the last event kept).
async fn collect(page: OutboxPage) -> Result<Arc<[FeedItem]>, ReadError> {
    let mut page = std::pin::pin!(page);
    let mut items = Vec::new();
    let mut bytes = 0;
    while let Some(item) = poll_fn(|cx| Pin::as_mut(&mut page).poll_next(cx)).await {
        let item = item?;
        let full = bytes >= SHARED_PAGE_BYTES;
        match &item {
            FeedItem::Event(_) if full => break,
            FeedItem::Event(event) => bytes += event.data.as_str().len(),
            FeedItem::Checkpoint(_) => {}
        }
        items.push(item);
    }
    Ok(items.into())
}

/// The last [`REMEMBERED_CURSORS`] cursors handed out, oldest forgotten
/// first.
#[derive(Default)]
struct RecentCursors {
    set: HashSet<(u32, Cursor)>,
    order: VecDeque<(u32, Cursor)>,
}

impl RecentCursors {
    fn contains(&self, partition: u32, cursor: &Cursor) -> bool {
        // Cursors are short: the clone costs less than a query.
        self.set.contains(&(partition, cursor.clone()))
    }

    fn insert(&mut self, partition: u32, cursor: &Cursor) {
        let entry = (partition, cursor.clone());
        if self.set.insert(entry.clone()) {
            self.order.push_back(entry);
            if self.order.len() > REMEMBERED_CURSORS {
                if let Some(oldest) = self.order.pop_front() {
                    self.set.remove(&oldest);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::protocol::{Checkpoint, Event, RawJson};

    fn key() -> PageKey {
        PageKey {
            starts: vec![(0, 1)],
            page_size: 10,
            headers: HeaderSelection::None,
        }
    }

    /// A page of `events`, each of `size` bytes of data and followed by
    /// its checkpoint `"1"`, `"2"`...
    fn page_of(events: usize, size: usize) -> OutboxPage {
        let data = format!("\"{}\"", "x".repeat(size.saturating_sub(2)));
        OutboxPage::new(move |emitter| async move {
            for n in 1..=events {
                let data = RawJson::from_bytes(data.clone()).unwrap();
                emitter.emit(FeedItem::Event(Event::new(0, data))).await;
                let cursor = Cursor::try_from(n.to_string()).unwrap();
                emitter
                    .emit(FeedItem::Checkpoint(Checkpoint::new(0, cursor)))
                    .await;
            }
            Ok(())
        })
    }

    #[tokio::test]
    async fn a_finished_read_is_not_served_again_and_its_cursors_are_remembered() {
        let pages = SharedPages::default();
        let reads = AtomicUsize::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(page_of(2, 10))
        };
        let items = pages.page(key(), 1, 1, read).await.unwrap();
        assert_eq!(items.len(), 4);
        pages.page(key(), 1, 1, read).await.unwrap();
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "a new request reads afresh"
        );
        assert!(pages.flights.lock().unwrap().is_empty());

        let two = Cursor::try_from("2".to_owned()).unwrap();
        assert!(pages.recently_handed_out(0, &two));
        assert!(!pages.recently_handed_out(1, &two));
        pages.forget_cursors();
        assert!(!pages.recently_handed_out(0, &two));
        assert_eq!(format!("{pages:?}"), "SharedPages { .. }");
    }

    #[tokio::test]
    async fn a_request_woken_by_a_later_look_does_not_join_an_earlier_read() {
        let pages = Arc::new(SharedPages::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let first = {
            let (pages, reads, release) = (pages.clone(), reads.clone(), release.clone());
            tokio::spawn(async move {
                let read = || async {
                    reads.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok(page_of(1, 10))
                };
                pages.page(key(), 1, 1, read).await.map(|items| items.len())
            })
        };
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Woken by look 2, which ended after the read above began.
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(page_of(3, 10))
        };
        let items = pages.page(key(), 2, 2, read).await.unwrap();
        assert_eq!(items.len(), 6, "its own read");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_shared_page_stops_after_a_mib_of_data_at_a_checkpoint() {
        let items = collect(page_of(3, 600 * 1024)).await.unwrap();
        assert_eq!(items.len(), 4, "two events and their checkpoints");
        assert!(matches!(items.last(), Some(FeedItem::Checkpoint(_))));
        let small = collect(page_of(3, 10)).await.unwrap();
        assert_eq!(small.len(), 6);
    }

    #[test]
    fn the_oldest_cursor_is_forgotten_first() {
        let mut recent = RecentCursors::default();
        let cursor = |n: usize| Cursor::try_from(n.to_string()).unwrap();
        for n in 0..=REMEMBERED_CURSORS {
            recent.insert(0, &cursor(n));
        }
        assert!(!recent.contains(0, &cursor(0)));
        assert!(recent.contains(0, &cursor(1)));
        assert!(recent.contains(0, &cursor(REMEMBERED_CURSORS)));
        assert!(!recent.contains(1, &cursor(1)), "another partition");
        recent.insert(0, &cursor(1));
        assert_eq!(recent.order.len(), REMEMBERED_CURSORS, "no repeats");
    }
}
