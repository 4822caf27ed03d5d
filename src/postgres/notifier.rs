//! A PostgreSQL writer that wakes the feeds after its caller's commit
//! instead of at it.
//!
//! `NOTIFY` in a transaction makes PostgreSQL take a database-wide lock at
//! commit and hold it through the commit's WAL flush, so transactions that
//! notify commit one at a time instead of sharing flushes. This writer
//! appends without notifying; once the caller has committed, a background
//! task sends the wake-up in a transaction of its own, which writes nothing
//! and so waits for no flush. Wake-ups that pile up while one is on its way
//! go out together, in the next.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::outbox::PostgresOutbox;
use crate::outbox::{OutboxError, OutboxEvent};

/// The least time between two wake-ups: under a stream of commits, those of
/// each millisecond share one `NOTIFY` (the feeds hear of a commit at most
/// this much later), instead of nearly one each.
const MIN_GAP: Duration = Duration::from_millis(1);
/// The longest a wake-up may take, connecting included: past it, the
/// connection is given up for a new one (a server that stopped answering
/// would hold the task, and every later wake-up, for good).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a failed wake-up, doubling up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between attempts while the database is unreachable.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The partitions that a transaction appended to, to hand to
/// [`NotifyAfterCommit::notify`] once it has committed.
///
/// Dropping it instead only delays the events: requests waiting on those
/// partitions find them at the end of their wait, and every request that
/// does not wait finds them at once.
#[must_use = "hand it to `NotifyAfterCommit::notify` once the transaction has committed"]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    partitions: BTreeSet<u32>,
}

impl Appended {
    /// The partitions appended to, in ascending order.
    pub fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.partitions.iter().copied()
    }

    /// Adds the partitions of `other`: several appends of one transaction
    /// make one wake-up.
    pub fn merge(&mut self, other: Appended) {
        self.partitions.extend(other.partitions);
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }
}

/// An outbox writer whose appends wake the feeds after the caller's commit,
/// through [`notify`](Self::notify), instead of at the commit.
///
/// [`PostgresOutbox::append`] notifies inside the caller's transaction, so
/// the wake-up cannot be forgotten and is never early, but concurrent
/// notifying transactions of the whole database then commit one WAL flush
/// at a time. This writer keeps them apart: each append is a plain
/// `INSERT`, and the wake-ups go out from a task of their own (started by
/// the first append, ended with the last clone), several commits' worth in
/// one `NOTIFY`, on a connection it opens with the pool's options (outside
/// the pool, so it never takes a connection the writers need). The wake-up
/// comes one round trip later than a notifying commit's, and at most one
/// goes out per millisecond. Nothing is ever lost by a wake-up that does
/// not come (a crash between the commit and [`notify`](Self::notify), a
/// database out of reach): waiting requests find the events when their
/// wait ends, and requests that do not wait find them at once.
///
/// Made by [`PostgresOutbox::notify_after_commit`]; cheap to clone.
///
/// ```no_run
/// use sqlx::PgPool;
/// use zeroeventhub::protocol::RawJson;
/// use zeroeventhub::server::{OutboxEvent, PostgresOutbox, TableName};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// let outbox = PostgresOutbox::new(TableName::new("order_events")?, 4);
/// let writer = outbox.notify_after_commit(pool.clone());
///
/// let mut tx = pool.begin().await?;
/// let data = RawJson::from_bytes(r#"{"order":"A-17","status":"paid"}"#)?;
/// let appended = writer.append(&mut tx, &OutboxEvent::keyed("A-17", data)).await?;
/// tx.commit().await?;
/// writer.notify(appended);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NotifyAfterCommit {
    outbox: PostgresOutbox,
    shared: Arc<Shared>,
}

/// What the writer's clones share. Its task holds only a weak reference,
/// to learn when the last clone is gone.
struct Shared {
    /// How the task connects: the pool's options.
    connect: Arc<PgConnectOptions>,
    pending: Arc<Pending>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The partitions committed to and not yet announced, and the wake-up of
/// the task that announces them; it outlives the writer, so that the task
/// still sends what the last clone left.
#[derive(Default)]
struct Pending {
    partitions: Mutex<BTreeSet<u32>>,
    wake: Notify,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The task sees the writer gone and ends, once it has sent what is
        // pending.
        self.pending.wake.notify_one();
    }
}

impl NotifyAfterCommit {
    pub(crate) fn new(outbox: PostgresOutbox, pool: PgPool) -> Self {
        NotifyAfterCommit {
            outbox,
            shared: Arc::new(Shared {
                connect: pool.connect_options(),
                pending: Arc::default(),
                task: Mutex::default(),
            }),
        }
    }

    /// The outbox it appends to.
    pub fn outbox(&self) -> &PostgresOutbox {
        &self.outbox
    }

    /// Appends `event` in the caller's transaction, like
    /// [`PostgresOutbox::append`] but without notifying: hand the result to
    /// [`notify`](Self::notify) after the commit.
    pub async fn append(
        &self,
        connection: &mut PgConnection,
        event: &OutboxEvent,
    ) -> Result<Appended, OutboxError> {
        self.ensure_task();
        let partition = self.outbox.insert(connection, event).await?;
        Ok(Appended {
            partitions: BTreeSet::from([partition]),
        })
    }

    /// Appends `events`, in this order, in the caller's transaction, like
    /// [`PostgresOutbox::append_batch`] but without notifying: hand the
    /// result to [`notify`](Self::notify) after the commit.
    pub async fn append_batch(
        &self,
        connection: &mut PgConnection,
        events: &[OutboxEvent],
    ) -> Result<Appended, OutboxError> {
        self.ensure_task();
        let partitions = self.outbox.insert_batch(connection, events).await?;
        Ok(Appended {
            partitions: partitions.into_iter().collect(),
        })
    }

    /// Wakes the feeds' requests waiting on the partitions of `appended`,
    /// whose transaction has committed. Returns at once: the `NOTIFY` goes
    /// out from the writer's task, with those of other commits that came
    /// meanwhile, and is sent again after a pause while the database fails.
    ///
    /// Called before the commit, it may wake the feeds too early, and they
    /// then find the events only at the end of their wait.
    pub fn notify(&self, appended: Appended) {
        if appended.is_empty() {
            return;
        }
        let pending = &self.shared.pending;
        pending
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(appended.partitions);
        pending.wake.notify_one();
    }

    /// Starts the task if it is not running (the first append, or one after
    /// the runtime that ran it ended).
    fn ensure_task(&self) {
        let mut task = self
            .shared
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_none_or(JoinHandle::is_finished) {
            *task = Some(tokio::spawn(announce(
                Arc::downgrade(&self.shared),
                Arc::clone(&self.shared.pending),
                Arc::clone(&self.shared.connect),
                self.outbox.notify_statement().to_owned(),
            )));
        }
    }
}

impl fmt::Debug for NotifyAfterCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = self
            .shared
            .pending
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("NotifyAfterCommit")
            .field("outbox", &self.outbox)
            .field("pending_partitions", &pending)
            .finish()
    }
}

/// The writer's task: sends what is pending, in one `NOTIFY` statement,
/// until the writer is gone and nothing is pending. It keeps a connection
/// of its own, opened with the pool's options (taking none of the pool's,
/// nor the pool's test of a connection at each use), and opens a new one
/// after a failure.
async fn announce(
    writer: Weak<Shared>,
    pending: Arc<Pending>,
    connect: Arc<PgConnectOptions>,
    statement: String,
) {
    let mut pause = FIRST_PAUSE;
    let mut unsent = BTreeSet::new();
    let mut connection = None;
    let mut next_due = tokio::time::Instant::now();
    loop {
        // Whether the writer lives, learned before taking what is pending:
        // what its last clone left is in the set by the time it is gone.
        let alive = writer.strong_count() > 0;
        unsent.append(
            &mut pending
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if unsent.is_empty() {
            if !alive {
                return;
            }
            pending.wake.notified().await;
            continue;
        }
        if tokio::time::Instant::now() < next_due {
            // Commits that come meanwhile go out in the same statement.
            tokio::time::sleep_until(next_due).await;
            continue;
        }
        next_due = tokio::time::Instant::now() + MIN_GAP;
        let sent = tokio::time::timeout(
            SEND_TIMEOUT,
            send(&mut connection, &connect, &statement, &unsent),
        )
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the server did not answer within {SEND_TIMEOUT:?}"),
            )))
        });
        match sent {
            Ok(()) => {
                unsent.clear();
                pause = FIRST_PAUSE;
            }
            Err(error) if alive => {
                tracing::warn!(%error, "cannot notify the feeds; trying again");
                connection = None;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            // The writer is gone: the feeds find the events at the end of
            // their waits.
            Err(_) => return,
        }
    }
}

/// Sends one `NOTIFY` statement for `partitions` on `connection`, opened
/// first if there is none.
async fn send(
    connection: &mut Option<PgConnection>,
    connect: &PgConnectOptions,
    statement: &str,
    partitions: &BTreeSet<u32>,
) -> Result<(), sqlx::Error> {
    let connection = match connection {
        Some(connection) => connection,
        None => connection.insert(PgConnection::connect_with(connect).await?),
    };
    let partitions: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
    sqlx::query(statement)
        .bind(partitions)
        .execute(connection)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_merges_its_partitions_in_order_without_repeats() {
        let mut appended = Appended {
            partitions: BTreeSet::from([3, 1]),
        };
        assert!(!appended.is_empty());
        appended.merge(Appended {
            partitions: BTreeSet::from([1, 2]),
        });
        assert_eq!(appended.partitions().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(Appended::default().is_empty());
    }
}
