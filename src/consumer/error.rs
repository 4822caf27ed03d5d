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
/// | [`is_cursor_expired`](Self::is_cursor_expired) | the feed no longer keeps the events after a stored cursor (`410 Gone`), named by [`partition`](Self::partition) | decide where the partition goes on: from `_first`, or from a cursor of your own, set in the store |
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
    CursorExpired {
        consumer: String,
        partition: Option<u32>,
        error: client::Error,
    },
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

    pub(crate) fn feed(consumer: &str, error: client::Error) -> Self {
        let kind = if error.is_cursor_expired() {
            Kind::CursorExpired {
                consumer: consumer.to_owned(),
                partition: error.cursor_partition(),
                error,
            }
        } else {
            Kind::Feed(error)
        };
        Error { kind }
    }

    /// Whether an event's data did not fit the consumer's type; the source
    /// is serde's error.
    pub fn is_poison(&self) -> bool {
        matches!(self.kind, Kind::Poison { .. })
    }

    /// Whether the feed refused the request or broke the protocol; the
    /// source is the client's error.
    pub fn is_feed(&self) -> bool {
        matches!(self.kind, Kind::Feed(_) | Kind::CursorExpired { .. })
    }

    /// Whether the feed no longer keeps the events after a stored cursor
    /// (`410 Gone`: the consumer fell behind its retention). The runtime
    /// never resets a cursor by itself: [`partition`](Self::partition)
    /// names the partition, and a person decides where it goes on (from
    /// `_first`, or from a cursor of their own, stored with the store's
    /// SQL).
    pub fn is_cursor_expired(&self) -> bool {
        matches!(self.kind, Kind::CursorExpired { .. })
    }

    /// The partition of the poison event, or of the expired cursor.
    pub fn partition(&self) -> Option<u32> {
        match &self.kind {
            Kind::Poison { partition, .. } => Some(*partition),
            Kind::CursorExpired { partition, .. } => *partition,
            Kind::Feed(_) => None,
        }
    }

    /// The cursor after which the poison event comes: reading its partition
    /// from there finds it first.
    pub fn after(&self) -> Option<&Cursor> {
        match &self.kind {
            Kind::Poison { after, .. } => Some(after),
            Kind::Feed(_) | Kind::CursorExpired { .. } => None,
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
            Kind::CursorExpired {
                consumer,
                partition,
                error,
            } => {
                write!(f, "consumer {consumer:?} stopped: its cursor")?;
                if let Some(partition) = partition {
                    write!(f, " of partition {partition}")?;
                }
                write!(
                    f,
                    " expired, the feed no longer keeps the events after it; the runtime resets \
                     no cursor by itself: {error}"
                )
            }
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
            Kind::Feed(error) | Kind::CursorExpired { error, .. } => Some(error),
        }
    }
}
