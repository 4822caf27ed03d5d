//! Restores and migrations of a PostgreSQL outbox: a dump restored into a
//! fresh cluster serves every event, old and new, exactly once and in order
//! to consumers that resume from their cursors; rows that arrive without
//! their position counter (a copy of the rows alone, logical replication)
//! are refused, not served out of order, until `migrate` repairs it.

mod support;

use std::path::Path;
use std::process::Command;

use sqlx::PgPool;
use support::database;
use support::outbox::{data, id_of};
use zeroeventhub::client::{Client, HttpService};
use zeroeventhub::protocol::FeedRequest;
use zeroeventhub::server::{OutboxError, OutboxEvent, PostgresOutbox, TableName};

const PARTITIONS: u32 = 2;

async fn append(pool: &PgPool, outbox: &PostgresOutbox, ids: std::ops::Range<u64>) {
    for id in ids {
        let mut tx = pool.begin().await.unwrap();
        let event = OutboxEvent::in_partition((id % 2) as u32, data(id));
        outbox.append(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// Reads from `request` until a page brings nothing, or `max` events:
/// the ids read (in each partition's order) and the request to go on with.
async fn read<S: HttpService + Clone>(
    client: &Client<S>,
    mut request: FeedRequest,
    max: usize,
) -> (Vec<String>, FeedRequest) {
    let mut ids = Vec::new();
    while ids.len() < max {
        let page = client.fetch_page(&request).await.unwrap();
        ids.extend(page.events().iter().map(id_of));
        request = page.next_request(&request);
        if !page.made_progress() {
            break;
        }
    }
    (ids, request)
}

/// The ids of `range`, in the order one partition after the other would
/// not give: sorted, for comparing what two partitions delivered.
fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort_by_key(|id| id[1..].parse::<u64>().unwrap());
    ids
}

fn expected(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|id| format!("e{id}")).collect()
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_restored_dump_serves_old_and_new_events_exactly_once_and_refuses_a_lost_counter() {
    let source = database::postgres().await;
    let pool = PgPool::connect(&source.url).await.unwrap();
    let outbox = PostgresOutbox::new(TableName::new("events").unwrap(), PARTITIONS);
    outbox.migrate(&pool).await.unwrap();
    append(&pool, &outbox, 0..120).await;

    // A consumer reads part of the feed, then the database is dumped.
    let client = Client::builder("http://feed/".parse().unwrap(), PARTITIONS)
        .build_with(outbox.feed(pool.clone()).service());
    let start = FeedRequest::new(
        PARTITIONS,
        [
            (0, zeroeventhub::protocol::Cursor::first()),
            (1, zeroeventhub::protocol::Cursor::first()),
        ],
    )
    .unwrap()
    .with_page_size_hint(10);
    let (before, resume) = read(&client, start, 80).await;
    assert_eq!(before.len(), 80);
    let dump = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.dump", source.name));
    run(Command::new("pg_dump")
        .args(["-Fc", "-d", &source.url, "-f"])
        .arg(&dump));

    // Restored into a fresh cluster, whose transaction counter starts over.
    let admin = database::cluster("postgres-restore", 25432, &[])
        .await
        .unwrap_or_else(|why| panic!("a cluster to restore into: {why}"));
    let target = database::database_on(&admin).await;
    run(Command::new("pg_restore")
        .args(["--no-owner", "-d", &target.url])
        .arg(&dump));
    let restored = PgPool::connect(&target.url).await.unwrap();
    outbox.check_counter(&restored).await.unwrap();
    outbox.migrate(&restored).await.unwrap();
    append(&restored, &outbox, 120..150).await;

    // The consumer resumes from its cursors on the restored feed.
    let client = Client::builder("http://feed/".parse().unwrap(), PARTITIONS)
        .build_with(outbox.feed(restored.clone()).service());
    let (after, resume) = read(&client, resume, usize::MAX).await;
    let mut all = before.clone();
    all.extend(after);
    assert_eq!(
        sorted(all.clone()),
        expected(0..150),
        "every event exactly once"
    );
    for partition in ["0", "1"] {
        // Within a partition, in order.
        let ids: Vec<u64> = all
            .iter()
            .map(|id| id[1..].parse::<u64>().unwrap())
            .filter(|id| (id % 2).to_string() == partition)
            .collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    }

    // A copy of the rows without their counter: the counter starts over.
    sqlx::query("SELECT setval('events_position_seq', 1)")
        .execute(&restored)
        .await
        .unwrap();
    let behind = outbox.check_counter(&restored).await.unwrap_err();
    assert!(
        matches!(behind, OutboxError::CounterBehind { counter: 1, stored, .. } if stored >= 150),
        "{behind:?}"
    );
    assert!(
        behind.to_string().contains("run the outbox's migrate"),
        "{behind}"
    );
    // A fresh feed refuses to serve, rather than serve new rows out of order.
    let refusing = Client::builder("http://feed/".parse().unwrap(), PARTITIONS)
        .build_with(outbox.feed(restored.clone()).service());
    let refused = refusing.fetch_page(&resume).await.unwrap_err();
    assert_eq!(
        refused.status().map(|status| status.as_u16()),
        Some(500),
        "{refused}"
    );

    // The documented remedy: migrate, before any writer appends.
    outbox.migrate(&restored).await.unwrap();
    outbox.check_counter(&restored).await.unwrap();
    append(&restored, &outbox, 150..160).await;
    let repaired = Client::builder("http://feed/".parse().unwrap(), PARTITIONS)
        .build_with(outbox.feed(restored.clone()).service());
    let (newest, _) = read(&repaired, resume, usize::MAX).await;
    assert_eq!(sorted(newest), expected(150..160));
}
