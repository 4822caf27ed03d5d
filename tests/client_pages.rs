//! Pages as a consumer loop uses them: what moves, what to store, when to
//! ask again, and the next request.
#![cfg(feature = "client")]

use std::time::Duration;

use zeroeventhub::client::Page;
use zeroeventhub::protocol::{
    Checkpoint, Cursor, Event, FeedItem, FeedRequest, HeaderSelection, RawJson,
};

fn event(partition: u32, n: u32) -> FeedItem {
    FeedItem::Event(Event::new(partition, RawJson::from_serialize(&n).unwrap()))
}

fn checkpoint(partition: u32, cursor: &str) -> FeedItem {
    FeedItem::Checkpoint(Checkpoint::new(partition, Cursor::new(cursor).unwrap()))
}

fn cursors(pairs: &[(u32, &str)]) -> Vec<(u32, Cursor)> {
    pairs
        .iter()
        .map(|(partition, cursor)| (*partition, Cursor::new(cursor).unwrap()))
        .collect()
}

#[test]
fn a_cursor_moved_on_any_partition_is_progress() {
    let request = FeedRequest::new(3, cursors(&[(0, "a0"), (1, "b0"), (2, "c0")])).unwrap();
    // Only partition 0 moves; the later checkpoints repeat their cursors.
    let page = Page::new(
        &request,
        [
            checkpoint(0, "a1"),
            checkpoint(1, "b0"),
            checkpoint(2, "c0"),
        ],
    );
    assert!(page.made_progress());
    // Only the last partition moves.
    let page = Page::new(
        &request,
        [
            checkpoint(0, "a0"),
            checkpoint(1, "b0"),
            checkpoint(2, "c1"),
        ],
    );
    assert!(page.made_progress());
    let page = Page::new(
        &request,
        [
            checkpoint(0, "a0"),
            checkpoint(1, "b0"),
            checkpoint(2, "c0"),
        ],
    );
    assert!(!page.made_progress());
}

#[test]
fn a_moved_cursor_without_events_is_stored_but_not_a_reason_to_hurry() {
    let request = FeedRequest::new(2, cursors(&[(0, "10"), (1, "20")])).unwrap();
    // A feed that skipped rows its consumer may not see.
    let page = Page::new(&request, [checkpoint(0, "15"), checkpoint(1, "27")]);
    assert!(page.made_progress());
    assert!(!page.has_new_events());
    assert_eq!(page.next_cursors(), cursors(&[(0, "15"), (1, "27")]));

    // Events after the last checkpoint come again: nothing new to commit.
    let page = Page::new(&request, [checkpoint(0, "15"), event(0, 16)]);
    assert!(!page.has_new_events());

    let page = Page::new(&request, [event(1, 21), checkpoint(1, "21")]);
    assert!(page.has_new_events());
}

#[test]
fn a_polling_loop_paces_a_feed_that_moves_cursors_without_events() {
    // A feed that answers every request with a moved cursor and no event:
    // a loop that asked again whenever a cursor moved would never rest.
    let mut request = FeedRequest::new(1, cursors(&[(0, "0")])).unwrap();
    let mut rests = 0;
    for answer in 1..=20 {
        let page = Page::new(&request, [checkpoint(0, &answer.to_string())]);
        if !page.has_new_events() {
            rests += 1; // where the loop sleeps
        }
        request = page.next_request(&request);
    }
    assert_eq!(rests, 20);
    assert_eq!(request.cursor(0), Some(&Cursor::new("20").unwrap()));
}

#[test]
fn into_events_gives_the_covered_events() {
    let request = FeedRequest::new(1, cursors(&[(0, "0")])).unwrap();
    let page = Page::new(
        &request,
        [event(0, 1), event(0, 2), checkpoint(0, "2"), event(0, 3)],
    );
    let covered = page.events().to_vec();
    let events = page.into_events();
    assert_eq!(events, covered);
    assert_eq!(events.len(), 2);
}

#[test]
fn the_next_request_keeps_the_previous_ones_hints_and_headers() {
    let request = FeedRequest::new(2, cursors(&[(0, "a"), (1, "b")]))
        .unwrap()
        .with_page_size_hint(77)
        .with_headers(HeaderSelection::only(["trace", "kind"]).unwrap());
    let page = Page::new(&request, [event(1, 1), checkpoint(1, "c")]);
    let next = page.next_request(&request);
    assert_eq!(next.headers(), request.headers());
    assert_eq!(next.page_size_hint(), Some(77));
    assert_eq!(next.cursors(), cursors(&[(0, "a"), (1, "c")]));
    assert_eq!(
        next.to_query(),
        "n=2&cursor0=a&cursor1=c&pagesizehint=77&headers=trace,kind"
    );

    let all = request.clone().with_headers(HeaderSelection::All);
    assert_eq!(page.next_request(&all).headers(), &HeaderSelection::All);
    assert_eq!(next.wait(), None);
}

#[test]
fn the_next_request_keeps_the_wait() {
    let request = FeedRequest::new(2, cursors(&[(0, "a"), (1, "b")]))
        .unwrap()
        .with_headers(HeaderSelection::All)
        .with_wait(Duration::from_secs(20));
    // Moved or not, the next request waits as the previous one did.
    for page in [
        Page::new(&request, [event(0, 1), checkpoint(0, "c")]),
        Page::new(&request, []),
    ] {
        let next = page.next_request(&request);
        assert_eq!(next.wait(), Some(Duration::from_secs(20)));
        assert_eq!(next.headers(), &HeaderSelection::All);
        assert!(
            next.to_query().ends_with("&headers=_all&wait=20"),
            "{}",
            next.to_query()
        );
    }
}

#[test]
fn a_cursor_shows_and_lends_its_own_text() {
    let cursor = Cursor::new("a1:b=2").unwrap();
    assert_eq!(cursor.to_string(), "a1:b=2");
    assert_eq!(format!("[{cursor}]"), "[a1:b=2]");
    let text: &str = cursor.as_ref();
    assert_eq!(text, "a1:b=2");
    assert_eq!(Cursor::first().as_ref() as &str, "_first");
    // Debug quotes the text, so that an empty-looking cursor still shows.
    assert_eq!(format!("{cursor:?}"), r#""a1:b=2""#);
}
