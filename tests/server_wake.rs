//! The wake-up primitive of waiting readers: `AppendSignal` and its
//! listeners, on paused tokio time.
#![cfg(feature = "server")]

use std::cell::Cell;
use std::time::Duration;

use http::Extensions;
use tokio::time::Instant;
use zeroeventhub::protocol::{Cursor, FeedRequest};
use zeroeventhub::server::{AppendSignal, ReadContext, WaitEnd};

fn in_seconds(seconds: u64) -> Instant {
    Instant::now() + Duration::from_secs(seconds)
}

#[tokio::test(start_paused = true)]
async fn a_notification_between_listen_and_wait_is_not_missed() {
    let signal = AppendSignal::new(3);
    let mut listener = signal.listen([0, 2]);
    signal.notify(2);
    let start = Instant::now();
    assert_eq!(listener.wait(in_seconds(10)).await, WaitEnd::Appended);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Heard once: the next wait runs to its deadline.
    assert_eq!(listener.wait(in_seconds(10)).await, WaitEnd::Deadline);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn only_the_listened_partitions_end_a_wait() {
    let signal = AppendSignal::new(3);
    let mut listener = signal.listen([1]);
    signal.notify(0);
    signal.notify(2);
    signal.notify(7); // not a partition of the signal: ignored
    assert_eq!(listener.wait(in_seconds(1)).await, WaitEnd::Deadline);
}

#[tokio::test(start_paused = true)]
async fn a_notification_during_a_wait_ends_it() {
    let signal = AppendSignal::new(2);
    let notifier = signal.clone();
    let start = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        notifier.notify(1);
    });
    let mut listener = signal.listen([0, 1]);
    assert_eq!(listener.wait(in_seconds(30)).await, WaitEnd::Appended);
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn one_notification_wakes_every_listener_of_the_partition() {
    let signal = AppendSignal::new(2);
    let deadline = in_seconds(30);
    let waits: Vec<_> = (0..500)
        .map(|_| {
            let mut listener = signal.listen([1]);
            tokio::spawn(async move { listener.wait(deadline).await })
        })
        .collect();
    assert_eq!(signal.waiters(), 500);
    let start = Instant::now();
    tokio::task::yield_now().await;
    signal.notify(1);
    for wait in waits {
        assert_eq!(wait.await.unwrap(), WaitEnd::Appended);
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(signal.waiters(), 0);
}

#[tokio::test(start_paused = true)]
async fn notify_all_wakes_listeners_of_every_partition() {
    let signal = AppendSignal::new(4);
    let mut listeners: Vec<_> = (0..4).map(|partition| signal.listen([partition])).collect();
    signal.notify_all();
    for listener in &mut listeners {
        assert_eq!(listener.wait(in_seconds(1)).await, WaitEnd::Appended);
    }
}

#[tokio::test(start_paused = true)]
async fn a_poll_interval_bounds_each_wait() {
    let signal = AppendSignal::new(1).poll_every(Duration::from_millis(250));
    assert_eq!(signal.poll_interval(), Some(Duration::from_millis(250)));
    let mut listener = signal.listen([0]);
    let start = Instant::now();
    assert_eq!(listener.wait(in_seconds(1)).await, WaitEnd::PollDue);
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    // A deadline sooner than the interval is a deadline.
    let deadline = Instant::now() + Duration::from_millis(100);
    assert_eq!(listener.wait(deadline).await, WaitEnd::Deadline);
    // Notifications still end a wait at once.
    signal.notify(0);
    assert_eq!(listener.wait(in_seconds(1)).await, WaitEnd::Appended);
}

#[tokio::test(start_paused = true)]
async fn listeners_count_as_waiters_until_dropped() {
    let signal = AppendSignal::new(2);
    let first = signal.listen([0]);
    let second = signal.clone().listen([0, 1]);
    assert_eq!(signal.waiters(), 2);
    drop(first);
    assert_eq!(signal.waiters(), 1);
    drop(second);
    assert_eq!(signal.waiters(), 0);
}

#[tokio::test(start_paused = true)]
async fn until_news_looks_again_after_each_wake_up_until_there_is_news() {
    let signal = AppendSignal::new(1).poll_every(Duration::from_secs(1));
    let looks = Cell::new(0);
    let start = Instant::now();
    let found = signal
        .listen([0])
        .until_news(in_seconds(30), || {
            looks.set(looks.get() + 1);
            // Something appears by the fourth look, found by polling.
            std::future::ready(Ok::<_, ()>(looks.get() == 4))
        })
        .await;
    assert_eq!(found, Ok(true));
    assert_eq!(looks.get(), 4);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn until_news_gives_up_at_the_deadline_and_passes_errors_on() {
    let signal = AppendSignal::new(1);
    let start = Instant::now();
    let found = signal
        .listen([0])
        .until_news(in_seconds(7), || std::future::ready(Ok::<_, ()>(false)))
        .await;
    assert_eq!(found, Ok(false));
    assert_eq!(start.elapsed(), Duration::from_secs(7));

    let failed = signal
        .listen([0])
        .until_news(in_seconds(7), || {
            std::future::ready(Err::<bool, _>("store down"))
        })
        .await;
    assert_eq!(failed, Err("store down"));
    assert_eq!(signal.waiters(), 0);
}

#[tokio::test(start_paused = true)]
async fn wait_for_news_waits_only_when_the_request_may() {
    let signal = AppendSignal::new(2);
    let request = FeedRequest::new(2, [(1, Cursor::last())]).unwrap();
    let extensions = Extensions::new();
    let looks = Cell::new(0);
    let has_news = || {
        looks.set(looks.get() + 1);
        std::future::ready(Ok::<_, ()>(false))
    };

    let at_once = ReadContext::new(&request, 10, &extensions);
    assert_eq!(signal.wait_for_news(&at_once, has_news).await, Ok(false));
    assert_eq!(
        looks.get(),
        0,
        "a request that does not wait is not looked at"
    );

    let start = Instant::now();
    let notifier = signal.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        notifier.notify(0); // not requested
        tokio::time::sleep(Duration::from_secs(2)).await;
        notifier.notify(1);
    });
    let waiting = at_once.with_wait_deadline(Some(in_seconds(30)));
    let mut answers = [false, true].into_iter();
    let found = signal
        .wait_for_news(&waiting, || {
            std::future::ready(Ok::<_, ()>(answers.next().unwrap()))
        })
        .await;
    assert_eq!(found, Ok(true));
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}
