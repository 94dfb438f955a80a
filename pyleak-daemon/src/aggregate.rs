//! Turning the kernel's per-stack counters and the symbolized stacks into a `Report`:
//! outstanding bytes per stack, whole-trace totals, and plain-language notes about anything
//! the kernel side had to drop.
use std::{collections::HashMap, time::Duration};

use pyleak_common::{
    Counter, MAX_INFLIGHT, STACK_NO_PYTHON, STACK_READ_ERROR, STACK_TRUNCATED, StackCounters,
};

use crate::model::{Frame, NativeFrame, ProgramCost, PythonInfo, Report, StackStats, Totals};
use crate::report::counted;

/// A stack id's frames, symbolized.
#[derive(Clone, Debug)]
pub struct ResolvedStack {
    pub frames: Vec<Frame>,
    pub flags: u32,
    /// The native caller of a direct C-library allocation.
    pub native: Option<NativeFrame>,
}

pub struct Inputs<'a> {
    pub pid: u32,
    pub command: String,
    pub python: PythonInfo,
    pub duration: Duration,
    /// Per stack id, summed over CPUs.
    pub stats: Vec<(u64, StackCounters)>,
    /// With `--min-age`: the blocks old enough, as (stack id, bytes, time, count weight).
    pub live: Option<Vec<(u64, u64, u64, u64)>>,
    /// `--sample-bytes` (0: exact). Sampled counters are estimates, counts in
    /// `sampling::COUNT_ONE` units.
    pub sample_bytes: u64,
    pub counters: Vec<(Counter, u64)>,
    /// `--bpf-stats`: the kernel programs' run counts and times.
    pub kernel_programs: Option<Vec<ProgramCost>>,
    pub resolved: &'a HashMap<u64, ResolvedStack>,
    /// What the kernel maps were sized for, named when one was full.
    pub capacity: Capacity,
    /// The counters of stacks reclaimed while tracing (idle, nothing outstanding), summed:
    /// the totals include them.
    pub retired: StackCounters,
    /// How many stacks were reclaimed.
    pub reclaimed: u64,
}

/// The capacities the kernel maps were loaded with (`LoadOptions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Outstanding allocations (`--max-allocations`, `limits.max_live_allocations`).
    pub live_allocs: u32,
    /// Distinct stacks (`--max-stacks`, `limits.max_stacks`).
    pub stacks: u32,
}

pub fn build(inp: Inputs<'_>) -> Report {
    let count_one = if inp.sample_bytes > 0 { pyleak_common::sampling::COUNT_ONE } else { 1 };
    let mut totals = Totals {
        allocated_bytes: inp.retired.allocated_bytes,
        freed_bytes: inp.retired.freed_bytes,
        ..Totals::default()
    };
    let mut per_stack: HashMap<u64, StackStats> = HashMap::new();
    for (id, c) in &inp.stats {
        totals.allocated_bytes += c.allocated_bytes;
        totals.freed_bytes += c.freed_bytes;
        let outstanding_bytes = c.allocated_bytes.saturating_sub(c.freed_bytes);
        let outstanding_allocations = c.allocations.saturating_sub(c.frees) / count_one;
        totals.outstanding_bytes += outstanding_bytes;
        totals.outstanding_allocations += outstanding_allocations;
        let (frames, truncated) = frames_of(*id, inp.resolved);
        per_stack.insert(
            *id,
            StackStats {
                outstanding_bytes,
                outstanding_allocations,
                allocated_bytes: c.allocated_bytes,
                allocated_allocations: c.allocations / count_one,
                frames,
                truncated,
                native_caller: inp.resolved.get(id).and_then(|r| r.native.clone()),
            },
        );
    }
    if let Some(live) = &inp.live {
        // Only blocks at least --min-age old count as outstanding.
        for s in per_stack.values_mut() {
            s.outstanding_bytes = 0;
            s.outstanding_allocations = 0;
        }
        let mut weights: HashMap<u64, u64> = HashMap::new();
        for &(id, size, _, weight) in live {
            if let Some(s) = per_stack.get_mut(&id) {
                s.outstanding_bytes += size;
                *weights.entry(id).or_default() += weight;
            }
        }
        for (id, weight) in weights {
            if let Some(s) = per_stack.get_mut(&id) {
                s.outstanding_allocations = weight / count_one;
            }
        }
    }
    let counter = |c: Counter| inp.counters.iter().find(|(k, _)| *k == c).map_or(0, |(_, v)| *v);
    totals.lost_events = Counter::ALL.iter().filter(|c| c.is_loss()).map(|&c| counter(c)).sum();

    let mut python = inp.python;
    if inp.sample_bytes > 0 {
        python.notes.insert(0, crate::sampling::note(inp.sample_bytes));
    }
    let unresolved = inp.stats.iter().filter(|(id, _)| !inp.resolved.contains_key(id)).count();
    if unresolved > 0 {
        python.notes.push(format!(
            "{} not be symbolized (the process exited before their code objects were read)",
            counted(unresolved as u64, "stack could", "stacks could")
        ));
    }
    if inp.reclaimed > 0 {
        python.notes.push(format!(
            "{} reclaimed to make room for new ones (their allocations stay in the totals)",
            counted(
                inp.reclaimed,
                "stack with nothing outstanding was",
                "stacks with nothing outstanding were"
            )
        ));
    }
    let truncated = counter(Counter::StacksTruncated);
    if truncated > 0 {
        python.notes.push(format!(
            "{} deeper than the capture depth; their outer frames are cut",
            counted(truncated, "allocation's stack was", "allocations' stacks were")
        ));
    }
    let no_python = counter(Counter::NoPythonStack);
    if no_python > 0 {
        python.notes.push(format!(
            "{} by threads not running Python code (native threads, or the GIL released)",
            counted(no_python, "allocation was made", "allocations were made")
        ));
    }
    let read_errors = counter(Counter::FrameReadErrors) + counter(Counter::TstateReadErrors);
    if read_errors > 0 {
        python.notes.push(format!(
            "{} an unreadable frame; those stacks are partial",
            counted(read_errors, "stack capture hit", "stack captures hit")
        ));
    }
    // One note per full map: which one, how large it was, and how to make it larger.
    let cap = inp.capacity;
    for (lost, why) in [
        (
            counter(Counter::LostLiveFull),
            format!(
                "the outstanding-allocation map was full ({} entries: raise --max-allocations, or limits.max_live_allocations in the daemon's configuration)",
                cap.live_allocs
            ),
        ),
        (
            counter(Counter::LostStacksFull) + counter(Counter::LostStatsFull),
            format!(
                "the stack map was full ({} stacks: raise --max-stacks, or limits.max_stacks in the daemon's configuration)",
                cap.stacks
            ),
        ),
        (
            counter(Counter::LostInflightFull),
            format!("more than {MAX_INFLIGHT} threads were inside an allocator call at once"),
        ),
    ] {
        if lost > 0 {
            python.notes.push(format!(
                "{} not recorded because {why}",
                counted(lost, "allocation was", "allocations were")
            ));
        }
    }

    let mut stacks: Vec<StackStats> = per_stack.into_values().collect();
    stacks.sort_by(|a, b| {
        b.outstanding_bytes.cmp(&a.outstanding_bytes).then(b.allocated_bytes.cmp(&a.allocated_bytes))
    });
    Report {
        pid: inp.pid,
        command: inp.command,
        python,
        duration_s: inp.duration.as_secs_f64(),
        totals,
        stacks,
        sample_bytes: (inp.sample_bytes > 0).then_some(inp.sample_bytes),
        kernel_programs: inp.kernel_programs,
    }
}

fn frames_of(id: u64, resolved: &HashMap<u64, ResolvedStack>) -> (Vec<Frame>, bool) {
    match resolved.get(&id) {
        Some(r) if r.flags & STACK_NO_PYTHON != 0 => (Vec::new(), false),
        Some(r) => {
            let mut frames = r.frames.clone();
            if r.flags & STACK_READ_ERROR != 0 {
                frames.push(Frame {
                    function: "<unreadable frame>".into(),
                    qualname: "<unreadable frame>".into(),
                    file: "<unknown>".into(),
                    line: 0,
                });
            }
            (frames, r.flags & STACK_TRUNCATED != 0)
        }
        None => (vec![Frame::unknown(0)], false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: &str, line: u32) -> Frame {
        Frame { function: f.into(), qualname: f.into(), file: "/app.py".into(), line }
    }

    const CAPACITY: Capacity = Capacity { live_allocs: 4096, stacks: 512 };

    fn counters(n: u64) -> StackCounters {
        StackCounters { allocated_bytes: n * 100, allocations: n, freed_bytes: 0, frees: 0 }
    }

    /// Inputs of an exact-mode trace with nothing in it; each test sets what it is about.
    fn inputs(resolved: &HashMap<u64, ResolvedStack>) -> Inputs<'_> {
        Inputs {
            pid: 7,
            command: "python app.py".into(),
            python: PythonInfo::default(),
            duration: Duration::from_secs(2),
            stats: vec![],
            live: None,
            sample_bytes: 0,
            kernel_programs: None,
            counters: vec![],
            resolved,
            capacity: CAPACITY,
            retired: StackCounters::default(),
            reclaimed: 0,
        }
    }

    #[test]
    fn reclaimed_stacks_stay_in_the_totals_and_are_said() {
        let mut resolved = HashMap::new();
        resolved.insert(1, ResolvedStack { frames: vec![frame("leak", 3)], flags: 0, native: None });
        let retired = StackCounters { allocated_bytes: 7000, allocations: 70, freed_bytes: 7000, frees: 70 };
        let r = build(Inputs { stats: vec![(1, counters(10))], retired, reclaimed: 5, ..inputs(&resolved) });
        assert_eq!((r.totals.allocated_bytes, r.totals.freed_bytes), (8000, 7000));
        assert_eq!(r.totals.outstanding_bytes, 1000);
        assert_eq!(r.stacks.len(), 1);
        assert!(
            r.python.notes.iter().any(|n| n.starts_with("5 stacks with nothing outstanding were reclaimed"))
        );
    }

    #[test]
    fn outstanding_is_allocated_minus_freed_and_sorted() {
        let mut resolved = HashMap::new();
        resolved.insert(1, ResolvedStack { frames: vec![frame("leak", 3)], flags: 0, native: None });
        resolved.insert(
            2,
            ResolvedStack { frames: vec![frame("churn", 9)], flags: STACK_TRUNCATED, native: None },
        );
        let churn = StackCounters { allocated_bytes: 5000, allocations: 50, freed_bytes: 4900, frees: 49 };
        let r = build(Inputs {
            stats: vec![(2, churn), (1, counters(10))],
            counters: vec![(Counter::LostLiveFull, 3), (Counter::Allocs, 99)],
            ..inputs(&resolved)
        });
        assert_eq!(r.stacks[0].frames[0].function, "leak");
        assert_eq!(r.stacks[0].outstanding_bytes, 1000);
        assert_eq!(r.stacks[1].outstanding_bytes, 100);
        assert_eq!(r.stacks[1].outstanding_allocations, 1);
        assert!(r.stacks[1].truncated);
        assert_eq!(r.totals.outstanding_bytes, 1100);
        assert_eq!(r.totals.freed_bytes, 4900);
        assert_eq!(r.totals.lost_events, 3);
        assert!(
            r.python.notes.iter().any(|n| n
                .starts_with("3 allocations were not recorded because the outstanding-allocation map was full (4096 entries: raise --max-allocations")),
            "{:?}",
            r.python.notes
        );
        assert!(!r.python.notes.iter().any(|n| n.contains("stack map")), "{:?}", r.python.notes);
    }

    #[test]
    fn every_kind_of_loss_gets_a_note() {
        let resolved = HashMap::new();
        for &c in Counter::ALL.iter().filter(|c| c.is_loss()) {
            for (n, says) in [(5, "5 allocations were not recorded"), (1, "1 allocation was not recorded")] {
                let r = build(Inputs { counters: vec![(c, n)], ..inputs(&resolved) });
                assert_eq!(r.totals.lost_events, n, "{c:?}");
                let notes: Vec<_> = r.python.notes.iter().filter(|n| n.contains("not recorded")).collect();
                assert!(notes.len() == 1 && notes[0].starts_with(says), "{c:?}: {notes:?}");
            }
        }
    }

    #[test]
    fn min_age_counts_only_old_blocks_and_unresolved_is_visible() {
        let resolved = HashMap::new();
        let r = build(Inputs {
            stats: vec![(1, counters(10))],
            live: Some(vec![(1, 100, 5, 1), (1, 100, 6, 1)]),
            counters: vec![(Counter::LostStatsFull, 2), (Counter::LostStacksFull, 1)],
            ..inputs(&resolved)
        });
        assert_eq!(r.stacks[0].outstanding_bytes, 200);
        assert_eq!(r.stacks[0].outstanding_allocations, 2);
        assert!(r.stacks[0].frames[0].function.starts_with("<unknown code"));
        assert!(r.python.notes.iter().any(|n| n.contains("could not be symbolized")));
        // A full stack-counter map is the stack map's limit too (both are sized by max_stacks).
        assert!(
            r.python.notes.iter().any(|n| n.starts_with(
                "3 allocations were not recorded because the stack map was full (512 stacks: raise --max-stacks"
            )),
            "{:?}",
            r.python.notes
        );
    }
}
