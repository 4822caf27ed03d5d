use std::error::Error as StdError;
use std::fmt;

use crate::client;
use crate::protocol::Cursor;

/// Why a runtime stopped before its shutdown signal.
///
/// Everything that may heal is retried forever (transport errors, the
/// handler's errors, the store's database, conflicts with another
/// instance); a runtime stops only on what a retry cannot change:
///
/// | predicate | what happened | what to do |
/// |---|---|---|
/// | [`is_poison`](Self::is_poison) | an event's data does not fit the consumer's type, under [`PoisonPolicy::Stop`](super::PoisonPolicy::Stop) | fix the type, or record such events with [`PoisonPolicy::DeadLetter`](super::PoisonPolicy::DeadLetter) |
/// | [`is_feed`](Self::is_feed) | the feed refused the request or broke the protocol (the source is the [`client::Error`]) | check the URL, partition count and cursors, or report it to the feed's owner |
pub struct Error {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Poison {
        partition: u32,
        after: Cursor,
        error: serde_json::Error,
    },
    Feed(client::Error),
}

impl Error {
    pub(crate) fn poison(partition: u32, after: Cursor, error: serde_json::Error) -> Self {
        Error {
            kind: Kind::Poison {
                partition,
                after,
                error,
            },
        }
    }

    pub(crate) fn feed(error: client::Error) -> Self {
        Error {
            kind: Kind::Feed(error),
        }
    }

    /// Whether an event's data did not fit the consumer's type; the source
    /// is serde's error.
    pub fn is_poison(&self) -> bool {
        matches!(self.kind, Kind::Poison { .. })
    }

    /// Whether the feed refused the request or broke the protocol; the
    /// source is the client's error.
    pub fn is_feed(&self) -> bool {
        matches!(self.kind, Kind::Feed(_))
    }

    /// The partition of the poison event.
    pub fn partition(&self) -> Option<u32> {
        match &self.kind {
            Kind::Poison { partition, .. } => Some(*partition),
            Kind::Feed(_) => None,
        }
    }

    /// The cursor after which the poison event comes: reading its partition
    /// from there finds it first.
    pub fn after(&self) -> Option<&Cursor> {
        match &self.kind {
            Kind::Poison { after, .. } => Some(after),
            Kind::Feed(_) => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Poison {
                partition,
                after,
                error,
            } => write!(
                f,
                "an event of partition {partition} (after cursor {after}) does not fit the \
                 consumer's type: {error}; nothing of its page was committed"
            ),
            Kind::Feed(error) => write!(f, "the consumer stopped: {error}"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::Poison { error, .. } => Some(error),
            Kind::Feed(error) => Some(error),
        }
    }
}
