//! The protocol's standard workload: the data every benchmark and interop
//! test uses, so that figures compare across implementations.
//!
//! Each event's data is a `PersonNameChanged` record of about 170 bytes with
//! a unique 36-character id; a checkpoint follows every event, its cursor the
//! event's index in the partition; no headers.

use crate::protocol::RawJson;

/// The data of the event at `index` of `partition`.
pub fn event_data(partition: u32, index: u64) -> RawJson {
    let text = format!(
        concat!(
            r#"{{"id":"{:08x}-0000-4000-8000-{:012x}","type":"PersonNameChanged","#,
            r#""when":"2023-09-26T11:23:30.472906Z","person_id":{},"#,
            r#""new_name":{{"first_name":"Fred","surname":"Bloggs"}}}}"#
        ),
        partition, index, index
    );
    RawJson::from_bytes(text).expect("the standard workload is valid JSON")
}

/// Appends `events_per_partition` standard events to every partition of
/// `feed`, continuing each partition's numbering.
#[cfg(feature = "server")]
pub fn fill(feed: &crate::server::MemoryFeed, events_per_partition: u64) {
    use crate::protocol::Event;
    for partition in 0..feed.partition_count() {
        let start = feed.len(partition) as u64;
        for index in start..start + events_per_partition {
            feed.append(Event::new(partition, event_data(partition, index)))
                .expect("the partition exists");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_36_characters_and_unique() {
        let a: serde_json::Value = super::event_data(1, 7).deserialize().unwrap();
        let b: serde_json::Value = super::event_data(0, 7).deserialize().unwrap();
        assert_eq!(a["id"].as_str().unwrap().len(), 36);
        assert_ne!(a["id"], b["id"]);
        assert_eq!(a["person_id"], 7);
    }
}
