//! Prints a feed's events as NDJSON, for people debugging a feed (what
//! kcat is for Kafka).
//!
//! ```text
//! cargo run --release --example tail -- URL --partitions N [--cursor P=VALUE]...
//!     [--page-size K] [--headers h1,h2] [--max-events M] [--state FILE]
//!     [--follow] [--wait SECS] [--bearer TOKEN] [--http2] [--page-timeout SECS]
//!     [--max-buffered-bytes B] [--max-line-bytes B]
//! ```
//!
//! Every event is one line on stdout, `{"partition":P,"headers":{...},"data":...}`
//! (`headers` omitted when empty). With `--cursor`, only the partitions
//! given are read, from the cursors given; otherwise every partition from
//! `_first`. Without `--follow`, it stops at the first page that brings no
//! event. `--max-events M` stops after M events, at a checkpoint: with a
//! feed that checkpoints after several events, the last group may go past M.
//!
//! An event is printed once a checkpoint of its partition covers it, so
//! the printed events and the cursors always match. Output is buffered and
//! written at checkpoints, once 64 KiB are waiting, and at the end of every
//! page: never part of a checkpoint's events. With `--state FILE`, the
//! cursors are loaded at start and saved (written, then renamed into place,
//! then the folder synced) after every page, once its events are written: a
//! restart resumes without loss or duplicate. The file keeps the cursors of
//! partitions a run did not read, so a run with `--cursor` leaves the
//! others' progress alone; for the partitions it reads, the file's cursor
//! wins over `--cursor`. `SIGINT` and `SIGTERM` stop it after the page in
//! progress; only a `SIGKILL` between writing a page and saving its cursors
//! would print that page again on restart.
//!
//! With `--follow`, requests ask the feed to hold them up to `--wait`
//! seconds (default 20; 0 turns it off) until something is appended (long
//! polling): an event is printed within milliseconds of its append. A
//! `SIGINT` or `SIGTERM` during such a wait stops at once.
//!
//! The pace is set in one place (`next_step`): a page that brought events
//! is followed at once by the next; after a page without events (caught up,
//! even if the feed moved its cursor past rows it does not show), `--follow`
//! asks again no sooner than 500 ms after it asked. A feed that held the
//! request took longer than that, so it asks again at once; a feed that
//! ignores `wait` (the reference implementations) answers at once, and is
//! then asked every 500 ms, never in a hot loop. Moved cursors are kept all
//! the same.
//! With `--follow`, a failure of the connection or the server (no answer,
//! a broken body, 5xx, 429) does not end the run: it says so in one line
//! on stderr and tries again after 1 s, doubling up to 30 s (or the
//! `Retry-After` asked for, up to 30 s), back to 1 s after a page succeeds.
//!
//! `--http2` speaks HTTP/2 without asking first (prior knowledge), for a
//! feed behind an HTTP/2-only server such as tonic's default. A page must
//! end within `--page-timeout` (default 300 s), however steadily its bytes
//! drip in. At most `--max-buffered-bytes` (default 64 MiB) of events may
//! wait for their checkpoint: past that, tail exits non-zero, `--follow`
//! or not, since asking again would bring the same page. A line longer than
//! `--max-line-bytes` (default 4 MiB, the protocol's `MAX_LINE_BYTES`, which
//! the crate's writers never exceed) ends the run the same way.
//!
//! Any other error exits non-zero with a one-line message on stderr.
//! Progress goes to stderr when stderr is a terminal.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use tokio::sync::watch;
use tower::util::option_layer;
use tower_http::auth::AddAuthorizationLayer;
use zeroeventhub::client::{Client, Error, HttpService};
use zeroeventhub::protocol::{Cursor, FeedItem, FeedRequest, HeaderSelection, LineEncoder};

const USAGE: &str = "usage: tail URL --partitions N [--cursor P=VALUE]... [--page-size K] \
[--headers h1,h2] [--max-events M] [--state FILE] [--follow] [--wait SECS] [--bearer TOKEN] \
[--http2] [--page-timeout SECS] [--max-buffered-bytes B] [--max-line-bytes B]";

/// The least time between two requests, with `--follow`, when caught up.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The long-polling wait asked for with `--follow`, unless `--wait` says.
const DEFAULT_WAIT: Duration = Duration::from_secs(20);

/// The first pause after a transport failure, with `--follow`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The longest pause after transport failures, with `--follow`.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// How much output is buffered before it is written, at a checkpoint.
const OUTPUT_CHUNK: usize = 64 * 1024;

#[derive(Debug)]
struct Args {
    url: http::Uri,
    partitions: u32,
    cursors: Vec<(u32, Cursor)>,
    page_size: Option<u32>,
    headers: HeaderSelection,
    max_events: Option<u64>,
    state: Option<PathBuf>,
    follow: bool,
    wait: Duration,
    bearer: Option<String>,
    http2: bool,
    page_timeout: Option<Duration>,
    max_buffered_bytes: Option<usize>,
    max_line_bytes: Option<usize>,
}

/// A one-line error for stderr.
type Failure = String;

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("tail: {message} (see --help)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tail: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    // A spawned task, not the `block_on` future itself: waking the latter
    // costs a system call each time, and a page wakes it once per chunk.
    let outcome = runtime.block_on(async {
        tokio::spawn(run(args))
            .await
            .unwrap_or_else(|error| Err(format!("stopped: {error}")))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tail: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, Failure> {
    let mut url = None;
    let mut partitions = None;
    let mut cursors = Vec::new();
    let mut page_size = None;
    let mut headers = HeaderSelection::None;
    let mut max_events = None;
    let mut state = None;
    let mut follow = false;
    let mut wait = None;
    let mut bearer = None;
    let mut http2 = false;
    let mut page_timeout = None;
    let mut max_buffered_bytes = None;
    let mut max_line_bytes = None;

    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--partitions" => partitions = Some(number(&value("--partitions")?, "--partitions")?),
            "--cursor" => {
                let given = value("--cursor")?;
                let (partition, cursor) = given
                    .split_once('=')
                    .ok_or_else(|| format!("--cursor must be P=VALUE, got {given:?}"))?;
                let partition = number(partition, "--cursor's partition")?;
                let cursor =
                    Cursor::new(cursor).map_err(|error| format!("--cursor {given:?}: {error}"))?;
                if cursors.iter().any(|(given, _)| *given == partition) {
                    return Err(format!("--cursor gives partition {partition} twice"));
                }
                cursors.push((partition, cursor));
            }
            "--page-size" => page_size = Some(number(&value("--page-size")?, "--page-size")?),
            "--headers" => {
                let names = value("--headers")?;
                headers = HeaderSelection::only(names.split(',').filter(|name| !name.is_empty()))
                    .map_err(|error| format!("--headers: {error}"))?;
            }
            "--max-events" => {
                max_events = Some(number(&value("--max-events")?, "--max-events")?);
            }
            "--state" => state = Some(PathBuf::from(value("--state")?)),
            "--follow" => follow = true,
            "--wait" => wait = Some(Duration::from_secs(number(&value("--wait")?, "--wait")?)),
            "--bearer" => bearer = Some(value("--bearer")?),
            "--http2" => http2 = true,
            "--page-timeout" => {
                let seconds: f64 = number(&value("--page-timeout")?, "--page-timeout")?;
                page_timeout = Some(
                    Duration::try_from_secs_f64(seconds)
                        .map_err(|error| format!("--page-timeout {seconds}: {error}"))?,
                );
            }
            "--max-buffered-bytes" => {
                let given = value("--max-buffered-bytes")?;
                max_buffered_bytes = Some(number(&given, "--max-buffered-bytes")?);
            }
            "--max-line-bytes" => {
                let given = value("--max-line-bytes")?;
                max_line_bytes = Some(number(&given, "--max-line-bytes")?);
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ if url.is_none() => {
                url = Some(
                    arg.parse()
                        .map_err(|error| format!("invalid URL {arg:?}: {error}"))?,
                );
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    Ok(Some(Args {
        url: url.ok_or("the feed URL is missing")?,
        partitions: partitions.ok_or("--partitions is missing")?,
        cursors,
        page_size,
        headers,
        max_events,
        state,
        follow,
        wait: wait.unwrap_or(if follow { DEFAULT_WAIT } else { Duration::ZERO }),
        bearer,
        http2,
        page_timeout,
        max_buffered_bytes,
        max_line_bytes,
    }))
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, Failure> {
    text.parse()
        .map_err(|_| format!("{what} must be a number, got {text:?}"))
}

async fn run(args: Args) -> Result<(), Failure> {
    let (stop_sender, mut stop) = watch::channel(false);
    watch_signals(stop_sender);

    let mut builder = Client::builder(args.url.clone(), args.partitions);
    if args.http2 {
        builder = builder.http2_prior_knowledge();
    }
    if let Some(timeout) = args.page_timeout {
        builder = builder.page_timeout(timeout);
    }
    if let Some(max) = args.max_line_bytes {
        builder = builder.max_line_length(max);
    }
    if let Some(max) = args.max_buffered_bytes {
        builder = builder.max_buffered_bytes(max);
    }
    let client = builder
        .layer(option_layer(
            args.bearer.as_deref().map(AddAuthorizationLayer::bearer),
        ))
        .build();

    // Every partition's saved progress, kept whole when saved again.
    let mut saved = match &args.state {
        Some(path) => load_state(path, args.partitions)?,
        None => BTreeMap::new(),
    };
    let asked: Vec<(u32, Cursor)> = if args.cursors.is_empty() {
        (0..args.partitions).map(|p| (p, Cursor::first())).collect()
    } else {
        args.cursors.clone()
    };
    let mut cursors: BTreeMap<u32, Cursor> = asked
        .into_iter()
        .map(|(partition, given)| {
            let cursor = saved.get(&partition).cloned().unwrap_or(given);
            (partition, cursor)
        })
        .collect();

    let mut tail = Tail {
        out: std::io::stdout(),
        encoder: LineEncoder::new(HeaderSelection::All),
        buffer: BytesMut::with_capacity(OUTPUT_CHUNK + 4096),
        printed: 0,
        progress: std::io::stderr().is_terminal(),
        started: Instant::now(),
    };
    let mut backoff = Backoff::new();
    loop {
        let mut request = FeedRequest::new(args.partitions, cursors.clone())
            .map_err(|error| format!("invalid cursors: {error}"))?
            .with_headers(args.headers.clone())
            .with_wait(args.wait);
        let mut hint = args.page_size.unwrap_or(0);
        if let Some(max) = args.max_events {
            let left = u32::try_from(max - tail.printed).unwrap_or(u32::MAX);
            hint = if hint == 0 { left } else { hint.min(left) };
        }
        request = request.with_page_size_hint(hint);

        let asked_at = Instant::now();
        let outcome = tail
            .page(&client, &request, &mut cursors, args.max_events, &mut stop)
            .await;
        // Whatever was printed is covered by these cursors, error or not.
        tail.flush()?;
        if let Some(path) = &args.state {
            saved.extend(cursors.iter().map(|(p, c)| (*p, c.clone())));
            save_state(path, args.partitions, &saved)?;
        }
        tail.report();

        let step = match outcome {
            Ok(events) => {
                backoff.reset();
                if args.max_events.is_some_and(|max| tail.printed >= max) {
                    break;
                }
                next_step(events, args.follow, asked_at)
            }
            Err(PageError::Feed(error)) if args.follow && is_transport_failure(&error) => {
                let delay = backoff.after(&error);
                tail.end_progress_line();
                eprintln!(
                    "tail: {}; trying again in {} s",
                    one_line(&error),
                    delay.as_secs_f64()
                );
                Step::AskAfter(delay)
            }
            Err(PageError::Feed(error)) => return Err(one_line(&error)),
            Err(PageError::Output(message)) => return Err(message),
        };
        let pause = match step {
            Step::Stop => break,
            Step::AskAfter(pause) => pause,
        };
        if *stop.borrow() {
            break;
        }
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
        }
    }
    tail.end_progress_line();
    Ok(())
}

/// What the loop does after a page.
enum Step {
    /// Ask for the next page after this pause (none: at once).
    AskAfter(Duration),
    /// Stop: caught up, and not following.
    Stop,
}

/// The pace of the loop, in one place: after a page that printed `events`,
/// asked at `asked_at`, whether and when to ask again. A feed may move its
/// cursors on a page without events (it skipped rows its consumers may not
/// see), so the pace follows the events, never the cursors: such a page
/// counts as caught up. Caught up, the next request goes a poll interval
/// after this one: at once after a wait the feed held, a whole interval
/// after a feed that ignores `wait` answered at once.
fn next_step(events: u64, follow: bool, asked_at: Instant) -> Step {
    if events > 0 {
        // More may be waiting right behind these.
        Step::AskAfter(Duration::ZERO)
    } else if follow {
        Step::AskAfter(POLL_INTERVAL.saturating_sub(asked_at.elapsed()))
    } else {
        Step::Stop
    }
}

/// Whether `error` is a failure of the connection or of the server, worth
/// trying again later, rather than a broken feed or a wrong request.
fn is_transport_failure(error: &Error) -> bool {
    error.is_connect()
        || error.is_request()
        || error.is_timeout()
        || error.is_truncated()
        || error.status().is_some_and(|status| {
            status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS
        })
}

/// The pause before trying again after a transport failure, with
/// `--follow`: doubling from [`FIRST_RETRY`] up to [`MAX_RETRY`].
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: FIRST_RETRY }
    }

    /// The pause after `error`: the current step, or the `Retry-After` the
    /// feed asked for when longer, never more than [`MAX_RETRY`].
    fn after(&mut self, error: &Error) -> Duration {
        let delay = self.next.max(error.retry_after().unwrap_or_default());
        self.next = (self.next * 2).min(MAX_RETRY);
        delay.min(MAX_RETRY)
    }

    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

/// A partition's events not yet covered by a checkpoint, encoded as they
/// will be printed (their buffers are kept from one checkpoint to the next).
#[derive(Default)]
struct Pending {
    lines: BytesMut,
    events: u64,
}

impl Pending {
    /// The entry of `partition` in `pending`, sorted by partition.
    fn of(pending: &mut [(u32, Pending)], partition: u32) -> Option<&mut Pending> {
        let slot = pending.binary_search_by_key(&partition, |(p, _)| *p).ok()?;
        Some(&mut pending[slot].1)
    }
}

/// Why a page ended early.
enum PageError {
    /// Fetching or reading the page failed.
    Feed(Error),
    /// Writing to stdout failed.
    Output(Failure),
}

struct Tail<W> {
    out: W,
    encoder: LineEncoder,
    /// Events covered by a checkpoint, not yet written.
    buffer: BytesMut,
    printed: u64,
    progress: bool,
    started: Instant,
}

impl<W: Write> Tail<W> {
    /// Reads one page, printing each partition's events when a checkpoint
    /// covers them and moving its cursor along. How many events it printed.
    /// A `stop` before the page's head arrives (while the feed holds a
    /// waiting request) ends it at once, with nothing printed.
    async fn page<S: HttpService + Clone>(
        &mut self,
        client: &Client<S>,
        request: &FeedRequest,
        cursors: &mut BTreeMap<u32, Cursor>,
        max_events: Option<u64>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<u64, PageError> {
        let mut lines = tokio::select! {
            fetched = client.fetch(request) => fetched.map_err(PageError::Feed)?,
            Ok(_) = stop.wait_for(|stopped| *stopped) => return Ok(0),
        };
        // Each requested partition's events since its last checkpoint,
        // encoded; by partition, as the decoder lets through only these.
        let mut pending: Vec<(u32, Pending)> = request
            .cursors()
            .iter()
            .map(|(partition, _)| (*partition, Pending::default()))
            .collect();
        let printed_before = self.printed;
        while let Some(item) = lines.next().await {
            match item.map_err(PageError::Feed)? {
                FeedItem::Event(event) => {
                    if let Some(waiting) = Pending::of(&mut pending, event.partition) {
                        self.encoder
                            .encode(&FeedItem::Event(event), &mut waiting.lines);
                        waiting.events += 1;
                    }
                }
                FeedItem::Checkpoint(checkpoint) => {
                    if max_events.is_some_and(|max| self.printed >= max) {
                        // Stop at a checkpoint, so that cursors and output
                        // agree; a checkpoint that covers more than is left
                        // is printed whole rather than never.
                        break;
                    }
                    if let Some(covered) = Pending::of(&mut pending, checkpoint.partition) {
                        self.buffer.extend_from_slice(&covered.lines);
                        self.printed += covered.events;
                        covered.lines.clear();
                        covered.events = 0;
                    }
                    cursors.insert(checkpoint.partition, checkpoint.cursor);
                    if self.buffer.len() >= OUTPUT_CHUNK {
                        self.write_out().map_err(PageError::Output)?;
                    }
                }
            }
        }
        // Events after the last checkpoint of their partition will be
        // served again from the cursor: not printed now.
        Ok(self.printed - printed_before)
    }

    /// Writes the buffered events out.
    fn write_out(&mut self) -> Result<(), Failure> {
        self.out
            .write_all(&self.buffer)
            .map_err(|error| format!("cannot write to stdout: {error}"))?;
        self.buffer.clear();
        Ok(())
    }

    /// Writes the buffered events out and flushes stdout.
    fn flush(&mut self) -> Result<(), Failure> {
        self.write_out()?;
        self.out
            .flush()
            .map_err(|error| format!("cannot write to stdout: {error}"))
    }

    fn report(&self) {
        if self.progress {
            let rate = self.printed as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            eprint!("\r{} events, {rate:.0} events/s", self.printed);
        }
    }

    /// Ends the progress line, so that what comes next on stderr has a
    /// line of its own.
    fn end_progress_line(&self) {
        if self.progress {
            eprintln!();
        }
    }
}

/// The error and its causes, on one line.
fn one_line(error: &dyn std::error::Error) -> Failure {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message.replace('\n', " ")
}

/// Stops the loop after the page in progress on `SIGINT` or `SIGTERM`.
fn watch_signals(stop: watch::Sender<bool>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        stop.send_replace(true);
    });
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    partitions: u32,
    cursors: BTreeMap<u32, Cursor>,
}

fn load_state(path: &Path, partitions: u32) -> Result<BTreeMap<u32, Cursor>, Failure> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let state: State = serde_json::from_slice(&text)
        .map_err(|error| format!("{} is not a tail state file: {error}", path.display()))?;
    if state.partitions != partitions {
        return Err(format!(
            "{} is for a feed of {} partitions, not {partitions}",
            path.display(),
            state.partitions
        ));
    }
    Ok(state.cursors)
}

/// Writes the state next to `path`, renames it into place, then syncs the
/// folder, so that `path` always holds a whole state and a power cut
/// cannot bring an older one back.
fn save_state(
    path: &Path,
    partitions: u32,
    cursors: &BTreeMap<u32, Cursor>,
) -> Result<(), Failure> {
    let state = State {
        partitions,
        cursors: cursors.clone(),
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        serde_json::to_writer(&mut file, &state)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        sync_folder_of(path)
    };
    write().map_err(|error| format!("cannot save state to {}: {error}", path.display()))
}

/// Makes a rename in the folder of `path` durable (a folder cannot be
/// opened as a file for this outside Unix).
fn sync_folder_of(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let folder = match path.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder,
            _ => Path::new("."),
        };
        std::fs::File::open(folder)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
