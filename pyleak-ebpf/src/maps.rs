//! The kernel side's maps and loader-set globals. Names and value types come from
//! `pyleak-common`, so the user side looks them up by the same constants.
use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use pyleak_common::{
    AllocInfo, AllocKey, CODE_CACHE_SLOTS, Counter, DEFAULT_MAX_DEPTH, DEFAULT_MAX_LIVE_ALLOCS,
    DEFAULT_MAX_STACKS, EXEC_EVENTS_RING_BYTES, Inflight, MAX_INFLIGHT, NEW_STACKS_RING_BYTES, PyTarget,
    StackCounters, StackKey, StackTrace, sampling,
};

use crate::walk::Span;

/// Outstanding allocations, keyed by (tgid, address). Preallocated (112 bytes per entry,
/// reserved at load; the loader sizes it from the config): an allocating map frees its
/// entries through an RCU-tasks-trace grace period, and measured on pyperformance float a
/// free's program took 766 ns that way against 394 ns preallocated.
#[map]
pub static LIVE_ALLOCS: HashMap<AllocKey, AllocInfo> = HashMap::with_max_entries(DEFAULT_MAX_LIVE_ALLOCS, 0);

/// Interned stacks: stack id (a hash of tgid and frames) -> frames.
#[map]
pub static STACKS: HashMap<u64, StackTrace> =
    HashMap::with_max_entries(DEFAULT_MAX_STACKS, BPF_F_NO_PREALLOC);

/// Per-CPU bytes/counts per (tgid, stack): the user side sums CPUs, so no atomics needed.
#[map]
pub static STACK_STATS: PerCpuHashMap<StackKey, StackCounters> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_STACKS, BPF_F_NO_PREALLOC);

/// Per-thread allocator-call records, by pid_tgid. A thread's record stays once made (depth 0
/// between calls), so a call costs two lookups instead of an insert, a lookup and a delete;
/// LRU, so records of threads that ended make room for new ones by themselves.
#[map]
pub static INFLIGHT: LruHashMap<u64, Inflight> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);

/// The traced process and where its Python state lives: one slot, an array lookup the JIT
/// inlines, instead of a hash lookup per probe hit.
#[map]
pub static TARGETS: Array<PyTarget> = Array::with_max_entries(1, 0);

/// The calling process's target, if this object traces it (`None`: tgid 0, i.e. not yet
/// registered or already released, or another process).
#[inline(always)]
pub fn target(tgid: u32) -> Option<&'static PyTarget> {
    TARGETS.get(0).filter(|t| t.tgid == tgid && tgid != 0)
}

/// Health counters, indexed by `Counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Stack ids seen for the first time, so the user side symbolizes them while the code objects
/// are alive.
#[map]
pub static NEW_STACKS: RingBuf = RingBuf::with_byte_size(NEW_STACKS_RING_BYTES, 0);

/// Processes that called execve, for the daemon's dynamic targets (only the daemon loads the
/// program that fills it).
#[map]
pub static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(EXEC_EVENTS_RING_BYTES, 0);

/// Bytes of target memory a stack walk copies at once (see `walk::Span`): a frame's window
/// and the rest of its page below it, where a page holds about 10–20 typical 3.11+ frames.
pub const SPAN_BYTES: usize = 4096 + pyleak_common::FRAME_WINDOW;
pub const SPAN_WORDS: usize = SPAN_BYTES / 8;

/// `co_firstlineno` by code object (see `pyleak_common::CODE_CACHE_SLOTS`). Shared by all
/// CPUs: entries are single u64 loads and stores.
#[map]
pub static CODE_CACHE: Array<u64> = Array::with_max_entries(CODE_CACHE_SLOTS, 0);

/// The per-CPU buffers of `walk::Span`: one for the data stack, one for the C stack.
#[map]
pub static FRAME_SPAN: PerCpuArray<Span> = PerCpuArray::with_max_entries(2, 0);
/// [`FRAME_SPAN`]'s slot for data-stack frames (copied downwards from a frame).
pub const SPAN_DATA: u32 = 0;
/// [`FRAME_SPAN`]'s slot for C-stack entry shims (copied upwards from a shim).
pub const SPAN_CSTACK: u32 = 1;

/// Room to build one `StackTrace` per CPU (it is larger than the 512-byte BPF stack).
#[map]
pub static SCRATCH: PerCpuArray<StackTrace> = PerCpuArray::with_max_entries(1, 0);

/// Sampling probabilities (see `pyleak_common::sampling`), filled by the loader when sampling.
#[map]
pub static SAMPLE_TABLE: Array<u32> = Array::with_max_entries(sampling::TABLE_LEN, 0);

/// Sampled mode's filter in front of `LIVE_ALLOCS`: per slot of [`sampled_slot`], how many
/// recorded blocks hash there (a counting Bloom filter with one hash). With sampling, most
/// frees are of blocks never recorded; a zero here answers them with one array load instead
/// of a hash-map miss (measured on pyperformance float: `free_enter` 265 -> 120 ns per hit). A slot
/// is raised before its block enters `LIVE_ALLOCS` and lowered only after the kernel removed
/// it, so a recorded block's slot is never zero: no free of a recorded block is skipped.
/// Unused (all zero) in exact mode, where every block is recorded.
#[map]
pub static SAMPLED_FILTER: Array<u64> = Array::with_max_entries(SAMPLED_FILTER_SLOTS, 0);
pub const SAMPLED_FILTER_SLOTS: u32 = 1 << 16;

/// A block's slot in [`SAMPLED_FILTER`] (blocks are 16-byte aligned: the low bits carry
/// nothing), or `None` in exact mode.
#[inline(always)]
pub fn sampled_slot(addr: u64) -> Option<*mut u64> {
    if SAMPLE_BYTES.load() == 0 {
        return None;
    }
    let slot = ((addr >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u32 & (SAMPLED_FILTER_SLOTS - 1);
    SAMPLED_FILTER.get_ptr_mut(slot)
}

/// Lowers a block's [`SAMPLED_FILTER`] slot (from [`sampled_slot`]) once the block has left
/// `LIVE_ALLOCS` or never entered it; nothing in exact mode (`None`).
#[inline(always)]
pub fn sampled_lower(slot: Option<*mut u64>) {
    if let Some(f) = slot {
        sampled_add(f, u64::MAX);
    }
}

/// Adds `delta` (wrapping: `u64::MAX` is -1) to a [`SAMPLED_FILTER`] slot, atomically: CPUs
/// share it.
#[inline(always)]
pub fn sampled_add(slot: *mut u64, delta: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: `slot` is a valid, 8-aligned map value; the add is one BPF atomic instruction.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, delta) };
}

/// Mean sampling interval in bytes (`--sample-bytes`); 0: every allocation is recorded.
#[unsafe(no_mangle)]
pub static SAMPLE_BYTES: Global<u64> = Global::new(0);

/// Python frames to capture per allocation (set by the loader; clamped to MAX_FRAMES).
#[unsafe(no_mangle)]
pub static MAX_DEPTH: Global<u32> = Global::new(DEFAULT_MAX_DEPTH);

/// 1 in the exec watcher's object: its tracepoint announces every exec (see `exec::on_exec`).
#[unsafe(no_mangle)]
pub static ANNOUNCE_EXECS: Global<u32> = Global::new(0);

/// Offset of `task_struct.thread.fsbase` in the running kernel (set by the loader from BTF;
/// 0 means unknown, and then no thread-pointer-based read is attempted).
#[unsafe(no_mangle)]
pub static FSBASE_OFFSET: Global<u32> = Global::new(0);

/// The code-cache slot of a code object's address.
#[inline(always)]
pub fn code_slot(code: u64) -> u32 {
    ((code >> 4) ^ (code >> 16)) as u32 & (CODE_CACHE_SLOTS - 1)
}

/// Adds one to a health counter. Per-CPU, so a plain increment is enough.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from the map and is valid for this CPU.
        unsafe { *slot += 1 };
    }
}
