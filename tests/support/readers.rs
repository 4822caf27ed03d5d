//! Feed readers written for tests: one that records what it was asked, one
//! made of a closure, and a guard that reports when a page stream is dropped.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio::sync::oneshot;
use zeroeventhub::protocol::{Checkpoint, Cursor, Event, FeedItem, FeedRequest, RawJson};
use zeroeventhub::server::{FeedReader, ReadContext, ReadError};

/// The page stream of the test readers.
pub(crate) type ItemStream = BoxStream<'static, Result<FeedItem, ReadError>>;

/// What [`FnReader`] calls for each request.
pub(crate) trait ReadFn:
    Fn(&ReadContext<'_>) -> Result<ItemStream, ReadError> + Send + Sync + 'static
{
}

impl<F> ReadFn for F where
    F: Fn(&ReadContext<'_>) -> Result<ItemStream, ReadError> + Send + Sync + 'static
{
}

/// A reader that calls a function for each request.
pub(crate) struct FnReader<F>(F);

impl<F> FnReader<F>
where
    F: Fn(&ReadContext<'_>) -> Result<ItemStream, ReadError> + Send + Sync + 'static,
{
    pub(crate) fn new(read: F) -> Self {
        FnReader(read)
    }
}

impl<F> FeedReader for FnReader<F>
where
    F: Fn(&ReadContext<'_>) -> Result<ItemStream, ReadError> + Send + Sync + 'static,
{
    type Stream = ItemStream;

    async fn read(&self, context: ReadContext<'_>) -> Result<ItemStream, ReadError> {
        (self.0)(&context)
    }
}

/// The identity an authentication layer puts in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Consumer(pub(crate) String);

/// What one call of [`RecordingReader`] was given.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    pub(crate) request: FeedRequest,
    pub(crate) page_size: usize,
    pub(crate) consumer: Option<Consumer>,
}

impl Seen {
    pub(crate) fn new(request: FeedRequest, page_size: usize) -> Self {
        Seen {
            request,
            page_size,
            consumer: None,
        }
    }
}

/// A reader that records every request it gets and answers, for each cursor
/// of the request, one event that echoes the cursor (with the headers in
/// [`RecordingReader::HEADERS`]) and a checkpoint at `next-P`.
#[derive(Clone, Default)]
pub(crate) struct RecordingReader {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingReader {
    /// The headers of every event this reader produces.
    pub(crate) const HEADERS: [(&'static str, &'static str); 3] =
        [("a", "1"), ("b", "2"), ("c", "3")];

    /// Every call so far, in order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The page this reader answers for `request`.
    pub(crate) fn page(request: &FeedRequest) -> Vec<FeedItem> {
        let mut items = Vec::new();
        for (partition, cursor) in request.cursors() {
            let data = RawJson::from_serialize(&serde_json::json!({ "from": cursor.as_str() }))
                .expect("a JSON object serializes");
            let mut event = Event::new(*partition, data);
            for (name, value) in Self::HEADERS {
                event = event.with_header(name, value);
            }
            let next = Cursor::new(format!("next-{partition}")).expect("a printable cursor");
            items.push(FeedItem::Event(event));
            items.push(FeedItem::Checkpoint(Checkpoint::new(*partition, next)));
        }
        items
    }
}

impl FeedReader for RecordingReader {
    type Stream = ItemStream;

    async fn read(&self, context: ReadContext<'_>) -> Result<ItemStream, ReadError> {
        self.seen.lock().unwrap().push(Seen {
            request: context.request().clone(),
            page_size: context.page_size(),
            consumer: context.extensions().get::<Consumer>().cloned(),
        });
        let items = Self::page(context.request());
        Ok(stream::iter(items.into_iter().map(Ok)).boxed())
    }
}

/// Reports, through the receiver of [`drop_signal`], that it was dropped.
pub(crate) struct DropGuard(Option<oneshot::Sender<()>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(sender) = self.0.take() {
            let _ = sender.send(());
        }
    }
}

/// A guard, and the receiver that completes when the guard is dropped.
pub(crate) fn drop_signal() -> (DropGuard, oneshot::Receiver<()>) {
    let (sender, receiver) = oneshot::channel();
    (DropGuard(Some(sender)), receiver)
}

/// `stream`, holding `guard` for as long as it lives.
pub(crate) fn guarded(stream: ItemStream, guard: DropGuard) -> ItemStream {
    stream
        .map(move |item| {
            let _alive = &guard;
            item
        })
        .boxed()
}

/// An event of `partition` with `data` given as JSON text.
pub(crate) fn event(partition: u32, data: &str) -> FeedItem {
    FeedItem::Event(Event::new(
        partition,
        RawJson::from_bytes(data.to_owned()).expect("test data is valid JSON"),
    ))
}

/// A checkpoint of `partition` at `cursor`.
pub(crate) fn checkpoint(partition: u32, cursor: &str) -> FeedItem {
    FeedItem::Checkpoint(Checkpoint::new(
        partition,
        Cursor::new(cursor).expect("test cursors are valid"),
    ))
}
