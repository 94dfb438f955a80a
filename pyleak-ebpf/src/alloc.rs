//! Allocating calls: entry programs remember the request per thread, the shared return
//! program pairs it with the returned address, walks the Python stack and records the block.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use pyleak_common::{
    AllocInfo, AllocKey, CALL_MALLOC, CALL_POSIX_MEMALIGN, CALL_REALLOC, Counter, FROZEN_AT_FINALIZE,
    Inflight, NewStack, StackKey, sampling,
};

use crate::{
    free::forget_block,
    maps::{
        INFLIGHT, LIVE_ALLOCS, NEW_STACKS, SAMPLE_BYTES, SAMPLE_TABLE, SCRATCH, STACKS, TARGETS, count,
        sampled_add, sampled_lower, sampled_slot, target,
    },
    stats::stats_add,
    walk::walk,
};

/// Entry of an allocating call. Nested allocator calls (PyObject_Malloc -> PyMem_RawMalloc ->
/// malloc) only deepen the outermost record, so each block is counted once.
#[inline(always)]
/// `ip` is the probed instruction: inside the C library, the call is a native allocation.
pub fn enter(size: u64, old_ptr: u64, kind: u32, ip: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let native = match target(tgid) {
        None => {
            count(Counter::NoTarget);
            return;
        }
        Some(t) if t.finalizing != 0 => {
            // Nothing new is recorded, but a call already in flight (another thread's, as
            // the shutdown point was reached) keeps its nesting, so that this call's return
            // is not taken for the outermost one's.
            if let Some(record) = INFLIGHT.get_ptr_mut(&pid_tgid) {
                // SAFETY: per-thread entry; only this thread touches it.
                unsafe {
                    if (*record).depth > 0 {
                        (*record).depth += 1;
                    }
                }
            }
            count(Counter::AfterFinalize);
            return;
        }
        Some(t) => (ip >= t.native_lo && ip < t.native_hi) as u32,
    };
    let call = Inflight { size, old_ptr, depth: 1, kind, native, _pad: 0 };
    if let Some(record) = INFLIGHT.get_ptr_mut(&pid_tgid) {
        // SAFETY: per-thread entry; only this thread touches it.
        unsafe {
            if (*record).depth > 0 {
                (*record).depth += 1; // nested: only the outermost call is recorded
            } else {
                *record = call;
            }
        }
        return;
    }
    // The thread's first call: its record is made once and reused.
    if INFLIGHT.insert(&pid_tgid, &call, BPF_ANY as u64).is_err() {
        count(Counter::LostInflightFull);
    }
}

/// Return of an allocating call (any kind): `ret` is the returned pointer, `ret_addr` the
/// caller's return address.
#[inline(always)]
pub fn exit(ret: u64, ret_addr: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: per-thread entry; only this thread touches it. Depth 0: no call in flight.
    let call = match INFLIGHT.get_ptr_mut(&pid_tgid) {
        Some(record) if unsafe { (*record).depth } > 0 => unsafe {
            (*record).depth -= 1;
            if (*record).depth > 0 {
                return; // the return of a nested call
            }
            *record
        },
        _ => {
            // The call began before the probes were attached, INFLIGHT was full at entry,
            // or the entry was ignored (no target, or finalizing: already counted there).
            if target(tgid).is_some_and(|t| t.finalizing == 0) {
                count(Counter::UnmatchedReturns);
            }
            return;
        }
    };

    if target(tgid).is_some_and(|t| t.finalizing != 0) {
        // An outermost call that began before the shutdown point and returns after it:
        // counted as after it, like the frees it makes.
        count(Counter::AfterFinalize);
        return;
    }
    let addr = if call.kind == CALL_REALLOC {
        if ret == 0 && call.size != 0 {
            // Failed: the old block is untouched and still owned by the caller.
            count(Counter::FailedAllocs);
            return;
        }
        if call.old_ptr != 0 {
            // Moved, resized in place, or (size 0) freed: the old block ends here either way;
            // a surviving block is recorded again below with its new size and this stack.
            forget_block(tgid, call.old_ptr);
        }
        if ret == 0 {
            return; // realloc(p, 0) freed p; nothing new
        }
        ret
    } else if call.kind == CALL_POSIX_MEMALIGN {
        // Returns an error number; the block was stored through memptr.
        // C: if (ret == 0) addr = *memptr;
        if ret as u32 == 0 {
            // SAFETY: bpf_probe_read_user checks the address.
            unsafe { aya_ebpf::helpers::bpf_probe_read_user(call.old_ptr as *const u64) }.unwrap_or(0)
        } else {
            0
        }
    } else {
        ret
    };
    if addr == 0 {
        count(Counter::FailedAllocs);
        return;
    }
    count(Counter::Allocs);
    // Sampling (--sample-bytes): most small allocations stop here, before any stack walk or
    // map update; a sampled one is recorded with what it stands for.
    let r = SAMPLE_BYTES.load();
    let (bytes, count_weight) = if r == 0 {
        (call.size, 1)
    } else {
        // SAFETY: helper call with no preconditions.
        let random = unsafe { bpf_get_prandom_u32() };
        match sampling::decide(call.size, r, |k| SAMPLE_TABLE.get(k).copied(), random) {
            Some(w) => (w.bytes, w.count),
            None => {
                count(Counter::Unsampled);
                return;
            }
        }
    };
    let native_caller = if call.native != 0 { ret_addr } else { 0 };
    record(tgid, addr, bytes, count_weight, native_caller);
}

/// Records a new block: walks the stack, interns it, adds the block to LIVE_ALLOCS and its
/// bytes to the stack's counters. A full map loses the block, counted, never half-recorded.
#[inline(always)]
fn record(tgid: u32, addr: u64, size: u64, count_weight: u64, native_caller: u64) {
    let Some(target) = target(tgid) else {
        count(Counter::NoTarget);
        return;
    };
    // The C library entered straight from the interpreter (its raw allocator, unprobed)
    // is CPython's own allocation: no native frame.
    let native_caller =
        if native_caller >= target.interp_lo && native_caller < target.interp_hi { 0 } else { native_caller };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, not shared while this program runs.
    let st = unsafe { &mut *scratch };
    let stack_id = walk(tgid, target, native_caller, st);

    if STACKS.get_ptr(&stack_id).is_none() {
        match STACKS.insert(&stack_id, st, BPF_NOEXIST as u64) {
            Ok(()) => {
                let event = NewStack { tgid, _pad: 0, stack_id };
                if NEW_STACKS.output(&event, 0).is_err() {
                    count(Counter::LostNewStackEvents);
                }
            }
            Err(e) if e == -(EEXIST as i32) => {} // another CPU interned it first
            Err(_) => {
                count(Counter::LostStacksFull);
                return;
            }
        }
    }

    let key = AllocKey { tgid, _pad: 0, addr };
    // SAFETY: helper call with no preconditions.
    let timestamp_ns = unsafe { bpf_ktime_get_ns() };
    let info = AllocInfo { size, stack_id, timestamp_ns, count_weight };
    // Sampled mode: the block's filter slot is raised before it can be found in LIVE_ALLOCS
    // (see SAMPLED_FILTER), and lowered again if it is not recorded after all.
    let filter = sampled_slot(addr);
    if let Some(f) = filter {
        sampled_add(f, 1);
    }
    // Insert first: the usual case is a new address, so this costs one hash walk. A block
    // already recorded at this address was freed by a path pyleak does not see: retire it
    // so its bytes do not stay outstanding forever, then record the new one.
    let inserted = match LIVE_ALLOCS.insert(&key, &info, BPF_NOEXIST as u64) {
        Err(e) if e == -(EEXIST as i32) => {
            forget_block(tgid, addr);
            LIVE_ALLOCS.insert(&key, &info, BPF_ANY as u64)
        }
        other => other,
    };
    if inserted.is_err() {
        sampled_lower(filter);
        count(Counter::LostLiveFull);
        return;
    }
    let skey = StackKey { tgid, _pad: 0, stack_id };
    if !stats_add(&skey, size, count_weight, 0, 0) {
        if LIVE_ALLOCS.remove(&key).is_ok() {
            sampled_lower(filter);
        }
        count(Counter::LostStatsFull);
    }
}

const EEXIST: i64 = 17;
const SIGSTOP: u32 = 19;

/// Entry of `Py_FinalizeEx`: stop counting this process (see `PyTarget::finalizing`).
#[inline(always)]
pub fn finalize() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(t) = TARGETS.get_ptr_mut(0).filter(|&t| unsafe { (*t).tgid } == tgid) {
        // SAFETY: plain loads and stores in this process's map value.
        unsafe {
            if (*t).finalizing != 0 {
                // Already frozen: a second shutdown point, or the Py_FinalizeEx of a program
                // exec'd over the traced one (whose counting stopped at the exec).
                return;
            }
            (*t).finalizing = FROZEN_AT_FINALIZE;
            if (*t).stop_at_finalize != 0 {
                // Only set for pyleak run's ptraced child: the stop is reported to pyleak,
                // which symbolizes and resumes the child with the signal suppressed.
                aya_ebpf::helpers::generated::bpf_send_signal_thread(SIGSTOP);
            }
        }
    }
}

/// Pass-through used by the call kinds that take no old pointer.
#[inline(always)]
pub fn enter_malloc(size: u64, ip: u64) {
    enter(size, 0, CALL_MALLOC, ip);
}
