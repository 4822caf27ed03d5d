//! The long-polling step of the database feeds: look at the table, wait for
//! the feed's [`AppendSignal`], look again, with a bounded backoff when a
//! look finds rows that are committed but not yet servable.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::server::{AppendSignal, ReadContext, ReadError, WaitEnd};

/// What a look past the request's positions found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// A servable row: read the page.
    News,
    /// Committed rows, none servable yet (PostgreSQL: above the horizon of
    /// transactions still running): look again soon, without a wake-up.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Pending,
    /// Nothing past the positions.
    Nothing,
}

/// The first re-look after a pending look or an empty wake-up.
const FIRST_RELOOK: Duration = Duration::from_millis(1);
/// The longest pause between two re-looks: a row waiting for the horizon is
/// served at most this long after it becomes servable, and a waiting
/// request costs at most one query per this interval while it waits so.
pub(crate) const MAX_RELOOK: Duration = Duration::from_millis(50);
/// Re-looks after a wake-up that found nothing: SQLite's commit hook runs
/// just before the commit is visible to other connections.
const RELOOKS_AFTER_WAKE_UP: u32 = 5;

/// Waits, if `context` asks to, until `look` finds news, or the deadline.
/// Looks first; then waits for `signal` (which wakes it at every append to
/// one of the request's partitions, or every poll interval), and looks
/// again. A pending look, or a wake-up whose look finds nothing, is looked
/// at again after a backoff of 1 ms doubling to [`MAX_RELOOK`], never at
/// once: a row that is not yet servable never makes a reader spin.
pub(crate) async fn wait_for_rows<F, Fut>(
    signal: &AppendSignal,
    context: &ReadContext<'_>,
    mut look: F,
) -> Result<(), ReadError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Look, ReadError>>,
{
    let Some(deadline) = context.wait_deadline() else {
        return Ok(());
    };
    let partitions = context.request().cursors().iter().map(|(p, _)| *p);
    let mut listener = signal.listen(partitions);
    let mut relook = FIRST_RELOOK;
    let mut relooks_left = 0;
    loop {
        let again = match look().await? {
            Look::News => return Ok(()),
            Look::Pending => true,
            Look::Nothing if relooks_left > 0 => {
                relooks_left -= 1;
                true
            }
            Look::Nothing => false,
        };
        let until = if again {
            let until = deadline.min(Instant::now() + relook);
            relook = (relook * 2).min(MAX_RELOOK);
            until
        } else {
            relook = FIRST_RELOOK;
            deadline
        };
        match listener.wait(until).await {
            WaitEnd::Deadline if until >= deadline => return Ok(()),
            WaitEnd::Appended => {
                relook = FIRST_RELOOK;
                relooks_left = RELOOKS_AFTER_WAKE_UP;
            }
            WaitEnd::Deadline | WaitEnd::PollDue => {}
        }
    }
}
