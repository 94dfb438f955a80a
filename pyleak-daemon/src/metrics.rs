//! The daemon's `/metrics` body: OpenMetrics text (or the older Prometheus text format) made
//! from snapshots of the traced processes.
//!
//! This module owns metric names, labels, help texts, the top-N stack selection and the
//! content negotiation; the HTTP server hands it the current snapshots and the request's
//! `Accept` header and sends back what [`render`] returns, with [`Format::content_type`].
//!
//! # How the exposition is built
//!
//! Every value here is a snapshot the daemon already holds (a [`Report`] per process, counts
//! it keeps), not something instrumented code increments. So there are no live metric objects:
//! each scrape builds a fresh `prometheus_client` [`Registry`] holding one custom
//! [`Collector`] — [`Exposition`], a compact copy of just what is exported — and encodes it.
//! A long-lived registry of `Gauge`/`Counter` families would need every series of an exited
//! process removed by hand, and counters fed deltas rather than the totals the kernel gives;
//! building per scrape costs a few allocations and cannot leave a stale series behind. The
//! registry adds the `pyleak_` prefix, the crate adds the `_total`, `_info` and unit suffixes,
//! writes `# UNIT` lines, escapes label values (`\`, `"`, newline) and ends OpenMetrics with
//! `# EOF`.
//!
//! # Metrics
//!
//! Daemon-wide:
//! - `pyleak_build_info{version}` (info, 1);
//! - `pyleak_attached_processes` (gauge);
//! - `pyleak_attach_failures_total{reason}` (counter; every [`AttachFailure`] reason always
//!   present, 0 included, so `rate()` and alerts work before the first failure).
//!
//! Per traced process, labelled `pid` and `comm` (`/proc/PID/comm`, at most 15 bytes):
//! - `pyleak_process_info{pid,comm,python_version,coverage}` (info, 1);
//! - `pyleak_process_outstanding_bytes`, `pyleak_process_outstanding_allocations` (gauges);
//! - `pyleak_process_allocated_bytes_total`, `pyleak_process_freed_bytes_total` (counters,
//!   since pyleak attached);
//! - `pyleak_process_rss_bytes` (gauge; absent when /proc could not be read);
//! - `pyleak_process_sample_bytes` (gauge: the sampling interval; 0 = every allocation
//!   recorded, else the process's values are estimates);
//! - `pyleak_lost_events_total` (counter: allocations not recorded because a kernel map was
//!   full; the totals exclude them);
//! - `pyleak_probe_hits_total` (counter; absent when not known);
//! - `pyleak_kernel_events_total{pid,comm,event}` (counter: the kernel side's own counters,
//!   [`pyleak_common::Counter`], named by `Counter::name`; absent when not given);
//! - `pyleak_stack_outstanding_bytes{pid,comm,stack,function,file,line}` (gauge): the
//!   `metrics_top_stacks` (N) stacks with the most outstanding bytes, each its own series, and
//!   one more series, `stack="other"` (with empty function, file and line), holding the sum of
//!   all the others — 0 when none were folded; it is always there, so `sum by (pid)` over this
//!   metric equals the process's outstanding bytes in the stacks of the report;
//! - `pyleak_stack_folded_stacks` (gauge): how many stacks `other` sums.
//! - `pyleak_bpf_program_runs_total{pid,comm,program}` and
//!   `pyleak_bpf_program_run_seconds_total{pid,comm,program}` (counters; only with
//!   `limits.bpf_stats`): each pyleak kernel program's runs in the process and the time
//!   spent in it, as the kernel accounts it (the probe traps excluded).
//!
//! `stack` is a stable id: 16 hex digits of a 64-bit FNV-1a hash of the whole stack (function,
//! qualified name, file and line of every frame), the same across scrapes and daemon restarts
//! while the code does not change, so a leaking stack keeps one time series. `function`,
//! `file` and `line` describe `frames[0]`, the line that allocated (`function` is the
//! qualified name, `Service.handle`). Whole stacks stay out of labels; they are on the
//! flamegraph and report endpoints. Stacks with no outstanding bytes are neither exported nor
//! counted as folded. Stacks of a report that hash to the same id (the same frames seen under
//! two kernel stack ids) are summed first, so no series is ever duplicated.
//!
//! Cardinality is bounded: at most `processes × (N + 1)` stack series, plus per process at
//! most 10 series, [`pyleak_common::Counter::COUNT`] (17) kernel event series and, with
//! `limits.bpf_stats`, 2 per kernel program that ran (at most 8), plus
//! `2 + AttachFailure::ALL.len()` daemon-wide — with the defaults (16 processes, N = 20) at
//! most 775 series, 1,031 with `limits.bpf_stats`.
//!
//! # Formats, and promtool
//!
//! [`Format::negotiate`] picks OpenMetrics 1.0.0 (`application/openmetrics-text`) unless the
//! client asks for `text/plain` and not OpenMetrics; Prometheus itself asks for OpenMetrics
//! first. `promtool check metrics` (checked with 2.42, Debian 12) reads only the Prometheus
//! text format 0.0.4 — it has no OpenMetrics parser (prometheus/prometheus#8932) — so on an
//! OpenMetrics body it stops at `# TYPE ... info` ("unknown metric type") and, without info
//! metrics, reports every counter as "no help text" (OpenMetrics names a counter family
//! without its `_total`). The tests therefore lint the text/plain rendering with promtool and
//! check the OpenMetrics rendering by letting a real Prometheus server scrape it.
//!
//! Which stacks a report holds (grouping, `--min-age`, filters) is decided before: pass a
//! report already [`shape`](crate::report::shape)d with whole-stack grouping.
use std::{collections::HashMap, fmt};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::model::{Frame, Report, StackStats};

/// The `stack` label of the series that sums the stacks beyond the top N.
pub const OTHER_STACK: &str = "other";

/// What the daemon knows about one traced process at scrape time.
#[derive(Clone, Debug, Default)]
pub struct ProcessSnapshot {
    /// `/proc/PID/comm` (the `comm` label).
    pub comm: String,
    /// The process's report, shaped with whole-stack grouping. Its `pid`, `python.version`,
    /// `python.coverage`, `totals` (including `lost_events`), `stacks`, `sample_bytes` and
    /// `kernel_programs` are exported.
    pub report: Report,
    /// Resident set size (`VmRSS`), if it could be read.
    pub rss_bytes: Option<u64>,
    /// Times the process's probes fired, if known.
    pub probe_hits: Option<u64>,
    /// The kernel side's counters for this process (empty: not exported).
    pub kernel_events: Vec<(pyleak_common::Counter, u64)>,
}

/// Why attaching to a process failed: the closed set of `reason` label values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttachFailure {
    /// No CPython interpreter found in the process.
    NotPython,
    /// A CPython version (or build, e.g. free-threaded) pyleak cannot trace.
    UnsupportedVersion,
    /// Missing privileges (CAP_SYS_ADMIN, CAP_BPF, ptrace access).
    Permission,
    /// The process exited while pyleak attached.
    Gone,
    /// Anything else (see the daemon's log).
    Other,
}

impl AttachFailure {
    pub const ALL: [AttachFailure; 5] = [
        AttachFailure::NotPython,
        AttachFailure::UnsupportedVersion,
        AttachFailure::Permission,
        AttachFailure::Gone,
        AttachFailure::Other,
    ];

    /// The `reason` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachFailure::NotPython => "not_python",
            AttachFailure::UnsupportedVersion => "unsupported_version",
            AttachFailure::Permission => "permission",
            AttachFailure::Gone => "gone",
            AttachFailure::Other => "other",
        }
    }
}

/// Attach failures counted by reason since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachFailures {
    counts: [u64; AttachFailure::ALL.len()],
}

impl AttachFailures {
    pub fn record(&mut self, reason: AttachFailure) {
        let i = reason as usize;
        self.counts[i] = self.counts[i].saturating_add(1);
    }

    pub fn get(&self, reason: AttachFailure) -> u64 {
        self.counts[reason as usize]
    }
}

/// Daemon-wide values at scrape time.
#[derive(Clone, Debug)]
pub struct DaemonSnapshot {
    /// Processes traced now.
    pub attached_processes: u64,
    pub attach_failures: AttachFailures,
    /// The `version` label of `pyleak_build_info`.
    pub version: String,
}

impl Default for DaemonSnapshot {
    /// Nothing attached, nothing failed, this build's version.
    fn default() -> Self {
        DaemonSnapshot {
            attached_processes: 0,
            attach_failures: AttachFailures::default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// A `/metrics` wire format.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text, ending with `# EOF`.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (what `promtool check metrics` reads).
    PrometheusText,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// The format for a request's `Accept` header: OpenMetrics unless `text/plain` is
    /// preferred to it (by q-value) or it is refused (`q=0`). Each format takes the q-value of
    /// the most specific range that covers it (`text/plain`, then `text/*`, then `*/*`; RFC 9110
    /// §12.5.1). No header, or none that covers either format, gets OpenMetrics.
    pub fn negotiate(accept: Option<&str>) -> Format {
        // Per format: the q of its exact type, of its `type/*` range, of `*/*`.
        let (mut openmetrics, mut text) = ([None::<f32>; 3], [None::<f32>; 3]);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let slots = match media.as_str() {
                "application/openmetrics-text" => [Some(&mut openmetrics[0]), None],
                "text/plain" => [None, Some(&mut text[0])],
                "application/*" => [Some(&mut openmetrics[1]), None],
                "text/*" => [None, Some(&mut text[1])],
                "*/*" => [Some(&mut openmetrics[2]), Some(&mut text[2])],
                _ => continue,
            };
            for slot in slots.into_iter().flatten() {
                *slot = Some(slot.map_or(q, |old| old.max(q)));
            }
        }
        let most_specific = |qs: [Option<f32>; 3]| qs.into_iter().flatten().next();
        match (most_specific(openmetrics), most_specific(text)) {
            (om, Some(t)) if t > 0.0 && t > om.unwrap_or(0.0) => Format::PrometheusText,
            // OpenMetrics refused, and nothing said of text: text is the one left.
            (Some(om), None) if om <= 0.0 => Format::PrometheusText,
            _ => Format::OpenMetrics,
        }
    }
}

/// Renders the whole `/metrics` body: daemon-wide metrics, then each process, exporting the
/// `top_stacks` largest stacks of each (the config's `limits.metrics_top_stacks`).
pub fn render(
    processes: &[ProcessSnapshot],
    daemon: &DaemonSnapshot,
    top_stacks: usize,
    format: Format,
) -> String {
    let mut registry = Registry::with_prefix("pyleak");
    registry.register_collector(Box::new(Exposition::new(processes, daemon, top_stacks)));
    let mut out = String::new();
    let written = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        Format::PrometheusText => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
    };
    // Writing into a String cannot fail, and `Exposition::encode` returns no error of its own.
    written.expect("encoding metrics into a String");
    out
}

/// One exported stack series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackSeries {
    /// The `stack` label: [`stack_id`] of the frames.
    pub id: String,
    /// Qualified name, file and line of `frames[0]`.
    pub function: String,
    pub file: String,
    pub line: u32,
    pub outstanding_bytes: u64,
}

/// The stacks of one process as exported: the top N and what the `other` series sums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopStacks {
    /// At most N, by outstanding bytes descending (ties: by id).
    pub top: Vec<StackSeries>,
    /// Outstanding bytes of the stacks folded into `other`.
    pub other_bytes: u64,
    /// How many stacks were folded into `other`.
    pub folded: u64,
}

/// Frame shown for a stack without Python frames (as `report::shape` names it).
fn native_frame() -> Frame {
    Frame {
        function: "<no Python frame>".to_string(),
        qualname: "<no Python frame>".to_string(),
        file: "<native>".to_string(),
        line: 0,
    }
}

/// Picks the `n` stacks of `stacks` with the most outstanding bytes; sums the rest.
pub fn top_stacks(stacks: &[StackStats], n: usize) -> TopStacks {
    let mut merged: Vec<(u64, &StackStats, u64)> = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    for stack in stacks.iter().filter(|s| s.outstanding_bytes > 0) {
        let hash = stack_hash(&stack.frames);
        match index.get(&hash) {
            Some(&i) => merged[i].2 = merged[i].2.saturating_add(stack.outstanding_bytes),
            None => {
                index.insert(hash, merged.len());
                merged.push((hash, stack, stack.outstanding_bytes));
            }
        }
    }
    merged.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let folded = merged.split_off(n.min(merged.len()));
    let native = native_frame();
    TopStacks {
        top: merged
            .into_iter()
            .map(|(hash, stack, bytes)| {
                let f = stack.frames.first().unwrap_or(&native);
                StackSeries {
                    id: format!("{hash:016x}"),
                    function: f.qualname.clone(),
                    file: f.file.clone(),
                    line: f.line,
                    outstanding_bytes: bytes,
                }
            })
            .collect(),
        other_bytes: folded.iter().fold(0u64, |sum, s| sum.saturating_add(s.2)),
        folded: folded.len() as u64,
    }
}

/// The `stack` label of a stack: see the module docs.
#[cfg(test)]
pub fn stack_id(frames: &[Frame]) -> String {
    format!("{:016x}", stack_hash(frames))
}

/// 64-bit FNV-1a over every frame's fields, each ended by 0xff (never in UTF-8 text), so
/// that ("ab", "c") and ("a", "bc") differ. Defined here, not by `std`'s hasher, because the
/// value is a label that must not change between builds.
fn stack_hash(frames: &[Frame]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes.iter().chain(&[0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
    };
    for f in frames {
        eat(f.function.as_bytes());
        eat(f.qualname.as_bytes());
        eat(f.file.as_bytes());
        eat(&f.line.to_le_bytes());
    }
    h
}

/// What one scrape exports, detached from the daemon's state (a [`Collector`] must own its
/// data): the values of each series, with label values already formatted.
#[derive(Debug)]
pub struct Exposition {
    version: String,
    attached_processes: u64,
    attach_failures: AttachFailures,
    processes: Vec<ProcessSeries>,
}

#[derive(Debug)]
struct ProcessSeries {
    pid: String,
    comm: String,
    python_version: String,
    coverage: String,
    outstanding_bytes: u64,
    outstanding_allocations: u64,
    allocated_bytes: u64,
    freed_bytes: u64,
    lost_events: u64,
    rss_bytes: Option<u64>,
    sample_bytes: u64,
    probe_hits: Option<u64>,
    kernel_events: Vec<(&'static str, u64)>,
    /// `--bpf-stats`: (program, runs, seconds in it).
    programs: Vec<(String, u64, f64)>,
    stacks: TopStacks,
}

impl Exposition {
    pub fn new(
        processes: &[ProcessSnapshot],
        daemon: &DaemonSnapshot,
        top_stacks_per_process: usize,
    ) -> Self {
        let mut seen = std::collections::HashSet::new();
        let processes = processes
            .iter()
            .filter(|p| {
                // Two snapshots of one pid would make duplicate series, which scrapers reject.
                let first = seen.insert(p.report.pid);
                if !first {
                    tracing::warn!("metrics: pid {} given twice; exporting the first", p.report.pid);
                }
                first
            })
            .map(|p| {
                let r = &p.report;
                ProcessSeries {
                    pid: r.pid.to_string(),
                    comm: p.comm.clone(),
                    python_version: r.python.version.clone(),
                    coverage: r.python.coverage.clone(),
                    outstanding_bytes: r.totals.outstanding_bytes,
                    outstanding_allocations: r.totals.outstanding_allocations,
                    allocated_bytes: r.totals.allocated_bytes,
                    freed_bytes: r.totals.freed_bytes,
                    lost_events: r.totals.lost_events,
                    rss_bytes: p.rss_bytes,
                    sample_bytes: r.sample_bytes.unwrap_or(0),
                    probe_hits: p.probe_hits,
                    kernel_events: p.kernel_events.iter().map(|(c, v)| (c.name(), *v)).collect(),
                    programs: r
                        .kernel_programs
                        .iter()
                        .flatten()
                        .map(|c| (c.program.clone(), c.runs, c.run_time_ns as f64 / 1e9))
                        .collect(),
                    stacks: top_stacks(&r.stacks, top_stacks_per_process),
                }
            })
            .collect();
        Exposition {
            version: daemon.version.clone(),
            attached_processes: daemon.attached_processes,
            attach_failures: daemon.attach_failures.clone(),
            processes,
        }
    }
}

/// A metric family's descriptor.
struct Desc {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
}

const fn desc(name: &'static str, help: &'static str, bytes: bool, kind: MetricType) -> Desc {
    Desc { name, help, unit: if bytes { Some(Unit::Bytes) } else { None }, kind }
}

/// Writes one family (nothing when `rows` is empty: no descriptor without a sample).
fn family<const N: usize, V>(
    enc: &mut DescriptorEncoder,
    d: &Desc,
    rows: &[([(&'static str, &str); N], V)],
) -> fmt::Result
where
    V: EncodeCounterValue + EncodeGaugeValue + Copy + fmt::Debug,
{
    if rows.is_empty() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(d.name, d.help, d.unit.as_ref(), d.kind)?;
    for (labels, value) in rows {
        match d.kind {
            // An info sample's labels are its value (always 1).
            MetricType::Info => metric.encode_info(labels)?,
            MetricType::Counter => ConstCounter::new(*value).encode(metric.encode_family(labels)?)?,
            _ => ConstGauge::new(*value).encode(metric.encode_family(labels)?)?,
        }
    }
    Ok(())
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let info = |name, help| desc(name, help, false, MetricType::Info);
        let gauge = |name, help, bytes| desc(name, help, bytes, MetricType::Gauge);
        let counter = |name, help, bytes| desc(name, help, bytes, MetricType::Counter);
        let e = &mut enc;

        family(
            e,
            &info("build", "The running pyleak's version."),
            &[([("version", self.version.as_str())], 1u64)],
        )?;
        family(
            e,
            &gauge("attached_processes", "Processes pyleak traces now.", false),
            &[([], self.attached_processes)],
        )?;
        let failures: Vec<_> = AttachFailure::ALL
            .iter()
            .map(|r| ([("reason", r.as_str())], self.attach_failures.get(*r)))
            .collect();
        family(
            e,
            &counter("attach_failures", "Processes pyleak failed to attach to, by reason.", false),
            &failures,
        )?;

        let ps = &self.processes;
        let by_process =
            |value: &dyn Fn(&ProcessSeries) -> Option<u64>| -> Vec<([(&'static str, &str); 2], u64)> {
                ps.iter()
                    .filter_map(|p| Some(([("pid", p.pid.as_str()), ("comm", p.comm.as_str())], value(p)?)))
                    .collect()
            };
        let process_info: Vec<_> = ps
            .iter()
            .map(|p| {
                let labels = [
                    ("pid", p.pid.as_str()),
                    ("comm", p.comm.as_str()),
                    ("python_version", p.python_version.as_str()),
                    ("coverage", p.coverage.as_str()),
                ];
                (labels, 1u64)
            })
            .collect();
        family(
            e,
            &info("process", "A traced process: its interpreter and what pyleak sees of it."),
            &process_info,
        )?;
        family(
            e,
            &gauge("process_outstanding", "Bytes allocated and not yet freed since pyleak attached.", true),
            &by_process(&|p| Some(p.outstanding_bytes)),
        )?;
        family(
            e,
            &gauge(
                "process_outstanding_allocations",
                "Allocations not yet freed since pyleak attached.",
                false,
            ),
            &by_process(&|p| Some(p.outstanding_allocations)),
        )?;
        family(
            e,
            &counter("process_allocated", "Bytes allocated since pyleak attached.", true),
            &by_process(&|p| Some(p.allocated_bytes)),
        )?;
        family(
            e,
            &counter("process_freed", "Bytes freed since pyleak attached, of blocks allocated since.", true),
            &by_process(&|p| Some(p.freed_bytes)),
        )?;
        family(
            e,
            &gauge("process_rss", "Resident set size of the process.", true),
            &by_process(&|p| p.rss_bytes),
        )?;
        family(
            e,
            &gauge(
                "process_sample",
                "Mean sampling interval in bytes (--sample-bytes); when above 0, this process's byte and allocation values are estimates.",
                true,
            ),
            &by_process(&|p| Some(p.sample_bytes)),
        )?;
        family(
            e,
            &counter(
                "lost_events",
                "Allocations not recorded because a kernel map was full (totals exclude them).",
                false,
            ),
            &by_process(&|p| Some(p.lost_events)),
        )?;
        family(
            e,
            &counter("probe_hits", "Times the process's allocator probes fired.", false),
            &by_process(&|p| p.probe_hits),
        )?;
        let kernel: Vec<_> = ps
            .iter()
            .flat_map(|p| {
                p.kernel_events.iter().map(|(event, v)| {
                    ([("pid", p.pid.as_str()), ("comm", p.comm.as_str()), ("event", *event)], *v)
                })
            })
            .collect();
        family(
            e,
            &counter("kernel_events", "Events counted by pyleak's kernel programs, by kind.", false),
            &kernel,
        )?;
        let (mut runs, mut seconds) = (Vec::new(), Vec::new());
        for p in ps {
            for (program, n, secs) in &p.programs {
                let labels =
                    [("pid", p.pid.as_str()), ("comm", p.comm.as_str()), ("program", program.as_str())];
                runs.push((labels, *n));
                seconds.push((labels, *secs));
            }
        }
        family(
            e,
            &counter(
                "bpf_program_runs",
                "Runs of each of pyleak's kernel programs in the process (with limits.bpf_stats).",
                false,
            ),
            &runs,
        )?;
        family(
            e,
            &Desc {
                name: "bpf_program_run",
                help: "Time spent in each of pyleak's kernel programs in the process, the probes' traps \
                       excluded (the kernel's eBPF run-time statistics, with limits.bpf_stats).",
                unit: Some(Unit::Seconds),
                kind: MetricType::Counter,
            },
            &seconds,
        )?;

        let lines: Vec<Vec<String>> =
            ps.iter().map(|p| p.stacks.top.iter().map(|s| s.line.to_string()).collect()).collect();
        let mut stacks = Vec::new();
        for (p, lines) in ps.iter().zip(&lines) {
            for (s, line) in p.stacks.top.iter().zip(lines) {
                let labels = [
                    ("pid", p.pid.as_str()),
                    ("comm", p.comm.as_str()),
                    ("stack", s.id.as_str()),
                    ("function", s.function.as_str()),
                    ("file", s.file.as_str()),
                    ("line", line.as_str()),
                ];
                stacks.push((labels, s.outstanding_bytes));
            }
            let other = [
                ("pid", p.pid.as_str()),
                ("comm", p.comm.as_str()),
                ("stack", OTHER_STACK),
                ("function", ""),
                ("file", ""),
                ("line", ""),
            ];
            stacks.push((other, p.stacks.other_bytes));
        }
        family(
            e,
            &gauge(
                "stack_outstanding",
                "Outstanding bytes of the largest Python stacks by the line that allocated \
                 (stack other: the sum of all the rest).",
                true,
            ),
            &stacks,
        )?;
        family(
            e,
            &gauge("stack_folded_stacks", "Stacks summed into the series with stack other.", false),
            &by_process(&|p| Some(p.stacks.folded)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        process::{Child, Command, Stdio},
        sync::{Arc, Mutex},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::model::{ProgramCost, PythonInfo, Totals};

    use crate::model::test_frame as frame;

    fn stack(outstanding: u64, frames: Vec<Frame>) -> StackStats {
        StackStats {
            outstanding_bytes: outstanding,
            outstanding_allocations: outstanding / 8,
            allocated_bytes: outstanding * 2,
            allocated_allocations: outstanding / 4,
            frames,
            truncated: false,
            native_caller: None,
        }
    }

    /// Stacks of 100, 90, ..., 10 bytes at /srv/app.py lines 1..=10, plus the given ones.
    fn report(pid: u32, extra: Vec<StackStats>) -> Report {
        let mut stacks: Vec<StackStats> = (1..=10)
            .map(|i| {
                stack(
                    110 - 10 * i as u64,
                    vec![frame("/srv/app.py", i, "Service.handle"), frame("/srv/main.py", 3, "main")],
                )
            })
            .collect();
        stacks.extend(extra);
        Report {
            pid,
            command: "python3 app.py".to_string(),
            python: PythonInfo {
                version: "3.12.1".to_string(),
                executable: "/usr/lib/libpython3.12.so.1.0".to_string(),
                coverage: "full".to_string(),
                notes: vec![],
            },
            duration_s: 30.0,
            totals: Totals {
                allocated_bytes: 5000,
                freed_bytes: 4000,
                outstanding_bytes: 1000,
                outstanding_allocations: 70,
                lost_events: 3,
            },
            stacks,
            sample_bytes: None,
            kernel_programs: None,
        }
    }

    fn snapshot(pid: u32, comm: &str, extra: Vec<StackStats>) -> ProcessSnapshot {
        let mut report = report(pid, extra);
        report.kernel_programs = Some(vec![
            ProgramCost { program: "alloc_exit".to_string(), runs: 2000, run_time_ns: 3_000_000 },
            ProgramCost { program: "free_enter".to_string(), runs: 1500, run_time_ns: 600_000 },
        ]);
        ProcessSnapshot {
            comm: comm.to_string(),
            report,
            rss_bytes: Some(50 << 20),
            probe_hits: Some(123_456),
            kernel_events: vec![
                (pyleak_common::Counter::Allocs, 1000),
                (pyleak_common::Counter::LostLiveFull, 3),
            ],
        }
    }

    fn daemon() -> DaemonSnapshot {
        let mut d = DaemonSnapshot { attached_processes: 2, ..DaemonSnapshot::default() };
        d.attach_failures.record(AttachFailure::NotPython);
        d.attach_failures.record(AttachFailure::NotPython);
        d.attach_failures.record(AttachFailure::Permission);
        d
    }

    /// Two processes, one with awkward strings in its labels (and no optional values).
    fn sample() -> Vec<ProcessSnapshot> {
        let odd = frame("/srv/we\"ird\\dir/new\nline.py", 7, "Odd.<lambda>");
        let mut bare = snapshot(77, "gunicorn: work", vec![stack(1_000_000, vec![odd]), stack(5, vec![])]);
        bare.report.kernel_programs = None;
        vec![
            snapshot(4242, "python3", vec![]),
            ProcessSnapshot { rss_bytes: None, probe_hits: None, kernel_events: vec![], ..bare },
        ]
    }

    fn lines_of<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
            .collect()
    }

    #[test]
    fn top_n_and_the_rest_folded() {
        let r = report(1, vec![stack(0, vec![frame("/srv/freed.py", 1, "f")])]);
        let top = top_stacks(&r.stacks, 3);
        assert_eq!(top.top.iter().map(|s| s.outstanding_bytes).collect::<Vec<_>>(), [100, 90, 80]);
        assert_eq!(top.top.iter().map(|s| s.line).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(top.top[0].function, "Service.handle");
        assert_eq!(top.top[0].file, "/srv/app.py");
        // 70 + 60 + ... + 10; the fully freed stack is neither shown nor folded.
        assert_eq!((top.other_bytes, top.folded), (280, 7));
        let all = top_stacks(&r.stacks, 100);
        assert_eq!((all.top.len(), all.other_bytes, all.folded), (10, 0, 0));
        let none = top_stacks(&r.stacks, 0);
        assert_eq!((none.top.len(), none.other_bytes, none.folded), (0, 550, 10));
        assert_eq!(top_stacks(&[], 5), TopStacks::default());
    }

    #[test]
    fn the_order_does_not_matter_and_equal_stacks_merge() {
        let a = vec![frame("/a.py", 1, "a")];
        let b = vec![frame("/b.py", 2, "b")];
        let stacks =
            vec![stack(10, b.clone()), stack(10, a.clone()), stack(15, a.clone()), stack(30, b.clone())];
        let mut reversed = stacks.clone();
        reversed.reverse();
        let top = top_stacks(&stacks, 1);
        assert_eq!(top, top_stacks(&reversed, 1));
        // Same frames, two entries (two kernel stack ids): one series, the sum.
        assert_eq!((top.top[0].file.as_str(), top.top[0].outstanding_bytes), ("/b.py", 40));
        assert_eq!((top.other_bytes, top.folded), (25, 1));
        // Ties are broken by id, so the choice is stable.
        let tie = top_stacks(&[stack(5, a.clone()), stack(5, b.clone())], 1);
        assert_eq!(tie, top_stacks(&[stack(5, b.clone()), stack(5, a.clone())], 1));
    }

    #[test]
    fn stack_ids_are_stable_and_tell_stacks_apart() {
        let s = vec![frame("/srv/app.py", 15, "Service.handle"), frame("/srv/app.py", 40, "main")];
        // A constant: changing the hash changes every series name users have on dashboards.
        assert_eq!(stack_id(&s), "2d82e26c41c6f3cf");
        assert_eq!(stack_id(&s).len(), 16);
        assert_ne!(stack_id(&s), stack_id(&s[..1]));
        assert_ne!(stack_id(&[frame("/ab", 1, "c")]), stack_id(&[frame("/a", 1, "bc")]));
        let mut other_line = s.clone();
        other_line[1].line = 41;
        assert_ne!(stack_id(&s), stack_id(&other_line));
        assert_eq!(stack_id(&[]), "cbf29ce484222325");
    }

    #[test]
    fn openmetrics_series_and_labels() {
        let text = render(&sample(), &daemon(), 3, Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        // OpenMetrics allows `"` and `\` in help texts only escaped, which the crate does not
        // do (it escapes label values); so the help texts must not contain them.
        for help in text.lines().filter(|l| l.starts_with("# HELP ")) {
            assert!(!help.contains(['"', '\\']), "{help}");
        }
        assert!(
            text.contains("# TYPE pyleak_build info\npyleak_build_info{version=\"0.1.0\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("pyleak_attached_processes 2\n"));
        assert_eq!(
            lines_of(&text, "pyleak_attach_failures_total"),
            [
                "pyleak_attach_failures_total{reason=\"not_python\"} 2",
                "pyleak_attach_failures_total{reason=\"unsupported_version\"} 0",
                "pyleak_attach_failures_total{reason=\"permission\"} 1",
                "pyleak_attach_failures_total{reason=\"gone\"} 0",
                "pyleak_attach_failures_total{reason=\"other\"} 0",
            ]
        );
        assert!(text.contains(
            "# TYPE pyleak_process_allocated_bytes counter\n# UNIT pyleak_process_allocated_bytes bytes\n"
        ));
        assert!(text.contains("pyleak_process_allocated_bytes_total{pid=\"4242\",comm=\"python3\"} 5000\n"));
        assert!(text.contains("pyleak_process_freed_bytes_total{pid=\"4242\",comm=\"python3\"} 4000\n"));
        assert!(text.contains("pyleak_process_outstanding_bytes{pid=\"4242\",comm=\"python3\"} 1000\n"));
        assert!(
            text.contains("pyleak_process_outstanding_allocations{pid=\"77\",comm=\"gunicorn: work\"} 70\n")
        );
        assert!(text.contains(
            "pyleak_process_info{pid=\"4242\",comm=\"python3\",python_version=\"3.12.1\",coverage=\"full\"} 1\n"
        ));
        // Optional series are left out where unknown, not written as 0.
        assert_eq!(
            lines_of(&text, "pyleak_process_rss_bytes"),
            ["pyleak_process_rss_bytes{pid=\"4242\",comm=\"python3\"} 52428800"]
        );
        assert_eq!(
            lines_of(&text, "pyleak_probe_hits_total"),
            ["pyleak_probe_hits_total{pid=\"4242\",comm=\"python3\"} 123456"]
        );
        assert_eq!(
            lines_of(&text, "pyleak_kernel_events_total"),
            [
                "pyleak_kernel_events_total{pid=\"4242\",comm=\"python3\",event=\"allocs\"} 1000",
                "pyleak_kernel_events_total{pid=\"4242\",comm=\"python3\",event=\"lost_live_map_full\"} 3",
            ]
        );
        assert_eq!(lines_of(&text, "pyleak_lost_events_total").len(), 2);
        assert_eq!(
            lines_of(&text, "pyleak_bpf_program_runs_total"),
            [
                "pyleak_bpf_program_runs_total{pid=\"4242\",comm=\"python3\",program=\"alloc_exit\"} 2000",
                "pyleak_bpf_program_runs_total{pid=\"4242\",comm=\"python3\",program=\"free_enter\"} 1500",
            ]
        );
        assert!(text.contains(
            "# TYPE pyleak_bpf_program_run_seconds counter\n# UNIT pyleak_bpf_program_run_seconds seconds\n"
        ));
        assert_eq!(
            lines_of(&text, "pyleak_bpf_program_run_seconds_total"),
            [
                "pyleak_bpf_program_run_seconds_total{pid=\"4242\",comm=\"python3\",program=\"alloc_exit\"} 0.003",
                "pyleak_bpf_program_run_seconds_total{pid=\"4242\",comm=\"python3\",program=\"free_enter\"} 0.0006",
            ]
        );

        let stacks = lines_of(&text, "pyleak_stack_outstanding_bytes");
        let id = |line: u32| {
            stack_id(&[frame("/srv/app.py", line, "Service.handle"), frame("/srv/main.py", 3, "main")])
        };
        assert_eq!(
            stacks[..4],
            [
                format!("pyleak_stack_outstanding_bytes{{pid=\"4242\",comm=\"python3\",stack=\"{}\",function=\"Service.handle\",file=\"/srv/app.py\",line=\"1\"}} 100", id(1)),
                format!("pyleak_stack_outstanding_bytes{{pid=\"4242\",comm=\"python3\",stack=\"{}\",function=\"Service.handle\",file=\"/srv/app.py\",line=\"2\"}} 90", id(2)),
                format!("pyleak_stack_outstanding_bytes{{pid=\"4242\",comm=\"python3\",stack=\"{}\",function=\"Service.handle\",file=\"/srv/app.py\",line=\"3\"}} 80", id(3)),
                "pyleak_stack_outstanding_bytes{pid=\"4242\",comm=\"python3\",stack=\"other\",function=\"\",file=\"\",line=\"\"} 280".to_string(),
            ]
        );
        // Label values are escaped; the stack without Python frames gets the report's name.
        assert!(
            stacks[4]
                .starts_with("pyleak_stack_outstanding_bytes{pid=\"77\",comm=\"gunicorn: work\",stack=\"")
        );
        assert!(
            stacks[4].ends_with(
                "function=\"Odd.<lambda>\",file=\"/srv/we\\\"ird\\\\dir/new\\nline.py\",line=\"7\"} 1000000"
            ),
            "{}",
            stacks[4]
        );
        assert_eq!(stacks.len(), 2 * (3 + 1));
        assert!(
            stacks[7].ends_with("stack=\"other\",function=\"\",file=\"\",line=\"\"} 365"),
            "{}",
            stacks[7]
        );
        assert_eq!(
            lines_of(&text, "pyleak_stack_folded_stacks"),
            [
                "pyleak_stack_folded_stacks{pid=\"4242\",comm=\"python3\"} 7",
                "pyleak_stack_folded_stacks{pid=\"77\",comm=\"gunicorn: work\"} 9",
            ]
        );
        let native =
            render(&[snapshot(5, "p", vec![stack(1 << 20, vec![])])], &daemon(), 1, Format::OpenMetrics);
        assert!(
            native.contains("function=\"<no Python frame>\",file=\"<native>\",line=\"0\"} 1048576\n"),
            "{native}"
        );
    }

    #[test]
    fn cardinality_is_bounded() {
        let many: Vec<StackStats> =
            (0..5000).map(|i| stack(i + 1, vec![frame("/x.py", i as u32, "f")])).collect();
        let procs: Vec<_> = (1..=4).map(|pid| snapshot(pid, "p", many.clone())).collect();
        let text = render(&procs, &DaemonSnapshot::default(), 20, Format::OpenMetrics);
        assert_eq!(lines_of(&text, "pyleak_stack_outstanding_bytes").len(), 4 * (20 + 1));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        // The families of the module docs, 2 kernel events and 2 programs here.
        let per_process = 10 + 2 + 2 * 2;
        assert_eq!(samples, 2 + AttachFailure::ALL.len() + 4 * (per_process + 21));
    }

    #[test]
    fn nothing_attached() {
        let text = render(&[], &DaemonSnapshot::default(), 20, Format::OpenMetrics);
        assert_eq!(
            text,
            format!(
                "# HELP pyleak_build The running pyleak's version.\n# TYPE pyleak_build info\n\
                 pyleak_build_info{{version=\"{}\"}} 1\n\
                 # HELP pyleak_attached_processes Processes pyleak traces now.\n\
                 # TYPE pyleak_attached_processes gauge\npyleak_attached_processes 0\n\
                 # HELP pyleak_attach_failures Processes pyleak failed to attach to, by reason.\n\
                 # TYPE pyleak_attach_failures counter\n{}# EOF\n",
                env!("CARGO_PKG_VERSION"),
                AttachFailure::ALL
                    .iter()
                    .map(|r| format!("pyleak_attach_failures_total{{reason=\"{}\"}} 0\n", r.as_str()))
                    .collect::<String>()
            )
        );
        let text = render(&[], &DaemonSnapshot::default(), 20, Format::PrometheusText);
        assert!(text.contains("# TYPE pyleak_build_info gauge\npyleak_build_info{version="), "{text}");
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn duplicate_pids_are_exported_once() {
        let text =
            render(&[snapshot(9, "a", vec![]), snapshot(9, "b", vec![])], &daemon(), 1, Format::OpenMetrics);
        assert_eq!(
            lines_of(&text, "pyleak_process_outstanding_bytes"),
            ["pyleak_process_outstanding_bytes{pid=\"9\",comm=\"a\"} 1000"]
        );
    }

    #[test]
    fn accept_header_negotiation() {
        use Format::*;
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), OpenMetrics);
        assert_eq!(Format::negotiate(None), OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain")), PrometheusText);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5")),
            PrometheusText
        );
        assert_eq!(Format::negotiate(Some("application/openmetrics-text; q=0, text/plain")), PrometheusText);
        assert_eq!(Format::negotiate(Some("Application/OpenMetrics-Text; version=1.0.0")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/html,application/xhtml+xml")), OpenMetrics);
        // q=0 refuses a type (RFC 9110 §12.4.2); a range covers the types under it.
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), PrometheusText);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0, */*")), PrometheusText);
        assert_eq!(Format::negotiate(Some("text/*")), PrometheusText);
        assert_eq!(Format::negotiate(Some("text/*;q=0.5, */*")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("application/*, text/plain;q=0.9")), OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain;q=0, */*")), OpenMetrics);
        assert!(OpenMetrics.content_type().starts_with("application/openmetrics-text; version=1.0.0"));
        assert_eq!(PrometheusText.content_type(), "text/plain; version=0.0.4; charset=utf-8");
    }

    // ---- with the real tools ----------------------------------------------------------------

    /// Runs `tool` (from Debian's `prometheus` package), failing the test with the remedy
    /// when it is not installed.
    fn tool(name: &str) -> Command {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
        assert!(
            found,
            "{name} not found on PATH: run cargo xtask setup (it installs Debian's prometheus package)"
        );
        Command::new(name)
    }

    /// `promtool check metrics` on the Prometheus text rendering: no error, no lint warning.
    #[test]
    fn promtool_lints_the_text_format_clean() {
        let text = render(&sample(), &daemon(), 3, Format::PrometheusText);
        let mut child = tool("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics ({}):\n{said}\non:\n{text}",
            out.status
        );
    }

    /// Kills the child when the test ends, however it ends.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `GET path` over HTTP/1.0 (so the answer is never chunked); the body.
    fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn query(prometheus: &str, promql: &str) -> serde_json::Value {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let body = http_get(prometheus, &format!("/api/v1/query?query={encoded}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["status"], "success", "{promql}: {body}");
        v["data"]["result"].clone()
    }

    /// A real Prometheus server scrapes the body, negotiated from the `Accept` header it
    /// sends, as the daemon will serve it: the OpenMetrics rendering must be ingested without
    /// error, with the values and (escaped) labels intact.
    #[test]
    fn prometheus_scrapes_the_openmetrics_format() {
        let mut prometheus = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();

        // The exporter: serves render() with the negotiated format, remembers the Accept headers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let exporter = listener.local_addr().unwrap().to_string();
        let accepts = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = accepts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request).to_string();
                let accept = request
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("accept")))
                    .map(|(_, v)| v.trim().to_string());
                let format = Format::negotiate(accept.as_deref());
                seen.lock().unwrap().push(accept.unwrap_or_default());
                let body = render(&sample(), &daemon(), 3, format);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    format.content_type(),
                    body.len()
                );
            }
        });

        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: pyleak\n    \
                 static_configs:\n      - targets: ['{exporter}']\n"
            ),
        )
        .unwrap();
        let web = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("prometheus.log");
        let server = KillOnDrop(
            prometheus
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={web}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let fail = |why: String| -> ! {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("{why}\nprometheus log (last lines):\n{}", tail.join("\n"));
        };

        // Wait for a scrape to be judged.
        let deadline = Instant::now() + Duration::from_secs(60);
        let target = loop {
            if Instant::now() > deadline {
                fail("no scrape of the exporter within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(300));
            let Ok(body) = http_get(&web, "/api/v1/targets") else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
            let t = v["data"]["activeTargets"][0].clone();
            if t["health"] == "up" || t["lastError"].as_str().is_some_and(|e| !e.is_empty()) {
                break t;
            }
        };
        if target["health"] != "up" {
            fail(format!("the scrape failed: {}", target["lastError"]));
        }
        let accept = accepts.lock().unwrap()[0].clone();
        assert_eq!(Format::negotiate(Some(&accept)), Format::OpenMetrics, "Prometheus sent Accept: {accept}");

        let value = |v: &serde_json::Value| v["value"][1].as_str().unwrap().to_string();
        let build = query(&web, "pyleak_build_info");
        assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
        let allocated = query(&web, "pyleak_process_allocated_bytes_total{pid=\"4242\"}");
        assert_eq!(value(&allocated[0]), "5000");
        let stacks = query(&web, "pyleak_stack_outstanding_bytes");
        assert_eq!(stacks.as_array().unwrap().len(), 8);
        let odd = query(&web, "pyleak_stack_outstanding_bytes{pid=\"77\",line=\"7\"}");
        assert_eq!(odd[0]["metric"]["file"], "/srv/we\"ird\\dir/new\nline.py");
        assert_eq!(value(&odd[0]), "1000000");
        // `other` holds exactly what the top 3 leave out.
        let total = query(&web, "sum by (pid) (pyleak_stack_outstanding_bytes{pid=\"4242\"})");
        assert_eq!(value(&total[0]), "550");
        let failures = query(&web, "pyleak_attach_failures_total{reason=\"not_python\"}");
        assert_eq!(value(&failures[0]), "2");
        let seconds = query(&web, "pyleak_bpf_program_run_seconds_total{program=\"alloc_exit\"}");
        assert_eq!(value(&seconds[0]), "0.003");
        drop(server);
    }
}
