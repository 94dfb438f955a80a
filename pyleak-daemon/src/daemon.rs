//! `pyleak daemon`: the service. It attaches to every process its configuration matches —
//! those running at start, and new ones as they exec (`exec_watch`) — releases them when they
//! exit, and serves their outstanding memory over HTTP (`http`): Prometheus metrics, JSON
//! reports and flamegraphs.
//!
//! One thread runs the loop below; HTTP requests run on their own threads and share the
//! [`State`] behind a mutex. Each traced process has its own `Session` (its own kernel maps),
//! so releasing one never disturbs another, and a process that cannot be attached is logged
//! and counted (`pyleak_attach_failures_total`), never fatal.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};

use crate::{
    config::{Config, ConfigError, DEFAULT_PATH as DEFAULT_CONFIG, ProcInfo, Target},
    discovery::TargetError,
    exec_watch::ExecWatcher,
    http,
    metrics::{AttachFailure, AttachFailures},
    probes::ProbeError,
    session::Session,
};

/// How long after its exec a matching process may take to map its interpreter (the dynamic
/// linker loads libpython after exec) before it counts as not Python.
const ATTACH_WINDOW: Duration = Duration::from_secs(3);
/// Full /proc scans, for processes whose exec event was missed (a full ring buffer) or that
/// started before a reload made them match.
const RESCAN_EVERY: Duration = Duration::from_secs(10);

/// Set by the signal handlers, read by the loop.
static TERMINATE: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

/// The command line's say in the configuration: added to (and overriding) the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub pids: Vec<u32>,
    pub matches: Vec<String>,
}

/// One traced process.
pub struct Tracked {
    pub session: Session,
    pub info: ProcInfo,
    /// `/proc/PID/stat` start time: a pid reused by another process is not this one.
    pub start_time: u64,
    pub attached_at: SystemTime,
}

/// A process that matched but could not be traced (kept so it is not retried every scan,
/// and shown by `/api/processes`).
#[derive(Clone, Debug)]
pub struct Failed {
    pub start_time: u64,
    pub comm: String,
    pub reason: AttachFailure,
    pub message: String,
}

/// The shared state, even after a thread panicked while holding it: a panic in one HTTP
/// request (caught there) must not take the daemon and every traced process down with it.
pub fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the loop and the HTTP threads share.
pub struct State {
    pub config: Config,
    pub tracked: BTreeMap<u32, Tracked>,
    pub failed: BTreeMap<u32, Failed>,
    pub failures: AttachFailures,
}

pub fn run(overrides: Overrides) -> Result<()> {
    install_signal_handlers();
    let config = load_config(&overrides)?;
    tracing::info!(
        listen = %config.listen,
        targets = config.targets.iter().count(),
        max_processes = config.limits.max_processes,
        sample_bytes = config.limits.sample_bytes,
        live_map_mib_per_process = config.limits.live_map_bytes() >> 20,
        "starting"
    );
    let mut watcher = ExecWatcher::start().context("cannot watch for new processes")?;
    let state = Arc::new(Mutex::new(State {
        config,
        tracked: BTreeMap::new(),
        failed: BTreeMap::new(),
        failures: AttachFailures::default(),
    }));
    let listen = lock(&state).config.listen;
    let server = http::Server::start(listen, state.clone())?;
    tracing::info!(listen = %server.addr(), "serving /metrics, /healthz, /api/processes, /api/report, /flamegraph");

    let mut pending: HashMap<u32, Pending> = HashMap::new();
    scan(&state, &mut pending);
    attach_pending(&state, &mut pending);
    let attached = lock(&state).tracked.len();
    notify(&format!("READY=1\nSTATUS=tracing {attached} processes"));
    tracing::info!(attached, "ready");

    let watchdog = watchdog_interval();
    let mut last_watchdog = Instant::now();
    let mut last_scan = Instant::now();
    while !TERMINATE.load(Ordering::SeqCst) {
        wait_readable(watcher.fd(), Duration::from_millis(if pending.is_empty() { 250 } else { 20 }));
        if RELOAD.swap(false, Ordering::SeqCst) {
            reload(&state, &overrides, &mut pending);
        }
        for pid in watcher.drain() {
            forget_replaced(&state, &mut pending, pid);
            consider(&state, &mut pending, pid, Instant::now() + ATTACH_WINDOW);
        }
        if last_scan.elapsed() >= RESCAN_EVERY {
            last_scan = Instant::now();
            scan(&state, &mut pending);
        }
        attach_pending(&state, &mut pending);
        release_exited(&state);
        if let Some(every) = watchdog
            && last_watchdog.elapsed() >= every
        {
            notify("WATCHDOG=1");
            last_watchdog = Instant::now();
        }
    }

    notify("STOPPING=1");
    tracing::info!("terminating: detaching from every process");
    server.stop();
    let tracked = std::mem::take(&mut lock(&state).tracked);
    for (pid, t) in tracked {
        drop(t.session.finish(None));
        tracing::info!(pid, "detached");
    }
    Ok(())
}

/// The configured `[log] level` (default info), read before logging starts; a bad file is
/// reported properly once the daemon loads it.
pub fn log_level(config: Option<&Path>) -> &'static str {
    let path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    Config::load(path).map_or("info", |c| c.log_level.as_str())
}

/// The file's configuration (if any) plus the command line's targets and address.
fn load_config(o: &Overrides) -> Result<Config> {
    let mut config = match &o.config {
        Some(path) => Config::load(path)?,
        None => match Config::load(Path::new(DEFAULT_CONFIG)) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => Config::default(),
            Err(e) => return Err(e.into()),
        },
    };
    if let Some(listen) = o.listen {
        config.listen = listen;
    }
    if !o.pids.is_empty() {
        for &pid in &o.pids {
            // Kept (a pid names one process for good), but said: it cannot come later.
            if start_time(pid).is_none() {
                tracing::warn!(pid, "--pid {pid}: no such process; nothing will be traced for it");
            }
        }
        config.targets.push(Target::from_pids(&o.pids, "--pid"));
    }
    for m in &o.matches {
        let target =
            Target::from_cmdline_regex(m, "--match").map_err(|e| anyhow::anyhow!("--match {m:?}: {e}"))?;
        config.targets.push(target);
    }
    if config.targets.is_empty() {
        tracing::warn!("no targets: nothing will be traced (add [[target]] tables, --pid or --match)");
    }
    if let Some(hint) = config.limits.oversized_live_map() {
        tracing::warn!("{hint}");
    }
    Ok(config)
}

/// SIGHUP: read the configuration again. A bad file keeps the old one (and says why); the
/// listening address only changes with a restart; processes that no longer match are
/// released; new limits apply to processes attached from now on.
fn reload(state: &Arc<Mutex<State>>, overrides: &Overrides, pending: &mut HashMap<u32, Pending>) {
    let config = match load_config(overrides) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e:#}");
            return;
        }
    };
    let mut released = Vec::new();
    {
        let mut st = lock(state);
        if config.listen != st.config.listen {
            tracing::warn!(
                running = %st.config.listen,
                configured = %config.listen,
                "the listening address changes only with a restart"
            );
        }
        let pids: Vec<u32> = st.tracked.keys().copied().collect();
        for pid in pids {
            let keep = st.tracked.get(&pid).is_some_and(|t| config.targets.matches(&t.info));
            if !keep && let Some(t) = st.tracked.remove(&pid) {
                released.push((pid, t));
            }
        }
        let listen = st.config.listen;
        st.config = config;
        st.config.listen = listen;
        st.failed.clear(); // new rules may make a failed process worth another try
    }
    for (pid, t) in released {
        drop(t.session.finish(None));
        tracing::info!(pid, "detached: no longer matches the configuration");
    }
    pending.clear();
    scan(state, pending);
    tracing::info!("configuration reloaded");
}

/// A process waiting for its interpreter to be mapped.
/// While one is pending the loop polls every 20 ms, which paces the retries.
struct Pending {
    deadline: Instant,
    start_time: u64,
    waiting_for_slot: bool,
}

/// Every process in /proc that matches and is neither traced nor known to fail.
fn scan(state: &Arc<Mutex<State>>, pending: &mut HashMap<u32, Pending>) {
    let Ok(dir) = std::fs::read_dir("/proc") else { return };
    let me = std::process::id();
    for entry in dir.flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
            && pid != me
        {
            // Already running: its interpreter is mapped or never will be; one try.
            consider(state, pending, pid, Instant::now());
        }
    }
}

fn consider(state: &Arc<Mutex<State>>, pending: &mut HashMap<u32, Pending>, pid: u32, deadline: Instant) {
    if pid == std::process::id() || pending.contains_key(&pid) {
        return;
    }
    let Some(start_time) = start_time(pid) else { return };
    let st = lock(state);
    if st.tracked.get(&pid).is_some_and(|t| t.start_time == start_time)
        || st.failed.get(&pid).is_some_and(|f| f.start_time == start_time)
    {
        return;
    }
    let Ok(info) = ProcInfo::read(pid) else { return };
    if !st.config.targets.matches(&info) {
        return;
    }
    pending.insert(pid, Pending { deadline, start_time, waiting_for_slot: false });
}

fn attach_pending(state: &Arc<Mutex<State>>, pending: &mut HashMap<u32, Pending>) {
    let now = Instant::now();
    let pids: Vec<u32> = pending.keys().copied().collect();
    for pid in pids {
        let p = &pending[&pid];
        let (deadline, started) = (p.deadline, p.start_time);
        if start_time(pid) != Some(started) {
            pending.remove(&pid); // gone (or replaced) before we got to it
            continue;
        }
        let (limits, full) = {
            let st = lock(state);
            (st.config.limits.clone(), st.tracked.len() >= st.config.limits.max_processes as usize)
        };
        if full {
            // Waits for a slot; said once.
            let p = pending.get_mut(&pid).expect("present");
            if !p.waiting_for_slot {
                p.waiting_for_slot = true;
                tracing::warn!(
                    pid,
                    max_processes = limits.max_processes,
                    "matches, but max_processes processes are traced already; it waits for a slot"
                );
            }
            continue;
        }
        let info = match ProcInfo::read(pid) {
            Ok(i) => i,
            Err(_) => {
                pending.remove(&pid);
                continue;
            }
        };
        let matched = {
            let st = lock(state);
            st.config.targets.first_match(&info).map_or_else(String::new, |t| t.origin.clone())
        };
        match Session::attach(pid, limits.load_options(), false) {
            Ok(session) => {
                pending.remove(&pid);
                tracing::info!(
                    pid,
                    comm = %info.comm,
                    python = %session.python.version,
                    coverage = %session.python.coverage,
                    target = %matched,
                    "attached"
                );
                let mut st = lock(state);
                st.failed.remove(&pid);
                st.tracked.insert(
                    pid,
                    Tracked { session, info, start_time: started, attached_at: SystemTime::now() },
                );
            }
            Err(e) => {
                let reason = classify(&e);
                // Right after exec the interpreter may not be mapped yet: try again shortly.
                if reason == AttachFailure::NotPython && now < deadline {
                    continue;
                }
                pending.remove(&pid);
                let message = format!("{e:#}");
                tracing::warn!(pid, comm = %info.comm, reason = reason.as_str(), "cannot attach: {message}");
                let mut st = lock(state);
                st.failures.record(reason);
                st.failed
                    .insert(pid, Failed { start_time: started, comm: info.comm.clone(), reason, message });
            }
        }
    }
}

/// A process that called execve is a new program under the same pid and start time: what
/// was traced (its probes, its thread-state addresses, its outstanding blocks) belonged to
/// the old one, and a failure to attach was about the old one too. Both are dropped, so
/// [`consider`] looks at the new program as it would at a new process.
fn forget_replaced(state: &Arc<Mutex<State>>, pending: &mut HashMap<u32, Pending>, pid: u32) {
    let old = {
        let mut st = lock(state);
        st.failed.remove(&pid);
        st.tracked.remove(&pid)
    };
    pending.remove(&pid);
    if let Some(t) = old {
        drop(t.session.finish(None));
        tracing::info!(pid, comm = %t.info.comm, "released: the process replaced its program (execve); the new one is considered afresh");
    }
}

/// Releases processes that exited (or whose pid now belongs to another process).
fn release_exited(state: &Arc<Mutex<State>>) {
    let gone: Vec<(u32, Tracked)> = {
        let mut st = lock(state);
        let pids: Vec<u32> = st
            .tracked
            .iter()
            .filter(|(pid, t)| start_time(**pid) != Some(t.start_time))
            .map(|(pid, _)| *pid)
            .collect();
        pids.into_iter().filter_map(|pid| st.tracked.remove(&pid).map(|t| (pid, t))).collect()
    };
    for (pid, t) in gone {
        drop(t.session.finish(None));
        tracing::info!(pid, comm = %t.info.comm, "released: the process exited");
    }
    // Failures of processes that are gone are forgotten (their pids will be reused).
    let mut st = lock(state);
    st.failed.retain(|pid, f| start_time(*pid) == Some(f.start_time));
}

/// Maps an attach error to the `reason` label of `pyleak_attach_failures_total`.
pub fn classify(e: &anyhow::Error) -> AttachFailure {
    for cause in e.chain() {
        if let Some(t) = cause.downcast_ref::<TargetError>() {
            return match t {
                TargetError::NoSuchProcess { .. } | TargetError::Zombie { .. } => AttachFailure::Gone,
                TargetError::PermissionDenied { .. } => AttachFailure::Permission,
                TargetError::NotPython { .. } => AttachFailure::NotPython,
                TargetError::UnsupportedVersion { .. }
                | TargetError::UnknownVersion { .. }
                | TargetError::FreeThreaded { .. } => AttachFailure::UnsupportedVersion,
                #[allow(unreachable_patterns)]
                _ => AttachFailure::Other,
            };
        }
        if let Some(ProbeError::MissingCapability) = cause.downcast_ref::<ProbeError>() {
            return AttachFailure::Permission;
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return AttachFailure::Other;
        }
    }
    AttachFailure::Other
}

/// The process's start time (clock ticks since boot, `/proc/PID/stat` field 22), or `None`
/// when it is gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn wait_readable(fd: i32, timeout: Duration) {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
}

fn install_signal_handlers() {
    extern "C" fn on_terminate(_: libc::c_int) {
        TERMINATE.store(true, Ordering::SeqCst);
    }
    extern "C" fn on_hangup(_: libc::c_int) {
        RELOAD.store(true, Ordering::SeqCst);
    }
    // SAFETY: the handlers only store to atomics, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_terminate as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_terminate as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_hangup as *const () as libc::sighandler_t);
    }
}

/// Sends `state` to systemd's notification socket (`Type=notify`), if there is one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send_notify(&path, state) {
        tracing::warn!("cannot notify systemd on {}: {e}", path.to_string_lossy());
    }
}

fn send_notify(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::{linux::net::SocketAddrExt, unix::net::UnixDatagram};
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), Path::new(path))?;
    }
    Ok(())
}

/// Half of systemd's `WatchdogSec=` (from `WATCHDOG_USEC`, for this process only).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_read_past_a_command_name_with_parentheses() {
        let me = start_time(std::process::id()).expect("own start time");
        assert!(me > 0);
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn classify_names_the_reasons() {
        let e = anyhow::Error::new(TargetError::NotPython { pid: 1, exe: "/bin/sh".into() }).context("x");
        assert_eq!(classify(&e), AttachFailure::NotPython);
        let e = anyhow::Error::new(TargetError::NoSuchProcess { pid: 1 });
        assert_eq!(classify(&e), AttachFailure::Gone);
        let e = anyhow::Error::new(ProbeError::MissingCapability);
        assert_eq!(classify(&e), AttachFailure::Permission);
        assert_eq!(classify(&anyhow::anyhow!("boom")), AttachFailure::Other);
    }

    #[test]
    fn notify_reaches_a_bound_datagram_socket() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        send_notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
