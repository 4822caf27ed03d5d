use bytes::{BufMut, BytesMut};

use super::json::write_json_string;
use super::{FeedItem, HeaderSelection};

/// Writes events and checkpoints as NDJSON lines.
///
/// Event data is copied as it is ([`RawJson`](super::RawJson) is already
/// line-safe); header names and values and cursors are escaped as JSON
/// strings, with U+2028, U+2029 and U+0085 escaped too. Only the headers the
/// consumer selected are written, and `headers` is left out when none are.
///
/// ```
/// use bytes::BytesMut;
/// use zeroeventhub::protocol::{Checkpoint, Cursor, Event, FeedItem, HeaderSelection, LineEncoder, RawJson};
///
/// let encoder = LineEncoder::new(HeaderSelection::All);
/// let mut out = BytesMut::new();
/// let event = Event::new(0, RawJson::from_bytes(r#"{"id":1}"#)?).with_header("k", "v");
/// encoder.encode(&FeedItem::Event(event), &mut out);
/// encoder.encode(&FeedItem::Checkpoint(Checkpoint::new(0, Cursor::new("1")?)), &mut out);
/// assert_eq!(
///     &out[..],
///     b"{\"partition\":0,\"headers\":{\"k\":\"v\"},\"data\":{\"id\":1}}\n{\"partition\":0,\"cursor\":\"1\"}\n"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct LineEncoder {
    headers: HeaderSelection,
}

impl LineEncoder {
    /// An encoder that writes the selected headers of each event.
    pub fn new(headers: HeaderSelection) -> Self {
        LineEncoder { headers }
    }

    /// Appends `item` as one line, with its `\n`, to `out`.
    pub fn encode(&self, item: &FeedItem, out: &mut BytesMut) {
        let mut digits = itoa::Buffer::new();
        match item {
            FeedItem::Event(event) => {
                out.reserve(event.data.as_bytes().len() + 40);
                out.put_slice(b"{\"partition\":");
                out.put_slice(digits.format(event.partition).as_bytes());
                if !self.headers.is_none() {
                    let mut wrote_any = false;
                    for (name, value) in &event.headers {
                        if !self.headers.includes(name) {
                            continue;
                        }
                        out.put_slice(if wrote_any { b"," } else { b",\"headers\":{" });
                        wrote_any = true;
                        write_json_string(out, name);
                        out.put_u8(b':');
                        write_json_string(out, value);
                    }
                    if wrote_any {
                        out.put_u8(b'}');
                    }
                }
                out.put_slice(b",\"data\":");
                out.put_slice(event.data.as_bytes());
                out.put_slice(b"}\n");
            }
            FeedItem::Checkpoint(checkpoint) => {
                out.reserve(checkpoint.cursor.as_str().len() + 40);
                out.put_slice(b"{\"partition\":");
                out.put_slice(digits.format(checkpoint.partition).as_bytes());
                out.put_slice(b",\"cursor\":");
                write_json_string(out, checkpoint.cursor.as_str());
                out.put_slice(b"}\n");
            }
        }
    }
}
