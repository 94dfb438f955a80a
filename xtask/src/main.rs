//! `cargo xtask`: the project tasks cargo alone cannot do.
//!
//! `setup` installs the two Rust toolchains, LLVM 22 and bpf-linker and checks the host;
//! `build`, `test`, `demo`, `bench` and `lint` run setup's checks first, so each works on a
//! fresh machine. Plain `cargo build` works too once setup has run (pyleak-daemon's build.rs compiles
//! the eBPF crate). xtask's own messages go to stderr; stdout carries only what a task produces
//! (the binary path from `build`, pyleak's report from `demo`, cargo's own output).
mod bench;
mod cmd;
mod host;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "pyleak's project tasks",
    subcommand_value_name = "TASK",
    subcommand_help_heading = "Tasks",
    after_help = "Run from anywhere in the repository as `cargo xtask <TASK>`. `test` and `demo` \
                  need root (uprobes need CAP_SYS_ADMIN), and so does `bench`."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building pyleak needs and check what tracing needs (idempotent)
    ///
    /// Installs, when missing: the Rust toolchains 1.98.0 (clippy, rustfmt) and
    /// nightly-2026-06-25 (rust-src) with rustup, the Debian packages llvm-22-dev, golang-go,
    /// prometheus and systemd (as root, with apt-get), and bpf-linker 0.13.0 built against
    /// LLVM 22 (cargo install, about a minute).
    /// Then checks, without failing: root or CAP_SYS_ADMIN, kernel BTF, the uprobe PMU, and
    /// which CPython interpreters the tests can use. Takes well under a second when all is present.
    Setup,
    /// Build pyleak and print the path of the `pyleak` binary
    Build {
        /// Build with the release profile (target/release/pyleak)
        #[arg(long)]
        release: bool,
    },
    /// Run every test, as root: unit tests and end-to-end tests against a debug pyleak
    ///
    /// Runs setup, refuses unless this host can load eBPF programs (root or CAP_SYS_ADMIN, BTF,
    /// uprobe PMU), builds target/debug/pyleak, then runs `cargo test --workspace --exclude
    /// pyleak-ebpf --no-fail-fast` with PYLEAK_BIN set to that binary and `--test-threads=2`
    /// (the end-to-end tests start real processes). Exits non-zero if any test fails.
    /// Arguments after `--` go to the test binaries, e.g.
    /// `cargo xtask test -- leak_in_function --nocapture`.
    Test {
        /// Arguments for the test binaries (a test name filter, --nocapture, --test-threads=N)
        #[arg(last = true, value_name = "TEST_ARGS")]
        args: Vec<String>,
    },
    /// Build a release pyleak and run it on demo/leaky_service.py, as root
    ///
    /// Runs setup, refuses unless this host can load eBPF programs, builds
    /// target/release/pyleak, picks a CPython (pyenv 3.12, then 3.11, then python3 on PATH) and
    /// starts PYTHON demo/leaky_service.py (a service leaking amid churn), then attaches to it
    /// with `pyleak trace --pid PID --duration 6 --top 5` and prints the five stacks holding the
    /// most memory, the leak first.
    Demo,
    /// Measure what tracing costs: pyleak's modes, tracemalloc and memray; write
    /// docs/BENCHMARKS.md, as root
    ///
    /// Runs setup, refuses unless this host can load eBPF programs, builds target/release/pyleak,
    /// and makes a venv in the target directory (bench/venv) from the newest pyenv CPython 3.12
    /// with pyperformance, pyperf and memray from PyPI (pinned; skipped when present). Then runs
    /// pyperformance's float, json_dumps, deepcopy, raytrace, richards and go, and a leaking
    /// request handler (xtask/bench/leak.py), under every mode: no tracing, pyleak exact,
    /// pyleak --no-planner, pyleak --sample-bytes 512KiB, pyleak --empty-programs (the floor),
    /// tracemalloc with 1 and 25 frames, memray with and without --trace-python-allocators.
    /// Modes are interleaved within each round; medians over --runs rounds. Also measures
    /// pyleak's memory with 1,000,000 objects outstanding and whether each pyleak mode finds the
    /// leak (in `sampled`, over --estimate-runs extra untimed runs too), and where exact's added
    /// time goes (one untimed --bpf-stats run per workload; --no-program-times skips it).
    /// Writes the tables, the machine and this command to docs/BENCHMARKS.md. With every mode
    /// and 5 rounds it takes about 40 minutes on 2 cores. Refuses to start when the built
    /// pyleak lacks a selected mode's flag; leave that mode out with --modes.
    Bench(bench::Args),
    /// Check formatting (cargo fmt --check) and lints (clippy -D warnings)
    Lint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => {
            setup::all()?;
            Ok(())
        }
        Task::Build { release } => {
            setup::toolchains()?;
            let bin = build_pyleak(release)?;
            println!("{}", bin.display());
            Ok(())
        }
        Task::Test { args } => test(&args),
        Task::Demo => demo(),
        Task::Bench(args) => bench::bench(&args),
        Task::Lint => lint(),
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace")
}

/// `cargo` (rustup's proxy, so rust-toolchain.toml applies) run in the workspace root.
fn cargo() -> Command {
    let mut c = cmd::cmd("cargo");
    c.current_dir(root());
    c
}

/// Cargo's target directory (honours CARGO_TARGET_DIR and `build.target-dir`).
fn target_dir() -> Result<PathBuf> {
    let json = cmd::capture(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    json_string_field(&json, "target_directory")
        .map(PathBuf::from)
        .context("`cargo metadata` printed no target_directory")
}

/// The value of the first `"key":"…"` string field in `json`. Enough for `cargo metadata`,
/// whose `target_directory` is a top-level string, without a JSON dependency.
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = json[start..].chars();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
}

/// `cargo build [--release] -p pyleak-daemon`; returns the absolute path of `pyleak`.
fn build_pyleak(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--package", "pyleak-daemon"]);
    if release {
        c.arg("--release");
    }
    cmd::run(&mut c)?;
    let bin = target_dir()?.join(if release { "release" } else { "debug" }).join("pyleak");
    if !bin.is_file() {
        bail!("`{}` succeeded but {} does not exist", cmd::show(&c), bin.display());
    }
    Ok(bin)
}

fn test(args: &[String]) -> Result<()> {
    setup::all_for_tracing("test")?;
    let bin = build_pyleak(false)?;
    let mut c = cargo();
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    c.args(["test", "--workspace", "--exclude", "pyleak-ebpf"]);
    c.args(["--no-fail-fast", "--"]);
    if !args.iter().any(|a| a == "--test-threads" || a.starts_with("--test-threads=")) {
        c.arg("--test-threads=2");
    }
    c.args(args).env("PYLEAK_BIN", &bin);
    eprintln!("xtask: {}", cmd::show(&c));
    cmd::run(&mut c)
}

/// How many stacks the demo's report shows.
const DEMO_TOP: &str = "5";

/// How long the demo service runs, and how long pyleak traces it (seconds).
const DEMO_SERVICE_SECS: &str = "12";
const DEMO_TRACE_SECS: &str = "6";

fn demo() -> Result<()> {
    setup::all_for_tracing("demo")?;
    let script = root().join("demo/leaky_service.py");
    if !script.is_file() {
        bail!("{} is missing: this checkout has no demo app", script.display());
    }
    let (python, why) = host::demo_python()?;
    eprintln!("demo: python: {} ({why})", python.display());
    let bin = build_pyleak(true)?;
    // The point of pyleak: attach to a process that is already running, unchanged.
    let mut service = std::process::Command::new(&python)
        .arg(&script)
        .args(["--seconds", DEMO_SERVICE_SECS])
        .current_dir(root())
        .spawn()
        .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = service.id().to_string();
    let mut c = cmd::cmd(&bin);
    c.args(["trace", "--pid", &pid, "--duration", DEMO_TRACE_SECS, "--top", DEMO_TOP]).current_dir(root());
    eprintln!(
        "demo: the service (pid {pid}) is running, leaking in one function amid churn\n\
         demo: running `{}`: pyleak attaches without restarting it, traces {DEMO_TRACE_SECS} s, \
         then prints the {DEMO_TOP} Python stacks holding the most memory, largest first",
        cmd::show(&c)
    );
    let traced = cmd::run(&mut c);
    let _ = service.wait();
    traced
}

fn lint() -> Result<()> {
    setup::toolchains()?;
    let mut failed = Vec::new();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--exclude", "pyleak-ebpf", "--all-targets"]);
    clippy.args(["--", "-D", "warnings"]);
    for c in [&mut fmt, &mut clippy] {
        eprintln!("xtask: {}", cmd::show(c));
        if let Err(e) = cmd::run(c) {
            eprintln!("xtask: {e:#}");
            failed.push(cmd::show(c));
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_args_after_double_dash() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "e2e_", "--nocapture"]).unwrap();
        let Task::Test { args } = cli.task else { panic!("not test") };
        assert_eq!(args, ["e2e_", "--nocapture"]);
        assert!(Cli::try_parse_from(["xtask", "test", "e2e_"]).is_err());
    }

    #[test]
    fn build_release_flag() {
        let cli = Cli::try_parse_from(["xtask", "build", "--release"]).unwrap();
        assert!(matches!(cli.task, Task::Build { release: true }));
    }

    #[test]
    fn metadata_target_dir() {
        let json = r#"{"packages":[],"target_directory":"/w/a \"b\"\\c\u00e9","version":1}"#;
        assert_eq!(json_string_field(json, "target_directory").unwrap(), "/w/a \"b\"\\cé");
        assert_eq!(json_string_field(json, "nope"), None);
    }
}
