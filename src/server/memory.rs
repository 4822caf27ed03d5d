use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::ready;
use std::pin::Pin;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};

use futures_core::Stream;

use super::{AppendSignal, FeedReader, FeedService, ReadContext, ReadError};
use crate::protocol::{Checkpoint, Cursor, Event, FeedItem, HeaderSelection, Headers, RawJson};

/// Events stored per chunk: appends never move more than one chunk's worth
/// of memory, so readers are never held up by a large reallocation.
const CHUNK: usize = 4096;

/// Events copied out per lock acquisition while reading.
const READ_BATCH: usize = 256;

/// An in-memory, partitioned event log that serves as a feed: the embedded
/// default, for tests, examples and small services.
///
/// Appends and reads may come from any number of tasks at once. Events are
/// kept as [`RawJson`] (already serialized), so serving one is a copy of its
/// bytes. Readers copy events out in small batches under a read lock, so an
/// append never waits for long.
///
/// The cursor of the checkpoint after an event is the event's index in its
/// partition, in decimal; reading from it continues with the next event.
/// `_last` answers with a checkpoint at the partition's current end (or
/// `_first` when the partition is empty), so that a consumer can store it.
///
/// A request that asks to wait (long polling) and finds nothing past its
/// cursors is held until an append to one of its partitions, or its
/// deadline: an append wakes exactly the requests waiting on its
/// partition, with no polling. `_last` with a wait brings the events
/// appended after the request arrived.
///
/// ```
/// use zeroeventhub::protocol::{Event, RawJson};
/// use zeroeventhub::server::MemoryFeed;
///
/// let feed = MemoryFeed::new(2);
/// let cursor = feed.append(Event::new(1, RawJson::from_bytes(r#"{"id":"a"}"#)?))?;
/// assert_eq!(cursor.as_str(), "0");
/// assert_eq!(feed.len(1), 1);
/// let service = feed.service(); // mount with axum's `Router::route_service`
/// # let _ = service;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct MemoryFeed {
    partitions: Arc<[Partition]>,
    appended: AppendSignal,
}

#[derive(Default)]
struct Partition {
    chunks: RwLock<Vec<Vec<StoredEvent>>>,
}

#[derive(Clone)]
struct StoredEvent {
    data: RawJson,
    headers: Option<Arc<Headers>>,
    cursor: Cursor,
}

impl MemoryFeed {
    /// An empty feed of `partitions` partitions.
    ///
    /// # Panics
    ///
    /// If `partitions` is 0: a feed has at least one partition.
    pub fn new(partitions: u32) -> Self {
        assert!(partitions > 0, "a feed has at least one partition");
        MemoryFeed {
            partitions: (0..partitions).map(|_| Partition::default()).collect(),
            appended: AppendSignal::new(partitions),
        }
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// Appends `event` to its partition and returns the cursor of the
    /// checkpoint that will follow it. Wakes the requests waiting on that
    /// partition.
    pub fn append(&self, event: Event) -> Result<Cursor, UnknownPartition> {
        let number = event.partition;
        let partition = self.partition(number)?;
        let headers = (!event.headers.is_empty()).then(|| Arc::new(event.headers));
        let mut chunks = write(&partition.chunks);
        let index = stored_len(&chunks);
        let cursor = Cursor::new(itoa::Buffer::new().format(index))
            .expect("a decimal index is a valid cursor");
        if chunks.last().is_none_or(|last| last.len() == CHUNK) {
            chunks.push(Vec::with_capacity(CHUNK));
        }
        let chunk = chunks
            .last_mut()
            .expect("a chunk with room was just ensured");
        chunk.push(StoredEvent {
            data: event.data,
            headers,
            cursor: cursor.clone(),
        });
        // Readable once the lock is released; only then are waiters woken.
        drop(chunks);
        self.appended.notify(number);
        Ok(cursor)
    }

    /// The signal that [`append`](Self::append) notifies: its
    /// [`waiters`](AppendSignal::waiters) are the requests waiting now.
    pub fn append_signal(&self) -> &AppendSignal {
        &self.appended
    }

    /// The number of events in `partition` (0 for a partition it lacks).
    pub fn len(&self, partition: u32) -> usize {
        self.partition(partition)
            .map_or(0, |partition| stored_len(&read(&partition.chunks)))
    }

    /// Whether the feed holds no event at all.
    pub fn is_empty(&self) -> bool {
        (0..self.partition_count()).all(|partition| self.len(partition) == 0)
    }

    /// A [`FeedService`] serving this feed with the default page sizes.
    pub fn service(&self) -> FeedService<MemoryFeed> {
        FeedService::new(self.clone(), self.partition_count())
    }

    fn partition(&self, partition: u32) -> Result<&Partition, UnknownPartition> {
        self.partitions
            .get(partition as usize)
            .ok_or(UnknownPartition {
                partition,
                partition_count: self.partition_count(),
            })
    }

    /// Where reading `partition` from `cursor` starts, and the checkpoint to
    /// send first for `_last`.
    fn start(
        &self,
        partition: u32,
        cursor: &Cursor,
    ) -> Result<(usize, Option<Checkpoint>), ReadError> {
        let len = self.len(partition);
        if cursor.is_first() {
            return Ok((0, None));
        }
        if cursor.is_last() {
            let at = match len.checked_sub(1) {
                Some(last) => Cursor::new(itoa::Buffer::new().format(last))
                    .expect("a decimal index is a valid cursor"),
                None => Cursor::first(),
            };
            return Ok((len, Some(Checkpoint::new(partition, at))));
        }
        let text = cursor.as_str();
        let plain_decimal =
            text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
        match text.parse::<usize>() {
            Ok(index) if plain_decimal && index < len => Ok((index + 1, None)),
            _ => Err(ReadError::UnknownCursor { partition }),
        }
    }
}

impl fmt::Debug for MemoryFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lens: Vec<usize> = (0..self.partition_count()).map(|p| self.len(p)).collect();
        f.debug_struct("MemoryFeed").field("events", &lens).finish()
    }
}

impl FeedReader for MemoryFeed {
    type Stream = MemoryPage;

    async fn read(&self, context: ReadContext<'_>) -> Result<MemoryPage, ReadError> {
        let request = context.request();
        let mut plan = VecDeque::with_capacity(request.cursors().len());
        let mut opening = VecDeque::new();
        for (partition, cursor) in request.cursors() {
            // A service configured with more partitions than the feed has.
            self.partition(*partition).map_err(ReadError::internal)?;
            let (next, checkpoint) = self.start(*partition, cursor)?;
            opening.extend(checkpoint);
            plan.push_back(Reading {
                partition: *partition,
                next,
                share: None,
            });
        }
        // The positions are fixed: `_last` waits for what comes after now.
        let Ok(_) = self
            .appended
            .wait_for_news(&context, || {
                let news = plan
                    .iter()
                    .any(|reading| self.len(reading.partition) > reading.next);
                ready(Ok::<_, Infallible>(news))
            })
            .await;
        Ok(MemoryPage {
            feed: self.clone(),
            headers: request.headers().clone(),
            budget: context.page_size(),
            plan,
            opening,
            batch: VecDeque::with_capacity(READ_BATCH),
            batch_partition: 0,
            checkpoint_due: None,
        })
    }
}

/// The page stream of a [`MemoryFeed`]: partitions in turn, each event
/// followed by its checkpoint, the page size shared among the partitions.
pub struct MemoryPage {
    feed: MemoryFeed,
    headers: HeaderSelection,
    budget: usize,
    /// Partitions still to read.
    plan: VecDeque<Reading>,
    opening: VecDeque<Checkpoint>,
    /// Events copied out of one partition, and that partition.
    batch: VecDeque<StoredEvent>,
    batch_partition: u32,
    checkpoint_due: Option<Checkpoint>,
}

/// One partition of a page being read.
struct Reading {
    partition: u32,
    /// The index of the next event to read.
    next: usize,
    /// How many more events this partition may give; set when its turn
    /// comes, from what the partitions before it left of the budget.
    share: Option<usize>,
}

impl MemoryPage {
    /// Copies the next events of the current partition into `batch`; moves
    /// on to the next partition when this one has given its share.
    fn refill(&mut self) {
        loop {
            let partitions_left = self.plan.len();
            let Some(reading) = self.plan.front_mut() else {
                return;
            };
            let share = *reading
                .share
                .get_or_insert(self.budget.div_ceil(partitions_left));
            let Ok(stored) = self.feed.partition(reading.partition) else {
                self.plan.pop_front();
                continue;
            };
            let chunks = read(&stored.chunks);
            let start = reading.next;
            while self.batch.len() < share.min(READ_BATCH) {
                let index = reading.next;
                let Some(event) = chunks.get(index / CHUNK).and_then(|c| c.get(index % CHUNK))
                else {
                    break;
                };
                self.batch.push_back(event.clone());
                reading.next += 1;
            }
            drop(chunks);
            let taken = reading.next - start;
            let partition = reading.partition;
            self.budget -= taken;
            reading.share = Some(share - taken);
            if taken == 0 || taken == share {
                self.plan.pop_front();
            }
            if taken > 0 {
                self.batch_partition = partition;
                return;
            }
        }
    }

    fn event(&self, partition: u32, stored: &StoredEvent) -> Event {
        // The encoder filters too; copying only what is selected here
        // saves the copies it would throw away.
        let headers = match (&stored.headers, &self.headers) {
            (None, _) | (_, HeaderSelection::None) => Headers::new(),
            (Some(headers), selection) => headers
                .iter()
                .filter(|(name, _)| selection.includes(name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        };
        Event {
            partition,
            headers,
            data: stored.data.clone(),
        }
    }
}

impl Stream for MemoryPage {
    type Item = Result<FeedItem, ReadError>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(checkpoint) = this
            .checkpoint_due
            .take()
            .or_else(|| this.opening.pop_front())
        {
            return Poll::Ready(Some(Ok(FeedItem::Checkpoint(checkpoint))));
        }
        if this.batch.is_empty() {
            this.refill();
        }
        let Some(stored) = this.batch.pop_front() else {
            return Poll::Ready(None);
        };
        let partition = this.batch_partition;
        let event = this.event(partition, &stored);
        this.checkpoint_due = Some(Checkpoint::new(partition, stored.cursor));
        Poll::Ready(Some(Ok(FeedItem::Event(event))))
    }
}

impl fmt::Debug for MemoryPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPage")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// [`MemoryFeed::append`] was given a partition the feed does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownPartition {
    /// The partition given.
    pub partition: u32,
    /// The feed's partition count.
    pub partition_count: u32,
}

impl fmt::Display for UnknownPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partition {} does not exist: the feed has {} partitions",
            self.partition, self.partition_count
        )
    }
}

impl std::error::Error for UnknownPartition {}

/// The number of events in a partition's chunks.
fn stored_len(chunks: &[Vec<StoredEvent>]) -> usize {
    chunks
        .last()
        .map_or(0, |last| (chunks.len() - 1) * CHUNK + last.len())
}

// A panic while holding the lock cannot leave the log half-written (a push
// either happened or not), so a poisoned lock is still safe to use.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
