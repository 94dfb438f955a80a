//! What the bench found, the statistics over it, and `docs/BENCHMARKS.md` as text.
//!
//! Everything here is pure (no processes, no files), so it is unit-tested. The layout of the
//! generated file is fixed: the same sections in the same order, modes and workloads in their
//! canonical order, a dash where nothing was measured, so two runs differ only in numbers.
use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{Mode, Workload, run::BpfMap};

/// pyleak's own cost in one run: from `wait4`, so its own process, not the target's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// User plus system CPU time over the whole trace (attach, trace, report), seconds.
    pub cpu_s: f64,
    /// Peak resident set size (`ru_maxrss`), KiB.
    pub max_rss_kib: u64,
}

/// One timed run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The program's own wall time, seconds.
    pub seconds: f64,
    /// pyleak's cost, in pyleak's modes.
    pub pyleak: Option<Cost>,
}

/// Where the leak scenario leaks and how much (from its `bench_truth()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truth {
    pub file: String,
    pub line: u64,
    pub bytes: u64,
    pub blocks: u64,
}

impl Truth {
    pub fn from_json(v: &Value) -> Result<Truth> {
        let num = |k: &str| v[k].as_u64().with_context(|| format!("truth has no number {k:?}: {v}"));
        Ok(Truth {
            file: v["file"].as_str().with_context(|| format!("truth has no file: {v}"))?.to_string(),
            line: num("line")?,
            bytes: num("bytes")?,
            blocks: num("blocks")?,
        })
    }
}

/// The leaking line in one pyleak report (grouped by line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// 1 when it holds the most outstanding bytes; `None` when it is not in the report.
    pub rank: Option<usize>,
    /// Outstanding bytes the report gives it (an estimate in the sampled mode).
    pub bytes: u64,
}

impl Finding {
    /// Finds the group whose allocating line is the truth's line. Its rank counts the groups
    /// holding more bytes, so it does not depend on the report's order.
    pub fn in_report(report: &Value, truth: &Truth) -> Result<Finding> {
        let stacks = report["stacks"].as_array().context("the report has no `stacks` array")?;
        let bytes_of = |s: &Value| s["outstanding_bytes"].as_u64().unwrap_or(0);
        let leak = stacks.iter().find(|s| {
            let f = &s["frames"][0];
            f["file"].as_str() == Some(truth.file.as_str()) && f["line"].as_u64() == Some(truth.line)
        });
        Ok(match leak {
            Some(s) => {
                let bytes = bytes_of(s);
                Finding { rank: Some(1 + stacks.iter().filter(|o| bytes_of(o) > bytes).count()), bytes }
            }
            None => Finding { rank: None, bytes: 0 },
        })
    }

    pub fn describe(&self) -> String {
        match self.rank {
            Some(r) => format!("rank {r}, {} bytes", thousands(self.bytes)),
            None => "not in the report".into(),
        }
    }
}

/// One of pyleak's kernel programs in a `--bpf-stats` run: the kernel's accounting of it
/// (`kernel_programs` in pyleak's report), the traps excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramTime {
    pub program: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramTime {
    /// The `kernel_programs` of a pyleak JSON report.
    pub fn in_report(report: &Value) -> Result<Vec<ProgramTime>> {
        let programs = report["kernel_programs"]
            .as_array()
            .context("the report has no `kernel_programs` (was it made with --bpf-stats?)")?;
        programs
            .iter()
            .map(|p| {
                let num = |k: &str| p[k].as_u64().with_context(|| format!("no number {k:?} in {p}"));
                Ok(ProgramTime {
                    program: p["program"].as_str().with_context(|| format!("no program name in {p}"))?.into(),
                    runs: num("runs")?,
                    run_time_ns: num("run_time_ns")?,
                })
            })
            .collect()
    }

    /// The programs' time together, seconds.
    pub fn total_seconds(programs: &[ProgramTime]) -> f64 {
        programs.iter().map(|p| p.run_time_ns).sum::<u64>() as f64 / 1e9
    }
}

/// pyleak with `million.py`'s objects outstanding.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryFinding {
    /// Objects the program keeps (1,000,000).
    pub objects: u64,
    /// What pyleak's report says is outstanding (an estimate in the sampled mode).
    pub outstanding_allocations: Option<u64>,
    pub lost_events: Option<u64>,
    /// pyleak's VmRSS once the objects exist, KiB.
    pub rss_kib: u64,
    /// pyleak's peak RSS over the whole run, report included, KiB.
    pub max_rss_kib: u64,
    pub maps: Vec<BpfMap>,
}

impl MemoryFinding {
    pub fn memlock(&self) -> u64 {
        self.maps.iter().map(|m| m.memlock).sum()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} outstanding in the report, RSS {} while tracing, peak {}, BPF maps {}",
            self.outstanding_allocations.map_or("?".into(), thousands),
            mib(self.rss_kib * 1024),
            mib(self.max_rss_kib * 1024),
            mib(self.memlock())
        )
    }
}

/// The machine, for the top of the file.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_kib: u64,
    /// `sys.version`, on one line.
    pub python: String,
    pub python_path: String,
    /// `name version` of each package in the venv.
    pub packages: Vec<String>,
    pub pyleak: String,
}

/// Everything one `cargo xtask bench` found.
pub struct Results {
    pub command: String,
    pub date: String,
    pub machine: Machine,
    pub runs: u32,
    pub workloads: Vec<Workload>,
    /// The modes selected, `none` first.
    pub modes: Vec<Mode>,
    pub samples: BTreeMap<(Workload, Mode), Vec<Sample>>,
    /// Modes dropped after a run failed, with the error.
    pub failed: BTreeMap<Mode, String>,
    pub truth: Option<Truth>,
    /// The leak's place in each report of the leak workload, by mode (`sampled`: the rounds'
    /// runs and the extra estimate runs).
    pub findings: BTreeMap<Mode, Vec<Finding>>,
    /// Extra untimed `sampled` runs of the leak that completed, and those that failed.
    pub estimate_runs: u32,
    pub estimate_failures: u32,
    pub memory: Vec<(Mode, std::result::Result<MemoryFinding, String>)>,
    /// The kernel programs' accounting in one untimed `--bpf-stats` run per workload and mode
    /// of [`PROGRAM_TIME_MODES`], or why that run failed.
    pub programs: BTreeMap<(Workload, Mode), std::result::Result<Vec<ProgramTime>, String>>,
}

/// The modes whose kernel programs the bench accounts for: exact and sampled against the
/// floor's empty programs.
pub const PROGRAM_TIME_MODES: [Mode; 3] = [Mode::Exact, Mode::Sampled, Mode::Floor];

impl Results {
    pub fn new(
        command: String,
        date: String,
        machine: Machine,
        runs: u32,
        workloads: Vec<Workload>,
        modes: Vec<Mode>,
    ) -> Results {
        Results {
            command,
            date,
            machine,
            runs,
            workloads,
            modes,
            samples: BTreeMap::new(),
            failed: BTreeMap::new(),
            truth: None,
            findings: BTreeMap::new(),
            estimate_runs: 0,
            estimate_failures: 0,
            memory: Vec::new(),
            programs: BTreeMap::new(),
        }
    }

    /// The median wall time of a workload in a mode.
    fn median_seconds(&self, w: Workload, m: Mode) -> Option<f64> {
        let s: Vec<f64> = self.samples.get(&(w, m))?.iter().map(|s| s.seconds).collect();
        median(&s)
    }

    /// Median time in `m` / median time untraced.
    fn slowdown(&self, w: Workload, m: Mode) -> Option<f64> {
        Some(self.median_seconds(w, m)? / self.median_seconds(w, Mode::None)?)
    }

    /// The geometric mean of `m`'s slowdowns over the workloads measured in it.
    fn geomean_slowdown(&self, m: Mode) -> Option<f64> {
        let s: Vec<f64> = self.workloads.iter().filter_map(|&w| self.slowdown(w, m)).collect();
        geomean(&s)
    }

    /// The modes in which pyleak ran.
    fn pyleak_modes(&self) -> Vec<Mode> {
        self.modes.iter().copied().filter(|m| m.pyleak_flags().is_some()).collect()
    }
}

// ---- statistics -----------------------------------------------------------------------------

/// The median (the mean of the middle two for an even count); `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) { (v[mid - 1] + v[mid]) / 2.0 } else { v[mid] })
}

/// The geometric mean of positive numbers; `None` when empty or any is not positive.
pub fn geomean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|&x| x.is_nan() || x <= 0.0) {
        return None;
    }
    Some((xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp())
}

/// How many times the time `a` adds is the time `b` adds, both given as slowdowns (1.0 = no
/// time added). `None` when `b` adds too little to divide by (under 1 %: noise).
pub fn added_ratio(a: f64, b: f64) -> Option<f64> {
    (b - 1.0 >= 0.01).then(|| (a - 1.0) / (b - 1.0))
}

fn median_u64(xs: &[u64]) -> Option<u64> {
    median(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>()).map(|m| m.round() as u64)
}

// ---- the machine ----------------------------------------------------------------------------

/// The first `model name` of /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// The number of logical CPUs in /proc/cpuinfo.
pub fn cpu_count(cpuinfo: &str) -> usize {
    cpuinfo.lines().filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor")).count()
}

/// `MemTotal:` of /proc/meminfo, KiB.
pub fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Days since 1970-01-01 as `YYYY-MM-DD` (proleptic Gregorian; Howard Hinnant's
/// `civil_from_days`).
pub fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

// ---- formatting -----------------------------------------------------------------------------

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A slowdown and the time it adds: `2.31x (+0.39 s)`.
fn slowdown_cell(ratio: f64, added: f64) -> String {
    format!("{ratio:.2}x ({added:+.2} s)")
}

/// A markdown table.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let line = |cells: &[&str]| format!("| {} |\n", cells.join(" | "));
    out.push_str(&line(header));
    out.push_str(&line(&vec!["---"; header.len()]));
    for r in rows {
        out.push_str(&line(&r.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out.push('\n');
}

const DASH: &str = "—";

// ---- the document ---------------------------------------------------------------------------

/// docs/BENCHMARKS.md.
pub fn render(r: &Results) -> String {
    let mut s = String::new();
    header(&mut s, r);
    method(&mut s, r);
    slowdowns(&mut s, r);
    ratios(&mut s, r);
    program_times(&mut s, r);
    pyleak_cost(&mut s, r);
    memory(&mut s, r);
    accuracy(&mut s, r);
    notes(&mut s);
    not_measured(&mut s, r);
    s
}

fn header(s: &mut String, r: &Results) {
    let m = &r.machine;
    s.push_str("# Benchmarks\n\n");
    s.push_str("<!-- Generated by `cargo xtask bench`: edit xtask/src/bench/doc.rs, not this file. -->\n\n");
    let _ = writeln!(
        s,
        "What tracing costs a Python program: pyleak's modes beside tracemalloc and memray, on\n\
         pyperformance programs and a leaking request handler. Made on {} by:\n\n```sh\n{}\n```\n",
        r.date, r.command
    );
    s.push_str("## Machine\n\n");
    let rows = vec![
        vec!["kernel".into(), m.kernel.clone()],
        vec!["CPU".into(), format!("{}, {} logical CPUs", m.cpu, m.cores)],
        vec!["memory".into(), format!("{:.1} GiB", m.memory_kib as f64 / (1024.0 * 1024.0))],
        vec!["Python".into(), format!("{} (`{}`)", m.python, m.python_path)],
        vec!["venv".into(), format!("{} (from PyPI)", m.packages.join(", "))],
        vec!["pyleak".into(), m.pyleak.clone()],
    ];
    table(s, &["", ""], &rows);
    let _ = writeln!(
        s,
        "The machine is small and shared ({} CPUs, other builds running at the same time): absolute\n\
         times drift from run to run and between machines. Read the ratios, measured in one\n\
         interleaved run, not the seconds.\n",
        m.cores
    );
}

fn method(s: &mut String, r: &Results) {
    s.push_str("## How it was measured\n\n");
    let loops: Vec<String> =
        r.workloads.iter().filter_map(|w| w.loops().map(|l| format!("{} {l}", w.name()))).collect();
    let _ = writeln!(
        s,
        "- **Workloads.** pyperformance's benchmark programs\n  \
         (`<site-packages>/pyperformance/data-files/benchmarks/bm_NAME/run_benchmark.py`), each run\n  \
         in-process with `--worker --loops N --warmups 0 --values 1` (pyperf's manager would run the\n  \
         work in a child process), and `xtask/bench/leak.py`, a request handler that leaks one\n  \
         response per request amid churn.\n  \
         Loops: {}.\n\
         - **What is timed.** `xtask/bench/wrapper.py` compiles the program, then waits on stdin; the\n  \
         tracer attaches (pyleak prints `pyleak: attached to pid ...`); the wrapper is released and\n  \
         prints the wall time of the program's own execution. Interpreter start-up, attaching,\n  \
         detaching and the report are not in it. tracemalloc and memray run inside the process from\n  \
         its start, the same wrapper inside them.\n\
         - **pyleak's own cost.** `pyleak trace --pid PID --format json --group-by line --top 10` is\n  \
         ended with SIGTERM once the program is done (its memory still allocated), and reaped with\n  \
         `wait4`: CPU time and peak RSS of pyleak's process alone, over attach, trace and report.\n\
         - **Rounds: {}.** Each round runs every mode once per workload, the order of the modes\n  \
         rotated every round. One untraced warm-up run per workload comes first. The figures are\n  \
         medians over the rounds. Slowdown = median time in the mode / median time untraced; the\n  \
         geometric mean is over the workloads. `PYTHONHASHSEED=0` throughout. Every run's figures\n  \
         are in `bench/runs.tsv` under cargo's target directory.\n\
         - **Against whole-process timings.** Timing a whole process (interpreter start-up, pyperf\n  \
         spawning its worker, a single loop) adds fixed time that no tracer slows down, so its\n  \
         ratios come out smaller than these, which divide the traced work by the same work.\n",
        if loops.is_empty() { "none selected".to_string() } else { loops.join(", ") },
        r.runs
    );
    if r.estimate_runs > 0 {
        let _ = writeln!(
            s,
            "- **The sampled estimate.** After the rounds, `sampled` ran the leak {} more times,\n  \
             untimed (`--estimate-runs`): a few runs cannot tell a biased estimate from chance.\n",
            r.estimate_runs
        );
    }
    s.push_str("Modes:\n\n");
    let rows: Vec<Vec<String>> =
        r.modes.iter().map(|m| vec![format!("`{}`", m.name()), m.command(), m.describe().into()]).collect();
    table(s, &["mode", "runs", "what it is"], &rows);
}

fn slowdowns(s: &mut String, r: &Results) {
    s.push_str("## Slowdown\n\n");
    s.push_str("Median time in each mode against the median untraced time, and the median time it adds.\n\n");
    let traced: Vec<Mode> = r.modes.iter().copied().filter(|&m| m != Mode::None).collect();
    let mut header = vec!["workload".to_string(), "untraced".to_string()];
    header.extend(traced.iter().map(|m| format!("`{}`", m.name())));
    let mut rows = Vec::new();
    for &w in &r.workloads {
        let base = r.median_seconds(w, Mode::None);
        let mut row = vec![w.name().to_string(), base.map_or(DASH.into(), |b| format!("{b:.3} s"))];
        for &m in &traced {
            row.push(match (r.median_seconds(w, m), base) {
                (Some(t), Some(b)) => slowdown_cell(t / b, t - b),
                _ => DASH.into(),
            });
        }
        rows.push(row);
    }
    let mut geo = vec!["**geometric mean**".to_string(), String::new()];
    geo.extend(traced.iter().map(|&m| r.geomean_slowdown(m).map_or(DASH.into(), |g| format!("**{g:.2}x**"))));
    rows.push(geo);
    table(s, &header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
}

/// The comparisons issue #5 asks about, on the geometric means.
fn ratios(s: &mut String, r: &Results) {
    s.push_str("## What the ratios say\n\n");
    s.push_str(
        "Added time is the geometric-mean slowdown minus one (the share of the untraced time a mode\n\
         adds); each line divides one mode's added time by another's.\n\n",
    );
    let comparisons = [
        (Mode::NoPlanner, Mode::Exact, "planner off vs on"),
        (Mode::Exact, Mode::Floor, "exact vs the floor (program bodies and maps vs traps alone)"),
        (Mode::Sampled, Mode::Exact, "sampled (512 KiB) vs exact"),
    ];
    let mut rows = Vec::new();
    for (a, b, what) in comparisons {
        let what = format!("{what}: `{}` / `{}`", a.name(), b.name());
        rows.push(match (r.geomean_slowdown(a), r.geomean_slowdown(b)) {
            (Some(ga), Some(gb)) => {
                let each = format!("{:+.0} % / {:+.0} %", (ga - 1.0) * 100.0, (gb - 1.0) * 100.0);
                match added_ratio(ga, gb) {
                    Some(x) => vec![what, format!("{x:.2}x"), each],
                    None => vec![what, format!("n/a: `{}` added under 1 %", b.name()), each],
                }
            }
            _ => vec![what, "not measured".into(), format!("needs `{}` and `{}`", a.name(), b.name())],
        });
    }
    table(s, &["comparison", "ratio of added time", "added time, each"], &rows);
}

/// Where exact mode's time goes beside the traps: the kernel's accounting of the programs.
fn program_times(s: &mut String, r: &Results) {
    s.push_str("## Where the added time goes\n\n");
    if r.programs.is_empty() {
        s.push_str(
            "Not measured in this run (`--no-program-times`, or none of `exact`, `sampled`, `floor` selected).\n\n",
        );
        return;
    }
    s.push_str(
        "After the rounds, each workload ran once more, untimed, in `exact`, `sampled` and `floor`\n\
         with `--bpf-stats`: the kernel's own accounting of the time spent in pyleak's programs\n\
         (`run_time_ns` of each program), the traps excluded. The floor's added time is its traps\n\
         plus its empty programs; exact adds its programs' extra time on top, so exact / floor\n\
         (added time) is about 1 + (exact's programs - floor's programs) / floor's added time.\n\
         A ratio of at most 1.3x leaves the programs 30 % of what the floor adds.\n\n",
    );
    let secs = |w: Workload, m: Mode| match r.programs.get(&(w, m)) {
        Some(Ok(p)) => Some(ProgramTime::total_seconds(p)),
        _ => None,
    };
    let cell = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or(DASH.to_string(), f);
    let mut rows = Vec::new();
    for &w in &r.workloads {
        let base = r.median_seconds(w, Mode::None);
        let added = |m: Mode| Some(r.median_seconds(w, m)? - base?);
        let floor_added = added(Mode::Floor).filter(|&a| a > 0.0);
        let extra = match (secs(w, Mode::Exact), secs(w, Mode::Floor)) {
            (Some(e), Some(f)) => Some(e - f),
            _ => None,
        };
        let share = floor_added.zip(extra).map(|(a, x)| x / a);
        rows.push(vec![
            w.name().to_string(),
            cell(floor_added, &|a| format!("{a:.2} s")),
            cell(secs(w, Mode::Floor), &|x| format!("{x:.2} s")),
            cell(secs(w, Mode::Exact), &|x| format!("{x:.2} s")),
            cell(secs(w, Mode::Sampled), &|x| format!("{x:.2} s")),
            cell(share, &|x| format!("{:.0} %", x * 100.0)),
            cell(share, &|x| format!("{:.2}x", 1.0 + x)),
            cell(floor_added.zip(added(Mode::Exact)).map(|(f, e)| e / f), &|x| format!("{x:.2}x")),
        ]);
    }
    table(
        s,
        &[
            "workload",
            "`floor` adds (median)",
            "programs: `floor`",
            "`exact`",
            "`sampled`",
            "exact's extra program time / floor's added time",
            "exact / floor, from that",
            "exact / floor, timed",
        ],
        &rows,
    );
    s.push_str("Per program: mean time per run, and runs.\n\n");
    let programs = ["alloc_exit", "free_enter", "malloc_enter", "calloc_enter", "realloc_enter"];
    let mut rows = Vec::new();
    for &w in &r.workloads {
        for m in [Mode::Exact, Mode::Sampled] {
            let mut row = vec![w.name().to_string(), format!("`{}`", m.name())];
            let Some(Ok(p)) = r.programs.get(&(w, m)) else { continue };
            row.extend(programs.iter().map(|name| match p.iter().find(|x| x.program == *name) {
                Some(x) if x.runs > 0 => {
                    format!("{:.0} ns × {}", x.run_time_ns as f64 / x.runs as f64, short_count(x.runs))
                }
                _ => DASH.into(),
            }));
            rows.push(row);
        }
    }
    let mut header = vec!["workload".to_string(), "mode".to_string()];
    header.extend(programs.iter().map(|p| format!("`{p}`")));
    table(s, &header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    let failed: Vec<String> = r
        .programs
        .iter()
        .filter_map(|((w, m), p)| {
            p.as_ref().err().map(|e| format!("- {} `{}`: {}", w.name(), m.name(), one_line(e)))
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "Failed runs:\n\n{}\n", failed.join("\n"));
    }
}

/// `1234567` -> `1.2M`, `45678` -> `46k`: a count where only its size matters.
pub fn short_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.0}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn pyleak_cost(s: &mut String, r: &Results) {
    let modes = r.pyleak_modes();
    s.push_str("## pyleak's own cost\n\n");
    if modes.is_empty() {
        s.push_str("No pyleak mode was run.\n\n");
        return;
    }
    s.push_str(
        "Median CPU time (user + system) and peak RSS of the `pyleak trace` process per run,\n\
         attach and report included.\n\n",
    );
    let mut header = vec!["workload".to_string()];
    header.extend(modes.iter().map(|m| format!("`{}`", m.name())));
    let mut rows = Vec::new();
    for &w in &r.workloads {
        let mut row = vec![w.name().to_string()];
        for &m in &modes {
            let costs: Vec<Cost> = r
                .samples
                .get(&(w, m))
                .map(|v| v.iter().filter_map(|s| s.pyleak).collect())
                .unwrap_or_default();
            let cpu = median(&costs.iter().map(|c| c.cpu_s).collect::<Vec<_>>());
            let rss = median_u64(&costs.iter().map(|c| c.max_rss_kib).collect::<Vec<_>>());
            row.push(match (cpu, rss) {
                (Some(c), Some(k)) => format!("{c:.2} s, {}", mib(k * 1024)),
                _ => DASH.into(),
            });
        }
        rows.push(row);
    }
    table(s, &header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
}

fn memory(s: &mut String, r: &Results) {
    s.push_str("## pyleak's memory with 1,000,000 objects outstanding\n\n");
    if r.memory.is_empty() {
        s.push_str("Not measured in this run (`--no-memory`, or no pyleak mode selected).\n\n");
        return;
    }
    s.push_str(
        "`xtask/bench/million.py` keeps 1,000,000 bytes objects of 40 bytes alive (one allocation\n\
         each), traced with pyleak's default limits. Once they exist, pyleak's VmRSS and the\n\
         kernel memory of its BPF maps (`memlock:` in `/proc/PID/fdinfo/FD` of each\n\
         `anon_inode:bpf-map` descriptor) are read; the peak RSS is `ru_maxrss` over the whole run,\n\
         report included.\n\n",
    );
    let mut rows = Vec::new();
    for (m, found) in &r.memory {
        rows.push(match found {
            Ok(f) => vec![
                format!("`{}`", m.name()),
                thousands(f.objects),
                f.outstanding_allocations.map_or(DASH.into(), thousands),
                f.lost_events.map_or(DASH.into(), thousands),
                mib(f.rss_kib * 1024),
                mib(f.max_rss_kib * 1024),
                format!("{} in {} maps", mib(f.memlock()), f.maps.len()),
            ],
            Err(e) => vec![
                format!("`{}`", m.name()),
                format!("failed: {}", one_line(e)),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
        });
    }
    table(
        s,
        &[
            "mode",
            "objects kept",
            "outstanding allocations (report)",
            "lost events",
            "RSS while tracing",
            "peak RSS",
            "BPF maps",
        ],
        &rows,
    );
    let exact = r.memory.iter().find_map(|(m, f)| f.as_ref().ok().filter(|_| *m == Mode::Exact));
    if let Some(f) = exact
        && let (Some(largest), Some(n)) = (f.maps.iter().max_by_key(|b| b.memlock), f.outstanding_allocations)
        && n > 0
    {
        let name = if largest.name.is_empty() { String::new() } else { format!(", `{}`,", largest.name) };
        let _ = writeln!(
            s,
            "In `exact`, the largest map{name} takes {} for\n\
             {} entries: {} bytes of kernel memory each, buckets included, here holding {}\n\
             outstanding allocations. It is preallocated when the process is attached and bounded\n\
             by `--max-allocations` (default 1,048,576; beyond it allocations are counted as\n\
             lost), so this is what pyleak's default configuration uses for one traced process.\n",
            mib(largest.memlock),
            thousands(largest.max_entries),
            largest.memlock / largest.max_entries.max(1),
            thousands(n),
        );
    }
    // The maps of the first mode measured (`exact` when it ran); the others differ in use only.
    let measured =
        r.memory.iter().find_map(|(m, f)| Some((m, f.as_ref().ok()?))).filter(|(_, f)| !f.maps.is_empty());
    if let Some((m, f)) = measured {
        let _ = writeln!(s, "pyleak's BPF maps in `{}`, largest first:\n", m.name());
        let mut maps = f.maps.clone();
        maps.sort_by(|a, b| b.memlock.cmp(&a.memlock).then(a.name.cmp(&b.name)).then(a.id.cmp(&b.id)));
        let rows: Vec<Vec<String>> = maps
            .iter()
            .map(|b| {
                vec![
                    if b.name.is_empty() { DASH.into() } else { format!("`{}`", b.name) },
                    b.kind.clone(),
                    format!("{} / {}", b.key_size, b.value_size),
                    thousands(b.max_entries),
                    mib(b.memlock),
                ]
            })
            .collect();
        table(s, &["map", "type", "key / value bytes", "max entries", "kernel memory"], &rows);
    }
}

fn accuracy(s: &mut String, r: &Results) {
    s.push_str("## Finding the leak\n\n");
    let Some(t) = &r.truth else {
        s.push_str("Not measured in this run (the `leak` workload was not selected).\n\n");
        return;
    };
    let file = t.file.rsplit_once("/xtask/").map_or(t.file.clone(), |(_, rest)| format!("xtask/{rest}"));
    let _ = writeln!(
        s,
        "`{file}` line {} keeps {} objects, {} bytes in all\n\
         (the sizes CPython asks the allocator for). Each pyleak run of the `leak` workload\n\
         reports by line (`--group-by line`); the table gives in how many runs that line held\n\
         the most bytes, and the bytes reported for it (an estimate in `sampled`).\n",
        t.line,
        thousands(t.blocks),
        thousands(t.bytes)
    );
    let modes: Vec<Mode> = r.modes.iter().copied().filter(|m| m.reports()).collect();
    let mut rows = Vec::new();
    for m in modes {
        let found = r.findings.get(&m).map(Vec::as_slice).unwrap_or_default();
        if found.is_empty() {
            rows.push(vec![format!("`{}`", m.name()), DASH.into(), DASH.into(), DASH.into(), DASH.into()]);
            continue;
        }
        let first = found.iter().filter(|f| f.rank == Some(1)).count();
        let bytes: Vec<u64> = found.iter().map(|f| f.bytes).collect();
        let med = median_u64(&bytes).unwrap_or(0);
        let (lo, hi) = (bytes.iter().min().copied().unwrap_or(0), bytes.iter().max().copied().unwrap_or(0));
        let error = (med as f64 - t.bytes as f64) / t.bytes as f64 * 100.0;
        rows.push(vec![
            format!("`{}`", m.name()),
            format!("{first} of {}", found.len()),
            thousands(med),
            format!("{} – {}", thousands(lo), thousands(hi)),
            format!("{error:+.1} %"),
        ]);
    }
    table(
        s,
        &["mode", "leaking line first", "bytes reported (median)", "range over runs", "error of the median"],
        &rows,
    );
    sampled_error(s, r, t);
}

/// The sampled estimate's error over all its runs, against the spread Poisson sampling predicts.
fn sampled_error(s: &mut String, r: &Results, t: &Truth) {
    let found = r.findings.get(&Mode::Sampled).map(Vec::as_slice).unwrap_or_default();
    if found.len() < 2 || t.bytes == 0 {
        return;
    }
    let errors: Vec<f64> = found.iter().map(|f| (f.bytes as f64 - t.bytes as f64) / t.bytes as f64).collect();
    let (mean, sd) = mean_sd(&errors);
    let se = sd / (errors.len() as f64).sqrt();
    // Each sampled object of s << R bytes stands for about R: Var ≈ R × (true bytes).
    let predicted = (super::SAMPLE_BYTES as f64 / t.bytes as f64).sqrt();
    let verdict = if mean.abs() <= 2.0 * se {
        "within two standard errors of zero: no bias shows at this precision"
    } else {
        "more than two standard errors from zero: a bias, or worse luck than 1 in 20"
    };
    let _ = writeln!(
        s,
        "`sampled` ran the leak {} times: once per round, plus {} untimed runs for this estimate\n\
         (`--estimate-runs`){}. Over those runs the error has a mean of {:+.1} % ± {:.1} % (standard\n\
         error), {verdict}.\n\
         Its standard deviation is {:.1} %; Poisson sampling at {} bytes predicts about\n\
         √(R / true bytes) = {:.1} %: each sampled object stands for about R bytes.\n",
        errors.len(),
        r.estimate_runs,
        match r.estimate_failures {
            0 => String::new(),
            n => format!("; {n} more failed and are left out"),
        },
        mean * 100.0,
        se * 100.0,
        sd * 100.0,
        thousands(super::SAMPLE_BYTES),
        predicted * 100.0
    );
}

/// The mean and the sample standard deviation (n − 1) of at least two values.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// What the tables do not say by themselves.
fn notes(s: &mut String) {
    s.push_str(
        "## Notes\n\n\
         - The floor is what the traps alone cost at the sites the planner chose. Every pyleak mode\n  \
         that probes those sites pays it, `sampled` included: sampling saves the work of the\n  \
         kernel programs and the map updates for the allocations it skips, not their traps.\n\
         - `memray` without `--trace-python-allocators` sees malloc-level allocations only: pymalloc's\n  \
         arenas, not the objects in them, so it is cheaper but cannot name the line that leaks small\n  \
         objects. `memray-python`, tracemalloc and pyleak's exact modes see every object.\n\
         - tracemalloc and memray must start with the process (or be imported by it) and cost from\n  \
         then on; pyleak attaches to a process that is already running and costs only while\n  \
         attached.\n\
         - The numbers come from one run on one shared machine; rerun `cargo xtask bench` before\n  \
         comparing with another build, on the same machine.\n\n",
    );
}

/// Modes not selected, and modes that failed.
fn not_measured(s: &mut String, r: &Results) {
    use clap::ValueEnum;
    let left_out: Vec<Mode> =
        Mode::value_variants().iter().copied().filter(|m| !r.modes.contains(m)).collect();
    let left_out_w: Vec<Workload> =
        Workload::value_variants().iter().copied().filter(|w| !r.workloads.contains(w)).collect();
    if left_out.is_empty() && left_out_w.is_empty() && r.failed.is_empty() {
        return;
    }
    s.push_str("## Not measured\n\n");
    for m in left_out {
        let _ = writeln!(s, "- `{}`: not selected (`--modes`).", m.name());
    }
    for w in left_out_w {
        let _ = writeln!(s, "- workload `{}`: not selected (`--workloads`).", w.name());
    }
    for (m, e) in &r.failed {
        let _ = writeln!(s, "- `{}`: failed, and left out of later rounds: {}", m.name(), one_line(e));
    }
    s.push('\n');
}

/// An error message on one line, shortened, for a table cell or a list item.
fn one_line(e: &str) -> String {
    let line = e.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    let mut out: String = line.chars().take(300).collect();
    if line.chars().count() > 300 {
        out.push('…');
    }
    out.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median_u64(&[10, 30, 20, 40]), Some(25));
    }

    #[test]
    fn geometric_means() {
        assert_eq!(geomean(&[]), None);
        assert!((geomean(&[2.0, 8.0]).unwrap() - 4.0).abs() < 1e-12);
        assert!((geomean(&[1.5]).unwrap() - 1.5).abs() < 1e-12);
        assert_eq!(geomean(&[2.0, 0.0]), None);
        assert_eq!(geomean(&[2.0, f64::NAN]), None);
    }

    #[test]
    fn added_time_ratios() {
        assert!((added_ratio(3.0, 1.5).unwrap() - 4.0).abs() < 1e-12);
        assert_eq!(added_ratio(3.0, 1.005), None, "nothing added is not a divisor");
        assert!(added_ratio(1.0, 2.0).unwrap().abs() < 1e-12);
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(61_300_000), "61,300,000");
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(slowdown_cell(2.3149, 0.391), "2.31x (+0.39 s)");
        assert_eq!(slowdown_cell(0.98, -0.006), "0.98x (-0.01 s)");
    }

    #[test]
    fn machine_files() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(cpuinfo), "AMD EPYC");
        assert_eq!(cpu_count(cpuinfo), 2);
        assert_eq!(mem_total_kib("MemTotal:       24567890 kB\nMemFree: 1 kB\n"), 24567890);
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_000), "2024-10-04");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }

    fn truth() -> Truth {
        Truth { file: "/w/xtask/bench/leak.py".into(), line: 25, bytes: 61_300_000, blocks: 40_000 }
    }

    #[test]
    fn truth_from_the_wrapper() {
        let v = serde_json::json!({"blocks": 40000, "bytes": 61300000, "file": "/w/xtask/bench/leak.py", "line": 25});
        assert_eq!(Truth::from_json(&v).unwrap(), truth());
        assert!(Truth::from_json(&serde_json::json!({"blocks": 1})).is_err());
    }

    #[test]
    fn the_leak_in_a_report() {
        let group = |file: &str, line: u64, bytes: u64| serde_json::json!({"outstanding_bytes": bytes, "frames": [{"file": file, "line": line, "function": "f"}]});
        let report = serde_json::json!({"stacks": [
            group("<frozen importlib._bootstrap_external>", 752, 70_000_000),
            group("/w/xtask/bench/leak.py", 25, 61_000_000),
            group("/w/xtask/bench/leak.py", 20, 10_000),
        ]});
        assert_eq!(
            Finding::in_report(&report, &truth()).unwrap(),
            Finding { rank: Some(2), bytes: 61_000_000 }
        );
        let missing = serde_json::json!({"stacks": [group("/w/x.py", 25, 1)]});
        assert_eq!(Finding::in_report(&missing, &truth()).unwrap(), Finding { rank: None, bytes: 0 });
        assert!(Finding::in_report(&serde_json::json!({}), &truth()).is_err());
    }

    fn sample(seconds: f64) -> Sample {
        Sample { seconds, pyleak: None }
    }

    fn results() -> Results {
        let machine = Machine {
            kernel: "6.18.0".into(),
            cpu: "AMD EPYC".into(),
            cores: 2,
            memory_kib: 24 * 1024 * 1024,
            python: "3.12.1 (main) [GCC 12.2.0]".into(),
            python_path: "/p/3.12.1/bin/python3.12".into(),
            packages: vec!["pyperformance 1.14.0".into()],
            pyleak: "pyleak 0.1.0".into(),
        };
        let mut r = Results::new(
            "cargo xtask bench --runs 3".into(),
            "2026-11-25".into(),
            machine,
            3,
            vec![Workload::Float, Workload::Leak],
            vec![Mode::None, Mode::Exact, Mode::NoPlanner, Mode::Memray],
        );
        let cost = Some(Cost { cpu_s: 0.5, max_rss_kib: 40 * 1024 });
        for (w, m, secs) in [
            (Workload::Float, Mode::None, [0.30, 0.31, 0.29]),
            (Workload::Float, Mode::Exact, [0.60, 0.61, 0.59]),
            (Workload::Float, Mode::NoPlanner, [3.0, 3.1, 2.9]),
            (Workload::Float, Mode::Memray, [0.45, 0.45, 0.45]),
            (Workload::Leak, Mode::None, [0.25, 0.25, 0.25]),
            (Workload::Leak, Mode::Exact, [1.0, 1.0, 1.0]),
            (Workload::Leak, Mode::NoPlanner, [5.0, 5.0, 5.0]),
        ] {
            let pyleak = if m.pyleak_flags().is_some() { cost } else { None };
            r.samples.insert((w, m), secs.iter().map(|&s| Sample { pyleak, ..sample(s) }).collect());
        }
        r.truth = Some(truth());
        r.findings.insert(
            Mode::Exact,
            vec![Finding { rank: Some(1), bytes: 61_300_000 }, Finding { rank: Some(1), bytes: 61_300_100 }],
        );
        r.failed.insert(Mode::Memray, "`python -m memray` failed\n  with | a pipe".into());
        r
    }

    #[test]
    fn slowdowns_and_geomean() {
        let r = results();
        assert!((r.slowdown(Workload::Float, Mode::Exact).unwrap() - 2.0).abs() < 1e-9);
        assert!((r.slowdown(Workload::Leak, Mode::Exact).unwrap() - 4.0).abs() < 1e-9);
        assert!((r.geomean_slowdown(Mode::Exact).unwrap() - 8f64.sqrt()).abs() < 1e-9);
        // Only the workloads measured in a mode count toward its mean.
        assert!((r.geomean_slowdown(Mode::Memray).unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(r.geomean_slowdown(Mode::Floor), None);
    }

    #[test]
    fn the_document() {
        let text = render(&results());
        let sections: Vec<&str> = text.lines().filter(|l| l.starts_with("## ")).collect();
        assert_eq!(
            sections,
            [
                "## Machine",
                "## How it was measured",
                "## Slowdown",
                "## What the ratios say",
                "## Where the added time goes",
                "## pyleak's own cost",
                "## pyleak's memory with 1,000,000 objects outstanding",
                "## Finding the leak",
                "## Notes",
                "## Not measured",
            ]
        );
        assert!(text.contains("```sh\ncargo xtask bench --runs 3\n```"), "the command that made it");
        assert!(text.contains("| workload | untraced | `exact` | `no-planner` | `memray` |\n"), "{text}");
        assert!(
            text.contains("| float | 0.300 s | 2.00x (+0.30 s) | 10.00x (+2.70 s) | 1.50x (+0.15 s) |\n")
        );
        assert!(text.contains("| leak | 0.250 s | 4.00x (+0.75 s) | 20.00x (+4.75 s) | — |\n"));
        assert!(text.contains("| **geometric mean** |  | **2.83x** | **14.14x** | **1.50x** |\n"));
        // (14.14 - 1) / (2.83 - 1)
        assert!(text.contains("| planner off vs on: `no-planner` / `exact` | 7.19x | +1314 % / +183 % |\n"));
        assert!(text.contains(": `exact` / `floor` | not measured | needs `exact` and `floor` |\n"));
        assert!(text.contains("| float | 0.50 s, 40.0 MiB | 0.50 s, 40.0 MiB |\n"));
        assert!(
            text.contains("| `exact` | 2 of 2 | 61,300,050 | 61,300,000 – 61,300,100 | +0.0 % |\n"),
            "{text}"
        );
        assert!(text.contains("| `no-planner` | — | — | — | — |\n"));
        assert!(text.contains("- `sampled`: not selected (`--modes`).\n"));
        assert!(text.contains(
            "- `memray`: failed, and left out of later rounds: `python -m memray` failed with \\| a pipe\n"
        ));
        assert!(text.contains("Not measured in this run (`--no-memory`"));
        // Every table row has as many cells as its header.
        let mut width = 0;
        for l in text.lines() {
            if !l.starts_with('|') {
                width = 0;
                continue;
            }
            let cells = l.matches(" | ").count();
            if width == 0 {
                width = cells;
            }
            assert_eq!(cells, width, "{l}");
        }
        assert_eq!(render(&results()), text, "the same results give the same text");
    }

    #[test]
    fn where_the_added_time_goes() {
        let mut r = results();
        assert!(render(&r).contains("## Where the added time goes\n\nNot measured"));
        r.modes.extend([Mode::Sampled, Mode::Floor]);
        r.samples.insert((Workload::Float, Mode::Floor), vec![sample(0.50), sample(0.49), sample(0.51)]);
        let t = |program: &str, runs: u64, run_time_ns: u64| ProgramTime {
            program: program.into(),
            runs,
            run_time_ns,
        };
        r.programs.insert((Workload::Float, Mode::Floor), Ok(vec![t("empty_exit", 80_000, 20_000_000)]));
        r.programs.insert(
            (Workload::Float, Mode::Exact),
            Ok(vec![
                t("alloc_exit", 60_000, 90_000_000),
                t("free_enter", 75_000, 22_500_000),
                t("malloc_enter", 60_000, 7_500_000),
            ]),
        );
        r.programs.insert((Workload::Float, Mode::Sampled), Ok(vec![t("alloc_exit", 60_000, 9_600_000)]));
        r.programs.insert((Workload::Leak, Mode::Floor), Err("pyleak\nwrote no report".into()));
        let text = render(&r);
        // Floor adds 0.50 - 0.30 s; exact's programs 0.12 s against the floor's 0.02 s: 50 %.
        assert!(
            text.contains("| float | 0.20 s | 0.02 s | 0.12 s | 0.01 s | 50 % | 1.50x | 1.50x |\n"),
            "{text}"
        );
        assert!(text.contains("| leak | — | — | — | — | — | — | — |\n"), "{text}");
        assert!(text.contains("| float | `exact` | 1500 ns × 60k | 300 ns × 75k | 125 ns × 60k | — | — |\n"));
        assert!(text.contains("| float | `sampled` | 160 ns × 60k | — | — | — | — |\n"));
        assert!(text.contains("- leak `floor`: pyleak wrote no report\n"), "{text}");
        let report = serde_json::json!({"kernel_programs": [{"program": "alloc_exit", "runs": 3, "run_time_ns": 4500}]});
        assert_eq!(ProgramTime::in_report(&report).unwrap(), [t("alloc_exit", 3, 4500)]);
        assert!(
            ProgramTime::in_report(&serde_json::json!({"stacks": []}))
                .unwrap_err()
                .to_string()
                .contains("--bpf-stats")
        );
        assert_eq!(
            (short_count(999), short_count(45_678), short_count(1_234_567)),
            ("999".into(), "46k".into(), "1.2M".into())
        );
    }

    #[test]
    fn the_sampled_error_over_its_runs() {
        let mut r = results();
        r.modes.push(Mode::Sampled);
        r.estimate_runs = 3;
        r.estimate_failures = 1;
        // Errors of +10, -10, +4 and +8 %: mean +3 %, sd 9.02 %, standard error 4.51 %.
        let t = truth().bytes as f64;
        let f = |e: f64| Finding { rank: Some(1), bytes: (t * (1.0 + e)).round() as u64 };
        r.findings.insert(Mode::Sampled, vec![f(0.10), f(-0.10), f(0.04), f(0.08)]);
        let text = render(&r);
        assert!(
            text.contains(
                "`sampled` ran the leak 4 times: once per round, plus 3 untimed runs for this estimate\n\
                 (`--estimate-runs`); 1 more failed and are left out. Over those runs the error has a mean of +3.0 % ± 4.5 % (standard\n\
                 error), within two standard errors of zero: no bias shows at this precision.\n\
                 Its standard deviation is 9.0 %;"
            ),
            "{text}"
        );
        // √(524,288 / 61,300,000)
        assert!(text.contains("√(R / true bytes) = 9.2 %: each sampled object"), "{text}");
        // A mean far from zero in standard errors is called out.
        r.findings.insert(Mode::Sampled, vec![f(0.10), f(0.11), f(0.09), f(0.10)]);
        assert!(render(&r).contains("more than two standard errors from zero"));
        // One run says nothing about spread.
        r.findings.insert(Mode::Sampled, vec![f(0.10)]);
        assert!(!render(&r).contains("untimed runs"));
    }

    #[test]
    fn memory_section() {
        let mut r = results();
        let map = |id, name: &str, memlock| BpfMap {
            id,
            name: name.into(),
            kind: "hash".into(),
            key_size: 8,
            value_size: 32,
            max_entries: 1 << 20,
            memlock,
        };
        r.memory.push((
            Mode::Exact,
            Ok(MemoryFinding {
                objects: 1_000_000,
                outstanding_allocations: Some(1_000_123),
                lost_events: Some(0),
                rss_kib: 30 * 1024,
                max_rss_kib: 90 * 1024,
                maps: vec![map(2, "STACKS", 1 << 20), map(1, "LIVE_ALLOCS", 100 << 20)],
            }),
        ));
        r.memory.push((Mode::NoPlanner, Err("boom".into())));
        let text = render(&r);
        assert!(
            text.contains(
                "| `exact` | 1,000,000 | 1,000,123 | 0 | 30.0 MiB | 90.0 MiB | 101.0 MiB in 2 maps |\n"
            ),
            "{text}"
        );
        assert!(text.contains("| `no-planner` | failed: boom |  |  |  |  |  |\n"), "{text}");
        assert!(
            text.contains(
                "the largest map, `LIVE_ALLOCS`, takes 100.0 MiB for\n1,048,576 entries: 100 bytes of kernel memory each, buckets included, here holding 1,000,123\n"
            ),
            "{text}"
        );
        let live = text.find("| `LIVE_ALLOCS` | hash | 8 / 32 | 1,048,576 | 100.0 MiB |").unwrap();
        assert!(live < text.find("| `STACKS` |").unwrap(), "largest first");
        assert_eq!(text.matches("pyleak's BPF maps in").count(), 1, "one mode's maps");
    }
}
