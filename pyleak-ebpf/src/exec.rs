//! New processes: the daemon attaches to matching programs as they start.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use pyleak_common::ExecEvent;

use crate::maps::EXEC_EVENTS;

/// Announces the calling process (it has just exec'd). A full ring drops the event; the
/// daemon's periodic /proc scan still finds the process.
#[inline(always)]
pub fn announce() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = EXEC_EVENTS.output(&ExecEvent { tgid, _pad: 0 }, 0);
}
