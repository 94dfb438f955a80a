//! End-to-end harness: the real `pyleak` binary against real CPython processes.
//!
//! What it owns:
//! - finding the interpreters of [`PYTHON_VERSIONS`] (pyenv builds);
//! - [`Target`]: a Python scenario from `tests/scripts/`, spawned with piped
//!   stdin/stdout and killed on drop. Scenarios follow the protocol described
//!   in `tests/scripts/scenario.py`: print `ready`, wait for `go`, work, print
//!   `done`, block until stdin closes;
//! - [`Tracer`]: `pyleak trace --pid PID --format json -o FILE`, with its
//!   stderr captured, [`Tracer::wait_attached`] and [`Tracer::stop`];
//! - [`Report`]: the parsed JSON report (DESIGN.md §4), the contract
//!   invariants every report must hold, and lookups by `(file, line)` of
//!   `frames[0]`. Its `Display` prints the context, pyleak's stderr and the
//!   whole report, so `assert!(cond, "...\n{report}")` explains a failure;
//! - [`marker_line`] / [`script_const`]: line numbers and sizes come from the
//!   scripts themselves, never hard-coded in a test;
//! - [`tracemalloc_truth`]: the same scenario run under tracemalloc, which
//!   gives the bytes pyleak should find at each marked line.
//!
//! The binary is `$PYLEAK_BIN` (set by `cargo xtask test`), else
//! `<workspace>/target/debug/pyleak`. Tests that trace need root (eBPF);
//! without it they panic rather than pass. Tests take [`serial`] so that
//! at most one pyleak runs at a time: timing-sensitive accuracy checks should
//! not compete for the CPU with another tracer.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// CPython minor versions every scenario runs under (pyenv builds).
/// 3.8–3.10 and 3.13 join this list once pyleak supports them.
pub const PYTHON_VERSIONS: &[&str] = &["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"];

/// How long a scenario may take to print an expected stdout line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long pyleak may take to print `pyleak: attached to pid PID`.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long pyleak may take to exit once asked to (or once it should).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a whole `pyleak run` or a failing `pyleak trace` may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Environment variable that switches a scenario to its tracemalloc mode.
pub const TRACEMALLOC_ENV: &str = "PYLEAK_TEST_TRACEMALLOC";

// ---------------------------------------------------------------------------
// Paths, privileges, serialization

/// `/work/main/tests`: this package's directory.
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo workspace this package belongs to.
pub fn workspace_dir() -> PathBuf {
    tests_dir().parent().expect("tests/ has a parent").to_path_buf()
}

/// `demo/leaky_service.py`, the demo app (`cargo xtask demo`).
pub fn demo_script() -> PathBuf {
    let path = workspace_dir().join("demo").join("leaky_service.py");
    assert!(path.is_file(), "no demo app {}", path.display());
    path
}

/// Absolute path of a scenario script in `tests/scripts/`.
pub fn script(name: &str) -> PathBuf {
    let path = tests_dir().join("scripts").join(name);
    assert!(path.is_file(), "no scenario script {}", path.display());
    path
}

/// The pyleak binary: `$PYLEAK_BIN`, else `<workspace>/target/debug/pyleak`.
pub fn pyleak_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PYLEAK_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "PYLEAK_BIN={} is not a file", bin.display());
        return bin;
    }
    let fallback = workspace_dir().join("target/debug/pyleak");
    if !fallback.is_file() {
        panic!(
            "no pyleak binary: PYLEAK_BIN is unset and {} does not exist; \
             run the end-to-end tests with `cargo xtask test`, which builds pyleak \
             and sets PYLEAK_BIN",
            fallback.display()
        );
    }
    fallback
}

/// Panics unless running as root: attaching uprobes needs CAP_SYS_ADMIN, and
/// these tests must fail, not pass silently, where they cannot run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "the pyleak end-to-end tests need root (eBPF uprobes need CAP_SYS_ADMIN); \
             running as uid {euid}: run `cargo xtask test` as root"
        );
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Held for the whole of a test: one pyleak at a time in this test binary
/// (cargo runs test binaries one after another). A failed test poisons the
/// lock; the next test takes it anyway.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// Interpreters

/// One CPython interpreter of the test matrix.
#[derive(Clone, Debug)]
pub struct Python {
    /// The minor version, as in [`PYTHON_VERSIONS`]: `"3.12"`.
    pub minor: &'static str,
    /// The full version, from the pyenv directory name: `"3.12.1"`.
    pub version: String,
    /// The interpreter binary: `.../versions/3.12.1/bin/python3.12`.
    pub path: PathBuf,
}

impl Python {
    /// The minor number: 12 for "3.12".
    pub fn minor_number(&self) -> u32 {
        self.minor.rsplit('.').next().and_then(|m| m.parse().ok()).expect("minor version")
    }
}

impl fmt::Display for Python {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPython {} ({})", self.version, self.path.display())
    }
}

fn pyenv_root() -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("PYENV_ROOT") {
        let root = PathBuf::from(root);
        if root.join("versions").is_dir() {
            return Some(root);
        }
    }
    if let Ok(out) = Command::new("pyenv").arg("root").output() {
        let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && root.join("versions").is_dir() {
            return Some(root);
        }
    }
    let home = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pyenv"));
    home.into_iter().chain([PathBuf::from("/root/.pyenv")]).find(|root| root.join("versions").is_dir())
}

/// The newest pyenv patch release of `minor` (`3.12.*`, plain releases only),
/// if installed.
pub fn find_python(minor: &'static str) -> Option<Python> {
    let versions = pyenv_root()?.join("versions");
    let prefix = format!("{minor}.");
    let mut best: Option<(u32, String)> = None;
    for entry in std::fs::read_dir(&versions).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(patch) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue; // 3.12-dev, 3.13.0t, ...
        };
        if best.as_ref().is_none_or(|(best_patch, _)| patch > *best_patch) {
            best = Some((patch, name));
        }
    }
    let (_, version) = best?;
    let path = versions.join(&version).join("bin").join(format!("python{minor}"));
    path.is_file().then_some(Python { minor, version, path })
}

/// The installed interpreters of [`PYTHON_VERSIONS`]. Missing ones are
/// reported on stderr and skipped; panics if none is installed.
pub fn pythons() -> Vec<Python> {
    let mut found = Vec::new();
    for minor in PYTHON_VERSIONS {
        match find_python(minor) {
            Some(python) => found.push(python),
            None => eprintln!(
                "pyleak-e2e: CPython {minor} not found (pyenv root: {:?}); skipping it",
                pyenv_root()
            ),
        }
    }
    assert!(
        !found.is_empty(),
        "none of the CPython versions {PYTHON_VERSIONS:?} is installed with pyenv \
         (looked in $PYENV_ROOT, `pyenv root`, ~/.pyenv, /root/.pyenv)"
    );
    found
}

/// Runs `test` once per installed interpreter of the matrix, holding
/// [`serial`] and after [`require_root`].
pub fn for_each_python(mut test: impl FnMut(&Python)) {
    let _serial = serial();
    require_root();
    for python in pythons() {
        eprintln!("pyleak-e2e: --- {python}");
        test(&python);
    }
}

// ---------------------------------------------------------------------------
// Script introspection

/// The line number of the one line of code in `script` that ends with the
/// comment `# <marker>` (lines that are only a comment do not count).
/// Panics unless exactly one line matches. Same rule as scenario.py.
pub fn marker_line(script: &Path, marker: &str) -> u32 {
    let source =
        std::fs::read_to_string(script).unwrap_or_else(|e| panic!("cannot read {}: {e}", script.display()));
    let suffix = format!("# {marker}");
    let found: Vec<u32> = source
        .lines()
        .enumerate()
        .filter(|(_, text)| {
            let text = text.trim_end();
            text.ends_with(&suffix) && !text.trim_start().starts_with('#')
        })
        .map(|(index, _)| index as u32 + 1)
        .collect();
    assert!(
        found.len() == 1,
        "{}: marker {suffix:?} ends {} lines of code ({found:?}), want exactly 1",
        script.display(),
        found.len()
    );
    found[0]
}

/// The value of a module-level integer constant `NAME = 123` or
/// `NAME = 64 * 1024` (a product of integer literals) in `script`.
pub fn script_const(script: &Path, name: &str) -> u64 {
    let source =
        std::fs::read_to_string(script).unwrap_or_else(|e| panic!("cannot read {}: {e}", script.display()));
    for line in source.lines() {
        let code = line.split('#').next().unwrap_or("");
        let Some((lhs, rhs)) = code.split_once('=') else {
            continue;
        };
        if lhs.trim() != name || line.starts_with(char::is_whitespace) {
            continue;
        }
        let value = rhs.split('*').try_fold(1u64, |product, factor| {
            let factor: u64 = factor.trim().replace('_', "").parse().ok()?;
            product.checked_mul(factor)
        });
        return value.unwrap_or_else(|| {
            panic!("{}: `{}` is not a product of integers", script.display(), line.trim())
        });
    }
    panic!("{}: no module-level constant {name}", script.display())
}

// ---------------------------------------------------------------------------
// Captured output

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    eof: bool,
}

/// The lines of a child's stdout or stderr, read on a thread as they come.
#[derive(Clone)]
struct Lines(Arc<(Mutex<LinesState>, Condvar)>);

enum WaitError {
    Timeout,
    Eof,
}

impl Lines {
    fn capture(stream: impl Read + Send + 'static) -> Lines {
        let lines = Lines(Arc::default());
        let shared = lines.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                        let (state, changed) = &*shared.0;
                        state.lock().unwrap().lines.push(line);
                        changed.notify_all();
                    }
                }
            }
            let (state, changed) = &*shared.0;
            state.lock().unwrap().eof = true;
            changed.notify_all();
        });
        lines
    }

    /// Waits for a line at index >= `from` for which `matches` holds;
    /// returns its index and text.
    fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<(usize, String), WaitError> {
        let deadline = Instant::now() + timeout;
        let (state, changed) = &*self.0;
        let mut state = state.lock().unwrap();
        let mut next = from;
        loop {
            while next < state.lines.len() {
                if matches(&state.lines[next]) {
                    return Ok((next, state.lines[next].clone()));
                }
                next += 1;
            }
            if state.eof {
                return Err(WaitError::Eof);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout);
            }
            state = changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits until the stream is closed (the child exited and its reader
    /// thread saw EOF), at most `timeout`.
    fn wait_eof(&self, timeout: Duration) {
        let _ = self.wait_for(usize::MAX, timeout, |_| false);
    }

    fn text(&self) -> String {
        let state = self.0.0.lock().unwrap();
        let mut text = state.lines.join("\n");
        if !state.eof {
            text.push_str("\n[... still open]");
        }
        text
    }
}

/// Waits for `child` to exit, at most `timeout`; `None` on timeout.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `child` unless it has already been reaped.
fn signal(child: &mut Child, signal: libc::c_int) {
    if child.try_wait().expect("try_wait").is_none() {
        // SAFETY: kill has no memory-safety preconditions; the child is ours
        // and not yet reaped, so its pid cannot have been reused.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    }
}

// ---------------------------------------------------------------------------
// Target: a Python scenario

/// A Python scenario from `tests/scripts/`, killed (and reaped) on drop.
pub struct Target {
    pub python: Python,
    pub script: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
    stderr: Lines,
    /// Index of the next stdout line not consumed by `wait_for_line`/`next_line`.
    cursor: usize,
}

impl Target {
    /// Spawns `python script_name` with the environment `env` added; does
    /// not wait for anything.
    pub fn spawn(python: &Python, script_name: &str, env: &[(&str, &str)]) -> Target {
        let script = script(script_name);
        let mut command = Command::new(&python.path);
        command
            .arg(&script)
            // Keep the allocator and tracing set-up the default one, whatever
            // the caller's environment, and keep tests/scripts/ clean.
            .env_remove("PYTHONMALLOC")
            .env_remove("PYTHONTRACEMALLOC")
            .env_remove(TRACEMALLOC_ENV)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {}: {e}", python.path.display(), script.display()));
        let stdin = child.stdin.take();
        let stdout = Lines::capture(child.stdout.take().unwrap());
        let stderr = Lines::capture(child.stderr.take().unwrap());
        Target { python: python.clone(), script, child, stdin, stdout, stderr, cursor: 0 }
    }

    /// Spawns the scenario and waits for its `ready`.
    pub fn ready(python: &Python, script_name: &str) -> Target {
        let mut target = Target::spawn(python, script_name, &[]);
        target.wait_for_line("ready");
        target
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The basename of the scenario script, as frames are matched.
    pub fn script_name(&self) -> String {
        self.script.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// Waits (at most [`LINE_TIMEOUT`]) for a stdout line equal to
    /// `expected`, skipping other lines; panics with the scenario's output
    /// on timeout or exit.
    pub fn wait_for_line(&mut self, expected: &str) {
        match self.stdout.wait_for(self.cursor, LINE_TIMEOUT, |line| line.trim() == expected) {
            Ok((index, _)) => self.cursor = index + 1,
            Err(error) => self.fail(&format!("waiting for the line {expected:?}"), error),
        }
    }

    /// The next stdout line (at most [`LINE_TIMEOUT`]).
    pub fn next_line(&mut self) -> String {
        match self.stdout.wait_for(self.cursor, LINE_TIMEOUT, |_| true) {
            Ok((index, line)) => {
                self.cursor = index + 1;
                line
            }
            Err(error) => self.fail("waiting for a line", error),
        }
    }

    /// Writes `line` and a newline to the scenario's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!("cannot send {line:?} to {}: {e}\n{}", self.script.display(), self.output());
        }
    }

    /// Closes the scenario's stdin (a protocol scenario then exits).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits (at most `timeout`) for the scenario to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match wait_timeout(&mut self.child, timeout) {
            Some(status) => status,
            None => panic!(
                "{} (pid {}) did not exit within {timeout:?}\n{}",
                self.script.display(),
                self.pid(),
                self.output()
            ),
        }
    }

    /// The scenario's stdout and stderr so far, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- {} {} stdout:\n{}\n--- stderr:\n{}\n---",
            self.python,
            self.script.display(),
            self.stdout.text(),
            self.stderr.text()
        )
    }

    fn fail(&mut self, what: &str, error: WaitError) -> ! {
        let why = match error {
            WaitError::Timeout => format!("timed out after {LINE_TIMEOUT:?}"),
            WaitError::Eof => {
                let status = wait_timeout(&mut self.child, Duration::from_secs(5));
                format!("stdout closed (exit status: {status:?})")
            }
        };
        self.stderr.wait_eof(Duration::from_millis(200));
        panic!("{} (pid {}): {what}: {why}\n{}", self.script.display(), self.pid(), self.output())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill(); // no-op once reaped
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Ground truth

/// What tracemalloc counts as still allocated at a marked line once a
/// scenario's work is done (see scenario.py).
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct MarkerTruth {
    pub line: u32,
    pub bytes: u64,
    pub blocks: u64,
}

#[derive(Debug, Deserialize)]
pub struct GroundTruth {
    pub markers: HashMap<String, MarkerTruth>,
    pub tracemalloc_leak_bytes: u64,
    pub line: u32,
}

impl GroundTruth {
    pub fn marker(&self, marker: &str) -> MarkerTruth {
        *self.markers.get(marker).unwrap_or_else(|| panic!("no ground truth for {marker:?}: {self:?}"))
    }
}

/// Runs `script_name` in its tracemalloc mode (no pyleak) and returns its
/// ground truth; checks that scenario.py and [`marker_line`] agree on lines.
pub fn tracemalloc_truth(python: &Python, script_name: &str) -> GroundTruth {
    let mut target = Target::spawn(python, script_name, &[(TRACEMALLOC_ENV, "1")]);
    target.wait_for_line("ready");
    target.send("go");
    target.wait_for_line("done");
    let line = target.next_line();
    let truth: GroundTruth = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!("bad ground-truth line from {script_name}: {e}: {line}\n{}", target.output())
    });
    for (marker, marked) in &truth.markers {
        assert_eq!(
            marked.line,
            marker_line(&target.script, marker),
            "scenario.py and the harness disagree on the line of {marker:?}"
        );
    }
    eprintln!("pyleak-e2e: tracemalloc ground truth for {script_name} on {python}: {line}");
    truth
}

// ---------------------------------------------------------------------------
// Running pyleak

/// A `Command` for the pyleak binary.
pub fn pyleak_command() -> Command {
    let mut command = Command::new(pyleak_bin());
    command.env_remove("RUST_LOG");
    command
}

/// A child process (not a Python scenario) killed and reaped on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Spawns `program args...` with no stdio.
    pub fn spawn(program: &str, args: &[&str]) -> KillOnDrop {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        KillOnDrop(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the uprobe links that process `pid` (a pyleak) holds are attached in files whose
/// path contains `file`: (link type, path, file offset), from its links' fdinfo
/// (`uprobe_multi`/`uretprobe_multi`, one row per probed offset).
pub fn probed_offsets(pid: u32, file: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for text in fdinfos(pid) {
        let field = |key: &str| fdinfo_field(&text, key);
        let (Some(kind), Some(path)) = (field("link_type:"), field("path:")) else { continue };
        if !kind.ends_with("probe_multi") || !path.contains(file) {
            continue;
        }
        // After the header `cookie offset ref_ctr_offset`: one row per probe.
        for row in text.lines().skip_while(|l| !l.starts_with("cookie")).skip(1) {
            if let Some(offset) = row.split_whitespace().nth(1) {
                out.insert((kind.clone(), path.clone(), offset.to_string()));
            }
        }
    }
    out
}

/// The capacities (`max_entries`) of the outstanding-allocation maps process `pid` holds,
/// read from the kernel (`/proc/PID/fdinfo`), not from pyleak's own account. `LIVE_ALLOCS`
/// is pyleak's only plain hash map (`map_type` 1) with 16-byte keys and 32-byte values.
/// The daemon's exec watcher loads the same object with its big maps shrunk to one entry:
/// those copies are left out.
pub fn live_allocs_capacities(pid: u32) -> Vec<u64> {
    fdinfos(pid)
        .filter(|text| {
            let field = |key: &str| fdinfo_field(text, key);
            (field("map_type:"), field("key_size:"), field("value_size:"))
                == (Some("1".into()), Some("16".into()), Some("32".into()))
        })
        .filter_map(|text| fdinfo_field(&text, "max_entries:")?.parse().ok())
        .filter(|&entries: &u64| entries > 1)
        .collect()
}

/// The text of each `/proc/PID/fdinfo` entry of process `pid` (none if it is gone).
fn fdinfos(pid: u32) -> impl Iterator<Item = String> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
}

/// The value of an fdinfo line `key` (`"map_type:"`), trimmed.
fn fdinfo_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string())
}

/// The children of process `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The first `name` in `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// A finished command: status and all of its output.
#[derive(Debug)]
pub struct Finished {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--- command: {}\n--- status: {}\n--- stdout:\n{}\n--- stderr:\n{}\n---",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command` to completion with stdin closed and output captured;
/// kills it and panics if it takes longer than `timeout`.
pub fn run_command(mut command: Command, timeout: Duration) -> Finished {
    let description = describe(&command);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
    let stdout = Lines::capture(child.stdout.take().unwrap());
    let stderr = Lines::capture(child.stderr.take().unwrap());
    let status = wait_timeout(&mut child, timeout);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        stderr.wait_eof(Duration::from_secs(2));
        panic!(
            "{description}: still running after {timeout:?}, killed\n--- stdout:\n{}\n--- stderr:\n{}",
            stdout.text(),
            stderr.text()
        );
    };
    stdout.wait_eof(Duration::from_secs(5));
    stderr.wait_eof(Duration::from_secs(5));
    Finished { command: description, status, stdout: stdout.text(), stderr: stderr.text() }
}

/// `pyleak ARGS...`, run to completion (at most [`RUN_TIMEOUT`]).
pub fn pyleak<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = pyleak_command();
    command.args(args);
    run_command(command, RUN_TIMEOUT)
}

/// `pyleak doctor --pid PID` on an idle interpreter (`python -c "sleep"`) started for it and
/// killed afterwards.
pub fn doctor_of(interpreter: &str) -> Finished {
    let target = KillOnDrop::spawn(interpreter, &["-c", "import time; time.sleep(60)"]);
    std::thread::sleep(Duration::from_millis(300));
    pyleak(["doctor", "--pid", &target.pid().to_string()])
}

/// `pyleak run --format json -o FILE REPORT_ARGS... -- PYTHON SCRIPT ARGS...`:
/// asserts exit 0 and returns the parsed report.
pub fn run_report(python: &Python, script: &Path, script_args: &[&str], report_args: &[&str]) -> Report {
    require_root();
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("report.json");
    let mut command = pyleak_command();
    command
        .arg("run")
        .args(["--format", "json", "-o"])
        .arg(&out)
        .args(report_args)
        .arg("--")
        .arg(&python.path)
        .arg(script)
        .args(script_args)
        .env_remove("PYTHONMALLOC")
        .env_remove("PYTHONTRACEMALLOC")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let finished = run_command(command, RUN_TIMEOUT);
    let context = format!("{python}, `{}`", finished.command);
    assert!(finished.status.code() == Some(0), "{context}: want exit 0\n{finished}");
    Report::read(&out, context, finished.stderr)
}

/// A running `pyleak trace --pid PID --format json -o FILE [EXTRA...]`.
pub struct Tracer {
    child: Child,
    pub target_pid: u32,
    command: String,
    stderr: Lines,
    stdout: Lines,
    out: PathBuf,
    _out_dir: tempfile::TempDir,
}

impl Tracer {
    /// Starts pyleak on `target_pid`; does not wait for it to attach.
    pub fn start(target_pid: u32, extra_args: &[&str]) -> Tracer {
        require_root();
        let out_dir = tempfile::tempdir().expect("tempdir");
        let out = out_dir.path().join("report.json");
        let mut command = pyleak_command();
        command
            .arg("trace")
            .arg("--pid")
            .arg(target_pid.to_string())
            .args(["--format", "json", "-o"])
            .arg(&out)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let description = describe(&command);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
        let stdout = Lines::capture(child.stdout.take().unwrap());
        let stderr = Lines::capture(child.stderr.take().unwrap());
        Tracer { child, target_pid, command: description, stderr, stdout, out, _out_dir: out_dir }
    }

    /// The pid of this `pyleak trace`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most [`ATTACH_TIMEOUT`]) for `pyleak: attached to pid PID`
    /// on stderr; panics with pyleak's stderr if it does not come.
    pub fn wait_attached(&mut self) {
        let needle = format!("pyleak: attached to pid {}", self.target_pid);
        let found = self.stderr.wait_for(0, ATTACH_TIMEOUT, |line| {
            // "attached to pid 12" must not match "attached to pid 123".
            line.match_indices(&needle)
                .any(|(at, _)| !line[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
        });
        if let Err(error) = found {
            let why = match error {
                WaitError::Timeout => format!("not within {ATTACH_TIMEOUT:?}"),
                WaitError::Eof => {
                    let status = wait_timeout(&mut self.child, Duration::from_secs(5));
                    format!("pyleak closed stderr first (exit status: {status:?})")
                }
            };
            panic!(
                "`{}`: no {needle:?} line on stderr: {why}\n--- stderr:\n{}\n--- stdout:\n{}",
                self.command,
                self.stderr.text(),
                self.stdout.text()
            );
        }
    }

    /// Ends the trace with SIGINT (Ctrl-C); asserts exit 0 and returns the report.
    pub fn stop(mut self) -> Report {
        signal(&mut self.child, libc::SIGINT);
        self.finish(EXIT_TIMEOUT)
    }

    /// For a target that exited by itself: gives pyleak `grace` to end the
    /// trace on its own, then sends SIGINT if it is still running (the
    /// contract does not say whether a target's exit ends `trace`); asserts
    /// exit 0 and returns the report.
    pub fn stop_after_target_exit(mut self, grace: Duration) -> Report {
        if wait_timeout(&mut self.child, grace).is_none() {
            eprintln!("pyleak-e2e: pyleak still running {grace:?} after its target exited; sending SIGINT");
            signal(&mut self.child, libc::SIGINT);
        }
        self.finish(EXIT_TIMEOUT)
    }

    /// Waits (at most `timeout`) for pyleak to end by itself (e.g. at the
    /// end of --duration); asserts exit 0 and returns the report.
    pub fn finish(mut self, timeout: Duration) -> Report {
        let Some(status) = wait_timeout(&mut self.child, timeout) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.stderr.wait_eof(Duration::from_secs(2));
            panic!(
                "`{}`: did not exit within {timeout:?}, killed\n--- stderr:\n{}",
                self.command,
                self.stderr.text()
            );
        };
        self.stderr.wait_eof(Duration::from_secs(5));
        self.stdout.wait_eof(Duration::from_secs(5));
        let stderr = self.stderr.text();
        assert!(
            status.code() == Some(0),
            "`{}`: want exit 0, got {status}\n--- stderr:\n{stderr}\n--- stdout:\n{}",
            self.command,
            self.stdout.text()
        );
        Report::read(&self.out, format!("`{}`", self.command), stderr)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill(); // no-op once reaped
        let _ = self.child.wait();
    }
}

/// Attaches `pyleak trace` (with `extra_args`) to a ready scenario, then runs its work
/// (`go` ... `done`): the tracer, still tracing.
pub fn trace_work(target: &mut Target, extra_args: &[&str]) -> Tracer {
    let mut tracer = Tracer::start(target.pid(), extra_args);
    tracer.wait_attached();
    target.send("go");
    target.wait_for_line("done");
    tracer
}

/// The usual trace of a protocol scenario: start it, attach pyleak, `go`,
/// wait for `done`, end the trace with SIGINT while the target is still
/// alive. Checks the report's general invariants ([`Report::check_contract`]).
pub fn trace_scenario(python: &Python, script_name: &str, extra_args: &[&str]) -> Report {
    let mut target = Target::ready(python, script_name);
    let mut report = trace_work(&mut target, extra_args).stop();
    report.context = format!("{python}, {script_name}: {}", report.context);
    report.check_contract(python, Some(target.pid()));
    report
}

// ---------------------------------------------------------------------------
// The report

/// The JSON report (DESIGN.md §4). Unknown fields are allowed; the types are
/// the contract (byte counts are u64: a negative count fails to parse).
#[derive(Debug, Deserialize)]
pub struct ReportJson {
    pub pid: u32,
    pub command: String,
    pub python: PythonInfo,
    pub duration_s: f64,
    pub totals: Totals,
    pub stacks: Vec<Stack>,
    /// Present for sampled reports (`--sample-bytes`).
    #[serde(default)]
    pub sample_bytes: Option<u64>,
    /// Present with `--bpf-stats`: per kernel program that ran, its runs and run time.
    #[serde(default)]
    pub kernel_programs: Option<Vec<ProgramCost>>,
}

#[derive(Debug, Deserialize)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

#[derive(Debug, Deserialize)]
pub struct PythonInfo {
    pub version: String,
    pub executable: String,
    pub coverage: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Totals {
    pub allocated_bytes: u64,
    pub freed_bytes: u64,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub lost_events: u64,
}

#[derive(Debug, Deserialize)]
pub struct Stack {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    pub allocated_bytes: u64,
    /// Allocations made by the stack during the trace, freed or not.
    pub allocated_allocations: u64,
    /// Innermost first: `frames[0]` is the allocating line.
    pub frames: Vec<Frame>,
    #[serde(default)]
    pub truncated: bool,
    /// The C function that called the C library's allocator (native allocations only).
    #[serde(default)]
    pub native_caller: Option<NativeFrame>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct NativeFrame {
    pub function: String,
    pub library: String,
    pub offset: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub qualname: String,
    pub file: String,
    pub line: u32,
}

impl Frame {
    /// The file's basename: `/work/main/tests/scripts/leak_basic.py` -> `leak_basic.py`.
    pub fn basename(&self) -> &str {
        Path::new(&self.file).file_name().and_then(|n| n.to_str()).unwrap_or(&self.file)
    }

    pub fn is_at(&self, basename: &str, line: u32) -> bool {
        self.line == line && self.basename() == basename
    }
}

impl Stack {
    /// Whether `frames[0]` is `basename:line`.
    pub fn is_at(&self, basename: &str, line: u32) -> bool {
        self.frames.first().is_some_and(|frame| frame.is_at(basename, line))
    }

    pub fn has_function(&self, function: &str) -> bool {
        self.frames.iter().any(|frame| frame.function == function)
    }
}

/// A parsed report plus what explains it: where it came from and pyleak's
/// stderr. `Display` prints all of it and the whole JSON report.
pub struct Report {
    pub json: ReportJson,
    pub raw: Value,
    pub stderr: String,
    pub context: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pretty = serde_json::to_string_pretty(&self.raw).unwrap_or_else(|_| self.raw.to_string());
        write!(f, "--- {}\n--- pyleak stderr:\n{}\n--- report:\n{pretty}\n---", self.context, self.stderr)
    }
}

impl Report {
    /// Reads and parses the report pyleak wrote to `path`.
    pub fn read(path: &Path, context: String, stderr: String) -> Report {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("{context}: cannot read the report {}: {e}\n--- pyleak stderr:\n{stderr}", path.display())
        });
        Report::parse(&text, context, stderr)
    }

    pub fn parse(text: &str, context: String, stderr: String) -> Report {
        let raw: Value = serde_json::from_str(text).unwrap_or_else(|e| {
            panic!(
                "{context}: the report is not JSON: {e}\n--- pyleak stderr:\n{stderr}\n--- report:\n{text}"
            )
        });
        let json: ReportJson = serde_json::from_value(raw.clone()).unwrap_or_else(|e| {
            panic!(
                "{context}: the report does not match the contract (DESIGN.md §4): {e}\n\
                 --- pyleak stderr:\n{stderr}\n--- report:\n{text}"
            )
        });
        Report { json, raw, stderr, context }
    }

    pub fn stacks(&self) -> &[Stack] {
        &self.json.stacks
    }

    /// The top stack (most outstanding bytes); panics if there is none.
    pub fn top(&self) -> &Stack {
        self.json.stacks.first().unwrap_or_else(|| panic!("the report has no stacks\n{self}"))
    }

    /// The stacks whose `frames[0]` is `basename:line`, with their rank
    /// (0 = top), biggest first.
    pub fn stacks_at(&self, basename: &str, line: u32) -> Vec<(usize, &Stack)> {
        self.json.stacks.iter().enumerate().filter(|(_, s)| s.is_at(basename, line)).collect()
    }

    /// The biggest stack whose `frames[0]` is `basename:line`, if any.
    pub fn stack_at(&self, basename: &str, line: u32) -> Option<&Stack> {
        self.stacks_at(basename, line).first().map(|(_, stack)| *stack)
    }

    /// Like [`Report::stack_at`]; panics with the whole report if absent.
    pub fn expect_stack_at(&self, basename: &str, line: u32) -> &Stack {
        self.stack_at(basename, line)
            .unwrap_or_else(|| panic!("no stack with frames[0] at {basename}:{line}\n{self}"))
    }

    /// Outstanding bytes of all stacks whose `frames[0]` is `basename:line`
    /// (tracemalloc's "lineno" statistic).
    pub fn bytes_at(&self, basename: &str, line: u32) -> u64 {
        self.stacks_at(basename, line).iter().map(|(_, s)| s.outstanding_bytes).sum()
    }

    /// Invariants every report must hold, whatever the scenario:
    /// it names the traced pid and the interpreter's version, coverage is
    /// `full` or `partial`, stacks are sorted by outstanding bytes
    /// (descending), no count looks wrapped (>= 2^62), a stack never has more
    /// outstanding than allocated bytes, the stacks' outstanding bytes do not
    /// exceed the totals, nothing freed that was not allocated during the
    /// trace, and no event was lost (the scenarios are small).
    pub fn check_contract(&self, python: &Python, pid: Option<u32>) {
        let json = &self.json;
        match pid {
            Some(pid) => assert_eq!(json.pid, pid, "the report names another pid\n{self}"),
            None => assert!(json.pid > 0, "the report's pid is 0\n{self}"),
        }
        assert!(
            json.python.version.starts_with(&format!("{}.", python.minor)),
            "python.version {:?} is not {}.x\n{self}",
            json.python.version,
            python.minor
        );
        assert!(
            ["full", "partial"].contains(&json.python.coverage.as_str()),
            "python.coverage is {:?}, want \"full\" or \"partial\"\n{self}",
            json.python.coverage
        );
        assert!(json.duration_s >= 0.0, "negative duration_s\n{self}");
        const WRAPPED: u64 = 1 << 62;
        let t = &json.totals;
        for (name, value) in [
            ("allocated_bytes", t.allocated_bytes),
            ("freed_bytes", t.freed_bytes),
            ("outstanding_bytes", t.outstanding_bytes),
            ("outstanding_allocations", t.outstanding_allocations),
        ] {
            assert!(value < WRAPPED, "totals.{name} = {value} looks wrapped around\n{self}");
        }
        assert!(
            t.allocated_bytes >= t.outstanding_bytes,
            "totals: outstanding_bytes > allocated_bytes\n{self}"
        );
        // Frees of blocks allocated before the trace have no known size and
        // must not be counted.
        assert!(t.freed_bytes <= t.allocated_bytes, "totals: freed_bytes > allocated_bytes\n{self}");
        assert_eq!(t.lost_events, 0, "pyleak lost events on a small scenario\n{self}");
        for pair in json.stacks.windows(2) {
            assert!(
                pair[0].outstanding_bytes >= pair[1].outstanding_bytes,
                "stacks are not sorted by outstanding_bytes, descending\n{self}"
            );
        }
        for (rank, stack) in json.stacks.iter().enumerate() {
            assert!(
                stack.outstanding_bytes < WRAPPED && stack.allocated_bytes < WRAPPED,
                "stack #{rank}: counts look wrapped around\n{self}"
            );
            assert!(
                stack.allocated_bytes >= stack.outstanding_bytes,
                "stack #{rank}: outstanding_bytes > allocated_bytes\n{self}"
            );
            assert!(
                stack.allocated_allocations >= stack.outstanding_allocations,
                "stack #{rank}: outstanding_allocations > allocated_allocations\n{self}"
            );
        }
        let sum: u64 = json.stacks.iter().map(|s| s.outstanding_bytes).sum();
        assert!(
            sum <= t.outstanding_bytes,
            "the stacks add up to {sum} outstanding bytes, more than totals.outstanding_bytes\n{self}"
        );
    }
}

// ---------------------------------------------------------------------------
// Numbers

/// Asserts `actual` is within `percent` % of `expected`.
pub fn assert_close(actual: u64, expected: u64, percent: u64, what: &str, report: &Report) {
    let diff = actual.abs_diff(expected);
    assert!(
        diff.saturating_mul(100) <= expected.saturating_mul(percent),
        "{what}: pyleak says {actual}, expected {expected} ± {percent}% (off by {diff})\n{report}"
    );
}

/// Asserts `low <= actual <= high`.
pub fn assert_between(actual: u64, low: u64, high: u64, what: &str, report: &Report) {
    assert!(
        (low..=high).contains(&actual),
        "{what}: pyleak says {actual}, expected between {low} and {high}\n{report}"
    );
}

/// Bounds for `count` objects of `payload` bytes each, as a line's
/// outstanding bytes: at least the payload, at most payload plus
/// [`OBJECT_OVERHEAD`] per object, plus 10% and [`SLACK`] for a container's
/// growth on the same line.
pub fn leak_bounds(count: u64, payload: u64) -> (u64, u64) {
    let low = count * payload;
    let high = count * (payload + OBJECT_OVERHEAD) * 11 / 10 + SLACK;
    (low, high)
}

/// [`leak_bounds`] for a scenario's own leak: its `LEAK_COUNT` objects of `LEAK_SIZE`
/// payload bytes.
pub fn script_leak_bounds(script: &Path) -> (u64, u64) {
    leak_bounds(script_const(script, "LEAK_COUNT"), script_const(script, "LEAK_SIZE"))
}

/// Per-object header allowance in [`leak_bounds`] (a bytes object's header
/// is 33 bytes on 64-bit CPython 3.11/3.12).
pub const OBJECT_OVERHEAD: u64 = 64;
/// Fixed allowance in [`leak_bounds`], e.g. a list's item array.
pub const SLACK: u64 = 16 * 1024;
