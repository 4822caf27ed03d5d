//! What the database feed tests share: the commit-order race (writers that
//! hold their transactions open, consumers that read right behind them) and
//! its exactly-once check, and consumers that read a feed to its end.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, Event, FeedRequest, RawJson};
use zeroeventhub::server::OutboxEvent;

use super::transport::LIVENESS;

/// A small, fast, seeded random source: tests stay reproducible per seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..bound`.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

/// The event with id `id`, its partition chosen by its key.
pub(crate) fn keyed_event(id: u64) -> OutboxEvent {
    let key = format!("key-{}", id % 97);
    OutboxEvent::keyed(&key, data(id))
}

/// Event data carrying `id`.
pub(crate) fn data(id: u64) -> RawJson {
    RawJson::from_bytes(format!(r#"{{"id":"e{id}","type":"Tested"}}"#)).unwrap()
}

/// The id an event carries.
pub(crate) fn id_of(event: &Event) -> String {
    let value: serde_json::Value = event.data.deserialize().unwrap();
    value["id"].as_str().unwrap().to_owned()
}

/// How hard the writers of a race push.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Race {
    pub(crate) writers: usize,
    pub(crate) events: u64,
    /// Events per transaction, from 1 to this.
    pub(crate) batch: u64,
    /// How long a writer holds its transaction open, from 0 to this.
    pub(crate) max_hold: Duration,
    /// Consumers reading while the writers write.
    pub(crate) consumers: usize,
    /// How many of them long poll (`wait=1`) instead of asking again at
    /// once: woken together, they share their looks and pages.
    pub(crate) waiting_consumers: usize,
    pub(crate) page_size: u32,
}

/// What a race wrote and what each consumer saw.
pub(crate) struct RaceOutcome {
    pub(crate) committed: HashSet<String>,
    pub(crate) rolled_back: HashSet<String>,
    pub(crate) seen: Vec<Vec<String>>,
}

impl RaceOutcome {
    /// Committed events some consumer never saw.
    pub(crate) fn lost(&self) -> usize {
        self.seen
            .iter()
            .map(|seen| {
                let seen: HashSet<&String> = seen.iter().collect();
                self.committed
                    .iter()
                    .filter(|id| !seen.contains(id))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Asserts that every consumer saw every committed event exactly once,
    /// and no rolled-back one.
    pub(crate) fn assert_exactly_once(&self) {
        assert!(!self.committed.is_empty());
        assert!(!self.rolled_back.is_empty(), "the race rolls some back");
        for (consumer, seen) in self.seen.iter().enumerate() {
            let mut counts: HashMap<&String, usize> = HashMap::new();
            for id in seen {
                *counts.entry(id).or_default() += 1;
            }
            let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
            assert!(
                twice.is_empty(),
                "consumer {consumer} saw {twice:?} more than once"
            );
            let ghosts: Vec<_> = counts
                .keys()
                .filter(|id| !self.committed.contains(**id))
                .collect();
            assert!(
                ghosts.is_empty(),
                "consumer {consumer} saw uncommitted {ghosts:?}"
            );
            let lost = self.committed.len() - counts.len();
            assert_eq!(lost, 0, "consumer {consumer} lost {lost} committed events");
        }
    }
}

/// Runs `race.writers` writer tasks that each append batches through
/// `transaction(events, hold, commit)` until `race.events` ids are used,
/// while `race.consumers` consumers read `feed_url` from `_first` with our
/// client, in small pages, as fast as they can, and on until they have
/// caught up after the writers stopped.
pub(crate) async fn run_race<T, Fut>(
    feed_url: &str,
    partitions: u32,
    race: Race,
    transaction: T,
) -> RaceOutcome
where
    T: Fn(Vec<OutboxEvent>, Duration, bool) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let next_id = Arc::new(AtomicU64::new(0));
    let committed = Arc::new(Mutex::new(HashSet::new()));
    let rolled_back = Arc::new(Mutex::new(HashSet::new()));
    let writing = Arc::new(AtomicBool::new(true));
    let committed_count = Arc::new(AtomicU64::new(0));

    let consumers: Vec<_> = (0..race.consumers)
        .map(|consumer| {
            let url = feed_url.to_owned();
            let writing = Arc::clone(&writing);
            let committed_count = Arc::clone(&committed_count);
            tokio::spawn(consume_behind_writers(
                url,
                partitions,
                race.page_size,
                consumer < race.waiting_consumers,
                writing,
                committed_count,
            ))
        })
        .collect();

    let writers: Vec<_> = (0..race.writers)
        .map(|writer| {
            let transaction = transaction.clone();
            let next_id = Arc::clone(&next_id);
            let committed = Arc::clone(&committed);
            let rolled_back = Arc::clone(&rolled_back);
            tokio::spawn(async move {
                let mut rng = Rng::new(writer as u64 + 1);
                loop {
                    let count = 1 + rng.below(race.batch);
                    let first = next_id.fetch_add(count, Ordering::SeqCst);
                    if first >= race.events {
                        return;
                    }
                    let ids: Vec<u64> = (first..(first + count).min(race.events)).collect();
                    let hold =
                        Duration::from_micros(rng.below(race.max_hold.as_micros() as u64 + 1));
                    let commit = rng.below(10) != 0;
                    transaction(
                        ids.iter().map(|id| keyed_event(*id)).collect(),
                        hold,
                        commit,
                    )
                    .await;
                    let ledger = if commit { &committed } else { &rolled_back };
                    ledger
                        .lock()
                        .unwrap()
                        .extend(ids.iter().map(|id| format!("e{id}")));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer finishes");
    }
    let committed = std::mem::take(&mut *committed.lock().unwrap());
    committed_count.store(committed.len() as u64, Ordering::SeqCst);
    writing.store(false, Ordering::SeqCst);

    let mut seen = Vec::new();
    for consumer in consumers {
        seen.push(consumer.await.expect("a consumer finishes"));
    }
    let rolled_back = std::mem::take(&mut *rolled_back.lock().unwrap());
    RaceOutcome {
        committed,
        rolled_back,
        seen,
    }
}

/// Reads from `_first` in pages of `page_size` (long polling if `waits`)
/// until the writers have stopped and a page brings nothing new, having
/// seen as many events as were committed (or, for a feed that lost some,
/// after a grace second).
async fn consume_behind_writers(
    url: String,
    partitions: u32,
    page_size: u32,
    waits: bool,
    writing: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) -> Vec<String> {
    let client = Client::builder(url.parse().unwrap(), partitions).build();
    let mut request = FeedRequest::new(partitions, (0..partitions).map(|p| (p, Cursor::first())))
        .unwrap()
        .with_page_size_hint(page_size);
    if waits {
        request = request.with_wait(Duration::from_secs(1));
    }
    let mut seen = Vec::new();
    let mut stopped_at = None;
    loop {
        let still_writing = writing.load(Ordering::SeqCst);
        let page = client.fetch_page(&request).await.expect("a page");
        seen.extend(page.events().iter().map(id_of));
        request = page.next_request(&request);
        if still_writing || page.made_progress() {
            continue;
        }
        let stopped_at = *stopped_at.get_or_insert_with(tokio::time::Instant::now);
        let all_seen = seen.len() as u64 >= committed.load(Ordering::SeqCst);
        if all_seen || stopped_at.elapsed() > Duration::from_secs(1) {
            return seen;
        }
        assert!(
            stopped_at.elapsed() < LIVENESS,
            "the consumer did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads every partition of the feed at `url` from `cursors` to its end in
/// pages of `page_size`, and returns the event ids and the cursors reached.
pub(crate) async fn read_to_end(
    url: &str,
    partitions: u32,
    cursors: Vec<(u32, Cursor)>,
    page_size: u32,
    max_pages: usize,
) -> (Vec<String>, Vec<(u32, Cursor)>) {
    let client = Client::builder(url.parse().unwrap(), partitions).build();
    let mut request = FeedRequest::new(partitions, cursors)
        .unwrap()
        .with_page_size_hint(page_size);
    let mut seen = Vec::new();
    for _ in 0..max_pages {
        let page = client.fetch_page(&request).await.expect("a page");
        seen.extend(page.events().iter().map(id_of));
        request = page.next_request(&request);
        if !page.made_progress() {
            break;
        }
    }
    (seen, request.cursors().to_vec())
}
