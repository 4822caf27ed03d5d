//! The outbox writers that hold a feed's horizon, named: found in
//! `pg_locks` by their announcement, with what `pg_stat_activity` (or
//! `pg_prepared_xacts`, for a prepared transaction) says of them, and
//! reported while they hold delivery back for long.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// An outbox writer that holds its feed's horizon: rows above the lowest
/// position it may still add wait until it ends. What an operator needs to
/// find it, from `pg_stat_activity` (or `pg_prepared_xacts`).
#[derive(Debug, Clone, PartialEq)]
pub struct HorizonHolder {
    pid: Option<i32>,
    database: Option<String>,
    state: Option<String>,
    age: Option<Duration>,
    query: Option<String>,
    prepared: Option<String>,
}

impl HorizonHolder {
    /// The backend's process id; `None` for a prepared transaction, which
    /// has none.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// The database the writer is connected to.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The backend's state (`idle in transaction`, `active`, ...).
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// How long its transaction has been open (or prepared).
    pub fn age(&self) -> Option<Duration> {
        self.age
    }

    /// Its current or last statement.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The global id of a prepared transaction (`COMMIT PREPARED` or
    /// `ROLLBACK PREPARED` it).
    pub fn prepared(&self) -> Option<&str> {
        self.prepared.as_deref()
    }
}

impl fmt::Display for HorizonHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.prepared, self.pid) {
            (Some(gid), _) => write!(f, "prepared transaction {gid:?}")?,
            (None, Some(pid)) => write!(f, "pid {pid}")?,
            (None, None) => f.write_str("an unknown backend")?,
        }
        if let Some(database) = &self.database {
            write!(f, " on database {database:?}")?;
        }
        if let Some(state) = &self.state {
            write!(f, ", {state}")?;
        }
        if let Some(age) = self.age {
            write!(f, ", open for {:.1} s", age.as_secs_f64())?;
        }
        if let Some(query) = &self.query {
            let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
            let shown: String = query.chars().take(200).collect();
            write!(f, ", last statement: {shown}")?;
        }
        Ok(())
    }
}

/// The holders of the horizon, oldest first.
pub(super) async fn query(
    pool: &PgPool,
    statement: &str,
) -> Result<Vec<HorizonHolder>, sqlx::Error> {
    type Row = (
        Option<i32>,
        Option<String>,
        Option<String>,
        Option<f64>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(statement).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(
            |(pid, database, state, age, query, prepared)| HorizonHolder {
                pid,
                database,
                state,
                age: age.map(|age| Duration::from_secs_f64(age.max(0.0))),
                query,
                prepared,
            },
        )
        .collect())
}

/// When a feed's waiting requests have seen committed rows held back above
/// the horizon, and when it last said so.
#[derive(Debug)]
pub(super) struct HeldBack {
    after: Duration,
    state: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    since: Option<Instant>,
    reported: Option<Instant>,
}

impl HeldBack {
    /// The time rows may be held back before the holders are reported, if
    /// no other is set.
    pub(super) const DEFAULT_AFTER: Duration = Duration::from_secs(10);

    pub(super) fn new(after: Duration) -> Self {
        HeldBack {
            after,
            state: Mutex::default(),
        }
    }

    /// Notes what a look saw; whether the holders are due to be reported
    /// now: rows held back for `after`, and no report in the last `after`.
    pub(super) fn observe(&self, held_back: bool) -> bool {
        let mut seen = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !held_back {
            seen.since = None;
            return false;
        }
        let now = Instant::now();
        let since = *seen.since.get_or_insert(now);
        let due = now.duration_since(since) >= self.after
            && seen
                .reported
                .is_none_or(|reported| now.duration_since(reported) >= self.after);
        if due {
            seen.reported = Some(now);
        }
        due
    }
}

impl Default for HeldBack {
    fn default() -> Self {
        HeldBack::new(HeldBack::DEFAULT_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_reported_once_per_period_while_rows_are_held() {
        let held = HeldBack::new(Duration::from_millis(30));
        assert!(!held.observe(true), "not held long enough yet");
        std::thread::sleep(Duration::from_millis(40));
        assert!(held.observe(true));
        assert!(!held.observe(true), "reported already in this period");
        std::thread::sleep(Duration::from_millis(40));
        assert!(held.observe(true), "still held: reported again");
        assert!(!held.observe(false));
        assert!(!held.observe(true), "held anew: the clock starts again");
    }

    #[test]
    fn a_holder_says_how_to_find_it() {
        let holder = HorizonHolder {
            pid: Some(4242),
            database: Some("shop".into()),
            state: Some("idle in transaction".into()),
            age: Some(Duration::from_millis(61_500)),
            query: Some("INSERT INTO\n   orders".into()),
            prepared: None,
        };
        assert_eq!(
            holder.to_string(),
            "pid 4242 on database \"shop\", idle in transaction, open for 61.5 s, \
             last statement: INSERT INTO orders"
        );
        let prepared = HorizonHolder {
            pid: None,
            prepared: Some("tx-7".into()),
            state: None,
            query: None,
            ..holder
        };
        assert_eq!(
            prepared.to_string(),
            "prepared transaction \"tx-7\" on database \"shop\", open for 61.5 s"
        );
    }
}
