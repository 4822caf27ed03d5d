//! Prints a feed's events as NDJSON, for people debugging a feed (what
//! kcat is for Kafka).
//!
//! ```text
//! cargo run --release --example tail -- URL --partitions N [--cursor P=VALUE]...
//!     [--page-size K] [--headers h1,h2] [--max-events M] [--state FILE]
//!     [--follow] [--bearer TOKEN]
//! ```
//!
//! Every event is one line on stdout, `{"partition":P,"headers":{...},"data":...}`
//! (`headers` omitted when empty). With `--cursor`, only the partitions
//! given are read, from the cursors given; otherwise every partition from
//! `_first`. Without `--follow`, it stops once a page brings nothing new.
//! `--max-events M` stops after M events, at a checkpoint: with a feed
//! that checkpoints after several events, the last group may go past M.
//!
//! An event is printed once a checkpoint of its partition covers it, so
//! the printed events and the cursors always match. With `--state FILE`,
//! the cursors are loaded at start and saved (written, then renamed into
//! place) after every page, once its events are printed: a restart resumes
//! without loss or duplicate. `SIGINT` and `SIGTERM` stop it after the page
//! in progress; only a `SIGKILL` between printing a page and saving its
//! cursors would print that page again on restart.
//!
//! Any error exits non-zero with a one-line message on stderr. Progress
//! goes to stderr when stderr is a terminal.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use tower::util::option_layer;
use tower_http::auth::AddAuthorizationLayer;
use zeroeventhub::client::{Client, HttpService};
use zeroeventhub::protocol::{Cursor, Event, FeedItem, FeedRequest, HeaderSelection, LineEncoder};

const USAGE: &str = "usage: tail URL --partitions N [--cursor P=VALUE]... [--page-size K] \
[--headers h1,h2] [--max-events M] [--state FILE] [--follow] [--bearer TOKEN]";

/// How long to wait before polling again, with `--follow`, when caught up.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

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
    bearer: Option<String>,
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
    match runtime.block_on(run(args)) {
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
    let mut bearer = None;

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
            "--bearer" => bearer = Some(value("--bearer")?),
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
        bearer,
    }))
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, Failure> {
    text.parse()
        .map_err(|_| format!("{what} must be a number, got {text:?}"))
}

async fn run(args: Args) -> Result<(), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop));

    let client = Client::builder(args.url.clone(), args.partitions)
        .layer(option_layer(
            args.bearer.as_deref().map(AddAuthorizationLayer::bearer),
        ))
        .build();

    let mut cursors: BTreeMap<u32, Cursor> = if args.cursors.is_empty() {
        (0..args.partitions).map(|p| (p, Cursor::first())).collect()
    } else {
        args.cursors.iter().cloned().collect()
    };
    if let Some(path) = &args.state {
        for (partition, cursor) in load_state(path, args.partitions)? {
            // The state holds progress; only the partitions asked for count.
            if let Some(slot) = cursors.get_mut(&partition) {
                *slot = cursor;
            }
        }
    }

    let mut tail = Tail {
        out: std::io::stdout().lock(),
        encoder: LineEncoder::new(HeaderSelection::All),
        line: BytesMut::new(),
        printed: 0,
        progress: std::io::stderr().is_terminal(),
        started: Instant::now(),
    };
    loop {
        let mut request = FeedRequest::new(args.partitions, cursors.clone())
            .map_err(|error| format!("invalid cursors: {error}"))?
            .with_headers(args.headers.clone());
        let mut hint = args.page_size.unwrap_or(0);
        if let Some(max) = args.max_events {
            let left = u32::try_from(max - tail.printed).unwrap_or(u32::MAX);
            hint = if hint == 0 { left } else { hint.min(left) };
        }
        request = request.with_page_size_hint(hint);

        let outcome = tail
            .page(&client, &request, &mut cursors, args.max_events)
            .await;
        // Whatever was printed is covered by these cursors, error or not.
        tail.out
            .flush()
            .map_err(|error| format!("cannot write to stdout: {error}"))?;
        if let Some(path) = &args.state {
            save_state(path, args.partitions, &cursors)?;
        }
        tail.report();
        let progressed = outcome?;

        if args.max_events.is_some_and(|max| tail.printed >= max) || stop.load(Ordering::SeqCst) {
            break;
        }
        if !progressed {
            if !args.follow {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
    }
    if tail.progress {
        eprintln!();
    }
    Ok(())
}

struct Tail<W> {
    out: W,
    encoder: LineEncoder,
    line: BytesMut,
    printed: u64,
    progress: bool,
    started: Instant,
}

impl<W: Write> Tail<W> {
    /// Reads one page, printing each partition's events when a checkpoint
    /// covers them and moving its cursor along. Whether a cursor moved.
    async fn page<S: HttpService + Clone>(
        &mut self,
        client: &Client<S>,
        request: &FeedRequest,
        cursors: &mut BTreeMap<u32, Cursor>,
        max_events: Option<u64>,
    ) -> Result<bool, Failure> {
        let mut lines = client
            .fetch(request)
            .await
            .map_err(|error| one_line(&error))?;
        let mut pending: HashMap<u32, Vec<Event>> = HashMap::new();
        let mut progressed = false;
        while let Some(item) = lines.next().await {
            match item.map_err(|error| one_line(&error))? {
                FeedItem::Event(event) => pending.entry(event.partition).or_default().push(event),
                FeedItem::Checkpoint(checkpoint) => {
                    let events = pending.remove(&checkpoint.partition).unwrap_or_default();
                    if max_events.is_some_and(|max| self.printed >= max) {
                        // Stop at a checkpoint, so that cursors and output
                        // agree; a checkpoint that covers more than is left
                        // is printed whole rather than never.
                        break;
                    }
                    for event in events {
                        self.print(event)?;
                    }
                    let cursor = cursors
                        .entry(checkpoint.partition)
                        .or_insert_with(Cursor::first);
                    progressed |= *cursor != checkpoint.cursor;
                    *cursor = checkpoint.cursor;
                }
            }
        }
        // Events after the last checkpoint of their partition will be
        // served again from the cursor: not printed now.
        Ok(progressed)
    }

    fn print(&mut self, event: Event) -> Result<(), Failure> {
        self.line.clear();
        self.encoder.encode(&FeedItem::Event(event), &mut self.line);
        self.out
            .write_all(&self.line)
            .map_err(|error| format!("cannot write to stdout: {error}"))?;
        self.printed += 1;
        Ok(())
    }

    fn report(&self) {
        if self.progress {
            let rate = self.printed as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            eprint!("\r{} events, {rate:.0} events/s", self.printed);
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
fn watch_signals(stop: Arc<AtomicBool>) {
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
        stop.store(true, Ordering::SeqCst);
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

/// Writes the state next to `path`, then renames it into place, so that
/// `path` always holds a whole state.
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
        std::fs::rename(&temporary, path)
    };
    write().map_err(|error| format!("cannot save state to {}: {error}", path.display()))
}
