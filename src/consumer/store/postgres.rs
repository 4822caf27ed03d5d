use std::fmt;
use std::hash::{BuildHasher, Hasher};

use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::Mutex;

use super::{CursorChange, CursorStore, Statements, StoreError, TableName, TableNames, cursors_of};
use crate::consumer::DeadLetter;
use crate::consumer::ownership::share;
use crate::protocol::Cursor;

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
/// The tables and statements are in the [module documentation](super).
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
pub struct PostgresStore {
    pool: PgPool,
    tables: TableNames,
    statements: Statements,
    member: Mutex<Member>,
}

/// This instance's place in its group.
#[derive(Default)]
struct Member {
    /// The connection that holds the locks; `None` until the first claim
    /// and after it broke.
    session: Option<PgConnection>,
    id: i32,
    owned: Vec<u32>,
}

impl PostgresStore {
    /// A store in the database of `pool`, with the default table names.
    pub fn new(pool: PgPool) -> Self {
        let tables = TableNames::default();
        let statements = Statements::new(&tables, |n| format!("${n}"));
        PostgresStore {
            pool,
            tables,
            statements,
            member: Mutex::new(Member::default()),
        }
    }

    /// Names the cursor table and the dead-letter table (defaults
    /// `zeh_consumer_cursors` and `zeh_dead_letters`).
    pub fn with_tables(self, cursors: TableName, dead_letters: TableName) -> Self {
        let tables = TableNames {
            cursors,
            dead_letters,
        };
        let statements = Statements::new(&tables, |n| format!("${n}"));
        PostgresStore {
            tables,
            statements,
            ..self
        }
    }

    /// The pool the store uses for its transactions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the store's tables if they do not exist; safe to run at
    /// every start, from several instances at once.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let TableNames {
            cursors,
            dead_letters,
        } = &self.tables;
        let mut transaction = self.pool.begin().await?;
        // CREATE TABLE IF NOT EXISTS races with itself; one migration at a
        // time.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(i64::from(namespace("migrate", "")))
            .execute(&mut *transaction)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {cursors} (
                consumer  TEXT    NOT NULL,
                partition INTEGER NOT NULL,
                cursor    TEXT    NOT NULL,
                PRIMARY KEY (consumer, partition)
            )"
        ))
        .execute(&mut *transaction)
        .await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {dead_letters} (
                id           BIGSERIAL PRIMARY KEY,
                consumer     TEXT    NOT NULL,
                partition    INTEGER NOT NULL,
                after_cursor TEXT    NOT NULL,
                headers      TEXT    NOT NULL,
                data         TEXT    NOT NULL,
                error        TEXT    NOT NULL
            )"
        ))
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await
    }

    /// Opens the session connection and takes a member lock on it.
    async fn join(&self, consumer: &str) -> Result<(PgConnection, i32), sqlx::Error> {
        let mut session = self.pool.acquire().await?.detach();
        // Find a lost host within seconds rather than hours.
        sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', '5', false), \
             set_config('tcp_keepalives_interval', '1', false), \
             set_config('tcp_keepalives_count', '3', false)",
        )
        .execute(&mut session)
        .await?;
        let space = namespace("member", consumer);
        loop {
            let id = random_id();
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(space)
                .bind(id)
                .fetch_one(&mut session)
                .await?;
            if locked {
                return Ok((session, id));
            }
        }
    }

    /// Takes this member's share and gives up the rest, on `session`.
    async fn rebalance(
        session: &mut PgConnection,
        consumer: &str,
        id: i32,
        owned: &[u32],
        partition_count: u32,
    ) -> Result<Vec<u32>, sqlx::Error> {
        let members: Vec<i64> = sqlx::query_scalar(
            "SELECT objid::bigint FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid = $1::bigint::oid \
             ORDER BY 1",
        )
        .bind(i64::from(namespace("member", consumer)))
        .fetch_all(&mut *session)
        .await?;
        // objid is the lock key's bits as an unsigned number.
        let rank = members
            .iter()
            .position(|member| *member as u32 == id as u32)
            .unwrap_or(members.len());
        let wanted = share(partition_count, members.len().max(rank + 1), rank);
        let space = namespace("partition", consumer);

        let give_up: Vec<i32> = owned
            .iter()
            .filter(|p| !wanted.contains(p))
            .map(|p| *p as i32)
            .collect();
        if !give_up.is_empty() {
            sqlx::query("SELECT pg_advisory_unlock($1, p) FROM unnest($2::int4[]) AS p")
                .bind(space)
                .bind(&give_up)
                .execute(&mut *session)
                .await?;
        }
        let take: Vec<i32> = wanted
            .iter()
            .filter(|p| !owned.contains(p))
            .map(|p| *p as i32)
            .collect();
        let mut now_owned: Vec<u32> = owned
            .iter()
            .copied()
            .filter(|p| wanted.contains(p))
            .collect();
        if !take.is_empty() {
            let taken: Vec<i32> = sqlx::query_scalar(
                "SELECT p FROM unnest($2::int4[]) AS p WHERE pg_try_advisory_lock($1, p)",
            )
            .bind(space)
            .bind(&take)
            .fetch_all(&mut *session)
            .await?;
            now_owned.extend(taken.into_iter().map(|p| p as u32));
        }
        now_owned.sort_unstable();
        Ok(now_owned)
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

impl CursorStore for PostgresStore {
    type Transaction = Transaction<'static, Postgres>;

    async fn begin(&self) -> Result<Self::Transaction, StoreError> {
        Ok(self.pool.begin().await?)
    }

    async fn load(
        &self,
        consumer: &str,
        partitions: &[u32],
    ) -> Result<Vec<(u32, Cursor)>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        for &partition in partitions {
            sqlx::query(&self.statements.insert_first)
                .bind(consumer)
                .bind(partition_key(partition)?)
                .execute(&mut *transaction)
                .await?;
        }
        let rows: Vec<(i32, String)> = sqlx::query_as(&self.statements.select_cursors)
            .bind(consumer)
            .fetch_all(&mut *transaction)
            .await?;
        transaction.commit().await?;
        let rows: Vec<(i64, String)> = rows
            .into_iter()
            .map(|(partition, cursor)| (i64::from(partition), cursor))
            .collect();
        Ok(cursors_of(partitions, &rows))
    }

    async fn save(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        changes: &[CursorChange],
    ) -> Result<(), StoreError> {
        for change in changes {
            let updated = sqlx::query(&self.statements.compare_and_set)
                .bind(change.next.as_str())
                .bind(consumer)
                .bind(partition_key(change.partition)?)
                .bind(change.previous.as_str())
                .execute(&mut **transaction)
                .await?;
            if updated.rows_affected() != 1 {
                return Err(StoreError::conflict(change.partition));
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        transaction: &mut Self::Transaction,
        consumer: &str,
        letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        sqlx::query(&self.statements.insert_dead_letter)
            .bind(consumer)
            .bind(partition_key(letter.partition)?)
            .bind(letter.after.as_str())
            .bind(letter.headers_json())
            .bind(letter.data.as_str())
            .bind(&letter.error)
            .execute(&mut **transaction)
            .await?;
        Ok(())
    }

    async fn commit(&self, transaction: Self::Transaction) -> Result<(), StoreError> {
        Ok(transaction.commit().await?)
    }

    async fn claim(&self, consumer: &str, partition_count: u32) -> Result<Vec<u32>, StoreError> {
        let mut member = self.member.lock().await;
        if member.session.is_none() {
            let (session, id) = self.join(consumer).await?;
            *member = Member {
                session: Some(session),
                id,
                owned: Vec::new(),
            };
        }
        let Member { session, id, owned } = &mut *member;
        let connection = session.as_mut().expect("joined above");
        match Self::rebalance(connection, consumer, *id, owned, partition_count).await {
            Ok(now_owned) => {
                *owned = now_owned.clone();
                Ok(now_owned)
            }
            Err(error) => {
                // The session is gone or unusable, and its locks with it:
                // own nothing, join again at the next claim.
                *member = Member::default();
                Err(error.into())
            }
        }
    }

    async fn release(&self, _consumer: &str) -> Result<(), StoreError> {
        let mut member = self.member.lock().await;
        let Some(mut session) = member.session.take() else {
            return Ok(());
        };
        *member = Member::default();
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut session)
            .await?;
        session.close().await?;
        Ok(())
    }
}

/// A partition as the tables' `INTEGER` column takes it.
fn partition_key(partition: u32) -> Result<i32, StoreError> {
    i32::try_from(partition).map_err(|_| {
        StoreError::database(format!(
            "partition {partition} does not fit an INTEGER column"
        ))
    })
}

/// The advisory-lock key space of `kind` for `consumer`: a 31-bit FNV-1a
/// hash, stable across versions and platforms.
fn namespace(kind: &str, consumer: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in "zeroeventhub:"
        .bytes()
        .chain(kind.bytes())
        .chain(b":".iter().copied())
        .chain(consumer.bytes())
    {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash & 0x7fff_ffff) as i32
}

/// A random member id: std's `RandomState` is seeded randomly.
fn random_id() -> i32 {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (random & 0x7fff_ffff) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_stable_and_apart() {
        assert_eq!(
            namespace("member", "billing"),
            namespace("member", "billing")
        );
        assert_ne!(
            namespace("member", "billing"),
            namespace("partition", "billing")
        );
        assert_ne!(
            namespace("member", "billing"),
            namespace("member", "shipping")
        );
        assert!(namespace("partition", "x") >= 0);
    }
}
