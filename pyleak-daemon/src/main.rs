//! `pyleak`: find memory leaks in running CPython processes with eBPF.
//!
//! Modules, one concern each:
//! - `cli`, `commands`: the command line and what each command does;
//! - `discovery`, `elf`: finding the interpreter in a process and reading its files;
//! - `python`: per-version layouts, line tables, the kernel's per-process target, symbolization;
//! - `probes`: loading and attaching the kernel programs, reading their maps (the only aya user);
//! - `btf`: kernel struct offsets the programs need;
//! - `doctor`: what the host and a target support, and why not;
//! - `session`: one traced process from attach to report; `launch`: starting one for `run`;
//! - `native`: naming the C function behind a direct C-library allocation;
//! - `aggregate`, `model`, `report`: from kernel counters to reports.
mod aggregate;
mod btf;
mod cli;
mod commands;
mod discovery;
mod doctor;
mod elf;
mod launch;
mod model;
mod native;
mod probes;
mod procmem;
mod python;
mod report;
mod session;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    init_logging(cli.verbose);
    let result = match &cli.command {
        cli::Command::Run { report, capture, command } => commands::run(command, report, capture),
        cli::Command::Trace { pid, duration, report, capture } => {
            commands::trace(*pid, *duration, report, capture)
        }
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

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,pyleak=debug",
        2 => "debug,pyleak=trace",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
