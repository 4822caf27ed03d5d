use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::ReadContext;

/// Tells readers that are holding a long-polling request (`wait`) that
/// events were appended, partition by partition: the wake-up primitive of
/// every feed that supports waiting.
///
/// The store's writer calls [`notify`](Self::notify) after each append
/// (after the events are visible to readers); a reader that has nothing to
/// send calls [`wait_for_news`](Self::wait_for_news) before reading. A
/// store that cannot notify of every append (writes from another process,
/// a notification channel that can drop messages) sets a bounded poll
/// interval with [`poll_every`](Self::poll_every), and its readers look
/// again at least that often.
///
/// Cheap to clone: clones share the same waiters. A notification costs
/// nothing when nobody waits, and wakes only the waiters of that partition.
///
/// ```
/// use std::time::Duration;
/// use zeroeventhub::server::{AppendSignal, WaitEnd};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let signal = AppendSignal::new(2);
/// let mut listener = signal.listen([1]);
/// signal.notify(0); // another partition: not heard
/// signal.notify(1); // heard, although nobody was waiting yet
/// let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
/// assert_eq!(listener.wait(deadline).await, WaitEnd::Appended);
/// assert_eq!(listener.wait(deadline).await, WaitEnd::Deadline);
/// # }
/// ```
#[derive(Clone)]
pub struct AppendSignal {
    shared: Arc<Shared>,
    poll_interval: Option<Duration>,
}

struct Shared {
    partitions: Box<[PartitionSignal]>,
    waiters: AtomicUsize,
}

#[derive(Default)]
struct PartitionSignal {
    /// Counts notifications, so that a listener hears of those that came
    /// while it was not waiting (between `listen` and `wait`, or between
    /// two waits).
    appends: AtomicU64,
    notify: Notify,
}

impl AppendSignal {
    /// A signal for a feed of `partition_count` partitions, notified of
    /// every append (no poll interval).
    pub fn new(partition_count: u32) -> Self {
        AppendSignal {
            shared: Arc::new(Shared {
                partitions: (0..partition_count)
                    .map(|_| PartitionSignal::default())
                    .collect(),
                waiters: AtomicUsize::new(0),
            }),
            poll_interval: None,
        }
    }

    /// Makes the listeners made from now on by this handle (and its later
    /// clones) look again at least every `interval`, notified or not: for
    /// stores that cannot notify of every append. Bounded below by 1 ms.
    pub fn poll_every(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// The poll interval of stores that cannot notify, if set.
    pub fn poll_interval(&self) -> Option<Duration> {
        self.poll_interval
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.shared.partitions.len() as u32
    }

    /// Wakes the listeners of `partition`, and only them. Call it once the
    /// appended events can be read. A partition the signal lacks is
    /// ignored.
    pub fn notify(&self, partition: u32) {
        if let Some(signal) = self.shared.partitions.get(partition as usize) {
            signal.appends.fetch_add(1, Ordering::SeqCst);
            signal.notify.notify_waiters();
        }
    }

    /// Wakes every listener, as if every partition had an append (for a
    /// store that lost track of what changed, such as a notification
    /// channel that reconnected).
    pub fn notify_all(&self) {
        for partition in 0..self.partition_count() {
            self.notify(partition);
        }
    }

    /// The number of listeners alive: requests waiting for an append.
    pub fn waiters(&self) -> usize {
        self.shared.waiters.load(Ordering::SeqCst)
    }

    /// Starts listening to `partitions` at once: a notification from now
    /// on ends the listener's next [`wait`](AppendListener::wait), even
    /// if it comes before that wait starts. Partitions the signal lacks are
    /// never notified.
    pub fn listen(&self, partitions: impl IntoIterator<Item = u32>) -> AppendListener {
        let seen = partitions
            .into_iter()
            .filter_map(|partition| {
                let signal = self.shared.partitions.get(partition as usize)?;
                Some((partition as usize, signal.appends.load(Ordering::SeqCst)))
            })
            .collect();
        self.shared.waiters.fetch_add(1, Ordering::SeqCst);
        AppendListener {
            shared: Arc::clone(&self.shared),
            seen,
            poll_interval: self.poll_interval,
        }
    }

    /// The long-polling step of a reader, before it reads: when `context`
    /// has a [wait deadline](ReadContext::wait_deadline), listens to the
    /// request's partitions and runs [`AppendListener::until_news`];
    /// without one, returns `Ok(false)` at once without calling
    /// `has_news`.
    ///
    /// `has_news` answers whether any requested partition has something
    /// past the position the request reads it from (fix `_last` to the
    /// head before calling this, so that the page brings only what was
    /// appended after the request arrived). Afterwards the reader reads its
    /// page as it always does: with news, or an empty page at the deadline.
    pub async fn wait_for_news<F, Fut, E>(
        &self,
        context: &ReadContext<'_>,
        has_news: F,
    ) -> Result<bool, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool, E>>,
    {
        let Some(deadline) = context.wait_deadline() else {
            return Ok(false);
        };
        let partitions = context.request().cursors().iter().map(|(p, _)| *p);
        self.listen(partitions).until_news(deadline, has_news).await
    }
}

impl fmt::Debug for AppendSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppendSignal")
            .field("partition_count", &self.partition_count())
            .field("waiters", &self.waiters())
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// Interest in appends to some partitions of an [`AppendSignal`], from the
/// moment [`AppendSignal::listen`] made it; counted among the signal's
/// [`waiters`](AppendSignal::waiters) until dropped.
pub struct AppendListener {
    shared: Arc<Shared>,
    /// Each partition listened to, with its notification count when last
    /// looked at.
    seen: Vec<(usize, u64)>,
    poll_interval: Option<Duration>,
}

/// Why [`AppendListener::wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// One of the partitions had an append (or a
    /// [`notify_all`](AppendSignal::notify_all)).
    Appended,
    /// The signal's poll interval passed: look again, and wait again.
    PollDue,
    /// The deadline passed.
    Deadline,
}

impl AppendListener {
    /// Waits until one of the partitions is notified (since `listen` or
    /// the previous wait), the poll interval passes (signals with
    /// [`poll_every`](AppendSignal::poll_every)), or `deadline`. Costs no
    /// polling of anything when the signal has no poll interval.
    pub async fn wait(&mut self, deadline: Instant) -> WaitEnd {
        let until = match self.poll_interval {
            Some(interval) => deadline.min(Instant::now() + interval),
            None => deadline,
        };
        let mut sleep = pin!(tokio::time::sleep_until(until));
        let shared = Arc::clone(&self.shared);
        loop {
            // Created before the counts are compared: a notification after
            // the comparison then wakes one of these.
            let mut notified: Vec<_> = self
                .seen
                .iter()
                .map(|(partition, _)| Box::pin(shared.partitions[*partition].notify.notified()))
                .collect();
            if self.take_appended() {
                return WaitEnd::Appended;
            }
            let woken = poll_fn(|cx| {
                if notified.iter_mut().any(|n| n.as_mut().poll(cx).is_ready()) {
                    return Poll::Ready(true);
                }
                sleep.as_mut().poll(cx).map(|()| false)
            })
            .await;
            if !woken {
                return if until < deadline {
                    WaitEnd::PollDue
                } else {
                    WaitEnd::Deadline
                };
            }
            // Woken: the counts tell which way on the next turn.
        }
    }

    /// The read-check-wait-recheck loop of a waiting reader, written once
    /// for every store: calls `has_news` (whether any partition has
    /// something past the request's positions); when not, waits
    /// ([`wait`](Self::wait)) and calls it again, until it answers `true`
    /// (returns `Ok(true)`) or `deadline` passes (returns `Ok(false)`
    /// without a last call: the reader's read is the last look). An error
    /// from `has_news` ends the loop.
    pub async fn until_news<F, Fut, E>(
        &mut self,
        deadline: Instant,
        mut has_news: F,
    ) -> Result<bool, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool, E>>,
    {
        loop {
            if has_news().await? {
                return Ok(true);
            }
            if self.wait(deadline).await == WaitEnd::Deadline {
                return Ok(false);
            }
        }
    }

    /// Whether a partition was notified since last looked at; looks at
    /// all of them, so that one answer covers every notification so far.
    fn take_appended(&mut self) -> bool {
        let mut appended = false;
        for (partition, seen) in &mut self.seen {
            let now = self.shared.partitions[*partition]
                .appends
                .load(Ordering::SeqCst);
            appended |= now != *seen;
            *seen = now;
        }
        appended
    }
}

impl Drop for AppendListener {
    fn drop(&mut self) {
        self.shared.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

impl fmt::Debug for AppendListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let partitions: Vec<usize> = self.seen.iter().map(|(p, _)| *p).collect();
        f.debug_struct("AppendListener")
            .field("partitions", &partitions)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}
