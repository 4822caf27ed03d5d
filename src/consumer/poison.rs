use crate::protocol::{Cursor, Event, Headers, RawJson};

/// What the runtime does with a *poison* event: one whose data the
/// consumer's type refuses (see [`Runtime::run_as`](super::Runtime::run_as)).
///
/// The feed is not broken and a retry would refuse it again, so only the
/// consumer can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoisonPolicy {
    /// Stop: the page rolls back and `run_as` returns an error for which
    /// [`is_poison`](super::Error::is_poison) holds. A restart meets the
    /// same event again, until the consumer's type or policy changes.
    #[default]
    Stop,
    /// Record the event as a [`DeadLetter`] in the page's transaction (the
    /// store's dead-letter table) and hand the handler the page's other
    /// events: the cursor moves past it.
    DeadLetter,
}

/// A poison event, as recorded under [`PoisonPolicy::DeadLetter`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The event's partition.
    pub partition: u32,
    /// The partition's cursor before the page that held the event: reading
    /// from it finds the event again.
    pub after: Cursor,
    /// The event's headers, as the feed sent them.
    pub headers: Headers,
    /// The event's data, as the feed sent it.
    pub data: RawJson,
    /// Why the consumer's type refused it (serde's message).
    pub error: String,
}

impl DeadLetter {
    /// The letter of `event`, read after `after`, refused with `error`.
    pub fn new(event: Event, after: Cursor, error: &serde_json::Error) -> Self {
        DeadLetter {
            partition: event.partition,
            after,
            headers: event.headers,
            data: event.data,
            error: error.to_string(),
        }
    }

    /// The headers as a JSON object, as the database stores keep them.
    pub fn headers_json(&self) -> String {
        serde_json::to_string(&self.headers).expect("a map of strings is JSON")
    }
}
