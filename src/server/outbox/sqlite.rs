//! The outbox over SQLite: one writer at a time, so row order is commit
//! order.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Acquire, Sqlite, SqliteConnection, SqlitePool};

use super::event::check_partition;
use bytes::Bytes;

use super::page::{Budget, OutboxPage, emit_event, row_event};
use super::wait::{Look, wait_for_rows};
use super::{OutboxError, OutboxEvent, TableName, cursor};
use crate::protocol::{Checkpoint, Cursor, FeedItem};
use crate::server::{AppendSignal, FeedReader, FeedService, ReadContext, ReadError};

/// The statements, with `{table}` standing for the table name. The crate
/// runs these and nothing else; `mod.rs` documents each of them.
pub(crate) mod sql {
    /// The table and its index, run by `migrate`.
    pub(crate) const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS {table} (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    partition INTEGER NOT NULL CHECK (partition >= 0),
    headers TEXT CHECK (headers IS NULL OR json_valid(headers)),
    data TEXT NOT NULL CHECK (json_valid(data))
);
CREATE INDEX IF NOT EXISTS {table}_by_partition ON {table} (partition, position);";

    /// One event.
    pub(crate) const APPEND: &str =
        "INSERT INTO {table} (partition, headers, data) VALUES (?1, ?2, ?3)";

    /// A partition's events after a position, in order, as one text: for
    /// each row, its position, the byte lengths of its data and headers
    /// (`-1` for none), each followed by a space, then the data and the
    /// headers. One row for many spares sqlx a hand-over per row.
    pub(crate) const READ: &str = "\
SELECT group_concat(
    position || ' ' || octet_length(data) || ' ' || coalesce(octet_length(headers), -1) || ' '
        || data || coalesce(headers, ''),
    ''
)
FROM (
    SELECT position, data, headers FROM {table}
    WHERE partition = ?1 AND position > ?2
    ORDER BY position
    LIMIT ?3
)";

    /// A partition's last position (for `_last`).
    pub(crate) const LAST: &str = "SELECT max(position) FROM {table} WHERE partition = ?1";

    /// Whether a partition has a row after a position (the look of a
    /// waiting request).
    pub(crate) const NEWS: &str =
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE partition = ?1 AND position > ?2)";

    /// Whether a cursor names a row of the partition: only those were
    /// handed out.
    pub(crate) const HANDED_OUT: &str =
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE partition = ?1 AND position = ?2)";
}

struct Statements {
    table: TableName,
    partition_count: u32,
    schema: String,
    append: String,
    read: String,
    last: String,
    handed_out: String,
    news: String,
}

/// An outbox table in SQLite: its schema, and the writer that appends
/// events inside the caller's transaction.
///
/// SQLite lets one transaction write at a time and holds its write lock
/// from its first write to its commit, so positions (an `AUTOINCREMENT`
/// key, never reused) are handed out in commit order: a reader that
/// passed a position never sees a smaller one appear later. Use WAL
/// journal mode, so that readers do not block the writer.
///
/// The feeds made by [`feed`](Self::feed) from this outbox or its clones
/// hear of its commits at once (long polling): an append sets the
/// connection's commit hook (replacing any other), which wakes the waiting
/// requests of those feeds whenever that connection commits. Use one
/// `SqliteOutbox` per table in a process, cloned. Writes from other
/// processes are seen within the feed's poll interval.
///
/// Cheap to clone. See the [module docs](super#sqlite) for the table and
/// every statement.
///
/// ```no_run
/// use sqlx::SqlitePool;
/// use zeroeventhub::protocol::RawJson;
/// use zeroeventhub::server::{OutboxEvent, SqliteOutbox, TableName};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SqlitePool::connect("sqlite://events.db?mode=rwc").await?;
/// let outbox = SqliteOutbox::new(TableName::new("order_events")?, 4);
/// outbox.migrate(&pool).await?;
///
/// let mut tx = pool.begin().await?;
/// // ... the business change, in `tx` ...
/// let data = RawJson::from_bytes(r#"{"order":"A-17","status":"paid"}"#)?;
/// outbox.append(&mut tx, &OutboxEvent::keyed("A-17", data)).await?;
/// tx.commit().await?;
///
/// let app: axum::Router = axum::Router::new().route_service("/feed/v1", outbox.feed(pool).service());
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteOutbox {
    statements: Arc<Statements>,
    /// Notified by the commit hook of connections this writer appended on;
    /// shared by the feeds made with [`feed`](Self::feed).
    committed: AppendSignal,
}

impl SqliteOutbox {
    /// The outbox in `table`, for a feed of `partition_count` partitions.
    ///
    /// # Panics
    ///
    /// If `partition_count` is 0: a feed has at least one partition.
    pub fn new(table: TableName, partition_count: u32) -> Self {
        assert!(partition_count > 0, "a feed has at least one partition");
        let fill = |template: &str| template.replace("{table}", table.as_str());
        SqliteOutbox {
            statements: Arc::new(Statements {
                schema: fill(sql::SCHEMA),
                append: fill(sql::APPEND),
                read: fill(sql::READ),
                last: fill(sql::LAST),
                handed_out: fill(sql::HANDED_OUT),
                news: fill(sql::NEWS),
                table,
                partition_count,
            }),
            committed: AppendSignal::new(partition_count),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &TableName {
        &self.statements.table
    }

    /// The feed's partition count.
    pub fn partition_count(&self) -> u32 {
        self.statements.partition_count
    }

    /// The SQL that [`migrate`](Self::migrate) runs, for users of their own
    /// migration tool.
    pub fn schema(&self) -> &str {
        &self.statements.schema
    }

    /// The query that reads one partition of a page (see the
    /// [module docs](super)): for checking its plan with `EXPLAIN`.
    pub fn read_statement(&self) -> &str {
        &self.statements.read
    }

    /// Creates the table and its index if they do not exist, in one
    /// transaction. Idempotent.
    pub async fn migrate<'a, A>(&self, connection: A) -> Result<(), OutboxError>
    where
        A: Acquire<'a, Database = Sqlite>,
    {
        let mut tx = connection.begin().await?;
        sqlx::raw_sql(self.schema()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Appends `event` in the caller's transaction (or, on a connection
    /// outside a transaction, on its own). Readers see it once that
    /// transaction commits; a rollback leaves no trace.
    pub async fn append(
        &self,
        connection: &mut SqliteConnection,
        event: &OutboxEvent,
    ) -> Result<(), OutboxError> {
        let partition = event.checked_partition(self.partition_count())?;
        self.wake_feeds_on_commit(connection).await?;
        sqlx::query(&self.statements.append)
            .bind(i64::from(partition))
            .bind(event.headers_json())
            .bind(event.data().as_str())
            .execute(connection)
            .await?;
        Ok(())
    }

    /// Appends `events`, in this order, in the caller's transaction. Nothing
    /// is written if one of them has a partition the feed lacks; run it in a
    /// transaction so that a failure half-way leaves nothing either.
    pub async fn append_batch(
        &self,
        connection: &mut SqliteConnection,
        events: &[OutboxEvent],
    ) -> Result<(), OutboxError> {
        let partitions = events
            .iter()
            .map(|event| event.checked_partition(self.partition_count()))
            .collect::<Result<Vec<_>, _>>()?;
        if !events.is_empty() {
            self.wake_feeds_on_commit(connection).await?;
        }
        for (event, partition) in events.iter().zip(partitions) {
            sqlx::query(&self.statements.append)
                .bind(i64::from(partition))
                .bind(event.headers_json())
                .bind(event.data().as_str())
                .execute(&mut *connection)
                .await?;
        }
        Ok(())
    }

    /// Sets the commit hook of `connection` to wake the feeds of this
    /// outbox. Set before the first write, so that a write outside a
    /// transaction (committed by its own statement) wakes them too.
    async fn wake_feeds_on_commit(
        &self,
        connection: &mut SqliteConnection,
    ) -> Result<(), OutboxError> {
        let committed = self.committed.clone();
        // The hook runs inside the commit: it must not touch the
        // connection. Readers it wakes that find nothing yet look again
        // shortly after.
        connection.lock_handle().await?.set_commit_hook(move || {
            committed.notify_all();
            true
        });
        Ok(())
    }

    /// The feed of this table, reading with connections of `pool`.
    pub fn feed(&self, pool: SqlitePool) -> SqliteFeed {
        SqliteFeed {
            signal: self.committed.clone().poll_every(SqliteFeed::DEFAULT_POLL),
            outbox: self.clone(),
            pool,
        }
    }
}

impl fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("table", self.table())
            .field("partition_count", &self.partition_count())
            .finish()
    }
}

/// A [`FeedReader`] over a [`SqliteOutbox`] table.
///
/// A page is one query per requested partition, in turn, each streamed row
/// by row from one pooled connection (held for the page, given back when
/// the page ends or the consumer goes away); the page size is shared among
/// the partitions as [`MemoryFeed`](crate::server::MemoryFeed) shares it.
/// A cursor is the row's `position` in decimal; a cursor that names no row
/// of its partition is [`ReadError::UnknownCursor`]. `_last` starts at the
/// partition's last row.
///
/// # Long polling
///
/// A request that asks to wait is held, without a connection, until a row
/// comes past its cursors, or its deadline. Commits of the feed's own
/// [`SqliteOutbox`] (or its clones) in this process wake it at once; it
/// also looks at the table every [poll interval](Self::poll_every), for
/// writers in other processes.
#[derive(Clone)]
pub struct SqliteFeed {
    outbox: SqliteOutbox,
    pool: SqlitePool,
    signal: AppendSignal,
}

impl SqliteFeed {
    /// A [`FeedService`] serving this feed with the default page sizes.
    pub fn service(&self) -> FeedService<SqliteFeed> {
        FeedService::new(self.clone(), self.outbox.partition_count())
    }

    /// The pool the feed reads with.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The outbox the feed reads.
    pub fn outbox(&self) -> &SqliteOutbox {
        &self.outbox
    }

    /// The default [poll interval](Self::poll_every).
    pub const DEFAULT_POLL: Duration = Duration::from_millis(500);

    /// Makes waiting requests look at the table at least every `interval`
    /// (500 ms by default; at least 1 ms): the longest delay before a
    /// waiting request hears of an event written by another process.
    pub fn poll_every(mut self, interval: Duration) -> Self {
        self.signal = self.outbox.committed.clone().poll_every(interval);
        self
    }

    /// The signal that the outbox's commits notify: its
    /// [`waiters`](AppendSignal::waiters) are the requests waiting now.
    pub fn append_signal(&self) -> &AppendSignal {
        &self.signal
    }

    /// Whether a partition of a waiting request has a row past its start.
    async fn look(&self, starts: &[(u32, i64)]) -> Result<Look, ReadError> {
        let mut connection = self.pool.acquire().await.map_err(ReadError::internal)?;
        for (partition, after) in starts {
            let news: bool = sqlx::query_scalar(&self.outbox.statements.news)
                .bind(i64::from(*partition))
                .bind(*after)
                .fetch_one(&mut *connection)
                .await
                .map_err(ReadError::internal)?;
            if news {
                return Ok(Look::News);
            }
        }
        Ok(Look::Nothing)
    }

    /// Where reading `partition` from `cursor` starts (the position of the
    /// last row not to send), and the checkpoint to send first for `_last`.
    async fn start(
        &self,
        connection: &mut SqliteConnection,
        partition: u32,
        cursor: &Cursor,
    ) -> Result<(i64, Option<Checkpoint>), ReadError> {
        let statements = &self.outbox.statements;
        check_partition(partition, statements.partition_count)?;
        if cursor.is_first() {
            return Ok((0, None));
        }
        if cursor.is_last() {
            let last: Option<i64> = sqlx::query_scalar(&statements.last)
                .bind(i64::from(partition))
                .fetch_one(connection)
                .await
                .map_err(ReadError::internal)?;
            let at = match last {
                Some(position) => cursor::encode([position_key(position)?]),
                None => Cursor::first(),
            };
            return Ok((last.unwrap_or(0), Some(Checkpoint::new(partition, at))));
        }
        let unknown = ReadError::UnknownCursor { partition };
        let Some(position) = cursor::decode::<1>(cursor).and_then(|[p]| i64::try_from(p).ok())
        else {
            return Err(unknown);
        };
        let handed_out: bool = sqlx::query_scalar(&statements.handed_out)
            .bind(i64::from(partition))
            .bind(position)
            .fetch_one(connection)
            .await
            .map_err(ReadError::internal)?;
        if handed_out {
            Ok((position, None))
        } else {
            Err(unknown)
        }
    }
}

impl fmt::Debug for SqliteFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteFeed")
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl FeedReader for SqliteFeed {
    type Stream = OutboxPage;

    async fn read(&self, context: ReadContext<'_>) -> Result<OutboxPage, ReadError> {
        let request = context.request();
        let mut connection = self.pool.acquire().await.map_err(ReadError::internal)?;
        let mut starts = Vec::with_capacity(request.cursors().len());
        let mut opening = Vec::new();
        for (partition, cursor) in request.cursors() {
            let (position, checkpoint) = self.start(&mut connection, *partition, cursor).await?;
            opening.extend(checkpoint);
            starts.push((*partition, position));
        }
        if context.wait_deadline().is_some() {
            // The starts are fixed (`_last` waits for what comes after now);
            // the wait holds no connection.
            drop(connection);
            wait_for_rows(&self.signal, &context, || self.look(&starts)).await?;
            connection = self.pool.acquire().await.map_err(ReadError::internal)?;
        }
        let statements = Arc::clone(&self.outbox.statements);
        let selection = request.headers().clone();
        let mut budget = Budget::new(context.page_size(), starts.len());
        Ok(OutboxPage::new(move |emitter| async move {
            for checkpoint in opening {
                emitter.emit(FeedItem::Checkpoint(checkpoint)).await;
            }
            for (partition, after) in starts {
                let share = budget.next_share();
                let mut taken = 0;
                let mut after = after;
                while taken < share {
                    let asked = (share - taken).min(CHUNK_ROWS);
                    let chunk: Option<String> = sqlx::query_scalar(&statements.read)
                        .bind(i64::from(partition))
                        .bind(after)
                        .bind(i64::try_from(asked).unwrap_or(i64::MAX))
                        .fetch_one(&mut *connection)
                        .await
                        .map_err(ReadError::internal)?;
                    let Some(chunk) = chunk else { break };
                    let rows = chunk_rows(chunk)?;
                    let got = rows.len();
                    for row in rows {
                        let headers = row.headers.as_deref();
                        let event = row_event(partition, row.data, headers, &selection)?;
                        emit_event(
                            &emitter,
                            event,
                            cursor::encode([position_key(row.position)?]),
                        )
                        .await;
                        after = row.position;
                    }
                    taken += got;
                    if got < asked {
                        break;
                    }
                }
                budget.spent(taken);
            }
            Ok(())
        }))
    }
}

/// The most rows one query of a page brings: the rows of a chunk are in
/// memory at once.
const CHUNK_ROWS: usize = 128;

/// A row of a chunk.
struct ChunkRow {
    position: i64,
    data: Bytes,
    headers: Option<String>,
}

/// The rows of a chunk (see `sql::READ`), in position order.
fn chunk_rows(chunk: String) -> Result<Vec<ChunkRow>, ReadError> {
    let malformed = || ReadError::internal("a malformed chunk of rows");
    let text = Bytes::from(chunk);
    let mut rows = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let mut field = || {
            let end = at + memchr::memchr(b' ', &text[at..]).ok_or_else(malformed)?;
            let value = std::str::from_utf8(&text[at..end])
                .ok()
                .and_then(|digits| digits.parse::<i64>().ok())
                .ok_or_else(malformed)?;
            at = end + 1;
            Ok::<_, ReadError>(value)
        };
        let position = field()?;
        let data_len = usize::try_from(field()?).map_err(|_| malformed())?;
        let headers_len = field()?;
        let data_end = at.checked_add(data_len).filter(|end| *end <= text.len());
        let data_end = data_end.ok_or_else(malformed)?;
        let data = text.slice(at..data_end);
        at = data_end;
        let headers = match usize::try_from(headers_len) {
            Err(_) => None,
            Ok(len) => {
                let end = at.checked_add(len).filter(|end| *end <= text.len());
                let end = end.ok_or_else(malformed)?;
                let headers = std::str::from_utf8(&text[at..end]).map_err(|_| malformed())?;
                at = end;
                Some(headers.to_owned())
            }
        };
        rows.push(ChunkRow {
            position,
            data,
            headers,
        });
    }
    // SQLite concatenates in the order the subquery gives; keep to it even
    // if a future version did not.
    if !rows.is_sorted_by_key(|row| row.position) {
        rows.sort_by_key(|row| row.position);
    }
    Ok(rows)
}

fn position_key(position: i64) -> Result<u64, ReadError> {
    u64::try_from(position).map_err(|_| ReadError::internal("a negative position"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(rows: &[(i64, &str, Option<&str>)]) -> String {
        rows.iter()
            .map(|(position, data, headers)| {
                let headers_len = headers.map_or(-1, |h| h.len() as i64);
                format!(
                    "{position} {} {headers_len} {data}{}",
                    data.len(),
                    headers.unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn a_chunk_gives_back_its_rows_bytes_for_bytes() {
        let rows = [
            (3, r#"{"a":"x y"}"#, None),
            (7, r#"{"b":"é 1 2"}"#, Some(r#"{"h":"ü"}"#)),
            (8, "[]", Some("")),
        ];
        let parsed = chunk_rows(chunk(&rows)).unwrap();
        assert_eq!(parsed.len(), 3);
        for (row, (position, data, headers)) in parsed.iter().zip(rows) {
            assert_eq!(row.position, position);
            assert_eq!(row.data, data.as_bytes());
            assert_eq!(row.headers.as_deref(), headers);
        }
    }

    #[test]
    fn a_chunk_out_of_order_is_put_in_order() {
        let parsed = chunk_rows(chunk(&[(9, "1", None), (4, "2", None)])).unwrap();
        let positions: Vec<i64> = parsed.iter().map(|row| row.position).collect();
        assert_eq!(positions, [4, 9]);
    }

    #[test]
    fn a_malformed_chunk_is_an_error_not_a_panic() {
        for text in [
            "1 5 -1 {}",
            "x 2 -1 {}",
            "1 2",
            "1 2 7 {}{}",
            "1 -2 -1 {}",
            "1 2 -1 {}3",
        ] {
            assert!(chunk_rows(text.to_owned()).is_err(), "{text}");
        }
        assert!(chunk_rows(String::new()).unwrap().is_empty());
    }
}
