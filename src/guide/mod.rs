//! Guides: serving a feed, consuming one, and what it costs.
//!
//! Each page is a module with documentation only; its examples are compiled
//! with the doc tests. The pages, in reading order:
//!
//! - [`serving`]: a feed as a tower service, mounted on axum, under
//!   tower-http's layers.
//! - [`connections`]: the limits [`Server`](crate::server::Server) puts on
//!   the connections a client holds without using them.
//! - [`tonic`]: the feed beside gRPC services, on one tonic server.
//! - [`databases`]: an outbox table of your database, written in your own
//!   transactions and served as the feed, on SQLite or PostgreSQL.
//! - [`runtime`]: consuming with [`consumer::Runtime`](crate::consumer::Runtime),
//!   your effects and the cursors in one transaction.
//! - [`by_hand`]: the same loop with the client alone, its pages and errors.
//! - [`long_polling`]: how a caught-up consumer waits, on both sides.
//! - [`operating`]: what holds a database feed back and how to find it,
//!   restores, retention, and what to watch.
//! - [`tail`]: looking at a feed with the `tail` example.
//! - [`performance`]: the benchmarks and their figures.
//! - [`layout`]: where each part lives in the repository.

pub mod serving {
    #![doc = include_str!("serving.md")]
}

pub mod connections {
    #![doc = include_str!("connections.md")]
}

pub mod tonic {
    #![doc = include_str!("tonic.md")]
}

pub mod databases {
    #![doc = include_str!("databases.md")]
}

pub mod runtime {
    #![doc = include_str!("runtime.md")]
}

pub mod by_hand {
    #![doc = include_str!("by_hand.md")]
}

pub mod long_polling {
    #![doc = include_str!("long_polling.md")]
}

pub mod operating {
    #![doc = include_str!("operating.md")]
}

pub mod tail {
    #![doc = include_str!("tail.md")]
}

pub mod performance {
    #![doc = include_str!("performance.md")]
}

pub mod layout {
    #![doc = include_str!("layout.md")]
}
