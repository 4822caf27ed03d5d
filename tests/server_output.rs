//! The page's lines survive line readers that split on more than `\n`:
//! U+2028, U+2029 and U+0085 leave the server escaped wherever they are (in
//! event data, header names and header values), and parse back unchanged.
#![cfg(feature = "server")]

mod support;

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::transport::Transport;
use zeroeventhub::protocol::{Event, RawJson};
use zeroeventhub::server::MemoryFeed;

/// The separators some line readers split on, as their UTF-8 bytes.
const SEPARATORS: [&[u8]; 3] = [
    "\u{2028}".as_bytes(),
    "\u{2029}".as_bytes(),
    "\u{85}".as_bytes(),
];

/// An event as the feed was given it: data and headers.
struct Original {
    data: Value,
    headers: BTreeMap<String, String>,
}

/// A feed whose events hide separators in every place a string can be.
fn tricky_feed() -> (MemoryFeed, Vec<Original>) {
    let feed = MemoryFeed::new(1);
    let texts = [
        // Raw separators inside a string of JSON text.
        "{\"text\":\"a\u{2028}b\u{2029}c\u{85}d\"}".to_owned(),
        // In an object key and in array items, around other non-ASCII text.
        serde_json::to_string(&json!({
            "key\u{2029}": ["\u{2028}", "x\u{85}y", "é😀"],
        }))
        .unwrap(),
        // A bare string, with line breaks outside it.
        "\r\n\"\u{2028}\u{2029}\u{85}\"\n".to_owned(),
        // Already escaped: stays a valid escape.
        r#"{"text":"\u2028\\u2029"}"#.to_owned(),
    ];
    let mut originals = Vec::new();
    for (index, text) in texts.into_iter().enumerate() {
        let data: Value = serde_json::from_str(&text).unwrap();
        let mut headers = BTreeMap::new();
        if index % 2 == 0 {
            headers.insert("name\u{2028}".to_owned(), "value\u{85}\u{2029}".to_owned());
            headers.insert("plain".to_owned(), "é😀 \u{2029}".to_owned());
        }
        let mut event = Event::new(0, RawJson::from_bytes(text).unwrap());
        for (name, value) in &headers {
            event = event.with_header(name, value);
        }
        feed.append(event).unwrap();
        originals.push(Original { data, headers });
    }
    (feed, originals)
}

/// Fetches the page and checks it line by line against the originals,
/// keeping only the headers `selected`.
async fn check(transport: Transport, query: &str, selected: impl Fn(&str) -> bool) {
    let (feed, originals) = tricky_feed();
    let reply = transport.send(feed.service(), Method::GET, query).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = &reply.body[..];

    for separator in SEPARATORS {
        assert!(
            !body
                .windows(separator.len())
                .any(|window| window == separator),
            "a raw {separator:?} in {:?}",
            reply.text()
        );
    }
    for escape in ["\\u2028", "\\u2029", "\\u0085"] {
        assert!(
            reply.text().contains(escape),
            "{escape} in {:?}",
            reply.text()
        );
    }
    assert!(
        !body.starts_with("\u{feff}".as_bytes()),
        "no byte-order mark"
    );
    assert!(body.ends_with(b"\n"));

    let lines: Vec<Value> = reply
        .text()
        .strip_suffix('\n')
        .unwrap()
        .split('\n')
        .map(|line| serde_json::from_str(line).expect("each line is one JSON value"))
        .collect();
    assert_eq!(
        lines.len(),
        2 * originals.len(),
        "an event and a checkpoint each"
    );
    for (index, (original, pair)) in originals.iter().zip(lines.chunks(2)).enumerate() {
        let headers: BTreeMap<String, String> = original
            .headers
            .iter()
            .filter(|(name, _)| selected(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let mut expected = json!({ "partition": 0, "data": original.data });
        if !headers.is_empty() {
            expected["headers"] = json!(headers);
        }
        assert_eq!(pair[0], expected, "event {index}");
        assert_eq!(
            pair[1],
            json!({ "partition": 0, "cursor": index.to_string() }),
            "checkpoint {index}"
        );
    }
}

#[tokio::test]
async fn separators_are_escaped_in_process() {
    check(
        Transport::InProcess,
        "n=1&cursor0=_first&headers=_all",
        |_| true,
    )
    .await;
}

#[tokio::test]
async fn separators_are_escaped_over_http() {
    check(
        Transport::Loopback,
        "n=1&cursor0=_first&headers=_all",
        |_| true,
    )
    .await;
}

#[tokio::test]
async fn header_names_with_separators_can_be_selected() {
    // `name` followed by U+2028, percent-encoded.
    check(
        Transport::Loopback,
        "n=1&cursor0=_first&headers=name%E2%80%A8",
        |name| name == "name\u{2028}",
    )
    .await;
}
