//! Day two on both outboxes. Retention: `prune` by age and by count, in
//! batches, while writers append and feeds serve; `410 Gone` for a cursor
//! below what a partition keeps, `400` for one the feed never handed out;
//! the client, the runtime and `tail` telling an expired cursor apart.
//! Limits: the writers refuse what no consumer can read.

mod support;

use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};
use support::database;
use support::outbox::{data, id_of};
use support::transport::{LoopbackServer, Transport, router};
use zeroeventhub::client::{Client, HttpService};
use zeroeventhub::consumer::{Handler, MemoryStore, MemoryTransaction, Runtime};
use zeroeventhub::outbox::{Pruned, Retention};
use zeroeventhub::protocol::{Cursor, Event, FeedRequest};
use zeroeventhub::protocol::{MAX_LINE_BYTES, RawJson};
use zeroeventhub::server::{OutboxError, OutboxEvent, PostgresOutbox, SqliteOutbox, TableName};

/// One outbox of either database, with what a test does to it.
#[derive(Clone)]
enum Outbox {
    Sqlite(SqlitePool, SqliteOutbox),
    Postgres(PgPool, PostgresOutbox),
}

impl Outbox {
    async fn sqlite(test: &str, partitions: u32) -> Outbox {
        let options = SqliteConnectOptions::from_str(&database::sqlite_url(test))
            .unwrap()
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(20));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        let outbox = SqliteOutbox::new(TableName::new("events").unwrap(), partitions);
        outbox.migrate(&pool).await.unwrap();
        Outbox::Sqlite(pool, outbox)
    }

    async fn postgres(partitions: u32) -> Outbox {
        let database = database::postgres().await;
        let pool = PgPool::connect(&database.url).await.unwrap();
        let outbox = PostgresOutbox::new(TableName::new("events").unwrap(), partitions);
        outbox.migrate(&pool).await.unwrap();
        Outbox::Postgres(pool, outbox)
    }

    /// Both databases, for a test that runs on each.
    async fn both(test: &str, partitions: u32) -> [Outbox; 2] {
        [
            Outbox::sqlite(test, partitions).await,
            Outbox::postgres(partitions).await,
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Outbox::Sqlite(..) => "SQLite",
            Outbox::Postgres(..) => "PostgreSQL",
        }
    }

    /// Appends the events of ids `ids` to `partition`, in one transaction.
    async fn commit(&self, partition: u32, ids: impl IntoIterator<Item = u64>) {
        let events: Vec<OutboxEvent> = ids
            .into_iter()
            .map(|id| OutboxEvent::in_partition(partition, data(id)))
            .collect();
        match self {
            Outbox::Sqlite(pool, outbox) => {
                let mut tx = pool.begin().await.unwrap();
                outbox.append_batch(&mut tx, &events).await.unwrap();
                tx.commit().await.unwrap();
            }
            Outbox::Postgres(pool, outbox) => {
                let mut tx = pool.begin().await.unwrap();
                outbox.append_batch(&mut tx, &events).await.unwrap();
                tx.commit().await.unwrap();
                // The writers of the race may still be finishing: wait
                // until these rows are at or below the horizon, so that what
                // follows sees them as consumers will.
                let deadline = tokio::time::Instant::now() + support::transport::LIVENESS;
                let feed = outbox.feed(pool.clone());
                loop {
                    let newest: i64 =
                        sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
                            .fetch_one(pool)
                            .await
                            .unwrap();
                    if feed.horizon().await.unwrap() >= newest as u64 {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the horizon never passed"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// Appends `event` to the outbox in a transaction of its own.
    async fn try_append(&self, event: &OutboxEvent) -> Result<(), OutboxError> {
        match self {
            Outbox::Sqlite(pool, outbox) => {
                let mut tx = pool.begin().await.unwrap();
                outbox.append(&mut tx, event).await?;
                tx.commit().await.unwrap();
            }
            Outbox::Postgres(pool, outbox) => {
                let mut tx = pool.begin().await.unwrap();
                outbox.append(&mut tx, event).await?;
                tx.commit().await.unwrap();
            }
        }
        Ok(())
    }

    async fn prune(&self, retention: &Retention) -> Pruned {
        match self {
            Outbox::Sqlite(pool, outbox) => outbox.prune(pool, retention).await.unwrap(),
            Outbox::Postgres(pool, outbox) => outbox.prune(pool, retention).await.unwrap(),
        }
    }

    /// Runs `sql` as an operator would, with `{table}` for the table.
    async fn run(&self, sql: &str) {
        let sql = sql.replace("{table}", "events");
        match self {
            Outbox::Sqlite(pool, _) => {
                sqlx::raw_sql(&sql).execute(pool).await.unwrap();
            }
            Outbox::Postgres(pool, _) => {
                sqlx::raw_sql(&sql).execute(pool).await.unwrap();
            }
        }
    }

    /// Makes the rows of ids `ids` look appended two hours ago.
    async fn age(&self, ids: &[u64]) {
        for id in ids {
            let matching = format!(r#"data::text LIKE '%"e{id}"%'"#);
            match self {
                Outbox::Sqlite(..) => {
                    let matching = format!(r#"data LIKE '%"e{id}"%'"#);
                    self.run(&format!(
                        "UPDATE {{table}} SET appended_at = appended_at - 7200000 WHERE {matching}"
                    ))
                    .await
                }
                Outbox::Postgres(..) => {
                    self.run(&format!(
                        "UPDATE {{table}} SET appended_at = appended_at - interval '2 hours' \
                         WHERE {matching}"
                    ))
                    .await
                }
            }
        }
    }

    /// Serves the feed over loopback HTTP.
    async fn serve(&self) -> LoopbackServer {
        LoopbackServer::start(match self {
            Outbox::Sqlite(pool, outbox) => router(outbox.feed(pool.clone()).service()),
            Outbox::Postgres(pool, outbox) => router(outbox.feed(pool.clone()).service()),
        })
        .await
    }

    /// The answer to the feed request `query`, in process.
    async fn get(&self, query: &str) -> support::transport::Reply {
        match self {
            Outbox::Sqlite(pool, outbox) => {
                let service = outbox.feed(pool.clone()).service();
                Transport::InProcess.send(service, Method::GET, query).await
            }
            Outbox::Postgres(pool, outbox) => {
                let service = outbox.feed(pool.clone()).service();
                Transport::InProcess.send(service, Method::GET, query).await
            }
        }
    }
}

/// Reads `partition` of a `partitions`-partition feed from `cursor` to its
/// end: the ids read and the cursor after each.
async fn read_from<S: HttpService + Clone>(
    client: &Client<S>,
    partitions: u32,
    partition: u32,
    cursor: Cursor,
) -> Result<Vec<(String, Cursor)>, zeroeventhub::client::Error> {
    let mut request = FeedRequest::new(partitions, [(partition, cursor)])
        .unwrap()
        .with_page_size_hint(1);
    let mut read = Vec::new();
    loop {
        let page = client.fetch_page(&request).await?;
        let next = page.next_cursors()[0].1.clone();
        read.extend(
            page.events()
                .iter()
                .map(|event| (id_of(event), next.clone())),
        );
        if !page.made_progress() {
            return Ok(read);
        }
        request = page.next_request(&request);
    }
}

fn ids(read: &[(String, Cursor)]) -> Vec<String> {
    read.iter().map(|(id, _)| id.clone()).collect()
}

fn expected(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|id| format!("e{id}")).collect()
}

#[tokio::test]
async fn pruning_keeps_the_newest_rows_and_expires_the_cursors_behind_them() {
    for outbox in Outbox::both("prune_keep", 2).await {
        let db = outbox.name();
        outbox.commit(0, 0..10).await;
        outbox.commit(1, 100..103).await;
        let server = outbox.serve().await;
        let client = Client::builder(server.url("").parse().unwrap(), 2).build();
        let before = read_from(&client, 2, 0, Cursor::first()).await.unwrap();
        assert_eq!(ids(&before), expected(0..10), "{db}");
        let cursor_after = |id: usize| before[id].1.clone();

        let pruned = outbox.prune(&Retention::keep_last(4).with_batch(2)).await;
        assert_eq!(
            pruned.rows, 6,
            "{db}: rows 0 to 5 of partition 0 go, partition 1 keeps 3"
        );
        assert_eq!(
            pruned.batches,
            3 + 1 + 1,
            "{db}: 2, 2, 2 then 0 in partition 0; 0 in 1"
        );

        // Behind what is kept: 410, naming the partition, whatever page.
        for behind in [0, 3, 4] {
            let error = read_from(&client, 2, 0, cursor_after(behind))
                .await
                .expect_err("an expired cursor");
            assert!(error.is_cursor_expired(), "{db}: {error}");
            assert_eq!(error.cursor_partition(), Some(0), "{db}");
            assert!(!error.is_retryable(), "{db}");
        }
        // The last row pruned is remembered: a consumer right behind what
        // is kept lost nothing, and reads on.
        let after_last_pruned = read_from(&client, 2, 0, cursor_after(5)).await.unwrap();
        assert_eq!(ids(&after_last_pruned), expected(6..10), "{db}");
        let at_head = read_from(&client, 2, 0, cursor_after(9)).await.unwrap();
        assert!(at_head.is_empty(), "{db}");
        // `_first` starts at the oldest row kept.
        let first = read_from(&client, 2, 0, Cursor::first()).await.unwrap();
        assert_eq!(ids(&first), expected(6..10), "{db}");
        let untouched = read_from(&client, 2, 1, Cursor::first()).await.unwrap();
        assert_eq!(ids(&untouched), expected(100..103), "{db}");

        // Pruning again with nothing to delete deletes nothing.
        let again = outbox.prune(&Retention::keep_last(4)).await;
        assert_eq!(again.rows, 0, "{db}");
    }
}

#[tokio::test]
async fn an_expired_cursor_is_a_410_with_one_line_and_a_forged_one_stays_a_400() {
    for outbox in Outbox::both("prune_answers", 1).await {
        let db = outbox.name();
        outbox.commit(0, 0..6).await;
        let server = outbox.serve().await;
        let client = Client::builder(server.url("").parse().unwrap(), 1).build();
        let read = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
        let oldest_kept = read[3].1.clone();
        outbox.prune(&Retention::keep_last(3)).await;

        let expired = outbox
            .get(&format!("n=1&cursor0={}", read[1].1.as_str()))
            .await;
        assert_eq!(expired.status, StatusCode::GONE, "{db}");
        let text = expired.text();
        assert_eq!(text.lines().count(), 1, "{db}: {text}");
        assert!(
            text.starts_with("parameter \"cursor0\": expired:"),
            "{db}: {text}"
        );
        assert!(
            text.contains(&format!("the oldest it keeps is {}", oldest_kept.as_str())),
            "{db}: {text}"
        );

        // Well formed, but never handed out: past every row.
        let forged = match outbox {
            Outbox::Sqlite(..) => "999999",
            Outbox::Postgres(..) => "999999",
        };
        let refused = outbox.get(&format!("n=1&cursor0={forged}")).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{db}");
        assert_eq!(
            refused.text(),
            "parameter \"cursor0\": not a cursor this feed handed out\n",
            "{db}"
        );
    }
}

#[tokio::test]
async fn an_operators_own_delete_expires_the_cursors_behind_what_is_left() {
    for outbox in Outbox::both("operator_delete", 1).await {
        let db = outbox.name();
        outbox.commit(0, 0..5).await;
        let server = outbox.serve().await;
        let client = Client::builder(server.url("").parse().unwrap(), 1).build();
        let read = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
        // The operator deletes the three oldest rows by hand.
        match outbox {
            Outbox::Sqlite(..) => {
                outbox
                    .run("DELETE FROM {table} WHERE position IN (SELECT position FROM {table} ORDER BY position LIMIT 3)")
                    .await
            }
            Outbox::Postgres(..) => {
                outbox
                    .run("DELETE FROM {table} WHERE position IN (SELECT position FROM {table} ORDER BY position LIMIT 3)")
                    .await
            }
        }
        for behind in [0, 1, 2] {
            let error = read_from(&client, 1, 0, read[behind].1.clone())
                .await
                .expect_err("behind what is kept");
            assert!(error.is_cursor_expired(), "{db}: {error}");
        }
        let on = read_from(&client, 1, 0, read[3].1.clone()).await.unwrap();
        assert_eq!(ids(&on), ["e4"], "{db}");
    }
}

#[tokio::test]
async fn pruning_by_age_deletes_only_a_partitions_oldest_run_of_old_rows() {
    for outbox in Outbox::both("prune_age", 1).await {
        let db = outbox.name();
        outbox.commit(0, 0..6).await;
        // Rows 0, 1, 3 and 4 are old; 2 is young: only 0 and 1 go, since
        // deleting 3 and 4 would expire a consumer reading 2.
        outbox.age(&[0, 1, 3, 4]).await;
        let pruned = outbox
            .prune(&Retention::older_than(Duration::from_secs(3600)))
            .await;
        assert_eq!(pruned.rows, 2, "{db}");
        let server = outbox.serve().await;
        let client = Client::builder(server.url("").parse().unwrap(), 1).build();
        let left = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
        assert_eq!(ids(&left), ["e2", "e3", "e4", "e5"], "{db}");

        // Old rows are kept when they are among the newest kept.
        outbox.age(&[2, 5]).await;
        let pruned = outbox
            .prune(&Retention::older_than(Duration::from_secs(3600)).keeping_last(2))
            .await;
        assert_eq!(pruned.rows, 2, "{db}: e2 and e3 go, e4 and e5 stay");
        let left = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
        assert_eq!(ids(&left), ["e4", "e5"], "{db}");

        // Even all of them old, the newest row of a partition stays.
        let pruned = outbox
            .prune(&Retention::older_than(Duration::from_secs(3600)))
            .await;
        assert_eq!(pruned.rows, 1, "{db}");
        let left = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
        assert_eq!(ids(&left), ["e5"], "{db}");
    }
}

#[tokio::test]
async fn pruning_while_writing_and_serving_never_skips_an_event_silently() {
    for outbox in Outbox::both("prune_race", 2).await {
        let db = outbox.name();
        let server = outbox.serve().await;
        let client = Client::builder(server.url("").parse().unwrap(), 2).build();
        let writing = Arc::new(AtomicBool::new(true));

        let writer = {
            let outbox = outbox.clone();
            let writing = Arc::clone(&writing);
            tokio::spawn(async move {
                for batch in 0..60u64 {
                    outbox
                        .commit((batch % 2) as u32, batch * 10..batch * 10 + 10)
                        .await;
                }
                writing.store(false, Ordering::SeqCst);
            })
        };
        let pruner = {
            let outbox = outbox.clone();
            let writing = Arc::clone(&writing);
            tokio::spawn(async move {
                let mut rows = 0;
                while writing.load(Ordering::SeqCst) {
                    rows += outbox
                        .prune(&Retention::keep_last(40).with_batch(7))
                        .await
                        .rows;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                rows
            })
        };
        // A consumer per partition, reading behind the writer: it reads
        // every event of its partition in order, or is told it fell behind.
        let mut consumers = Vec::new();
        for partition in 0..2u32 {
            let client = client.clone();
            let writing = Arc::clone(&writing);
            consumers.push(tokio::spawn(async move {
                let mut cursor = Cursor::first();
                let mut seen = Vec::new();
                loop {
                    let still_writing = writing.load(Ordering::SeqCst);
                    let request = FeedRequest::new(2, [(partition, cursor.clone())])
                        .unwrap()
                        .with_page_size_hint(13);
                    match client.fetch_page(&request).await {
                        Ok(page) => {
                            seen.extend(page.events().iter().map(id_of));
                            cursor = page.next_cursors()[0].1.clone();
                            if !page.made_progress() && !still_writing {
                                return (seen, false);
                            }
                        }
                        Err(error) if error.is_cursor_expired() => return (seen, true),
                        Err(error) => panic!("partition {partition}: {error}"),
                    }
                }
            }));
        }
        writer.await.unwrap();
        let pruned_rows = pruner.await.unwrap();
        for (partition, consumer) in consumers.into_iter().enumerate() {
            let (seen, expired) = consumer.await.unwrap();
            let all: Vec<String> = (0..60u64)
                .filter(|batch| batch % 2 == partition as u64)
                .flat_map(|batch| batch * 10..batch * 10 + 10)
                .map(|id| format!("e{id}"))
                .collect();
            if expired {
                // What it read before it fell behind is a gap-free start.
                assert_eq!(seen[..], all[..seen.len()], "{db} partition {partition}");
                assert!(seen.len() < all.len(), "{db}");
            } else {
                assert_eq!(seen, all, "{db} partition {partition}");
            }
        }
        // Whatever ran concurrently, the last prune leaves the newest 40.
        let last = outbox.prune(&Retention::keep_last(40)).await;
        assert_eq!(pruned_rows + last.rows, 600 - 80, "{db}");
        for partition in 0..2 {
            let left = read_from(&client, 2, partition, Cursor::first())
                .await
                .unwrap();
            assert_eq!(left.len(), 40, "{db} partition {partition}");
        }
    }
}

/// Keeps each event's id, in the page's transaction.
struct Keep;

impl Handler<MemoryTransaction<String>> for Keep {
    type Error = std::convert::Infallible;

    async fn handle(
        &mut self,
        transaction: &mut MemoryTransaction<String>,
        events: &[Event],
    ) -> Result<(), Self::Error> {
        for event in events {
            transaction.insert(id_of(event));
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_runtime_stops_on_an_expired_cursor_and_names_consumer_and_partition() {
    for outbox in Outbox::both("runtime_expired", 2).await {
        let db = outbox.name();
        outbox.commit(1, 0..3).await;
        let server = outbox.serve().await;
        let client = Client::builder(server.url("").parse().unwrap(), 2).build();
        let store = MemoryStore::<String>::new();
        let runtime = Runtime::new(client, store.clone(), "billing");
        let stats = runtime.stats();
        runtime
            .run(Keep, async move {
                stats.wait_for(|stats| stats.caught_up).await;
            })
            .await
            .unwrap();
        assert_eq!(store.rows(), ["e0", "e1", "e2"], "{db}");

        // It falls behind retention while stopped.
        outbox.commit(1, 3..10).await;
        outbox.prune(&Retention::keep_last(2)).await;
        let error = tokio::time::timeout(
            Duration::from_secs(20),
            runtime.run(Keep, std::future::pending()),
        )
        .await
        .expect("the runtime stops by itself")
        .expect_err("an expired cursor stops the runtime");
        assert!(
            error.is_cursor_expired() && error.is_feed(),
            "{db}: {error}"
        );
        assert_eq!(error.partition(), Some(1), "{db}");
        let message = error.to_string();
        assert!(
            message.starts_with("consumer \"billing\" stopped: its cursor of partition 1 expired"),
            "{db}: {message}"
        );
        assert_eq!(
            store.rows(),
            ["e0", "e1", "e2"],
            "{db}: nothing reset, nothing skipped"
        );
    }
}

#[tokio::test]
async fn tail_exits_non_zero_on_an_expired_cursor() {
    let outbox = Outbox::sqlite("tail_expired", 1).await;
    outbox.commit(0, 0..5).await;
    let server = outbox.serve().await;
    let client = Client::builder(server.url("").parse().unwrap(), 1).build();
    let read = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
    outbox.prune(&Retention::keep_last(1)).await;
    let url = server.url("");
    let expired = format!("0={}", read[0].1.as_str());
    let tail = support::examples::binary("tail");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(tail)
            .args([
                url.trim_end_matches('?'),
                "--partitions",
                "1",
                "--cursor",
                &expired,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("410 Gone"), "{stderr}");
    assert!(
        stderr.contains("fell behind the feed's retention"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// An event whose data is a JSON string of `bytes` bytes, quotes included.
fn event_of(bytes: usize) -> OutboxEvent {
    let text = format!("\"{}\"", "x".repeat(bytes - 2));
    OutboxEvent::in_partition(0, RawJson::from_bytes(text).unwrap())
}

#[tokio::test]
async fn the_writers_refuse_an_event_no_consumer_can_read() {
    for outbox in Outbox::both("line_limit", 1).await {
        let db = outbox.name();
        let overhead = r#"{"partition":0000000000,"headers":,"data":}"#.len();
        let too_large = outbox
            .try_append(&event_of(MAX_LINE_BYTES))
            .await
            .unwrap_err();
        assert!(
            matches!(too_large, OutboxError::EventTooLarge { limit, .. } if limit == MAX_LINE_BYTES),
            "{db}: {too_large:?}"
        );
        assert!(
            too_large.to_string().contains("over the protocol's limit"),
            "{db}"
        );
        let with_headers = event_of(MAX_LINE_BYTES - overhead - 10).with_header("k", "0123456789");
        assert!(
            outbox.try_append(&with_headers).await.is_err(),
            "{db}: headers count"
        );

        // The largest event that fits is written and read with the defaults.
        outbox
            .try_append(&event_of(MAX_LINE_BYTES - overhead))
            .await
            .unwrap();
        let server = outbox.serve().await;
        let client = Client::builder(server.url("").parse().unwrap(), 1).build();
        let request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();
        let page = client.fetch_page(&request).await.unwrap();
        assert_eq!(
            page.events().len(),
            1,
            "{db}: only the one that fits was written"
        );
        assert_eq!(
            page.events()[0].data.as_str().len(),
            MAX_LINE_BYTES - overhead,
            "{db}"
        );
    }
}

#[tokio::test]
async fn a_cursor_of_another_outbox_is_refused() {
    // Two outboxes written in the same transactions: their positions run
    // alike, their cursors must not pass for each other's.
    for outbox in Outbox::both("two_outboxes", 1).await {
        let db = outbox.name();
        let other = match &outbox {
            Outbox::Sqlite(pool, _) => {
                let other = SqliteOutbox::new(TableName::new("other_events").unwrap(), 1);
                other.migrate(pool).await.unwrap();
                Outbox::Sqlite(pool.clone(), other)
            }
            Outbox::Postgres(pool, _) => {
                let other = PostgresOutbox::new(TableName::new("other_events").unwrap(), 1);
                other.migrate(pool).await.unwrap();
                Outbox::Postgres(pool.clone(), other)
            }
        };
        outbox.commit(0, 0..3).await;
        other.commit(0, 0..3).await;
        let server = outbox.serve().await;
        let client = Client::builder(server.url("").parse().unwrap(), 1).build();
        let read = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
        let cursor = read[1].1.as_str();
        let refused = other.get(&format!("n=1&cursor0={cursor}")).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{db}: {}",
            refused.text()
        );
        // On its own feed, the same cursor reads on.
        assert_eq!(
            outbox.get(&format!("n=1&cursor0={cursor}")).await.status,
            StatusCode::OK
        );
    }
    // The same table in two databases.
    let first = Outbox::sqlite("two_databases_a", 1).await;
    let second = Outbox::sqlite("two_databases_b", 1).await;
    for outbox in [&first, &second] {
        outbox.commit(0, 0..3).await;
    }
    let server = first.serve().await;
    let client = Client::builder(server.url("").parse().unwrap(), 1).build();
    let read = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
    let refused = second
        .get(&format!("n=1&cursor0={}", read[1].1.as_str()))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
}

/// The page of `query`, as the feed's client reads it.
async fn page_of(
    outbox: &Outbox,
    partitions: u32,
    request: &FeedRequest,
) -> zeroeventhub::client::Page {
    let server = outbox.serve().await;
    let client = Client::builder(server.url("").parse().unwrap(), partitions).build();
    client.fetch_page(request).await.unwrap()
}

#[tokio::test]
async fn events_carry_their_id_and_append_time_when_asked() {
    for outbox in Outbox::both("ce_headers", 1).await {
        let db = outbox.name();
        let plain = OutboxEvent::in_partition(0, data(1)).with_header("trace", "t1");
        let own_id = OutboxEvent::in_partition(0, data(2)).with_header("ce_id", "order-17");
        outbox.try_append(&plain).await.unwrap();
        outbox.try_append(&own_id).await.unwrap();

        let asked = FeedRequest::new(1, [(0, Cursor::first())])
            .unwrap()
            .with_headers(
                zeroeventhub::protocol::HeaderSelection::only(["ce_id", "ce_time", "trace"])
                    .unwrap(),
            );
        let page = page_of(&outbox, 1, &asked).await;
        let [first, second] = page.events() else {
            panic!("{db}: two events");
        };
        // The id is the event's cursor, unique in its feed.
        let checkpoints: Vec<&Cursor> = page.checkpoints().iter().map(|c| &c.cursor).collect();
        assert_eq!(first.headers["ce_id"], checkpoints[0].as_str(), "{db}");
        assert_eq!(first.headers["trace"], "t1", "{db}");
        // A stored ce_id is the event's own.
        assert_eq!(second.headers["ce_id"], "order-17", "{db}");
        for event in [first, second] {
            let time = &event.headers["ce_time"];
            assert!(
                time.len() == 24 && time.ends_with('Z') && time.starts_with("20"),
                "{db}: {time}"
            );
        }
        // Not asked, not sent.
        let plain_request = FeedRequest::new(1, [(0, Cursor::first())]).unwrap();
        let page = page_of(&outbox, 1, &plain_request).await;
        assert!(
            page.events().iter().all(|event| event.headers.is_empty()),
            "{db}"
        );
    }
}

#[tokio::test]
async fn a_row_the_feed_cannot_serve_stops_its_partition_alone_and_is_named() {
    for outbox in Outbox::both("bad_row", 2).await {
        let db = outbox.name();
        outbox.commit(0, 0..2).await;
        outbox.commit(1, 10..11).await;
        // Written by SQL: headers that are JSON, but not an object of strings.
        outbox
            .run(r#"INSERT INTO {table} (partition, headers, data) VALUES (1, '{"n":1}', '{"id":"e11"}')"#)
            .await;
        outbox.commit(1, 12..13).await;
        outbox.commit(0, 2..3).await;
        let (logs, _guard) = support::logs::Log::capture();

        let both = FeedRequest::new(2, [(0, Cursor::first()), (1, Cursor::first())])
            .unwrap()
            .with_headers(zeroeventhub::protocol::HeaderSelection::All);
        let page = page_of(&outbox, 2, &both).await;
        let ids: Vec<String> = page.events().iter().map(id_of).collect();
        assert_eq!(
            ids,
            ["e0", "e1", "e2", "e10"],
            "{db}: partition 1 stops before the row"
        );
        // Asked for alone, the partition fails, and the log names the row.
        let query = format!(
            "n=2&cursor1={}&headers=_all",
            page.next_cursors()[1].1.as_str()
        );
        let alone = outbox.get(&query).await;
        assert_eq!(alone.status, StatusCode::INTERNAL_SERVER_ERROR, "{db}");
        let logged = logs.text();
        assert!(
            logged.contains("outbox events, partition 1, row at position")
                && logged.contains("not a JSON object of strings"),
            "{db}: {logged}"
        );
        // Without headers, the row is served.
        let plain = FeedRequest::new(2, [(1, page.next_cursors()[1].1.clone())]).unwrap();
        let page = page_of(&outbox, 2, &plain).await;
        let ids: Vec<String> = page.events().iter().map(id_of).collect();
        assert_eq!(ids, ["e11", "e12"], "{db}");
    }
}

#[tokio::test]
async fn a_sqlite_row_whose_text_is_not_utf8_stops_its_partition_alone() {
    let outbox = Outbox::sqlite("bad_utf8", 2).await;
    outbox.commit(0, 0..2).await;
    outbox.commit(1, 10..11).await;
    // SQLite and `json_valid` take text that is not UTF-8.
    outbox
        .run("INSERT INTO {table} (partition, data) VALUES (1, CAST(X'22FF22' AS TEXT))")
        .await;
    outbox.commit(0, 2..3).await;
    let (logs, _guard) = support::logs::Log::capture();
    let both = FeedRequest::new(2, [(0, Cursor::first()), (1, Cursor::first())]).unwrap();
    let page = page_of(&outbox, 2, &both).await;
    let ids: Vec<String> = page.events().iter().map(id_of).collect();
    assert_eq!(ids, ["e0", "e1", "e2", "e10"]);
    let query = format!("n=2&cursor1={}", page.next_cursors()[1].1.as_str());
    assert_eq!(
        outbox.get(&query).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let logged = logs.text();
    assert!(logged.contains("its data is not UTF-8"), "{logged}");
    assert!(
        logged.contains("outbox events, partition 1, row at position"),
        "{logged}"
    );
}

#[tokio::test]
async fn a_sqlite_backup_copied_back_loses_no_event_written_after_it() {
    let path = database::sqlite_path("copied_back");
    let backup = path.with_extension("backup");
    let _ = std::fs::remove_file(&backup);
    let open = || async {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        let outbox = SqliteOutbox::new(TableName::new("events").unwrap(), 1);
        outbox.migrate(&pool).await.unwrap();
        Outbox::Sqlite(pool, outbox)
    };
    let outbox = open().await;
    outbox.commit(0, 0..3).await;
    outbox
        .run(&format!("VACUUM INTO '{}'", backup.display()))
        .await;
    outbox.commit(0, 3..6).await;
    let server = outbox.serve().await;
    let client = Client::builder(server.url("").parse().unwrap(), 1).build();
    let read = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
    assert_eq!(ids(&read), expected(0..6));
    let consumer_cursor = read[5].1.clone();
    drop(server);
    if let Outbox::Sqlite(pool, _) = &outbox {
        pool.close().await;
    }

    // The backup is copied back: e3 to e5 are gone with it.
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::copy(&backup, &path).unwrap();
    let restored = open().await;
    restored.commit(0, 100..105).await;
    let server = restored.serve().await;
    let client = Client::builder(server.url("").parse().unwrap(), 1).build();
    // The consumer resumes from its cursor: every event written since the
    // restore, none skipped, and no 400.
    let resumed = read_from(&client, 1, 0, consumer_cursor).await.unwrap();
    assert_eq!(ids(&resumed), expected(100..105));
    // A fresh consumer reads what the file holds.
    let fresh = read_from(&client, 1, 0, Cursor::first()).await.unwrap();
    let mut all = expected(0..3);
    all.extend(expected(100..105));
    assert_eq!(ids(&fresh), all);
}
