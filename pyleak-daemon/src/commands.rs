//! What `pyleak run` and `pyleak trace` do, given parsed arguments.
use std::{
    io::{IsTerminal, Write},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cli::{CaptureArgs, ReportArgs},
    discovery,
    launch::{self, Child, INTERRUPTED},
    model::Report,
    probes::LoadOptions,
    report, sampling,
    session::Session,
};

fn load_options(c: &CaptureArgs) -> LoadOptions {
    let sample_bytes = c.sample_bytes.unwrap_or(0);
    LoadOptions {
        max_depth: c.stack_depth,
        max_live_allocs: c.max_allocations.unwrap_or_else(|| sampling::default_max_live_allocs(sample_bytes)),
        max_stacks: c.max_stacks,
        sample_bytes,
        empty_programs: c.empty_programs,
        bpf_stats: c.bpf_stats,
    }
}

fn announce(s: &Session, how: &str) {
    eprintln!(
        "pyleak: attached to pid {} (Python {}, {}); {how}",
        s.pid, s.python.version, s.python.executable
    );
}

/// `pyleak trace`.
pub fn trace(pid: u32, duration: Option<f64>, rep: &ReportArgs, cap: &CaptureArgs) -> Result<()> {
    // Validate the report options before attaching, so a typo costs nothing.
    check_report_args(rep)?;
    launch::install_interrupt_handler();
    let session = Session::attach_with(pid, load_options(cap), !cap.no_planner, false)
        .with_context(|| format!("cannot trace pid {pid}"))?;
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    announce(
        &session,
        &match duration {
            Some(d) => format!("tracing for {d} s (Ctrl-C to stop early)"),
            None => "tracing until Ctrl-C".to_string(),
        },
    );
    let mut ended = None;
    while !INTERRUPTED.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        if !discovery::process_exists(pid) {
            ended = Some("exited");
            break;
        }
        // A process that execs keeps its pid but is a new program: the probes, addresses and
        // blocks traced are the old one's, so the trace ends there, as at an exit. The kernel
        // side stopped counting at the exec itself; this only ends the wait.
        if session.replaced() {
            ended = Some("replaced its program (execve)");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(how) = ended {
        eprintln!("pyleak: pid {pid} {how} during the trace; reporting what was seen until then");
    }
    let raw = session.finish(rep.min_age.map(Duration::from_secs_f64));
    write_report(&raw, rep)
}

/// `pyleak run`.
pub fn run(argv: &[std::ffi::OsString], rep: &ReportArgs, cap: &CaptureArgs) -> Result<()> {
    check_report_args(rep)?;
    launch::install_interrupt_handler();
    let child = Child::spawn_until_python(argv)?;
    let pid = child.pid;
    tracing::debug!(pid, "child stopped with its runtime mapped");
    let session = match Session::attach_with(pid, load_options(cap), !cap.no_planner, true) {
        Ok(s) => s,
        Err(e) => {
            // Do not leave a stopped child behind: PTRACE_O_EXITKILL ends it when we exit.
            return Err(e.context(format!("cannot trace the started command (pid {pid})")));
        }
    };
    announce(&session, "tracing until it exits");
    let min_age = rep.min_age.map(Duration::from_secs_f64);
    // Live until the child execs, if it does: see `at_exec` below.
    let tracing = std::cell::RefCell::new(Tracing::Live(Box::new(session)));
    let mut held = false;
    let ended = child.run_to_exit(
        || {
            // The kernel side stops the child once, as the interpreter starts shutting down.
            let t = tracing.borrow();
            let Tracing::Live(s) = &*t else { return false };
            if held || !s.finalizing() {
                return false;
            }
            held = true;
            s.sync();
            true
        },
        || {
            if let Tracing::Live(s) = &*tracing.borrow() {
                s.sync();
            }
        },
        || {
            // A new program under the same pid: what was traced (probes, addresses, blocks)
            // was the old one's, so tracing ends here, as at an exit; the child runs on.
            let mut t = tracing.borrow_mut();
            *t = match std::mem::replace(&mut *t, Tracing::Ended(Box::default())) {
                Tracing::Live(s) => {
                    eprintln!(
                        "pyleak: pid {pid} replaced its program (execve); tracing ends here, the report covers the program before"
                    );
                    Tracing::Ended(Box::new(s.finish(min_age)))
                }
                ended => ended,
            };
        },
    )?;
    eprintln!("pyleak: pid {pid} {ended}");
    tracing::debug!(pid, "building the report");
    let raw = match tracing.into_inner() {
        Tracing::Live(session) => session.finish(min_age),
        Tracing::Ended(raw) => *raw,
    };
    write_report(&raw, rep)
}

/// `pyleak run`'s session, until the child execs (then the report of what it traced).
enum Tracing {
    Live(Box<Session>),
    Ended(Box<Report>),
}

/// What can be checked of the report options before tracing: the filters compile, and a
/// binary format is not headed for a terminal.
pub fn check_report_args(rep: &ReportArgs) -> Result<()> {
    let opts = rep.options();
    report::FrameFilter::new(&opts.include, &opts.exclude)?;
    if rep.format.is_binary() && rep.output.is_none() && std::io::stdout().is_terminal() {
        // As gzip does: binary on a terminal is noise, and the report would be lost.
        bail!("the pprof report is binary and standard output is a terminal: write it with -o FILE");
    }
    if let Some(path) = &rep.output {
        check_writable(path)?;
    }
    Ok(())
}

/// Whether the report can go to `path`, checked before tracing (after it, the trace would be
/// lost): not a directory; if it exists, it opens for writing; if not, its directory exists
/// and takes new files. Nothing is created or truncated here.
fn check_writable(path: &std::path::Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let shown = path.display();
    if path.is_dir() {
        bail!("-o {shown}: is a directory; give a file name");
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("-o {shown}: cannot be written"))?;
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        bail!("-o {shown}: the directory {} does not exist", dir.display());
    }
    let c_dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("-o {shown}: no new file can be made in {}: {e}", dir.display());
    }
    Ok(())
}

fn write_report(raw: &Report, rep: &ReportArgs) -> Result<()> {
    let opts = rep.options();
    let shaped = report::shape(raw, &opts)?;
    let mut buf = Vec::new();
    report::render(&shaped, rep.format, opts.group_by, &mut buf)?;
    write_output(&buf, rep)
}

/// Writes a rendered report where `rep` says: `-o FILE`, else standard output.
pub fn write_output(buf: &[u8], rep: &ReportArgs) -> Result<()> {
    match &rep.output {
        Some(path) => {
            std::fs::write(path, buf).with_context(|| format!("writing the report to {}", path.display()))?
        }
        None => {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(buf).and_then(|_| out.flush())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(e).context("writing the report to standard output");
            }
        }
    }
    Ok(())
}
