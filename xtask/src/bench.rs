//! `cargo xtask bench`: what tracing costs a Python program, pyleak beside the alternatives.
//!
//! The bench sets up its own workloads: pyperformance's benchmark programs, installed from PyPI
//! into a private venv ([`venv`]), plus `xtask/bench/leak.py` (a handler that leaks amid
//! churn). It runs each one under every [`Mode`] — no tracing, pyleak's modes, tracemalloc,
//! memray — interleaved, `--runs` rounds, and reports medians, slowdowns against no tracing and
//! their geometric mean, pyleak's own CPU time and peak RSS, where the added time goes (one
//! untimed `--bpf-stats` run per workload in `exact`, `sampled` and `floor`: the kernel's
//! accounting of pyleak's programs), how well each pyleak mode finds the leak, and pyleak's
//! memory with 1,000,000 allocations outstanding
//! (`xtask/bench/million.py`). [`doc`] turns that into `docs/BENCHMARKS.md`.
//!
//! One run ([`run`]) times the program alone: `xtask/bench/wrapper.py` compiles it, waits on
//! stdin while the tracer attaches, and prints the wall time of the program's own execution.
//! The bench is not a test: nothing here asserts on timings.
mod doc;
mod run;

use std::{
    env,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::{
    cmd::{self, capture, capture_any, run_teed},
    host, setup,
};

use doc::{Finding, Machine, MemoryFinding, PROGRAM_TIME_MODES, ProgramTime, Results, Sample, Truth};

/// The packages the bench's venv gets from PyPI, pinned (versions that work on CPython 3.12).
const PACKAGES: &[(&str, &str)] = &[("pyperformance", "1.14.0"), ("pyperf", "2.11.0"), ("memray", "1.20.0")];

/// The CPython minor version the venv is made with (a pyenv build: what pyleak supports best).
const PYTHON_MINOR: u32 = 12;

/// Written in the venv once it is complete; a venv whose marker differs is made again.
const VENV_MARKER: &str = "pyleak-bench-venv.txt";

/// `--sample-bytes` of the sampled mode: 512 KiB, the rate pyleak's help suggests.
const SAMPLE_BYTES: u64 = 512 * 1024;

/// How many groups pyleak's reports keep (`--top`): the leak's rank is found among them.
const REPORT_TOP: usize = 10;

/// `cargo xtask bench` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tracing modes to compare, comma-separated [default: all]. `none` always runs: it is the
    /// baseline
    #[arg(long, value_enum, value_delimiter = ',', value_name = "MODE,...")]
    modes: Vec<Mode>,
    /// Workloads to run, comma-separated [default: all]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WORKLOAD,...")]
    workloads: Vec<Workload>,
    /// Rounds: every mode runs once per workload per round, interleaved; medians over rounds
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Extra untimed runs of the `leak` workload in `sampled` mode, after the rounds: with the
    /// rounds' own, they give the estimate's mean error and spread, which a handful of runs
    /// cannot tell apart from chance (0: none)
    #[arg(long, default_value_t = 30, value_name = "N")]
    estimate_runs: u32,
    /// Skip the measurement of pyleak's memory with 1,000,000 allocations outstanding
    #[arg(long)]
    no_memory: bool,
    /// Skip the untimed `--bpf-stats` run per workload in `exact`, `sampled` and `floor` that
    /// accounts for the kernel programs' time (where the added time goes)
    #[arg(long)]
    no_program_times: bool,
    /// Write the results here instead of docs/BENCHMARKS.md (`-` for standard output)
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

impl Args {
    /// The modes to run, in canonical order, without repeats, `none` first.
    fn modes(&self) -> Vec<Mode> {
        let mut modes =
            if self.modes.is_empty() { Mode::value_variants().to_vec() } else { self.modes.clone() };
        modes.push(Mode::None);
        modes.sort();
        modes.dedup();
        modes
    }

    /// The workloads to run, in canonical order, without repeats.
    fn workloads(&self) -> Vec<Workload> {
        let mut workloads = if self.workloads.is_empty() {
            Workload::value_variants().to_vec()
        } else {
            self.workloads.clone()
        };
        workloads.sort();
        workloads.dedup();
        workloads
    }
}

/// How a workload runs: untraced, under one of pyleak's modes, or under another tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Mode {
    /// No tracing: the baseline
    None,
    /// pyleak, every allocation, probe sites chosen by the planner
    Exact,
    /// pyleak --no-planner: every allocation, probes on the public entry points
    NoPlanner,
    /// pyleak --sample-bytes 512KiB: Poisson sampling by bytes
    Sampled,
    /// pyleak --empty-programs: no-op programs at the planned sites (the floor)
    Floor,
    /// python -X tracemalloc=1
    #[value(name = "tracemalloc-1")]
    Tracemalloc1,
    /// python -X tracemalloc=25
    #[value(name = "tracemalloc-25")]
    Tracemalloc25,
    /// memray run (malloc-level)
    Memray,
    /// memray run --trace-python-allocators (every object)
    MemrayPython,
}

impl Mode {
    /// The name `--modes` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Exact => "exact",
            Mode::NoPlanner => "no-planner",
            Mode::Sampled => "sampled",
            Mode::Floor => "floor",
            Mode::Tracemalloc1 => "tracemalloc-1",
            Mode::Tracemalloc25 => "tracemalloc-25",
            Mode::Memray => "memray",
            Mode::MemrayPython => "memray-python",
        }
    }

    /// What runs, for docs/BENCHMARKS.md.
    pub fn command(self) -> String {
        match self {
            Mode::None => "`python wrapper.py PROGRAM`".into(),
            Mode::Exact => "`pyleak trace --pid PID`".into(),
            Mode::NoPlanner => "`pyleak trace --pid PID --no-planner`".into(),
            Mode::Sampled => format!("`pyleak trace --pid PID --sample-bytes {SAMPLE_BYTES}`"),
            Mode::Floor => "`pyleak trace --pid PID --empty-programs`".into(),
            Mode::Tracemalloc1 => "`python -X tracemalloc=1 wrapper.py PROGRAM`".into(),
            Mode::Tracemalloc25 => "`python -X tracemalloc=25 wrapper.py PROGRAM`".into(),
            Mode::Memray => "`python -m memray run -q -f -o FILE wrapper.py PROGRAM`".into(),
            Mode::MemrayPython => {
                "`python -m memray run -q -f -o FILE --trace-python-allocators wrapper.py PROGRAM`".into()
            }
        }
    }

    /// One phrase for the modes table.
    pub fn describe(self) -> &'static str {
        match self {
            Mode::None => "no tracing: the baseline",
            Mode::Exact => "pyleak, every allocation, probe sites chosen by the planner",
            Mode::NoPlanner => {
                "pyleak, every allocation, probes on the public entry points' first instructions"
            }
            Mode::Sampled => "pyleak, Poisson sampling by bytes, one sample per 512 KiB; reports estimate",
            Mode::Floor => "no-op kernel programs at the sites the planner chose: the trap cost alone",
            Mode::Tracemalloc1 => "tracemalloc, 1 frame per allocation",
            Mode::Tracemalloc25 => "tracemalloc, 25 frames per allocation",
            Mode::Memray => "memray, allocations through malloc (pymalloc's arenas, not objects)",
            Mode::MemrayPython => "memray, every object (`--trace-python-allocators`)",
        }
    }

    /// The flags that select this mode on `pyleak trace`; `None` for modes pyleak is not in.
    pub fn pyleak_flags(self) -> Option<Vec<String>> {
        match self {
            Mode::Exact => Some(vec![]),
            Mode::NoPlanner => Some(vec!["--no-planner".into()]),
            Mode::Sampled => Some(vec!["--sample-bytes".into(), SAMPLE_BYTES.to_string()]),
            Mode::Floor => Some(vec!["--empty-programs".into()]),
            _ => None,
        }
    }

    /// Whether pyleak's report in this mode says where memory is held (the floor's programs
    /// record nothing).
    pub fn reports(self) -> bool {
        matches!(self, Mode::Exact | Mode::NoPlanner | Mode::Sampled)
    }

    /// The arguments between `python` and `wrapper.py`; `out` is where memray may write.
    fn python_args(self, out: &Path) -> Vec<String> {
        let memray = |extra: &[&str]| {
            let mut a: Vec<String> = ["-m", "memray", "run", "-q", "-f", "-o"].map(String::from).to_vec();
            a.push(out.display().to_string());
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        match self {
            Mode::Tracemalloc1 => vec!["-X".into(), "tracemalloc=1".into()],
            Mode::Tracemalloc25 => vec!["-X".into(), "tracemalloc=25".into()],
            Mode::Memray => memray(&[]),
            Mode::MemrayPython => memray(&["--trace-python-allocators"]),
            _ => vec![],
        }
    }
}

/// A program the bench times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Workload {
    /// pyperformance float: float arithmetic, many short-lived objects
    Float,
    /// pyperformance json_dumps
    #[value(name = "json_dumps")]
    JsonDumps,
    /// pyperformance deepcopy
    Deepcopy,
    /// pyperformance raytrace
    Raytrace,
    /// pyperformance richards
    Richards,
    /// pyperformance go
    Go,
    /// xtask/bench/leak.py: a request handler leaking one response per request, amid churn
    Leak,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Float => "float",
            Workload::JsonDumps => "json_dumps",
            Workload::Deepcopy => "deepcopy",
            Workload::Raytrace => "raytrace",
            Workload::Richards => "richards",
            Workload::Go => "go",
            Workload::Leak => "leak",
        }
    }

    /// pyperf's inner loop count for a pyperformance program: chosen so that each runs 0.15 to
    /// 0.35 s untraced on the project's machine (one loop of deepcopy takes 0.5 ms, of raytrace
    /// 0.35 s), short enough that the slowest mode (tens of times slower) stays under a minute.
    /// `None` for the bench's own programs.
    pub fn loops(self) -> Option<u32> {
        match self {
            Workload::Float => Some(2),
            Workload::JsonDumps => Some(12),
            Workload::Deepcopy => Some(300),
            Workload::Raytrace => Some(1),
            Workload::Richards => Some(4),
            Workload::Go => Some(1),
            Workload::Leak => None,
        }
    }

    /// The program and its arguments, as the wrapper runs them.
    fn program(self, venv: &Venv) -> Program {
        match self.loops() {
            Some(loops) => Program {
                path: venv.benchmarks.join(format!("bm_{}/run_benchmark.py", self.name())),
                // --worker: run in this process (pyperf's manager would spawn a worker, which
                // pyleak, attached to one pid, would not see); one value, no warm-up.
                args: ["--worker", "--loops", &loops.to_string(), "--warmups", "0", "--values", "1", "-q"]
                    .map(String::from)
                    .to_vec(),
            },
            None => Program { path: bench_dir().join("leak.py"), args: vec![] },
        }
    }
}

/// A Python program and its arguments.
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<String>,
}

/// `xtask/bench`: the wrapper and the bench's own programs.
fn bench_dir() -> PathBuf {
    crate::root().join("xtask/bench")
}

/// The bench's venv: where its Python and pyperformance's programs are.
struct Venv {
    python: PathBuf,
    benchmarks: PathBuf,
    /// The interpreter it was made from (for the machine description).
    base: PathBuf,
}

pub fn bench(args: &Args) -> Result<()> {
    let modes = args.modes();
    let workloads = args.workloads();
    setup::all_for_tracing("bench")?;
    let pyleak = crate::build_pyleak(true)?;
    check_pyleak_flags(&pyleak, &modes)?;
    let work = crate::target_dir()?.join("bench");
    let venv = venv(&work.join("venv"))?;
    let scratch = work.join("scratch");
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let machine = machine(&venv, &pyleak)?;
    let command = env::args().skip(1).fold("cargo xtask".to_string(), |s, a| s + " " + &a);
    let mut results = Results::new(command, today(), machine, args.runs, workloads.clone(), modes.clone());
    let runner = Runner { venv: &venv, pyleak: &pyleak, scratch: &scratch };
    eprintln!(
        "bench: {} workloads x {} modes x {} rounds; each round runs every mode once per workload",
        workloads.len(),
        modes.len(),
        args.runs
    );

    // One untimed run each first: the page cache, the .pyc files of what the programs import.
    for &w in &workloads {
        runner.once(w, Mode::None, None).with_context(|| format!("warm-up run of {}", w.name()))?;
    }
    let started = Instant::now();
    let total = workloads.len() * modes.len() * args.runs as usize;
    let mut done = 0;
    let raw_path = work.join("runs.tsv");
    let mut raw = String::from("round\tworkload\tmode\tseconds\tpyleak_cpu_s\tpyleak_max_rss_kib\n");
    for round in 0..args.runs as usize {
        for &w in &workloads {
            // Rotate the order every round, so that no mode always runs right after another.
            for i in 0..modes.len() {
                let mode = modes[(i + round) % modes.len()];
                done += 1;
                if results.failed.contains_key(&mode) {
                    continue;
                }
                let tag = format!("[{done}/{total}] round {} {} {}", round + 1, w.name(), mode.name());
                match runner.once(w, mode, results.truth.as_ref()) {
                    Ok(outcome) => {
                        eprintln!("bench: {tag}: {}", outcome.describe());
                        let _ =
                            writeln!(raw, "{}\t{}\t{}\t{}", round + 1, w.name(), mode.name(), outcome.tsv());
                        // After every run, so an interrupted bench keeps what it measured.
                        fs::write(&raw_path, &raw)
                            .with_context(|| format!("writing {}", raw_path.display()))?;
                        results.add(w, mode, outcome);
                    }
                    Err(e) if mode == Mode::None => return Err(e.context(format!("{tag} (the baseline)"))),
                    Err(e) => {
                        eprintln!("bench: {tag}: FAILED, dropping this mode: {e:#}");
                        results.failed.insert(mode, format!("{e:#}"));
                    }
                }
            }
        }
    }
    eprintln!("bench: timed runs took {:.0} s", started.elapsed().as_secs_f64());

    if workloads.contains(&Workload::Leak) && modes.contains(&Mode::Sampled) {
        estimate_runs(&runner, &mut results, args.estimate_runs);
    }
    if !args.no_program_times {
        program_times(&runner, &mut results);
    }

    if !args.no_memory {
        for &mode in modes.iter().filter(|m| matches!(m, Mode::Exact | Mode::Sampled | Mode::Floor)) {
            if results.failed.contains_key(&mode) {
                continue;
            }
            let found = runner.million(mode);
            match &found {
                Ok(m) => eprintln!("bench: 1,000,000 objects, {}: {}", mode.name(), m.describe()),
                Err(e) => eprintln!("bench: 1,000,000 objects, {}: FAILED: {e:#}", mode.name()),
            }
            results.memory.push((mode, found.map_err(|e| format!("{e:#}"))));
        }
    }

    let text = doc::render(&results);
    match args.output.as_deref() {
        Some(p) if p == Path::new("-") => print!("{text}"),
        out => {
            let path = out.map_or_else(|| crate::root().join("docs/BENCHMARKS.md"), Path::to_path_buf);
            fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("bench: wrote {} (every run: {})", path.display(), raw_path.display());
        }
    }
    if !results.failed.is_empty() {
        let names: Vec<&str> = results.failed.keys().map(|m| m.name()).collect();
        bail!("modes that failed (see their FAILED lines above): {}", names.join(", "));
    }
    Ok(())
}

/// The sampled estimate's extra runs (see `--estimate-runs`): untimed, so only their findings
/// are kept. A failed run is reported and left out; it does not drop the mode's timings.
fn estimate_runs(runner: &Runner, results: &mut Results, n: u32) {
    for i in 0..n {
        if results.failed.contains_key(&Mode::Sampled) {
            return;
        }
        let tag = format!("estimate run {}/{n}", i + 1);
        match runner.once(Workload::Leak, Mode::Sampled, results.truth.as_ref()) {
            Ok(outcome) => {
                eprintln!("bench: {tag}: {}", outcome.describe());
                results.estimate_runs += 1;
                if let Some(t) = outcome.truth {
                    results.truth = Some(t);
                }
                if let Some(f) = outcome.finding {
                    results.findings.entry(Mode::Sampled).or_default().push(f);
                }
            }
            Err(e) => {
                eprintln!("bench: {tag}: FAILED: {e:#}");
                results.estimate_failures += 1;
            }
        }
    }
}

/// One untimed `--bpf-stats` run per workload in each of [`PROGRAM_TIME_MODES`] selected and
/// not failed. A failed run is reported and kept as such; it does not drop the mode.
fn program_times(runner: &Runner, results: &mut Results) {
    for w in results.workloads.clone() {
        for mode in PROGRAM_TIME_MODES {
            if !results.modes.contains(&mode) || results.failed.contains_key(&mode) {
                continue;
            }
            let tag = format!("program time, {} {}", w.name(), mode.name());
            let found = runner.program_time(w, mode);
            match &found {
                Ok(p) => {
                    eprintln!("bench: {tag}: {:.3} s in the kernel programs", ProgramTime::total_seconds(p))
                }
                Err(e) => eprintln!("bench: {tag}: FAILED: {e:#}"),
            }
            results.programs.insert((w, mode), found.map_err(|e| format!("{e:#}")));
        }
    }
}

/// Runs one program once in one mode.
struct Runner<'a> {
    venv: &'a Venv,
    pyleak: &'a Path,
    scratch: &'a Path,
}

impl Runner<'_> {
    fn spec<'p>(&'p self, program: &'p Program, mode: Mode, inspect: bool) -> run::Spec<'p> {
        run::Spec {
            python: &self.venv.python,
            wrapper: bench_dir().join("wrapper.py"),
            program,
            python_args: mode.python_args(&self.scratch.join("memray.bin")),
            pyleak_flags: mode.pyleak_flags(),
            pyleak: self.pyleak,
            scratch: self.scratch,
            report_top: REPORT_TOP,
            inspect,
        }
    }

    /// One timed run. For the leak, pyleak's report is checked against the truth.
    fn once(&self, w: Workload, mode: Mode, known: Option<&Truth>) -> Result<Outcome> {
        let program = w.program(self.venv);
        let out = run::run(&self.spec(&program, mode, false))?;
        let _ = fs::remove_file(self.scratch.join("memray.bin"));
        let truth = out.truth.as_ref().map(Truth::from_json).transpose()?;
        let finding = match (&truth, &out.pyleak) {
            (Some(t), Some(p)) if mode.reports() => {
                let report = p.report.as_ref().context("pyleak wrote no report")?;
                Some(Finding::in_report(report, t)?)
            }
            _ => None,
        };
        if let (Some(t), Some(k)) = (&truth, known)
            && t != k
        {
            bail!("the leak's truth changed between runs: {t:?} then {k:?}");
        }
        Ok(Outcome {
            sample: Sample { seconds: out.seconds, pyleak: out.pyleak.as_ref().map(|p| p.cost) },
            truth,
            finding,
        })
    }

    /// One untimed run with `--bpf-stats`: the kernel's accounting of pyleak's programs.
    fn program_time(&self, w: Workload, mode: Mode) -> Result<Vec<ProgramTime>> {
        let program = w.program(self.venv);
        let mut spec = self.spec(&program, mode, false);
        spec.pyleak_flags.as_mut().context("not a pyleak mode")?.push("--bpf-stats".into());
        let out = run::run(&spec)?;
        let report = out.pyleak.and_then(|p| p.report).context("pyleak wrote no report")?;
        ProgramTime::in_report(&report)
    }

    /// pyleak in `mode` on xtask/bench/million.py, its state read once the objects exist.
    fn million(&self, mode: Mode) -> Result<MemoryFinding> {
        let program = Program { path: bench_dir().join("million.py"), args: vec![] };
        let out = run::run(&self.spec(&program, mode, true))?;
        let pyleak = out.pyleak.context("pyleak did not run")?;
        let inspection = pyleak.inspection.context("pyleak's state was not read")?;
        let objects = out
            .truth
            .as_ref()
            .and_then(|t| t["blocks"].as_u64())
            .context("million.py printed no object count")?;
        let totals = pyleak.report.as_ref().map(|r| &r["totals"]);
        Ok(MemoryFinding {
            objects,
            outstanding_allocations: totals.and_then(|t| t["outstanding_allocations"].as_u64()),
            lost_events: totals.and_then(|t| t["lost_events"].as_u64()),
            rss_kib: inspection.rss_kib,
            max_rss_kib: pyleak.cost.max_rss_kib,
            maps: inspection.maps,
        })
    }
}

/// What one timed run gave.
struct Outcome {
    sample: Sample,
    truth: Option<Truth>,
    finding: Option<Finding>,
}

impl Outcome {
    fn describe(&self) -> String {
        let mut s = format!("{:.3} s", self.sample.seconds);
        if let Some(c) = self.sample.pyleak {
            let _ = write!(s, " (pyleak: {:.2} s CPU, {} MiB peak RSS)", c.cpu_s, c.max_rss_kib / 1024);
        }
        if let Some(f) = &self.finding {
            let _ = write!(s, "; leak: {}", f.describe());
        }
        s
    }

    fn tsv(&self) -> String {
        let (cpu, rss) = match self.sample.pyleak {
            Some(c) => (format!("{:.3}", c.cpu_s), c.max_rss_kib.to_string()),
            None => (String::new(), String::new()),
        };
        format!("{:.6}\t{cpu}\t{rss}", self.sample.seconds)
    }
}

impl Results {
    fn add(&mut self, w: Workload, mode: Mode, outcome: Outcome) {
        self.samples.entry((w, mode)).or_default().push(outcome.sample);
        if let Some(t) = outcome.truth {
            self.truth = Some(t);
        }
        if let Some(f) = outcome.finding {
            self.findings.entry(mode).or_default().push(f);
        }
    }
}

/// Refuses to start when this pyleak does not accept a selected mode's flags. clap rejects an
/// unknown flag with exit status 2 before anything runs; a pid no process can have (above
/// Linux's pid_max) makes a pyleak that accepts them fail at run time instead (status 1).
fn check_pyleak_flags(pyleak: &Path, modes: &[Mode]) -> Result<()> {
    let mut missing = Vec::new();
    for &mode in modes {
        let Some(flags) = mode.pyleak_flags() else { continue };
        let mut c = cmd::cmd(pyleak);
        c.args(["trace", "--pid", &u32::MAX.to_string(), "--duration", "0.1"]).args(&flags);
        let out = capture_any(&mut c)?;
        if out.status.code() == Some(2) {
            let why = out.stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string();
            missing.push((
                mode,
                format!("\n  - {} needs `pyleak trace {}`: {why}", mode.name(), flags.join(" ")),
            ));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let keep: Vec<&str> =
        modes.iter().filter(|m| !missing.iter().any(|(x, _)| x == *m)).map(|m| m.name()).collect();
    bail!(
        "{} does not accept the flags of some selected modes (clap usage error, exit status 2):{}\n\
         build a pyleak that has them, or leave those modes out: `cargo xtask bench --modes {}`",
        pyleak.display(),
        missing.iter().map(|(_, why)| why.as_str()).collect::<String>(),
        keep.join(",")
    )
}

// ---- venv -----------------------------------------------------------------------------------

/// What the venv's marker file says: the interpreter it was made from and the pins.
fn marker_text(base: &Path) -> String {
    let mut s = format!("python {}\n", base.display());
    for (name, version) in PACKAGES {
        let _ = writeln!(s, "{name}=={version}");
    }
    s
}

/// The newest pyenv CPython 3.12.N.
fn base_python() -> Result<PathBuf> {
    host::pyenv_interpreters()
        .into_iter()
        .filter(|i| i.minor == PYTHON_MINOR && i.patch.is_some())
        .max_by_key(|i| i.patch)
        .map(|i| i.executable)
        .with_context(|| {
            format!(
                "the bench needs a pyenv CPython 3.{PYTHON_MINOR}.N (none found): install one with \
                 `pyenv install 3.{PYTHON_MINOR}`"
            )
        })
}

/// Makes the venv at `dir` with the pinned packages, unless its marker says it is there.
fn venv(dir: &Path) -> Result<Venv> {
    let base = base_python()?;
    let python = dir.join("bin/python");
    let benchmarks =
        dir.join(format!("lib/python3.{PYTHON_MINOR}/site-packages/pyperformance/data-files/benchmarks"));
    let want = marker_text(&base);
    let marker = dir.join(VENV_MARKER);
    let pins: Vec<String> = PACKAGES.iter().map(|(n, v)| format!("{n}=={v}")).collect();
    let thing = format!("venv ({})", pins.join(", "));
    if fs::read_to_string(&marker).is_ok_and(|have| have == want) && python.is_file() && benchmarks.is_dir() {
        eprintln!("bench: {thing}: ok ({})", dir.display());
        return Ok(Venv { python, benchmarks, base });
    }
    eprintln!("bench: {thing}: installing… ({}, from {} and PyPI)", dir.display(), base.display());
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing the old venv {}", dir.display()))?;
    }
    run_teed(cmd::cmd(&base).arg("-m").arg("venv").arg(dir))?;
    run_teed(
        cmd::cmd(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"])
            .args(&pins),
    )?;
    if !benchmarks.is_dir() {
        bail!("pyperformance is installed but {} does not exist", benchmarks.display());
    }
    fs::write(&marker, want).with_context(|| format!("writing {}", marker.display()))?;
    eprintln!("bench: {thing}: ok (installed)");
    Ok(Venv { python, benchmarks, base })
}

// ---- the machine ----------------------------------------------------------------------------

fn machine(venv: &Venv, pyleak: &Path) -> Result<Machine> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let python = capture(cmd::cmd(&venv.python).args(["-c", "import sys; print(sys.version)"]))?;
    let version = capture(cmd::cmd(pyleak).arg("--version"))?;
    let git = |args: &[&str]| capture(cmd::cmd("git").current_dir(crate::root()).args(args)).ok();
    let mut revision =
        git(&["rev-parse", "--short", "HEAD"]).map(|s| s.trim().to_string()).unwrap_or_default();
    if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.trim().is_empty()) {
        revision.push_str(" with uncommitted changes");
    }
    Ok(Machine {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cpu: doc::cpu_model(&cpuinfo),
        cores: doc::cpu_count(&cpuinfo),
        memory_kib: doc::mem_total_kib(&meminfo),
        python: python.split_whitespace().collect::<Vec<_>>().join(" "),
        python_path: venv.base.display().to_string(),
        packages: PACKAGES.iter().map(|(n, v)| format!("{n} {v}")).collect(),
        pyleak: format!("{} (release build, git {revision})", version.trim()),
    })
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    doc::civil_date(days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn defaults_select_everything() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.modes(), Mode::value_variants());
        assert_eq!(a.workloads(), Workload::value_variants());
        assert_eq!(a.runs, 5);
        assert!(!a.no_memory && a.output.is_none());
    }

    #[test]
    fn modes_are_comma_separated_and_get_the_baseline() {
        let a = parse(&["--modes", "memray,exact", "--modes", "tracemalloc-25,exact"]).unwrap();
        assert_eq!(a.modes(), [Mode::None, Mode::Exact, Mode::Tracemalloc25, Mode::Memray]);
        let a = parse(&["--workloads", "leak,json_dumps", "--runs", "2"]).unwrap();
        assert_eq!(a.workloads(), [Workload::JsonDumps, Workload::Leak]);
        assert_eq!(a.runs, 2);
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in
            [&["--modes", "nope"][..], &["--workloads", "json-dumps"], &["--runs", "0"], &["--runs", "x"]]
        {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn names_are_the_command_line_names() {
        for m in Mode::value_variants() {
            assert_eq!(m.to_possible_value().unwrap().get_name(), m.name());
        }
        for w in Workload::value_variants() {
            assert_eq!(w.to_possible_value().unwrap().get_name(), w.name());
        }
    }

    #[test]
    fn each_mode_runs_one_tool() {
        let out = Path::new("/s/memray.bin");
        for &m in Mode::value_variants() {
            let python = m.python_args(out);
            match m {
                Mode::None => assert!(python.is_empty() && m.pyleak_flags().is_none()),
                Mode::Exact | Mode::NoPlanner | Mode::Sampled | Mode::Floor => {
                    assert!(python.is_empty() && m.pyleak_flags().is_some(), "{m:?}")
                }
                _ => assert!(!python.is_empty() && m.pyleak_flags().is_none(), "{m:?}"),
            }
        }
        assert_eq!(Mode::Sampled.pyleak_flags().unwrap(), ["--sample-bytes", "524288"]);
        assert_eq!(Mode::Tracemalloc25.python_args(out), ["-X", "tracemalloc=25"]);
        assert_eq!(
            Mode::MemrayPython.python_args(out).join(" "),
            "-m memray run -q -f -o /s/memray.bin --trace-python-allocators"
        );
    }

    #[test]
    fn a_pyleak_without_a_modes_flag_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = env::temp_dir().join(format!("pyleak-xtask-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // Knows every flag but --empty-programs, like clap: exit 2 for it, else a run-time
        // failure (no such pid), exit 1.
        let fake = dir.join("pyleak");
        fs::write(
            &fake,
            "#!/bin/sh\nfor a in \"$@\"; do if [ \"$a\" = --empty-programs ]; then\n\
             echo \"error: unexpected argument '--empty-programs' found\" >&2; exit 2; fi; done\n\
             echo 'pyleak: error: cannot trace pid 4294967295: no process' >&2; exit 1\n",
        )
        .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let ok = check_pyleak_flags(&fake, &[Mode::None, Mode::Exact, Mode::NoPlanner, Mode::Sampled]);
        let err = check_pyleak_flags(&fake, &[Mode::None, Mode::Exact, Mode::Floor, Mode::Memray]);
        let _ = fs::remove_dir_all(&dir);
        assert!(ok.is_ok(), "{ok:?}");
        let msg = format!("{:#}", err.unwrap_err());
        assert!(
            msg.contains("floor needs `pyleak trace --empty-programs`: error: unexpected argument"),
            "{msg}"
        );
        assert!(msg.contains("`cargo xtask bench --modes none,exact,memray`"), "{msg}");
    }

    #[test]
    fn venv_marker_names_python_and_pins() {
        let text = marker_text(Path::new("/p/3.12.1/bin/python3.12"));
        assert_eq!(
            text,
            "python /p/3.12.1/bin/python3.12\npyperformance==1.14.0\npyperf==2.11.0\nmemray==1.20.0\n"
        );
    }

    #[test]
    fn bench_programs_exist() {
        for name in ["wrapper.py", "leak.py", "million.py"] {
            assert!(bench_dir().join(name).is_file(), "{name}");
        }
        let leak = fs::read_to_string(bench_dir().join("leak.py")).unwrap();
        assert_eq!(leak.lines().filter(|l| l.trim_end().ends_with("# LEAK")).count(), 1);
    }
}
