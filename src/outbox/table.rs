//! What every outbox holds, whatever its database: the table's name and
//! partition count, and its database's statements with the name filled in.

use std::fmt;

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
