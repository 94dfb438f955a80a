//! One run: start the wrapped program, attach the tracer, time the program, collect the costs.
//!
//! The target is `python [MODE ARGS] wrapper.py PROGRAM [ARGS]` (see `xtask/bench/wrapper.py`
//! for its protocol). In pyleak's modes, `pyleak trace --pid PID` attaches once the wrapper is
//! ready and before it is released; it is ended with SIGTERM (it reports, then exits) after
//! the program is done but while its memory is still allocated, and reaped with `wait4`, whose
//! rusage is pyleak's own CPU time and peak RSS, not the target's.
use std::{
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{Program, doc::Cost};
use crate::cmd;

/// How long the wrapper may take to compile its program and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long pyleak may take to attach (it reads the interpreter's symbols first).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one program may run (a single-stepped probe can make it 50x slower).
const DONE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long pyleak may take to report and exit after SIGTERM, and the target to exit after
/// its stdin closes.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// What pyleak prints on stderr once its probes are attached.
const ATTACHED: &str = "pyleak: attached to pid ";

/// The wrapper's protocol lines.
const READY: &str = "@@bench ready";
const DONE: &str = "@@bench done ";
const TRUTH: &str = "@@bench truth ";

/// What to run.
pub struct Spec<'a> {
    /// The venv's interpreter.
    pub python: &'a Path,
    pub wrapper: PathBuf,
    pub program: &'a Program,
    /// Arguments between `python` and the wrapper (tracemalloc, memray).
    pub python_args: Vec<String>,
    /// `Some`: attach `pyleak trace` with these flags.
    pub pyleak_flags: Option<Vec<String>>,
    pub pyleak: &'a Path,
    /// Where the report, memray's output and the target's stderr go.
    pub scratch: &'a Path,
    /// pyleak's `--top`.
    pub report_top: usize,
    /// Read pyleak's RSS and BPF maps once the program is done.
    pub inspect: bool,
}

/// What one run measured.
pub struct Outcome {
    /// The program's own wall time, as the wrapper measured it.
    pub seconds: f64,
    /// What the program's `bench_truth()` returned, if it has one.
    pub truth: Option<serde_json::Value>,
    pub pyleak: Option<PyleakRun>,
}

/// pyleak's side of a run.
pub struct PyleakRun {
    pub cost: Cost,
    /// Its JSON report, if it wrote one.
    pub report: Option<serde_json::Value>,
    pub inspection: Option<Inspection>,
}

/// pyleak's state while the program's memory is outstanding.
pub struct Inspection {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// Its BPF maps, by id.
    pub maps: Vec<BpfMap>,
}

/// One BPF map pyleak holds, from `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfMap {
    pub id: u32,
    /// The map's name (from bpftool, when it is installed), else empty.
    pub name: String,
    pub kind: String,
    pub key_size: u64,
    pub value_size: u64,
    pub max_entries: u64,
    /// Kernel memory charged to the map (`memlock:`), bytes.
    pub memlock: u64,
}

pub fn run(spec: &Spec) -> Result<Outcome> {
    let target_log = spec.scratch.join("target.stderr");
    let report_path = spec.scratch.join("report.json");
    let _ = fs::remove_file(&report_path);
    let mut c = cmd::cmd(spec.python);
    c.args(&spec.python_args).arg(&spec.wrapper).arg(&spec.program.path).args(&spec.program.args);
    // A fixed hash seed: one source of run-to-run variance less (dict and set layouts).
    c.env("PYTHONHASHSEED", "0");
    let shown = cmd::show(&c);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&target_log).with_context(|| format!("creating {}", target_log.display()))?);
    let mut target = Proc::spawn(c, "target")?;
    let failed = |what: String, out: &[String]| {
        anyhow::anyhow!(
            "{what}\n  target: {shown}\n  its stdout ends: {}\n  its stderr ends: {}",
            last_lines(out),
            fs::read_to_string(&target_log)
                .map(|s| last_lines(&s.lines().map(String::from).collect::<Vec<_>>()))
                .unwrap_or_default()
        )
    };
    let mut stdin = target.child.stdin.take().expect("stdin is piped");
    let stdout = lines(target.child.stdout.take().expect("stdout is piped"));
    let mut out = Vec::new();
    wait_line(&stdout, &mut out, READY_TIMEOUT, |l| l == READY)
        .map_err(|w| failed(format!("the wrapper did not get ready ({w})"), &out))?;

    let mut tracer = match &spec.pyleak_flags {
        Some(flags) => Some(Tracer::attach(spec, flags, target.pid(), &report_path)?),
        None => None,
    };
    writeln!(stdin, "go").and_then(|()| stdin.flush()).context("releasing the wrapper")?;
    let done = wait_line(&stdout, &mut out, DONE_TIMEOUT, |l| l.starts_with(DONE))
        .map_err(|w| failed(format!("the program did not finish ({w})"), &out))?;
    let seconds: f64 = done[DONE.len()..].trim().parse().with_context(|| format!("bad line {done:?}"))?;
    let truth = out
        .iter()
        .find_map(|l| l.strip_prefix(TRUTH))
        .map(serde_json::from_str)
        .transpose()
        .context("the wrapper's truth line is not JSON")?;

    let pyleak = match tracer.as_mut() {
        Some(t) => {
            let inspection = if spec.inspect { Some(inspect(t.proc.pid())?) } else { None };
            let cost = t.finish()?;
            let report = match fs::read_to_string(&report_path) {
                Ok(text) => Some(serde_json::from_str(&text).context("pyleak's report is not JSON")?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).context(format!("reading {}", report_path.display())),
            };
            Some(PyleakRun { cost, report, inspection })
        }
        None => None,
    };
    drop(stdin);
    let exit = target.wait(EXIT_TIMEOUT)?;
    if !exit.success() {
        return Err(failed(format!("the target ended with {}", exit.describe()), &out));
    }
    Ok(Outcome { seconds, truth, pyleak })
}

/// A running `pyleak trace`.
struct Tracer {
    proc: Proc,
    stderr: Receiver<String>,
    seen: Vec<String>,
    shown: String,
}

impl Tracer {
    /// Starts `pyleak trace --pid PID` and waits until it says it is attached.
    fn attach(spec: &Spec, flags: &[String], pid: i32, report: &Path) -> Result<Tracer> {
        let mut c = cmd::cmd(spec.pyleak);
        c.args(["trace", "--pid", &pid.to_string(), "--format", "json", "--group-by", "line"])
            .args(["--top", &spec.report_top.to_string()])
            .arg("-o")
            .arg(report)
            .args(flags);
        let shown = cmd::show(&c);
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut proc = Proc::spawn(c, "pyleak")?;
        let stderr = lines(proc.child.stderr.take().expect("stderr is piped"));
        let mut t = Tracer { proc, stderr, seen: Vec::new(), shown };
        if let Err(w) = wait_line(&t.stderr, &mut t.seen, ATTACH_TIMEOUT, |l| l.starts_with(ATTACHED)) {
            if w != Waited::Ended {
                let _ = t.proc.child.kill();
            }
            let exit = t.proc.wait(EXIT_TIMEOUT)?;
            t.drain();
            let hint = if exit.code() == Some(2) {
                " (a usage error: does this pyleak have these flags?)"
            } else {
                ""
            };
            bail!(
                "`{}` did not attach ({w}; it ended with {}{hint}): {}",
                t.shown,
                exit.describe(),
                last_lines(&t.seen)
            );
        }
        Ok(t)
    }

    /// Ends the trace (SIGTERM: pyleak reports, then exits) and returns pyleak's own costs.
    fn finish(&mut self) -> Result<Cost> {
        // SAFETY: kill(2) on our own child, which is not reaped yet (so the pid is still its).
        if unsafe { libc::kill(self.proc.pid(), libc::SIGTERM) } != 0 {
            return Err(io::Error::last_os_error()).context("sending SIGTERM to pyleak");
        }
        let exit = self.proc.wait(EXIT_TIMEOUT)?;
        self.drain();
        if !exit.success() {
            bail!("`{}` ended with {}: {}", self.shown, exit.describe(), last_lines(&self.seen));
        }
        Ok(exit.cost())
    }

    /// Collects what pyleak wrote to stderr since the last read (it has exited).
    fn drain(&mut self) {
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(l);
        }
    }
}

// ---- processes ------------------------------------------------------------------------------

/// A child process that is killed and reaped if it is still running when dropped (a failed
/// run leaves nothing behind).
struct Proc {
    child: Child,
    reaped: bool,
    name: &'static str,
}

/// How a child ended, with its resource usage.
struct Exit {
    status: libc::c_int,
    usage: libc::rusage,
}

impl Proc {
    fn spawn(mut c: Command, name: &'static str) -> Result<Proc> {
        let child = c.spawn().with_context(|| format!("could not run `{}`", cmd::show(&c)))?;
        Ok(Proc { child, reaped: false, name })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the child to exit with `wait4`, killing it (SIGKILL) after `timeout`.
    fn wait(&mut self, timeout: Duration) -> Result<Exit> {
        let deadline = Instant::now() + timeout;
        let mut killed = false;
        loop {
            let mut status = 0;
            // SAFETY: rusage is plain data, and wait4 writes only into the two locals.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::wait4(self.pid(), &mut status, libc::WNOHANG, &mut usage) };
            if r == self.pid() {
                self.reaped = true;
                if killed {
                    bail!("the {} process did not exit within {} s; killed it", self.name, timeout.as_secs());
                }
                return Ok(Exit { status, usage });
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).with_context(|| format!("waiting for the {} process", self.name));
            }
            if !killed && Instant::now() >= deadline {
                let _ = self.child.kill();
                killed = true;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Exit {
    fn success(&self) -> bool {
        self.code() == Some(0)
    }

    fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }

    fn describe(&self) -> String {
        match self.code() {
            Some(c) => format!("exit status {c}"),
            None if libc::WIFSIGNALED(self.status) => format!("signal {}", libc::WTERMSIG(self.status)),
            None => format!("wait status {:#x}", self.status),
        }
    }

    /// CPU time (user + system) and peak RSS of the process itself.
    fn cost(&self) -> Cost {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Cost {
            cpu_s: secs(self.usage.ru_utime) + secs(self.usage.ru_stime),
            max_rss_kib: self.usage.ru_maxrss as u64,
        }
    }
}

/// The lines `r` yields, sent by a thread as they come (so reads can time out).
fn lines(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Why [`wait_line`] returned without the line it waited for.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// The stream ended: the process closed it or exited.
    Ended,
    TimedOut(Duration),
}

impl std::fmt::Display for Waited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waited::Ended => write!(f, "its output ended"),
            Waited::TimedOut(t) => write!(f, "nothing after {} s", t.as_secs_f64()),
        }
    }
}

/// Receives lines, keeping each in `seen`, until one satisfies `want`; returns it.
fn wait_line(
    rx: &Receiver<String>,
    seen: &mut Vec<String>,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> std::result::Result<String, Waited> {
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                seen.push(line.clone());
                if want(&line) {
                    return Ok(line);
                }
            }
            Err(RecvTimeoutError::Timeout) => return Err(Waited::TimedOut(timeout)),
            Err(RecvTimeoutError::Disconnected) => return Err(Waited::Ended),
        }
    }
}

/// The last few lines, for an error message.
fn last_lines(lines: &[String]) -> String {
    let start = lines.len().saturating_sub(8);
    if lines.is_empty() { "(nothing)".into() } else { lines[start..].join("\n    ") }
}

// ---- pyleak's state -------------------------------------------------------------------------

/// pyleak's resident memory and its BPF maps, read from /proc while it runs.
fn inspect(pid: i32) -> Result<Inspection> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).context("reading pyleak's status")?;
    let rss_kib = status_kib(&status, "VmRSS:").context("no VmRSS in pyleak's status")?;
    let mut maps = Vec::new();
    let fds = format!("/proc/{pid}/fd");
    for entry in fs::read_dir(&fds).with_context(|| format!("listing {fds}"))?.flatten() {
        if fs::read_link(entry.path()).is_ok_and(|l| l == Path::new("anon_inode:bpf-map")) {
            let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            if let Some(map) = fs::read_to_string(&info).ok().and_then(|t| parse_fdinfo(&t)) {
                maps.push(map);
            }
        }
    }
    maps.sort_by_key(|m| m.id);
    maps.dedup_by_key(|m| m.id);
    if cmd::find_on_path("bpftool").is_some() || Path::new("/usr/sbin/bpftool").exists() {
        for m in &mut maps {
            m.name = bpftool_name(m.id).unwrap_or_default();
        }
    }
    Ok(Inspection { rss_kib, maps })
}

/// A `Key:   N kB` line of /proc/PID/status, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok()
}

/// A BPF map's fdinfo (`map_type:`, `key_size:`, ..., `memlock:`, `map_id:`).
fn parse_fdinfo(text: &str) -> Option<BpfMap> {
    let field = |key: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?.trim().parse().ok()
    };
    Some(BpfMap {
        id: field("map_id")? as u32,
        name: String::new(),
        kind: map_type_name(field("map_type")? as u32),
        key_size: field("key_size")?,
        value_size: field("value_size")?,
        max_entries: field("max_entries")?,
        memlock: field("memlock")?,
    })
}

/// `enum bpf_map_type` (include/uapi/linux/bpf.h), for the types a tracer uses.
fn map_type_name(t: u32) -> String {
    let name = match t {
        1 => "hash",
        2 => "array",
        3 => "prog_array",
        4 => "perf_event_array",
        5 => "percpu_hash",
        6 => "percpu_array",
        7 => "stack_trace",
        9 => "lru_hash",
        10 => "lru_percpu_hash",
        27 => "ringbuf",
        _ => return format!("type {t}"),
    };
    name.to_string()
}

/// The map's name, from `bpftool -j map show id ID` (`"name":"LIVE_ALLOCS"`).
fn bpftool_name(id: u32) -> Option<String> {
    let tool = cmd::find_on_path("bpftool").unwrap_or_else(|| "/usr/sbin/bpftool".into());
    let out = cmd::capture(cmd::cmd(tool).args(["-j", "map", "show", "id", &id.to_string()])).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["name"].as_str().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_hash_map() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\nkey_size:\t8\n\
                    value_size:\t32\nmax_entries:\t1048576\nmap_flags:\t0x1\nmap_extra:\t0x0\n\
                    memlock:\t41943040\nmap_id:\t77\nfrozen:\t0\n";
        let m = parse_fdinfo(text).unwrap();
        assert_eq!(
            m,
            BpfMap {
                id: 77,
                name: String::new(),
                kind: "hash".into(),
                key_size: 8,
                value_size: 32,
                max_entries: 1048576,
                memlock: 41943040,
            }
        );
        assert!(parse_fdinfo("pos:\t0\nflags:\t02\n").is_none(), "not a map");
        assert_eq!(map_type_name(99), "type 99");
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tpyleak\nVmHWM:\t  51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(40960));
        assert_eq!(status_kib(status, "VmHWM:"), Some(51200));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn waiting_for_a_line() {
        let (tx, rx) = mpsc::channel();
        for l in ["noise", "@@bench ready", "later"] {
            tx.send(l.to_string()).unwrap();
        }
        let mut seen = Vec::new();
        assert_eq!(wait_line(&rx, &mut seen, Duration::from_secs(1), |l| l == READY).unwrap(), READY);
        assert_eq!(seen, ["noise", READY]);
        let short = Duration::from_millis(10);
        let timed_out = wait_line(&rx, &mut seen, short, |l| l == "never").unwrap_err();
        assert_eq!(timed_out, Waited::TimedOut(short));
        assert_eq!(timed_out.to_string(), "nothing after 0.01 s");
        drop(tx);
        assert_eq!(wait_line(&rx, &mut seen, short, |_| false).unwrap_err(), Waited::Ended);
    }

    #[test]
    fn a_child_is_reaped_with_its_usage() {
        let mut c = cmd::cmd("sh");
        c.args(["-c", "exit 3"]);
        let mut p = Proc::spawn(c, "sh").unwrap();
        let exit = p.wait(Duration::from_secs(10)).unwrap();
        assert_eq!(exit.code(), Some(3));
        assert!(exit.cost().max_rss_kib > 0);
        let mut c = cmd::cmd("sleep");
        c.arg("30");
        let mut p = Proc::spawn(c, "sleep").unwrap();
        let Err(err) = p.wait(Duration::from_millis(50)) else { panic!("sleep 30 ended within 50 ms") };
        assert!(format!("{err:#}").contains("killed it"), "{err:#}");
    }
}
