//! The instances of a consumer share its partitions through PostgreSQL
//! advisory locks, held on a session connection of each instance.
//!
//! Each store is one member of its consumer's group (make one per runtime
//! instance). It keeps one session connection of its own, outside the pool,
//! and holds advisory locks on it:
//!
//! - a *member* lock, `pg_try_advisory_lock(member_space, id)` with a random
//!   `id`, which says the instance is alive;
//! - a *partition* lock, `pg_try_advisory_lock(partition_space, p)`, for
//!   each partition it owns.
//!
//! `member_space` and `partition_space` are 31-bit hashes (FNV-1a) of
//! `"zeroeventhub:member:" + name` and `"zeroeventhub:partition:" + name`.
//! At each claim the store reads the live members from `pg_locks`
//! (advisory locks of the current database in `member_space`), computes its
//! share by rank (the rule of `consumer::ownership`), unlocks what is no
//! longer its share and tries to lock what is.
//!
//! A session connection cannot go through a transaction pooler: the locks
//! belong to the server session, which such a pooler hands to others.

use std::hash::{BuildHasher, Hasher};

use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::Mutex;

use super::locks::lock_space;
use crate::consumer::ownership::share;
use crate::consumer::store::{Group, StoreError};

/// The advisory locks of one member of a consumer's group.
#[derive(Default)]
pub struct AdvisoryGroup {
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

impl AdvisoryGroup {
    /// Opens the session connection and takes a member lock on it.
    async fn join(pool: &PgPool, consumer: &str) -> Result<(PgConnection, i32), sqlx::Error> {
        let mut session = pool.acquire().await?.detach();
        // Find a lost host within seconds rather than hours.
        sqlx::query(
            "SELECT set_config('tcp_keepalives_idle', '5', false), \
             set_config('tcp_keepalives_interval', '1', false), \
             set_config('tcp_keepalives_count', '3', false)",
        )
        .execute(&mut session)
        .await?;
        let space = lock_space("member", consumer);
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
        .bind(i64::from(lock_space("member", consumer)))
        .fetch_all(&mut *session)
        .await?;
        // objid is the lock key's bits as an unsigned number.
        let rank = members
            .iter()
            .position(|member| *member as u32 == id as u32)
            .unwrap_or(members.len());
        let wanted = share(partition_count, members.len().max(rank + 1), rank);
        let space = lock_space("partition", consumer);

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

impl Group<Postgres> for AdvisoryGroup {
    async fn claim(
        &self,
        pool: &PgPool,
        consumer: &str,
        partition_count: u32,
    ) -> Result<Vec<u32>, StoreError> {
        let mut member = self.member.lock().await;
        if member.session.is_none() {
            let (session, id) = Self::join(pool, consumer).await?;
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

/// The key of the lock that makes concurrent migrations of the store's
/// tables take turns (written out in the store's dialect).
#[cfg(test)]
pub(super) fn migrate_space() -> i32 {
    lock_space("migrate", "")
}

/// A random member id: std's `RandomState` is seeded randomly.
fn random_id() -> i32 {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (random & 0x7fff_ffff) as i32
}
