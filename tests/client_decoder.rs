//! The NDJSON decoder against every line rule of the protocol.

use bytes::BytesMut;
use zeroeventhub::protocol::{
    Checkpoint, Cursor, DecodeError, DecodeErrorKind, Event, FeedItem, InvalidCursor, LineDecoder,
    RawJson,
};

/// Decodes a whole body that ended cleanly.
fn decode_all(decoder: &mut LineDecoder, body: &[u8]) -> Result<Vec<FeedItem>, DecodeError> {
    let mut buf = BytesMut::from(body);
    let mut items = Vec::new();
    while let Some(item) = decoder.decode(&mut buf) {
        items.push(item?);
    }
    while let Some(item) = decoder.decode_eof(&mut buf) {
        items.push(item?);
    }
    Ok(items)
}

fn decode(body: &str) -> Result<Vec<FeedItem>, DecodeError> {
    decode_all(&mut LineDecoder::new([0, 1]), body.as_bytes())
}

fn error(body: &str) -> DecodeError {
    decode(body).expect_err("the body is invalid")
}

fn event(partition: u32, data: &str) -> FeedItem {
    FeedItem::Event(Event::new(
        partition,
        RawJson::from_bytes(data.to_owned()).unwrap(),
    ))
}

fn checkpoint(partition: u32, cursor: &str) -> FeedItem {
    FeedItem::Checkpoint(Checkpoint::new(partition, Cursor::new(cursor).unwrap()))
}

#[test]
fn events_and_checkpoints() {
    let items = decode(concat!(
        "{\"partition\":0,\"data\":{\"a\":1}}\n",
        "{\"partition\":1,\"headers\":{\"k\":\"v\",\"z\":\"\"},\"data\":[1,2]}\n",
        "{\"partition\":0,\"cursor\":\"c1\"}\n",
        "{\"data\":\"first\",\"partition\":1}\n",
    ))
    .unwrap();
    assert_eq!(
        items,
        vec![
            event(0, r#"{"a":1}"#),
            FeedItem::Event(
                Event::new(1, RawJson::from_bytes("[1,2]").unwrap())
                    .with_header("k", "v")
                    .with_header("z", "")
            ),
            checkpoint(0, "c1"),
            event(1, r#""first""#),
        ]
    );
}

#[test]
fn null_data_is_an_event() {
    assert_eq!(
        decode(
            "{\"partition\":0,\"data\":null}\n{\"partition\":0,\"headers\":null,\"data\": null }\n"
        )
        .unwrap(),
        vec![event(0, "null"), event(0, "null")]
    );
}

#[test]
fn a_null_cursor_is_no_cursor() {
    assert_eq!(
        decode("{\"partition\":0,\"data\":1,\"cursor\":null}\n{\"partition\":1,\"cursor\":null}\n")
            .unwrap(),
        vec![event(0, "1")]
    );
}

#[test]
fn crlf_blank_and_whitespace_only_lines() {
    let items = decode("\r\n{\"partition\":0,\"data\":1}\r\n\n   \n\t \r\n\r\n{\"partition\":1,\"cursor\":\"x\"}\r\n")
        .unwrap();
    assert_eq!(items, vec![event(0, "1"), checkpoint(1, "x")]);
}

#[test]
fn a_final_line_without_newline_is_accepted() {
    assert_eq!(
        decode("{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"1\"}").unwrap(),
        vec![event(0, "1"), checkpoint(0, "1")]
    );
    assert_eq!(
        decode("{\"partition\":0,\"data\":1}\r").unwrap(),
        vec![event(0, "1")]
    );
    let cut = error("{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cur");
    assert_eq!((cut.line(), cut.kind()), (2, DecodeErrorKind::InvalidJson));
}

#[test]
fn lines_are_returned_as_bytes_arrive() {
    let body =
        b"{\"partition\":0,\"data\":{\"k\":\"\xc3\xa9\"}}\n{\"partition\":0,\"cursor\":\"9\"}\n";
    let mut decoder: LineDecoder = LineDecoder::new([0]);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    // One byte at a time: a line is only returned once its `\n` is in.
    for byte in body {
        buf.extend_from_slice(&[*byte]);
        if let Some(item) = decoder.decode(&mut buf) {
            items.push(item.unwrap());
            assert!(buf.is_empty());
        }
    }
    assert_eq!(items, vec![event(0, "{\"k\":\"é\"}"), checkpoint(0, "9")]);
    assert!(decoder.decode_eof(&mut buf).is_none());
    assert_eq!(decoder.lines(), 2);
}

#[test]
fn raw_line_separators_inside_strings_are_data_not_line_breaks() {
    let items = decode("{\"partition\":0,\"data\":\"a\u{2028}b\u{85}c\u{2029}\"}\n").unwrap();
    let [FeedItem::Event(event)] = &items[..] else {
        panic!("one event expected, got {items:?}");
    };
    // Kept line-safe, and the same string.
    assert_eq!(event.data.as_str(), r#""a\u2028b\u0085c\u2029""#);
    assert_eq!(
        event.data.deserialize::<String>().unwrap(),
        "a\u{2028}b\u{85}c\u{2029}"
    );
}

#[test]
fn a_one_mebibyte_line_is_fine() {
    let big = "x".repeat(1024 * 1024);
    let items = decode(&format!("{{\"partition\":0,\"data\":\"{big}\"}}\n")).unwrap();
    let [FeedItem::Event(event)] = &items[..] else {
        panic!("one event expected");
    };
    assert_eq!(event.data.as_str().len(), big.len() + 2);
}

#[test]
fn deeply_nested_data_is_fine() {
    let data = "[".repeat(10_000) + &"]".repeat(10_000);
    let items = decode(&format!("{{\"partition\":0,\"data\":{data}}}\n")).unwrap();
    assert_eq!(items, vec![event(0, &data)]);
}

#[test]
fn a_line_over_the_limit_is_an_error_before_its_end_arrives() {
    let mut decoder: LineDecoder = LineDecoder::new([0]).with_max_line_length(64);
    assert_eq!(decoder.max_line_length(), 64);
    let mut buf = BytesMut::from(&b"{\"partition\":0,\"data\":1}\n"[..]);
    assert!(decoder.decode(&mut buf).unwrap().is_ok());
    // 65 bytes and no `\n` yet: it may still be a 64-byte line plus `\r`.
    buf.extend_from_slice(&[b' '; 65]);
    assert!(decoder.decode(&mut buf).is_none());
    buf.extend_from_slice(b" ");
    let error = decoder.decode(&mut buf).unwrap().unwrap_err();
    assert_eq!(error.line(), 2);
    assert_eq!(error.kind(), DecodeErrorKind::LineTooLong { limit: 64 });
    assert_eq!(
        error.to_string(),
        "line 2: line is longer than the limit of 64 bytes"
    );

    // A complete line over the limit, CRLF not counted.
    let exact = format!("{{\"partition\":0,\"data\":\"{}\"}}", "y".repeat(64 - 25));
    assert_eq!(exact.len(), 64);
    let mut decoder: LineDecoder = LineDecoder::new([0]).with_max_line_length(64);
    assert!(decode_all(&mut decoder, format!("{exact}\r\n").as_bytes()).is_ok());
    let mut decoder: LineDecoder = LineDecoder::new([0]).with_max_line_length(63);
    let error = decode_all(&mut decoder, format!("{exact}\r\n").as_bytes()).unwrap_err();
    assert_eq!(error.kind(), DecodeErrorKind::LineTooLong { limit: 63 });
}

#[test]
fn invalid_utf8_is_an_error() {
    let mut decoder: LineDecoder = LineDecoder::new([0]);
    let error = decode_all(&mut decoder, b"\n{\"partition\":0,\"data\":\"\xff\"}\n").unwrap_err();
    assert_eq!(
        (error.line(), error.kind()),
        (2, DecodeErrorKind::InvalidUtf8)
    );
}

#[test]
fn empty_or_invalid_cursors_are_errors() {
    let empty = error("{\"partition\":0,\"data\":1}\n{\"partition\":0,\"cursor\":\"\"}\n");
    assert_eq!(empty.line(), 2);
    assert_eq!(
        empty.kind(),
        DecodeErrorKind::InvalidCursor(InvalidCursor::Empty)
    );
    assert_eq!(empty.to_string(), "line 2: checkpoint cursor is empty");

    let tab = error("{\"partition\":0,\"cursor\":\"a\\tb\"}");
    assert_eq!(
        tab.kind(),
        DecodeErrorKind::InvalidCursor(InvalidCursor::NotPrintable { position: 1 })
    );
    for line in [
        "{\"partition\":0,\"cursor\":12}",
        "{\"partition\":0,\"cursor\":[\"a\"]}",
    ] {
        assert_eq!(
            error(line).kind(),
            DecodeErrorKind::CursorNotString,
            "{line}"
        );
    }
    // Escapes are decoded before the cursor is checked.
    assert_eq!(
        decode("{\"partition\":0,\"cursor\":\"a\\\"b\\u0041\"}").unwrap(),
        vec![checkpoint(0, "a\"bA")]
    );
}

#[test]
fn partitions_must_be_requested_non_negative_integers() {
    for (line, kind) in [
        ("{\"data\":1}", DecodeErrorKind::MissingPartition),
        ("{\"cursor\":\"1\"}", DecodeErrorKind::MissingPartition),
        (
            "{\"partition\":\"0\",\"data\":1}",
            DecodeErrorKind::InvalidPartition,
        ),
        (
            "{\"partition\":-1,\"data\":1}",
            DecodeErrorKind::InvalidPartition,
        ),
        (
            "{\"partition\":0.0,\"data\":1}",
            DecodeErrorKind::InvalidPartition,
        ),
        (
            "{\"partition\":null,\"cursor\":\"1\"}",
            DecodeErrorKind::InvalidPartition,
        ),
        (
            "{\"partition\":4294967296,\"data\":1}",
            DecodeErrorKind::InvalidPartition,
        ),
        (
            "{\"partition\":5,\"data\":1}",
            DecodeErrorKind::UnrequestedPartition { partition: 5 },
        ),
        (
            "{\"partition\":2,\"cursor\":\"1\"}",
            DecodeErrorKind::UnrequestedPartition { partition: 2 },
        ),
    ] {
        assert_eq!(error(line).kind(), kind, "{line}");
    }
    let error = error("{\"partition\":0,\"data\":1}\n\n{\"partition\":5,\"data\":1}\n");
    assert_eq!(error.to_string(), "line 3: partition 5 was not requested");
}

#[test]
fn lines_that_are_not_objects_are_errors() {
    for (line, kind) in [
        ("null", DecodeErrorKind::NotAnObject),
        ("[1]", DecodeErrorKind::NotAnObject),
        ("\"text\"", DecodeErrorKind::NotAnObject),
        ("42", DecodeErrorKind::NotAnObject),
        ("{\"partition\":0,\"data\":1", DecodeErrorKind::InvalidJson),
        (
            "{\"partition\":0,\"data\":1} {}",
            DecodeErrorKind::InvalidJson,
        ),
        ("event: 1", DecodeErrorKind::InvalidJson),
        (
            "{\"partition\":0,\"data\":01}",
            DecodeErrorKind::InvalidJson,
        ),
    ] {
        let error = error(&format!("{{\"partition\":0,\"data\":1}}\n{line}\n"));
        assert_eq!((error.line(), error.kind()), (2, kind), "{line}");
    }
    let invalid = error("{nope}");
    assert!(
        std::error::Error::source(&invalid).is_some(),
        "the JSON error is the source"
    );
}

#[test]
fn objects_with_neither_data_nor_cursor_are_skipped_but_counted() {
    let items = decode(concat!(
        "{}\n",
        "{\"partition\":0}\n",
        "{\"partition\":9,\"kind\":\"heartbeat\"}\n",
        "{\"type\":\"future-message\",\"payload\":[1,2]}\n",
        "{\"partition\":0,\"data\":1}\n",
        "{\"partition\":3,\"data\":1}\n",
    ));
    assert_eq!(error_line(items), 6);

    let items =
        decode("{\"hello\":1}\n{\"partition\":1,\"data\":true,\"extra\":{\"x\":[]}}\n").unwrap();
    assert_eq!(items, vec![event(1, "true")]);
}

fn error_line(result: Result<Vec<FeedItem>, DecodeError>) -> u64 {
    result.expect_err("an error expected").line()
}

#[test]
fn our_own_stricter_rules() {
    for (line, kind) in [
        (
            "{\"partition\":0,\"data\":1,\"cursor\":\"1\"}",
            DecodeErrorKind::DataAndCursor,
        ),
        (
            "{\"partition\":0,\"partition\":1,\"data\":1}",
            DecodeErrorKind::DuplicateKey { key: "partition" },
        ),
        (
            "{\"partition\":0,\"data\":1,\"data\":2}",
            DecodeErrorKind::DuplicateKey { key: "data" },
        ),
        (
            "{\"partition\":0,\"headers\":{\"k\":1},\"data\":1}",
            DecodeErrorKind::InvalidHeaders,
        ),
        (
            "{\"partition\":0,\"headers\":[],\"data\":1}",
            DecodeErrorKind::InvalidHeaders,
        ),
    ] {
        assert_eq!(error(line).kind(), kind, "{line}");
    }
}

#[test]
fn typed_data_is_deserialized() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Renamed {
        person_id: u64,
    }
    let mut decoder: LineDecoder<Renamed> = LineDecoder::new([0]);
    let mut buf = BytesMut::from(
        &b"{\"partition\":0,\"data\":{\"person_id\":7,\"x\":1}}\n{\"partition\":0,\"data\":{}}\n"[..],
    );
    let Some(Ok(FeedItem::Event(event))) = decoder.decode(&mut buf) else {
        panic!("an event expected");
    };
    assert_eq!(event.data, Renamed { person_id: 7 });
    let error = decoder.decode(&mut buf).unwrap().unwrap_err();
    assert_eq!(
        (error.line(), error.kind()),
        (2, DecodeErrorKind::InvalidData)
    );

    // `serde_json::Value` takes `null` data as it is.
    let mut decoder: LineDecoder<serde_json::Value> = LineDecoder::new([0]);
    let mut buf = BytesMut::from(&b"{\"partition\":0,\"data\":null}"[..]);
    let Some(Ok(FeedItem::Event(event))) = decoder.decode_eof(&mut buf) else {
        panic!("an event expected");
    };
    assert_eq!(event.data, serde_json::Value::Null);
}

#[test]
fn a_buffer_emptied_between_calls_is_no_problem() {
    let mut decoder: LineDecoder = LineDecoder::new([0]);
    let mut buf = BytesMut::from(&b"{\"partition\":0,\"da"[..]);
    assert!(decoder.decode(&mut buf).is_none());
    buf.clear();
    buf.extend_from_slice(b"{\"partition\":0,\"data\":2}\n");
    assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), event(0, "2"));
}

#[test]
fn a_header_name_given_twice_is_an_error_that_names_it() {
    let error = error(
        "{\"partition\":0,\"data\":1}\n\
         {\"partition\":0,\"headers\":{\"trace\":\"a\",\"kind\":\"x\",\"trace\":\"b\"},\"data\":1}\n",
    );
    assert_eq!(
        (error.line(), error.kind()),
        (2, DecodeErrorKind::DuplicateHeader)
    );
    assert_eq!(error.header(), Some("trace"));
    assert_eq!(error.to_string(), "line 2: header \"trace\" appears twice");
    // Distinct names are fine, and a non-string value is still the
    // headers' own error.
    assert_eq!(
        decode("{\"partition\":0,\"headers\":{\"a\":\"1\",\"b\":\"2\"},\"data\":1}").unwrap(),
        vec![FeedItem::Event(
            Event::new(0, RawJson::from_bytes("1").unwrap())
                .with_header("a", "1")
                .with_header("b", "2")
        )]
    );
    let invalid = self::error("{\"partition\":0,\"headers\":{\"a\":\"1\",\"a\":2},\"data\":1}");
    assert_eq!(invalid.kind(), DecodeErrorKind::InvalidHeaders);
}

#[test]
fn refused_typed_data_keeps_the_event_and_the_decoder_goes_on() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Order {
        id: u64,
    }
    let mut decoder: LineDecoder<Order> = LineDecoder::new([0, 3]);
    let mut buf = BytesMut::from(
        &b"{\"partition\":3,\"headers\":{\"h\":\"v\"},\"data\":{\"id\":\"seven\"}}\n\
           {\"partition\":3,\"data\":{\"id\":8}}\n"[..],
    );
    let error = decoder.decode(&mut buf).unwrap().unwrap_err();
    assert_eq!(error.kind(), DecodeErrorKind::InvalidData);
    let event = error.event().expect("the refused event");
    assert_eq!(event.partition, 3);
    assert_eq!(event.data.as_str(), r#"{"id":"seven"}"#);
    assert_eq!(event.headers.get("h").map(String::as_str), Some("v"));
    let message = error.to_string();
    assert!(
        message.starts_with("line 1: the data of an event of partition 3")
            && message.contains("invalid type: string \"seven\""),
        "{message}"
    );
    let Some(Ok(FeedItem::Event(next))) = decoder.decode(&mut buf) else {
        panic!("the next line decodes");
    };
    assert_eq!(next.data, Order { id: 8 });
    assert_eq!(error.into_event().unwrap().partition, 3);
}
