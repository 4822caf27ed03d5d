use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

/// A live view of a runtime: what it handled, what failed, what it owns,
/// whether it has caught up. Cheap to clone; clones see the same runtime.
///
/// [`snapshot`](Self::snapshot) reads it now; [`wait_for`](Self::wait_for)
/// waits for a condition (caught up, some partitions owned...).
#[derive(Debug, Clone)]
pub struct Stats {
    sender: Arc<watch::Sender<StatsSnapshot>>,
}

/// The figures of a runtime at one moment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Events handed to the handler and committed.
    pub events: u64,
    /// Pages committed.
    pub pages: u64,
    /// Poison events recorded as dead letters.
    pub dead_letters: u64,
    /// Failed fetches (transport, timeouts, retryable statuses).
    pub transport_errors: u64,
    /// Pages the handler failed, rolled back.
    pub handler_errors: u64,
    /// Failures of the cursor store's database.
    pub store_errors: u64,
    /// Pages rolled back because another instance had moved a cursor.
    pub conflicts: u64,
    /// The partitions this instance owns, in order.
    pub owned_partitions: Vec<u32>,
    /// Whether the last page brought nothing new for any owned partition:
    /// the consumer had read everything the feed had when it asked. It
    /// turns off when a page with events commits or ownership changes.
    pub caught_up: bool,
    /// When the last committed page with events was committed.
    pub last_event_at: Option<SystemTime>,
    /// When the runtime started.
    pub started_at: Instant,
}

impl StatsSnapshot {
    /// Every error counted: transport, handler, store and conflicts.
    pub fn errors(&self) -> u64 {
        self.transport_errors + self.handler_errors + self.store_errors + self.conflicts
    }

    /// Events committed per second since the runtime started.
    pub fn events_per_second(&self) -> f64 {
        let elapsed = self.started_at.elapsed().max(Duration::from_millis(1));
        self.events as f64 / elapsed.as_secs_f64()
    }
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            sender: Arc::new(watch::Sender::new(StatsSnapshot {
                events: 0,
                pages: 0,
                dead_letters: 0,
                transport_errors: 0,
                handler_errors: 0,
                store_errors: 0,
                conflicts: 0,
                owned_partitions: Vec::new(),
                caught_up: false,
                last_event_at: None,
                started_at: Instant::now(),
            })),
        }
    }

    /// The figures now.
    pub fn snapshot(&self) -> StatsSnapshot {
        self.sender.borrow().clone()
    }

    /// Waits until `condition` holds for the figures, and returns them.
    pub async fn wait_for(
        &self,
        mut condition: impl FnMut(&StatsSnapshot) -> bool,
    ) -> StatsSnapshot {
        let mut receiver = self.sender.subscribe();
        receiver
            .wait_for(|snapshot| condition(snapshot))
            .await
            .map(|snapshot| snapshot.clone())
            .expect("the sender lives as long as this handle")
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut StatsSnapshot)) {
        self.sender.send_modify(change);
    }
}
