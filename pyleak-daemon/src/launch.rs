//! `pyleak run`: starting a command under pyleak so that tracing begins before its first
//! Python line and its memory can still be read when it exits.
//!
//! The child is started with `PTRACE_TRACEME`, so it stops right after `exec`. pyleak then
//! lets the dynamic linker run, one system call at a time, only until libpython is mapped
//! (a few dozen calls), attaches, and resumes it. After that the only stops are signals
//! (re-delivered untouched) and `PTRACE_EVENT_EXIT`, where the child is held for the moment
//! it takes to symbolize the last stacks, before its address space is torn down. This
//! applies only to a child pyleak started itself; `trace` never stops its target.
use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context, Result, bail};

use crate::{discovery, elf::ElfImage};

/// System-call stops to wait for the C library before giving up on it.
const MAX_LOADER_STEPS: u32 = 2000;

/// Set by the SIGINT/SIGTERM handler.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs a handler for SIGINT and SIGTERM that only sets [`INTERRUPTED`]. Without
/// SA_RESTART, so a blocking wait returns EINTR and the caller notices.
pub fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// How long `run` waits for its command to start Python before saying that it waits.
const WAIT_NOTE_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Status(i32),
    /// A signal killed it.
    Signal(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Ended::Status(code) => write!(f, "exited with status {code}"),
            Ended::Signal(sig) => {
                // SAFETY: strsignal returns a static or thread-local string for any number.
                let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig)) };
                write!(f, "was killed by signal {sig} ({})", name.to_string_lossy())
            }
        }
    }
}

/// A child started under ptrace, stopped until [`Child::run_to_exit`].
pub struct Child {
    pub pid: u32,
    forwarded_interrupt: bool,
}

/// What stopped or ended the child.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Exited(i32),
    Killed(i32),
    Exec,
    Exit,
    Syscall,
    Signal(i32),
    Other,
}

impl Child {
    /// Starts `argv` and returns once it is stopped with its Python runtime mapped (the
    /// executable, or libpython loaded by the dynamic linker), before any Python code ran.
    pub fn spawn_until_python(argv: &[OsString]) -> Result<Child> {
        let (program, args) = argv.split_first().context("no command given")?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        // SAFETY: ptrace(PTRACE_TRACEME) is async-signal-safe and touches no parent state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", program.to_string_lossy()))?;
        let pid = child.id();
        // The std handle is dropped without waiting: this module reaps the child itself.
        drop(child);
        let mut me = Child { pid, forwarded_interrupt: false };
        match me.wait()? {
            Event::Signal(libc::SIGTRAP) | Event::Exec => {}
            other => bail!("{} did not stop after exec as expected ({other:?})", program.to_string_lossy()),
        }
        let options = libc::PTRACE_O_TRACEEXEC
            | libc::PTRACE_O_TRACEEXIT
            | libc::PTRACE_O_TRACESYSGOOD
            | libc::PTRACE_O_EXITKILL;
        // SAFETY: plain ptrace request on our stopped tracee.
        if unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options) } != 0 {
            bail!("ptrace(PTRACE_SETOPTIONS) on pid {pid}: {}", std::io::Error::last_os_error());
        }
        me.advance_to_python()?;
        Ok(me)
    }

    /// Steps through exec and dynamic loading until the runtime and the C library are mapped
    /// (the C library's allocator is probed too; the dynamic linker maps it after libpython).
    fn advance_to_python(&mut self) -> Result<()> {
        let mut python = self.examine_exe()?;
        // A command that is not Python (or not yet: a wrapper about to exec it) runs freely
        // until its next exec or its exit; if that takes a while, say what pyleak waits for.
        let started = Arc::new(AtomicBool::new(false));
        if python.is_none() {
            let (started, pid) = (started.clone(), self.pid);
            let _ = std::thread::Builder::new().name("pyleak-wait-note".into()).spawn(move || {
                std::thread::sleep(WAIT_NOTE_AFTER);
                if !started.load(Ordering::SeqCst) {
                    eprintln!(
                        "pyleak: pid {pid} has not started a Python interpreter after {} s; waiting for it to exec one (pyleak run follows the process and its execs, not its children)",
                        WAIT_NOTE_AFTER.as_secs()
                    );
                }
            });
        }
        let result = self.advance_to_python_from(&mut python);
        started.store(true, Ordering::SeqCst);
        result
    }

    fn advance_to_python_from(&mut self, python: &mut Option<bool>) -> Result<()> {
        let mut steps = 0u32;
        let mut pending = 0;
        loop {
            if let Some(needs_lib) = *python {
                if self.loaded(needs_lib) {
                    return Ok(());
                }
                steps += 1;
                if steps > MAX_LOADER_STEPS {
                    // A loader that never maps a C library (a fully static build): go on
                    // with what is there; the report says native allocations are not seen.
                    tracing::debug!(pid = self.pid, "no C library after {MAX_LOADER_STEPS} system calls");
                    return Ok(());
                }
            }
            // While the libraries are not mapped yet, stop at every system call to check.
            let request = if python.is_some() { libc::PTRACE_SYSCALL } else { libc::PTRACE_CONT };
            self.restart(request, pending)?;
            pending = 0;
            match self.wait()? {
                Event::Exited(code) => bail!(
                    "the command exited (status {code}) without running a Python interpreter; pyleak run follows the started process and its execs, not its children"
                ),
                Event::Killed(sig) => bail!("the command was killed by signal {sig} before Python started"),
                Event::Exec => *python = self.examine_exe()?,
                Event::Signal(sig) => pending = if self.is_group_stop() { 0 } else { sig },
                Event::Syscall | Event::Exit | Event::Other => {}
            }
        }
    }

    /// After an exec: `Some(false)` if the executable holds the runtime, `Some(true)` if it
    /// needs libpython (loaded next by the dynamic linker), `None` if it is not Python.
    fn examine_exe(&self) -> Result<Option<bool>> {
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.pid))?;
        let image = ElfImage::open(&discovery::host_path(self.pid, &exe.to_string_lossy()));
        let Ok(image) = image else { return Ok(None) };
        if image.symbol("_PyRuntime").is_some() {
            return Ok(Some(false));
        }
        if discovery::needs_libpython(&image) {
            return Ok(Some(true));
        }
        Ok(None)
    }

    /// Whether libpython (if needed) and the C library are mapped executable.
    fn loaded(&self, needs_libpython: bool) -> bool {
        let Ok(maps) = discovery::read_maps(self.pid) else { return false };
        let mapped = |pred: fn(&str) -> bool| maps.iter().any(|m| pred(&m.path) && m.perms.contains('x'));
        (!needs_libpython || mapped(discovery::is_libpython_name)) && mapped(discovery::is_libc_name)
    }

    /// Resumes the child and waits for it to end. `at_finalize` is asked about each SIGSTOP:
    /// it returns true (and the signal is suppressed) when the stop is the one pyleak's
    /// kernel side sends as the interpreter starts shutting down. `at_exit` runs while the
    /// child is held at its exit (memory still readable); `at_exec` once it has replaced its
    /// program (the old one's memory is gone). Returns how it ended.
    pub fn run_to_exit(
        mut self,
        mut at_finalize: impl FnMut() -> bool,
        mut at_exit: impl FnMut(),
        mut at_exec: impl FnMut(),
    ) -> Result<Ended> {
        let mut pending = 0;
        loop {
            self.restart(libc::PTRACE_CONT, pending)?;
            pending = 0;
            match self.wait()? {
                Event::Exited(code) => return Ok(Ended::Status(code)),
                Event::Killed(sig) => return Ok(Ended::Signal(sig)),
                Event::Exit => at_exit(),
                Event::Exec => at_exec(),
                // A group-stop (Ctrl-Z) reports as a stop with no signal info; re-injecting it
                // would loop, so the child is resumed (job control is not passed through).
                Event::Signal(libc::SIGSTOP) if !self.is_group_stop() && at_finalize() => {}
                Event::Signal(sig) => pending = if self.is_group_stop() { 0 } else { sig },
                Event::Syscall | Event::Other => {}
            }
        }
    }

    fn is_group_stop(&self) -> bool {
        // SAFETY: siginfo is plain data filled by the kernel.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::ptrace(libc::PTRACE_GETSIGINFO, self.pid, 0, &mut info as *mut _) != 0
        }
    }

    fn restart(&self, request: libc::c_uint, sig: i32) -> Result<()> {
        // SAFETY: ptrace restart of our own stopped tracee.
        if unsafe { libc::ptrace(request, self.pid, 0, sig as libc::c_long) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(()); // it died meanwhile; wait() will say how
            }
            bail!("ptrace restart of pid {}: {err}", self.pid);
        }
        Ok(())
    }

    /// Waits for the next event; forwards a pending Ctrl-C/SIGTERM to the child once.
    fn wait(&mut self) -> Result<Event> {
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::__WALL) };
            if r < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    self.forward_interrupt();
                    continue;
                }
                bail!("waiting for pid {}: {err}", self.pid);
            }
            self.forward_interrupt();
            return Ok(classify(status));
        }
    }

    /// A Ctrl-C typed at a terminal reaches the child directly (same process group); a
    /// SIGINT/SIGTERM sent to pyleak alone is passed on, once, so the child can exit cleanly.
    fn forward_interrupt(&mut self) {
        if self.forwarded_interrupt || !INTERRUPTED.load(Ordering::SeqCst) {
            return;
        }
        self.forwarded_interrupt = true;
        // SAFETY: querying our own process group and the terminal's foreground group.
        let from_terminal = unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() };
        if !from_terminal {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.pid as i32, libc::SIGINT) };
        }
    }
}

fn classify(status: i32) -> Event {
    if libc::WIFEXITED(status) {
        return Event::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Event::Killed(libc::WTERMSIG(status));
    }
    if !libc::WIFSTOPPED(status) {
        return Event::Other;
    }
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xffff;
    match event {
        libc::PTRACE_EVENT_EXEC => Event::Exec,
        libc::PTRACE_EVENT_EXIT => Event::Exit,
        0 if sig == (libc::SIGTRAP | 0x80) => Event::Syscall,
        0 => Event::Signal(sig),
        _ => Event::Other,
    }
}
