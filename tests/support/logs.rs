//! A log that a test's tracing subscriber writes to, for the test to read.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// What the subscriber wrote; clones share it.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    /// A log that the default `fmt` subscriber (info level, no colours)
    /// writes to on this thread until the guard is dropped.
    pub(crate) fn capture() -> (Log, tracing::subscriber::DefaultGuard) {
        let log = Log::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.writer())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (log, guard)
    }

    /// The subscriber's writer: `fmt().with_writer(log.writer())`.
    pub(crate) fn writer(&self) -> impl Fn() -> Log + Send + Sync + 'static {
        let log = self.clone();
        move || log.clone()
    }

    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// How many times `needle` was written.
    pub(crate) fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

impl Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
