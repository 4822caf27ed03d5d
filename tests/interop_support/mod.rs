//! What the interoperability tests share: a Python with the reference
//! implementation (`zeroeventhub` 0.2.4 from PyPI) in a cached virtual
//! environment, the reference server and client as child processes, and the
//! data model both sides serve and check against.
//!
//! The interpreter is, in this order: the one `ZEH_PYTHON` names; the newest
//! 3.13 under `pyenv root` (or `$PYENV_ROOT`, or `~/.pyenv`, when pyenv is
//! not on the `PATH`); `python3.13` on the `PATH`. Without one the tests
//! fail (they are never skipped) and say how to provide one. The virtual
//! environment is created once under `target/tmp/interop-venv/`, keyed by the
//! interpreter and `tests/interop/requirements.txt`, so that editing the pins
//! builds a fresh one. Every child process is killed when its guard drops,
//! whether the test passed or not, and listens on a port it picked itself, so
//! tests run in parallel.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub(crate) mod model;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use model::Received;

/// The environment variable that names the Python interpreter to use.
pub(crate) const PYTHON_ENV: &str = "ZEH_PYTHON";

/// The oldest Python the reference package supports.
const MIN_PYTHON: (u32, u32) = (3, 13);

/// How long a child may take to start listening. Generous: a loaded 2-core
/// machine can take seconds to import FastAPI.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The stderr kept of each child, to show when a test fails.
const STDERR_KEPT: usize = 64 * 1024;

const HOW_TO_PROVIDE: &str = "the interoperability tests need Python 3.13 or newer \
    (the reference package zeroeventhub 0.2.4 requires it). Provide one by setting \
    ZEH_PYTHON=/path/to/python3.13, by `pyenv install 3.13`, or by putting python3.13 \
    on the PATH";

/// The folder of the Python side: scripts, pins and shared data.
pub(crate) fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// The Python of the virtual environment with the reference package,
/// created on first use.
pub(crate) fn venv_python() -> &'static Path {
    static VENV_PYTHON: OnceLock<PathBuf> = OnceLock::new();
    VENV_PYTHON.get_or_init(|| {
        let (python, version) = find_python();
        ensure_venv(&python, &version)
    })
}

/// Finds the base interpreter and its version (`3.13.0`).
fn find_python() -> (PathBuf, String) {
    if let Some(path) = std::env::var_os(PYTHON_ENV) {
        // An interpreter named explicitly that does not fit is an error, not
        // a reason to quietly use another.
        let path = PathBuf::from(path);
        return match python_version(&path) {
            Some((version, true)) => (path, version),
            Some((version, false)) => {
                panic!(
                    "{PYTHON_ENV}={} is Python {version}; {HOW_TO_PROVIDE}",
                    path.display()
                )
            }
            None => panic!(
                "{PYTHON_ENV}={} does not run; {HOW_TO_PROVIDE}",
                path.display()
            ),
        };
    }
    let mut candidates = pyenv_pythons();
    candidates.push(PathBuf::from("python3.13"));
    for candidate in &candidates {
        if let Some((version, true)) = python_version(candidate) {
            return (candidate.clone(), version);
        }
    }
    panic!(
        "no Python found (tried {PYTHON_ENV}, then {}); {HOW_TO_PROVIDE}",
        candidates
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The 3.13 interpreters pyenv has installed, newest first.
fn pyenv_pythons() -> Vec<PathBuf> {
    let root = Command::new("pyenv")
        .arg("root")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        // Where `pyenv root` would point when pyenv itself is not on the PATH.
        .or_else(|| std::env::var_os("PYENV_ROOT").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pyenv")));
    let Some(root) = root else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(root.join("versions")) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let parts: Vec<u32> = name
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (parts.len() == 3 && parts[..2] == [3, 13])
                .then(|| (parts, entry.path().join("bin/python")))
        })
        .collect();
    versions.sort();
    versions.into_iter().rev().map(|(_, path)| path).collect()
}

/// The interpreter's version, and whether it is recent enough; `None` when
/// it does not run.
fn python_version(python: &Path) -> Option<(String, bool)> {
    let output = Command::new(python)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    let major_minor = (parts.next()??, parts.next()??);
    Some((version, major_minor >= MIN_PYTHON))
}

/// Creates the virtual environment if it is not there yet, and returns its
/// interpreter.
///
/// Several test binaries may start at once: each builds in a folder of its
/// own and renames it into place, which is atomic; the loser of a race
/// throws its copy away. A venv's own interpreter finds its packages
/// relative to itself, so the move is safe for the way it is used here
/// (always `bin/python`, never the activate scripts).
fn ensure_venv(python: &Path, version: &str) -> PathBuf {
    let requirements = interop_dir().join("requirements.txt");
    let pins = fs::read(&requirements)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", requirements.display()));
    let key = fnv1a(&[
        &pins,
        python.as_os_str().as_encoded_bytes(),
        version.as_bytes(),
    ]);

    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-venv");
    let venv = base.join(format!("py{version}-{key:016x}"));
    let ready = |venv: &Path| venv.join("ready").is_file();
    if ready(&venv) {
        return venv.join("bin/python");
    }
    fs::create_dir_all(&base).expect("cannot create the venv folder under target/");
    let staging = base.join(format!(".staging-{key:016x}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    run_checked(Command::new(python).arg("-m").arg("venv").arg(&staging));
    run_checked(
        Command::new(staging.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(["--quiet", "-r"])
            .arg(&requirements),
    );
    fs::write(staging.join("ready"), version).expect("cannot mark the venv ready");
    if let Err(error) = fs::rename(&staging, &venv) {
        let _ = fs::remove_dir_all(&staging);
        assert!(
            ready(&venv),
            "cannot move the venv into {}: {error}",
            venv.display()
        );
    }
    venv.join("bin/python")
}

/// FNV-1a over `parts`, each followed by a 0 byte: a stable cache key.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for part in parts {
        for &byte in part.iter().chain(&[0]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn run_checked(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A child process that is killed (and reaped) when the guard drops, pass or
/// fail.
pub(crate) struct ChildGuard {
    child: Child,
    name: &'static str,
    stderr: Captured,
}

impl ChildGuard {
    fn spawn(name: &'static str, command: &mut Command) -> (Self, ChildStdin, ChildStdout) {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start the {name}: {error}"));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = Captured::drain(child.stderr.take().expect("stderr is piped"));
        (
            ChildGuard {
                child,
                name,
                stderr,
            },
            stdin,
            stdout,
        )
    }

    /// What the child wrote to stderr so far (its last 64 KiB).
    pub(crate) fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits for the child to exit and returns its exit code.
    fn wait(&mut self) -> Option<i32> {
        let status = self.child.wait().expect("cannot wait for a child");
        status.code()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of the {} ---\n{}",
                self.name,
                self.stderr.text()
            );
        }
    }
}

/// The tail of a child's stderr, read by a thread of its own so that the
/// child never blocks on a full pipe.
#[derive(Clone)]
struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn drain(mut from: impl Read + Send + 'static) -> Self {
        let captured = Captured(Arc::default());
        let sink = captured.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(read) = from.read(&mut chunk) {
                if read == 0 {
                    break;
                }
                let mut text = sink
                    .0
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                text.push_str(&String::from_utf8_lossy(&chunk[..read]));
                if text.len() > STDERR_KEPT {
                    let mut cut = text.len() - STDERR_KEPT;
                    while !text.is_char_boundary(cut) {
                        cut += 1;
                    }
                    text.drain(..cut);
                }
            }
        });
        captured
    }

    fn text(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// A data set the reference server can serve (see `reference_server.py`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scenario {
    /// The standard workload, with headers, `events` in each partition.
    Standard {
        /// Events in each partition.
        events: usize,
    },
    /// The edge data set of `edge_events.json`.
    Edge,
    /// The standard workload, but the reader raises after `fail_after`
    /// events, in the middle of the body.
    Failing {
        /// Events in each partition.
        events: usize,
        /// Events sent before the failure.
        fail_after: usize,
    },
}

/// The reference server, on a free loopback port, killed on drop.
pub(crate) struct ReferenceServer {
    guard: ChildGuard,
    port: u16,
    // Held open: the server exits when it closes, should this process die
    // without running the guard.
    _stdin: ChildStdin,
}

impl ReferenceServer {
    /// Starts the reference server on `scenario` and waits until it listens.
    pub(crate) fn start(scenario: Scenario) -> Self {
        Self::spawn(scenario, false)
    }

    /// Like [`start`](Self::start), logging every request it answers (see
    /// [`requests`](Self::requests)).
    pub(crate) fn start_logging_requests(scenario: Scenario) -> Self {
        Self::spawn(scenario, true)
    }

    fn spawn(scenario: Scenario, log_requests: bool) -> Self {
        let mut command = Command::new(venv_python());
        command
            .arg("-u")
            .arg(interop_dir().join("reference_server.py"))
            .arg("0");
        match scenario {
            Scenario::Standard { events } => {
                command.args(["standard", "--events", &events.to_string()]);
            }
            Scenario::Edge => {
                command.arg("edge");
            }
            Scenario::Failing { events, fail_after } => {
                command.args(["failing", "--events", &events.to_string()]);
                command.args(["--fail-after", &fail_after.to_string()]);
            }
        }
        command.arg("--stop-on-stdin-eof");
        if log_requests {
            command.arg("--log-requests");
        }
        let (guard, stdin, stdout) = ChildGuard::spawn("reference server", &mut command);
        let port = wait_for_ready(stdout, &guard);
        ReferenceServer {
            guard,
            port,
            _stdin: stdin,
        }
    }

    /// The feed's URL.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/feed/v1", self.port)
    }

    /// What the server logged so far.
    pub(crate) fn stderr(&self) -> String {
        self.guard.stderr()
    }

    /// The query of every request answered so far, in order, when started
    /// with [`start_logging_requests`](Self::start_logging_requests).
    pub(crate) fn requests(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter_map(|line| line.strip_prefix("REQUEST "))
            .map(str::to_owned)
            .collect()
    }
}

/// Reads the child's stdout until `READY <port>`, then keeps draining it.
fn wait_for_ready(stdout: ChildStdout, guard: &ChildGuard) -> u16 {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = line.strip_prefix("READY ") {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(port.trim().parse::<u16>().ok());
                }
            }
        }
    });
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(Some(port)) => port,
        Ok(None) => panic!("the {} printed a bad ready line", guard.name),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
            "the {} exited before it was ready:\n{}",
            guard.name,
            guard.stderr()
        ),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "the {} was not ready within {READY_TIMEOUT:?}:\n{}",
            guard.name,
            guard.stderr()
        ),
    }
}

/// One request for the reference client (see `reference_client.py`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClientRequest {
    /// The feed's URL.
    pub(crate) url: String,
    /// The partition count the client announces (`n`).
    pub(crate) partitions: u32,
    /// Partition and cursor of each partition to read.
    pub(crate) cursors: Vec<(u32, String)>,
    /// The `pagesizehint`, if any.
    pub(crate) page_size_hint: Option<u32>,
    /// The header names to ask for, if any (`_all` for all).
    pub(crate) headers: Option<Vec<String>>,
}

impl ClientRequest {
    /// A request for `cursors` of a 2-partition feed at `url`, no hint, no
    /// headers.
    pub(crate) fn new(url: &str, cursors: &[(u32, &str)]) -> Self {
        ClientRequest {
            url: url.to_owned(),
            partitions: 2,
            cursors: cursors
                .iter()
                .map(|(partition, cursor)| (*partition, (*cursor).to_owned()))
                .collect(),
            page_size_hint: None,
            headers: None,
        }
    }

    /// Sets the page size hint.
    pub(crate) fn page_size_hint(mut self, hint: u32) -> Self {
        self.page_size_hint = Some(hint);
        self
    }

    /// Asks for these headers.
    pub(crate) fn headers(mut self, names: &[&str]) -> Self {
        self.headers = Some(names.iter().map(|name| (*name).to_owned()).collect());
        self
    }

    /// Announces this partition count instead of 2.
    pub(crate) fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }
}

/// What the reference client made of one request.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ClientPage {
    /// The events and checkpoints it yielded, in order.
    pub(crate) items: Vec<Received>,
    /// How the page ended.
    pub(crate) outcome: Outcome,
}

/// How a page ended for the reference client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// The body ended cleanly.
    Complete,
    /// A non-2xx answer.
    Status {
        /// The status code.
        status: u16,
        /// The body.
        body: String,
    },
    /// The connection failed after the response head.
    BrokenBody {
        /// The Python exception's type.
        error: String,
        /// Its message.
        message: String,
    },
    /// A line the client could not parse.
    Decode {
        /// The Python exception's type.
        error: String,
        /// Its message.
        message: String,
    },
    /// No response at all.
    Transport {
        /// The Python exception's type.
        error: String,
        /// Its message.
        message: String,
    },
}

impl Outcome {
    /// The exit code `reference_client.py` gives this outcome.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Outcome::Complete => 0,
            Outcome::Status { .. } => 2,
            Outcome::BrokenBody { .. } => 3,
            Outcome::Decode { .. } => 4,
            Outcome::Transport { .. } => 5,
        }
    }
}

/// A running reference client that takes requests one at a time (its
/// `--batch` mode), so that one interpreter start serves a whole test.
///
/// Its calls block: from async code, run them on `spawn_blocking`.
pub(crate) struct ReferenceClient {
    guard: ChildGuard,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    first_failure: Option<i32>,
}

impl ReferenceClient {
    /// Starts the client.
    pub(crate) fn start() -> Self {
        let mut command = Command::new(venv_python());
        command
            .arg("-u")
            .arg(interop_dir().join("reference_client.py"))
            .arg("--batch");
        let (guard, stdin, stdout) = ChildGuard::spawn("reference client", &mut command);
        ReferenceClient {
            guard,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            first_failure: None,
        }
    }

    /// Runs one request and returns what the client received.
    pub(crate) fn fetch(&mut self, request: &ClientRequest) -> ClientPage {
        let stdin = self.stdin.as_mut().expect("the client is still open");
        let mut line = serde_json::to_string(request).expect("a request serializes");
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|error| {
                panic!("cannot send a request to the reference client: {error}")
            });
        let mut answer = String::new();
        let read = self
            .stdout
            .read_line(&mut answer)
            .expect("cannot read the reference client's answer");
        assert!(
            read > 0,
            "the reference client exited without answering:\n{}",
            self.guard.stderr()
        );
        let page: ClientPage = serde_json::from_str(&answer).unwrap_or_else(|error| {
            panic!("bad answer from the reference client ({error}): {answer}")
        });
        if page.outcome != Outcome::Complete && self.first_failure.is_none() {
            self.first_failure = Some(page.outcome.exit_code());
        }
        page
    }

    /// Ends the client and checks that its exit code is the one its answers
    /// call for: 0 when every page completed, else that of the first failure.
    pub(crate) fn finish(mut self) {
        drop(self.stdin.take());
        let code = self.guard.wait();
        assert_eq!(
            code,
            Some(self.first_failure.unwrap_or(0)),
            "the reference client's exit code does not match its answers:\n{}",
            self.guard.stderr()
        );
    }
}

/// Runs the reference client once from the command line (its single-request
/// mode) and returns what it printed and its exit code.
pub(crate) fn run_reference_client_once(request: &ClientRequest) -> (ClientPage, Option<i32>) {
    let mut command = Command::new(venv_python());
    command
        .arg("-u")
        .arg(interop_dir().join("reference_client.py"))
        .arg(&request.url)
        .arg("--partitions")
        .arg(request.partitions.to_string());
    for (partition, cursor) in &request.cursors {
        command
            .arg("--cursor")
            .arg(partition.to_string())
            .arg(cursor);
    }
    if let Some(hint) = request.page_size_hint {
        command.arg("--page-size-hint").arg(hint.to_string());
    }
    for name in request.headers.iter().flatten() {
        command.arg("--header").arg(name);
    }
    let (mut guard, stdin, stdout) = ChildGuard::spawn("reference client", &mut command);
    drop(stdin);
    let mut printed = String::new();
    BufReader::new(stdout)
        .read_to_string(&mut printed)
        .expect("cannot read the reference client's output");
    let code = guard.wait();
    let page = serde_json::from_str(printed.trim()).unwrap_or_else(|error| {
        panic!(
            "bad output from the reference client ({error}): {printed}\n{}",
            guard.stderr()
        )
    });
    (page, code)
}

/// An axum app served on a free loopback port by a runtime on a thread of
/// its own, so that the test around it may block (on a Python child) or run
/// its own runtime. Stopped, with every connection, when dropped.
pub(crate) struct BackgroundServer {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundServer {
    /// Starts serving `app`.
    pub(crate) fn start(app: axum::Router) -> Self {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("cannot make the listener non-blocking");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cannot build a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("cannot hand the listener to tokio");
                tokio::select! {
                    result = axum::serve(listener, app) => result.expect("the test server failed"),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime ends the connection tasks still running.
        });
        BackgroundServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL of `path` on this server.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
