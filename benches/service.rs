//! The feed service serving the standard workload in-process: query parsing,
//! the MemoryFeed reader and the streaming body, without a network.

mod support;

use http::Request;
use http_body_util::BodyExt;
use support::{Work, measure};
use tower::ServiceExt;
use zeroeventhub::server::MemoryFeed;
use zeroeventhub::workload;

const EVENTS: u64 = 200_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let feed = MemoryFeed::new(2);
    workload::fill(&feed, EVENTS);
    let service = feed.service().max_page_size(1_000_000);

    println!(
        "feed service in-process, standard workload, {EVENTS} events of one partition per run"
    );
    for page_size in [1_000u64, 10_000, 100_000] {
        measure(&format!("serve pagesizehint={page_size}"), 7, || {
            runtime.block_on(async {
                let mut cursor = "_first".to_owned();
                let mut work = Work {
                    events: 0,
                    bytes: 0,
                };
                while work.events < EVENTS {
                    let uri = format!("/feed/v1?n=2&cursor0={cursor}&pagesizehint={page_size}");
                    let request = Request::get(uri)
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .expect("request");
                    let response = service.clone().oneshot(request).await.expect("infallible");
                    let mut body = response.into_body();
                    let mut last = bytes::Bytes::new();
                    while let Some(frame) = body.frame().await {
                        let data = frame.expect("body").into_data().expect("data frame");
                        work.bytes += data.len() as u64;
                        last = data;
                    }
                    work.events += page_size;
                    cursor = last_cursor(&last);
                }
                work
            })
        });
    }
}

/// The cursor of the last line of a frame (the workload ends every page with
/// a checkpoint).
fn last_cursor(frame: &[u8]) -> String {
    let text = std::str::from_utf8(frame).expect("utf-8");
    let line = text.trim_end().rsplit('\n').next().expect("a line");
    let value: serde_json::Value = serde_json::from_str(line).expect("json");
    value["cursor"].as_str().expect("a checkpoint").to_owned()
}
