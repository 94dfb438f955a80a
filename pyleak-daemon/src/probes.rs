//! Loading pyleak's kernel programs, attaching them to a process's allocator functions, and
//! reading the maps they fill. This is the only module that touches aya types.
use std::{
    collections::HashMap as StdHashMap,
    num::NonZeroU32,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
    sync::OnceLock,
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
};
use pyleak_common::{
    AllocInfo, AllocKey, Counter, GLOBAL_FSBASE_OFFSET, GLOBAL_MAX_DEPTH, GLOBAL_SAMPLE_BYTES, Inflight,
    MAP_COUNTERS, MAP_INFLIGHT, MAP_LIVE_ALLOCS, MAP_NEW_STACKS, MAP_SAMPLE_TABLE, MAP_STACK_STATS,
    MAP_STACKS, MAP_TARGETS, MAX_FRAMES, NewStack, PROG_ALIGNED_ALLOC_ENTER, PROG_ALLOC_EXIT,
    PROG_CALLOC_ENTER, PROG_EMPTY_ENTER, PROG_EMPTY_EXIT, PROG_FINALIZE_ENTER, PROG_FREE_ENTER,
    PROG_MALLOC_ENTER, PROG_POSIX_MEMALIGN_ENTER, PROG_REALLOC_ENTER, PyTarget, StackCounters, StackKey,
    StackTrace,
};

use crate::{btf, model::ProgramCost};

/// The kernel object, built by build.rs.
pub(crate) static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pyleak"));

/// Linux capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;

/// What an allocator function does, which decides the programs attached to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocFn {
    Malloc,
    Calloc,
    Realloc,
    Free,
    /// The shutdown point (`sites::finalize_point`): not an allocator; freezes the process's
    /// numbers at shutdown.
    Finalize,
    /// `posix_memalign(&p, align, size)`.
    PosixMemalign,
    /// `aligned_alloc(align, size)` / `memalign(align, size)`.
    AlignedAlloc,
}

impl AllocFn {
    /// Whether the function also gets the return program (it returns the block).
    pub fn has_return_probe(self) -> bool {
        !matches!(self, AllocFn::Free | AllocFn::Finalize)
    }

    fn entry_program(self) -> &'static str {
        match self {
            AllocFn::Malloc => PROG_MALLOC_ENTER,
            AllocFn::Calloc => PROG_CALLOC_ENTER,
            AllocFn::Realloc => PROG_REALLOC_ENTER,
            AllocFn::Free => PROG_FREE_ENTER,
            AllocFn::Finalize => PROG_FINALIZE_ENTER,
            AllocFn::PosixMemalign => PROG_POSIX_MEMALIGN_ENTER,
            AllocFn::AlignedAlloc => PROG_ALIGNED_ALLOC_ENTER,
        }
    }
}

/// One uprobe of a link: (file offset, attach cookie, the function, for messages).
type Point<'a> = (u64, Option<u64>, &'a str);

/// One probed function in a file (see `sites` for how they are chosen).
#[derive(Clone, Debug)]
pub struct ProbeSite {
    pub function: String,
    pub kind: AllocFn,
    /// The function's first instruction, as a file offset: where its return probe goes.
    pub file_offset: u64,
    /// Where its entry probe goes: `file_offset`, or further on (the planner).
    pub entry_offset: u64,
    /// The entry probe's attach cookie: where its program finds its values
    /// (`pyleak_common::entry_cookie`; 0: the C ABI argument registers).
    pub cookie: u64,
}

/// Sizes and depth chosen by the user (config/CLI).
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub max_depth: u32,
    pub max_live_allocs: u32,
    pub max_stacks: u32,
    /// `--sample-bytes`: mean sampling interval in bytes; 0 records every allocation.
    pub sample_bytes: u64,
    /// `--empty-programs` (benchmarks): attach programs that do nothing, at the same sites.
    pub empty_programs: bool,
    /// `--bpf-stats`: have the kernel account each program's runs and run time (see
    /// [`enable_run_time_stats`]), and report them.
    pub bpf_stats: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_depth: pyleak_common::DEFAULT_MAX_DEPTH,
            max_live_allocs: pyleak_common::DEFAULT_MAX_LIVE_ALLOCS,
            max_stacks: pyleak_common::DEFAULT_MAX_STACKS,
            sample_bytes: 0,
            empty_programs: false,
            bpf_stats: false,
        }
    }
}

/// The fd that keeps the kernel's run-time statistics of eBPF programs on; they stay on for
/// as long as pyleak runs (the kernel turns them off when the last such fd closes).
static RUN_TIME_STATS: OnceLock<std::result::Result<OwnedFd, String>> = OnceLock::new();

/// `--bpf-stats`: turns on the kernel's accounting of every eBPF program's runs and run time
/// (`BPF_ENABLE_STATS`, the fd form of `sysctl kernel.bpf_stats_enabled=1`), once per pyleak
/// process. It is host-wide and costs each program run on the host two clock reads: about
/// 0.1 µs here (pyperformance float under `pyleak trace`, 3 million program runs: 4.05 s
/// without, 4.35 s with).
pub fn enable_run_time_stats() -> Result<()> {
    let enabled = RUN_TIME_STATS
        .get_or_init(|| aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| format!("{e}")));
    match enabled {
        Ok(_) => Ok(()),
        Err(e) => Err(permission_hint(anyhow!(
            "cannot turn on the kernel's eBPF run-time statistics for --bpf-stats (BPF_ENABLE_STATS, Linux 5.8+): {e}"
        ))),
    }
}

/// Why loading or attaching failed, when the caller can do something about it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "pyleak needs CAP_SYS_ADMIN to load eBPF programs and attach uprobes: run it as root (sudo), or give the binary the capability (setcap cap_sys_admin,cap_sys_ptrace+ep pyleak)"
    )]
    MissingCapability,
    #[error(
        "this pyleak was built with AYA_BUILD_SKIP=1 and contains no kernel programs; rebuild it with `cargo xtask build`"
    )]
    NoKernelObject,
}

/// Whether this process has CAP_SYS_ADMIN in its effective set.
pub fn has_sys_admin() -> bool {
    effective_caps().is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

/// Fails early, with the remedy, when no kernel program can be loaded: a build without the
/// kernel object, or a process without CAP_SYS_ADMIN.
pub fn check_loadable() -> Result<(), ProbeError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::NoKernelObject);
    }
    if !has_sys_admin() {
        return Err(ProbeError::MissingCapability);
    }
    Ok(())
}

/// The loaded programs and their maps.
pub struct Probes {
    ebpf: Ebpf,
    /// One slot: this object's traced process (see `PyTarget::tgid`).
    targets: Array<MapData, PyTarget>,
    inflight: HashMap<MapData, u64, Inflight>,
    /// `INFLIGHT`'s map id, for the handles of [`Detachable`] probes.
    inflight_id: u32,
    /// Attached links per pid, to detach one process without touching others.
    links: StdHashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    empty_programs: bool,
}

/// `STACKS` and `STACK_STATS` again, for [`Tables::reclaim`].
type ReclaimHandles = (HashMap<MapData, u64, StackTrace>, PerCpuHashMap<MapData, StackKey, StackCounters>);

/// Views of the maps the reporting side needs; shareable across threads. Read-only but for
/// [`Tables::reclaim`], which goes through handles of its own.
pub struct Tables {
    pub stacks: HashMap<MapData, u64, StackTrace>,
    pub stats: PerCpuHashMap<MapData, StackKey, StackCounters>,
    pub live: HashMap<MapData, AllocKey, AllocInfo>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Second handles of `STACKS` and `STACK_STATS`, for deleting (aya's maps delete through
    /// `&mut`).
    reclaim: std::sync::Mutex<ReclaimHandles>,
}

impl Probes {
    /// Loads and verifies the kernel programs. Fails with `ProbeError::MissingCapability`
    /// before trying when the capability is plainly absent.
    pub fn load(opts: LoadOptions) -> Result<(Probes, Tables, RingBuf<MapData>)> {
        check_loadable()?;
        if opts.bpf_stats {
            enable_run_time_stats()?;
        }
        let fsbase = btf::task_fsbase_offset().context(
            "finding task_struct.thread.fsbase in the kernel's BTF (needed to read thread-local state)",
        )?;
        let depth = opts.max_depth.clamp(1, MAX_FRAMES as u32);
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_MAX_DEPTH, &depth, true)
            .override_global(GLOBAL_FSBASE_OFFSET, &fsbase, true)
            .override_global(GLOBAL_SAMPLE_BYTES, &opts.sample_bytes, true)
            .map_max_entries(MAP_LIVE_ALLOCS, opts.max_live_allocs)
            .map_max_entries(MAP_STACKS, opts.max_stacks)
            .map_max_entries(MAP_STACK_STATS, opts.max_stacks)
            .load(EBPF_OBJECT)
            .map_err(|e| permission_hint(anyhow!(e)))
            .context("loading pyleak's eBPF programs")?;
        for name in [
            PROG_MALLOC_ENTER,
            PROG_CALLOC_ENTER,
            PROG_REALLOC_ENTER,
            PROG_FREE_ENTER,
            PROG_ALLOC_EXIT,
            PROG_FINALIZE_ENTER,
            PROG_POSIX_MEMALIGN_ENTER,
            PROG_ALIGNED_ALLOC_ENTER,
            PROG_EMPTY_ENTER,
            PROG_EMPTY_EXIT,
        ] {
            let prog: &mut UProbe = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| permission_hint(anyhow!(e)))
                .with_context(|| format!("the kernel rejected program {name}"))?;
        }
        // Before any target is registered: an exec of the target after that stops its
        // counting in the kernel at once (see `replaced`).
        crate::exec_watch::attach_tracepoint(&mut ebpf)?;
        if opts.sample_bytes > 0 {
            let mut table: Array<_, u32> = Array::try_from(take(&mut ebpf, MAP_SAMPLE_TABLE)?)?;
            for (k, p) in crate::sampling::probability_table().into_iter().enumerate() {
                table.set(k as u32, &p, 0).context("filling the sampling table")?;
            }
        }
        let targets = Array::try_from(take(&mut ebpf, MAP_TARGETS)?)?;
        let inflight_map = take(&mut ebpf, MAP_INFLIGHT)?;
        let inflight_id = match &inflight_map {
            aya::maps::Map::LruHashMap(data) => data.info().context("reading INFLIGHT's id")?.id(),
            _ => anyhow::bail!("map {MAP_INFLIGHT} is not an LRU hash map"),
        };
        let inflight = HashMap::try_from(inflight_map)?;
        let stacks: HashMap<MapData, u64, StackTrace> = HashMap::try_from(take(&mut ebpf, MAP_STACKS)?)?;
        let stats: PerCpuHashMap<MapData, StackKey, StackCounters> =
            PerCpuHashMap::try_from(take(&mut ebpf, MAP_STACK_STATS)?)?;
        let reclaim = {
            use aya::maps::{IterableMap, Map};
            let again = |m: &MapData| -> Result<MapData> { Ok(MapData::from_id(m.info()?.id())?) };
            (
                HashMap::try_from(Map::HashMap(again(stacks.map())?))?,
                PerCpuHashMap::try_from(Map::PerCpuHashMap(again(IterableMap::map(&stats))?))?,
            )
        };
        let tables = Tables {
            stacks,
            stats,
            live: HashMap::try_from(take(&mut ebpf, MAP_LIVE_ALLOCS)?)?,
            counters: PerCpuArray::try_from(take(&mut ebpf, MAP_COUNTERS)?)?,
            reclaim: std::sync::Mutex::new(reclaim),
        };
        let ring = RingBuf::try_from(take(&mut ebpf, MAP_NEW_STACKS)?)?;
        let empty_programs = opts.empty_programs;
        Ok((
            Probes { ebpf, targets, inflight, inflight_id, links: StdHashMap::new(), empty_programs },
            tables,
            ring,
        ))
    }

    /// Why the kernel side stopped counting `pid`, if it did: `PyTarget::finalizing`
    /// (`FROZEN_AT_FINALIZE`, `FROZEN_AT_EXEC`), 0 while it counts or when `pid` is not this
    /// object's target.
    pub fn frozen(&self, pid: u32) -> u32 {
        self.targets.get(&0, 0).ok().filter(|t| t.tgid == pid).map_or(0, |t| t.finalizing)
    }

    /// Registers the process with the kernel side (before attaching, so no call is missed).
    /// An object traces one process: a second one replaces the first.
    pub fn add_target(&mut self, pid: u32, target: &PyTarget) -> Result<()> {
        self.clear_inflight(pid);
        let target = PyTarget { tgid: pid, ..*target };
        self.targets.set(0, &target, 0).with_context(|| format!("registering pid {pid} with the kernel side"))
    }

    /// Lets the kernel side remember code objects' first lines for `pid` (see
    /// `PyTarget::code_cache`). Call once every free probe is attached.
    pub fn enable_code_cache(&mut self, pid: u32) -> Result<()> {
        let mut target = self.targets.get(&0, 0).context("reading the kernel's target")?;
        if target.tgid != pid {
            anyhow::bail!("pid {pid} is not this object's target");
        }
        target.code_cache = 1;
        self.targets.set(0, &target, 0).context("enabling the code cache")
    }

    /// Attaches the programs for each site of `file` (a path reaching the target's file),
    /// firing only in `pid`. Each program gets one uprobe_multi link covering all its sites
    /// in the file: detaching separate uprobes waits for an RCU grace period each (measured:
    /// 4.5 s for 40 probes), a multi link detaches them all at once.
    pub fn attach(&mut self, pid: u32, file: &Path, sites: &[ProbeSite]) -> Result<()> {
        let links = self.attach_links(pid, file, sites)?;
        self.links.entry(pid).or_default().extend(links);
        Ok(())
    }

    /// [`Probes::attach`], but the probes come apart from the others, to be detached on their
    /// own, while the process is traced (see [`Detachable`]).
    pub fn attach_detachable(&mut self, pid: u32, file: &Path, sites: &[ProbeSite]) -> Result<Detachable> {
        let ids = self.attach_links(pid, file, sites)?;
        let mut links = Vec::new();
        for (name, id) in ids {
            links.push(program(&mut self.ebpf, name)?.take_link(id)?);
        }
        let returns = sites.iter().any(|s| s.kind.has_return_probe());
        Ok(Detachable { pid, links, returns, inflight_id: self.inflight_id })
    }

    fn attach_links(
        &mut self,
        pid: u32,
        file: &Path,
        sites: &[ProbeSite],
    ) -> Result<Vec<(&'static str, UProbeLinkId)>> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0"))?);
        let by_program = group_by_program(sites, self.empty_programs);
        let mut links = Vec::new();
        for (name, points) in by_program {
            let at: Vec<String> = points.iter().map(|p| format!("{}@{:#x}", p.2, p.0)).collect();
            let prog: &mut UProbe = program(&mut self.ebpf, name)?;
            let id = prog
                .attach(
                    points.iter().map(|&(offset, cookie, _)| UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(offset),
                        cookie: cookie.filter(|c| *c != 0),
                    }),
                    file,
                    scope,
                )
                .map_err(|e| permission_hint(anyhow!(e)))
                .with_context(|| {
                    format!("attaching {name} to {} at {} in pid {pid}", file.display(), at.join(", "))
                })?;
            links.push((name, id));
        }
        Ok(links)
    }

    /// Each of this object's programs that ran: its runs and run time so far, as the kernel
    /// accounts them while run-time statistics are on (see [`enable_run_time_stats`]). The
    /// object serves one process, so these are that process's costs. Sorted by run time,
    /// largest first.
    pub fn program_costs(&self) -> Vec<ProgramCost> {
        let mut costs: Vec<ProgramCost> = self
            .ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                (info.run_count() > 0).then(|| ProgramCost {
                    program: name.to_string(),
                    runs: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect();
        costs.sort_by(|a, b| b.run_time_ns.cmp(&a.run_time_ns).then_with(|| a.program.cmp(&b.program)));
        costs
    }

    /// Detaches everything attached for `pid` and forgets it on the kernel side.
    pub fn detach(&mut self, pid: u32) {
        for (name, id) in self.links.remove(&pid).unwrap_or_default() {
            if let Ok(prog) = program(&mut self.ebpf, name)
                && let Err(e) = prog.detach(id)
            {
                tracing::warn!(pid, program = name, "detaching: {e}");
            }
        }
        if self.targets.get(&0, 0).is_ok_and(|t| t.tgid == pid) {
            let _ = self.targets.set(0, &PyTarget::default(), 0);
        }
        self.clear_inflight(pid);
    }

    /// Drops per-thread call records of `pid` (stale ones would swallow the next call).
    fn clear_inflight(&mut self, pid: u32) {
        clear_inflight(&mut self.inflight, pid);
    }
}

fn clear_inflight(inflight: &mut HashMap<MapData, u64, Inflight>, pid: u32) {
    let stale: Vec<u64> = inflight.keys().flatten().filter(|k| (k >> 32) as u32 == pid).collect();
    for k in stale {
        let _ = inflight.remove(&k);
    }
}

/// Probes of one process attached apart from the others ([`Probes::attach_detachable`]), so
/// that they can be removed while it is traced; dropped, they are detached too.
pub struct Detachable {
    pid: u32,
    links: Vec<UProbeLink>,
    /// Some of them are return probes.
    returns: bool,
    inflight_id: u32,
}

impl Detachable {
    /// Detaches the probes. A thread inside a function whose return probe goes away keeps its
    /// in-flight record one level too deep for good (the return never runs), which would
    /// swallow its later calls; so with return probes, such records are dropped afterwards.
    /// Which ones: a record is stuck if its depth never comes back to 0 while it is watched
    /// ([`STUCK_SAMPLES`] looks over [`STUCK_WATCH`]); a thread that allocates passes depth 0
    /// between calls, one that waits (I/O, a lock) shows its stuck depth throughout. A record
    /// in flight the whole time (one allocator call that long, or a thread inside calls at
    /// every look) is dropped too: its call is counted as an unmatched return, and its block
    /// is not recorded. Dropping every record of the process, as before, lost every call in
    /// flight at that moment (a leak test's `ctypes` malloc loop lost two blocks of 1,500).
    pub fn detach(self) -> Result<()> {
        let Detachable { pid, mut links, returns, inflight_id } = self;
        // Entry programs first (the reverse of attaching: see `group_by_program`), so no
        // call enters without a return program to close it.
        links.reverse();
        for link in links {
            drop(link);
        }
        if returns {
            let map =
                aya::maps::Map::LruHashMap(MapData::from_id(inflight_id).context("opening INFLIGHT again")?);
            let mut inflight: HashMap<MapData, u64, Inflight> = HashMap::try_from(map)?;
            let nested = |inflight: &HashMap<MapData, u64, Inflight>| -> Vec<u64> {
                let of_pid = |(k, v): &(u64, Inflight)| (k >> 32) as u32 == pid && v.depth > 0;
                inflight.iter().flatten().filter(of_pid).map(|(k, _)| k).collect()
            };
            let mut stuck = nested(&inflight);
            for _ in 1..STUCK_SAMPLES {
                std::thread::sleep(STUCK_WATCH / STUCK_SAMPLES);
                let now = nested(&inflight);
                stuck.retain(|k| now.contains(k));
            }
            for k in stuck {
                let _ = inflight.remove(&k);
            }
        }
        Ok(())
    }
}

/// How many times, and over how long, [`Detachable::detach`] looks at the in-flight records.
const STUCK_SAMPLES: u32 = 10;
const STUCK_WATCH: std::time::Duration = std::time::Duration::from_millis(100);

impl Tables {
    /// Per-stack counters of one process, summed over CPUs.
    pub fn stack_stats(&self, pid: u32) -> Vec<(u64, StackCounters)> {
        let mut out = Vec::new();
        for key in self.stats.keys().flatten() {
            if key.tgid != pid {
                continue;
            }
            let Ok(per_cpu) = self.stats.get(&key, 0) else { continue };
            let mut sum = StackCounters::default();
            for c in per_cpu.iter() {
                sum.add(c);
            }
            out.push((key.stack_id, sum));
        }
        out
    }

    /// Outstanding blocks of one process: (stack id, size, allocation time in ns).
    /// The process's outstanding blocks: (stack id, bytes, time, count weight).
    ///
    /// Read while the process runs and frees: with the kernel's batch lookup, which walks the
    /// hash table bucket by bucket and so yields each entry at most once. Key-by-key
    /// iteration restarts from the first bucket whenever the key it stands on was deleted
    /// meanwhile, yielding blocks again (their bytes counted twice); it is only the fallback
    /// (kernels without batch operations), deduplicated by address.
    pub fn live_blocks(&self, pid: u32) -> Vec<(u64, u64, u64, u64)> {
        use aya::maps::IterableMap;
        let entries = lookup_batch::<AllocKey, AllocInfo>(self.live.map().fd().as_fd()).unwrap_or_else(|e| {
            tracing::debug!("batch lookup of {MAP_LIVE_ALLOCS}: {e}; reading it key by key");
            let unique: StdHashMap<AllocKey, AllocInfo> = self.live.iter().flatten().collect();
            unique.into_iter().collect()
        });
        entries
            .into_iter()
            .filter(|(k, _)| k.tgid == pid)
            .map(|(_, v)| (v.stack_id, v.size, v.timestamp_ns, v.count_weight))
            .collect()
    }

    pub fn stack(&self, stack_id: u64) -> Option<StackTrace> {
        self.stacks.get(&stack_id, 0).ok()
    }

    pub fn stack_ids(&self) -> Vec<u64> {
        self.stacks.keys().flatten().collect()
    }

    /// Deletes stacks of `pid` from `STACK_STATS` and `STACKS`, so that their room serves
    /// new stacks (see `session::Reclaimer`). Returns the ids whose counters were deleted.
    pub fn reclaim(&self, pid: u32, ids: &[u64]) -> Vec<u64> {
        let mut maps = self.reclaim.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (stacks, stats) = &mut *maps;
        let mut deleted = Vec::new();
        for &stack_id in ids {
            if stats.remove(&StackKey { tgid: pid, _pad: 0, stack_id }).is_ok() {
                deleted.push(stack_id);
            }
            let _ = stacks.remove(&stack_id);
        }
        deleted
    }

    /// One health counter, summed over CPUs.
    pub fn counter(&self, c: Counter) -> u64 {
        self.counters.get(&(c as u32), 0).map(|v| v.iter().fold(0u64, |a, b| a.wrapping_add(*b))).unwrap_or(0)
    }

    /// Health counters summed over CPUs.
    pub fn counters(&self) -> Vec<(Counter, u64)> {
        Counter::ALL.iter().map(|&c| (c, self.counter(c))).collect()
    }
}

/// Decodes one ring buffer record.
pub fn parse_new_stack(bytes: &[u8]) -> Option<NewStack> {
    if bytes.len() < std::mem::size_of::<NewStack>() {
        return None;
    }
    // SAFETY: NewStack is plain data and the length was checked; read_unaligned copes with
    // the ring buffer's 8-byte alignment guarantee either way.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<NewStack>()) })
}

/// The ring buffer's fd, for poll(2).
pub fn ring_fd(ring: &RingBuf<MapData>) -> i32 {
    ring.as_raw_fd()
}

/// Every entry of a (non-per-CPU) hash map, with `BPF_MAP_LOOKUP_BATCH` (aya has no batch
/// operations): the kernel hands out whole buckets, resuming from the bucket it returns as a
/// token, so entries deleted or added meanwhile never make it yield an entry twice.
fn lookup_batch<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> std::io::Result<Vec<(K, V)>> {
    /// `union bpf_attr`'s `batch` member (linux/bpf.h); the kernel zero-fills the rest.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut chunk = 4096usize;
    let mut out = Vec::new();
    // The bucket to resume from (the kernel's token is a u32 for hash maps; 8 bytes of room).
    let (mut token, mut next) = (0u64, 0u64);
    let mut first = true;
    let (mut keys, mut values): (Vec<K>, Vec<V>) = (Vec::new(), Vec::new());
    loop {
        // The buffers serve every call, grown only when a bucket needs more room.
        // SAFETY (both): K and V are Pod (plain integers): all-zero values are valid.
        keys.resize(chunk, unsafe { std::mem::zeroed() });
        values.resize(chunk, unsafe { std::mem::zeroed() });
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the attr and every buffer it points to outlive the call; the kernel writes
        // at most `count` keys and values, and the token, into them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(chunk);
        match err.as_ref().and_then(|e| e.raw_os_error()) {
            // A bucket holds more entries than the buffer: again, with more room.
            Some(libc::ENOSPC) if n == 0 && chunk < 1 << 22 => {
                chunk *= 2;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            _ => return Err(err.unwrap_or_else(|| std::io::Error::other("batch lookup failed"))),
        }
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        if err.is_some() {
            return Ok(out); // ENOENT: that was the last bucket
        }
        token = next;
        first = false;
    }
}

/// The links to make for `sites`, in attach order: (program, [(file offset, cookie,
/// function)]), the entry program at the planned instruction with its cookie, the return
/// program at the function's first instruction.
///
/// Return programs come first. An entry program live before its return program would make
/// the calls that hit it in between deepen their thread's record with no return to undo it:
/// every later call on that thread would look nested and go unrecorded, uncounted. The other
/// way round, such a call's return finds no record and is counted as unmatched. (Entry and
/// return share the function's first instruction, so each hit sees both programs or only
/// the return one.)
fn group_by_program(sites: &[ProbeSite], empty_programs: bool) -> Vec<(&'static str, Vec<Point<'_>>)> {
    let mut by_program: Vec<(&'static str, Vec<Point<'_>>)> = Vec::new();
    for site in sites {
        let f = site.function.as_str();
        let (entry, exit) = if empty_programs {
            (PROG_EMPTY_ENTER, PROG_EMPTY_EXIT)
        } else {
            (site.kind.entry_program(), PROG_ALLOC_EXIT)
        };
        let mut points = vec![(entry, (site.entry_offset, Some(site.cookie), f))];
        if site.kind.has_return_probe() {
            points.push((exit, (site.file_offset, None, f)));
        }
        for (name, point) in points {
            match by_program.iter_mut().find(|(n, _)| *n == name) {
                Some((_, offsets)) => offsets.push(point),
                None => by_program.push((name, vec![point])),
            }
        }
    }
    by_program.sort_by_key(|&(name, _)| name != exit_program(empty_programs));
    by_program
}

/// The return program of every allocating site.
fn exit_program(empty_programs: bool) -> &'static str {
    if empty_programs { PROG_EMPTY_EXIT } else { PROG_ALLOC_EXIT }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    let prog =
        ebpf.program_mut(name).ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    Ok(prog.try_into()?)
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Turns EPERM from the kernel into the capability remedy.
fn permission_hint(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") || text.contains("os error 1)") {
        return anyhow::Error::new(ProbeError::MissingCapability).context(text);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process's outstanding blocks, read while another thread deletes and adds blocks
    /// (as the traced process frees and allocates): each block comes out once. Key-by-key
    /// iteration restarts whenever the key it stands on is deleted, and yields blocks again.
    /// Loads the kernel object: needs CAP_SYS_ADMIN, like every test that traces.
    #[test]
    fn live_blocks_yields_each_block_once_while_the_map_changes() {
        use std::sync::atomic::{AtomicBool, Ordering};
        assert!(has_sys_admin(), "this test loads eBPF maps: run it as root (cargo xtask test does)");
        let opts = LoadOptions { max_live_allocs: 1 << 16, ..LoadOptions::default() };
        let (_probes, mut tables, _ring) = Probes::load(opts).expect("loading the kernel object");
        let pid = 4242;
        let block = move |addr: u64| {
            // The stack id is the address, so the test can tell blocks apart.
            (
                AllocKey { tgid: pid, _pad: 0, addr },
                AllocInfo { size: 16, stack_id: addr, timestamp_ns: 1, count_weight: 1 },
            )
        };
        // Blocks that stay, and blocks that come and go while the map is read.
        const STAYING: u64 = 4_096;
        for addr in 0..STAYING {
            let (k, v) = block(addr);
            tables.live.insert(&k, &v, 0).unwrap();
        }
        use aya::maps::IterableMap;
        let id = tables.live.map().info().unwrap().id();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut live: HashMap<MapData, AllocKey, AllocInfo> =
                    HashMap::try_from(aya::maps::Map::HashMap(MapData::from_id(id).unwrap())).unwrap();
                // Short-lived blocks, as in a process that allocates and frees all the time:
                // a reader that stands on one when it goes restarts from the first bucket.
                let mut addr = 1u64 << 32;
                while !stop.load(Ordering::Relaxed) {
                    let (k, v) = block(addr);
                    live.insert(&k, &v, 0).unwrap();
                    let _ = live.remove(&block(addr - 1).0);
                    addr += 1;
                }
            })
        };
        for _ in 0..20 {
            let blocks = tables.live_blocks(pid);
            let mut seen = std::collections::HashSet::new();
            for (addr, ..) in &blocks {
                assert!(seen.insert(*addr), "block {addr:#x} came out twice ({} blocks read)", blocks.len());
            }
            let staying = (0..STAYING).filter(|a| seen.contains(a)).count() as u64;
            assert_eq!(staying, STAYING, "blocks that stayed all along are missing");
        }
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
    }

    fn site(function: &str, kind: AllocFn, offset: u64) -> ProbeSite {
        ProbeSite { function: function.into(), kind, file_offset: offset, entry_offset: offset, cookie: 0 }
    }

    #[test]
    fn return_programs_are_attached_before_entry_programs() {
        let sites = [
            site("_PyObject_Malloc", AllocFn::Malloc, 0x100),
            site("_PyObject_Free", AllocFn::Free, 0x200),
            site("_PyObject_Realloc", AllocFn::Realloc, 0x300),
        ];
        for empty in [false, true] {
            let groups = group_by_program(&sites, empty);
            let names: Vec<&str> = groups.iter().map(|(n, _)| *n).collect();
            assert_eq!(names[0], exit_program(empty), "{names:?}");
            assert_eq!(names.iter().filter(|n| **n == exit_program(empty)).count(), 1, "{names:?}");
            // The return program covers every allocating function at its first instruction.
            let returns: Vec<u64> = groups[0].1.iter().map(|p| p.0).collect();
            assert_eq!(returns, [0x100, 0x300]);
            let all: usize = groups.iter().map(|(_, p)| p.len()).sum();
            assert_eq!(all, 5, "three entries and two returns: {groups:?}");
        }
    }
}
