//! What every outbox holds, whatever its database: the table's name and
//! partition count, and its database's statements with the name filled in.

use std::fmt;
use std::future::Future;

use tokio::sync::OnceCell;

use crate::server::ReadError;
use crate::table::TableName;

/// An outbox table and the statements `S` of its database.
pub(crate) struct OutboxTable<S> {
    name: TableName,
    partition_count: u32,
    /// The database's statements, with `{table}` filled in.
    pub(crate) sql: S,
}

impl<S> OutboxTable<S> {
    /// The table `name` of a feed of `partition_count` partitions, with the
    /// statements that `statements` makes from a template filler.
    ///
    /// # Panics
    ///
    /// If `partition_count` is 0: a feed has at least one partition.
    pub(crate) fn new(
        name: TableName,
        partition_count: u32,
        statements: impl FnOnce(&dyn Fn(&str) -> String) -> S,
    ) -> Self {
        assert!(partition_count > 0, "a feed has at least one partition");
        let fill = |template: &str| template.replace("{table}", name.as_str());
        OutboxTable {
            sql: statements(&fill),
            name,
            partition_count,
        }
    }

    /// The table's name.
    pub(crate) fn name(&self) -> &TableName {
        &self.name
    }

    /// The feed's partition count.
    pub(crate) fn partition_count(&self) -> u32 {
        self.partition_count
    }

    /// The `Debug` of an outbox type named `type_name` over this table.
    pub(crate) fn debug(&self, type_name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(type_name)
            .field("table", &self.name)
            .field("partition_count", &self.partition_count)
            .finish()
    }
}

/// The id of the feed of `table`, which its cursors carry: `load` reads it
/// (from the `{table}_feed` table that `migrate` made) the first time, and
/// `cell` keeps it.
pub(crate) async fn feed_id(
    cell: &OnceCell<u64>,
    table: &TableName,
    load: impl Future<Output = Result<i64, sqlx::Error>>,
) -> Result<u64, ReadError> {
    cell.get_or_try_init(|| async {
        match load.await {
            Ok(id) => Ok(id as u64),
            Err(error) => Err(ReadError::internal(format!(
                "the id of outbox {table} (its table {table}_feed, made by migrate): {error}"
            ))),
        }
    })
    .await
    .copied()
}
