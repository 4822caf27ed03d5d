//! The line encoder: events and checkpoints of the standard workload written
//! as NDJSON, with raw data, with headers, and from typed data.

mod support;

use bytes::BytesMut;
use serde::Serialize;
use support::{Work, measure};
use zeroeventhub::protocol::{
    Checkpoint, Cursor, Event, FeedItem, HeaderSelection, LineEncoder, RawJson,
};
use zeroeventhub::workload;

const EVENTS: u64 = 200_000;

#[derive(Serialize)]
struct PersonNameChanged<'a> {
    id: String,
    r#type: &'a str,
    when: &'a str,
    person_id: u64,
    new_name: Name<'a>,
}

#[derive(Serialize)]
struct Name<'a> {
    first_name: &'a str,
    surname: &'a str,
}

fn page(with_headers: bool) -> Vec<FeedItem> {
    (0..EVENTS)
        .flat_map(|index| {
            let mut event = Event::new(0, workload::event_data(0, index));
            if with_headers {
                event = event
                    .with_header("content-type", "application/json")
                    .with_header("trace-id", format!("{index:032x}"));
            }
            let cursor = Cursor::new(index.to_string()).expect("decimal cursor");
            [
                FeedItem::Event(event),
                FeedItem::Checkpoint(Checkpoint::new(0, cursor)),
            ]
        })
        .collect()
}

fn encode_all(encoder: &LineEncoder, items: &[FeedItem]) -> Work {
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut bytes = 0;
    for item in items {
        encoder.encode(item, &mut out);
        if out.len() >= 64 * 1024 {
            bytes += out.len() as u64;
            out.clear();
        }
    }
    bytes += out.len() as u64;
    Work {
        events: EVENTS,
        bytes,
    }
}

fn main() {
    println!("line encoder, standard workload, {EVENTS} events + checkpoints per run");
    let plain = page(false);
    measure("encode raw data", 7, || {
        encode_all(&LineEncoder::new(HeaderSelection::None), &plain)
    });
    let with_headers = page(true);
    measure("encode raw data, headers=_all", 7, || {
        encode_all(&LineEncoder::new(HeaderSelection::All), &with_headers)
    });
    measure("encode typed data (serialize, then encode)", 7, || {
        let encoder = LineEncoder::new(HeaderSelection::None);
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut bytes = 0;
        for index in 0..EVENTS {
            let data = PersonNameChanged {
                id: format!("00000000-0000-4000-8000-{index:012x}"),
                r#type: "PersonNameChanged",
                when: "2023-09-26T11:23:30.472906Z",
                person_id: index,
                new_name: Name {
                    first_name: "Fred",
                    surname: "Bloggs",
                },
            };
            let event = Event::new(0, RawJson::from_serialize(&data).expect("serializable"));
            encoder.encode(&FeedItem::Event(event), &mut out);
            bytes += out.len() as u64;
            out.clear();
        }
        Work {
            events: EVENTS,
            bytes,
        }
    });
}
