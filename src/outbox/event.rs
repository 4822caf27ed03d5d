use crate::protocol::{Event, Headers, MAX_LINE_BYTES, RawJson};
use crate::server::{ReadError, UnknownPartition};

/// An event to append to an outbox table: its data, its headers, and the
/// partition it goes to, named or chosen from a key.
///
/// ```
/// use zeroeventhub::protocol::RawJson;
/// use zeroeventhub::server::{OutboxEvent, partition_for_key};
///
/// let data = RawJson::from_bytes(r#"{"order":"A-17","status":"paid"}"#)?;
/// // Every event of order A-17 lands in the same partition, in order.
/// let event = OutboxEvent::keyed("A-17", data).with_header("type", "OrderPaid");
/// assert_eq!(event.partition(4), partition_for_key("A-17", 4));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    target: Target,
    headers: Headers,
    data: RawJson,
}

#[derive(Debug, Clone, PartialEq)]
enum Target {
    Partition(u32),
    /// The key's hash, kept so that the partition follows the feed's count.
    Key(u64),
}

impl OutboxEvent {
    /// An event for `partition`.
    pub fn in_partition(partition: u32, data: RawJson) -> Self {
        OutboxEvent {
            target: Target::Partition(partition),
            headers: Headers::new(),
            data,
        }
    }

    /// An event for the partition of `key` ([`partition_for_key`]): events
    /// with the same key stay in one partition, so keep their order.
    pub fn keyed(key: impl AsRef<str>, data: RawJson) -> Self {
        OutboxEvent {
            target: Target::Key(key_hash(key.as_ref())),
            headers: Headers::new(),
            data,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The partition of this event in a feed of `partition_count`
    /// partitions (which may be beyond it, for an explicit partition).
    pub fn partition(&self, partition_count: u32) -> u32 {
        match self.target {
            Target::Partition(partition) => partition,
            Target::Key(hash) => (hash % u64::from(partition_count.max(1))) as u32,
        }
    }

    /// The partition in a feed of `partition_count` partitions, if the feed
    /// has it.
    pub(crate) fn checked_partition(&self, partition_count: u32) -> Result<u32, UnknownPartition> {
        let partition = self.partition(partition_count);
        if partition < partition_count {
            Ok(partition)
        } else {
            Err(UnknownPartition {
                partition,
                partition_count,
            })
        }
    }

    /// The event's headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The event's data.
    pub fn data(&self) -> &RawJson {
        &self.data
    }

    /// The headers as stored: a JSON object, or `NULL` for none.
    /// The event's partition and headers as the writers store them, once
    /// it is known that a consumer can read it: its partition exists, and
    /// the longest line it can be served as (with every header) is within
    /// the protocol's limit.
    pub(crate) fn checked(
        &self,
        partition_count: u32,
    ) -> Result<(u32, Option<String>), super::OutboxError> {
        let partition = self.checked_partition(partition_count)?;
        let headers = self.headers_json();
        // `{"partition":P,"headers":H,"data":D}`, with P at most 10 digits.
        let bytes = r#"{"partition":,"headers":,"data":}"#.len()
            + 10
            + headers.as_ref().map_or(0, String::len)
            + self.data().as_str().len();
        if bytes > MAX_LINE_BYTES {
            return Err(super::OutboxError::EventTooLarge {
                bytes,
                limit: MAX_LINE_BYTES,
            });
        }
        Ok((partition, headers))
    }

    pub(crate) fn headers_json(&self) -> Option<String> {
        (!self.headers.is_empty())
            .then(|| serde_json::to_string(&self.headers).expect("string maps serialize"))
    }
}

impl From<Event> for OutboxEvent {
    fn from(event: Event) -> Self {
        OutboxEvent {
            target: Target::Partition(event.partition),
            headers: event.headers,
            data: event.data,
        }
    }
}

/// The partition of `key` in a feed of `partition_count` partitions: the
/// 64-bit FNV-1a hash of the key's UTF-8 bytes, modulo the count.
///
/// The hash is part of the format: it never changes between versions, and
/// publishers in other languages can compute it (offset basis
/// `0xcbf29ce484222325`, prime `0x100000001b3`). Changing the partition count
/// moves keys between partitions.
pub fn partition_for_key(key: &str, partition_count: u32) -> u32 {
    (key_hash(key) % u64::from(partition_count.max(1))) as u32
}

/// Refuses to read a partition the feed lacks (a service configured with
/// more partitions than the outbox has): the publisher's error, not the
/// consumer's.
pub(crate) fn check_partition(partition: u32, partition_count: u32) -> Result<(), ReadError> {
    if partition < partition_count {
        Ok(())
    } else {
        Err(ReadError::internal(UnknownPartition {
            partition,
            partition_count,
        }))
    }
}

fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hash_is_fnv_1a() {
        // Reference values of the 64-bit FNV-1a hash.
        assert_eq!(key_hash(""), 0xcbf29ce484222325);
        assert_eq!(key_hash("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(key_hash("foobar"), 0x85944171f73967e8);
        assert_eq!(
            partition_for_key("foobar", 7),
            (0x85944171f73967e8u64 % 7) as u32
        );
    }
}
