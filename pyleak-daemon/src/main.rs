//! `pyleak`: find memory leaks in running CPython processes with eBPF.
//!
//! Modules, one concern each:
//! - `cli`, `commands`: the command line and what each command does;
//! - `discovery`, `elf`: finding the interpreter in a process and reading its files;
//! - `python`: per-version layouts, line tables, the kernel's per-process target, symbolization;
//! - `probes`: loading and attaching the kernel programs, reading their maps; `exec_watch`:
//!   the exec tracepoint;
//! - `planner`, `sites`: which functions are probed (allocator-table targets or public entry
//!   points) and on which instruction (the probe-site planner);
//! - `btf`: kernel struct offsets the programs need; `procmem`: reading a target's memory;
//! - `sampling`: the user side of `--sample-bytes`;
//! - `doctor`: what the host and a target support, and why not;
//! - `session`: one traced process from attach to report; `launch`: starting one for `run`;
//! - `native`: naming the C function behind a direct C-library allocation;
//! - `aggregate`, `model`, `report`: from kernel counters to reports;
//! - `flamegraph`: the folded, SVG and pprof renderings of a report;
//! - `daemon`, `config`, `http`, `metrics`: the service (`pyleak daemon`): targets, its
//!   configuration file, the HTTP endpoints, the Prometheus exposition;
//! - `service`: `pyleak dump` (a daemon's client) and `pyleak install-service` (systemd).
mod aggregate;
mod btf;
mod cli;
mod commands;
mod config;
mod daemon;
mod discovery;
mod doctor;
mod elf;
mod exec_watch;
mod flamegraph;
mod http;
mod launch;
mod metrics;
mod model;
mod native;
mod planner;
mod probes;
mod procmem;
mod python;
mod report;
mod sampling;
mod service;
mod session;
mod sites;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    // The service logs one line per attach/detach/failure (info); commands only warnings.
    let quiet = match &cli.command {
        cli::Command::Daemon(args) => daemon::log_level(args.config.as_deref()),
        _ => "warn",
    };
    init_logging(cli.verbose, quiet);
    let result = match &cli.command {
        cli::Command::Run { report, capture, command } => commands::run(command, report, capture),
        cli::Command::Trace { pid, duration, report, capture } => {
            commands::trace(*pid, *duration, report, capture)
        }
        cli::Command::Daemon(args) => daemon::run(daemon::Overrides {
            config: args.config.clone(),
            listen: args.listen,
            pids: args.pid.clone(),
            matches: args.matches.clone(),
        }),
        cli::Command::Dump { daemon, pid, report } => service::dump(daemon.as_deref(), *pid, report),
        cli::Command::InstallService { root } => service::install(root),
        cli::Command::Doctor(args) => {
            let mut out = String::new();
            let ok = doctor::run(args.pid, &mut out);
            print!("{out}");
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    };
    if let Err(err) = result {
        eprintln!("pyleak: error: {err:#}");
        std::process::exit(1);
    }
}

fn init_logging(verbose: u8, quiet: &str) {
    let default = match verbose {
        0 => quiet,
        1 => "warn,pyleak=debug",
        2 => "debug,pyleak=trace",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
