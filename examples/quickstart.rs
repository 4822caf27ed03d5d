//! Two services and a feed between them, on the embedded default (SQLite,
//! nothing to install): `cargo run --example quickstart`.
//!
//! - The *shop* writes each order and its `OrderPlaced` event in one
//!   transaction: the order into its `orders` table, the event into an
//!   outbox table ([`SqliteOutbox`]). It serves the outbox as a feed over
//!   HTTP on loopback.
//! - The *billing* service consumes the feed with the consumer runtime and
//!   the SQLite cursor store: each page's events become rows of its
//!   `invoices` table in the transaction that also moves its cursors.
//!
//! Half-way, billing crashes (its task is aborted wherever it is, in the
//! middle of a page or not) and a new instance starts from its database
//! while the shop keeps selling. The summary checks that every order was
//! invoiced exactly once; `invoices` has no unique constraint, so a
//! duplicate would show. Both databases are files in a temporary folder,
//! removed at the end.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use zeroeventhub::BoxError;
use zeroeventhub::client::Client;
use zeroeventhub::consumer::{Handler, Runtime, SqliteStore};
use zeroeventhub::protocol::{Event, RawJson};
use zeroeventhub::server::{OutboxEvent, SqliteOutbox, TableName};

const PARTITIONS: u32 = 4;
const ORDERS: u64 = 10_000;
/// Orders per shop transaction.
const BATCH: u64 = 50;

/// The event the shop publishes.
#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
    customer: String,
    amount_cents: i64,
}

/// Billing's logic: one invoice per order, in the page's transaction.
struct Invoicing;

impl Handler<Transaction<'static, Sqlite>, OrderPlaced> for Invoicing {
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        transaction: &mut Transaction<'static, Sqlite>,
        events: &[Event<OrderPlaced>],
    ) -> Result<(), sqlx::Error> {
        for event in events {
            sqlx::query("INSERT INTO invoices (order_id, amount_cents) VALUES (?, ?)")
                .bind(event.data.order as i64)
                .bind(event.data.amount_cents)
                .execute(&mut **transaction)
                .await?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let folder =
        std::env::temp_dir().join(format!("zeroeventhub-quickstart-{}", std::process::id()));
    let outcome = match std::fs::create_dir_all(&folder) {
        Ok(()) => run(&folder).await,
        Err(error) => Err(error.into()),
    };
    let _ = std::fs::remove_dir_all(&folder);
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("quickstart: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A pool on the SQLite file `path`, created if missing.
async fn open(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // NORMAL: durable at checkpoints, not at every commit; atomic either
        // way. In WAL journal mode, which sqlx does not set but the outbox's
        // and the store's `migrate` do, on the file.
        .synchronous(SqliteSynchronous::Normal);
    SqlitePool::connect_with(options).await
}

async fn run(folder: &Path) -> Result<bool, BoxError> {
    let started = Instant::now();

    // The shop: its orders, its outbox, and the outbox served as a feed.
    let shop = open(&folder.join("shop.db")).await?;
    sqlx::query(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, \
         amount_cents INTEGER NOT NULL)",
    )
    .execute(&shop)
    .await?;
    let outbox = SqliteOutbox::new(TableName::new("order_events")?, PARTITIONS);
    outbox.migrate(&shop).await?;
    let app =
        axum::Router::new().route_service("/orders/feed", outbox.feed(shop.clone()).service());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/orders/feed", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "shop: feed at {url}, {PARTITIONS} partitions, files in {}",
        folder.display()
    );
    let sold = Arc::new(AtomicU64::new(0));
    let selling = tokio::spawn(sell(shop.clone(), outbox, Arc::clone(&sold)));

    // Billing, first instance: crashes once a third of the orders are in.
    let billing_db = folder.join("billing.db");
    let billing = open(&billing_db).await?;
    sqlx::query("CREATE TABLE invoices (order_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL)")
        .execute(&billing)
        .await?;
    let store = SqliteStore::new(billing.clone());
    store.migrate().await?;
    let client = Client::builder(url.parse()?, PARTITIONS).build();
    let runtime = Runtime::new(client.clone(), store, "billing").with_page_size(500);
    let stats = runtime.stats();
    let instance =
        tokio::spawn(async move { runtime.run_as(Invoicing, std::future::pending()).await });
    tokio::time::timeout(
        Duration::from_secs(30),
        stats.wait_for(|stats| stats.events >= ORDERS / 3),
    )
    .await
    .map_err(|_| "billing made no progress in 30 s")?;
    instance.abort();
    let _ = instance.await;
    billing.close().await;
    let invoiced_before = stats.snapshot().events;
    println!(
        "billing: crashed after committing {invoiced_before} invoices, {} orders sold so far \
         (a page in flight, if any, rolled back with it)",
        sold.load(Ordering::Relaxed)
    );

    // Billing, restarted: a new process would open the file again. The
    // crash left its lease unreleased, so the new instance waits until the
    // crashed one's heartbeat is older than `SqliteStore::LEASE_TIMEOUT`
    // (3 s) and then takes over; a clean stop would have let it start at once.
    let billing = open(&billing_db).await?;
    let runtime =
        Runtime::new(client, SqliteStore::new(billing.clone()), "billing").with_page_size(500);
    let restarted = runtime.stats();
    let everything_invoiced = async {
        loop {
            let invoices: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices")
                .fetch_one(&billing)
                .await
                .unwrap_or(0);
            if selling.is_finished() && invoices as u64 >= ORDERS {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        runtime.run_as(Invoicing, everything_invoiced),
    )
    .await
    .map_err(|_| "billing did not finish in 60 s")?;
    done?;
    selling.await??;
    println!(
        "billing: restarted from its cursors, committed {} more invoices in {} pages",
        restarted.snapshot().events,
        restarted.snapshot().pages
    );

    // The summary, from both databases.
    let (rows, distinct, invoiced_cents): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT order_id), coalesce(sum(amount_cents), 0) FROM invoices",
    )
    .fetch_one(&billing)
    .await?;
    let (orders, sold_cents): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(amount_cents), 0) FROM orders")
            .fetch_one(&shop)
            .await?;
    let cursors: Vec<(i64, String)> = sqlx::query_as(
        "SELECT partition, cursor FROM zeh_consumer_cursors WHERE consumer = 'billing' \
         ORDER BY partition",
    )
    .fetch_all(&billing)
    .await?;
    let exact = rows == orders && distinct == orders && invoiced_cents == sold_cents;
    println!(
        "\nsummary: {orders} orders sold, {rows} invoices, {} duplicates, {} missing, \
         amounts {} (sold {sold_cents} cents, invoiced {invoiced_cents}); \
         cursors {cursors:?}; {:.1} s",
        rows - distinct,
        orders - distinct,
        if invoiced_cents == sold_cents {
            "match"
        } else {
            "DIFFER"
        },
        started.elapsed().as_secs_f64(),
    );
    println!(
        "{}",
        if exact {
            "every order invoiced exactly once"
        } else {
            "NOT exactly once"
        }
    );
    billing.close().await;
    shop.close().await;
    Ok(exact)
}

/// The shop: sells `ORDERS` orders, `BATCH` per transaction, each order and
/// its event committed together.
async fn sell(
    pool: SqlitePool,
    outbox: SqliteOutbox,
    sold: Arc<AtomicU64>,
) -> Result<(), BoxError> {
    for first in (0..ORDERS).step_by(BATCH as usize) {
        let mut transaction = pool.begin().await?;
        let mut events = Vec::new();
        for order in first..(first + BATCH).min(ORDERS) {
            let placed = OrderPlaced {
                order,
                customer: format!("customer-{}", order % 97),
                amount_cents: 100 + (order % 10_000) as i64,
            };
            sqlx::query("INSERT INTO orders (id, customer, amount_cents) VALUES (?, ?, ?)")
                .bind(order as i64)
                .bind(&placed.customer)
                .bind(placed.amount_cents)
                .execute(&mut *transaction)
                .await?;
            // The customer is the partition key: one customer's orders
            // stay in order.
            events.push(OutboxEvent::keyed(
                &placed.customer,
                RawJson::from_serialize(&placed)?,
            ));
        }
        outbox.append_batch(&mut transaction, &events).await?;
        transaction.commit().await?;
        sold.fetch_add(events.len() as u64, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}
