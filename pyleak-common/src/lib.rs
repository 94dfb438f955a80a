//! Types shared by the kernel programs (`pyleak-ebpf`) and the user side (`pyleak-daemon`).
//!
//! Everything here is `#[repr(C)]` and plain data: the two sides exchange it through BPF maps,
//! so a layout change must touch both sides in the same commit. Map and program names are
//! defined once, here, so the loader and the kernel object cannot drift apart.
#![no_std]

pub mod sampling;

/// Hard upper bound on Python frames captured per allocation (the kernel loop bound).
/// The effective depth is the loader-set global [`GLOBAL_MAX_DEPTH`], at most this.
pub const MAX_FRAMES: usize = 128;
/// Bytes of a frame the kernel reads at once: every frame field it needs (back link, code,
/// position, owner) lies in the frame's first `FRAME_WINDOW` bytes in every supported
/// version; the user side refuses a layout where one would not.
pub const FRAME_WINDOW: usize = 128;
/// Slots of the kernel's code-object cache: a code object's fingerprint
/// ([`code_fingerprint`]) by its address, direct-mapped, so a stack walk reads a code object
/// once instead of at every allocation. An entry is one u64,
/// `(code >> 4) << CODE_FINGERPRINT_BITS | fingerprint` (code objects are 16-byte aligned),
/// read and written whole.
pub const CODE_CACHE_SLOTS: u32 = 4096;
/// Bits of a code object's fingerprint (and of a code-cache entry holding it).
pub const CODE_FINGERPRINT_BITS: u32 = 21;

/// What tells a code object from another that took its freed address: its first line
/// (`co_firstlineno`), the addresses of its file name (`co_filename`) and line table
/// (`co_linetable`, `co_lnotab` before 3.10), and the file name's length and last 8 bytes
/// ([`FilenameTail`]), hashed to [`CODE_FINGERPRINT_BITS`] bits. The first line alone
/// cannot: every module body starts on line 1, and a module's body code is freed right after
/// its import. Nor can addresses alone: a module compiled like the one before it allocates
/// its file name and line table the same way, and they take the old ones' addresses too.
/// The kernel computes it when it first meets a code object, the user side from what it
/// reads, and a frame is named only when the two agree.
pub const fn code_fingerprint(first_line: u32, filename: u64, linetable: u64, tail: FilenameTail) -> u32 {
    let mut h =
        (filename ^ linetable.rotate_left(32) ^ first_line as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = (h ^ tail.length ^ tail.last_bytes.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (64 - CODE_FINGERPRINT_BITS)) as u32
}

/// Part of a [`code_fingerprint`]: a file name's length (`PyASCIIObject.length`, at offset
/// 16) and, if it has 8 characters or more, the 8 bytes that end its characters read as a
/// compact ASCII string's (at [`PyTarget::str_ascii_data`]; for other strings, whatever
/// bytes lie there: the kernel and the user side read the same ones), else 0.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FilenameTail {
    pub length: u64,
    pub last_bytes: u64,
}

/// Where [`FilenameTail::last_bytes`] is read for a string of `length` characters at `str`,
/// or `None` (shorter than 8, or too long to be a file name read whole).
pub const fn filename_tail_at(str: u64, ascii_data: u64, length: u64) -> Option<u64> {
    if length < 8 || length > 4096 {
        return None;
    }
    Some(str.wrapping_add(ascii_data).wrapping_add(length - 8))
}
/// Default capture depth when the user does not choose one.
pub const DEFAULT_MAX_DEPTH: u32 = 64;

/// Default capacity of [`MAP_LIVE_ALLOCS`] (outstanding allocations of a traced process;
/// 112 bytes of kernel memory each, reserved at attach).
pub const DEFAULT_MAX_LIVE_ALLOCS: u32 = 1 << 20;
/// Largest capacity pyleak gives [`MAP_LIVE_ALLOCS`]: 67,108,864 entries, 7 GiB of kernel
/// memory reserved per traced process. Beyond it the kernel refuses the map (its bucket
/// array outgrows what it allows) or the host runs out of memory.
pub const MAX_LIVE_ALLOCS: u32 = 1 << 26;
/// Largest capacity pyleak gives [`MAP_STACKS`]: 4,194,304 stacks, up to 8 GiB of kernel
/// memory when full.
pub const MAX_STACKS: u32 = 1 << 22;
/// Default capacity of [`MAP_STACKS`] (distinct interned stacks).
/// Each entry is about 2 KiB of kernel memory once used (not preallocated). Import-heavy
/// start-ups alone can make over 16K distinct stacks.
pub const DEFAULT_MAX_STACKS: u32 = 32 * 1024;
/// Capacity of [`MAP_INFLIGHT`]: threads inside an allocator call at the same moment.
pub const MAX_INFLIGHT: u32 = 16 * 1024;
/// Processes traced at once (each gets its own kernel object, with one [`MAP_TARGETS`] slot).
pub const MAX_TARGETS: u32 = 1024;
/// Size in bytes of the [`MAP_NEW_STACKS`] ring buffer (must be a power of two page multiple).
pub const NEW_STACKS_RING_BYTES: u32 = 1024 * 1024;

// --- names of maps, programs and globals (one definition for both sides) ---

/// `AllocKey -> AllocInfo`: every allocation made by a target and not yet freed.
pub const MAP_LIVE_ALLOCS: &str = "LIVE_ALLOCS";
/// `u64 stack id -> StackTrace`: interned Python stacks.
pub const MAP_STACKS: &str = "STACKS";
/// Per-CPU `StackKey -> StackCounters`: bytes and counts allocated/freed per (pid, stack).
pub const MAP_STACK_STATS: &str = "STACK_STATS";
/// `u64 pid_tgid -> Inflight`: allocator calls between entry and return, per thread.
pub const MAP_INFLIGHT: &str = "INFLIGHT";
/// `u32 tgid -> PyTarget`: where to find each traced process's Python state.
pub const MAP_TARGETS: &str = "TARGETS";
/// Per-CPU array of `u64` counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Ring buffer of [`NewStack`] records: tells the user side to symbolize a stack right away,
/// while the code objects it names are still alive.
pub const MAP_NEW_STACKS: &str = "NEW_STACKS";
/// Per-CPU scratch space for building a [`StackTrace`] (too large for the BPF stack).
pub const MAP_SCRATCH: &str = "SCRATCH";
/// Ring buffer of [`ExecEvent`] records: processes that just called execve (the daemon
/// matches them against its targets).
pub const MAP_EXEC_EVENTS: &str = "EXEC_EVENTS";
/// Size in bytes of the [`MAP_EXEC_EVENTS`] ring buffer.
pub const EXEC_EVENTS_RING_BYTES: u32 = 64 * 1024;
/// Tracepoint program on `sched/sched_process_exec`.
pub const PROG_SCHED_PROCESS_EXEC: &str = "sched_process_exec";

/// `u32` array of [`sampling::TABLE_LEN`] probabilities, filled by the loader when sampling.
pub const MAP_SAMPLE_TABLE: &str = "SAMPLE_TABLE";
/// Loader-set global (u64): the mean sampling interval R in bytes; 0 records every allocation.
pub const GLOBAL_SAMPLE_BYTES: &str = "SAMPLE_BYTES";

/// Loader-set global: Python frames to capture per allocation (1..=MAX_FRAMES).
pub const GLOBAL_MAX_DEPTH: &str = "MAX_DEPTH";
/// Loader-set global: byte offset of `task_struct.thread.fsbase` in the running kernel
/// (from BTF), used to find the calling thread's TLS block and `pthread_self()`.
pub const GLOBAL_FSBASE_OFFSET: &str = "FSBASE_OFFSET";
/// Loader-set global: 1 in the exec watcher's object, whose tracepoint announces every exec
/// on the host in [`MAP_EXEC_EVENTS`]; 0 in a traced process's object, whose tracepoint only
/// stops the counting of its own process (see [`PyTarget::finalizing`]).
pub const GLOBAL_ANNOUNCE_EXECS: &str = "ANNOUNCE_EXECS";

/// Entry program for `malloc`-like functions: `void *f(size_t size)`.
pub const PROG_MALLOC_ENTER: &str = "malloc_enter";
/// Entry program for `calloc`-like functions: `void *f(size_t nelem, size_t elsize)`.
pub const PROG_CALLOC_ENTER: &str = "calloc_enter";
/// Entry program for `realloc`-like functions: `void *f(void *ptr, size_t size)`.
pub const PROG_REALLOC_ENTER: &str = "realloc_enter";
/// Entry program for `posix_memalign(void **memptr, size_t align, size_t size)`.
pub const PROG_POSIX_MEMALIGN_ENTER: &str = "posix_memalign_enter";
/// Entry program for `aligned_alloc`/`memalign(size_t align, size_t size)`.
pub const PROG_ALIGNED_ALLOC_ENTER: &str = "aligned_alloc_enter";
/// Return program shared by all allocating functions: pairs the result with the entry.
pub const PROG_ALLOC_EXIT: &str = "alloc_exit";
/// Entry program for `free`-like functions: `void f(void *ptr)`.
pub const PROG_FREE_ENTER: &str = "free_enter";
/// Entry program that does nothing, at the same sites (`--empty-programs`: the cost floor).
pub const PROG_EMPTY_ENTER: &str = "empty_enter";
/// Return program that does nothing (`--empty-programs`).
pub const PROG_EMPTY_EXIT: &str = "empty_exit";
/// Entry program for `Py_FinalizeEx`: freezes the process's numbers (see `PyTarget::finalizing`).
pub const PROG_FINALIZE_ENTER: &str = "finalize_enter";

/// Key of [`MAP_LIVE_ALLOCS`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    /// Address returned by the allocator, in the target's address space.
    pub addr: u64,
}

/// Value of [`MAP_LIVE_ALLOCS`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct AllocInfo {
    /// Requested size in bytes (for calloc: nelem * elsize).
    pub size: u64,
    /// Interned stack id (key of [`MAP_STACKS`]).
    pub stack_id: u64,
    /// `bpf_ktime_get_ns()` at allocation (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Allocations this block stands for: 1 in exact mode; with sampling, `COUNT_ONE / p` in
    /// units of [`sampling::COUNT_ONE`] (and `size` is then the estimated bytes, `s / p`).
    pub count_weight: u64,
}

/// Key of [`MAP_STACK_STATS`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct StackKey {
    pub tgid: u32,
    pub _pad: u32,
    pub stack_id: u64,
}

/// Value of [`MAP_STACK_STATS`] (one per CPU; the user side sums them). A free is counted on
/// the CPU where it happens, so one CPU's `freed_bytes` may exceed its `allocated_bytes`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct StackCounters {
    pub allocated_bytes: u64,
    pub allocations: u64,
    pub freed_bytes: u64,
    pub frees: u64,
}

impl StackCounters {
    /// Adds `other` field by field, wrapping (sums over CPUs, over reclaimed stacks).
    pub fn add(&mut self, other: &StackCounters) {
        self.allocated_bytes = self.allocated_bytes.wrapping_add(other.allocated_bytes);
        self.allocations = self.allocations.wrapping_add(other.allocations);
        self.freed_bytes = self.freed_bytes.wrapping_add(other.freed_bytes);
        self.frees = self.frees.wrapping_add(other.frees);
    }
}

/// `StackTrace::flags`: the walk stopped at the depth limit; outer frames are missing.
pub const STACK_TRUNCATED: u32 = 1;
/// `StackTrace::flags`: a frame could not be read; the frames before it are valid.
pub const STACK_READ_ERROR: u32 = 2;
/// `StackTrace::flags`: the allocating thread had no Python thread state (a native thread, or
/// one that released the GIL); the stack is empty.
pub const STACK_NO_PYTHON: u32 = 4;

/// Value of [`MAP_STACKS`]: the Python frames at an allocation, innermost first.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct StackTrace {
    pub tgid: u32,
    /// Number of valid entries in `code` / `instr`.
    pub len: u32,
    /// `STACK_*` flags.
    pub flags: u32,
    pub _pad: u32,
    /// For a direct C-library allocation (ctypes, a C extension calling malloc): the
    /// return address into the native code that called it, the report's extra leaf frame;
    /// 0 for allocations through the Python allocators. Part of the stack id.
    pub native_caller: u64,
    /// Address of each frame's code object (`PyCodeObject *`) in the target.
    pub code: [u64; MAX_FRAMES],
    /// Each frame's position in its bytecode, as [`PyTarget::instr_kind`] says: the raw
    /// `f_lasti` (3.8–3.10), or the byte distance from the code object's address to the
    /// frame's instruction pointer (3.11+; the user side subtracts `co_code_adaptive`).
    pub instr: [u32; MAX_FRAMES],
    /// Each frame's code object's [`code_fingerprint`] as read at capture time. Code objects
    /// are freed and their addresses reused (module bodies right after import); the user side
    /// names a frame only if the code object it finds has this fingerprint, and the stack id
    /// covers it, so two different code objects at one address do not share a stack.
    pub fingerprint: [u32; MAX_FRAMES],
}

/// Record in [`MAP_NEW_STACKS`].
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct NewStack {
    pub tgid: u32,
    pub _pad: u32,
    pub stack_id: u64,
}

/// What an in-flight allocator call is.
pub const CALL_MALLOC: u32 = 1;
pub const CALL_REALLOC: u32 = 2;
/// `int posix_memalign(void **memptr, size_t align, size_t size)`: the block is written to
/// `*memptr` (kept in `Inflight::old_ptr`) and the result is an error number.
pub const CALL_POSIX_MEMALIGN: u32 = 3;

/// Record in [`MAP_EXEC_EVENTS`]: the process `tgid` has just replaced its program.
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct ExecEvent {
    pub tgid: u32,
    pub _pad: u32,
}

/// Value of [`MAP_INFLIGHT`].
#[derive(Copy, Clone, Debug, Default)]
#[repr(C)]
pub struct Inflight {
    /// Requested size (calloc: product; saturated to u64::MAX on overflow).
    pub size: u64,
    /// realloc's input pointer, posix_memalign's `memptr` (0 for other calls).
    pub old_ptr: u64,
    /// Nesting depth: allocators call each other (PyObject_Malloc -> PyMem_RawMalloc ->
    /// malloc); only the outermost call is recorded, so a block is counted once.
    pub depth: u32,
    /// `CALL_*` of the outermost call.
    pub kind: u32,
    /// 1 when the outermost call entered the C library directly (not from inside a probed
    /// Python allocator): its return address names the native code that asked for memory.
    pub native: u32,
    pub _pad: u32,
}

/// `PyTarget::tstate_kind`: no running-thread-state source is known (a stripped 3.12+ build
/// without the `_Py_tss_tstate` symbol); only the pthread-key fallback is used.
pub const TSTATE_KEY_ONLY: u32 = 0;
/// `PyTarget::tstate_kind`: `tstate = *(PyThreadState **)tstate_addr`
/// (3.8–3.11 `_PyRuntime.gilstate.tstate_current`).
pub const TSTATE_GLOBAL: u32 = 1;
/// `tstate = *(dtv[modid].pointer + tls_offset)` with `dtv = *(fsbase + 8)` and
/// `modid = *(u64 *)tls_module_id_addr` (3.12+ `_Py_tss_tstate` in a shared libpython).
pub const TSTATE_TLS_DYNAMIC: u32 = 2;
/// `tstate = *(fsbase + tls_offset)` (3.12+ `_Py_tss_tstate` in the executable; negative
/// offset, x86_64 variant II TLS).
pub const TSTATE_TLS_STATIC: u32 = 3;

/// `PyTarget::instr_kind`: the frame holds an `int` (f_lasti).
pub const INSTR_I32: u32 = 1;
/// `PyTarget::instr_kind`: the frame holds a pointer into the code object's bytecode.
pub const INSTR_PTR: u32 = 2;

/// Offset value meaning "this field does not exist in this version".
pub const ABSENT: i32 = -1;

// --- where an entry program finds its values (the attach cookie) ---
//
// An entry probe planned past a function's first instruction (see the daemon's `planner`), or
// placed on an allocator-table implementation (`_PyObject_Malloc(void *ctx, size_t n)`: the
// size is in %rsi, not %rdi), finds its values in other registers than the C ABI's argument
// registers. The attach cookie of each probe says where: byte `i` is 1 + the `struct pt_regs`
// word index of the register holding value `i` (values in the program's order, e.g. realloc:
// pointer, size), or 0 for "the value's C ABI argument register" (a probe on the first
// instruction of a public function: cookie 0 is the unplanned default).

/// Words in x86_64's `struct pt_regs` (r15 .. ss).
pub const PT_REGS_WORDS: u32 = 21;
/// `struct pt_regs` word indices of the general-purpose registers (arch/x86/include/asm/ptrace.h).
pub const PT_R15: u8 = 0;
pub const PT_R14: u8 = 1;
pub const PT_R13: u8 = 2;
pub const PT_R12: u8 = 3;
pub const PT_RBP: u8 = 4;
pub const PT_RBX: u8 = 5;
pub const PT_R11: u8 = 6;
pub const PT_R10: u8 = 7;
pub const PT_R9: u8 = 8;
pub const PT_R8: u8 = 9;
pub const PT_RAX: u8 = 10;
pub const PT_RCX: u8 = 11;
pub const PT_RDX: u8 = 12;
pub const PT_RSI: u8 = 13;
pub const PT_RDI: u8 = 14;
/// Values an entry program reads at most (calloc, realloc, posix_memalign: two).
pub const MAX_ENTRY_VALUES: usize = 2;

/// The attach cookie saying that value `i` is in the register of `struct pt_regs` word
/// `words[i]`.
pub const fn entry_cookie(words: [u8; MAX_ENTRY_VALUES]) -> u64 {
    (words[0] as u64 + 1) | ((words[1] as u64 + 1) << 8)
}

/// The `struct pt_regs` word of value `i` named by `cookie`, or `None` for the value's C ABI
/// argument register.
#[inline(always)]
pub const fn cookie_word(cookie: u64, i: u32) -> Option<u32> {
    let byte = ((cookie >> (8 * i)) & 0xff) as u32;
    if byte == 0 || byte > PT_REGS_WORDS { None } else { Some(byte - 1) }
}

/// [`PyTarget::finalizing`]: the interpreter entered its shutdown point.
pub const FROZEN_AT_FINALIZE: u32 = 1;
/// [`PyTarget::finalizing`]: the process replaced its program (execve).
pub const FROZEN_AT_EXEC: u32 = 2;

/// Where the kernel programs find one traced process's Python state: addresses already
/// relocated into the target's address space, and the struct offsets of its CPython version.
/// Built by the user side (`python::layout`), one per process, in [`MAP_TARGETS`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PyTarget {
    /// `TSTATE_*`.
    pub tstate_kind: u32,
    /// `INSTR_*`.
    pub instr_kind: u32,
    /// TSTATE_GLOBAL: address of the `PyThreadState *` to read.
    pub tstate_addr: u64,
    /// TSTATE_TLS_DYNAMIC: address of the GOT slot the dynamic linker fills with the module id.
    pub tls_module_id_addr: u64,
    /// TSTATE_TLS_*: offset of the variable in the module's TLS block (dynamic), or from the
    /// thread pointer (static).
    pub tls_offset: i64,
    /// Mask applied to a frame's code pointer (3.14 tags `f_executable`; else all ones).
    pub code_mask: u64,
    /// Address of `_PyRuntime.gilstate.autoTSSkey._key` (the pthread key under which every
    /// thread finds its own `PyThreadState`, GIL or not), or 0. Used when the primary source
    /// has no thread state for the caller: a thread that released the GIL around a C call
    /// (ctypes, numpy) still allocates on behalf of its Python line.
    pub tss_key_addr: u64,
    /// A code pointer that marks a frame as not Python code (3.13: `&_Py_NoneStruct` in C-stack
    /// entry frames), skipped like a shim; 0 when unused.
    pub skip_code: u64,
    /// 3.13+: `&_Py_InitCleanup`, the static code object of the frame that the specialized
    /// `CALL_ALLOC_AND_ENTER_INIT` pushes under every `__init__` it calls: not the user's
    /// code, skipped like a shim, so it costs no frame of the depth. 0 when unknown (its
    /// symbol is local: a stripped build has none, and the user side drops the frame).
    pub init_cleanup_code: u64,
    /// `PyThreadState.thread_id` (pthread_t, equals fsbase with glibc), checked against the
    /// calling thread so that a GIL holder's stack is never charged to another thread.
    pub tstate_thread_id: i32,
    /// Offset in `PyThreadState` of the frame pointer (`frame`, 3.8–3.10; `cframe`, 3.11–3.12;
    /// `current_frame`, 3.13+).
    pub tstate_frame: i32,
    /// Offset in `_PyCFrame` of `current_frame` (3.11–3.12), or [`ABSENT`].
    pub cframe_current_frame: i32,
    /// Offset of the caller link in a frame (`f_back` / `previous`).
    pub frame_back: i32,
    /// Offset of the code object pointer in a frame (`f_code` / `f_executable`).
    pub frame_code: i32,
    /// Offset of the position in a frame (`f_lasti` / `prev_instr` / `instr_ptr`).
    pub frame_instr: i32,
    /// Offset of the `owner` byte (3.12+), or [`ABSENT`].
    pub frame_owner: i32,
    /// Frames whose owner is at least this are C-stack shims, not Python code; skipped.
    pub owner_skip_min: u32,
    /// Offset of `co_firstlineno` in a code object.
    pub code_first_line: i32,
    /// Offset of `co_filename` in a code object (for its [`code_fingerprint`]).
    pub code_filename: i32,
    /// Offset of `co_linetable` (`co_lnotab` before 3.10) in a code object.
    pub code_linetable: i32,
    /// Offset of a compact ASCII string's characters (`sizeof(PyASCIIObject)`).
    pub str_ascii_data: i32,
    /// Offset of `specific_1stblock` in the C library's `struct pthread` (glibc 2.36: 0x310),
    /// for `pthread_getspecific` emulation; [`ABSENT`] disables the fallback.
    pub pthread_specific: i32,
    /// Set by the kernel side when counting stops for good: [`FROZEN_AT_FINALIZE`] when the
    /// interpreter enters `Py_FinalizeEx` (the report shows what the program left allocated
    /// when it finished, not what shutdown tore down), [`FROZEN_AT_EXEC`] when the process
    /// replaced its program (the probes may still fire in the new program when it maps the
    /// same files, but its addresses are not the ones registered here). From then on the
    /// process's allocations and frees are ignored. 0: counting.
    pub finalizing: u32,
    /// When set (only for a child started by `pyleak run`, which pyleak ptraces), entering
    /// `Py_FinalizeEx` also stops the calling thread with SIGSTOP, so the user side can name
    /// the last stacks while every function's code object is still alive.
    pub stop_at_finalize: u32,
    /// The C library's executable mapping `[native_lo, native_hi)` in the target: an
    /// outermost allocating call whose probe fires there is a native allocation, and its
    /// caller is recorded (see [`StackTrace::native_caller`]). Both 0: none recorded.
    pub native_lo: u64,
    pub native_hi: u64,
    /// The interpreter's executable mapping: a native allocation whose caller lies there
    /// was asked for by CPython itself (`PyMem_RawMalloc`, unprobed, calls `malloc`), so it
    /// belongs to the Python stack and gets no native caller. Both 0: no such check.
    pub interp_lo: u64,
    pub interp_hi: u64,
    /// The traced process. [`MAP_TARGETS`] has one slot (each traced process gets its own
    /// kernel object): a program that finds another tgid there ignores the call.
    pub tgid: u32,
    /// 1 when every free of a code object reaches a probe (`PyObject_Free` probed, allocator
    /// not inlined): then the walk may remember each code object's `co_firstlineno`, because
    /// the free probe forgets it before the address can be reused (see [`CODE_CACHE_SLOTS`]).
    pub code_cache: u32,
    /// TSTATE_TLS_DYNAMIC: 1 when libpython is one of the executable's DT_NEEDED libraries.
    /// glibc then places its TLS block in every thread's static TLS, at one fixed offset
    /// from the thread pointer, so the kernel side learns that offset from the first DTV
    /// walk and afterwards reads `fsbase + tls_static_off + tls_offset` directly.
    pub tls_static: u32,
    pub _pad: u32,
    /// The learnt `block - fsbase` (0: not yet known; a block never starts at the TCB).
    pub tls_static_off: i64,
}

impl PyTarget {
    /// Whether a frame whose code pointer (masked) is `code` is not Python code: no code, or
    /// one of the interpreter's own marker objects ([`PyTarget::skip_code`],
    /// [`PyTarget::init_cleanup_code`]). Such frames are stepped over like shims.
    #[inline(always)]
    pub fn skips_code(&self, code: u64) -> bool {
        code == 0 || code == self.skip_code || code == self.init_cleanup_code
    }
}

/// Indices into [`MAP_COUNTERS`]. Every failure the kernel side can meet is counted; the
/// user side exports them, so a loss is never silent.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    /// Allocating calls seen (outermost only).
    Allocs = 0,
    /// Freeing calls seen (any pointer).
    Frees,
    /// Frees of a block pyleak was tracking.
    FreesTracked,
    /// Allocations not recorded because [`MAP_LIVE_ALLOCS`] was full.
    LostLiveFull,
    /// Allocations not recorded because [`MAP_STACKS`] was full.
    LostStacksFull,
    /// Allocations not recorded because [`MAP_STACK_STATS`] was full.
    LostStatsFull,
    /// Calls not followed because [`MAP_INFLIGHT`] was full.
    LostInflightFull,
    /// Return probes that found no matching entry (a call in flight when probes attached).
    UnmatchedReturns,
    /// Reads of the thread state that failed.
    TstateReadErrors,
    /// Frame reads that failed (stack recorded up to that frame, flagged).
    FrameReadErrors,
    /// Stacks cut at the depth limit.
    StacksTruncated,
    /// Allocations from threads without a Python thread state.
    NoPythonStack,
    /// New-stack notifications dropped because the ring buffer was full.
    LostNewStackEvents,
    /// Allocator calls from a process with no [`MAP_TARGETS`] entry (probe fired early).
    NoTarget,
    /// Allocator calls ignored because the interpreter was finalizing.
    AfterFinalize,
    /// Failed calls (NULL result, or realloc failure that leaves the old block alive).
    FailedAllocs,
    /// Allocations the sampler passed over (`--sample-bytes`): neither walked nor recorded.
    Unsampled,
}

impl Counter {
    pub const COUNT: u32 = Counter::Unsampled as u32 + 1;
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Allocs,
        Counter::Frees,
        Counter::FreesTracked,
        Counter::LostLiveFull,
        Counter::LostStacksFull,
        Counter::LostStatsFull,
        Counter::LostInflightFull,
        Counter::UnmatchedReturns,
        Counter::TstateReadErrors,
        Counter::FrameReadErrors,
        Counter::StacksTruncated,
        Counter::NoPythonStack,
        Counter::LostNewStackEvents,
        Counter::NoTarget,
        Counter::AfterFinalize,
        Counter::FailedAllocs,
        Counter::Unsampled,
    ];

    /// Stable snake_case name, used in reports and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Allocs => "allocs",
            Counter::Frees => "frees",
            Counter::FreesTracked => "frees_tracked",
            Counter::LostLiveFull => "lost_live_map_full",
            Counter::LostStacksFull => "lost_stack_map_full",
            Counter::LostStatsFull => "lost_stats_map_full",
            Counter::LostInflightFull => "lost_inflight_map_full",
            Counter::UnmatchedReturns => "unmatched_returns",
            Counter::TstateReadErrors => "tstate_read_errors",
            Counter::FrameReadErrors => "frame_read_errors",
            Counter::StacksTruncated => "stacks_truncated",
            Counter::NoPythonStack => "no_python_stack",
            Counter::LostNewStackEvents => "lost_new_stack_events",
            Counter::NoTarget => "no_target",
            Counter::AfterFinalize => "after_finalize",
            Counter::FailedAllocs => "failed_allocs",
            Counter::Unsampled => "unsampled",
        }
    }

    /// Whether this counter means an allocation went unrecorded (a "lost event").
    pub const fn is_loss(self) -> bool {
        matches!(
            self,
            Counter::LostLiveFull
                | Counter::LostStacksFull
                | Counter::LostStatsFull
                | Counter::LostInflightFull
        )
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain data with explicit padding and no pointers.
    unsafe impl aya::Pod for AllocKey {}
    unsafe impl aya::Pod for AllocInfo {}
    unsafe impl aya::Pod for StackKey {}
    unsafe impl aya::Pod for StackCounters {}
    unsafe impl aya::Pod for StackTrace {}
    unsafe impl aya::Pod for NewStack {}
    unsafe impl aya::Pod for Inflight {}
    unsafe impl aya::Pod for PyTarget {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_apart_what_a_reused_address_can_share() {
        let tail = |name: &[u8]| FilenameTail {
            length: name.len() as u64,
            last_bytes: u64::from_le_bytes(name[name.len() - 8..].try_into().unwrap()),
        };
        // Module bodies compiled alike: first line 1, and their file name and line table
        // objects at the same addresses too. Only the names' characters differ.
        let a = code_fingerprint(1, 0x7f00_1000, 0x7f00_2000, tail(b"reused_gen_2.py"));
        let b = code_fingerprint(1, 0x7f00_1000, 0x7f00_2000, tail(b"reused_gen_3.py"));
        assert_ne!(a, b);
        let c = code_fingerprint(1, 0x7f00_1000, 0x7f00_2000, tail(b"reused_gen_13.py"));
        assert_ne!(a, c);
        // Each part counts on its own.
        assert_ne!(a, code_fingerprint(2, 0x7f00_1000, 0x7f00_2000, tail(b"reused_gen_2.py")));
        assert_ne!(a, code_fingerprint(1, 0x7f00_1010, 0x7f00_2000, tail(b"reused_gen_2.py")));
        assert_ne!(a, code_fingerprint(1, 0x7f00_1000, 0x7f00_2010, tail(b"reused_gen_2.py")));
        for f in [a, b, c] {
            assert!(f < 1 << CODE_FINGERPRINT_BITS, "{f:#x} does not fit a code-cache entry");
        }
        // Short names are told by their length only; no bytes are read.
        assert_eq!(filename_tail_at(0x1000, 40, 7), None);
        assert_eq!(filename_tail_at(0x1000, 40, 15), Some(0x1000 + 40 + 7));
        assert_eq!(filename_tail_at(0x1000, 40, 5000), None);
    }
}
