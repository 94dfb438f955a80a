//! pyleak's kernel programs: uprobes on a CPython process's allocator functions.
//!
//! Each program is a few lines delegating to one concern: `alloc` (allocating calls),
//! `free` (freeing calls), `walk` (the Python stack), `stats` (per-stack counters), `values`
//! (where an entry probe finds its arguments: see the attach cookie). The maps live in `maps`.
//! No program reads the stack at `%rsp`, so the user side may place entry probes after
//! pushes. Nothing here formats strings or logs: hot paths only count.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomic types offer no fetch_add; the
// intrinsic lowers to BPF's atomic add (see `maps::sampled_add`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod alloc;
mod exec;
mod free;
mod maps;
mod stats;
mod values;
mod walk;

use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use pyleak_common::CALL_MALLOC;
use values::Values;

/// `void *malloc(size_t)`, `PyObject_Malloc`, `PyMem_Malloc`, `PyMem_RawMalloc`.
#[uprobe(multi)]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    alloc::enter_malloc(Values::of(&ctx).get(0, 0), ip(&ctx));
    0
}

/// The probed instruction's address (entry) or the caller's return address (return probe:
/// the kernel restores the real return address before running the program).
#[inline(always)]
fn ip<C: EbpfContext>(ctx: &C) -> u64 {
    let regs = ctx.as_ptr() as *const pt_regs;
    // SAFETY: a uprobe's context is the trapped thread's pt_regs.
    unsafe { (*regs).rip }
}

/// `void *calloc(size_t nelem, size_t elsize)` and the Py* variants.
#[uprobe(multi)]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let v = Values::of(&ctx);
    let (nelem, elsize) = (v.get(0, 0), v.get(1, 1));
    // An overflowing request fails in the allocator; saturate so it is never recorded small.
    let size = saturating_mul(nelem, elsize);
    alloc::enter(size, 0, CALL_MALLOC, ip(&ctx));
    0
}

/// `a * b`, or u64::MAX on overflow, in 32-bit halves: `checked_mul` and the usual
/// division test both lower to a 128-bit multiply (`__multi3`) the BPF backend lacks.
#[inline(always)]
fn saturating_mul(a: u64, b: u64) -> u64 {
    let (ah, al, bh, bl) = (a >> 32, a & 0xffff_ffff, b >> 32, b & 0xffff_ffff);
    if ah != 0 && bh != 0 {
        return u64::MAX;
    }
    let cross = ah * bl + al * bh; // one term is zero; each fits in 64 bits
    if cross >> 32 != 0 {
        return u64::MAX;
    }
    let low = al * bl;
    let product = (cross << 32).wrapping_add(low);
    if product < low { u64::MAX } else { product }
}

/// `void *realloc(void *ptr, size_t size)` and the Py* variants.
#[uprobe(multi)]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    let v = Values::of(&ctx);
    let (ptr, size) = (v.get(0, 0), v.get(1, 1));
    alloc::enter(size, ptr, pyleak_common::CALL_REALLOC, ip(&ctx));
    0
}

/// `int posix_memalign(void **memptr, size_t align, size_t size)`.
#[uprobe(multi)]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    let v = Values::of(&ctx);
    let (memptr, size) = (v.get(0, 0), v.get(1, 2));
    alloc::enter(size, memptr, pyleak_common::CALL_POSIX_MEMALIGN, ip(&ctx));
    0
}

/// `void *aligned_alloc(size_t align, size_t size)`, `memalign` (same arguments).
#[uprobe(multi)]
pub fn aligned_alloc_enter(ctx: ProbeContext) -> u32 {
    alloc::enter_malloc(Values::of(&ctx).get(0, 1), ip(&ctx));
    0
}

/// Return of any allocating function above.
#[uretprobe(multi)]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    alloc::exit(ctx.ret::<u64>(), ip(&ctx));
    0
}

/// `void free(void *)`, `PyObject_Free`, `PyMem_Free`, `PyMem_RawFree`.
#[uprobe(multi)]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    free::free(Values::of(&ctx).get(0, 0));
    0
}

/// Does nothing: with `--empty-programs` (benchmarks only) every entry site gets this program
/// instead, so a run measures the trap cost alone, the floor under pyleak's own work.
#[uprobe(multi)]
pub fn empty_enter(_ctx: ProbeContext) -> u32 {
    0
}

/// Does nothing at the return sites (`--empty-programs`).
#[uretprobe(multi)]
pub fn empty_exit(_ctx: RetProbeContext) -> u32 {
    0
}

/// `sched/sched_process_exec`: a process replaced its program (a traced one stops counting;
/// the daemon's watcher announces it).
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    exec::on_exec();
    0
}

/// `void Py_FinalizeEx(void)`: the interpreter starts shutting down.
#[uprobe(multi)]
pub fn finalize_enter(_ctx: ProbeContext) -> u32 {
    alloc::finalize();
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
