//! New processes as they start: the `sched/sched_process_exec` tracepoint, for the daemon's
//! dynamic targets. The watcher loads the same kernel object as a traced process but only
//! this one program, with the object's maps shrunk to nothing, and has it announce every
//! exec. Each traced process's object attaches the same program too ([`attach_tracepoint`]),
//! announcing nothing: it only stops that process's counting at its exec.
use std::os::fd::{AsRawFd, RawFd};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::TracePoint,
};
use pyleak_common::{
    ExecEvent, GLOBAL_ANNOUNCE_EXECS, MAP_EXEC_EVENTS, MAP_INFLIGHT, MAP_LIVE_ALLOCS, MAP_NEW_STACKS,
    MAP_SAMPLE_TABLE, MAP_STACK_STATS, MAP_STACKS, PROG_SCHED_PROCESS_EXEC,
};

use crate::probes::{EBPF_OBJECT, check_loadable};

pub struct ExecWatcher {
    /// Keeps the program and its link alive.
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
}

/// Loads and attaches `ebpf`'s exec tracepoint program; it lives as long as `ebpf`.
pub fn attach_tracepoint(ebpf: &mut Ebpf) -> Result<()> {
    let prog: &mut TracePoint = ebpf
        .program_mut(PROG_SCHED_PROCESS_EXEC)
        .ok_or_else(|| anyhow!("program {PROG_SCHED_PROCESS_EXEC} missing from the eBPF object"))?
        .try_into()?;
    prog.load().context("the kernel rejected the exec tracepoint program")?;
    prog.attach("sched", "sched_process_exec").context("attaching to sched/sched_process_exec")?;
    Ok(())
}

impl ExecWatcher {
    pub fn start() -> Result<ExecWatcher> {
        check_loadable()?;
        let page = 4096;
        let announce: u32 = 1;
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_ANNOUNCE_EXECS, &announce, true)
            .map_max_entries(MAP_LIVE_ALLOCS, 1)
            .map_max_entries(MAP_STACKS, 1)
            .map_max_entries(MAP_STACK_STATS, 1)
            .map_max_entries(MAP_INFLIGHT, 1)
            .map_max_entries(MAP_SAMPLE_TABLE, 1)
            .map_max_entries(MAP_NEW_STACKS, page)
            .load(EBPF_OBJECT)
            .context("loading pyleak's eBPF object for the exec tracepoint")?;
        attach_tracepoint(&mut ebpf)?;
        let map = ebpf
            .take_map(MAP_EXEC_EVENTS)
            .ok_or_else(|| anyhow!("map {MAP_EXEC_EVENTS} missing from the eBPF object"))?;
        let ring = RingBuf::try_from(map)?;
        Ok(ExecWatcher { _ebpf: ebpf, ring })
    }

    /// Becomes readable when processes have exec'd.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// The processes that exec'd since the last call, oldest first, without duplicates.
    pub fn drain(&mut self) -> Vec<u32> {
        let mut pids: Vec<u32> = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<ExecEvent>() {
                continue;
            }
            // SAFETY: the kernel side writes whole ExecEvent records; read_unaligned copes
            // with the ring's 8-byte alignment either way.
            let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ExecEvent>()) };
            if !pids.contains(&ev.tgid) {
                pids.push(ev.tgid);
            }
        }
        pids
    }
}
