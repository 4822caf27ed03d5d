//! The `LISTEN` connection of a PostgreSQL feed: one per feed, outside the
//! feed's pool, started by the first waiting request, turning the writers'
//! `NOTIFY` into wake-ups of the feed's [`AppendSignal`].

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::task::JoinHandle;

use super::pages::SharedPages;
use crate::outbox::TableName;
use crate::server::AppendSignal;

/// How often waiting requests look at the table while the `LISTEN`
/// connection is down (a bounded poll instead of notifications).
const POLL_WHILE_DOWN: Duration = Duration::from_millis(250);
/// The pause between two failed attempts to connect.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The feed's listener task, started once and stopped when the last clone
/// of the feed is dropped.
#[derive(Default)]
pub(crate) struct AppendListenerTask {
    task: Mutex<Option<JoinHandle<()>>>,
}

impl AppendListenerTask {
    /// Starts the task if it is not running: it listens on `table`'s
    /// channel with a connection opened with `pool`'s options (outside the
    /// pool) and notifies `signal`; when the
    /// connection is lost, `pages` forgets the cursors it handed out.
    pub(crate) fn ensure_started(
        &self,
        pool: &PgPool,
        table: &TableName,
        signal: &AppendSignal,
        pages: &Arc<SharedPages>,
    ) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_none_or(JoinHandle::is_finished) {
            *task = Some(tokio::spawn(listen(
                pool.clone(),
                table.as_str().to_owned(),
                signal.clone(),
                Arc::clone(pages),
            )));
        }
    }
}

impl Drop for AppendListenerTask {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.take() {
            task.abort();
        }
    }
}

/// Wraps the task in the feed's shared state.
pub(crate) fn shared() -> Arc<AppendListenerTask> {
    Arc::default()
}

/// Listens until aborted: notifications wake their partition; a lost
/// connection is replaced, and every waiting request looks again once it
/// is (notifications sent while it was down are lost); while there is
/// none, waiting requests look every [`POLL_WHILE_DOWN`]. A lost
/// connection may be a failover to a server that lacks the latest commits:
/// the cursors the feed remembers handing out are proved again.
async fn listen(pool: PgPool, channel: String, signal: AppendSignal, pages: Arc<SharedPages>) {
    // The connection is the feed's own, opened with the pool's options: a
    // slot of the pool held for good would leave a pool of one nothing to
    // read with.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(pool.connect_options().as_ref().clone());
    while !pool.is_closed() {
        let connected = polling(&signal, async {
            let mut listener = PgListener::connect_with(&own).await?;
            listener.ignore_pool_close_event(true);
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        })
        .await;
        match connected {
            Ok(mut listener) => {
                // Whatever was committed before `LISTEN` took effect.
                signal.notify_all();
                // With eager reconnection off, a lost connection ends the
                // loop (`Ok(None)`) instead of reconnecting unseen.
                listener.eager_reconnect(false);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => match notification.payload().parse() {
                            Ok(partition) => signal.notify(partition),
                            Err(_) => signal.notify_all(),
                        },
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!(%error, channel, "the LISTEN connection failed");
                            break;
                        }
                    }
                }
                pages.forget_cursors();
                signal.notify_all();
            }
            Err(error) => {
                tracing::warn!(%error, channel, "cannot LISTEN; waiting requests poll");
                polling(&signal, tokio::time::sleep(RECONNECT_PAUSE)).await;
            }
        }
    }
}

/// Runs `work`, waking every waiting request every [`POLL_WHILE_DOWN`]
/// meanwhile.
async fn polling<F: Future>(signal: &AppendSignal, work: F) -> F::Output {
    let mut work = pin!(work);
    loop {
        match tokio::time::timeout(POLL_WHILE_DOWN, &mut work).await {
            Ok(output) => return output,
            Err(_) => signal.notify_all(),
        }
    }
}
