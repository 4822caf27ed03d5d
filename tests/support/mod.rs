//! What the server tests share: readers made for testing, and the two ways
//! of sending a request to a feed service (in-process and over loopback HTTP).

// Each test binary compiles this module and uses only its own part of it.
#![allow(dead_code, unused_imports)]

pub(crate) mod auth;
pub(crate) mod database;
pub(crate) mod examples;
pub(crate) mod faults;
pub(crate) mod logs;
#[cfg(all(
    feature = "hyper-client",
    any(feature = "postgres", feature = "sqlite")
))]
pub(crate) mod outbox;
#[cfg(all(
    feature = "hyper-client",
    any(feature = "postgres", feature = "sqlite")
))]
pub(crate) mod outbox_suite;
pub(crate) mod readers;
pub(crate) mod transport;
#[cfg(feature = "client")]
pub(crate) mod workload;
