//! Freeing calls: a tracked block leaves LIVE_ALLOCS and its bytes leave its stack's
//! outstanding total. Frees of blocks pyleak never saw (made before attach) cost one lookup.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use pyleak_common::{AllocKey, CODE_FINGERPRINT_BITS, Counter, StackKey};

use crate::{
    maps::{CODE_CACHE, LIVE_ALLOCS, code_slot, count, sampled_lower, sampled_slot, target},
    stats::stats_add,
};

/// Entry of a freeing call with pointer `ptr`.
#[inline(always)]
pub fn free(ptr: u64) {
    if ptr == 0 {
        return;
    }
    forget_code(ptr);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if target(tgid).is_some_and(|t| t.finalizing != 0) {
        count(Counter::AfterFinalize);
        return;
    }
    count(Counter::Frees);
    if forget_block(tgid, ptr) {
        count(Counter::FreesTracked);
    }
}

/// Clears the code cache's entry for `ptr` if it names that address: the block may be a
/// code object, whose address a new code object may take next (see `walk::fingerprint`).
#[inline(always)]
fn forget_code(ptr: u64) {
    if let Some(slot) = CODE_CACHE.get_ptr_mut(code_slot(ptr)) {
        // SAFETY: a valid array slot; whole-u64 accesses.
        unsafe {
            let entry = core::ptr::read_volatile(slot);
            if entry != 0 && entry >> CODE_FINGERPRINT_BITS == ptr >> 4 {
                core::ptr::write_volatile(slot, 0);
            }
        }
    }
}

/// Removes a tracked block and subtracts it from its stack. Returns whether it was tracked.
#[inline(always)]
pub fn forget_block(tgid: u32, addr: u64) -> bool {
    let filter = sampled_slot(addr);
    // SAFETY: a valid array slot; a whole-u64 load.
    if let Some(f) = filter
        && unsafe { core::ptr::read_volatile(f) } == 0
    {
        return false; // sampled mode: no recorded block hashes here
    }
    let key = AllocKey { tgid, _pad: 0, addr };
    // SAFETY: copy the value out before removing the entry.
    let Some(info) = (unsafe { LIVE_ALLOCS.get(&key) }).copied() else {
        return false;
    };
    if LIVE_ALLOCS.remove(&key).is_err() {
        return false; // another thread freed it first (a double free in the target)
    }
    sampled_lower(filter);
    let skey = StackKey { tgid, _pad: 0, stack_id: info.stack_id };
    stats_add(&skey, 0, 0, info.size, info.count_weight);
    true
}
