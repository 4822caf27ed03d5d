//! The feed of a SQLite outbox: pages read in chunks, in commit order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::{SqliteConnection, SqlitePool};

use super::outbox::SqliteOutbox;
use crate::outbox::cursor;
use crate::outbox::event::check_partition;
use crate::outbox::page::{Budget, OutboxPage, emit_event, row_event, unservable};
use crate::outbox::table::feed_id;
use crate::outbox::wait::{Look, wait_for_rows};
use crate::protocol::{Checkpoint, Cursor, FeedItem};
use crate::server::{AppendSignal, FeedReader, FeedService, ReadContext, ReadError};

/// A [`FeedReader`] over a [`SqliteOutbox`] table.
///
/// A page is one query per requested partition, in turn, each streamed row
/// by row from one pooled connection (held for the page, given back when
/// the page ends or the consumer goes away); the page size is shared among
/// the partitions as [`MemoryFeed`](crate::server::MemoryFeed) shares it.
/// A cursor is the row's `position` and the feed's id (drawn when the table
/// was made), in decimal, joined by `.`; a cursor of another feed, or one
/// that names no row of its partition, is [`ReadError::UnknownCursor`]. `_last` starts at the
/// partition's last row.
///
/// # Long polling
///
/// A request that asks to wait is held, without a connection, until a row
/// comes past its cursors, or its deadline. Commits of the feed's own
/// [`SqliteOutbox`] (or its clones) in this process wake it at once; it
/// also looks at the table every [poll interval](Self::poll_every), for
/// writers in other processes.
#[derive(Clone, Debug)]
pub struct SqliteFeed {
    outbox: SqliteOutbox,
    pool: SqlitePool,
    signal: AppendSignal,
    id: Arc<tokio::sync::OnceCell<u64>>,
}

impl SqliteFeed {
    /// The feed of `outbox`, reading with connections of `pool`.
    pub(super) fn new(outbox: SqliteOutbox, pool: SqlitePool) -> Self {
        SqliteFeed {
            signal: outbox
                .committed
                .clone()
                .poll_every(SqliteFeed::DEFAULT_POLL),
            outbox,
            pool,
            id: Arc::default(),
        }
    }

    /// The feed's id, which its cursors carry: read once, from the table
    /// `migrate` made.
    async fn id(&self) -> Result<u64, ReadError> {
        let load = sqlx::query_scalar(&self.outbox.table.sql.feed_id).fetch_one(&self.pool);
        feed_id(&self.id, self.outbox.table(), load).await
    }

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
            let news: bool = sqlx::query_scalar(&self.outbox.table.sql.news)
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
        id: u64,
        partition: u32,
        cursor: &Cursor,
    ) -> Result<(i64, Option<Checkpoint>), ReadError> {
        let table = &self.outbox.table;
        check_partition(partition, table.partition_count())?;
        if cursor.is_first() {
            return Ok((0, None));
        }
        if cursor.is_last() {
            let last: Option<i64> = sqlx::query_scalar(&table.sql.last)
                .bind(i64::from(partition))
                .fetch_one(connection)
                .await
                .map_err(ReadError::internal)?;
            let at = match last {
                Some(position) => cursor::encode_row(position_key(position)?, id),
                None => Cursor::first(),
            };
            return Ok((last.unwrap_or(0), Some(Checkpoint::new(partition, at))));
        }
        let Some(position) = cursor::decode_row(cursor, id).map(|position| position as i64) else {
            return Err(ReadError::UnknownCursor { partition });
        };
        let handed_out: bool = sqlx::query_scalar(&table.sql.handed_out)
            .bind(i64::from(partition))
            .bind(position)
            .fetch_one(&mut *connection)
            .await
            .map_err(ReadError::internal)?;
        if handed_out {
            return Ok((position, None));
        }
        let (oldest, pruned): (Option<i64>, Option<i64>) = sqlx::query_as(&table.sql.kept)
            .bind(i64::from(partition))
            .fetch_one(connection)
            .await
            .map_err(ReadError::internal)?;
        Err(cursor::refusal(
            id,
            partition,
            position as u64,
            oldest,
            pruned,
        ))
    }
}

impl FeedReader for SqliteFeed {
    type Stream = OutboxPage;

    async fn read(&self, context: ReadContext<'_>) -> Result<OutboxPage, ReadError> {
        let request = context.request();
        let id = self.id().await?;
        let mut connection = self.pool.acquire().await.map_err(ReadError::internal)?;
        let mut starts = Vec::with_capacity(request.cursors().len());
        let mut opening = Vec::new();
        for (partition, cursor) in request.cursors() {
            let (position, checkpoint) =
                self.start(&mut connection, id, *partition, cursor).await?;
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
        let table = Arc::clone(&self.outbox.table);
        let selection = request.headers().clone();
        let mut budget = Budget::new(context.page_size(), starts.len());
        Ok(OutboxPage::new(move |emitter| async move {
            let mut emitted = !opening.is_empty();
            let mut unserved = None;
            for checkpoint in opening {
                emitter.emit(FeedItem::Checkpoint(checkpoint)).await;
            }
            for (partition, after) in starts {
                let share = budget.next_share();
                let mut taken = 0;
                let mut after = after;
                'partition: while taken < share {
                    let asked = (share - taken).min(CHUNK_ROWS);
                    // Bytes, not text: a row's text may not be UTF-8 (SQLite
                    // takes it, `json_valid` too), and only that row then
                    // fails, not the chunk.
                    let chunk: Option<Vec<u8>> = sqlx::query_scalar(&table.sql.read)
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
                        let cursor = cursor::encode_row(position_key(row.position)?, id);
                        let at = row.appended_ms;
                        let event = row.text().and_then(|(data, headers)| {
                            row_event(partition, data, headers, &selection, &cursor, at)
                        });
                        match event {
                            Ok(event) => emit_event(&emitter, event, cursor).await,
                            Err(why) => {
                                let table = table.name().as_str();
                                unserved = Some(unservable(table, partition, row.position, &why));
                                break 'partition;
                            }
                        }
                        emitted = true;
                        taken += 1;
                        after = row.position;
                    }
                    if got < asked {
                        break;
                    }
                }
                budget.spent(taken);
            }
            // A page that could serve nothing else fails; one that could
            // goes on without the partition that stopped.
            match (emitted, unserved) {
                (false, Some(error)) => Err(error),
                _ => Ok(()),
            }
        }))
    }
}

/// The most rows one query of a page brings: the rows of a chunk are in
/// memory at once.
const CHUNK_ROWS: usize = 128;

/// A row of a chunk, its text not yet known to be UTF-8.
struct ChunkRow {
    position: i64,
    appended_ms: i64,
    data: Bytes,
    headers: Option<Bytes>,
}

impl ChunkRow {
    /// The row's data and headers, if both are UTF-8.
    fn text(&self) -> Result<(Bytes, Option<&str>), String> {
        std::str::from_utf8(&self.data)
            .map_err(|error| format!("its data is not UTF-8: {error}"))?;
        let headers = match &self.headers {
            Some(headers) => Some(
                std::str::from_utf8(headers)
                    .map_err(|error| format!("its headers are not UTF-8: {error}"))?,
            ),
            None => None,
        };
        Ok((self.data.clone(), headers))
    }
}

/// The rows of a chunk (see `sql::READ`), in position order.
fn chunk_rows(chunk: Vec<u8>) -> Result<Vec<ChunkRow>, ReadError> {
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
        let appended_ms = field()?;
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
                let headers = text.slice(at..end);
                at = end;
                Some(headers)
            }
        };
        rows.push(ChunkRow {
            position,
            appended_ms,
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

    fn chunk(rows: &[(i64, &str, Option<&str>)]) -> Vec<u8> {
        rows.iter()
            .map(|(position, data, headers)| {
                let headers_len = headers.map_or(-1, |h| h.len() as i64);
                format!(
                    "{position} 1700000000000 {} {headers_len} {data}{}",
                    data.len(),
                    headers.unwrap_or("")
                )
            })
            .collect::<String>()
            .into_bytes()
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
            assert_eq!(row.appended_ms, 1_700_000_000_000);
            assert_eq!(row.data, data.as_bytes());
            assert_eq!(row.text().unwrap().1, headers);
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
            "1 0 5 -1 {}",
            "x 0 2 -1 {}",
            "1 t 2 -1 {}",
            "1 0 2",
            "1 0 2 7 {}{}",
            "1 0 -2 -1 {}",
            "1 0 2 -1 {}3",
        ] {
            assert!(chunk_rows(text.into()).is_err(), "{text}");
        }
        assert!(chunk_rows(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn a_row_whose_text_is_not_utf8_is_told_apart_from_its_chunk() {
        let mut bytes = chunk(&[(1, "\"a\"", None), (2, "\"b\"", Some("{}"))]);
        // The second row's data: `"b"` becomes `"\xff"`.
        let at = bytes.iter().rposition(|&b| b == b'b').unwrap();
        bytes[at] = 0xff;
        let rows = chunk_rows(bytes).unwrap();
        assert!(rows[0].text().is_ok());
        let why = rows[1].text().unwrap_err();
        assert!(why.contains("its data is not UTF-8"), "{why}");
    }
}
