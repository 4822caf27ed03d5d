//! Retention: what `prune` keeps of an outbox, whatever its database.
//!
//! A prune deletes, partition by partition and in batches of bounded size
//! (each its own short transaction, so that a prune never holds the
//! horizon), the oldest rows that consumers could already read, and never
//! the newest rows that the [`Retention`] keeps (at least one per
//! partition, so that a consumer that is caught up keeps a valid cursor).
//! It remembers, per partition, the last row it deleted: a cursor naming
//! that row stays valid, and a cursor below it is *expired*, answered with
//! `410 Gone` ([`ReadError::ExpiredCursor`](crate::server::ReadError::ExpiredCursor)).
//! Rows deleted by other means are found the same way: a well-formed cursor
//! below the oldest row kept has expired.

use std::future::Future;
use std::time::Duration;

use super::OutboxError;

/// What `prune` (of `SqliteOutbox` or `PostgresOutbox`) keeps of an outbox.
///
/// ```
/// use std::time::Duration;
/// use zeroeventhub::outbox::Retention;
///
/// // A week of events, and never fewer than the last 100 of a partition.
/// let retention = Retention::older_than(Duration::from_secs(7 * 24 * 3600)).keeping_last(100);
/// assert_eq!(retention.kept_last(), 100);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    older_than: Option<Duration>,
    keep_last: u64,
    batch: u32,
}

impl Retention {
    /// Rows in a batch unless [`with_batch`](Self::with_batch) says
    /// otherwise: one short transaction each.
    pub const DEFAULT_BATCH: u32 = 1_000;

    /// Deletes the rows appended more than `age` ago (and every row before
    /// them in their partition), keeping the newest row of each partition.
    pub fn older_than(age: Duration) -> Self {
        Retention {
            older_than: Some(age),
            keep_last: 1,
            batch: Self::DEFAULT_BATCH,
        }
    }

    /// Deletes every row but the newest `rows` of each partition (at least
    /// one is always kept).
    pub fn keep_last(rows: u64) -> Self {
        Retention {
            older_than: None,
            keep_last: rows.max(1),
            batch: Self::DEFAULT_BATCH,
        }
    }

    /// Keeps the newest `rows` of each partition whatever their age (at
    /// least one is always kept).
    pub fn keeping_last(self, rows: u64) -> Self {
        Retention {
            keep_last: rows.max(1),
            ..self
        }
    }

    /// Deletes at most `rows` rows per statement (default
    /// [`DEFAULT_BATCH`](Self::DEFAULT_BATCH); at least 1).
    pub fn with_batch(self, rows: u32) -> Self {
        Retention {
            batch: rows.max(1),
            ..self
        }
    }

    /// The age past which rows are deleted, if any.
    pub fn age(&self) -> Option<Duration> {
        self.older_than
    }

    /// How many of each partition's newest rows are kept, whatever their
    /// age.
    pub fn kept_last(&self) -> u64 {
        self.keep_last
    }

    /// The most rows one statement deletes.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// The age in milliseconds, as the statements take it.
    pub(crate) fn age_millis(&self) -> Option<i64> {
        self.older_than
            .map(|age| i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
    }

    /// The rows before the first one kept, counted from the newest: the
    /// statements' `OFFSET`.
    pub(crate) fn keep_offset(&self) -> i64 {
        i64::try_from(self.keep_last - 1).unwrap_or(i64::MAX)
    }
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pruned {
    /// The rows deleted.
    pub rows: u64,
    /// The statements run, one batch each.
    pub batches: u64,
}

/// Runs `batch` (one statement deleting at most `retention.batch()` rows of
/// a partition) over every partition, until each has nothing left to
/// delete.
pub(crate) async fn prune_partitions<F, Fut>(
    retention: &Retention,
    partition_count: u32,
    mut batch: F,
) -> Result<Pruned, OutboxError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<u64, OutboxError>>,
{
    let mut pruned = Pruned::default();
    for partition in 0..partition_count {
        loop {
            let deleted = batch(partition).await?;
            pruned.rows += deleted;
            pruned.batches += 1;
            if deleted < u64::from(retention.batch()) {
                break;
            }
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_one_row_of_a_partition_is_kept() {
        assert_eq!(Retention::keep_last(0).kept_last(), 1);
        assert_eq!(Retention::keep_last(0).keep_offset(), 0);
        assert_eq!(Retention::keep_last(5).keep_offset(), 4);
        let by_age = Retention::older_than(Duration::from_secs(60));
        assert_eq!(by_age.kept_last(), 1);
        assert_eq!(by_age.keeping_last(0).kept_last(), 1);
        assert_eq!(by_age.age_millis(), Some(60_000));
        assert_eq!(Retention::keep_last(3).age_millis(), None);
        assert_eq!(by_age.with_batch(0).batch(), 1);
        assert_eq!(by_age.batch(), Retention::DEFAULT_BATCH);
        assert_eq!(by_age.age(), Some(Duration::from_secs(60)));
        assert_eq!(by_age.keeping_last(100).kept_last(), 100);
        assert_eq!(by_age.keeping_last(100).age(), by_age.age());
        assert_eq!(Retention::keep_last(7).kept_last(), 7);
        assert_eq!(Retention::keep_last(7).age(), None);
    }

    #[tokio::test]
    async fn each_partition_is_pruned_until_a_batch_comes_short() {
        let retention = Retention::keep_last(1).with_batch(10);
        let mut left = [25u64, 0, 10];
        let mut calls = Vec::new();
        let pruned = prune_partitions(&retention, 3, |partition| {
            calls.push(partition);
            let slot = &mut left[partition as usize];
            let deleted = (*slot).min(10);
            *slot -= deleted;
            std::future::ready(Ok(deleted))
        })
        .await
        .unwrap();
        assert_eq!(
            pruned,
            Pruned {
                rows: 35,
                batches: 6
            }
        );
        assert_eq!(calls, [0, 0, 0, 1, 2, 2]);
    }
}
