//! A feed and its consumer, end to end, on loopback: `cargo run --example quickstart`.
//!
//! A producer appends orders to an in-memory feed served by axum. A
//! consumer reads every partition from `_first` through the default client
//! stack and commits each page into a stand-in for its database: the events
//! and the cursors that cover them, in one transaction. Half-way through,
//! the consumer "crashes" and restarts from the cursors it stored. The
//! summary at the end checks that every order was stored exactly once.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use serde::{Deserialize, Serialize};
use zeroeventhub::client::Client;
use zeroeventhub::protocol::{Cursor, Event, FeedRequest, RawJson};
use zeroeventhub::server::MemoryFeed;

const PARTITIONS: u32 = 4;
const ORDERS: u64 = 200_000;
const PAGE_SIZE: u32 = 5_000;

/// The event: what a producer would publish.
#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    order: u64,
    customer: String,
    amount_cents: u64,
}

/// Stands for the consumer's database: the effect of the events, and one
/// cursor per partition, changed together or not at all.
#[derive(Default)]
struct Database {
    /// Orders stored per partition, in the order they were stored.
    orders: BTreeMap<u32, Vec<u64>>,
    /// Orders stored more than once (must stay 0).
    duplicates: u64,
    cursors: BTreeMap<u32, Cursor>,
}

impl Database {
    /// One transaction: the page's covered events and its next cursors.
    fn commit(&mut self, events: &[Event<OrderPlaced>], cursors: &[(u32, Cursor)]) {
        for event in events {
            let stored = self.orders.entry(event.partition).or_default();
            if stored.last().is_some_and(|last| *last >= event.data.order) {
                self.duplicates += 1;
            }
            stored.push(event.data.order);
        }
        for (partition, cursor) in cursors {
            self.cursors.insert(*partition, cursor.clone());
        }
    }

    fn stored(&self) -> u64 {
        self.orders.values().map(|orders| orders.len() as u64).sum()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("quickstart: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, zeroeventhub::BoxError> {
    // The publisher: a feed, served on a free loopback port.
    let feed = MemoryFeed::new(PARTITIONS);
    let app = axum::Router::new().route_service("/orders/feed", feed.service());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/orders/feed", listener.local_addr()?);
    // Small pages go out at once instead of waiting for the client's ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("feed at {url}, {PARTITIONS} partitions");

    // The producer: orders arrive in bursts, spread over the partitions.
    let produced = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(feed.clone(), Arc::clone(&produced)));

    // The consumer, with the default stack: retry, timeouts, pooled HTTP.
    let client = Client::builder(url.parse()?, PARTITIONS).build();
    let database = Arc::new(Mutex::new(Database::default()));
    let started = Instant::now();

    // A first run that "crashes" after a while, wherever it is...
    let crashed = tokio::time::timeout(
        Duration::from_millis(700),
        consume(&client, &database, &produced, started),
    )
    .await;
    if crashed.is_err() {
        let stored = database.lock().expect("database lock").stored();
        println!("\nconsumer crashed after storing {stored} orders; restarting from its cursors");
    }
    // ...and a restart that reads the cursors back and goes on.
    consume(&client, &database, &produced, started).await?;
    producer.await??;

    let database = database.lock().expect("database lock");
    let elapsed = started.elapsed().as_secs_f64();
    let stored = database.stored();
    let in_order_and_complete = database.orders.iter().all(|(partition, orders)| {
        let expected =
            (0..ORDERS).filter(|order| order % u64::from(PARTITIONS) == u64::from(*partition));
        orders.iter().copied().eq(expected)
    });
    println!(
        "\nsummary: produced {ORDERS}, stored {stored}, duplicates {}, missing {}, \
         every partition complete and in order: {in_order_and_complete}",
        database.duplicates,
        ORDERS.saturating_sub(stored),
    );
    println!(
        "{stored} orders in {elapsed:.2}s ({:.0} events/s), final cursors {:?}",
        stored as f64 / elapsed,
        database.cursors
    );
    Ok(stored == ORDERS && database.duplicates == 0 && in_order_and_complete)
}

async fn produce(
    feed: MemoryFeed,
    produced: Arc<AtomicU64>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    const BURST: u64 = 4_000;
    for start in (0..ORDERS).step_by(BURST as usize) {
        for order in start..(start + BURST).min(ORDERS) {
            let data = RawJson::from_serialize(&OrderPlaced {
                order,
                customer: format!("customer-{}", order % 997),
                amount_cents: 100 + order % 10_000,
            })?;
            feed.append(Event::new((order % u64::from(PARTITIONS)) as u32, data))?;
            produced.store(order + 1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The consumption loop: from the stored cursors, fetch a page, commit its
/// covered events with its cursors, go on; stop once every order produced
/// is stored.
async fn consume<S>(
    client: &Client<S>,
    database: &Mutex<Database>,
    produced: &AtomicU64,
    started: Instant,
) -> Result<(), zeroeventhub::client::Error>
where
    S: zeroeventhub::client::HttpService + Clone,
{
    let mut last_report = Instant::now();
    loop {
        let cursors: Vec<(u32, Cursor)> = {
            let database = database.lock().expect("database lock");
            (0..PARTITIONS)
                .map(|p| {
                    (
                        p,
                        database
                            .cursors
                            .get(&p)
                            .cloned()
                            .unwrap_or_else(Cursor::first),
                    )
                })
                .collect()
        };
        let request = FeedRequest::new(PARTITIONS, cursors)
            .expect("one cursor per partition")
            .with_page_size_hint(PAGE_SIZE);
        let page = client.fetch_page_as::<OrderPlaced>(&request).await?;
        let stored = {
            let mut database = database.lock().expect("database lock");
            database.commit(page.events(), page.next_cursors());
            database.stored()
        };

        let produced = produced.load(Ordering::Relaxed);
        if last_report.elapsed() > Duration::from_millis(200) || stored == ORDERS {
            last_report = Instant::now();
            let rate = stored as f64 / started.elapsed().as_secs_f64();
            // Redrawn in place on a terminal, one line each otherwise.
            let start = if std::io::stdout().is_terminal() {
                "\r"
            } else {
                "\n"
            };
            print!(
                "{start}stored {stored:>7} events, {rate:>9.0} events/s, lag {:>6} events",
                produced.saturating_sub(stored)
            );
            let _ = std::io::stdout().flush();
        }
        if stored == ORDERS {
            return Ok(());
        }
        if !page.made_progress() {
            // Caught up with the producer: poll again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
