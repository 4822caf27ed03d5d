//! The heads of a PostgreSQL feed's partitions, looked at once for every
//! waiting request: when one append wakes a hundred requests, one query
//! answers them all, instead of one query each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::feed::horizon;
use super::outbox::sql::Statements;
use crate::outbox::wait::Look;
use crate::server::ReadError;

/// The length past which the wish list is rid of repeated partitions.
const WISH_LIST_COMPACTION: usize = 1024;

/// The ends of one partition, as one look saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heads {
    /// The last servable row (below the horizon), if any.
    pub(crate) servable: Option<u64>,
    /// The last committed row, servable or not, if any.
    pub(crate) newest: Option<u64>,
}

impl Heads {
    /// Whether a request reading from `start` has a servable row to read.
    pub(crate) fn has_news(&self, start: u64) -> bool {
        self.servable.is_some_and(|head| head > start)
    }

    /// Whether rows past `start` are committed but not servable yet.
    fn has_pending(&self, start: u64) -> bool {
        self.newest.is_some_and(|head| head > start)
    }
}

/// What a waiting request with these starts should do, given the heads of
/// its partitions (in the same order).
pub(crate) fn look_from(starts: &[(u32, u64)], heads: &[Heads]) -> Look {
    let pairs = || starts.iter().zip(heads);
    if pairs().any(|((_, start), heads)| heads.has_news(*start)) {
        Look::News
    } else if pairs().any(|((_, start), heads)| heads.has_pending(*start)) {
        Look::Pending
    } else {
        Look::Nothing
    }
}

/// Looks at the heads of partitions, one query at a time, and shares each
/// answer with every request that asked while it was on its way.
///
/// A request may use a look only if the look's statement was sent after
/// the request asked: that look then sees every commit that a wake-up
/// before the asking announced. Looks are numbered as they start; a request
/// notes the number of the last one started when it asks, and takes only
/// later ones. Requests add their partitions to a wish list before they
/// queue, and the next look covers the whole list.
#[derive(Debug, Default)]
pub(crate) struct SharedLook {
    /// The number of the last look started.
    started: AtomicU64,
    /// The number of the last look that has ended.
    done: AtomicU64,
    /// Partitions asked for since the last look started.
    wanted: Mutex<Vec<u32>>,
    /// What the looks saw. One look runs at a time, holding this lock.
    seen: tokio::sync::Mutex<Seen>,
}

/// What the looks saw.
#[derive(Debug, Default)]
struct Seen {
    /// Per partition, the number of the look that saw it last, and what it
    /// saw.
    heads: HashMap<u32, (u64, Heads)>,
    /// The last look that failed, and why: it answers every request that
    /// queued before it started, rather than each trying in turn.
    failed: Option<(u64, Arc<str>)>,
}

impl SharedLook {
    /// The heads of `partitions` (in this order), as a look sent after this
    /// call saw them, and the number of that look: the horizon, then the
    /// heads statement up to it, on one pooled connection.
    pub(crate) async fn heads(
        &self,
        pool: &PgPool,
        sql: &Statements,
        partitions: &[u32],
    ) -> Result<(u64, Vec<Heads>), ReadError> {
        let asked_after = self.started.load(Ordering::SeqCst);
        wish(
            &mut self.wanted.lock().unwrap_or_else(PoisonError::into_inner),
            partitions,
        );
        let mut seen = self.seen.lock().await;
        if let Some((look, error)) = &seen.failed {
            if *look > asked_after {
                return Err(ReadError::internal(SharedFailure {
                    what: "look at the table",
                    cause: Arc::clone(error),
                }));
            }
        }
        if let Some(heads) = fresh(&seen.heads, partitions, asked_after) {
            return Ok(heads);
        }
        let look = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let mut asked =
            std::mem::take(&mut *self.wanted.lock().unwrap_or_else(PoisonError::into_inner));
        // Ours too: an earlier look may have taken them from the list.
        asked.extend_from_slice(partitions);
        asked.sort_unstable();
        asked.dedup();
        let found = match look_at_heads(pool, sql, &asked).await {
            Ok(found) => found,
            Err(error) => {
                seen.failed = Some((look, Arc::from(error.to_string())));
                return Err(error);
            }
        };
        for (partition, heads) in found {
            seen.heads.insert(partition, (look, heads));
        }
        self.done.fetch_max(look, Ordering::SeqCst);
        fresh(&seen.heads, partitions, asked_after)
            .ok_or_else(|| ReadError::internal("the heads query left out a partition"))
    }

    /// The number of the last look that has ended.
    pub(crate) fn looks_done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }
}

/// Adds `partitions` to the wish list of the next look. Requests served by
/// a look they did not ask for leave their wishes behind: past
/// [`WISH_LIST_COMPACTION`] entries the list keeps one per partition.
fn wish(wanted: &mut Vec<u32>, partitions: &[u32]) {
    wanted.extend_from_slice(partitions);
    if wanted.len() > WISH_LIST_COMPACTION {
        wanted.sort_unstable();
        wanted.dedup();
    }
}

/// The failure of a query that another request made for this one: a
/// shared look or a shared page.
#[derive(Debug)]
pub(crate) struct SharedFailure {
    /// What was shared: "look at the table", "read of the page".
    pub(crate) what: &'static str,
    pub(crate) cause: Arc<str>,
}

impl std::fmt::Display for SharedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the shared {} failed: {}", self.what, self.cause)
    }
}

impl std::error::Error for SharedFailure {}

/// The heads of `partitions` if looks numbered above `asked_after` saw
/// every one of them, and the number of the latest of those looks.
fn fresh(
    seen: &HashMap<u32, (u64, Heads)>,
    partitions: &[u32],
    asked_after: u64,
) -> Option<(u64, Vec<Heads>)> {
    let mut latest = asked_after;
    let heads = partitions
        .iter()
        .map(|partition| match seen.get(partition) {
            Some((look, heads)) if *look > asked_after => {
                latest = latest.max(*look);
                Some(*heads)
            }
            _ => None,
        })
        .collect::<Option<_>>()?;
    Some((latest, heads))
}

/// One look: the horizon, then the heads of `partitions` up to it.
async fn look_at_heads(
    pool: &PgPool,
    sql: &Statements,
    partitions: &[u32],
) -> Result<HashMap<u32, Heads>, ReadError> {
    let mut connection = pool.acquire().await.map_err(ReadError::internal)?;
    let horizon = horizon(&mut connection, &sql.horizon)
        .await
        .map_err(ReadError::internal)?;
    query_heads(&mut *connection, &sql.heads, horizon, partitions).await
}

/// Runs the heads statement (`statement`) for `partitions` on `executor`,
/// up to `horizon`: each partition's heads.
pub(crate) async fn query_heads<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    statement: &str,
    horizon: u64,
    partitions: &[u32],
) -> Result<HashMap<u32, Heads>, ReadError> {
    let asked: Vec<i32> = partitions.iter().map(|p| *p as i32).collect();
    let rows = sqlx::query(statement)
        .bind(asked)
        .bind(horizon as i64)
        .fetch_all(executor)
        .await
        .map_err(ReadError::internal)?;
    heads_by_partition(&rows)
}

/// The rows of the heads statement, by partition.
fn heads_by_partition(rows: &[PgRow]) -> Result<HashMap<u32, Heads>, ReadError> {
    rows.iter()
        .map(|row| {
            let partition: i32 = row.try_get(0).map_err(ReadError::internal)?;
            let partition = u32::try_from(partition)
                .map_err(|_| ReadError::internal("a negative partition"))?;
            let heads = Heads {
                servable: position_at(row, 1)?,
                newest: position_at(row, 2)?,
            };
            Ok((partition, heads))
        })
        .collect()
}

/// The position in column `at`, if the row has one.
fn position_at(row: &PgRow, at: usize) -> Result<Option<u64>, ReadError> {
    let position: Option<i64> = row.try_get(at).map_err(ReadError::internal)?;
    position
        .map(|position| {
            u64::try_from(position).map_err(|_| ReadError::internal("a negative position"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Heads = Heads {
        servable: None,
        newest: None,
    };

    #[test]
    fn a_servable_head_past_the_start_is_news() {
        let heads = Heads {
            servable: Some(52),
            newest: Some(91),
        };
        assert!(heads.has_news(51));
        assert!(!heads.has_news(52));
        assert_eq!(look_from(&[(0, 51)], &[heads]), Look::News);
        assert_eq!(look_from(&[(0, 52)], &[heads]), Look::Pending);
        assert_eq!(look_from(&[(0, 91)], &[heads]), Look::Nothing);
    }

    #[test]
    fn news_in_any_partition_wins_over_pending_in_another() {
        let pending = Heads {
            servable: None,
            newest: Some(3),
        };
        let news = Heads {
            servable: Some(4),
            newest: Some(4),
        };
        let starts = [(0, 0), (1, 0)];
        assert_eq!(look_from(&starts, &[pending, news]), Look::News);
        assert_eq!(look_from(&starts, &[pending, NONE]), Look::Pending);
        assert_eq!(look_from(&starts, &[NONE, NONE]), Look::Nothing);
    }

    #[test]
    fn a_shared_failure_says_what_failed_and_why() {
        let failure = SharedFailure {
            what: "look at the table",
            cause: Arc::from("connection refused"),
        };
        assert_eq!(
            failure.to_string(),
            "the shared look at the table failed: connection refused"
        );
    }

    #[test]
    fn the_wish_list_keeps_one_entry_per_partition_past_its_size() {
        let mut wanted = Vec::new();
        for _ in 0..WISH_LIST_COMPACTION / 2 {
            wish(&mut wanted, &[1, 2]);
        }
        assert_eq!(wanted.len(), WISH_LIST_COMPACTION, "short lists are left");
        wish(&mut wanted, &[3, 1]);
        assert_eq!(wanted, [1, 2, 3]);
        for _ in 0..5000 {
            wish(&mut wanted, &[1, 2]);
        }
        assert!(wanted.len() <= WISH_LIST_COMPACTION + 2, "{}", wanted.len());
    }

    #[test]
    fn only_a_later_look_is_fresh_for_every_partition() {
        let mut seen = HashMap::new();
        seen.insert(0, (3, NONE));
        seen.insert(1, (5, NONE));
        assert_eq!(fresh(&seen, &[0, 1], 2), Some((5, vec![NONE, NONE])));
        assert_eq!(fresh(&seen, &[0, 1], 3), None);
        assert_eq!(fresh(&seen, &[1], 4), Some((5, vec![NONE])));
        assert_eq!(fresh(&seen, &[2], 0), None);
    }
}
