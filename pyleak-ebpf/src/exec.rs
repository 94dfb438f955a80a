//! Processes that replace their program: a traced one stops counting at once, and the
//! daemon's watcher hears of every one (to attach to matching programs as they start).
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use pyleak_common::{ExecEvent, FROZEN_AT_EXEC};

use crate::maps::{ANNOUNCE_EXECS, EXEC_EVENTS, TARGETS};

/// The calling process has just exec'd. If it is this object's target, its counting stops
/// here, in the kernel, before the new program runs: its probes may still fire (the new
/// program can map the same libpython), but with the old program's addresses, and user
/// space would only notice later. The watcher's object announces the process; a full ring
/// drops the event, and the daemon's periodic /proc scan still finds the process.
#[inline(always)]
pub fn on_exec() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(t) = TARGETS.get_ptr_mut(0) {
        // SAFETY: plain loads and stores in this object's one target slot.
        unsafe {
            if tgid != 0 && (*t).tgid == tgid {
                (*t).finalizing = FROZEN_AT_EXEC;
            }
        }
    }
    if ANNOUNCE_EXECS.load() != 0 {
        let _ = EXEC_EVENTS.output(&ExecEvent { tgid, _pad: 0 }, 0);
    }
}
