//! The daemon's HTTP server (DESIGN.md §4): `/metrics`, `/healthz`, `/api/processes`,
//! `/api/report?pid=N&...` and `/flamegraph?pid=N&format=...`.
//!
//! Blocking `tiny_http` with a few worker threads: requests are rare (a scrape every 15 s,
//! an engineer's flamegraph) and each one mostly reads kernel maps. Every error is a status
//! with a one-line plain-text reason; nothing a client sends can stop the server.
use std::{
    io::Cursor,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response};

use crate::{
    daemon::{State, lock},
    metrics::{self, DaemonSnapshot, ProcessSnapshot},
    model::Report,
    report::{self, Format, GroupBy, ReportOptions},
};

const WORKERS: usize = 4;

/// Binds `listen`; a failure says what to change, by its cause.
fn bind(listen: SocketAddr) -> Result<tiny_http::Server> {
    tiny_http::Server::http(listen).map_err(|e| {
        let kind = e.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
        anyhow::anyhow!("{e}").context(format!("cannot listen on {listen} ({})", bind_hint(kind, listen)))
    })
}

/// What to do about a failed bind, by its cause.
fn bind_hint(kind: Option<std::io::ErrorKind>, listen: SocketAddr) -> String {
    use std::io::ErrorKind::*;
    let change = "set listen in the configuration, or --listen";
    match kind {
        Some(AddrInUse) => {
            format!("another program, perhaps another pyleak daemon, holds port {}; {change}", listen.port())
        }
        Some(AddrNotAvailable) => {
            format!("no network interface of this host has the address {}; {change}", listen.ip())
        }
        Some(PermissionDenied) => format!(
            "ports below 1024 need CAP_NET_BIND_SERVICE; choose a port of 1024 or above ({change}), or grant the capability"
        ),
        _ => change.to_string(),
    }
}

pub struct Server {
    server: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    /// Binds `listen` and starts serving `state`.
    pub fn start(listen: SocketAddr, state: Arc<Mutex<State>>) -> Result<Server> {
        let server = bind(listen)?;
        let addr = server.server_addr().to_ip().unwrap_or(listen);
        let server = Arc::new(server);
        let workers = (0..WORKERS)
            .map(|i| {
                let (server, state) = (server.clone(), state.clone());
                std::thread::Builder::new()
                    .name(format!("pyleak-http-{i}"))
                    .spawn(move || {
                        for request in server.incoming_requests() {
                            // A bug in one request must not end the worker: four such and
                            // nothing would answer /metrics again.
                            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                handle(request, &state)
                            }));
                            if handled.is_err() {
                                tracing::error!(
                                    "an HTTP request failed with a panic (a bug); the daemon goes on"
                                );
                            }
                        }
                    })
                    .expect("spawning an HTTP worker")
            })
            .collect();
        Ok(Server { server, workers, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(self) {
        self.server.unblock();
        for _ in 1..WORKERS {
            self.server.unblock();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// A response body with its content type, or an error status with its reason.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn ok(content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply { status: 200, content_type, body }
    }

    fn error(status: u16, message: impl Into<String>) -> Reply {
        let mut body = message.into().into_bytes();
        body.push(b'\n');
        Reply { status, content_type: "text/plain; charset=utf-8", body }
    }

    fn json(value: &impl Serialize) -> Reply {
        match serde_json::to_vec_pretty(value) {
            Ok(body) => Reply::ok("application/json", body),
            Err(e) => Reply::error(500, format!("encoding JSON: {e}")),
        }
    }
}

fn handle(request: Request, state: &Mutex<State>) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let reply = if !matches!(request.method(), Method::Get | Method::Head) {
        Reply::error(405, format!("{} is not supported; use GET", request.method()))
    } else {
        let accept = request.headers().iter().find(|h| h.field.equiv("Accept")).map(|h| h.value.to_string());
        match path {
            "/healthz" => Reply::ok("text/plain; charset=utf-8", b"ok\n".to_vec()),
            "/metrics" => metrics_reply(state, accept.as_deref()),
            "/api/processes" => Reply::json(&processes(state)),
            "/api/report" => report_reply(state, query, Format::Json),
            "/flamegraph" => report_reply(state, query, Format::Svg),
            _ => Reply::error(
                404,
                format!(
                    "no such path {}; try /metrics, /healthz, /api/processes, /api/report?pid=N, /flamegraph?pid=N",
                    shorten(path)
                ),
            ),
        }
    };
    if reply.status >= 400 {
        tracing::debug!(status = reply.status, url, "request refused");
    }
    let mut headers = vec![Header::from_bytes("Content-Type", reply.content_type).expect("valid header")];
    if reply.status == 405 {
        headers.push(Header::from_bytes("Allow", "GET, HEAD").expect("valid header"));
    }
    let response = Response::new(
        reply.status.into(),
        headers,
        Cursor::new(reply.body.clone()),
        Some(reply.body.len()),
        None,
    );
    let _ = request.respond(response);
}

/// A request path as an error message shows it: at most 100 characters (it comes from the
/// client, and may be megabytes long).
fn shorten(path: &str) -> String {
    match path.char_indices().nth(100) {
        Some((cut, _)) => format!("{}...", &path[..cut]),
        None => path.to_string(),
    }
}

fn metrics_reply(state: &Mutex<State>, accept: Option<&str>) -> Reply {
    let (snapshots, daemon, top) = {
        let st = lock(state);
        let min_age = st.config.limits.min_age;
        let whole = ReportOptions::default();
        let snapshots: Vec<ProcessSnapshot> = st
            .tracked
            .iter()
            .filter_map(|(pid, t)| {
                let raw = t.session.snapshot(min_age);
                let report = report::shape(&raw, &whole).ok()?;
                Some(ProcessSnapshot {
                    comm: t.info.comm.clone(),
                    report,
                    rss_bytes: rss_bytes(*pid),
                    probe_hits: None,
                    kernel_events: t.session.counters(),
                })
            })
            .collect();
        let daemon = DaemonSnapshot {
            attached_processes: st.tracked.len() as u64,
            attach_failures: st.failures.clone(),
            ..DaemonSnapshot::default()
        };
        (snapshots, daemon, st.config.limits.metrics_top_stacks)
    };
    let format = metrics::Format::negotiate(accept);
    Reply::ok(format.content_type(), metrics::render(&snapshots, &daemon, top, format).into_bytes())
}

/// `VmRSS` of `/proc/PID/status`, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One entry of `/api/processes`.
#[derive(Serialize)]
struct ProcessEntry {
    pid: u32,
    comm: String,
    command: String,
    python_version: String,
    executable: String,
    coverage: String,
    /// Seconds since the Unix epoch.
    attached_at: u64,
    outstanding_bytes: u64,
    outstanding_allocations: u64,
    lost_events: u64,
}

#[derive(Serialize)]
struct FailedEntry {
    pid: u32,
    comm: String,
    reason: &'static str,
    message: String,
}

#[derive(Serialize)]
struct Processes {
    traced: Vec<ProcessEntry>,
    /// Processes that match the configuration but could not be traced, and why.
    failed: Vec<FailedEntry>,
}

fn processes(state: &Mutex<State>) -> Processes {
    let st = lock(state);
    let traced = st
        .tracked
        .iter()
        .map(|(pid, t)| {
            let totals = t.session.snapshot(None).totals;
            ProcessEntry {
                pid: *pid,
                comm: t.info.comm.clone(),
                command: t.session.command.clone(),
                python_version: t.session.python.version.clone(),
                executable: t.session.python.executable.clone(),
                coverage: t.session.python.coverage.clone(),
                attached_at: t.attached_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                outstanding_bytes: totals.outstanding_bytes,
                outstanding_allocations: totals.outstanding_allocations,
                lost_events: totals.lost_events,
            }
        })
        .collect();
    let failed = st
        .failed
        .iter()
        .map(|(pid, f)| FailedEntry {
            pid: *pid,
            comm: f.comm.clone(),
            reason: f.reason.as_str(),
            message: f.message.clone(),
        })
        .collect();
    Processes { traced, failed }
}

/// The report options of DESIGN.md §4 as query parameters.
#[derive(Debug, Default, PartialEq)]
pub struct ReportQuery {
    pub pid: u32,
    pub format: Format,
    pub group_by: GroupBy,
    pub top: Option<usize>,
    pub min_age: Option<Duration>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub frames: Option<usize>,
}

/// Parses `pid=N&format=..&group_by=..&top=N&min_age=SECS&include=GLOB&exclude=GLOB&frames=N`
/// (`group-by`/`min-age` spellings accepted too). Errors name the parameter.
pub fn parse_report_query(query: &str, default_format: Format) -> Result<ReportQuery, String> {
    let mut q = ReportQuery { format: default_format, ..ReportQuery::default() };
    let mut pid = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let v = value.as_ref();
        match key.as_ref() {
            "pid" => {
                pid = Some(v.parse::<u32>().map_err(|_| format!("pid: expected a process id, got {v:?}"))?)
            }
            "format" => q.format = value_enum("format", v)?,
            "group_by" | "group-by" => q.group_by = value_enum("group_by", v)?,
            "top" => q.top = Some(at_least_one("top", v)?),
            "frames" => q.frames = Some(at_least_one("frames", v)?),
            "min_age" | "min-age" => match crate::cli::seconds(v) {
                Ok(s) => q.min_age = Some(Duration::from_secs_f64(s)),
                Err(e) => return Err(format!("min_age: {e}, got {v:?}")),
            },
            "include" => q.include.push(v.to_string()),
            "exclude" => q.exclude.push(v.to_string()),
            other => {
                return Err(format!(
                    "unknown parameter {other:?}; known: pid, format, group_by, top, min_age, include, exclude, frames"
                ));
            }
        }
    }
    q.pid = pid.ok_or("pid: required (e.g. ?pid=4242; /api/processes lists the traced ones)")?;
    Ok(q)
}

fn value_enum<T: ValueEnum>(name: &str, v: &str) -> Result<T, String> {
    T::from_str(v, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|x| x.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        format!("{name}: {v:?} is not one of {}", names.join(", "))
    })
}

fn number(name: &str, v: &str) -> Result<usize, String> {
    v.parse().map_err(|_| format!("{name}: expected a whole number, got {v:?}"))
}

/// [`number`], refusing 0 (a count of things to show).
fn at_least_one(name: &str, v: &str) -> Result<usize, String> {
    match number(name, v)? {
        0 => Err(format!("{name}: must be at least 1")),
        n => Ok(n),
    }
}

fn report_reply(state: &Mutex<State>, query: &str, default_format: Format) -> Reply {
    let q = match parse_report_query(query, default_format) {
        Ok(q) => q,
        Err(msg) => return Reply::error(400, msg),
    };
    let opts = ReportOptions {
        group_by: q.format.group_by(q.group_by),
        top: q.top,
        include: q.include.clone(),
        exclude: q.exclude.clone(),
        frames: q.frames,
    };
    if let Err(e) = report::FrameFilter::new(&opts.include, &opts.exclude) {
        return Reply::error(400, format!("{e:#}"));
    }
    let raw: Report = {
        let st = lock(state);
        match st.tracked.get(&q.pid) {
            Some(t) => t.session.snapshot(q.min_age.or(st.config.limits.min_age)),
            None => {
                let why = match st.failed.get(&q.pid) {
                    Some(f) => format!("pid {} is not traced: {}", q.pid, f.message),
                    None => format!("pid {} is not traced by this daemon (see /api/processes)", q.pid),
                };
                return Reply::error(404, why);
            }
        }
    };
    let shaped = match report::shape(&raw, &opts) {
        Ok(r) => r,
        Err(e) => return Reply::error(400, format!("{e:#}")),
    };
    let mut body = Vec::new();
    if let Err(e) = report::render(&shaped, q.format, opts.group_by, &mut body) {
        return Reply::error(500, format!("rendering the report: {e:#}"));
    }
    Reply::ok(content_type(q.format), body)
}

fn content_type(format: Format) -> &'static str {
    match format {
        Format::Table | Format::Folded => "text/plain; charset=utf-8",
        Format::Json => "application/json",
        Format::Svg => "image/svg+xml",
        Format::Pprof => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_bind_says_what_to_change() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap();
        let msg = format!("{:#}", bind(taken).err().unwrap());
        assert!(
            msg.contains(&format!("perhaps another pyleak daemon, holds port {}", taken.port())),
            "{msg}"
        );
        // TEST-NET-1 (RFC 5737): no interface has it.
        let absent: SocketAddr = "192.0.2.1:9464".parse().unwrap();
        let msg = format!("{:#}", bind(absent).err().unwrap());
        assert!(msg.contains("no network interface of this host has the address 192.0.2.1"), "{msg}");
        assert!(!msg.contains("another pyleak"), "{msg}");
    }

    #[test]
    fn report_query_parses_every_option() {
        let q = parse_report_query(
            "pid=42&format=svg&group_by=line&top=5&min_age=1.5&include=*app*&exclude=%2Fusr%2F*&frames=3",
            Format::Json,
        )
        .unwrap();
        assert_eq!(q.pid, 42);
        assert_eq!(q.format, Format::Svg);
        assert_eq!(q.group_by, GroupBy::Line);
        assert_eq!(q.top, Some(5));
        assert_eq!(q.min_age, Some(Duration::from_millis(1500)));
        assert_eq!(q.include, vec!["*app*"]);
        assert_eq!(q.exclude, vec!["/usr/*"]);
        assert_eq!(q.frames, Some(3));
        assert_eq!(parse_report_query("pid=1", Format::Svg).unwrap().format, Format::Svg);
    }

    #[test]
    fn bad_report_queries_name_the_parameter() {
        for (query, needle) in [
            ("", "pid: required"),
            ("pid=abc", "pid: expected"),
            ("pid=1&format=png", "format: \"png\" is not one of"),
            ("pid=1&group_by=module", "group_by"),
            ("pid=1&top=-1", "top: expected"),
            ("pid=1&frames=0", "frames: must be"),
            ("pid=1&top=0", "top: must be"),
            ("pid=1&min_age=-2", "min_age"),
            ("pid=1&min_age=1e20", "min_age: expected a number of seconds from 0 to 1e9"),
            ("pid=1&min_age=NaN", "min_age"),
            ("pid=1&color=red", "unknown parameter \"color\""),
        ] {
            let err = parse_report_query(query, Format::Json).unwrap_err();
            assert!(err.contains(needle), "{query}: {err}");
        }
    }
}
