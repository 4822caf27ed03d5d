//! The feed of a PostgreSQL outbox: pages read up to the horizon of the
//! announced writers, and waits woken by `LISTEN`.

use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use super::heads::{Heads, SharedLook, look_from, query_heads};
use super::holders::{self, HeldBack, HorizonHolder};
use super::listener::{self, AppendListenerTask};
use super::outbox::{PostgresOutbox, sql};
use super::pages::{PageKey, SHARED_PAGE_ROWS, SharedPages};
use crate::outbox::cursor;
use crate::outbox::event::check_partition;
use crate::outbox::page::{Budget, OutboxPage, emit_event, row_event, unservable};
use crate::outbox::table::feed_id;
use crate::outbox::wait::{Look, wait_for_rows};
use crate::protocol::{Checkpoint, Cursor, FeedItem, HeaderSelection};
use crate::server::{AppendSignal, FeedReader, FeedService, ReadContext, ReadError};

/// A [`FeedReader`] over a [`PostgresOutbox`] table: stateless, so any
/// number of replicas over one database serve the same cursors.
///
/// A page is one read-only transaction on one pooled connection (held for
/// the page, given back when the page ends or the consumer goes away), with
/// one query per requested partition, in turn, each streamed row by row; the page size is shared among
/// the partitions as [`MemoryFeed`](crate::server::MemoryFeed) shares it.
/// A cursor is the row's `position` and the feed's id (drawn when the table
/// was made), in decimal, joined by `.`; a cursor of another feed, or one
/// that names no servable row of its partition, is
/// [`ReadError::UnknownCursor`]. `_last`
/// starts at the last servable row.
///
/// # The horizon
///
/// Positions are drawn at insert, and transactions commit in any order: a
/// row may commit after a row with a higher position was served. So every
/// writer announces itself before it draws (a shared advisory lock whose
/// key says how far the sequence was), and each page first reads the
/// *horizon*: every position drawn so far, less than the lowest an
/// announced writer still running may hold. It serves only rows at or
/// below it. Only outbox writers count: a transaction that never wrote the
/// table, in this database or another, prepared or not, never holds a feed
/// back. A long transaction that did write it holds its feed back until it
/// ends; it never loses an event.
///
/// # Long polling
///
/// A request that asks to wait is held, without a connection, until a
/// servable row comes past its cursors, or its deadline. The feed keeps
/// one connection for `LISTEN` on the table's channel, opened with its
/// pool's options but outside the pool (from
/// the first waiting request until the last clone of the feed is dropped);
/// the writer's `pg_notify` reaches it at commit, never after a rollback,
/// and wakes the requests waiting on that partition. The waiting requests
/// of a feed (and its clones) share their looks at the table: the requests
/// that one commit wakes cost one query between them, and each then reads
/// only the partitions that have news; woken requests for the same page
/// (caught-up consumers at the same cursors) share one read of it, of at
/// most 1,000 events. A committed row that waits for the horizon (a writer
/// that drew a lower position still running) is looked at again after a
/// backoff of 1 to 50 ms, never in a busy loop. If the
/// `LISTEN` connection drops, waiting requests look every 250 ms until a
/// new one is listening.
#[derive(Clone)]
pub struct PostgresFeed {
    outbox: PostgresOutbox,
    pool: PgPool,
    signal: AppendSignal,
    listener: Arc<AppendListenerTask>,
    looks: Arc<SharedLook>,
    pages: Arc<SharedPages>,
    held_back: Arc<HeldBack>,
    counter_checked: Arc<Mutex<Option<Instant>>>,
    id: Arc<tokio::sync::OnceCell<u64>>,
}

/// How often a feed checks that its outbox's counter is ahead of the rows
/// it holds (see [`PostgresOutbox::check_counter`]).
const COUNTER_CHECK_EVERY: Duration = Duration::from_secs(10);

impl PostgresFeed {
    /// The feed of `outbox`, reading with connections of `pool`.
    pub(super) fn new(outbox: PostgresOutbox, pool: PgPool) -> Self {
        PostgresFeed {
            signal: AppendSignal::new(outbox.partition_count()),
            listener: listener::shared(),
            looks: Arc::default(),
            pages: Arc::default(),
            held_back: Arc::default(),
            counter_checked: Arc::default(),
            id: Arc::default(),
            outbox,
            pool,
        }
    }

    /// Sets how long waiting requests may see committed rows held back by
    /// an outbox writer before the feed names the writers in a warning
    /// (default 10 s), repeated once per such period while it lasts.
    pub fn report_held_back_after(self, after: Duration) -> Self {
        PostgresFeed {
            held_back: Arc::new(HeldBack::new(after)),
            ..self
        }
    }

    /// The outbox writers that hold the horizon now, oldest first: each
    /// holds back every row committed after it drew its first position,
    /// until it ends.
    pub async fn horizon_holders(&self) -> Result<Vec<HorizonHolder>, sqlx::Error> {
        holders::query(&self.pool, &self.outbox.table.sql.holders).await
    }

    /// The feed's id, which its cursors carry: read once, from the table
    /// `migrate` made.
    async fn id(&self) -> Result<u64, ReadError> {
        let load = sqlx::query_scalar(&self.outbox.table.sql.feed_id).fetch_one(&self.pool);
        feed_id(&self.id, self.outbox.table(), load).await
    }

    /// Checks the outbox's counter at the first read and every
    /// [`COUNTER_CHECK_EVERY`] after it: a read fails while it is behind.
    async fn check_counter(&self) -> Result<(), ReadError> {
        let due = self
            .counter_checked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|checked| checked.elapsed() >= COUNTER_CHECK_EVERY);
        if !due {
            return Ok(());
        }
        match self.outbox.check_counter(&self.pool).await {
            Ok(()) => {
                *self
                    .counter_checked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                Ok(())
            }
            Err(error) => Err(ReadError::internal(error)),
        }
    }

    /// Warns of each writer that holds the horizon, in a task of its own.
    fn report_holders(&self) {
        let feed = self.clone();
        tokio::spawn(async move {
            let table = feed.outbox.table();
            match feed.horizon_holders().await {
                Ok(holders) => {
                    for holder in holders {
                        tracing::warn!(
                            %table,
                            pid = holder.pid(),
                            database = holder.database(),
                            state = holder.state(),
                            age_s = holder.age().map(|age| age.as_secs_f64()),
                            prepared = holder.prepared(),
                            query = holder.query(),
                            "an outbox writer holds the feed back: {holder}; rows committed \
                             after it wait until it ends"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%table, %error, "rows are held back, and their holders could not be found")
                }
            }
        });
    }

    /// A [`FeedService`] serving this feed with the default page sizes.
    pub fn service(&self) -> FeedService<PostgresFeed> {
        FeedService::new(self.clone(), self.outbox.partition_count())
    }

    /// The pool the feed reads with.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The outbox the feed reads.
    pub fn outbox(&self) -> &PostgresOutbox {
        &self.outbox
    }

    /// The signal the feed's `LISTEN` connection notifies: its
    /// [`waiters`](AppendSignal::waiters) are the requests waiting now.
    pub fn append_signal(&self) -> &AppendSignal {
        &self.signal
    }

    /// The highest position the feed may serve now: see [the
    /// horizon](Self#the-horizon). Every row at or below it that will ever
    /// commit is visible to a statement that starts after this call.
    pub async fn horizon(&self) -> Result<u64, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        let horizon = horizon(&mut connection, &self.outbox.table.sql.horizon).await?;
        Ok(horizon)
    }

    /// Where reading each requested partition starts (the key of the last
    /// row not to send), in the request's order, and the checkpoints to
    /// send first for `_last`. At most two statements: one for the
    /// `_last` cursors, one for the others. On `connection` (a page's
    /// transaction), or, for a waiting request that holds none, with the
    /// feed's shared look and a pooled connection.
    async fn starts(
        &self,
        connection: Option<(&mut PgConnection, u64)>,
        cursors: &[(u32, Cursor)],
    ) -> Result<(Starts, Vec<Checkpoint>), ReadError> {
        let table = &self.outbox.table;
        let id = self.id().await?;
        let mut starts = Vec::with_capacity(cursors.len());
        // The `_last` partitions, and the cursors to prove handed out.
        let mut lasts = Vec::new();
        let mut unproven = Vec::new();
        let mut malformed = None;
        for (partition, cursor) in cursors {
            let partition = *partition;
            check_partition(partition, table.partition_count())?;
            let start = if cursor.is_first() {
                0
            } else if cursor.is_last() {
                lasts.push(partition);
                0
            } else {
                let Some(key) = cursor::decode_row(cursor, id) else {
                    // Not ours; but a cursor before it that names no row
                    // is the first error of the request.
                    malformed = Some(partition);
                    break;
                };
                if !self.pages.recently_handed_out(partition, cursor) {
                    unproven.push((partition, key));
                }
                key
            };
            starts.push((partition, start));
        }
        if let Some(partition) = malformed {
            // An earlier cursor that names no row comes first.
            self.prove(connection, &[], &unproven).await?;
            return Err(ReadError::UnknownCursor { partition });
        }
        let last_heads = self.prove(connection, &lasts, &unproven).await?;
        // `_last` starts at the last servable row, and says so first.
        let mut opening = Vec::with_capacity(lasts.len());
        for (partition, heads) in lasts.iter().zip(&last_heads) {
            let start = heads.servable.unwrap_or(0);
            let at = heads
                .servable
                .map_or_else(Cursor::first, |position| cursor::encode_row(position, id));
            opening.push(Checkpoint::new(*partition, at));
            if let Some(slot) = starts.iter_mut().find(|(p, _)| p == partition) {
                slot.1 = start;
            }
        }
        Ok((starts, opening))
    }

    /// The heads of the `lasts` partitions; fails for the first of
    /// `unproven` that names no servable row, with `ExpiredCursor` if rows
    /// after it were deleted, `UnknownCursor` if not. On `connection`, or
    /// with the feed's shared look and a pooled connection.
    async fn prove(
        &self,
        connection: Option<(&mut PgConnection, u64)>,
        lasts: &[u32],
        unproven: &[(u32, u64)],
    ) -> Result<Vec<Heads>, ReadError> {
        let table = &self.outbox.table;
        match connection {
            Some((connection, horizon)) => {
                let heads =
                    ordered_heads(&mut *connection, &table.sql.heads, horizon, lasts).await?;
                self.check_handed_out(connection, horizon, unproven).await?;
                Ok(heads)
            }
            None => {
                let heads = if lasts.is_empty() {
                    Vec::new()
                } else {
                    let (_, heads) = self.looks.heads(&self.pool, &table.sql, lasts).await?;
                    heads
                };
                if !unproven.is_empty() {
                    let mut connection = self.pool.acquire().await.map_err(ReadError::internal)?;
                    let horizon = horizon(&mut connection, &table.sql.horizon)
                        .await
                        .map_err(ReadError::internal)?;
                    self.check_handed_out(&mut connection, horizon, unproven)
                        .await?;
                }
                Ok(heads)
            }
        }
    }

    /// Fails for the first cursor of `named` that names no servable row
    /// (nor the last row `prune` deleted): `ExpiredCursor` if it lies below
    /// what its partition keeps, `UnknownCursor` if not.
    async fn check_handed_out(
        &self,
        connection: &mut PgConnection,
        horizon: u64,
        named: &[(u32, u64)],
    ) -> Result<(), ReadError> {
        let handed_out = self.handed_out(&mut *connection, horizon, named).await?;
        let Some(&(partition, position)) = named
            .iter()
            .find(|(partition, _)| !handed_out.contains(partition))
        else {
            return Ok(());
        };
        // One row for the one partition asked: its oldest row, and the last
        // row `prune` deleted there.
        let kept: KeptRow = sqlx::query_as(&self.outbox.table.sql.kept)
            .bind(vec![partition as i32])
            .fetch_one(connection)
            .await
            .map_err(ReadError::internal)?;
        let (_, oldest, pruned) = kept;
        Err(cursor::refusal(
            self.id().await?,
            partition,
            position,
            oldest,
            pruned,
        ))
    }

    /// The partitions of `named` whose cursor names a servable row.
    async fn handed_out(
        &self,
        connection: &mut PgConnection,
        horizon: u64,
        named: &[(u32, u64)],
    ) -> Result<Vec<u32>, ReadError> {
        if named.is_empty() {
            return Ok(Vec::new());
        }
        let partitions: Vec<i32> = named.iter().map(|(p, _)| *p as i32).collect();
        let positions: Vec<i64> = named.iter().map(|(_, key)| *key as i64).collect();
        let rows: Vec<(i32, bool)> = sqlx::query_as(&self.outbox.table.sql.handed_out)
            .bind(partitions)
            .bind(positions)
            .bind(horizon as i64)
            .fetch_all(connection)
            .await
            .map_err(ReadError::internal)?;
        Ok(rows
            .into_iter()
            .filter(|(_, handed_out)| *handed_out)
            .map(|(partition, _)| partition as u32)
            .collect())
    }

    /// Holds a waiting request until one of its partitions has a servable
    /// row past its start, or its deadline.
    async fn wait(
        &self,
        context: &ReadContext<'_>,
        mut starts: Starts,
    ) -> Result<Woken, ReadError> {
        self.listener
            .ensure_started(&self.pool, self.outbox.table(), &self.signal, &self.pages);
        let partitions: Vec<u32> = starts.iter().map(|(partition, _)| *partition).collect();
        let news = Mutex::new(None);
        let deadline = context.wait_deadline();
        wait_for_rows(&self.signal, context, || async {
            let look = self
                .looks
                .heads(&self.pool, &self.outbox.table.sql, &partitions);
            // A look held up (a pool with no connection to spare, a lock on
            // the table) ends with the wait: the page is read at once.
            let looked = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, look).await,
                None => Ok(look.await),
            };
            let Ok(looked) = looked else {
                return Ok(Look::Nothing);
            };
            let (look, heads) = looked?;
            let found = look_from(&starts, &heads);
            if self.held_back.observe(found == Look::Pending) {
                self.report_holders();
            }
            if found == Look::News {
                *news.lock().unwrap_or_else(PoisonError::into_inner) = Some((look, heads));
            }
            Ok(found)
        })
        .await?;
        Ok(
            match news.into_inner().unwrap_or_else(PoisonError::into_inner) {
                Some((look, heads)) => {
                    let mut heads = heads.iter();
                    starts.retain(|(_, start)| {
                        heads.next().is_some_and(|heads| heads.has_news(*start))
                    });
                    Woken::News { look, starts }
                }
                None => Woken::Deadline(starts),
            },
        )
    }

    /// Opens a page's transaction, and reads the horizon in it first.
    async fn begin(&self) -> Result<(Transaction<'static, Postgres>, u64), ReadError> {
        let mut tx = self
            .pool
            .begin_with(sql::PAGE_BEGIN)
            .await
            .map_err(ReadError::internal)?;
        let horizon = horizon(&mut tx, &self.outbox.table.sql.horizon)
            .await
            .map_err(ReadError::internal)?;
        Ok((tx, horizon))
    }

    /// The page that `tx` reads: the `opening` checkpoints, then each
    /// partition in turn from its start, row by row, sharing `page_size`
    /// among them.
    fn stream_page(
        &self,
        id: u64,
        (mut tx, horizon): (Transaction<'static, Postgres>, u64),
        opening: Vec<Checkpoint>,
        starts: Starts,
        selection: HeaderSelection,
        page_size: usize,
    ) -> OutboxPage {
        let table = Arc::clone(&self.outbox.table);
        let mut budget = Budget::new(page_size, starts.len());
        OutboxPage::new(move |emitter| async move {
            let mut emitted = !opening.is_empty();
            let mut unserved = None;
            for checkpoint in opening {
                emitter.emit(FeedItem::Checkpoint(checkpoint)).await;
            }
            for (partition, position) in starts {
                let share = budget.next_share();
                let mut taken = 0;
                if share > 0 {
                    let mut rows = sqlx::query(&table.sql.read)
                        .bind(partition as i32)
                        .bind(position as i64)
                        .bind(i64::try_from(share).unwrap_or(i64::MAX))
                        .bind(horizon as i64)
                        .fetch(&mut *tx);
                    while let Some(row) = poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
                        let row = row.map_err(ReadError::internal)?;
                        let key = row_key(&row)?;
                        let data: String = row.try_get(1).map_err(ReadError::internal)?;
                        let headers: Option<&str> = row.try_get(2).map_err(ReadError::internal)?;
                        let appended_ms: i64 = row.try_get(3).map_err(ReadError::internal)?;
                        let cursor = cursor::encode_row(key, id);
                        match row_event(partition, data, headers, &selection, &cursor, appended_ms)
                        {
                            Ok(event) => emit_event(&emitter, event, cursor).await,
                            Err(why) => {
                                let table = table.name().as_str();
                                unserved = Some(unservable(table, partition, key as i64, &why));
                                break;
                            }
                        }
                        emitted = true;
                        taken += 1;
                    }
                }
                budget.spent(taken);
            }
            // A page that could serve nothing else fails; one that could
            // goes on without the partition that stopped.
            if let (false, Some(error)) = (emitted, unserved) {
                return Err(error);
            }
            tx.commit().await.map_err(ReadError::internal)
        })
    }
}

/// How a waiting request's wait ended.
enum Woken {
    /// Look number `look` found servable rows in `starts`, the partitions
    /// that have some.
    News { look: u64, starts: Starts },
    /// The deadline passed: every partition is read once more.
    Deadline(Starts),
}

/// Each requested partition with the key of the last row not to send.
type Starts = Vec<(u32, u64)>;

/// A row of the `KEPT` statement: the partition, its oldest row's
/// position, and the last position `prune` deleted there.
type KeptRow = (i32, Option<i64>, Option<i64>);

/// Runs the horizon statement on `connection`.
pub(super) async fn horizon(
    connection: &mut PgConnection,
    statement: &str,
) -> Result<u64, sqlx::Error> {
    let horizon: Option<i64> = sqlx::query_scalar(statement).fetch_one(connection).await?;
    // Below 0 (no position drawn yet): nothing to serve.
    Ok(horizon.map_or(0, |horizon| horizon.max(0) as u64))
}

/// Runs the heads statement for `partitions` on `connection`, in their
/// order.
async fn ordered_heads(
    connection: &mut PgConnection,
    statement: &str,
    horizon: u64,
    partitions: &[u32],
) -> Result<Vec<Heads>, ReadError> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let found = query_heads(connection, statement, horizon, partitions).await?;
    partitions
        .iter()
        .map(|partition| {
            found
                .get(partition)
                .copied()
                .ok_or_else(|| ReadError::internal("the heads query left out a partition"))
        })
        .collect()
}

impl fmt::Debug for PostgresFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresFeed")
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl FeedReader for PostgresFeed {
    type Stream = OutboxPage;

    async fn read(&self, context: ReadContext<'_>) -> Result<OutboxPage, ReadError> {
        self.check_counter().await?;
        let id = self.id().await?;
        let request = context.request();
        let selection = request.headers().clone();
        if context.wait_deadline().is_none() {
            let (mut tx, horizon) = self.begin().await?;
            let (starts, opening) = self
                .starts(Some((&mut tx, horizon)), request.cursors())
                .await?;
            return Ok(self.stream_page(
                id,
                (tx, horizon),
                opening,
                starts,
                selection,
                context.page_size(),
            ));
        }
        // Single statements, outside a transaction: the starts are fixed
        // (`_last` waits for what comes after now), and the wait holds no
        // connection.
        let (starts, opening) = self.starts(None, request.cursors()).await?;
        match self.wait(&context, starts).await? {
            Woken::Deadline(starts) => {
                let tx = self.begin().await?;
                Ok(self.stream_page(id, tx, opening, starts, selection, context.page_size()))
            }
            Woken::News { look, starts } => {
                let key = PageKey {
                    starts,
                    page_size: context.page_size().min(SHARED_PAGE_ROWS),
                    headers: selection,
                };
                let read =
                    || async {
                        let tx = self.begin().await?;
                        let key = key.clone();
                        Ok(self.stream_page(
                            id,
                            tx,
                            Vec::new(),
                            key.starts,
                            key.headers,
                            key.page_size,
                        ))
                    };
                let items = self
                    .pages
                    .page(key.clone(), look, self.looks.looks_done(), read)
                    .await?;
                Ok(OutboxPage::new(move |emitter| async move {
                    for checkpoint in opening {
                        emitter.emit(FeedItem::Checkpoint(checkpoint)).await;
                    }
                    for item in items.iter() {
                        emitter.emit(item.clone()).await;
                    }
                    Ok(())
                }))
            }
        }
    }
}

/// The position of a row.
fn row_key(row: &PgRow) -> Result<u64, ReadError> {
    let position: i64 = row.try_get(0).map_err(ReadError::internal)?;
    u64::try_from(position).map_err(|_| ReadError::internal("a negative position"))
}
