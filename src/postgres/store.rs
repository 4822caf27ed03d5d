//! The consumer's cursor store in PostgreSQL, whose instances share the
//! partitions of a consumer name.

use sqlx::Postgres;
use sqlx::postgres::PgQueryResult;

use super::group::AdvisoryGroup;
use crate::consumer::store::{Dialect, SqlStore, sealed};

/// A cursor store in PostgreSQL whose instances share the partitions of a
/// consumer name: the handler gets a `sqlx::Transaction<'static, Postgres>`
/// and writes its effects in it; the cursors commit with them.
///
/// # Sharing the partitions
///
/// Each `PostgresStore` is one member of its consumer's group (make one per
/// runtime instance). It keeps one session connection of its own, outside
/// the pool, and holds PostgreSQL advisory locks on it:
///
/// - a *member* lock, `pg_try_advisory_lock(member_space, id)` with a random
///   `id`, which says the instance is alive;
/// - a *partition* lock, `pg_try_advisory_lock(partition_space, p)`, for
///   each partition it owns.
///
/// `member_space` and `partition_space` are 31-bit hashes (FNV-1a) of
/// `"zeroeventhub:member:" + name` and `"zeroeventhub:partition:" + name`.
/// At each claim the store reads the live members from `pg_locks`
/// (advisory locks of the current database in `member_space`), computes its
/// share by rank (see the `ownership` rule: partition `p` goes to the member
/// of rank `p % members`), unlocks what is no longer its share and tries
/// to lock what is. When an instance dies, its connection closes and
/// PostgreSQL drops its locks at once; the others take its partitions at
/// their next claim. A joining instance appears in `pg_locks` at once; the
/// others give up its share at their next claim, and it takes it at the one
/// after.
///
/// Advisory locks rather than lease rows with an expiry: a dead
/// instance's partitions move as soon as PostgreSQL sees its connection
/// close (a killed process's socket is closed by its kernel at once; a
/// lost host is found by TCP keepalives, which the session sets to 5 s idle,
/// 1 s interval, 3 probes), with no clock to trust, no lease to renew in a
/// write every few seconds, and nothing to clean up. The price: a process
/// that is alive but stuck keeps its partitions; a lease would expire. In
/// both designs the fence is the same: the cursors' compare-and-set fails
/// for an instance that lost a partition without knowing it, and its page
/// rolls back.
///
/// The tables and statements are in the [store documentation](crate::consumer::store).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use zeroeventhub::consumer::PostgresStore;
///
/// let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// let store = PostgresStore::new(pool);
/// store.migrate().await?;
/// # Ok(())
/// # }
/// ```
pub type PostgresStore = SqlStore<Postgres>;

impl sealed::Sealed for Postgres {}

impl Dialect for Postgres {
    type Group = AdvisoryGroup;

    fn placeholder(n: usize) -> String {
        format!("${n}")
    }

    const DEAD_LETTER_ID: &'static str = "BIGSERIAL PRIMARY KEY";

    // CREATE TABLE IF NOT EXISTS races with itself: one migration at a
    // time, on the lock key `group::migrate_space()`.
    const MIGRATE_LOCK: Option<&'static str> = Some("SELECT pg_advisory_xact_lock(882769471)");

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_lock_the_key_of_the_group_rules() {
        assert_eq!(
            <Postgres as Dialect>::MIGRATE_LOCK,
            Some(
                format!(
                    "SELECT pg_advisory_xact_lock({})",
                    super::super::group::migrate_space()
                )
                .as_str()
            )
        );
    }
}
