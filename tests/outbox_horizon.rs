//! The PostgreSQL feed's horizon belongs to its outbox writers alone: a
//! transaction that never wrote the outbox (in this database or another,
//! prepared or not) never holds the feed back, while an open outbox writer
//! holds back exactly what comes after it, and is named when it does for
//! long.

mod support;

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use support::database::{self, TestPostgres};
use support::outbox::{data, id_of};
use support::transport::LIVENESS;
use tokio::sync::OnceCell;
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, FeedRequest};
use zeroeventhub::server::{OutboxEvent, PostgresFeed, PostgresOutbox, TableName};

/// A throwaway cluster that allows prepared transactions (the shared
/// server does not, and is never reconfigured).
async fn preparing_cluster() -> &'static str {
    static CLUSTER: OnceCell<String> = OnceCell::const_new();
    CLUSTER
        .get_or_init(|| async {
            database::cluster("postgres-prepared", 25431, &["max_prepared_transactions=8"])
                .await
                .unwrap_or_else(|why| panic!("a cluster for prepared transactions: {why}"))
        })
        .await
}

async fn outbox_on(db: &TestPostgres) -> (PgPool, PostgresOutbox, PostgresFeed) {
    let pool = PgPool::connect(&db.url).await.unwrap();
    let outbox = PostgresOutbox::new(TableName::new("events").unwrap(), 2);
    outbox.migrate(&pool).await.unwrap();
    let feed = outbox.feed(pool.clone());
    (pool, outbox, feed)
}

async fn append(pool: &PgPool, outbox: &PostgresOutbox, partition: u32, id: u64) {
    let mut tx = pool.begin().await.unwrap();
    outbox
        .append(&mut tx, &OutboxEvent::in_partition(partition, data(id)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// The ids one request from `_first` reads of `partition`, at once.
async fn served(feed: &PostgresFeed, partition: u32) -> Vec<String> {
    let client = Client::builder("http://feed/".parse().unwrap(), 2).build_with(feed.service());
    let request = FeedRequest::new(2, [(partition, Cursor::first())]).unwrap();
    let page = tokio::time::timeout(LIVENESS, client.fetch_page(&request))
        .await
        .expect("the feed answers")
        .unwrap();
    page.events().iter().map(id_of).collect()
}

/// Opens a transaction on `url` that writes a table of its own and stays
/// open: what a batch job, a migration or a forgotten session does.
async fn stranger(url: &str) -> PgConnection {
    let mut connection = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS scratch (x integer); BEGIN; INSERT INTO scratch VALUES (1)",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    connection
}

#[tokio::test]
async fn transactions_that_never_wrote_the_outbox_never_hold_the_feed() {
    let db = database::postgres().await;
    let elsewhere = database::postgres().await;
    let (pool, outbox, feed) = outbox_on(&db).await;
    // Idle in transaction after a write: in another database of the
    // cluster, in the feed's own database, and a consumer's page
    // transaction on its cursor table.
    let _other_database = stranger(&elsewhere.url).await;
    let _same_database = stranger(&db.url).await;
    let mut consumer = PgConnection::connect(&elsewhere.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE cursors (p integer, c text); BEGIN; INSERT INTO cursors VALUES (0, '_first')",
    )
    .execute(&mut consumer)
    .await
    .unwrap();

    append(&pool, &outbox, 0, 1).await;
    append(&pool, &outbox, 1, 2).await;
    assert_eq!(served(&feed, 0).await, ["e1"]);
    assert_eq!(served(&feed, 1).await, ["e2"]);
    let newest: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(feed.horizon().await.unwrap(), newest as u64);
}

#[tokio::test]
async fn an_open_outbox_writer_holds_back_what_comes_after_it_and_nothing_before() {
    let db = database::postgres().await;
    let (pool, outbox, feed) = outbox_on(&db).await;
    append(&pool, &outbox, 0, 1).await;

    // A writer that appended and stays open.
    let mut open = pool.begin().await.unwrap();
    outbox
        .append(&mut open, &OutboxEvent::in_partition(0, data(2)))
        .await
        .unwrap();
    // Committed after it, on both partitions.
    append(&pool, &outbox, 0, 3).await;
    append(&pool, &outbox, 1, 4).await;
    assert_eq!(served(&feed, 0).await, ["e1"], "what came before is served");
    assert!(served(&feed, 1).await.is_empty(), "what came after waits");

    // The holder is named, with what an operator needs to find it.
    let holders = feed.horizon_holders().await.unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    let holder = &holders[0];
    assert!(holder.pid().is_some());
    assert_eq!(holder.database(), Some(db.name.as_str()));
    assert_eq!(holder.state(), Some("idle in transaction"));
    assert!(
        holder
            .query()
            .is_some_and(|query| query.contains("pg_notify")),
        "{holder:?}"
    );
    assert_eq!(holder.prepared(), None);

    open.commit().await.unwrap();
    assert_eq!(served(&feed, 0).await, ["e1", "e2", "e3"]);
    assert_eq!(served(&feed, 1).await, ["e4"]);
    assert!(feed.horizon_holders().await.unwrap().is_empty());
}

#[tokio::test]
async fn prepared_transactions_hold_the_feed_only_if_they_wrote_the_outbox() {
    let admin = preparing_cluster().await;
    let db = database::database_on(admin).await;
    let elsewhere = database::database_on(admin).await;
    let (pool, outbox, feed) = outbox_on(&db).await;

    // A forgotten prepared transaction of another database.
    let mut forgotten = stranger(&elsewhere.url).await;
    let gid = format!("forgotten-{}", db.name);
    sqlx::raw_sql(&format!("PREPARE TRANSACTION '{gid}'"))
        .execute(&mut forgotten)
        .await
        .unwrap();
    append(&pool, &outbox, 0, 1).await;
    assert_eq!(served(&feed, 0).await, ["e1"]);

    // A prepared outbox writer keeps its announcement until it is decided.
    // (Without a NOTIFY in it, which PREPARE refuses.)
    let quiet = outbox.notify_after_commit(pool.clone());
    let mut writer = PgConnection::connect(&db.url).await.unwrap();
    let mut tx = writer.begin().await.unwrap();
    let _ = quiet
        .append(&mut tx, &OutboxEvent::in_partition(0, data(2)))
        .await
        .unwrap();
    let writer_gid = format!("writer-{}", db.name);
    sqlx::raw_sql(&format!("PREPARE TRANSACTION '{writer_gid}'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    append(&pool, &outbox, 0, 3).await;
    assert_eq!(served(&feed, 0).await, ["e1"]);
    let holders = feed.horizon_holders().await.unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].prepared(), Some(writer_gid.as_str()));
    assert_eq!(holders[0].pid(), None);

    let mut admin_connection = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(&format!("COMMIT PREPARED '{writer_gid}'"))
        .execute(&mut admin_connection)
        .await
        .unwrap();
    assert_eq!(served(&feed, 0).await, ["e1", "e2", "e3"]);
    let mut other = PgConnection::connect(&elsewhere.url).await.unwrap();
    sqlx::raw_sql(&format!("ROLLBACK PREPARED '{gid}'"))
        .execute(&mut other)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_long_held_horizon_is_reported_while_it_lasts() {
    let db = database::postgres().await;
    let (pool, outbox, feed) = outbox_on(&db).await;
    let feed = feed.report_held_back_after(Duration::from_millis(200));
    let (logs, _guard) = support::logs::Log::capture();

    let mut open = pool.begin().await.unwrap();
    outbox
        .append(&mut open, &OutboxEvent::in_partition(1, data(1)))
        .await
        .unwrap();
    append(&pool, &outbox, 0, 2).await;
    // A consumer waits for the held row: the feed looks, and reports.
    let service = feed.service();
    let client = Client::builder("http://feed/".parse().unwrap(), 2)
        .head_timeout(Duration::from_secs(10))
        .build_with(service);
    let request = FeedRequest::new(2, [(0, Cursor::first())])
        .unwrap()
        .with_wait(Duration::from_secs(2));
    let page = client.fetch_page(&request).await.unwrap();
    assert!(page.events().is_empty(), "the held row is not served");
    let warned = logs.text();
    assert!(
        warned.contains("an outbox writer holds the feed back"),
        "{warned}"
    );
    assert!(warned.contains(&db.name), "{warned}");
    assert!(warned.contains("idle in transaction"), "{warned}");
    open.commit().await.unwrap();
}

/// A throwaway cluster whose WAL writer flushes asynchronous commits only
/// every 10 s, so that a test sees them visible and not yet durable.
async fn slow_flushing_cluster() -> &'static str {
    static CLUSTER: OnceCell<String> = OnceCell::const_new();
    CLUSTER
        .get_or_init(|| async {
            database::cluster(
                "postgres-slow-flush",
                25433,
                &["wal_writer_delay=10000", "wal_writer_flush_after=0"],
            )
            .await
            .unwrap_or_else(|why| panic!("a cluster that flushes slowly: {why}"))
        })
        .await
}

#[tokio::test]
async fn a_writer_without_synchronous_commit_still_commits_what_it_appends_durably() {
    let admin = slow_flushing_cluster().await;
    let db = database::database_on(admin).await;
    let (pool, outbox, _feed) = outbox_on(&db).await;
    let mut writer = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE control (x integer); SET synchronous_commit = off")
        .execute(&mut writer)
        .await
        .unwrap();
    let mut tx = writer.begin().await.unwrap();
    outbox
        .append(&mut tx, &OutboxEvent::in_partition(0, data(1)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The same session's commits that do not append stay asynchronous.
    sqlx::raw_sql("INSERT INTO control VALUES (1)")
        .execute(&mut writer)
        .await
        .unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut writer)
        .await
        .unwrap();
    assert_eq!(setting, "off", "the session's own setting is left alone");
    drop((writer, pool));

    // A crash loses what was not flushed: the control row, not the event.
    database::crash("postgres-slow-flush").unwrap();
    let admin = database::cluster(
        "postgres-slow-flush",
        25433,
        &["wal_writer_delay=10000", "wal_writer_flush_after=0"],
    )
    .await
    .unwrap();
    assert!(admin.ends_with("/postgres"));
    let pool = PgPool::connect(&db.url).await.unwrap();
    let control: i64 = sqlx::query_scalar("SELECT count(*) FROM control")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        control, 0,
        "the crash did not take back an asynchronous commit"
    );
    let feed = outbox.feed(pool);
    assert_eq!(served(&feed, 0).await, ["e1"]);
}
