//! The database test harness finds a PostgreSQL server and gives each test
//! a database of its own.

mod support;

use sqlx::{Connection, PgConnection, Row};
use support::database;

#[tokio::test]
async fn each_test_gets_its_own_empty_database() {
    let first = database::postgres().await;
    let second = database::postgres().await;
    assert_ne!(first.name, second.name);

    let mut connection = PgConnection::connect(&first.url).await.unwrap();
    let row = sqlx::query(
        "SELECT current_database(), count(*) FROM pg_tables WHERE schemaname = 'public'",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), first.name);
    assert_eq!(row.get::<i64, _>(1), 0);
}

#[test]
fn sqlite_files_are_fresh_and_distinct() {
    let first = database::sqlite_path("harness");
    let second = database::sqlite_path("harness");
    assert_ne!(first, second);
    assert!(!first.exists());
}
