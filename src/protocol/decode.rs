use std::any::{Any, TypeId};
use std::collections::btree_map::Entry;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use bytes::{Buf, BytesMut};
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

mod validate;

use super::{Checkpoint, Cursor, Event, FeedItem, FeedRequest, Headers, InvalidCursor, RawJson};

/// Reads NDJSON lines of a feed page into events and checkpoints.
///
/// The decoder is pure: the caller appends the body's bytes to a
/// [`BytesMut`] as they arrive and calls [`decode`](Self::decode) until it
/// returns `None`, then [`decode_eof`](Self::decode_eof) once the body has
/// ended cleanly. It follows the protocol's client rules:
///
/// - lines are split on the byte `\n`, one trailing `\r` is stripped, and
///   empty or whitespace-only lines are skipped;
/// - a line must be UTF-8 and at most [`max_line_length`](Self::max_line_length)
///   bytes long (without its line break); a longer line is an error as soon
///   as the buffer holds more than that without a `\n`, so the buffer never
///   grows far past the limit;
/// - an object whose `cursor` is a string is a checkpoint, one with `data` is
///   an event (`"data":null` included); `partition` must be a non-negative
///   integer among the requested partitions;
/// - other objects are skipped (messages of newer protocol versions);
///   anything else is an error naming the line number.
///
/// Beyond the protocol's letter, a line with a `cursor` that is not a valid
/// [`Cursor`] (empty, say) or with both `data` and `cursor` is an error: a
/// checkpoint nobody can resume from must not be dropped silently.
/// `"cursor":null` counts as no cursor, as the reference clients read it.
///
/// Event data is `D`: with the default [`RawJson`] it is a slice of the
/// line's bytes (no copy, no parse beyond finding its end); any other
/// [`DeserializeOwned`] type is deserialized from the data's text.
///
/// After an error the decoder's state is unspecified: a page with an
/// invalid line is unusable, and the consumer resumes from its last stored
/// cursors. One error is not the feed's: event data that does not
/// deserialize into `D` ([`DecodeErrorKind::InvalidData`]), whose line is
/// taken and the decoding goes on with the next. A header name given twice
/// in an event is an error, as a protocol key given twice is.
///
/// ```
/// use bytes::BytesMut;
/// use zeroeventhub::protocol::{FeedItem, LineDecoder};
///
/// let mut decoder: LineDecoder = LineDecoder::new([0]);
/// let mut buf = BytesMut::from(&b"{\"partition\":0,\"data\":{\"id\":1}}\r\n\n{\"partition\":0,\"cur"[..]);
/// let Some(Ok(FeedItem::Event(event))) = decoder.decode(&mut buf) else { panic!() };
/// assert_eq!(event.data.as_str(), r#"{"id":1}"#);
/// assert!(decoder.decode(&mut buf).is_none()); // the rest of the line is still to come
///
/// buf.extend_from_slice(b"sor\":\"1\"}");
/// let Some(Ok(FeedItem::Checkpoint(checkpoint))) = decoder.decode_eof(&mut buf) else { panic!() };
/// assert_eq!(checkpoint.cursor.as_str(), "1");
/// assert!(decoder.decode_eof(&mut buf).is_none());
/// ```
pub struct LineDecoder<D = RawJson> {
    /// The requested partitions, sorted and unique.
    partitions: Vec<u32>,
    max_line_length: usize,
    /// Lines taken from the buffer so far.
    lines: u64,
    /// How many bytes at the start of the buffer are known to hold no `\n`.
    scanned: usize,
    data: PhantomData<fn() -> D>,
}

impl<D> LineDecoder<D> {
    /// The default maximum line length: 4 MiB.
    pub const DEFAULT_MAX_LINE_LENGTH: usize = super::MAX_LINE_BYTES;

    /// A decoder for a page of the given partitions; lines of any other
    /// partition are errors.
    pub fn new(partitions: impl IntoIterator<Item = u32>) -> Self {
        let mut partitions: Vec<u32> = partitions.into_iter().collect();
        partitions.sort_unstable();
        partitions.dedup();
        LineDecoder {
            partitions,
            max_line_length: Self::DEFAULT_MAX_LINE_LENGTH,
            lines: 0,
            scanned: 0,
            data: PhantomData,
        }
    }

    /// A decoder for the answer to `request`: its partitions are the
    /// requested ones.
    pub fn for_request(request: &FeedRequest) -> Self {
        Self::new(request.cursors().iter().map(|(partition, _)| *partition))
    }

    /// Sets the longest line accepted, in bytes, without its line break.
    pub fn with_max_line_length(mut self, max: usize) -> Self {
        self.max_line_length = max;
        self
    }

    /// The longest line accepted, in bytes, without its line break.
    pub fn max_line_length(&self) -> usize {
        self.max_line_length
    }

    /// How many lines were taken from the buffer so far, skipped ones
    /// included.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The requested partitions, sorted and unique.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }
}

impl<D: DeserializeOwned + 'static> LineDecoder<D> {
    /// Takes complete lines from the front of `buf` and returns the first
    /// event or checkpoint among them, or `None` when `buf` holds no more
    /// complete line (the rest stays in `buf` for the next call).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Result<FeedItem<D>, DecodeError>> {
        loop {
            // A caller that emptied the buffer between calls shortens it.
            self.scanned = self.scanned.min(buf.len());
            let Some(found) = memchr::memchr(b'\n', &buf[self.scanned..]) else {
                self.scanned = buf.len();
                // One byte of slack for a `\r` that the `\n` may yet follow.
                if buf.len() > self.max_line_length.saturating_add(1) {
                    return Some(Err(self.too_long(self.lines + 1)));
                }
                return None;
            };
            let end = self.scanned + found;
            self.scanned = 0;
            if let Some(item) = self.take_line(buf, end, end + 1) {
                return Some(item);
            }
        }
    }

    /// Like [`decode`](Self::decode), for when the body has ended cleanly:
    /// what remains after the last `\n` is taken as a final line. Call it
    /// until it returns `None`.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Option<Result<FeedItem<D>, DecodeError>> {
        if let Some(item) = self.decode(buf) {
            return Some(item);
        }
        if buf.is_empty() {
            return None;
        }
        self.scanned = 0;
        let end = buf.len();
        self.take_line(buf, end, end)
    }

    /// Numbers and parses the line that ends at `end` in `buf` (without
    /// its `\n`), then takes its `consumed` bytes out of `buf`; `None` when
    /// the line is skipped.
    ///
    /// The line is parsed in place; only raw event data is split off as
    /// shared bytes, so other lines cost no reference counting.
    fn take_line(
        &mut self,
        buf: &mut BytesMut,
        end: usize,
        consumed: usize,
    ) -> Option<Result<FeedItem<D>, DecodeError>> {
        self.lines += 1;
        let content = match buf[..end].last() {
            Some(b'\r') => end - 1,
            _ => end,
        };
        let parsed = if content > self.max_line_length {
            Err(self.too_long(self.lines))
        } else {
            self.parse(&buf[..content])
                .map_err(|(kind, detail)| DecodeError::with_detail(self.lines, kind, detail))
        };
        let item = match parsed {
            Ok(Some(Line::Raw {
                partition,
                headers,
                span,
                line_safe,
            })) => {
                let mut data = buf.split_to(consumed);
                data.advance(span.start);
                data.truncate(span.len());
                let data = data.freeze();
                let data = raw_as::<D>(if line_safe {
                    RawJson::from_line_safe(data)
                } else {
                    RawJson::from_valid(data)
                });
                return Some(Ok(FeedItem::Event(Event {
                    partition,
                    headers,
                    data,
                })));
            }
            Ok(Some(Line::Item(item))) => Some(Ok(item)),
            Ok(None) => None,
            Err(error) => Some(Err(error)),
        };
        buf.advance(consumed);
        item
    }

    fn too_long(&self, line: u64) -> DecodeError {
        DecodeError::new(
            line,
            DecodeErrorKind::LineTooLong {
                limit: self.max_line_length,
            },
        )
    }

    /// Parses a line (without its line break); `None` when it is blank.
    fn parse(&self, line: &[u8]) -> Result<Option<Line<D>>, Failure> {
        match self.parse_common(line) {
            Some(parsed) => parsed.map(Some),
            None => self.parse_general(line),
        }
    }

    /// Parses the two shapes nearly every line has, as this crate and the
    /// reference servers write them: `{"partition":P,"cursor":"C"}` with `C`
    /// printable ASCII and no escape, and `{"partition":P,"data":D}`.
    /// `None` when the line has another shape, for
    /// [`parse_general`](Self::parse_general); the outcome is the same as
    /// the general path's.
    ///
    /// The line is not yet known to be UTF-8: the rest of each shape is
    /// ASCII, so checking `C` or `D` is enough, and for `D` the validator
    /// does it in the pass it makes anyway.
    fn parse_common(&self, line: &[u8]) -> Option<Result<Line<D>, Failure>> {
        let rest = line.strip_prefix(b"{\"partition\":")?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 10 || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        // At most ten digits: no overflow in a u64.
        let partition = rest[..digits]
            .iter()
            .fold(0, |value: u64, digit| value * 10 + u64::from(digit - b'0'));
        let partition = u32::try_from(partition).ok()?;
        let rest = &rest[digits..];
        if let Some(cursor) = rest.strip_prefix(b",\"cursor\":\"") {
            let cursor = cursor.strip_suffix(b"\"}")?;
            // Only printable ASCII, what a valid cursor is: anything else is
            // an error or needs unescaping, which the general path does.
            if cursor
                .iter()
                .any(|&byte| !(b' '..=b'~').contains(&byte) || byte == b'"' || byte == b'\\')
            {
                return None;
            }
            // ASCII, so one chunk of valid text: cheaper than
            // `str::from_utf8`, which is tuned for longer text.
            let cursor = cursor
                .utf8_chunks()
                .next()
                .map_or("", |chunk| chunk.valid());
            return Some((|| {
                let cursor = Cursor::new(cursor)
                    .map_err(|reason| (DecodeErrorKind::InvalidCursor(reason), None))?;
                let partition = self.check_partition(partition)?;
                Ok(Line::Item(FeedItem::Checkpoint(Checkpoint {
                    partition,
                    cursor,
                })))
            })());
        }
        let data = rest.strip_prefix(b",\"data\":")?.strip_suffix(b"}")?;
        let end = data
            .iter()
            .rposition(|byte| !matches!(byte, b' ' | b'\t' | b'\r' | b'\n'))?;
        let data = &data[..=end];
        if data[0].is_ascii_whitespace() {
            return None;
        }
        // Valid as one value: then the line is exactly this event, and the
        // general path would find the same.
        let valid = validate::check(data)?;
        Some(self.check_partition(partition).and_then(|partition| {
            event(
                partition,
                Headers::new(),
                line,
                data,
                valid == validate::Valid::LineSafe,
            )
        }))
    }

    /// Parses any line, with serde; `None` when it is blank.
    fn parse_general(&self, line: &[u8]) -> Result<Option<Line<D>>, Failure> {
        let Some(first) = line.iter().position(|b| !b.is_ascii_whitespace()) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(line).map_err(|_| (DecodeErrorKind::InvalidUtf8, None))?;
        if line[first] != b'{' {
            return Err(match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => (DecodeErrorKind::NotAnObject, None),
                Err(error) => (DecodeErrorKind::InvalidJson, Some(Detail::Json(error))),
            });
        }
        let fields: LineFields<'_> = serde_json::from_str(text)
            .map_err(|error| (DecodeErrorKind::InvalidJson, Some(Detail::Json(error))))?;
        if let Some(key) = fields.duplicate {
            return Err((DecodeErrorKind::DuplicateKey { key }, None));
        }
        // `"cursor": null` says there is no cursor, as the reference
        // clients read it.
        let cursor = fields
            .cursor
            .filter(|cursor| !matches!(cursor, Loose::Null));
        match (fields.data, cursor) {
            (Some(_), Some(_)) => Err((DecodeErrorKind::DataAndCursor, None)),
            (None, Some(cursor)) => {
                let cursor = match cursor {
                    Loose::Str(text) => Cursor::new(text)
                        .map_err(|reason| (DecodeErrorKind::InvalidCursor(reason), None))?,
                    _ => return Err((DecodeErrorKind::CursorNotString, None)),
                };
                let partition = self.partition(fields.partition)?;
                Ok(Some(Line::Item(FeedItem::Checkpoint(Checkpoint {
                    partition,
                    cursor,
                }))))
            }
            (Some(data), None) => {
                let partition = self.partition(fields.partition)?;
                let headers = match fields.headers {
                    HeadersField::Absent => Headers::new(),
                    HeadersField::Valid(headers) => headers,
                    HeadersField::Invalid => {
                        return Err((DecodeErrorKind::InvalidHeaders, None));
                    }
                    HeadersField::Duplicate(name) => {
                        return Err((DecodeErrorKind::DuplicateHeader, Some(Detail::Header(name))));
                    }
                };
                event(
                    partition,
                    headers,
                    text.as_bytes(),
                    data.get().as_bytes(),
                    false,
                )
                .map(Some)
            }
            // A message of a newer protocol version.
            (None, None) => Ok(None),
        }
    }

    fn partition(&self, field: Option<Loose<'_>>) -> Result<u32, Failure> {
        let partition = match field {
            None => return Err((DecodeErrorKind::MissingPartition, None)),
            Some(Loose::Unsigned(value)) => {
                u32::try_from(value).map_err(|_| (DecodeErrorKind::InvalidPartition, None))?
            }
            Some(_) => return Err((DecodeErrorKind::InvalidPartition, None)),
        };
        self.check_partition(partition)
    }

    fn check_partition(&self, partition: u32) -> Result<u32, Failure> {
        if self.partitions.binary_search(&partition).is_err() {
            return Err((DecodeErrorKind::UnrequestedPartition { partition }, None));
        }
        Ok(partition)
    }
}

impl<D> fmt::Debug for LineDecoder<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineDecoder")
            .field("partitions", &self.partitions)
            .field("max_line_length", &self.max_line_length)
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

type Failure = (DecodeErrorKind, Option<Detail>);

/// What a failure carries beside its kind.
#[derive(Debug)]
enum Detail {
    Json(serde_json::Error),
    /// The name of a header that appears twice.
    Header(String),
    /// Event data the requested type refused, and the event as it came.
    Data(serde_json::Error, Box<Event<RawJson>>),
}

/// A parsed line: an item, or an event whose data is to be the line's own
/// bytes at `span`.
enum Line<D> {
    Item(FeedItem<D>),
    Raw {
        partition: u32,
        headers: Headers,
        span: Range<usize>,
        /// Whether the data is known to need no rewriting to be line-safe.
        line_safe: bool,
    },
}

/// An event whose data is `raw`, valid UTF-8 JSON that lies in `line`.
fn event<D: DeserializeOwned + 'static>(
    partition: u32,
    headers: Headers,
    line: &[u8],
    raw: &[u8],
    line_safe: bool,
) -> Result<Line<D>, Failure> {
    // Without specialization, the default `RawJson` is recognised by type:
    // it shares the line's bytes instead of copying them out of `raw`.
    if TypeId::of::<D>() == TypeId::of::<RawJson>() {
        let start = raw.as_ptr().addr() - line.as_ptr().addr();
        return Ok(Line::Raw {
            partition,
            headers,
            span: start..start + raw.len(),
            line_safe,
        });
    }
    match serde_json::from_slice(raw) {
        Ok(data) => Ok(Line::Item(FeedItem::Event(Event {
            partition,
            headers,
            data,
        }))),
        Err(error) => {
            // Kept as it came, for the consumer to set aside or read raw.
            let data = RawJson::from_valid(bytes::Bytes::copy_from_slice(raw));
            let event = Box::new(Event {
                partition,
                headers,
                data,
            });
            Err((
                DecodeErrorKind::InvalidData,
                Some(Detail::Data(error, event)),
            ))
        }
    }
}

/// `json` as the `D` it is (`D` being `RawJson`, as [`event`] checked).
fn raw_as<D: 'static>(json: RawJson) -> D {
    let mut slot = Some(json);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<D>>()
        .and_then(Option::take)
        .expect("raw event data is only made when D is RawJson")
}

/// The fields of a line the protocol knows, borrowed from the line.
struct LineFields<'a> {
    partition: Option<Loose<'a>>,
    cursor: Option<Loose<'a>>,
    /// Present even when the value is `null`, which is an event's data.
    data: Option<&'a RawValue>,
    headers: HeadersField,
    /// The first known key that appeared twice.
    duplicate: Option<&'static str>,
}

impl<'de> serde::Deserialize<'de> for LineFields<'de> {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        deserializer.deserialize_map(LineVisitor)
    }
}

struct LineVisitor;

impl<'de> Visitor<'de> for LineVisitor {
    type Value = LineFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = LineFields {
            partition: None,
            cursor: None,
            data: None,
            headers: HeadersField::Absent,
            duplicate: None,
        };
        while let Some(key) = map.next_key::<Key>()? {
            let seen = match key {
                Key::Partition => fields.partition.replace(map.next_value()?).is_some(),
                Key::Cursor => fields.cursor.replace(map.next_value()?).is_some(),
                Key::Data => fields.data.replace(map.next_value()?).is_some(),
                Key::Headers => {
                    let previous = std::mem::replace(&mut fields.headers, map.next_value()?);
                    !matches!(previous, HeadersField::Absent)
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    false
                }
            };
            if seen && fields.duplicate.is_none() {
                fields.duplicate = Some(key.name());
            }
        }
        Ok(fields)
    }
}

/// An object key, recognised without allocating.
#[derive(Clone, Copy)]
enum Key {
    Partition,
    Cursor,
    Data,
    Headers,
    Other,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Partition => "partition",
            Key::Cursor => "cursor",
            Key::Data => "data",
            Key::Headers => "headers",
            Key::Other => "",
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "partition" => Key::Partition,
                    "cursor" => Key::Cursor,
                    "data" => Key::Data,
                    "headers" => Key::Headers,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Any JSON value, kept only as far as the protocol cares: a non-negative
/// integer, a string, or something else. Never fails on a valid value, so
/// that a wrong type becomes a precise error instead of a parse failure.
enum Loose<'a> {
    Unsigned(u64),
    Str(std::borrow::Cow<'a, str>),
    Null,
    Other,
}

impl<'de> serde::Deserialize<'de> for Loose<'de> {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        deserializer.deserialize_any(LooseVisitor)
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Loose::Unsigned(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(value).map_or(Loose::Other, Loose::Unsigned))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Loose::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Loose::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Str(value.into()))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Loose::Str(value.to_owned().into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }
}

/// The `headers` field: an object of strings, or not.
enum HeadersField {
    Absent,
    Valid(Headers),
    Invalid,
    /// An object of strings in which this name appears twice.
    Duplicate(String),
}

impl<'de> serde::Deserialize<'de> for HeadersField {
    fn deserialize<De: Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = HeadersField;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeadersField, A::Error> {
                let mut headers = Headers::new();
                let mut valid = true;
                let mut duplicate = None;
                while let Some(name) = map.next_key::<String>()? {
                    match map.next_value::<Loose<'de>>()? {
                        Loose::Str(value) => match headers.entry(name) {
                            Entry::Occupied(taken) => {
                                duplicate.get_or_insert_with(|| taken.key().clone());
                            }
                            Entry::Vacant(slot) => {
                                slot.insert(value.into_owned());
                            }
                        },
                        _ => valid = false,
                    }
                }
                Ok(match (valid, duplicate) {
                    (false, _) => HeadersField::Invalid,
                    (true, Some(name)) => HeadersField::Duplicate(name),
                    (true, None) => HeadersField::Valid(headers),
                })
            }

            fn visit_unit<E: de::Error>(self) -> Result<HeadersField, E> {
                Ok(HeadersField::Valid(Headers::new()))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<HeadersField, E> {
                Ok(HeadersField::Invalid)
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<HeadersField, E> {
                Ok(HeadersField::Invalid)
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<HeadersField, E> {
                Ok(HeadersField::Invalid)
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<HeadersField, E> {
                Ok(HeadersField::Invalid)
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<HeadersField, E> {
                Ok(HeadersField::Invalid)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HeadersField, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(HeadersField::Invalid)
            }
        }
        deserializer.deserialize_any(HeadersVisitor)
    }
}

/// A line of a feed page that breaks the protocol: where, and what is wrong.
///
/// `Display` reads like `line 12: partition 5 was not requested`. Lines are
/// numbered from 1 and every line counts, skipped ones included.
#[derive(Debug)]
pub struct DecodeError {
    line: u64,
    kind: DecodeErrorKind,
    source: Option<serde_json::Error>,
    header: Option<Box<str>>,
    event: Option<Box<Event<RawJson>>>,
}

impl DecodeError {
    fn new(line: u64, kind: DecodeErrorKind) -> Self {
        Self::with_detail(line, kind, None)
    }

    fn with_detail(line: u64, kind: DecodeErrorKind, detail: Option<Detail>) -> Self {
        let mut error = DecodeError {
            line,
            kind,
            source: None,
            header: None,
            event: None,
        };
        match detail {
            None => {}
            Some(Detail::Json(source)) => error.source = Some(source),
            Some(Detail::Header(name)) => error.header = Some(name.into()),
            Some(Detail::Data(source, event)) => {
                error.source = Some(source);
                error.event = Some(event);
            }
        }
        error
    }

    /// The header name that appears twice, for
    /// [`DuplicateHeader`](DecodeErrorKind::DuplicateHeader).
    pub fn header(&self) -> Option<&str> {
        self.header.as_deref()
    }

    /// The event whose data the requested type refused, with its data as
    /// it came, for [`InvalidData`](DecodeErrorKind::InvalidData): to set
    /// it aside, or read it another way.
    pub fn event(&self) -> Option<&Event<RawJson>> {
        self.event.as_deref()
    }

    /// Takes the refused event out of the error; see [`event`](Self::event).
    pub fn into_event(self) -> Option<Event<RawJson>> {
        self.event.map(|event| *event)
    }

    /// The number of the offending line, from 1.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// What is wrong with the line.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.header, &self.event, &self.source) {
            (DecodeErrorKind::DuplicateHeader, Some(name), _, _) => {
                write!(f, "line {}: header {name:?} appears twice", self.line)
            }
            (DecodeErrorKind::InvalidData, _, Some(event), Some(source)) => write!(
                f,
                "line {}: the data of an event of partition {} does not deserialize into \
                 the requested type: {source}",
                self.line, event.partition
            ),
            _ => write!(f, "line {}: {}", self.line, self.kind),
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|error| error as &(dyn std::error::Error + 'static))
    }
}

/// What is wrong with a line of a feed page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The line is longer than the decoder's limit.
    LineTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The line is not UTF-8.
    InvalidUtf8,
    /// The line is not JSON (the error's source says where).
    InvalidJson,
    /// The line is JSON but not an object.
    NotAnObject,
    /// A key the protocol defines appears twice in the object.
    DuplicateKey {
        /// The key.
        key: &'static str,
    },
    /// An event or checkpoint has no `partition`.
    MissingPartition,
    /// `partition` is not an integer in `0..=u32::MAX`.
    InvalidPartition,
    /// `partition` is not one of the requested partitions.
    UnrequestedPartition {
        /// The partition the line names.
        partition: u32,
    },
    /// `cursor` is not a string.
    CursorNotString,
    /// `cursor` is a string but not a valid cursor (empty, say).
    InvalidCursor(InvalidCursor),
    /// The object has both `data` and `cursor`: it is neither an event nor
    /// a checkpoint.
    DataAndCursor,
    /// `headers` is not an object whose values are strings.
    InvalidHeaders,
    /// A header name appears twice in `headers` (the error's
    /// [`header`](DecodeError::header) says which): JSON readers disagree
    /// on which value counts, so the event means nothing certain.
    DuplicateHeader,
    /// The event's data does not deserialize into the requested type (the
    /// error's source says why, and [`event`](DecodeError::event) holds the
    /// event as it came). The line itself keeps the protocol: the decoder
    /// goes on with the next line.
    InvalidData,
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeErrorKind::LineTooLong { limit } => {
                write!(f, "line is longer than the limit of {limit} bytes")
            }
            DecodeErrorKind::InvalidUtf8 => f.write_str("line is not valid UTF-8"),
            DecodeErrorKind::InvalidJson => f.write_str("line is not valid JSON"),
            DecodeErrorKind::NotAnObject => f.write_str("line is JSON but not an object"),
            DecodeErrorKind::DuplicateKey { key } => write!(f, "key {key:?} appears twice"),
            DecodeErrorKind::MissingPartition => f.write_str("\"partition\" is missing"),
            DecodeErrorKind::InvalidPartition => {
                f.write_str("\"partition\" is not an integer between 0 and 4294967295")
            }
            DecodeErrorKind::UnrequestedPartition { partition } => {
                write!(f, "partition {partition} was not requested")
            }
            DecodeErrorKind::CursorNotString => f.write_str("\"cursor\" is not a string"),
            DecodeErrorKind::InvalidCursor(reason) => write!(f, "checkpoint {reason}"),
            DecodeErrorKind::DataAndCursor => f.write_str("line has both \"data\" and \"cursor\""),
            DecodeErrorKind::InvalidHeaders => {
                f.write_str("\"headers\" is not an object of strings")
            }
            DecodeErrorKind::DuplicateHeader => f.write_str("a header name appears twice"),
            DecodeErrorKind::InvalidData => {
                f.write_str("event data does not deserialize into the requested type")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    impl<D: fmt::Debug> fmt::Debug for Line<D> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Line::Item(item) => item.fmt(f),
                Line::Raw {
                    partition,
                    headers,
                    span,
                    line_safe: _,
                } => write!(f, "raw event {partition} {headers:?} {span:?}"),
            }
        }
    }

    /// What the general path makes of a line, for comparison.
    fn general(decoder: &LineDecoder, line: impl AsRef<[u8]>) -> String {
        format!("{:?}", decoder.parse_general(line.as_ref()))
    }

    fn common(decoder: &LineDecoder, line: impl AsRef<[u8]>) -> Option<String> {
        decoder
            .parse_common(line.as_ref())
            .map(|parsed| format!("{:?}", parsed.map(Some)))
    }

    #[test]
    fn the_common_shapes_take_the_fast_path() {
        let decoder = LineDecoder::new([0, 7]);
        for line in [
            r#"{"partition":0,"cursor":"12"}"#,
            r#"{"partition":7,"data":{"a":[1,"x"]}}"#,
            r#"{"partition":0,"data":null}"#,
            r#"{"partition":3,"data":1}"#,
            r#"{"partition":0,"cursor":""}"#,
            "{\"partition\":0,\"data\":\"é\u{2028}\"}",
            "{\"partition\":0,\"data\":[1,\r2]\r\n }",
        ] {
            assert_eq!(
                common(&decoder, line),
                Some(general(&decoder, line)),
                "{line}"
            );
        }
        for line in [
            &br#"{"partition":0,"cursor":"a\"b"}"#[..],
            br#"{"partition":0,"data":1,"headers":{}}"#,
            br#"{"partition":00,"data":1}"#,
            br#"{"partition":0,"data": 1}"#,
            br#"{"partition":99999999999,"data":1}"#,
            // Left to the general path, which tells what is wrong.
            b"{\"partition\":0,\"cursor\":\"a\tb\"}",
            b"{\"partition\":0,\"cursor\":\"\xff\"}",
            "{\"partition\":0,\"cursor\":\"\u{7f}é\"}".as_bytes(),
            b"{\"partition\":0,\"data\":\"\xc3\"}",
        ] {
            assert_eq!(common(&decoder, line), None, "{line:?}");
        }
    }

    /// Event data as `decode` hands it out for `line`.
    fn decoded_data(line: &[u8]) -> RawJson {
        let mut buf = BytesMut::from(line);
        match LineDecoder::<RawJson>::new([0]).decode_eof(&mut buf) {
            Some(Ok(FeedItem::Event(event))) => event.data,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn data_is_shared_as_is_only_when_line_safe() {
        let plain = decoded_data(br#"{"partition":0,"data":{"a": ["b\u2028"]}}"#);
        assert_eq!(plain.as_str(), r#"{"a": ["b\u2028"]}"#);
        let spaced = decoded_data(b"{\"partition\":0,\"data\":[1,\r2]}");
        assert_eq!(spaced.as_str(), "[1, 2]");
        let separator = decoded_data("{\"partition\":0,\"data\":\"é\u{2028}\"}".as_bytes());
        assert_eq!(separator.as_str(), r#""é\u2028""#);
        let plain = decoded_data("{\"partition\":0,\"data\":\"é\"}".as_bytes());
        assert_eq!(plain.as_str(), r#""é""#);
    }

    proptest! {
        #[test]
        fn the_fast_path_agrees_with_the_general_one(
            partition in prop_oneof![Just("0".to_owned()), Just("1".to_owned()), "[0-9]{1,11}", Just("-1".to_owned())],
            body in prop_oneof![
                r#","cursor":"[ -~]{0,6}"\}"#,
                r#","data":[ {}\[\]",:0-9a-z\\]{0,12}\}"#,
                r#","data":\{"k":"[ -~]{0,8}"\}\}"#,
            ],
        ) {
            let decoder = LineDecoder::new([0, 1, 12]);
            let line = format!("{{\"partition\":{partition}{body}");
            if let Some(fast) = common(&decoder, &line) {
                prop_assert_eq!(fast, general(&decoder, &line));
            }
        }

        /// Lines that need not be UTF-8, with bytes the fast path treats
        /// apart: quotes, backslashes, control characters, line breaks and
        /// bytes outside ASCII.
        #[test]
        fn the_fast_path_agrees_with_the_general_one_on_bytes(
            shape in prop_oneof![
                Just(&b"{\"partition\":0,\"cursor\":\""[..]),
                Just(&b"{\"partition\":0,\"data\":\""[..]),
                Just(&b"{\"partition\":0,\"data\":[\""[..]),
            ],
            text in prop::collection::vec(prop_oneof![
                4 => prop::sample::select(b"ab \"\\\r\t".to_vec()),
                1 => any::<u8>(),
            ], 0..10),
            close in prop_oneof![Just(&b"\"}"[..]), Just(&b"\"]}"[..]), Just(&b"\"]\r\t}"[..])],
        ) {
            let decoder = LineDecoder::new([0]);
            let line = [shape, &text, close].concat();
            if let Some(fast) = common(&decoder, &line) {
                prop_assert_eq!(fast, general(&decoder, &line));
            }
        }
    }
}
