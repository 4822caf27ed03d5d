use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use tokio::time::sleep_until;
use tracing::Instrument;

use super::store::{CursorChange, CursorStore, StoreError};
use super::{DeadLetter, Error, Handler, PoisonPolicy, Stats};
use crate::BoxError;
use crate::client::retry::backoff;
use crate::client::{self, Client, HttpService, Page};
use crate::protocol::{Cursor, Event, FeedRequest, HeaderSelection, RawJson};

/// The consumption loop, done once: from a [`Client`], a [`CursorStore`]
/// and a consumer name, [`run`](Self::run) reads the feed and hands each
/// page's events to your [`Handler`] in a transaction that also stores the
/// cursors after them, exactly once, until its shutdown signal.
///
/// Each turn of the loop:
///
/// 1. takes this instance's share of the partitions from the store
///    ([`CursorStore::claim`], every
///    [`ownership_interval`](Self::with_ownership_interval)), and loads
///    their cursors;
/// 2. fetches a page from them (long polling: the feed answers as soon as
///    something comes, or after the wait);
/// 3. begins a transaction, hands the handler the events covered by a
///    checkpoint (trailing events never: the next page serves them again),
///    stores the next cursors in the same transaction as a compare-and-set
///    on the previous ones, and commits.
///
/// What fails is retried, never skipped: a transport error or a retryable
/// status backs off (capped, jittered) and tries again, forever; a handler
/// error or a database error rolls the page back and tries again after a
/// backoff; a lost compare-and-set (another instance moved a cursor) rolls
/// back and reads ownership and cursors again. Poison events follow the
/// [`PoisonPolicy`]. The loop stops with an [`Error`] only on what a retry
/// cannot change.
///
/// On shutdown, a fetch in flight is dropped; a page whose handler is
/// running is rolled back (its future is dropped), and one whose handler
/// returned commits; then the store releases this instance's partitions
/// and `run` returns.
///
/// Each page is a tracing span `page` (consumer, partitions, events, next
/// cursors); [`stats`](Self::stats) gives the figures.
pub struct Runtime<S, St> {
    client: Client<S>,
    store: St,
    name: String,
    settings: Settings,
    stats: Stats,
}

#[derive(Debug, Clone)]
struct Settings {
    page_size: u32,
    wait: Duration,
    poll_interval: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    ownership_interval: Duration,
    poison: PoisonPolicy,
    headers: HeaderSelection,
}

/// How a page ended.
enum Outcome {
    Committed { events: u64, dead_letters: u64 },
    HandlerFailed(BoxError),
    StoreFailed(StoreError),
    Poison(Error),
    Shutdown,
}

/// How waiting for a page ended.
enum Fetched {
    Page(Result<Page, client::Error>),
    OwnershipChanged,
    Shutdown,
}

/// Turns a raw event into the handler's type, or says why it cannot.
type Decode<D> = fn(Event) -> Result<Event<D>, (Event, serde_json::Error)>;

// The defaults need no transport or store, so that a program can print
// them (`Runtime::<(), ()>::DEFAULT_WAIT`) before it has either.
impl<S, St> Runtime<S, St> {
    /// The default long-polling wait: 20 s.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);
    /// The default pause after a page that brought nothing, when the feed
    /// answered without waiting: 1 s.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
    /// The default first backoff after a failure: 100 ms.
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
    /// The default longest backoff: 10 s.
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
    /// The default time between two claims of partitions: 1 s. A dead
    /// instance's partitions move, and a new instance gets its share,
    /// within about two of these.
    pub const DEFAULT_OWNERSHIP_INTERVAL: Duration = Duration::from_secs(1);
}

impl<S, St> Runtime<S, St>
where
    S: HttpService + Clone,
    St: CursorStore,
{
    /// A runtime for consumer `name`, reading through `client` and keeping
    /// its cursors in `store`. Instances with the same name share the
    /// partitions (when the store shares them) and the cursors.
    pub fn new(client: Client<S>, store: St, name: impl Into<String>) -> Self {
        Runtime {
            client,
            store,
            name: name.into(),
            settings: Settings {
                page_size: 0,
                wait: Self::DEFAULT_WAIT,
                poll_interval: Self::DEFAULT_POLL_INTERVAL,
                backoff_base: Self::DEFAULT_BACKOFF_BASE,
                backoff_max: Self::DEFAULT_BACKOFF_MAX,
                ownership_interval: Self::DEFAULT_OWNERSHIP_INTERVAL,
                poison: PoisonPolicy::default(),
                headers: HeaderSelection::None,
            },
            stats: Stats::new(),
        }
    }

    /// Asks for pages of about `events` events (default: the feed's).
    pub fn with_page_size(mut self, events: u32) -> Self {
        self.settings.page_size = events;
        self
    }

    /// Sets how long the feed may hold a request while it has nothing new
    /// (default [`DEFAULT_WAIT`](Self::DEFAULT_WAIT); zero: never). Once a
    /// page brought nothing, the next requests ask for it, until one
    /// brings something.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.settings.wait = wait;
        self
    }

    /// Sets the least time between two requests while the feed has
    /// nothing new (default [`DEFAULT_POLL_INTERVAL`](Self::DEFAULT_POLL_INTERVAL)):
    /// after a page that brought nothing, the runtime asks again no sooner
    /// than this after it asked. A feed that held the request for a wait
    /// took longer, so the runtime asks again at once; one that ignores
    /// `wait` answers at once, and the runtime then polls at this pace.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// Sets the backoff after failures: about `base` after the first,
    /// doubling up to `max`, with jitter (defaults
    /// [`DEFAULT_BACKOFF_BASE`](Self::DEFAULT_BACKOFF_BASE) and
    /// [`DEFAULT_BACKOFF_MAX`](Self::DEFAULT_BACKOFF_MAX)).
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff_base = base;
        self.settings.backoff_max = max.max(base);
        self
    }

    /// Sets how often ownership is claimed from the store (default
    /// [`DEFAULT_OWNERSHIP_INTERVAL`](Self::DEFAULT_OWNERSHIP_INTERVAL)).
    pub fn with_ownership_interval(mut self, interval: Duration) -> Self {
        self.settings.ownership_interval = interval;
        self
    }

    /// Sets what happens to events the consumer's type refuses (default
    /// [`PoisonPolicy::Stop`]).
    pub fn with_poison_policy(mut self, policy: PoisonPolicy) -> Self {
        self.settings.poison = policy;
        self
    }

    /// Sets which event headers to ask the feed for (default none).
    pub fn with_headers(mut self, headers: HeaderSelection) -> Self {
        self.settings.headers = headers;
        self
    }

    /// The runtime's figures, live.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// The cursor store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Consumes the feed with `handler`, event data as [`RawJson`], until
    /// `shutdown` completes (then returns `Ok`) or something a retry cannot
    /// change happens (see [`Error`]).
    pub async fn run<H>(&self, handler: H, shutdown: impl Future<Output = ()>) -> Result<(), Error>
    where
        H: Handler<St::Transaction>,
    {
        self.run_decoding(handler, shutdown, Ok).await
    }

    /// Like [`run`](Self::run), with each event's data deserialized into
    /// `D` first. An event `D` refuses is a poison event: see
    /// [`with_poison_policy`](Self::with_poison_policy).
    pub async fn run_as<D, H>(
        &self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error>
    where
        D: DeserializeOwned + Send + Sync,
        H: Handler<St::Transaction, D>,
    {
        self.run_decoding(handler, shutdown, decode_as::<D>).await
    }

    async fn run_decoding<D, H>(
        &self,
        mut handler: H,
        shutdown: impl Future<Output = ()>,
        decode: Decode<D>,
    ) -> Result<(), Error>
    where
        D: Send + Sync,
        H: Handler<St::Transaction, D>,
    {
        let mut shutdown = pin!(shutdown);
        let partition_count = self.client.partition_count();
        let mut owned: Vec<u32> = Vec::new();
        // `None`: to be read from the store before the next page.
        let mut cursors: Option<Vec<(u32, Cursor)>> = None;
        let mut next_claim = Instant::now();
        let mut failures = 0;
        // Whether the last page brought nothing: then the next one waits.
        let mut idle = false;

        let result = loop {
            if Instant::now() >= next_claim {
                next_claim = Instant::now() + self.settings.ownership_interval;
                if self.claim(&mut owned, partition_count).await {
                    cursors = None;
                }
            }
            if owned.is_empty() {
                tokio::select! {
                    biased;
                    () = shutdown.as_mut() => break Ok(()),
                    () = sleep_until(next_claim.into()) => continue,
                }
            }
            let previous = match cursors.take() {
                Some(cursors) => cursors,
                None => match self.store.load(&self.name, &owned).await {
                    Ok(loaded) => loaded,
                    Err(error) => {
                        self.count_store_error(&error);
                        if self.back_off(&mut failures, shutdown.as_mut()).await {
                            break Ok(());
                        }
                        continue;
                    }
                },
            };
            let request = match self.request(&previous, idle) {
                Ok(request) => request,
                Err(error) => break Err(Error::feed(&self.name, error)),
            };

            let asked_at = tokio::time::Instant::now();
            let fetched = {
                let mut fetch = pin!(self.client.fetch_page(&request));
                loop {
                    tokio::select! {
                        biased;
                        () = shutdown.as_mut() => break Fetched::Shutdown,
                        page = fetch.as_mut() => break Fetched::Page(page),
                        () = sleep_until(next_claim.into()) => {
                            next_claim = Instant::now() + self.settings.ownership_interval;
                            if self.claim(&mut owned, partition_count).await {
                                break Fetched::OwnershipChanged;
                            }
                        }
                    }
                }
            };
            let page = match fetched {
                Fetched::Shutdown => break Ok(()),
                Fetched::OwnershipChanged => continue,
                Fetched::Page(Ok(page)) => page,
                Fetched::Page(Err(error)) if is_retryable(&error) => {
                    tracing::warn!(consumer = %self.name, %error, "fetching a page failed; backing off");
                    self.stats.update(|stats| stats.transport_errors += 1);
                    cursors = Some(previous);
                    if self.back_off(&mut failures, shutdown.as_mut()).await {
                        break Ok(());
                    }
                    continue;
                }
                Fetched::Page(Err(error)) => break Err(Error::feed(&self.name, error)),
            };

            let changes = changes(&previous, page.next_cursors());
            if changes.is_empty() {
                failures = 0;
                self.stats.update(|stats| stats.caught_up = true);
                cursors = Some(previous);
                idle = true;
                let pause = self.idle_pause(&request, asked_at);
                if !pause.is_zero() {
                    tokio::select! {
                        biased;
                        () = shutdown.as_mut() => break Ok(()),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }

            let span = tracing::info_span!(
                "page",
                consumer = %self.name,
                partitions = ?owned,
                events = page.events().len(),
                cursors = ?page.next_cursors(),
            );
            let next = page.next_cursors().to_vec();
            let outcome = self
                .commit_page(
                    page,
                    &previous,
                    &changes,
                    &mut handler,
                    decode,
                    shutdown.as_mut(),
                )
                .instrument(span)
                .await;
            match outcome {
                Outcome::Committed {
                    events,
                    dead_letters,
                } => {
                    failures = 0;
                    idle = false;
                    cursors = Some(next);
                    self.stats.update(|stats| {
                        stats.pages += 1;
                        stats.events += events;
                        stats.dead_letters += dead_letters;
                        stats.caught_up = false;
                        if events > 0 {
                            stats.last_event_at = Some(SystemTime::now());
                        }
                    });
                }
                Outcome::HandlerFailed(error) => {
                    tracing::warn!(consumer = %self.name, %error, "the handler failed; the page was rolled back");
                    self.stats.update(|stats| stats.handler_errors += 1);
                    cursors = Some(previous);
                    if self.back_off(&mut failures, shutdown.as_mut()).await {
                        break Ok(());
                    }
                }
                Outcome::StoreFailed(error) if error.is_conflict() => {
                    // Another instance owns the partition now, or did: read
                    // ownership and cursors again.
                    tracing::info!(consumer = %self.name, %error, "lost a cursor to another instance");
                    self.stats.update(|stats| stats.conflicts += 1);
                    next_claim = Instant::now();
                }
                Outcome::StoreFailed(error) => {
                    // The commit may have happened: read the cursors again.
                    self.count_store_error(&error);
                    if self.back_off(&mut failures, shutdown.as_mut()).await {
                        break Ok(());
                    }
                }
                Outcome::Poison(error) => break Err(error),
                Outcome::Shutdown => break Ok(()),
            }
        };

        if let Err(error) = self.store.release(&self.name).await {
            tracing::warn!(consumer = %self.name, %error, "releasing the partitions failed");
        }
        self.stats.update(|stats| stats.owned_partitions.clear());
        result
    }

    /// One page's transaction: dead letters, the handler's effects, the
    /// cursors, commit.
    async fn commit_page<D, H>(
        &self,
        page: Page,
        previous: &[(u32, Cursor)],
        changes: &[CursorChange],
        handler: &mut H,
        decode: Decode<D>,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Outcome
    where
        D: Send + Sync,
        H: Handler<St::Transaction, D>,
    {
        let mut transaction = match self.store.begin().await {
            Ok(transaction) => transaction,
            Err(error) => return Outcome::StoreFailed(error),
        };
        let mut events = Vec::with_capacity(page.events().len());
        let mut dead_letters = 0;
        for event in page.into_events() {
            match decode(event) {
                Ok(event) => events.push(event),
                Err((event, error)) => {
                    let after = cursor_of(previous, event.partition);
                    if self.settings.poison == PoisonPolicy::Stop {
                        return Outcome::Poison(Error::poison(event.partition, after, error));
                    }
                    tracing::warn!(consumer = %self.name, partition = event.partition, %error, "recording a poison event");
                    let letter = DeadLetter::new(event, after, &error);
                    if let Err(error) = self
                        .store
                        .dead_letter(&mut transaction, &self.name, &letter)
                        .await
                    {
                        return Outcome::StoreFailed(error);
                    }
                    dead_letters += 1;
                }
            }
        }
        tokio::select! {
            biased;
            () = shutdown => return Outcome::Shutdown,
            handled = handler.handle(&mut transaction, &events) => {
                if let Err(error) = handled {
                    return Outcome::HandlerFailed(error.into());
                }
            }
        }
        if let Err(error) = self.store.save(&mut transaction, &self.name, changes).await {
            return Outcome::StoreFailed(error);
        }
        match self.store.commit(transaction).await {
            Ok(()) => Outcome::Committed {
                events: events.len() as u64,
                dead_letters,
            },
            Err(error) => Outcome::StoreFailed(error),
        }
    }

    /// Claims this instance's share; whether the owned partitions changed.
    async fn claim(&self, owned: &mut Vec<u32>, partition_count: u32) -> bool {
        let claimed = match self.store.claim(&self.name, partition_count).await {
            Ok(claimed) => claimed,
            Err(error) => {
                // Ownership is unknown: own nothing until a claim succeeds.
                self.count_store_error(&error);
                Vec::new()
            }
        };
        if claimed == *owned {
            return false;
        }
        tracing::info!(consumer = %self.name, partitions = ?claimed, "owned partitions changed");
        *owned = claimed;
        self.stats.update(|stats| {
            stats.owned_partitions = owned.clone();
            stats.caught_up = false;
        });
        true
    }

    /// The request for the owned partitions from their cursors, with the
    /// wait when the consumer is `idle`. A busy consumer asks without one,
    /// so that the page that finds nothing new comes at once and says it
    /// caught up.
    fn request(&self, cursors: &[(u32, Cursor)], idle: bool) -> Result<FeedRequest, client::Error> {
        let request = FeedRequest::new(self.client.partition_count(), cursors.iter().cloned())
            .map_err(client::Error::invalid_request)?;
        let wait = if idle {
            self.settings.wait
        } else {
            Duration::ZERO
        };
        Ok(request
            .with_page_size_hint(self.settings.page_size)
            .with_headers(self.settings.headers.clone())
            .with_wait(wait))
    }

    /// How long to wait before asking again after a page that brought
    /// nothing, asked at `asked_at`: nothing when the next request will
    /// wait and this one did not; otherwise until a poll interval after
    /// `asked_at`, so that a feed that ignores `wait` and answers at once
    /// is polled at that pace, never in a hot loop.
    fn idle_pause(&self, request: &FeedRequest, asked_at: tokio::time::Instant) -> Duration {
        if request.wait().is_none() && !self.settings.wait.is_zero() {
            return Duration::ZERO;
        }
        self.settings
            .poll_interval
            .saturating_sub(asked_at.elapsed())
    }

    fn count_store_error(&self, error: &StoreError) {
        tracing::warn!(consumer = %self.name, %error, "the cursor store failed; backing off");
        self.stats.update(|stats| stats.store_errors += 1);
    }

    /// Sleeps the backoff for one more failure in a row; whether shutdown
    /// came first.
    async fn back_off(
        &self,
        failures: &mut u32,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        *failures = failures.saturating_add(1);
        let delay = backoff(
            self.settings.backoff_base,
            self.settings.backoff_max,
            *failures,
        );
        tokio::select! {
            biased;
            () = shutdown => true,
            () = tokio::time::sleep(delay) => false,
        }
    }
}

impl<S, St> fmt::Debug for Runtime<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Whether a fetch that failed with `error` may succeed later: transport
/// failures, timeouts, a body cut short and statuses that say "later".
fn is_retryable(error: &client::Error) -> bool {
    error.is_connect()
        || error.is_request()
        || error.is_timeout()
        || error.is_truncated()
        || error
            .status()
            .is_some_and(|status| matches!(status.as_u16(), 408 | 429 | 500..=599))
}

/// The cursors the page moved, from where they were.
fn changes(previous: &[(u32, Cursor)], next: &[(u32, Cursor)]) -> Vec<CursorChange> {
    next.iter()
        .filter_map(|(partition, next)| {
            let previous = cursor_of(previous, *partition);
            (previous != *next).then(|| CursorChange {
                partition: *partition,
                previous,
                next: next.clone(),
            })
        })
        .collect()
}

/// The cursor of `partition` among `cursors`, `_first` if it has none.
fn cursor_of(cursors: &[(u32, Cursor)], partition: u32) -> Cursor {
    cursors
        .iter()
        .find(|(p, _)| *p == partition)
        .map_or_else(Cursor::first, |(_, cursor)| cursor.clone())
}

fn decode_as<D: DeserializeOwned>(
    event: Event<RawJson>,
) -> Result<Event<D>, (Event, serde_json::Error)> {
    match event.data.deserialize::<D>() {
        Ok(data) => Ok(Event {
            partition: event.partition,
            headers: event.headers,
            data,
        }),
        Err(error) => Err((event, error)),
    }
}
