use std::collections::HashMap;

use crate::protocol::{Checkpoint, Cursor, Event, FeedItem, FeedRequest, RawJson};

/// The answer to one feed request, sorted into what may be committed and
/// what may not.
///
/// A checkpoint of partition `P` promises that every event of `P` before it
/// was delivered. So an event is *covered* when a checkpoint of its own
/// partition comes after it in the page: storing it together with that
/// checkpoint's cursor is safe. Events after the last checkpoint of their
/// partition are *trailing*: the next request starts before them and they
/// will be served again, so storing them now would store them twice.
///
/// # Consuming a feed exactly once
///
/// In one database transaction, store [`events`](Self::events) and
/// [`next_cursors`](Self::next_cursors); then ask for the next page with
/// [`next_request`](Self::next_request). On any error, or after a restart,
/// read the cursors back from the database and start from there: whatever
/// was committed is never served again past its cursor, and whatever was
/// not is.
///
/// ```
/// # #[cfg(feature = "server")]
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use zeroeventhub::client::Client;
/// use zeroeventhub::protocol::{Cursor, Event, FeedRequest, RawJson};
/// use zeroeventhub::server::MemoryFeed;
///
/// let feed = MemoryFeed::new(2);
/// for i in 0..10 {
///     feed.append(Event::new(i % 2, RawJson::from_serialize(&i)?))?;
/// }
/// let client = Client::builder("http://feed.example/v1".parse()?, 2)
///     .build_with(feed.service());
///
/// // Stands for the consumer's database: events and cursors, in one transaction.
/// let mut stored: Vec<Event> = Vec::new();
/// let mut request = FeedRequest::new(2, [(0, Cursor::first()), (1, Cursor::first())])?
///     .with_page_size_hint(3);
/// loop {
///     let page = client.fetch_page(&request).await?;
///     // BEGIN; insert page.events(); upsert page.next_cursors(); COMMIT;
///     stored.extend(page.events().iter().cloned());
///     if !page.has_new_events() {
///         break; // caught up: a polling consumer sleeps here and goes on
///     }
///     request = page.next_request(&request);
/// }
/// assert_eq!(stored.len(), 10);
/// # Ok(())
/// # }
/// # #[cfg(feature = "server")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Page<D = RawJson> {
    events: Vec<Event<D>>,
    trailing: Vec<Event<D>>,
    checkpoints: Vec<Checkpoint>,
    next_cursors: Vec<(u32, Cursor)>,
    progressed: bool,
}

impl<D> Page<D> {
    /// Sorts the items of the answer to `request`, in the order they came.
    ///
    /// Items are expected to be of the request's partitions, as the
    /// decoder guarantees; a checkpoint of any other partition is kept in
    /// [`checkpoints`](Self::checkpoints) but moves no cursor.
    pub fn new(request: &FeedRequest, items: impl IntoIterator<Item = FeedItem<D>>) -> Self {
        let items: Vec<FeedItem<D>> = items.into_iter().collect();
        // Where each partition's last checkpoint is.
        let mut last_checkpoint: HashMap<u32, usize> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            if let FeedItem::Checkpoint(checkpoint) = item {
                last_checkpoint.insert(checkpoint.partition, index);
            }
        }
        let mut next_cursors = request.cursors().to_vec();
        let mut progressed = false;
        let mut events = Vec::new();
        let mut trailing = Vec::new();
        let mut checkpoints = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match item {
                FeedItem::Event(event) => match last_checkpoint.get(&event.partition) {
                    Some(&last) if last > index => events.push(event),
                    _ => trailing.push(event),
                },
                FeedItem::Checkpoint(checkpoint) => {
                    if last_checkpoint.get(&checkpoint.partition) == Some(&index) {
                        if let Ok(slot) =
                            next_cursors.binary_search_by_key(&checkpoint.partition, |(p, _)| *p)
                        {
                            progressed |= next_cursors[slot].1 != checkpoint.cursor;
                            next_cursors[slot].1 = checkpoint.cursor.clone();
                        }
                    }
                    checkpoints.push(checkpoint);
                }
            }
        }
        Page {
            events,
            trailing,
            checkpoints,
            next_cursors,
            progressed,
        }
    }

    /// The events covered by a later checkpoint of their partition, in the
    /// order they came: store these with [`next_cursors`](Self::next_cursors).
    pub fn events(&self) -> &[Event<D>] {
        &self.events
    }

    /// The events after the last checkpoint of their partition: do not
    /// store them, the next request will serve them again.
    pub fn trailing_events(&self) -> &[Event<D>] {
        &self.trailing
    }

    /// Every checkpoint of the page, in the order they came.
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// Where to read each requested partition from next, by partition: the
    /// cursor of its last checkpoint in this page, or the request's cursor
    /// when the page has none for it.
    pub fn next_cursors(&self) -> &[(u32, Cursor)] {
        &self.next_cursors
    }

    /// Whether some partition's cursor moved: then
    /// [`next_cursors`](Self::next_cursors) are worth storing, even with no
    /// event to store beside them.
    ///
    /// Not a signal to ask again at once: the protocol lets a feed move a
    /// cursor on a page without events (past rows its consumer may not
    /// see), and a loop that asks again whenever this is true spins as
    /// fast as such a feed answers. Pace the loop on
    /// [`has_new_events`](Self::has_new_events) instead.
    pub fn made_progress(&self) -> bool {
        self.progressed
    }

    /// Whether the page brought events to commit (covered by a
    /// checkpoint). This is what a polling loop paces on: when it is false
    /// the consumer has caught up (or the feed is slow to checkpoint), and
    /// the loop waits before asking again; when true, it asks again at
    /// once.
    ///
    /// With long polling too: a feed that ignores `wait` (the reference
    /// implementations do) answers a waiting request at once, and a loop
    /// that asked again at once would spin. Wait until a poll interval
    /// after the request was sent: after a wait that the feed held, that
    /// is no time at all; after a fast empty answer, the whole interval.
    /// See [the client's docs](crate::client#long-polling).
    pub fn has_new_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The request for the next page: `previous` with the cursor of each
    /// of its partitions replaced by the one in
    /// [`next_cursors`](Self::next_cursors), the same page size hint,
    /// headers and wait.
    pub fn next_request(&self, previous: &FeedRequest) -> FeedRequest {
        let cursors = previous.cursors().iter().map(|(partition, cursor)| {
            let next = match self
                .next_cursors
                .binary_search_by_key(partition, |(p, _)| *p)
            {
                Ok(slot) => &self.next_cursors[slot].1,
                Err(_) => cursor,
            };
            (*partition, next.clone())
        });
        FeedRequest::new(previous.partition_count(), cursors)
            .expect("the partitions of a valid request make a valid request")
            .with_page_size_hint(previous.page_size_hint().unwrap_or(0))
            .with_headers(previous.headers().clone())
            .with_wait(previous.wait().unwrap_or_default())
    }

    /// The covered events, taken out of the page (for storing them without
    /// a copy; take the cursors first).
    pub fn into_events(self) -> Vec<Event<D>> {
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(partition: u32, n: u32) -> FeedItem {
        FeedItem::Event(Event::new(partition, RawJson::from_serialize(&n).unwrap()))
    }

    fn checkpoint(partition: u32, cursor: &str) -> FeedItem {
        FeedItem::Checkpoint(Checkpoint::new(partition, Cursor::new(cursor).unwrap()))
    }

    fn numbers(events: &[Event]) -> Vec<(u32, u32)> {
        events
            .iter()
            .map(|event| (event.partition, event.data.deserialize().unwrap()))
            .collect()
    }

    #[test]
    fn events_are_covered_only_by_a_later_checkpoint_of_their_partition() {
        let request = FeedRequest::new(
            3,
            [
                (0, Cursor::first()),
                (1, Cursor::new("b0").unwrap()),
                (2, Cursor::last()),
            ],
        )
        .unwrap()
        .with_page_size_hint(50);
        let page = Page::new(
            &request,
            [
                event(0, 1),
                event(1, 2),
                checkpoint(0, "a1"),
                event(0, 3),
                event(1, 4),
                checkpoint(1, "b2"),
                event(0, 5),
                checkpoint(0, "a3"),
                event(0, 6),
                // A checkpoint of partition 1 does not cover partition 0.
                checkpoint(1, "b3"),
            ],
        );
        assert_eq!(
            numbers(page.events()),
            [(0, 1), (1, 2), (0, 3), (1, 4), (0, 5)]
        );
        assert_eq!(numbers(page.trailing_events()), [(0, 6)]);
        assert_eq!(page.checkpoints().len(), 4);
        assert_eq!(
            page.next_cursors(),
            [
                (0, Cursor::new("a3").unwrap()),
                (1, Cursor::new("b3").unwrap()),
                // A quiet partition keeps its cursor.
                (2, Cursor::last()),
            ]
        );
        assert!(page.made_progress());
        let next = page.next_request(&request);
        assert_eq!(
            next.to_query(),
            "n=3&cursor0=a3&cursor1=b3&cursor2=_last&pagesizehint=50"
        );
    }

    #[test]
    fn a_page_without_checkpoints_commits_nothing() {
        let request = FeedRequest::new(1, [(0, Cursor::new("7").unwrap())]).unwrap();
        let page = Page::new(&request, [event(0, 8), event(0, 9)]);
        assert!(page.events().is_empty());
        assert_eq!(page.trailing_events().len(), 2);
        assert_eq!(page.next_cursors(), request.cursors());
        assert!(!page.made_progress());
        assert_eq!(page.next_request(&request), request);

        let empty: Page = Page::new(&request, []);
        assert!(!empty.made_progress());
        assert!(empty.events().is_empty() && empty.trailing_events().is_empty());
    }

    #[test]
    fn a_repeated_cursor_is_no_progress() {
        let request = FeedRequest::new(1, [(0, Cursor::new("7").unwrap())]).unwrap();
        let page = Page::new(&request, [checkpoint(0, "7")]);
        assert!(!page.made_progress());
    }
}
