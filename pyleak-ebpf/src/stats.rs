//! Per-(process, stack) byte and block counters, kept per CPU so no atomics are needed.
use aya_ebpf::bindings::BPF_NOEXIST;
use pyleak_common::{StackCounters, StackKey};

use crate::maps::STACK_STATS;

/// Adds to a stack's counters on this CPU, creating its entry on first use.
/// Returns false when the map is full.
#[inline(always)]
pub fn stats_add(key: &StackKey, alloc_bytes: u64, allocs: u64, freed_bytes: u64, frees: u64) -> bool {
    for _ in 0..2 {
        if let Some(c) = STACK_STATS.get_ptr_mut(key) {
            // SAFETY: per-CPU value; only this CPU writes it.
            unsafe {
                (*c).allocated_bytes += alloc_bytes;
                (*c).allocations += allocs;
                (*c).freed_bytes += freed_bytes;
                (*c).frees += frees;
            }
            return true;
        }
        let zero = StackCounters::default();
        // EEXIST (another CPU created it) is fine: the next lookup finds it.
        if let Err(e) = STACK_STATS.insert(key, &zero, BPF_NOEXIST as u64) {
            if e != -17 {
                return false;
            }
        }
    }
    false
}
