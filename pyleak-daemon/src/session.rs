//! One tracing session on one process: find its interpreter, register it with the kernel
//! side, attach the allocator probes, keep symbolizing new stacks while the target runs, and
//! build the report at the end. `trace` and `run` both drive a `Session`.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use pyleak_common::{FROZEN_AT_EXEC, FROZEN_AT_FINALIZE, StackCounters};

use crate::{
    aggregate::{self, ResolvedStack},
    discovery::{self, Interpreter},
    elf::ElfImage,
    model::{PythonInfo, Report},
    native::NativeNamer,
    probes::{self, AllocFn, Detachable, LoadOptions, Probes, Tables},
    procmem::ProcMem,
    python::{layout, symbolize::Symbolizer, target},
    sites,
};

/// The allocator entry points probed, with what each does. Every allocation path of a
/// CPython built with a shared libpython goes through one of these exported functions.
pub const ALLOCATOR_FUNCTIONS: &[(&str, AllocFn)] = &[
    ("PyObject_Malloc", AllocFn::Malloc),
    ("PyObject_Calloc", AllocFn::Calloc),
    ("PyObject_Realloc", AllocFn::Realloc),
    ("PyObject_Free", AllocFn::Free),
    ("PyMem_Malloc", AllocFn::Malloc),
    ("PyMem_Calloc", AllocFn::Calloc),
    ("PyMem_Realloc", AllocFn::Realloc),
    ("PyMem_Free", AllocFn::Free),
    ("PyMem_RawMalloc", AllocFn::Malloc),
    ("PyMem_RawCalloc", AllocFn::Calloc),
    ("PyMem_RawRealloc", AllocFn::Realloc),
    ("PyMem_RawFree", AllocFn::Free),
    ("Py_FinalizeEx", AllocFn::Finalize),
];

/// The C library's allocator: memory that C extensions and ctypes take directly (numpy
/// arrays, native buffers), charged to the Python line that called into them. CPython's own
/// large blocks also end up here, nested inside PyMem_RawMalloc; the kernel side counts a
/// nested call once.
pub const NATIVE_FUNCTIONS: &[(&str, AllocFn)] = &[
    ("malloc", AllocFn::Malloc),
    ("calloc", AllocFn::Calloc),
    ("realloc", AllocFn::Realloc),
    ("free", AllocFn::Free),
    ("posix_memalign", AllocFn::PosixMemalign),
    ("aligned_alloc", AllocFn::AlignedAlloc),
    ("memalign", AllocFn::AlignedAlloc),
];

/// A plain build's exported `PyObject_Malloc` is a thunk through the allocator table (27 to
/// 35 bytes in the pyenv builds). LTO+PGO distro builds (Debian's python3.11: 247 bytes)
/// export a specialized copy with pymalloc's fast path inlined, and inline the same into
/// most callers, so most small-object allocations never call an exported function.
const THUNK_MAX_BYTES: u64 = 64;

/// Whether the interpreter's allocator looks inlined into its callers (see
/// [`THUNK_MAX_BYTES`]): a heuristic from the exported function's size, stated as such.
pub fn allocator_inlined(image: &ElfImage) -> bool {
    image.symbol("PyObject_Malloc").is_some_and(|s| s.size > THUNK_MAX_BYTES)
}

/// What the report and `doctor` say about an inlined allocator.
pub const INLINED_NOTE: &str = "this interpreter's allocator is inlined into its callers (an LTO/PGO build, such as a distribution's python3): most objects of 512 bytes or less, served by pymalloc, never reach a probed function and are NOT counted; larger blocks go through the C library's malloc and are counted. For full coverage, start the target with PYTHONMALLOC=malloc (every allocation then goes through malloc)";

/// How often the background worker looks at STACKS for stacks whose ring-buffer
/// announcement was lost.
const RESCAN_EVERY: Duration = Duration::from_millis(500);

/// How often a raw delegate's import slot is first checked for its binding (see
/// [`spawn_settler`]); the interval doubles after each check, up to [`SETTLE_POLL_MAX`].
const SETTLE_POLL_FIRST: Duration = Duration::from_millis(5);
const SETTLE_POLL_MAX: Duration = Duration::from_secs(1);

pub struct Session {
    pub pid: u32,
    pub command: String,
    pub python: PythonInfo,
    probes: Probes,
    tables: Arc<Tables>,
    resolver: Arc<Mutex<Resolver>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    /// Removes the probes of raw delegates once their calls are bound (see [`spawn_settler`]).
    settler: Option<JoinHandle<()>>,
    /// Probes of raw delegates not removed (yet): they live as long as the session.
    delegates: Arc<Mutex<Vec<(sites::DelegateSlot, Detachable)>>>,
    started: Instant,
    sample_bytes: u64,
    /// `--bpf-stats`: reports carry the kernel programs' costs.
    bpf_stats: bool,
    /// What the kernel maps were sized for (a report names the one that was full).
    capacity: aggregate::Capacity,
}

/// Turns stack ids into symbolized frames as soon as they appear.
struct Resolver {
    pid: u32,
    ring: RingBuf<MapData>,
    tables: Arc<Tables>,
    symbolizer: Symbolizer,
    native: NativeNamer,
    resolved: HashMap<u64, ResolvedStack>,
    last_scan: Instant,
    /// `LostNewStackEvents` when last looked at (see [`Resolver::announcements_lost`]).
    lost_seen: u64,
    reclaimer: Reclaimer,
}

/// How often, at most, the stacks are looked over for idle ones to reclaim.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);

/// Frees the kernel's room for stacks that hold nothing any more. `STACKS` and
/// `STACK_STATS` only grow: every distinct stack a process ever allocates from takes an
/// entry, so a service traced for days would fill them (`max_stacks`) and lose every new
/// stack from then on. Once the stacks fill half of `max_stacks`, every [`RECLAIM_EVERY`]
/// the stacks with nothing outstanding and no change since the previous look are deleted
/// from both maps; their counters go to `retired` (the totals keep them), their names are
/// forgotten (a stack that comes back is interned and named again).
///
/// The kernel's `stats_add` looks an entry up and then adds to it: an allocation on a stack
/// in the very moment its entry is deleted (tens of nanoseconds, on a stack idle for a
/// second or more) is added to the deleted entry and lost. That is the price of reclaiming
/// while tracing goes on.
struct Reclaimer {
    /// `max_stacks`.
    capacity: u32,
    last_pass: Instant,
    /// Stacks with nothing outstanding at the previous look, with their counters then.
    idle: HashMap<u64, StackCounters>,
    /// The counters of the stacks reclaimed, summed.
    retired: StackCounters,
    /// How many stacks were reclaimed.
    reclaimed: u64,
}

impl Reclaimer {
    fn new(capacity: u32) -> Reclaimer {
        Reclaimer {
            capacity,
            last_pass: Instant::now(),
            idle: HashMap::new(),
            retired: StackCounters::default(),
            reclaimed: 0,
        }
    }
}

/// Why the kernel side stopped counting a process (`PyTarget::finalizing`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frozen {
    No,
    AtFinalize,
    AtExec,
}

impl Session {
    /// Attaches to a running process. Nothing in the target is stopped or modified.
    /// `hold_at_finalize` is for `run`'s ptraced child only (see `PyTarget::stop_at_finalize`);
    /// that child is also attached before its interpreter started. Probe sites are planned
    /// (see `sites`).
    pub fn attach(pid: u32, opts: LoadOptions, hold_at_finalize: bool) -> Result<Session> {
        Session::attach_with(pid, opts, true, hold_at_finalize)
    }

    /// [`Session::attach`], with the probe-site planner on or off (`--no-planner`: probes on
    /// the public entry points' first instructions).
    pub fn attach_with(
        pid: u32,
        opts: LoadOptions,
        planner: bool,
        hold_at_finalize: bool,
    ) -> Result<Session> {
        let interp = discovery::find_interpreter(pid)?;
        let resolved = layout::resolve(&interp, pid)?;
        let layout = resolved.layout;
        let mut py_target = target::build(&interp, &layout)?;
        py_target.stop_at_finalize = hold_at_finalize as u32;
        let libc = discovery::find_libc(pid)?;
        let native = match &libc {
            Some(lib) => sites::public_sites(&lib.image, NATIVE_FUNCTIONS, planner).sites,
            None => Vec::new(),
        };
        let libc_text = libc.as_ref().filter(|_| !native.is_empty()).map(|l| l.text);
        let placement = sites::Options { planner, before_init: hold_at_finalize, libc_text };
        let plan = sites::interpreter_sites(pid, &interp, ALLOCATOR_FUNCTIONS, placement);
        let (sites, missing) = (&plan.sites, &plan.missing);
        if sites.is_empty() {
            anyhow::bail!("{} exports none of CPython's allocator functions; nothing to probe", interp.path);
        }
        if let Some(lib) = &libc {
            (py_target.native_lo, py_target.native_hi) = lib.text;
        }
        (py_target.interp_lo, py_target.interp_hi) = interp.text;
        // The kernel may remember code objects' first lines only if it sees every code
        // object's free (see PyTarget::code_cache); an inlined allocator hides some.
        let code_cache = !missing.contains(&"PyObject_Free") && !allocator_inlined(&interp.image);
        let (mut probes, tables, ring) = Probes::load(opts)?;
        tracing::debug!(pid, "kernel programs loaded");
        probes.add_target(pid, &py_target)?;
        // Raw delegates whose calls are not bound yet get probes of their own, removed once
        // bound to the C library's (see sites::Binding).
        let pending = |s: &probes::ProbeSite| plan.pending.iter().any(|d| d.implementation == s.function);
        let settled: Vec<_> = sites.iter().filter(|s| !pending(s)).cloned().collect();
        probes.attach(pid, &interp.host_path, &settled)?;
        let mut delegates = Vec::new();
        for d in &plan.pending {
            let own: Vec<_> = sites.iter().filter(|s| s.function == d.implementation).cloned().collect();
            delegates.push((*d, probes.attach_detachable(pid, &interp.host_path, &own)?));
        }
        if let Some(lib) = &libc {
            probes.attach(pid, &lib.host_path, &native)?;
        }
        if code_cache {
            // Only now: every free probe is in place, so no freed code object is remembered.
            probes.enable_code_cache(pid)?;
        }

        let code_type = interp
            .image
            .symbol("PyCode_Type")
            .map(|s| interp.bias.wrapping_add(s.vaddr))
            .with_context(|| format!("{} has no PyCode_Type symbol", interp.path))?;
        let tables = Arc::new(tables);
        let resolver = Arc::new(Mutex::new(Resolver {
            pid,
            ring,
            tables: tables.clone(),
            symbolizer: Symbolizer::new(ProcMem::new(pid), layout, code_type),
            native: NativeNamer::new(pid),
            resolved: HashMap::new(),
            last_scan: Instant::now(),
            lost_seen: 0,
            reclaimer: Reclaimer::new(opts.max_stacks),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = spawn_worker(resolver.clone(), stop.clone());
        let delegates = Arc::new(Mutex::new(delegates));
        let settler = match libc_text {
            Some(libc_text) if !plan.pending.is_empty() => Some(spawn_settler(
                pid,
                Binder { interp_text: interp.text, bias: interp.bias, libc_text },
                delegates.clone(),
                stop.clone(),
            )),
            _ => None,
        };
        Ok(Session {
            pid,
            command: discovery::command_line(pid),
            python: {
                let mut python =
                    describe(&interp, &resolved, missing, libc.as_ref().map(|l| l.path.as_str()));
                python.notes.extend(plan.notes.iter().cloned());
                if opts.empty_programs {
                    python.notes.insert(
                        0,
                        "--empty-programs: the probes ran programs that do nothing (a benchmark floor); nothing was recorded"
                            .to_string(),
                    );
                }
                python
            },
            probes,
            tables,
            resolver,
            stop,
            worker: Some(worker),
            settler,
            delegates,
            started: Instant::now(),
            sample_bytes: opts.sample_bytes,
            bpf_stats: opts.bpf_stats,
            capacity: aggregate::Capacity { live_allocs: opts.max_live_allocs, stacks: opts.max_stacks },
        })
    }

    /// The kernel side's health counters (its maps serve this process only).
    pub fn counters(&self) -> Vec<(pyleak_common::Counter, u64)> {
        self.tables.counters()
    }

    /// Whether the kernel side saw the interpreter reach its shutdown point
    /// (`sites::finalize_point`).
    pub fn finalizing(&self) -> bool {
        self.frozen() == Frozen::AtFinalize
    }

    /// Whether the process replaced its program (execve) since the attach: the kernel side
    /// stopped counting at the exec, and what was traced is the old program's.
    pub fn replaced(&self) -> bool {
        self.frozen() == Frozen::AtExec
    }

    /// Symbolizes every stack seen so far (call while the target's memory is readable).
    pub fn sync(&self) {
        let mut r = self.resolver.lock().expect("resolver poisoned");
        r.drain(true);
    }

    /// The raw report so far (all stacks, unshaped), while tracing goes on. `min_age` keeps
    /// only blocks outstanding at least that long. Used by the daemon on every request.
    pub fn snapshot(&self, min_age: Option<Duration>) -> Report {
        let mut resolver = self.resolver.lock().expect("resolver poisoned");
        resolver.drain(true);
        self.build_report(&resolver, min_age, self.frozen())
    }

    /// Why the kernel side stopped counting, if it did (one read of the target slot).
    fn frozen(&self) -> Frozen {
        match self.probes.frozen(self.pid) {
            FROZEN_AT_FINALIZE => Frozen::AtFinalize,
            FROZEN_AT_EXEC => Frozen::AtExec,
            _ => Frozen::No,
        }
    }

    /// Detaches and returns the raw report (all stacks, unshaped). `min_age` keeps only
    /// blocks outstanding at least that long.
    pub fn finish(mut self, min_age: Option<Duration>) -> Report {
        // Read before detaching: detaching forgets the process's kernel-side state.
        let frozen = self.frozen();
        self.probes.detach(self.pid);
        tracing::debug!(pid = self.pid, "detached");
        self.stop.store(true, Ordering::SeqCst);
        for t in [self.worker.take(), self.settler.take()].into_iter().flatten() {
            let _ = t.join();
        }
        self.delegates.lock().expect("delegates poisoned").clear();
        let mut resolver = self.resolver.lock().expect("resolver poisoned");
        // After an exec the memory is the new program's: its code objects are not the ones
        // the stacks name (the fingerprints would refuse most of them anyway).
        if frozen != Frozen::AtExec && discovery::process_exists(self.pid) {
            resolver.drain(true);
        }
        tracing::debug!(pid = self.pid, "symbolized");
        self.build_report(&resolver, min_age, frozen)
    }

    fn build_report(&self, resolver: &Resolver, min_age: Option<Duration>, frozen: Frozen) -> Report {
        let mut python = self.python.clone();
        match frozen {
            Frozen::No => {}
            Frozen::AtFinalize => python.notes.push(
                "counting stopped when the interpreter began tearing itself down (Py_FinalizeEx, after joining threads and running atexit handlers): memory freed by the teardown is still shown as outstanding"
                    .to_string(),
            ),
            Frozen::AtExec => python.notes.push(
                "counting stopped when the process replaced its program (execve): the report covers the program before; stacks not yet named then stay unnamed"
                    .to_string(),
            ),
        }
        let live = min_age.map(|age| {
            let cutoff = monotonic_ns().saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
            self.tables.live_blocks(self.pid).into_iter().filter(|b| b.2 <= cutoff).collect::<Vec<_>>()
        });
        let counters = self.tables.counters();
        tracing::debug!(pid = self.pid, ?counters, "kernel counters");
        aggregate::build(aggregate::Inputs {
            pid: self.pid,
            command: self.command.clone(),
            python,
            duration: self.started.elapsed(),
            stats: self.tables.stack_stats(self.pid),
            live,
            sample_bytes: self.sample_bytes,
            counters,
            kernel_programs: self.bpf_stats.then(|| self.probes.program_costs()),
            resolved: &resolver.resolved,
            capacity: self.capacity,
            retired: resolver.reclaimer.retired,
            reclaimed: resolver.reclaimer.reclaimed,
        })
    }
}

fn describe(
    interp: &Interpreter,
    layout: &layout::Resolved,
    missing: &[&str],
    libc: Option<&str>,
) -> PythonInfo {
    let mut notes = vec![
        match libc {
            Some(path) => format!(
                "native allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc in {path}) are included, charged to the Python line that made them"
            ),
            None => "no C library found in the process: native allocations outside CPython's allocator are not seen".to_string(),
        },
        "objects reused from CPython's free lists (floats, small tuples, frames, ...) never reach the allocator and are not counted"
            .to_string(),
    ];
    if !missing.is_empty() {
        notes.push(format!("not probed (absent from {}): {}", interp.path, missing.join(", ")));
    }
    // 3.13+: where the offsets came from (and, for a version never traced live, that it is
    // untested). Table versions say nothing: that is the long-tested path.
    if layout.origin != layout::Origin::Table {
        notes.push(layout.describe());
    }
    let inlined = allocator_inlined(&interp.image);
    if inlined {
        notes.insert(0, INLINED_NOTE.to_string());
    }
    PythonInfo {
        version: interp.version.to_string(),
        executable: interp.path.clone(),
        coverage: if missing.is_empty() && !inlined { "full" } else { "partial" }.to_string(),
        notes,
    }
}

/// Where a process's raw delegates' calls may lead (see [`sites::DelegateSlot::binding`]).
#[derive(Clone, Copy)]
struct Binder {
    interp_text: (u64, u64),
    bias: u64,
    libc_text: (u64, u64),
}

/// Watches the import slots of the raw delegates probed only because their calls were not
/// bound yet (a process attached before the dynamic linker relocated it, `pyleak run`, or
/// one whose lazy binding had not run). Each one bound to the C library loses its probes:
/// its blocks are seen at the C library's probed function, and its own probes cost a
/// single-stepped trap and a return probe per call (measured: a loop of 1 KB `bytes` ran 2.5x
/// longer under `pyleak run` than under `pyleak trace` with them). One bound elsewhere keeps
/// them. Checks back off from every 5 ms to every second; the thread ends when none is left
/// pending or the session stops.
fn spawn_settler(
    pid: u32,
    binder: Binder,
    delegates: Arc<Mutex<Vec<(sites::DelegateSlot, Detachable)>>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("pyleak-settle".into())
        .spawn(move || {
            let mem = ProcMem::new(pid);
            let started = Instant::now();
            let mut poll = SETTLE_POLL_FIRST;
            let mut pending: Vec<&'static str> =
                delegates.lock().expect("delegates poisoned").iter().map(|(d, _)| d.implementation).collect();
            while !pending.is_empty() && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(poll);
                poll = (poll * 2).min(SETTLE_POLL_MAX);
                let mut all = delegates.lock().expect("delegates poisoned");
                let mut i = 0;
                while i < all.len() {
                    let d = all[i].0;
                    if !pending.contains(&d.implementation) {
                        i += 1;
                        continue;
                    }
                    match d.binding(&mem, binder.interp_text, binder.bias, binder.libc_text) {
                        sites::Binding::Pending => i += 1,
                        sites::Binding::Libc => {
                            pending.retain(|f| *f != d.implementation);
                            let (_, probes) = all.remove(i);
                            match probes.detach() {
                                Ok(()) => tracing::debug!(
                                    pid,
                                    function = d.implementation,
                                    after_ms = started.elapsed().as_millis() as u64,
                                    "bound to the C library's {}: its probes are removed",
                                    d.callee
                                ),
                                Err(e) => tracing::warn!(
                                    pid,
                                    function = d.implementation,
                                    "removing its probes: {e:#}"
                                ),
                            }
                        }
                        sites::Binding::Elsewhere => {
                            pending.retain(|f| *f != d.implementation);
                            tracing::debug!(
                                pid,
                                function = d.implementation,
                                "its {} is not the C library's: it stays probed",
                                d.callee
                            );
                            i += 1;
                        }
                    }
                }
            }
        })
        .expect("spawning the delegate settler thread")
}

fn spawn_worker(resolver: Arc<Mutex<Resolver>>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let fd = probes::ring_fd(&resolver.lock().expect("resolver poisoned").ring);
    std::thread::Builder::new()
        .name("pyleak-symbolize".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd; the ring buffer outlives this thread (joined first).
                unsafe { libc::poll(&mut pfd, 1, 100) };
                let mut r = resolver.lock().expect("resolver poisoned");
                // The ring announces every new stack but those it had no room for, which are
                // counted: the whole map (up to max_stacks keys, a syscall each) is scanned
                // again only when that count moved.
                let rescan = r.last_scan.elapsed() >= RESCAN_EVERY && r.announcements_lost();
                r.drain(rescan);
                r.reclaim_idle();
            }
        })
        .expect("spawning the symbolizer thread")
}

impl Resolver {
    /// One look over the stacks for idle ones to reclaim (see [`Reclaimer`]), when due.
    fn reclaim_idle(&mut self) {
        let r = &mut self.reclaimer;
        if r.last_pass.elapsed() < RECLAIM_EVERY || (self.resolved.len() as u64) < u64::from(r.capacity) / 2 {
            return;
        }
        r.last_pass = Instant::now();
        let mut idle = HashMap::new();
        let mut doomed = Vec::new();
        for (id, c) in self.tables.stack_stats(self.pid) {
            if c.allocations != c.frees {
                continue; // something outstanding
            }
            if r.idle.get(&id) == Some(&c) {
                doomed.push(id);
            }
            idle.insert(id, c);
        }
        for id in self.tables.reclaim(self.pid, &doomed) {
            if let Some(c) = idle.remove(&id) {
                r.retired.add(&c);
                r.reclaimed += 1;
            }
            self.resolved.remove(&id);
        }
        r.idle = idle;
        tracing::debug!(pid = self.pid, reclaimed = r.reclaimed, "looked over the stacks for idle ones");
    }

    /// Whether announcements of new stacks were lost (the ring was full) since the last call.
    fn announcements_lost(&mut self) -> bool {
        let lost = self.tables.counter(pyleak_common::Counter::LostNewStackEvents);
        let moved = lost != self.lost_seen;
        self.lost_seen = lost;
        moved
    }

    /// Symbolizes announced stacks; with `rescan`, also any in the map not yet resolved.
    fn drain(&mut self, rescan: bool) {
        let mut ids = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(ev) = probes::parse_new_stack(&item)
                && ev.tgid == self.pid
            {
                ids.push(ev.stack_id);
            }
        }
        if rescan {
            self.last_scan = Instant::now();
            ids.extend(self.tables.stack_ids());
        }
        for id in ids {
            if self.resolved.contains_key(&id) {
                continue;
            }
            let Some(st) = self.tables.stack(id) else { continue };
            if st.tgid != self.pid {
                continue;
            }
            let n = (st.len as usize).min(st.code.len());
            let frames = (0..n)
                .filter_map(|i| self.symbolizer.frame(st.code[i], st.instr[i], st.fingerprint[i]))
                .collect();
            let native = (st.native_caller != 0).then(|| self.native.name(st.native_caller));
            self.resolved.insert(id, ResolvedStack { frames, flags: st.flags, native });
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
