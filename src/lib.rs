//! placeholder
#![doc = "x"]

pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "client")]
pub mod client;
