//! The consumer's cursor store in SQLite, the embedded default, and the
//! lease that keeps one instance of a consumer name working per file.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::journal::use_wal;
use crate::consumer::Runtime;
use crate::consumer::store::{
    DEFAULT_CURSOR_TABLE, Dialect, Group, SqlStore, StoreError, TableName, sealed,
};

/// A cursor store in SQLite, the embedded default: the handler gets a
/// `sqlx::Transaction<'static, Sqlite>` and writes its effects in it; the
/// cursors commit with them.
///
/// # One instance of a consumer per file
///
/// SQLite serializes writers, so two instances of one consumer name over
/// one file cannot share the work: they would only trade conflicts, each
/// rolling back about half of its pages. The store keeps them to one at a
/// time with a *lease*, a row per consumer name in the table
/// `<cursor table>_lease` (`zeh_consumer_cursors_lease` by default):
///
/// - each `SqliteStore` is one instance, with a random id (its clones are
///   the same instance: make one store per runtime instance);
/// - a claim takes the lease when it is free, its own, or its heartbeat is
///   older than [`LEASE_TIMEOUT`](Self::LEASE_TIMEOUT), refreshes its
///   heartbeat, and owns every partition;
/// - otherwise it owns none, and the runtime stays idle, claiming again at
///   each ownership interval; the store logs a warning once per holder;
/// - [`release`](crate::consumer::CursorStore::release) (the runtime's
///   stop) gives the lease up, so that another instance, or a restart,
///   takes over at its next claim. An instance that died without a stop is
///   taken over once its heartbeat is older than `LEASE_TIMEOUT`.
///
/// The heartbeats are the database's clock (`julianday('now')`), so the
/// instances must share a clock: the processes of one machine do. An
/// instance whose claims come less often than `LEASE_TIMEOUT` (a longer
/// ownership interval, a handler that holds a page longer) can lose its
/// lease between two of them; the cursors' compare-and-set still fences it,
/// and its page in flight rolls back.
///
/// # Journal mode
///
/// [`migrate`](Self::migrate) sets the file to WAL journal mode when it is
/// in another one (sqlx sets none unless its connect options name one, and
/// a new file is in `delete` mode, where a reader blocks the writer); WAL
/// stays with the file, and the change is logged once. An in-memory
/// database keeps its `memory` mode. If the mode cannot change (another
/// connection holds the file in a transaction or in
/// `locking_mode=EXCLUSIVE`), `migrate` fails and says so. Connect options
/// that name another journal mode set it again at each connection they
/// open, taking the file out of WAL: name WAL, or none.
///
/// The tables and statements are in the [store
/// documentation](crate::consumer::store).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use zeroeventhub::consumer::SqliteStore;
///
/// let pool = sqlx::SqlitePool::connect("sqlite://consumer.db?mode=rwc").await?;
/// let store = SqliteStore::new(pool);
/// store.migrate().await?; // its tables, and WAL
/// # Ok(())
/// # }
/// ```
pub type SqliteStore = SqlStore<Sqlite>;

impl SqlStore<Sqlite> {
    /// How old the lease holder's heartbeat may be before another instance
    /// takes the lease over: 3 s, three times the runtime's default
    /// ownership interval ([`Runtime::DEFAULT_OWNERSHIP_INTERVAL`]), at
    /// which the holder refreshes it.
    pub const LEASE_TIMEOUT: Duration =
        Runtime::<(), ()>::DEFAULT_OWNERSHIP_INTERVAL.saturating_mul(3);
}

impl sealed::Sealed for Sqlite {}

impl Dialect for Sqlite {
    type Group = Lease;

    fn placeholder(_: usize) -> String {
        "?".to_owned()
    }

    const DEAD_LETTER_ID: &'static str = "INTEGER PRIMARY KEY AUTOINCREMENT";

    // SQLite takes the write lock at the first statement: migrations take
    // turns without one of their own.
    const MIGRATE_LOCK: Option<&'static str> = None;

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn prepare(
        connection: &mut SqliteConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        use_wal(connection)
    }
}

/// The lease of one instance (a store and its clones) over the consumer
/// names it claims: see [`SqliteStore`].
#[derive(Clone)]
pub struct Lease {
    state: Arc<LeaseState>,
}

struct LeaseState {
    statements: LeaseStatements,
    /// This instance's id: the process and a random number.
    instance: String,
    /// The pool of the last claim, where `release` gives the leases up.
    pool: Mutex<Option<SqlitePool>>,
    /// Per consumer name, the holder this instance last warned about.
    warned: Mutex<HashMap<String, String>>,
}

/// The lease table's statements, filled in: see the store documentation.
struct LeaseStatements {
    create: String,
    take: String,
    holder: String,
    give_up: String,
}

/// Now, in milliseconds since the Unix epoch, by the database's clock.
const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

impl LeaseStatements {
    fn new(cursors: &TableName) -> Self {
        let lease = format!("{cursors}_lease");
        LeaseStatements {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {lease} (
                consumer  TEXT    NOT NULL PRIMARY KEY,
                instance  TEXT    NOT NULL,
                heartbeat INTEGER NOT NULL
            )"
            ),
            take: format!(
                "INSERT INTO {lease} (consumer, instance, heartbeat) VALUES (?1, ?2, {NOW}) \
                 ON CONFLICT (consumer) DO UPDATE \
                 SET instance = excluded.instance, heartbeat = excluded.heartbeat \
                 WHERE instance = excluded.instance OR heartbeat < excluded.heartbeat - ?3"
            ),
            holder: format!("SELECT instance, {NOW} - heartbeat FROM {lease} WHERE consumer = ?1"),
            give_up: format!("DELETE FROM {lease} WHERE consumer = ?1 AND instance = ?2"),
        }
    }
}

impl Default for Lease {
    fn default() -> Self {
        Lease::for_cursors(&TableName::new(DEFAULT_CURSOR_TABLE).expect("a plain identifier"))
    }
}

impl Lease {
    /// Warns that `holder` keeps `consumer` from this instance, unless it
    /// did already.
    fn warn_once(&self, pool: &SqlitePool, consumer: &str, holder: String, age_ms: i64) {
        let mut warned = self.state.warned.lock().expect("not poisoned");
        if warned.get(consumer) == Some(&holder) {
            return;
        }
        tracing::warn!(
            consumer,
            database = %pool.connect_options().get_filename().display(),
            holder = %holder,
            "another instance of consumer {consumer} holds this database file (instance \
             {holder}, last claim {age_ms} ms ago): this one stays idle, and takes over if \
             that one stops"
        );
        warned.insert(consumer.to_owned(), holder);
    }
}

impl Group<Sqlite> for Lease {
    fn for_cursors(cursors: &TableName) -> Self {
        Lease {
            state: Arc::new(LeaseState {
                statements: LeaseStatements::new(cursors),
                instance: format!("{}-{:016x}", std::process::id(), random()),
                pool: Mutex::new(None),
                warned: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn schema(&self) -> &[String] {
        std::slice::from_ref(&self.state.statements.create)
    }

    async fn claim(
        &self,
        pool: &SqlitePool,
        consumer: &str,
        partition_count: u32,
    ) -> Result<Vec<u32>, StoreError> {
        let state = &*self.state;
        *state.pool.lock().expect("not poisoned") = Some(pool.clone());
        let timeout_ms = i64::try_from(SqliteStore::LEASE_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
        let taken = sqlx::query(&state.statements.take)
            .bind(consumer)
            .bind(&state.instance)
            .bind(timeout_ms)
            .execute(pool)
            .await?
            .rows_affected()
            == 1;
        if taken {
            state.warned.lock().expect("not poisoned").remove(consumer);
            return Ok((0..partition_count).collect());
        }
        let holder: Option<(String, i64)> = sqlx::query_as(&state.statements.holder)
            .bind(consumer)
            .fetch_optional(pool)
            .await?;
        // None: the holder gave it up since; the next claim takes it.
        if let Some((holder, age_ms)) = holder {
            self.warn_once(pool, consumer, holder, age_ms);
        }
        Ok(Vec::new())
    }

    async fn release(&self, consumer: &str) -> Result<(), StoreError> {
        let state = &*self.state;
        let Some(pool) = state.pool.lock().expect("not poisoned").clone() else {
            // Never claimed: nothing to give up.
            return Ok(());
        };
        sqlx::query(&state.statements.give_up)
            .bind(consumer)
            .bind(&state.instance)
            .execute(&pool)
            .await?;
        Ok(())
    }
}

/// A random number: std's `RandomState` is seeded randomly.
fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
