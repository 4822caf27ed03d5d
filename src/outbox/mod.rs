#![doc = include_str!("outbox.md")]

pub(crate) mod cursor;
mod error;
pub(crate) mod event;
pub(crate) mod page;
pub(crate) mod wait;

pub use crate::table::{InvalidTableName, TableName};
pub use error::OutboxError;
pub use event::{OutboxEvent, partition_for_key};
pub use page::OutboxPage;
