//! Golden bytes: request URLs and response bodies of the reference
//! implementations, kept in `tests/fixtures/` (see its README for where each
//! came from), checked against our request parser, decoder and encoder, and
//! our encoder's output read back by the Python reference client.

mod interop_support;

use std::path::PathBuf;

use bytes::BytesMut;
use interop_support::model::Received;
use interop_support::{BackgroundServer, ClientRequest, Outcome, ReferenceClient};
use serde::Deserialize;
use zeroeventhub::protocol::{
    Cursor, FeedItem, FeedRequest, HeaderSelection, LineDecoder, LineEncoder,
};

/// One recorded or documented exchange.
#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    request: CaseRequest,
    /// The request target the reference client sent (path and query).
    target: String,
    status: u16,
    content_type: String,
    /// The file holding the response body.
    body: String,
    /// What the reference client made of the body.
    items: Vec<Received>,
    /// Whether our encoder writes exactly these bytes for these items.
    #[serde(default)]
    byte_exact_with_ours: bool,
}

/// What the client was asked for.
#[derive(Debug, Deserialize)]
struct CaseRequest {
    partitions: u32,
    cursors: Vec<(u32, String)>,
    page_size_hint: Option<u32>,
    headers: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

/// A fixture set, and the cases in it with their body bytes.
fn cases(set: &str) -> Vec<(Case, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(set);
    let manifest = std::fs::read_to_string(dir.join("cases.json"))
        .unwrap_or_else(|error| panic!("cannot read the {set} fixtures: {error}"));
    let manifest: Manifest = serde_json::from_str(&manifest).expect("a valid cases.json");
    assert!(!manifest.cases.is_empty());
    manifest
        .cases
        .into_iter()
        .map(|case| {
            let body = std::fs::read(dir.join(&case.body))
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", case.body));
            (case, body)
        })
        .collect()
}

/// Every case of both sets.
fn all_cases() -> Vec<(Case, Vec<u8>)> {
    let mut all = cases("python");
    all.extend(cases("go"));
    all
}

impl CaseRequest {
    /// The same request, as our model has it.
    fn to_feed_request(&self) -> FeedRequest {
        let cursors = self
            .cursors
            .iter()
            .map(|(partition, cursor)| (*partition, Cursor::new(cursor).expect("a valid cursor")));
        let mut request = FeedRequest::new(self.partitions, cursors).expect("a valid request");
        if let Some(hint) = self.page_size_hint {
            request = request.with_page_size_hint(hint);
        }
        if let Some(names) = &self.headers {
            request = request
                .with_headers(HeaderSelection::only(names.clone()).expect("valid header names"));
        }
        request
    }
}

/// Decodes a whole body, handing it to the decoder `chunk` bytes at a time.
fn decode(request: &FeedRequest, body: &[u8], chunk: usize) -> Vec<FeedItem> {
    let mut decoder: LineDecoder = LineDecoder::for_request(request);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for piece in body.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(item) = decoder.decode(&mut buf) {
            items.push(item.expect("a valid line"));
        }
    }
    while let Some(item) = decoder.decode_eof(&mut buf) {
        items.push(item.expect("a valid line"));
    }
    items
}

/// Our encoding of `items`, every header written.
fn encode(items: &[FeedItem]) -> Vec<u8> {
    let encoder = LineEncoder::new(HeaderSelection::All);
    let mut out = BytesMut::new();
    for item in items {
        encoder.encode(item, &mut out);
    }
    out.to_vec()
}

#[test]
fn their_request_urls_parse_to_what_their_clients_were_asked() {
    for (case, _) in all_cases() {
        let (path, query) = case
            .target
            .split_once('?')
            .unwrap_or_else(|| panic!("{}: a target with a query", case.name));
        assert_eq!(path, "/feed/v1", "{}", case.name);
        let parsed = FeedRequest::from_query(query)
            .unwrap_or_else(|error| panic!("{}: {query:?} is refused: {error}", case.name));
        assert_eq!(parsed, case.request.to_feed_request(), "{}", case.name);
    }
}

#[test]
fn our_decoder_reads_their_bodies_as_their_client_does() {
    let mut decoded = 0;
    for (case, body) in all_cases() {
        if case.status != 200 {
            continue;
        }
        assert_eq!(case.content_type, "application/x-ndjson", "{}", case.name);
        let request = case.request.to_feed_request();
        for chunk in [1, 7, body.len().max(1)] {
            let items: Vec<Received> = decode(&request, &body, chunk)
                .into_iter()
                .map(Received::from)
                .collect();
            assert_eq!(items, case.items, "{} in chunks of {chunk}", case.name);
        }
        decoded += 1;
    }
    assert!(decoded >= 8, "only {decoded} bodies decoded");
}

#[test]
fn our_encoder_writes_the_documented_format() {
    let mut compared = 0;
    for (case, body) in cases("go") {
        if !case.byte_exact_with_ours {
            continue;
        }
        let items = decode(&case.request.to_feed_request(), &body, body.len());
        assert_eq!(
            String::from_utf8(encode(&items)).expect("UTF-8"),
            String::from_utf8(body).expect("UTF-8"),
            "{}",
            case.name
        );
        compared += 1;
    }
    assert!(compared >= 3, "only {compared} bodies compared");
}

#[test]
fn our_encoding_of_every_body_is_line_safe_json_in_the_documented_shape() {
    for (case, body) in all_cases() {
        if case.status != 200 {
            continue;
        }
        let items = decode(&case.request.to_feed_request(), &body, body.len());
        let ours = String::from_utf8(encode(&items)).expect("our encoding is UTF-8");
        assert!(ours.ends_with('\n'), "{}", case.name);
        let lines: Vec<&str> = ours.trim_end_matches('\n').split('\n').collect();
        assert_eq!(lines.len(), items.len(), "{}: one line per item", case.name);
        for line in lines {
            assert!(
                !line.contains(['\r', '\u{85}', '\u{2028}', '\u{2029}']),
                "{}: a line reader could split {line:?}",
                case.name
            );
            let shape = if line.contains(r#""cursor":"#) && !line.contains(r#""data":"#) {
                r#"{"partition":N,"cursor":"#
            } else if line.contains(r#","headers":{"#) {
                r#"{"partition":N,"headers":{"#
            } else {
                r#"{"partition":N,"data":"#
            };
            let digits = line["{\"partition\":".len()..]
                .find(|c: char| !c.is_ascii_digit())
                .expect("a partition number");
            let normalized = format!(
                "{{\"partition\":N{}",
                &line["{\"partition\":".len() + digits..]
            );
            assert!(
                normalized.starts_with(shape),
                "{}: {line:?} is not in the documented shape",
                case.name
            );
            serde_json::from_str::<serde_json::Value>(line).expect("each line is JSON");
        }
    }
}

#[test]
fn their_client_reads_our_encoding_of_every_body() {
    let mut app = axum::Router::new();
    let mut requests = Vec::new();
    for (index, (case, body)) in all_cases().into_iter().enumerate() {
        if case.status != 200 {
            continue;
        }
        let ours = encode(&decode(&case.request.to_feed_request(), &body, body.len()));
        // Numbered: names repeat across the fixture sets.
        let path = format!("/{index}/feed/v1");
        app = app.route(
            &path,
            axum::routing::get(move || async move {
                ([(http::header::CONTENT_TYPE, "application/x-ndjson")], ours)
            }),
        );
        requests.push((path, case));
    }
    let server = BackgroundServer::start(app);
    let mut client = ReferenceClient::start();
    for (path, case) in &requests {
        let cursors: Vec<(u32, &str)> = case
            .request
            .cursors
            .iter()
            .map(|(partition, cursor)| (*partition, cursor.as_str()))
            .collect();
        let mut request =
            ClientRequest::new(&server.url(path), &cursors).partitions(case.request.partitions);
        request.page_size_hint = case.request.page_size_hint;
        request.headers = case.request.headers.clone();
        let page = client.fetch(&request);
        assert_eq!(page.outcome, Outcome::Complete, "{}", case.name);
        assert_eq!(page.items, case.items, "{}", case.name);
    }
    client.finish();
}

#[tokio::test]
async fn our_client_reads_their_responses_over_http() {
    let mut app = axum::Router::new();
    let cases = all_cases();
    for (index, (case, body)) in cases.iter().enumerate() {
        let response = (
            http::StatusCode::from_u16(case.status).expect("a valid status"),
            [(http::header::CONTENT_TYPE, case.content_type.clone())],
            body.clone(),
        );
        app = app.route(
            &format!("/{index}/feed/v1"),
            axum::routing::get(move || async move { response }),
        );
    }
    let server = BackgroundServer::start(app);
    for (index, (case, body)) in cases.iter().enumerate() {
        let url = server.url(&format!("/{index}/feed/v1"));
        let client = zeroeventhub::client::Client::builder(
            url.parse().expect("a valid URL"),
            case.request.partitions,
        )
        .build();
        let result = client.fetch(&case.request.to_feed_request()).await;
        if case.status == 200 {
            let stream = result.unwrap_or_else(|error| panic!("{}: {error}", case.name));
            let items: Vec<Received> = futures_util::TryStreamExt::try_collect::<Vec<_>>(stream)
                .await
                .unwrap_or_else(|error| panic!("{}: {error}", case.name))
                .into_iter()
                .map(Received::from)
                .collect();
            assert_eq!(items, case.items, "{}", case.name);
        } else {
            let error = result.expect_err("an error status");
            assert!(error.is_status(), "{}: {error}", case.name);
            assert_eq!(error.status().map(|s| s.as_u16()), Some(case.status));
            let body = String::from_utf8_lossy(body);
            assert_eq!(
                error.body_excerpt().map(str::trim_end),
                Some(body.trim_end()),
                "{}",
                case.name
            );
        }
    }
}
