use std::collections::BTreeMap;

use super::{Cursor, RawJson};

/// An event's headers: name to value.
pub type Headers = BTreeMap<String, String>;

/// One event of a partition.
///
/// `D` is the event's data: [`RawJson`] by default (kept as text, never
/// parsed), or any type that (de)serializes.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<D = RawJson> {
    /// The partition the event belongs to.
    pub partition: u32,
    /// The event's headers; only those the consumer asked for are sent.
    pub headers: Headers,
    /// The event's data.
    pub data: D,
}

impl<D> Event<D> {
    /// An event without headers.
    pub fn new(partition: u32, data: D) -> Self {
        Event {
            partition,
            headers: Headers::new(),
            data,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// A checkpoint: a consumer that has stored every event of `partition` that
/// came before this line may resume that partition from `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// The partition the checkpoint is for.
    pub partition: u32,
    /// Where to resume that partition.
    pub cursor: Cursor,
}

impl Checkpoint {
    /// A checkpoint for `partition` at `cursor`.
    pub fn new(partition: u32, cursor: Cursor) -> Self {
        Checkpoint { partition, cursor }
    }
}

/// One line of a feed page: an event or a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem<D = RawJson> {
    /// An event.
    Event(Event<D>),
    /// A checkpoint.
    Checkpoint(Checkpoint),
}

impl<D> FeedItem<D> {
    /// The partition the line is about.
    pub fn partition(&self) -> u32 {
        match self {
            FeedItem::Event(event) => event.partition,
            FeedItem::Checkpoint(checkpoint) => checkpoint.partition,
        }
    }
}

impl<D> From<Event<D>> for FeedItem<D> {
    fn from(event: Event<D>) -> Self {
        FeedItem::Event(event)
    }
}

impl<D> From<Checkpoint> for FeedItem<D> {
    fn from(checkpoint: Checkpoint) -> Self {
        FeedItem::Checkpoint(checkpoint)
    }
}
