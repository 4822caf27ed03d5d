//! What a connection is doing, shared by its IO, its requests and the task
//! that closes it when it has waited too long.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a connection may wait, by what it waits for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub(super) header: Duration,
    pub(super) idle: Duration,
}

/// One connection's activity.
#[derive(Debug)]
pub(super) struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// Requests whose response is not finished (its body not dropped).
    in_flight: usize,
    /// When the connection was accepted, or its last response finished.
    since: Instant,
    /// Whether a response was finished: the connection is kept alive.
    answered: bool,
    /// When the first bytes of the next request arrived, if they did.
    head_started: Option<Instant>,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(State {
                in_flight: 0,
                since: Instant::now(),
                answered: false,
                head_started: None,
            }),
            changed: Notify::new(),
        })
    }

    /// When the connection is to be closed if nothing changes: never while
    /// a request is answered; a request head must arrive within the header
    /// timeout of the connection's start or of its first byte; a kept-alive
    /// connection may wait for the next request for the idle timeout.
    pub(super) fn deadline(&self, timeouts: Timeouts) -> Option<Instant> {
        let state = self.lock();
        if state.in_flight > 0 {
            return None;
        }
        if !state.answered {
            return Some(state.since + timeouts.header);
        }
        let idle = state.since + timeouts.idle;
        Some(match state.head_started {
            Some(started) => idle.min(started + timeouts.header),
            None => idle,
        })
    }

    /// Waits until the deadline may have moved.
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Bytes arrived from the peer.
    pub(super) fn bytes_read(&self) {
        let mut state = self.lock();
        if state.in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A request is being answered until the returned guard is dropped.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.lock().in_flight += 1;
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Marks a request as being answered; dropped with the response body.
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.since = Instant::now();
            state.answered = true;
            state.head_started = None;
        }
        drop(state);
        self.0.changed.notify_one();
    }
}
