//! The data the interoperability tests serve, and the checks of a page
//! against it: the same model whichever side serves or reads.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use zeroeventhub::protocol::{Event, FeedItem, HeaderSelection, RawJson};
use zeroeventhub::server::MemoryFeed;
use zeroeventhub::workload;

use super::interop_dir;

/// An event's headers, as both sides report them.
pub(crate) type Headers = BTreeMap<String, String>;

/// One line of a page as a client received it, in a form both clients'
/// output converts to: headers absent or `null` are empty, data is parsed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Received {
    /// An event.
    Event {
        /// Its partition.
        partition: u32,
        /// Its headers (those the request selected).
        #[serde(deserialize_with = "null_as_empty")]
        headers: Headers,
        /// Its data.
        data: Value,
    },
    /// A checkpoint.
    Checkpoint {
        /// Its partition.
        partition: u32,
        /// Where to resume that partition.
        cursor: String,
    },
}

fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Headers, D::Error> {
    Ok(Option::<Headers>::deserialize(deserializer)?.unwrap_or_default())
}

impl From<FeedItem> for Received {
    fn from(item: FeedItem) -> Self {
        match item {
            FeedItem::Event(event) => Received::Event {
                partition: event.partition,
                headers: event.headers,
                data: event
                    .data
                    .deserialize()
                    .expect("event data our client accepted is JSON"),
            },
            FeedItem::Checkpoint(checkpoint) => Received::Checkpoint {
                partition: checkpoint.partition,
                cursor: checkpoint.cursor.as_str().to_owned(),
            },
        }
    }
}

/// One stored event of the model.
#[derive(Debug, Clone)]
pub(crate) struct ModelEvent {
    /// All of its headers.
    pub(crate) headers: Headers,
    /// Its data.
    pub(crate) data: Value,
}

/// The events of every partition of a feed, and how its cursors are spelled:
/// the event at index `i` of a partition has the cursor `cursor_prefix` and
/// `i` in decimal, and reading from it continues at `i + 1`.
#[derive(Debug, Clone)]
pub(crate) struct FeedModel {
    /// The events of each partition.
    pub(crate) partitions: Vec<Vec<ModelEvent>>,
    /// What comes before the index in a cursor.
    pub(crate) cursor_prefix: String,
}

/// The headers of the event at `index` of `partition` in the standard
/// workload as the interop tests serve it: two of every three events carry
/// headers. `reference_server.py` has the same rule; keep the two in step.
pub(crate) fn standard_headers(partition: u32, index: usize) -> Headers {
    if index % 3 == 2 {
        return Headers::new();
    }
    Headers::from([
        ("tenant".to_owned(), "acme".to_owned()),
        ("trace".to_owned(), format!("{partition}-{index}")),
    ])
}

impl FeedModel {
    /// The standard workload over 2 partitions, `events` in each, with the
    /// headers of [`standard_headers`].
    pub(crate) fn standard(events: usize) -> Self {
        let partitions = (0..2)
            .map(|partition| {
                (0..events)
                    .map(|index| ModelEvent {
                        headers: standard_headers(partition, index),
                        data: workload::event_data(partition, index as u64)
                            .deserialize()
                            .expect("the standard workload is JSON"),
                    })
                    .collect()
            })
            .collect();
        FeedModel {
            partitions,
            cursor_prefix: String::new(),
        }
    }

    /// The edge data set of `tests/interop/edge_events.json`.
    pub(crate) fn edge() -> Self {
        let path = interop_dir().join("edge_events.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        let spec: EdgeSpec = serde_json::from_str(&text).expect("edge_events.json is valid");
        let mut partitions = vec![Vec::new(); spec.partitions];
        for event in spec.events {
            partitions[event.partition].push(ModelEvent {
                headers: event.headers,
                data: event.data,
            });
        }
        let large = spec.large_event;
        let blob = large.blob_unit.repeat(large.blob_units);
        partitions[large.partition].push(ModelEvent {
            headers: large.headers,
            data: serde_json::json!({"kind": "large", "blob": blob}),
        });
        FeedModel {
            partitions,
            cursor_prefix: spec.cursor_prefix,
        }
    }

    /// The number of partitions.
    pub(crate) fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// What a page read from `_last` in every partition holds when nothing
    /// was appended since: one checkpoint at each partition's end.
    pub(crate) fn checkpoints_at_the_end(&self) -> Vec<Received> {
        self.partitions
            .iter()
            .enumerate()
            .map(|(partition, events)| Received::Checkpoint {
                partition: partition as u32,
                cursor: self.cursor_of(events.len() - 1),
            })
            .collect()
    }

    /// How many events, in all partitions, carry headers.
    pub(crate) fn events_with_headers(&self) -> usize {
        self.partitions
            .iter()
            .flatten()
            .filter(|event| !event.headers.is_empty())
            .count()
    }

    /// The number of events in all partitions.
    pub(crate) fn len(&self) -> usize {
        self.partitions.iter().map(Vec::len).sum()
    }

    /// The cursor of the checkpoint after the event at `index`.
    pub(crate) fn cursor_of(&self, index: usize) -> String {
        format!("{}{index}", self.cursor_prefix)
    }

    /// The index a cursor of this feed names.
    fn index_of(&self, cursor: &str) -> Option<usize> {
        cursor.strip_prefix(&self.cursor_prefix)?.parse().ok()
    }

    /// A [`MemoryFeed`] holding the model's events. Its own cursors are the
    /// plain indices, so this is for models without a cursor prefix.
    pub(crate) fn memory_feed(&self) -> MemoryFeed {
        let feed = MemoryFeed::new(self.partition_count());
        for (partition, events) in self.partitions.iter().enumerate() {
            for event in events {
                let mut stored = Event::new(
                    partition as u32,
                    RawJson::from_serialize(&event.data).expect("model data serializes"),
                );
                stored.headers = event.headers.clone();
                feed.append(stored).expect("the partition exists");
            }
        }
        feed
    }

    /// The line a client should receive for the event at `index` of
    /// `partition`, given the headers the request selected.
    pub(crate) fn expected_event(
        &self,
        partition: u32,
        index: usize,
        selection: &HeaderSelection,
    ) -> Received {
        let event = &self.partitions[partition as usize][index];
        Received::Event {
            partition,
            headers: event
                .headers
                .iter()
                .filter(|(name, _)| selection.includes(name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            data: event.data.clone(),
        }
    }

    /// Checks, field by field, a page read from this feed with `cursors`,
    /// `hint` and `selection`, and returns what it read and where the next
    /// page starts.
    ///
    /// The page must hold, for each requested partition, consecutive events
    /// from the cursor on, each followed by its checkpoint (for `_last`, one
    /// checkpoint at the partition's end and no events); no other partition;
    /// at most `hint` events.
    pub(crate) fn check_page(
        &self,
        cursors: &[(u32, String)],
        hint: Option<u32>,
        selection: &HeaderSelection,
        items: &[Received],
    ) -> PageSummary {
        struct Position {
            next: usize,
            at_last: bool,
            awaiting_checkpoint: Option<usize>,
            cursor: String,
        }
        let mut positions: HashMap<u32, Position> = cursors
            .iter()
            .map(|(partition, cursor)| {
                let next = match cursor.as_str() {
                    "_first" | "_last" => 0,
                    cursor => self
                        .index_of(cursor)
                        .map(|index| index + 1)
                        .unwrap_or_else(|| panic!("{cursor:?} is not a cursor of this feed")),
                };
                let position = Position {
                    next,
                    at_last: cursor == "_last",
                    awaiting_checkpoint: None,
                    cursor: cursor.clone(),
                };
                (*partition, position)
            })
            .collect();
        let mut events = 0;
        let mut events_with_headers = 0;
        for (line, item) in items.iter().enumerate() {
            let partition = match item {
                Received::Event { partition, .. } | Received::Checkpoint { partition, .. } => {
                    *partition
                }
            };
            let len = self.partitions[partition as usize].len();
            let position = positions
                .get_mut(&partition)
                .unwrap_or_else(|| panic!("line {line}: partition {partition} was not asked for"));
            match item {
                Received::Event { .. } => {
                    assert!(
                        !position.at_last,
                        "line {line}: an event after `_last` on a feed that got no new ones"
                    );
                    assert_eq!(
                        position.awaiting_checkpoint, None,
                        "line {line}: two events of partition {partition} without a checkpoint between"
                    );
                    assert!(
                        position.next < len,
                        "line {line}: partition {partition} has only {len} events"
                    );
                    assert_eq!(
                        item,
                        &self.expected_event(partition, position.next, selection),
                        "line {line}: event {} of partition {partition}",
                        position.next
                    );
                    position.awaiting_checkpoint = Some(position.next);
                    position.next += 1;
                    events += 1;
                    if matches!(item, Received::Event { headers, .. } if !headers.is_empty()) {
                        events_with_headers += 1;
                    }
                }
                Received::Checkpoint { cursor, .. } => {
                    let expected = match position.awaiting_checkpoint.take() {
                        Some(index) => self.cursor_of(index),
                        None if position.at_last && position.cursor == "_last" => {
                            self.cursor_of(len - 1)
                        }
                        None => panic!("line {line}: a checkpoint with no event before it"),
                    };
                    assert_eq!(cursor, &expected, "line {line}: checkpoint of {partition}");
                    position.cursor = cursor.clone();
                }
            }
        }
        for (partition, position) in &positions {
            assert_eq!(
                position.awaiting_checkpoint, None,
                "the page ends with an event of partition {partition} without its checkpoint"
            );
        }
        if let Some(hint) = hint {
            assert!(
                events <= hint as usize,
                "{events} events for a page size hint of {hint}"
            );
        }
        let mut next_cursors: Vec<(u32, String)> = positions
            .into_iter()
            .map(|(partition, position)| (partition, position.cursor))
            .collect();
        next_cursors.sort();
        PageSummary {
            events_with_headers,
            events,
            cursors: next_cursors,
        }
    }
}

/// What a checked page held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageSummary {
    /// How many events.
    pub(crate) events: usize,
    /// How many of them came with headers.
    pub(crate) events_with_headers: usize,
    /// Where each requested partition resumes: its last checkpoint, or the
    /// cursor it was read from when the page had none for it.
    pub(crate) cursors: Vec<(u32, String)>,
}

#[derive(Deserialize)]
struct EdgeSpec {
    partitions: usize,
    cursor_prefix: String,
    large_event: LargeEventSpec,
    events: Vec<EdgeEventSpec>,
}

#[derive(Deserialize)]
struct LargeEventSpec {
    partition: usize,
    headers: Headers,
    blob_unit: String,
    blob_units: usize,
}

#[derive(Deserialize)]
struct EdgeEventSpec {
    partition: usize,
    headers: Headers,
    data: Value,
}
