//! The command line: clap definitions, kept apart from what the commands do (`commands`).
use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::report::{Format, GroupBy, ReportOptions};

const EXAMPLES: &str = "\
Examples:
  Trace a running service for 30 seconds and show the lines holding the most memory:
    sudo pyleak trace --pid 4242 --duration 30 --group-by line

  Start a program under pyleak and report what it never freed:
    sudo pyleak run -- python3.12 app.py

  Machine-readable output, grouped by source line, top 10:
    sudo pyleak trace --pid 4242 --format json --group-by line --top 10 -o leak.json

  A flamegraph of outstanding bytes by Python stack, and the same as a pprof profile:
    sudo pyleak trace --pid 4242 --duration 60 --format svg -o leak.svg
    sudo pyleak run --format pprof -o leak.pb.gz -- python3.12 app.py
    go tool pprof -top leak.pb.gz

  Ignore allocations younger than a minute (steady-state caches churn; leaks age):
    sudo pyleak trace --pid 4242 --duration 300 --min-age 60

Privileges: loading eBPF programs and attaching uprobes needs CAP_SYS_ADMIN; reading the
target's memory to name its code needs CAP_SYS_PTRACE (or the same user). Run as root.

Exit status: 0 success, 1 runtime failure (the message says why), 2 usage error.";

/// Find memory leaks in running CPython processes, with eBPF.
///
/// pyleak attaches uprobes to a CPython process's allocator (no restart, no code change, no
/// import in the target), captures the Python stack of every allocation in the kernel, and
/// reports the memory still outstanding, grouped by the Python stack that allocated it: the
/// leaking line comes first.
#[derive(Debug, Parser)]
#[command(name = "pyleak", version, after_long_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a command, trace it until it exits, and report what it left allocated.
    ///
    /// The command runs as pyleak's child. pyleak holds it only twice, briefly: after exec
    /// until libpython is loaded (so tracing starts before the first Python line), and at
    /// exit while the last stacks are named (its memory is gone a moment later). Follows
    /// the process, not processes it forks; if it execs another program, tracing ends
    /// there (the report covers the program before) and the command runs on to its end.
    /// The command shares pyleak's standard output: the report follows what it printed
    /// there, so use -o FILE to read the report (JSON, say) on its own.
    #[command(after_long_help = EXAMPLES)]
    Run {
        #[command(flatten)]
        report: ReportArgs,
        #[command(flatten)]
        capture: CaptureArgs,
        /// The command to run, with its arguments (put it after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Attach to a running Python process, trace it, detach, and report.
    ///
    /// The target is never stopped or modified. Allocations made before pyleak attached are
    /// not known, and their frees are ignored: the report covers memory allocated during the
    /// trace and still outstanding at its end. Ends at --duration, at Ctrl-C (SIGINT) or
    /// SIGTERM, or when the target exits; it reports in every case.
    #[command(after_long_help = EXAMPLES)]
    Trace {
        /// Process id of the Python process to trace.
        #[arg(short, long, value_name = "PID")]
        pid: u32,
        /// Stop after this many seconds (fractions allowed). Default: until Ctrl-C.
        #[arg(short, long, value_name = "SECS", value_parser = parse_duration)]
        duration: Option<f64>,
        #[command(flatten)]
        report: ReportArgs,
        #[command(flatten)]
        capture: CaptureArgs,
    },
    /// Check what this host supports and, with --pid, what pyleak would do with a process.
    ///
    /// Prints one line per check ([ok ] or [NO ]) with the reason and the remedy: kernel
    /// version, BTF, uprobe events, CAP_SYS_ADMIN, whether the kernel accepts pyleak's
    /// programs; for a process, its interpreter, version, thread-state source, the probe
    /// sites, and the coverage. Exits 1 when tracing would fail.
    Doctor(DoctorArgs),
    /// Run as a service: trace the processes the configuration chooses, serve metrics.
    ///
    /// Attaches to every matching process, running or started later (they are seen as they
    /// exec), releases each when it exits, and serves on HTTP (loopback by default):
    /// /metrics (Prometheus/OpenMetrics), /healthz, /api/processes,
    /// /api/report?pid=N&... (query parameters format, group_by, top, min_age, include,
    /// exclude, frames: the report options of `pyleak trace`; JSON by default) and
    /// /flamegraph?pid=N&format=svg|folded|pprof. SIGHUP reloads the targets and limits
    /// (limits apply to processes attached after it; listen and the log level need a
    /// restart); SIGTERM detaches and exits 0. Under
    /// systemd (Type=notify) it reports readiness once the first targets are attached, and
    /// feeds the watchdog.
    #[command(after_long_help = DAEMON_EXAMPLES)]
    Daemon(DaemonArgs),
    /// Fetch a report or a flamegraph of one process from a running daemon.
    #[command(after_long_help = DAEMON_EXAMPLES)]
    Dump {
        /// The daemon's base URL, or its HOST:PORT (plain HTTP). Default: the `listen`
        /// address of the configuration file, else http://127.0.0.1:9464.
        #[arg(long, value_name = "URL")]
        daemon: Option<String>,
        /// Process id, as the daemon traces it (`/api/processes` lists them).
        #[arg(short, long, value_name = "PID")]
        pid: u32,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Install pyleak as a systemd service (unit file, example configuration, binary).
    ///
    /// Writes ROOT/etc/systemd/system/pyleak.service, ROOT/etc/pyleak/pyleak.toml (only if
    /// absent: an existing configuration is never overwritten) and copies this binary to
    /// ROOT/usr/local/bin/pyleak. Then, on a host running systemd: systemctl daemon-reload.
    InstallService {
        /// Install under this directory instead of / (for packaging and tests).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
}

const DAEMON_EXAMPLES: &str = "\
Examples:
  Trace every process whose command line mentions gunicorn, serve on the default address:
    sudo pyleak daemon --match gunicorn

  With a configuration file (see packaging/pyleak.toml) and another address:
    sudo pyleak daemon --config /etc/pyleak/pyleak.toml --listen 127.0.0.1:9500

  Ask the running daemon for a flamegraph of one process:
    pyleak dump --pid 4242 --format svg -o leak.svg

  The same over HTTP:
    curl 'http://127.0.0.1:9464/flamegraph?pid=4242&format=svg' > leak.svg
    curl 'http://127.0.0.1:9464/api/report?pid=4242&group_by=line&top=10'";

/// The `daemon` arguments: they add to (and override) the configuration file.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The configuration file. Default: /etc/pyleak/pyleak.toml if it exists.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve HTTP on this address (overrides `listen`). Default 127.0.0.1:9464. Port 0 picks a
    /// free port and logs it at start, for a one-off run; the configuration's `listen` needs a
    /// fixed port, which Prometheus can scrape.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Also trace this process. Repeatable.
    #[arg(short, long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Also trace processes whose command line (arguments joined by spaces) matches REGEX.
    /// Repeatable.
    #[arg(short, long = "match", value_name = "REGEX", value_parser = parse_match)]
    pub matches: Vec<String>,
}

/// The `doctor` arguments.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also diagnose this process: its interpreter, version, thread-state source, the probes
    /// pyleak would place and the coverage that results.
    #[arg(short, long, value_name = "PID")]
    pub pid: Option<u32>,
}

/// How the report is grouped, filtered and written (shared by run and trace).
#[derive(Debug, Args)]
#[command(next_help_heading = "Report options")]
pub struct ReportArgs {
    /// Output format: a table, JSON, or a flamegraph of outstanding bytes (folded, svg, pprof).
    ///
    /// The flamegraph formats always show whole stacks (--group-by is ignored); --top,
    /// --frames, --include, --exclude and --min-age apply to them as to the others. A stack
    /// cut at --stack-depth gets the root frame [truncated]. pprof is binary (gzipped
    /// profile.proto): write it with -o FILE and read it with `go tool pprof FILE`.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the report to FILE instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Group outstanding memory by whole stack (traceback), by the allocating line, by its
    /// function, or by its file — like tracemalloc's Snapshot.statistics().
    ///
    /// The flamegraph formats (folded, svg, pprof) ignore it and always use traceback.
    #[arg(long, value_enum, default_value_t = GroupBy::Traceback)]
    pub group_by: GroupBy,
    /// Show only the N largest groups (N >= 1). Default: all.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub top: Option<usize>,
    /// Count only blocks outstanding at least SECS seconds at the end of the trace: caches
    /// that churn fall away, leaks remain.
    #[arg(long, value_name = "SECS", value_parser = parse_min_age)]
    pub min_age: Option<f64>,
    /// Keep only stacks with a frame whose file matches GLOB (a pattern without '/' also
    /// matches the file's base name). Repeatable.
    #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
    pub include: Vec<String>,
    /// Drop frames whose file matches GLOB, charging their memory to the nearest caller
    /// left (e.g. --exclude '*/site-packages/*'). Repeatable.
    #[arg(long, value_name = "GLOB", value_parser = parse_glob)]
    pub exclude: Vec<String>,
    /// Show at most N frames per stack, innermost first.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub frames: Option<u32>,
}

/// What the kernel side captures.
#[derive(Debug, Args)]
#[command(next_help_heading = "Capture options")]
pub struct CaptureArgs {
    /// Python frames captured per allocation (1-128). Deeper stacks are cut and the report
    /// says so; each frame costs a few memory reads in the kernel per allocation.
    #[arg(long, value_name = "N", default_value_t = pyleak_common::DEFAULT_MAX_DEPTH,
          value_parser = clap::value_parser!(u32).range(1..=pyleak_common::MAX_FRAMES as i64))]
    pub stack_depth: u32,
    /// Most outstanding allocations tracked at once [default: 1048576; with --sample-bytes,
    /// room for 64 GiB outstanding, at most 1048576: 131072 at 512KiB]. Beyond it new ones
    /// are counted as lost (reported, never silently dropped). Kernel memory: 112 bytes
    /// each, reserved at attach (112 MiB at 1048576, 14 MiB at 131072).
    /// At most 67108864 (7 GiB).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=pyleak_common::MAX_LIVE_ALLOCS as i64))]
    pub max_allocations: Option<u32>,
    /// Most distinct stacks kept (about 2 KiB of kernel memory each, allocated as used; at
    /// most 4194304).
    #[arg(long, value_name = "N", default_value_t = pyleak_common::DEFAULT_MAX_STACKS,
          value_parser = clap::value_parser!(u32).range(1..=pyleak_common::MAX_STACKS as i64))]
    pub max_stacks: u32,
    /// Probe every function on its first instruction, at the public entry points (for
    /// comparison; slower).
    ///
    /// By default pyleak probes the allocator table's implementations (`_PyObject_Malloc`)
    /// rather than the public wrappers (`PyObject_Malloc`), and puts each entry probe on the
    /// first instruction the kernel emulates instead of single-stepping (a `push`, a `jcc`),
    /// as long as the values it reads are still in registers there: a trap costs about
    /// 0.7 µs there, 12 µs on a single-stepped `mov`. `pyleak doctor --pid N` shows the plan.
    /// The counts are the same either way.
    #[arg(long)]
    pub no_planner: bool,
    /// Record only a sample of the allocations: about one per BYTES allocated (Poisson
    /// sampling by bytes: an allocation of s bytes is recorded with probability
    /// 1 - exp(-s/BYTES) and stands for s/p bytes). Much cheaper per allocation, and needs
    /// a smaller outstanding-allocation map (see --max-allocations); reports then carry
    /// unbiased estimates and say so. Units: 524288, 512KiB, 4MiB. Try 512KiB for a
    /// trace you leave on; leaks of a few MiB stand out, smaller ones need a smaller BYTES.
    #[arg(long, value_name = "BYTES", value_parser = crate::sampling::parse_sample_bytes)]
    pub sample_bytes: Option<u64>,
    /// Also report what pyleak's kernel programs cost the traced process: per program, its
    /// runs and the time spent in it (the kernel's own accounting, the probe traps
    /// excluded). Turns on the kernel's eBPF run-time statistics while pyleak runs, for every
    /// eBPF program on the host: two clock reads per program run, about 0.1 µs each where
    /// pyleak is developed (a traced benchmark ran 7 % longer).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Benchmarks only: attach programs that do nothing, at the same sites, so a run costs
    /// only the traps (the floor under pyleak's own work). Reports nothing.
    #[arg(long, hide = true)]
    pub empty_programs: bool,
}

impl ReportArgs {
    /// The options `report::shape` applies; the flamegraph formats group by whole stack.
    pub fn options(&self) -> ReportOptions {
        ReportOptions {
            group_by: self.format.group_by(self.group_by),
            top: self.top,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            frames: self.frames.map(|n| n as usize),
        }
    }
}

fn parse_duration(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && seconds_in_range(v) => Ok(v),
        _ => Err(format!("expected a positive number of seconds, at most {MAX_SECONDS:e}, got {s:?}")),
    }
}

/// A `--include`/`--exclude` pattern, refused while parsing (a usage error, exit 2) if it
/// does not compile.
fn parse_glob(s: &str) -> Result<String, String> {
    globset::Glob::new(s).map(|_| s.to_string()).map_err(|e| e.kind().to_string())
}

/// A `--match` pattern, checked as the daemon will compile it.
fn parse_match(s: &str) -> Result<String, String> {
    crate::config::Target::from_cmdline_regex(s, "--match").map(|_| s.to_string())
}

fn parse_min_age(s: &str) -> Result<f64, String> {
    seconds(s).map_err(|e| format!("{e}, got {s:?}"))
}

/// The longest `--duration` or `--min-age` (and HTTP `min_age`) taken: about 31 years. A
/// bound keeps every deadline and every age in nanoseconds representable.
pub const MAX_SECONDS: f64 = 1e9;

/// Whether `v` is a number of seconds from 0 to [`MAX_SECONDS`] (not NaN, not infinite).
pub fn seconds_in_range(v: f64) -> bool {
    (0.0..=MAX_SECONDS).contains(&v)
}

/// A number of seconds from 0 to [`MAX_SECONDS`], or why not (without the input).
pub fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if seconds_in_range(v) => Ok(v),
        _ => Err(format!("expected a number of seconds from 0 to {MAX_SECONDS:e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pyleak").chain(args.iter().copied()))
    }

    #[test]
    fn trace_flags() {
        let cli =
            parse(&["trace", "--pid", "42", "--duration", "1.5", "--format", "json", "--top", "3"]).unwrap();
        let Command::Trace { pid, duration, report, capture } = cli.command else { panic!() };
        assert_eq!((pid, duration, report.format, report.top), (42, Some(1.5), Format::Json, Some(3)));
        assert_eq!(capture.stack_depth, 64);
    }

    #[test]
    fn run_takes_the_rest_as_the_command() {
        let cli = parse(&["run", "--group-by", "line", "--", "python3", "-X", "dev", "app.py"]).unwrap();
        let Command::Run { command, report, .. } = cli.command else { panic!() };
        assert_eq!(command, ["python3", "-X", "dev", "app.py"].map(OsString::from));
        assert_eq!(report.group_by, GroupBy::Line);
        // Without `--`, the first non-option starts the command.
        let cli = parse(&["run", "python3", "--version"]).unwrap();
        let Command::Run { command, .. } = cli.command else { panic!() };
        assert_eq!(command.len(), 2);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["trace"][..],
            &["trace", "--pid", "x"],
            &["trace", "--pid", "1", "--duration", "0"],
            &["trace", "--pid", "1", "--format", "nope"],
            &["trace", "--pid", "1", "--stack-depth", "129"],
            &["trace", "--pid", "1", "--min-age", "-1"],
            &["trace", "--pid", "1", "--min-age", "1e20"],
            &["trace", "--pid", "1", "--duration", "1e20"],
            &["trace", "--pid", "1", "--duration", "inf"],
            &["trace", "--pid", "1", "--max-allocations", "4294967295"],
            &["trace", "--pid", "1", "--max-stacks", "4194305"],
            &["trace", "--pid", "1", "--top", "0"],
            &["trace", "--pid", "1", "--frames", "0"],
            &["run"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn flamegraph_formats_group_by_whole_stack() {
        for (name, format) in [("folded", Format::Folded), ("svg", Format::Svg), ("pprof", Format::Pprof)] {
            let cli =
                parse(&["run", "--format", name, "--group-by", "line", "-o", "x", "--", "python3"]).unwrap();
            let Command::Run { report, .. } = cli.command else { panic!() };
            assert_eq!(report.format, format);
            assert_eq!(report.group_by, GroupBy::Line, "the flag is parsed as given");
            assert_eq!(report.options().group_by, GroupBy::Traceback, "{name} draws whole stacks");
        }
        for (name, format) in [("table", Format::Table), ("json", Format::Json)] {
            let cli = parse(&["trace", "-p", "1", "--format", name, "--group-by", "file"]).unwrap();
            let Command::Trace { report, .. } = cli.command else { panic!() };
            assert_eq!(report.format, format);
            assert_eq!(report.options().group_by, GroupBy::File);
        }
    }

    #[test]
    fn no_planner_switch() {
        let cli = parse(&["run", "--no-planner", "--", "python3", "x.py"]).unwrap();
        let Command::Run { capture, .. } = cli.command else { panic!() };
        assert!(capture.no_planner);
        let cli = parse(&["trace", "-p", "1"]).unwrap();
        let Command::Trace { capture, .. } = cli.command else { panic!() };
        assert!(!capture.no_planner, "the planner is on by default");
    }

    #[test]
    fn repeatable_filters() {
        let cli =
            parse(&["trace", "-p", "1", "--include", "a.py", "--include", "b/*", "--exclude", "*/lib/*"])
                .unwrap();
        let Command::Trace { report, .. } = cli.command else { panic!() };
        let o = report.options();
        assert_eq!(o.include, ["a.py", "b/*"]);
        assert_eq!(o.exclude, ["*/lib/*"]);
    }
}
