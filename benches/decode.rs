//! The line decoder: NDJSON pages of the standard workload read back into
//! events and checkpoints, with raw and typed data, with and without headers.

mod support;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use support::{Work, measure};
use zeroeventhub::protocol::{
    Checkpoint, Cursor, Event, FeedItem, HeaderSelection, LineDecoder, LineEncoder,
};
use zeroeventhub::workload;

const EVENTS: u64 = 200_000;
/// The size of the chunks the body arrives in, as a server's frames would.
const CHUNK: usize = 64 * 1024;

#[derive(Deserialize)]
#[allow(dead_code)] // read only to prove the data was parsed
struct PersonNameChanged {
    id: String,
    r#type: String,
    when: String,
    person_id: u64,
    new_name: Name,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Name {
    first_name: String,
    surname: String,
}

fn page(with_headers: bool) -> Bytes {
    let encoder = LineEncoder::new(HeaderSelection::All);
    let mut out = BytesMut::new();
    for index in 0..EVENTS {
        let mut event = Event::new(0, workload::event_data(0, index));
        if with_headers {
            event = event
                .with_header("content-type", "application/json")
                .with_header("trace-id", format!("{index:032x}"));
        }
        encoder.encode(&FeedItem::Event(event), &mut out);
        let cursor = Cursor::new(index.to_string()).expect("decimal cursor");
        encoder.encode(&FeedItem::Checkpoint(Checkpoint::new(0, cursor)), &mut out);
    }
    out.freeze()
}

/// Feeds `page` to a decoder in chunks and counts the events.
fn decode_all<D: serde::de::DeserializeOwned + 'static>(page: &Bytes) -> Work {
    let mut decoder: LineDecoder<D> = LineDecoder::new([0]);
    let mut buffer = BytesMut::with_capacity(2 * CHUNK);
    let mut events = 0;
    let mut count = |item: Result<FeedItem<D>, _>| {
        if let FeedItem::Event(_) = item.expect("the page is valid") {
            events += 1;
        }
    };
    for chunk in page.chunks(CHUNK) {
        buffer.extend_from_slice(chunk);
        while let Some(item) = decoder.decode(&mut buffer) {
            count(item);
        }
    }
    while let Some(item) = decoder.decode_eof(&mut buffer) {
        count(item);
    }
    assert_eq!(events, EVENTS, "every event decoded");
    Work {
        events,
        bytes: page.len() as u64,
    }
}

fn main() {
    println!("line decoder, standard workload, {EVENTS} events + checkpoints per run");
    let plain = page(false);
    measure("decode raw data (RawJson, zero-copy)", 7, || {
        decode_all::<zeroeventhub::protocol::RawJson>(&plain)
    });
    measure("decode typed data (a struct)", 7, || {
        decode_all::<PersonNameChanged>(&plain)
    });
    measure("decode to serde_json::Value", 7, || {
        decode_all::<serde_json::Value>(&plain)
    });
    let with_headers = page(true);
    measure("decode raw data, two headers", 7, || {
        decode_all::<zeroeventhub::protocol::RawJson>(&with_headers)
    });
}
