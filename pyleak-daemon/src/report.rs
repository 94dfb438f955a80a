//! Report shaping and rendering: what the REPORT OPTIONS of DESIGN.md §4 do to a
//! [`model::Report`](crate::model::Report).
//!
//! This module owns `--include`/`--exclude`, `--group-by`, `--frames`, `--top` and the
//! `table`/`json` formats; [`render`] hands `folded`/`svg`/`pprof` to
//! [`flamegraph`](crate::flamegraph), which always draw whole stacks ([`Format::group_by`]).
//! It is tracemalloc's `Snapshot.filter_traces()` plus `Snapshot.statistics(key_type)`,
//! applied to the per-stack outstanding allocations that `aggregate` produced; `run`, `trace`,
//! `dump` and the daemon's `/api/report` all go through [`shape`] and then [`render`], so the
//! CLI and HTTP outputs cannot drift.
//!
//! Order of operations in [`shape`]:
//! 1. A stack without any Python frame (memory allocated by C code that no Python frame was
//!    running, e.g. at interpreter start-up) gets one synthetic frame, file `<native>`, function
//!    `<no Python frame>`, line 0, so that it stays visible and can be filtered like any other.
//! 2. `--exclude` removes the frames whose file matches; the stack is then attributed to its
//!    nearest non-excluded caller (the new `frames[0]`). A stack left with no frame is dropped.
//! 3. `--include` keeps a stack only if at least one of its remaining frames matches.
//! 4. `--group-by` merges stacks (sums of bytes and counts; `truncated` if any part was).
//! 5. Groups with no outstanding bytes are dropped (fully freed stacks still add their
//!    `allocated_bytes` to a group that has outstanding bytes from other stacks).
//! 6. Sort by outstanding bytes, then allocated bytes (both descending), then frames.
//! 7. `--top N` keeps the first N groups; `--frames N` keeps the N innermost frames of each.
//!
//! Glob patterns follow `globset` syntax; `*` also matches `/` (as in tracemalloc's
//! `fnmatch`). A pattern that contains no `/` is matched against the whole file name *and* its
//! basename, so `--include app.py` selects `/srv/app.py`; a pattern with a `/` must match the
//! whole path (`--exclude '*/site-packages/*'`, `--include '/srv/**'`).
//!
//! The totals of the returned report are left as they are: they describe the whole trace,
//! whatever the options selected.
// Used by the subcommands (`run`, `trace`, `dump`) and the HTTP API, which are not wired yet.
#![allow(dead_code)]

use std::cmp::Ordering;
use std::collections::HashMap;
use std::io::{self, BufWriter, Write};

use anyhow::{Context, Result, bail};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::flamegraph;
use crate::model::{Frame, NativeFrame, ProgramCost, Report, StackStats};

/// How stacks are merged, like the `key_type` of tracemalloc's `Snapshot.statistics()`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum GroupBy {
    /// One group per distinct Python stack (all frames).
    #[default]
    Traceback,
    /// One group per allocating line (file and line of the innermost frame).
    Line,
    /// One group per allocating function (file and qualified name of the innermost frame).
    Function,
    /// One group per file of the innermost frame.
    File,
}

impl GroupBy {
    /// What one group is, in plural, for the table's heading.
    fn noun(self) -> &'static str {
        match self {
            GroupBy::Traceback => "stacks",
            GroupBy::Line => "lines",
            GroupBy::Function => "functions",
            GroupBy::File => "files",
        }
    }
}

/// Output format of a report.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Human-readable text, largest groups first.
    #[default]
    Table,
    /// The JSON report (machine-readable: pid, command, python, totals, stacks; field names
    /// are a stable contract).
    Json,
    /// Folded stacks of outstanding bytes, for flamegraph.pl, inferno or speedscope.
    Folded,
    /// An interactive flamegraph of outstanding bytes (SVG; open it in a browser).
    Svg,
    /// A gzipped pprof profile (profile.proto), for `go tool pprof` (binary).
    Pprof,
}

impl Format {
    /// The flamegraph formats draw whole stacks, whatever `--group-by` asked for.
    pub fn is_flamegraph(self) -> bool {
        matches!(self, Format::Folded | Format::Svg | Format::Pprof)
    }

    /// The grouping a report in this format uses when `requested` was asked for: whole stacks
    /// (traceback) for the flamegraph formats, `requested` for the others.
    pub fn group_by(self, requested: GroupBy) -> GroupBy {
        if self.is_flamegraph() { GroupBy::Traceback } else { requested }
    }

    /// Whether the output is binary (not text): it must not go to a terminal.
    pub fn is_binary(self) -> bool {
        self == Format::Pprof
    }
}

/// The report options of DESIGN.md §4 that [`shape`] applies.
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    pub group_by: GroupBy,
    /// Keep the N largest groups (`None`: all; `Some(0)` keeps none).
    pub top: Option<usize>,
    /// Glob patterns on frame file names: keep only stacks with a frame in a matching file.
    pub include: Vec<String>,
    /// Glob patterns on frame file names: remove the frames in matching files.
    pub exclude: Vec<String>,
    /// Keep at most N innermost frames per stack in the output (must be at least 1).
    pub frames: Option<usize>,
}

/// File of the synthetic frame that stands for "no Python frame was running".
const NATIVE_FILE: &str = "<native>";
/// Function (and qualname) of that synthetic frame.
const NO_PYTHON_FRAME: &str = "<no Python frame>";

/// The frame given to stacks that have none, so they are grouped and shown, never lost.
pub(crate) fn native_frame() -> Frame {
    Frame {
        function: NO_PYTHON_FRAME.to_string(),
        qualname: NO_PYTHON_FRAME.to_string(),
        file: NATIVE_FILE.to_string(),
        line: 0,
    }
}

/// One list of compiled patterns (`--include` or `--exclude`).
struct Patterns {
    /// Every pattern, matched against the whole file name.
    full: GlobSet,
    /// The patterns without a `/`, matched against the file's basename.
    basename: GlobSet,
}

impl Patterns {
    /// `None` when there are no patterns (which means "no filter", not "match nothing").
    fn new(option: &str, patterns: &[String]) -> Result<Option<Patterns>> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut full = GlobSetBuilder::new();
        let mut basename = GlobSetBuilder::new();
        for pattern in patterns {
            let glob =
                Glob::new(pattern).with_context(|| format!("invalid --{option} pattern {pattern:?}"))?;
            if !pattern.contains('/') {
                basename.add(glob.clone());
            }
            full.add(glob);
        }
        let context = || format!("cannot compile the --{option} patterns {patterns:?}");
        Ok(Some(Patterns {
            full: full.build().with_context(context)?,
            basename: basename.build().with_context(context)?,
        }))
    }

    fn matches(&self, file: &str) -> bool {
        let base = file.rsplit('/').next().unwrap_or(file);
        self.full.is_match(file) || self.basename.is_match(base)
    }
}

/// Compiled filters; errors name the bad pattern.
///
/// See the module docs for the glob syntax and the basename rule.
pub struct FrameFilter {
    include: Option<Patterns>,
    exclude: Option<Patterns>,
}

impl FrameFilter {
    /// Compile `--include` and `--exclude` patterns; empty lists filter nothing.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(FrameFilter {
            include: Patterns::new("include", include)?,
            exclude: Patterns::new("exclude", exclude)?,
        })
    }

    /// Whether a frame in `file` passes both lists: it matches an include pattern (or there
    /// are none) and no exclude pattern.
    pub fn keeps(&self, file: &str) -> bool {
        self.included(file) && !self.excluded(file)
    }

    fn included(&self, file: &str) -> bool {
        self.include.as_ref().is_none_or(|p| p.matches(file))
    }

    fn excluded(&self, file: &str) -> bool {
        self.exclude.as_ref().is_some_and(|p| p.matches(file))
    }

    /// A stack's frames after `--exclude`, or `None` if the stack is filtered out (every frame
    /// excluded, or no remaining frame included).
    fn apply(&self, frames: &[Frame]) -> Option<Vec<Frame>> {
        let kept: Vec<Frame> = frames.iter().filter(|f| !self.excluded(&f.file)).cloned().collect();
        if kept.is_empty() {
            return None;
        }
        if self.include.is_some() && !kept.iter().any(|f| self.included(&f.file)) {
            return None;
        }
        Some(kept)
    }
}

/// What stacks merge on, per [`GroupBy`].
#[derive(PartialEq, Eq, Hash)]
enum GroupKey {
    /// Whole stacks: the Python frames and, for native allocations, the C caller.
    Traceback(Vec<Frame>, Option<NativeFrame>),
    Line(String, u32),
    Function(String, String),
    File(String),
}

/// A group being built: its sums, and the contributor whose `frames[0]` it shows.
struct Group {
    stats: StackStats,
    /// `(outstanding_bytes, allocated_bytes)` of the contributor shown in `stats.frames`.
    shown: (u64, u64),
}

/// Apply include/exclude, group_by, frames and top to `report.stacks`, returning a new Report
/// whose `stacks` are the groups, sorted by outstanding_bytes desc (ties: allocated_bytes desc,
/// then frames lexicographically for determinism). Totals are left as they are (they describe
/// the whole trace) — but stacks with 0 outstanding bytes are dropped.
///
/// `Line` and `Function` groups show the innermost frame of their largest contributor (by
/// outstanding, then allocated bytes), so a function group's line is where most of its
/// outstanding memory was allocated. `File` groups show a frame with only `file` set.
pub fn shape(report: &Report, opts: &ReportOptions) -> Result<Report> {
    if opts.frames == Some(0) {
        bail!("--frames must be at least 1");
    }
    let filter = FrameFilter::new(&opts.include, &opts.exclude)?;
    let native = [native_frame()];

    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<GroupKey, usize> = HashMap::new();
    // What --include/--exclude leave out, said in the report: the totals above count it.
    let (mut filtered_stacks, mut filtered_bytes) = (0u64, 0u64);
    for stack in &report.stacks {
        let frames = if stack.frames.is_empty() { &native[..] } else { &stack.frames[..] };
        let Some(frames) = filter.apply(frames) else {
            if stack.outstanding_bytes > 0 {
                filtered_stacks += 1;
                filtered_bytes = filtered_bytes.saturating_add(stack.outstanding_bytes);
            }
            continue;
        };
        let top = &frames[0];
        let key = match opts.group_by {
            GroupBy::Traceback => GroupKey::Traceback(frames.clone(), stack.native_caller.clone()),
            GroupBy::Line => GroupKey::Line(top.file.clone(), top.line),
            GroupBy::Function => GroupKey::Function(top.file.clone(), top.qualname.clone()),
            GroupBy::File => GroupKey::File(top.file.clone()),
        };
        let shown_frames = match opts.group_by {
            GroupBy::Traceback => frames.clone(),
            GroupBy::Line | GroupBy::Function => vec![top.clone()],
            GroupBy::File => vec![Frame {
                function: String::new(),
                qualname: String::new(),
                file: top.file.clone(),
                line: 0,
            }],
        };
        let weight = (stack.outstanding_bytes, stack.allocated_bytes);
        match index.get(&key) {
            Some(&i) => {
                let group = &mut groups[i];
                let sums = &mut group.stats;
                sums.outstanding_bytes = sums.outstanding_bytes.saturating_add(stack.outstanding_bytes);
                sums.outstanding_allocations =
                    sums.outstanding_allocations.saturating_add(stack.outstanding_allocations);
                sums.allocated_bytes = sums.allocated_bytes.saturating_add(stack.allocated_bytes);
                sums.allocated_allocations =
                    sums.allocated_allocations.saturating_add(stack.allocated_allocations);
                sums.truncated |= stack.truncated;
                // The larger contributor names the group; equal ones: the smaller frame, so the
                // result does not depend on the order of `report.stacks`.
                let larger =
                    weight.cmp(&group.shown).then_with(|| cmp_frames(&group.stats.frames, &shown_frames));
                if larger == Ordering::Greater {
                    group.shown = weight;
                    group.stats.frames = shown_frames;
                }
            }
            None => {
                index.insert(key, groups.len());
                groups.push(Group {
                    stats: StackStats {
                        outstanding_bytes: stack.outstanding_bytes,
                        outstanding_allocations: stack.outstanding_allocations,
                        allocated_bytes: stack.allocated_bytes,
                        allocated_allocations: stack.allocated_allocations,
                        frames: shown_frames,
                        truncated: stack.truncated,
                        // Only whole stacks keep the C caller; other groupings mix callers.
                        native_caller: match opts.group_by {
                            GroupBy::Traceback => stack.native_caller.clone(),
                            _ => None,
                        },
                    },
                    shown: weight,
                });
            }
        }
    }

    let mut stacks: Vec<StackStats> =
        groups.into_iter().map(|g| g.stats).filter(|s| s.outstanding_bytes > 0).collect();
    // Sorted on the whole frames, before `--frames` trims them, so the order is total.
    stacks.sort_by(rank);
    if let Some(top) = opts.top {
        stacks.truncate(top);
    }
    if let Some(n) = opts.frames {
        for stack in &mut stacks {
            if stack.frames.len() > n {
                stack.frames.truncate(n);
                stack.truncated = true;
            }
        }
    }

    let mut python = report.python.clone();
    if filtered_stacks > 0 {
        python.notes.push(format!(
            "--include/--exclude left out {} {} outstanding (counted in the totals)",
            counted(filtered_stacks, "stack holding", "stacks holding"),
            human_bytes(filtered_bytes)
        ));
    }
    Ok(Report {
        pid: report.pid,
        command: report.command.clone(),
        python,
        duration_s: report.duration_s,
        totals: report.totals.clone(),
        stacks,
        sample_bytes: report.sample_bytes,
        kernel_programs: report.kernel_programs.clone(),
    })
}

/// Largest first: outstanding bytes, then allocated bytes, then frames (ascending).
fn rank(a: &StackStats, b: &StackStats) -> Ordering {
    b.outstanding_bytes
        .cmp(&a.outstanding_bytes)
        .then(b.allocated_bytes.cmp(&a.allocated_bytes))
        .then_with(|| cmp_frames(&a.frames, &b.frames))
}

/// Lexicographic order of frame lists, each frame by (file, line, qualname, function).
fn cmp_frames(a: &[Frame], b: &[Frame]) -> Ordering {
    let key = |f: &Frame| (f.file.clone(), f.line, f.qualname.clone(), f.function.clone());
    a.iter().map(key).cmp(b.iter().map(key))
}

/// Write `report` (already [`shape`]d) in `format`; `group_by` says how the table labels rows.
///
/// The flamegraph formats (see [`crate::flamegraph`]) expect a report shaped with
/// [`Format::group_by`], i.e. whole stacks, and ignore `group_by`. Every format is written
/// byte for byte (pprof is binary).
pub fn render(report: &Report, format: Format, group_by: GroupBy, out: &mut dyn Write) -> Result<()> {
    let mut out = BufWriter::new(out);
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, report)?;
            writeln!(out)?;
        }
        Format::Table => render_table(report, group_by, &mut out)?,
        Format::Folded => out.write_all(flamegraph::folded(report).as_bytes())?,
        Format::Svg => out.write_all(&flamegraph::svg(report)?)?,
        Format::Pprof => out.write_all(&flamegraph::pprof(report)?)?,
    }
    out.flush()?;
    Ok(())
}

fn render_table(report: &Report, group_by: GroupBy, out: &mut dyn Write) -> io::Result<()> {
    let python = &report.python;
    let command = if report.command.is_empty() { String::new() } else { format!(" ({})", report.command) };
    writeln!(
        out,
        "pyleak: pid {}{command} - Python {}, traced {:.1}s",
        report.pid,
        or_unknown(&python.version),
        report.duration_s,
    )?;
    writeln!(out, "coverage: {}", or_unknown(&python.coverage))?;
    for note in &python.notes {
        writeln!(out, "note: {note}")?;
    }
    let totals = &report.totals;
    writeln!(
        out,
        "outstanding {} in {} allocations (allocated {}, freed {})",
        human_bytes(totals.outstanding_bytes),
        totals.outstanding_allocations,
        human_bytes(totals.allocated_bytes),
        human_bytes(totals.freed_bytes),
    )?;
    if totals.lost_events > 0 {
        writeln!(
            out,
            "WARNING: {} not recorded (a BPF map was full); totals exclude them",
            counted(totals.lost_events, "allocation was", "allocations were")
        )?;
    }
    if let Some(programs) = &report.kernel_programs {
        render_program_costs(programs, out)?;
    }
    writeln!(out)?;

    if report.stacks.is_empty() {
        if totals.outstanding_bytes > 0 {
            // The report options hid everything; say so rather than suggest there is no leak.
            writeln!(
                out,
                "no outstanding allocations seen in the selected stacks ({} outstanding overall)",
                human_bytes(totals.outstanding_bytes)
            )?;
        } else {
            writeln!(out, "no outstanding allocations seen")?;
        }
        return Ok(());
    }

    let shown: u64 = report.stacks.iter().fold(0, |sum, s| sum.saturating_add(s.outstanding_bytes));
    writeln!(
        out,
        "largest {} by outstanding bytes ({} shown, {} outstanding):",
        group_by.noun(),
        report.stacks.len(),
        human_bytes(shown),
    )?;
    for (i, stack) in report.stacks.iter().enumerate() {
        if group_by == GroupBy::Traceback {
            writeln!(out)?;
        }
        // One block has no average to show.
        let avg = match stack.outstanding_allocations {
            0 | 1 => String::new(),
            n => format!(" (avg {})", human_bytes(stack.outstanding_bytes.div_ceil(n))),
        };
        writeln!(
            out,
            "#{}: {}: {} outstanding in {}{avg}, {} allocated",
            i + 1,
            location(stack.frames.first(), group_by),
            human_bytes(stack.outstanding_bytes),
            counted(stack.outstanding_allocations, "block", "blocks"),
            human_bytes(stack.allocated_bytes),
        )?;
        if group_by == GroupBy::Traceback {
            if let Some(native) = &stack.native_caller {
                writeln!(out, "    [native] {native}")?;
            }
            for frame in &stack.frames {
                writeln!(out, "    {}:{} in {}", frame.file, frame.line, name(frame))?;
            }
            if stack.truncated {
                writeln!(out, "    ... (stack truncated)")?;
            }
        }
    }
    Ok(())
}

/// `--bpf-stats`: the time pyleak's kernel programs took in the target, per program.
fn render_program_costs(programs: &[ProgramCost], out: &mut dyn Write) -> io::Result<()> {
    let total_ns: u64 = programs.iter().map(|p| p.run_time_ns).sum();
    let runs: u64 = programs.iter().map(|p| p.runs).sum();
    writeln!(
        out,
        "kernel programs: {:.3} s in {runs} runs (the kernel's accounting; the probes' traps cost extra)",
        total_ns as f64 / 1e9
    )?;
    for p in programs {
        writeln!(
            out,
            "    {:<22} {:>12} runs {:>10.0} ns/run {:>9.3} s",
            p.program,
            p.runs,
            p.ns_per_run(),
            p.run_time_ns as f64 / 1e9
        )?;
    }
    Ok(())
}

/// The label of a table row: where the group's memory was allocated.
fn location(frame: Option<&Frame>, group_by: GroupBy) -> String {
    let Some(frame) = frame else {
        return NO_PYTHON_FRAME.to_string();
    };
    if frame.file == NATIVE_FILE && frame.function == NO_PYTHON_FRAME {
        return NO_PYTHON_FRAME.to_string();
    }
    match group_by {
        GroupBy::Traceback | GroupBy::Line => format!("{}:{}", frame.file, frame.line),
        GroupBy::Function => format!("{}:{} in {}", frame.file, frame.line, name(frame)),
        GroupBy::File => frame.file.clone(),
    }
}

/// The qualified name when the target has one (3.11+ always does), else the bare name.
fn name(frame: &Frame) -> &str {
    if frame.qualname.is_empty() { &frame.function } else { &frame.qualname }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `3.4 MiB`, `2.0 GiB` (GiB is the largest unit).
/// `n` and the phrase that agrees with it: `counted(1, "stack was", "stacks were")` is
/// "1 stack was", any other `n` takes `many`.
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Move up while the value would print as 1024.0 or more (1048575 B is "1.0 MiB").
    while unit + 1 < UNITS.len() && (value * 10.0).round() >= 10240.0 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PythonInfo, Totals};
    use clap::ValueEnum;

    use crate::model::test_frame as frame;

    fn stack(outstanding: u64, count: u64, allocated: u64, frames: Vec<Frame>) -> StackStats {
        StackStats {
            outstanding_bytes: outstanding,
            outstanding_allocations: count,
            allocated_bytes: allocated,
            allocated_allocations: count,
            frames,
            truncated: false,
            native_caller: None,
        }
    }

    fn report(stacks: Vec<StackStats>) -> Report {
        Report {
            pid: 4242,
            command: "python app.py".to_string(),
            python: PythonInfo {
                version: "3.12.1".to_string(),
                executable: "/usr/lib/libpython3.12.so.1.0".to_string(),
                coverage: "partial".to_string(),
                notes: vec!["allocator inlined by PGO: only calls > 512 bytes seen".to_string()],
            },
            duration_s: 12.54,
            totals: Totals {
                allocated_bytes: 10_000_000,
                freed_bytes: 7_000_000,
                outstanding_bytes: 3_000_000,
                outstanding_allocations: 3000,
                lost_events: 0,
            },
            stacks,
            sample_bytes: None,
            kernel_programs: None,
        }
    }

    fn opts(group_by: GroupBy) -> ReportOptions {
        ReportOptions { group_by, ..ReportOptions::default() }
    }

    fn strings(patterns: &[&str]) -> Vec<String> {
        patterns.iter().map(|p| p.to_string()).collect()
    }

    fn sums(r: &Report) -> Vec<(u64, u64, u64)> {
        r.stacks.iter().map(|s| (s.outstanding_bytes, s.outstanding_allocations, s.allocated_bytes)).collect()
    }

    fn tops(r: &Report) -> Vec<String> {
        r.stacks.iter().map(|s| format!("{}:{}", s.frames[0].file, s.frames[0].line)).collect()
    }

    fn table(r: &Report, group_by: GroupBy) -> String {
        let mut out = Vec::new();
        render(r, Format::Table, group_by, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn handle() -> Frame {
        frame("/srv/app.py", 15, "Service.handle")
    }

    fn main_frame() -> Frame {
        frame("/srv/app.py", 40, "main")
    }

    #[test]
    fn value_enum_names_match_the_cli_contract() {
        let names = |vs: Vec<Option<clap::builder::PossibleValue>>| -> Vec<String> {
            vs.into_iter().map(|v| v.unwrap().get_name().to_string()).collect()
        };
        let group_by = GroupBy::value_variants().iter().map(|v| v.to_possible_value()).collect();
        assert_eq!(names(group_by), ["traceback", "line", "function", "file"]);
        let formats = Format::value_variants().iter().map(|v| v.to_possible_value()).collect();
        assert_eq!(names(formats), ["table", "json", "folded", "svg", "pprof"]);
        assert_eq!(GroupBy::default(), GroupBy::Traceback);
        assert_eq!(Format::default(), Format::Table);
    }

    #[test]
    fn traceback_merges_identical_stacks_and_sorts() {
        let other = frame("/srv/other.py", 3, "helper");
        let mut again = stack(30, 2, 40, vec![handle(), main_frame()]);
        again.truncated = true;
        let r = report(vec![
            stack(50, 1, 50, vec![other.clone()]),
            stack(100, 1, 200, vec![handle(), main_frame()]),
            again,
            // Same outstanding as `other`, more allocated: ranks before it.
            stack(50, 1, 90, vec![frame("/srv/z.py", 1, "z")]),
            // Same outstanding and allocated as `other`: frames decide (a.py < other.py).
            stack(50, 1, 50, vec![frame("/srv/a.py", 9, "a")]),
        ]);
        let shaped = shape(&r, &opts(GroupBy::Traceback)).unwrap();
        assert_eq!(sums(&shaped), [(130, 3, 240), (50, 1, 90), (50, 1, 50), (50, 1, 50)]);
        assert_eq!(shaped.stacks[0].frames, [handle(), main_frame()]);
        assert!(shaped.stacks[0].truncated, "truncated is any of the parts");
        assert_eq!(tops(&shaped)[1..], ["/srv/z.py:1", "/srv/a.py:9", "/srv/other.py:3"]);
        assert!(!shaped.stacks[1].truncated);
        // Stacks with the same frames but a different caller stay apart.
        let split = report(vec![
            stack(10, 1, 10, vec![handle(), main_frame()]),
            stack(10, 1, 10, vec![handle(), frame("/srv/cli.py", 2, "run")]),
        ]);
        assert_eq!(shape(&split, &opts(GroupBy::Traceback)).unwrap().stacks.len(), 2);
        // Totals describe the whole trace and are not recomputed.
        assert_eq!(shaped.totals, r.totals);
        assert_eq!(shaped.python, r.python);
        assert_eq!((shaped.pid, shaped.duration_s), (r.pid, r.duration_s));
    }

    #[test]
    fn line_groups_on_file_and_line_of_the_innermost_frame() {
        let r = report(vec![
            stack(10, 1, 10, vec![frame("/a.py", 10, "f"), frame("/main.py", 1, "<module>")]),
            stack(70, 7, 80, vec![frame("/a.py", 10, "g"), frame("/other.py", 2, "run")]),
            stack(60, 2, 60, vec![frame("/a.py", 20, "f")]),
            stack(5, 1, 5, vec![frame("/b.py", 10, "f")]),
        ]);
        let shaped = shape(&r, &opts(GroupBy::Line)).unwrap();
        assert_eq!(tops(&shaped), ["/a.py:10", "/a.py:20", "/b.py:10"]);
        assert_eq!(sums(&shaped), [(80, 8, 90), (60, 2, 60), (5, 1, 5)]);
        assert!(shaped.stacks.iter().all(|s| s.frames.len() == 1));
        // The name shown is that of the largest contributor.
        assert_eq!(shaped.stacks[0].frames[0].qualname, "g");
    }

    #[test]
    fn function_groups_on_file_and_qualname_and_shows_the_largest_line() {
        let r = report(vec![
            stack(10, 1, 10, vec![frame("/a.py", 10, "C.f"), frame("/m.py", 1, "x")]),
            stack(50, 5, 50, vec![frame("/a.py", 12, "C.f")]),
            stack(40, 1, 40, vec![frame("/b.py", 12, "C.f")]),
            stack(30, 1, 30, vec![frame("/a.py", 30, "D.f")]),
        ]);
        let shaped = shape(&r, &opts(GroupBy::Function)).unwrap();
        assert_eq!(sums(&shaped), [(60, 6, 60), (40, 1, 40), (30, 1, 30)]);
        assert_eq!(tops(&shaped), ["/a.py:12", "/b.py:12", "/a.py:30"]);
        assert_eq!(shaped.stacks[0].frames, [frame("/a.py", 12, "C.f")]);
        // Equal contributors: the result does not depend on input order.
        let a = stack(10, 1, 10, vec![frame("/a.py", 3, "f")]);
        let b = stack(10, 1, 10, vec![frame("/a.py", 7, "f")]);
        let one = shape(&report(vec![a.clone(), b.clone()]), &opts(GroupBy::Function)).unwrap();
        let two = shape(&report(vec![b, a]), &opts(GroupBy::Function)).unwrap();
        assert_eq!(one.stacks, two.stacks);
        assert_eq!(one.stacks[0].frames[0].line, 3);
    }

    #[test]
    fn file_groups_on_the_innermost_file() {
        let r = report(vec![
            stack(10, 1, 10, vec![frame("/a.py", 10, "f"), frame("/b.py", 1, "x")]),
            stack(20, 2, 30, vec![frame("/a.py", 99, "g")]),
            stack(25, 1, 25, vec![frame("/b.py", 5, "h")]),
        ]);
        let shaped = shape(&r, &opts(GroupBy::File)).unwrap();
        assert_eq!(sums(&shaped), [(30, 3, 40), (25, 1, 25)]);
        let f = &shaped.stacks[0].frames;
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].file.as_str(), f[0].line, f[0].function.as_str(), f[0].qualname.as_str()),
            ("/a.py", 0, "", "")
        );
        assert_eq!(shaped.stacks[1].frames[0].file, "/b.py");
    }

    #[test]
    fn include_matches_any_frame_and_bare_names_match_the_basename() {
        let lib = frame("/usr/lib/python3.12/json/encoder.py", 200, "JSONEncoder.encode");
        let r = report(vec![
            stack(100, 1, 100, vec![lib.clone(), handle()]),
            stack(50, 1, 50, vec![lib.clone()]),
        ]);
        let with = |include: &[&str]| ReportOptions { include: strings(include), ..ReportOptions::default() };
        // Basename match, on an outer frame; the stack keeps all its frames.
        let shaped = shape(&r, &with(&["app.py"])).unwrap();
        assert_eq!(shaped.stacks.len(), 1);
        assert_eq!(shaped.stacks[0].frames, [lib.clone(), handle()]);
        // Whole-path globs; `*` crosses '/' as in fnmatch.
        assert_eq!(shape(&r, &with(&["/srv/*"])).unwrap().stacks.len(), 1);
        assert_eq!(shape(&r, &with(&["*.py"])).unwrap().stacks.len(), 2);
        assert_eq!(shape(&r, &with(&["**/json/*.py"])).unwrap().stacks.len(), 2);
        // A pattern with '/' is not tried on the basename, so it must match the whole path.
        assert_eq!(shape(&r, &with(&["srv/app.py"])).unwrap().stacks.len(), 0);
        assert_eq!(shape(&r, &with(&["*/srv/app.py"])).unwrap().stacks.len(), 1);
        // Several patterns: any of them.
        assert_eq!(shape(&r, &with(&["nope.py", "encoder.py"])).unwrap().stacks.len(), 2);

        let filter = FrameFilter::new(&strings(&["app.py"]), &strings(&["*/vendor/*"])).unwrap();
        assert!(filter.keeps("/srv/app.py"));
        assert!(filter.keeps("app.py"));
        assert!(!filter.keeps("/srv/app.pyc"));
        assert!(!filter.keeps("/srv/vendor/app.py"));
        let none = FrameFilter::new(&[], &[]).unwrap();
        assert!(none.keeps("/anything.py"));
    }

    #[test]
    fn exclude_attributes_to_the_nearest_kept_caller() {
        let encoder = frame("/venv/lib/site-packages/simplejson/encoder.py", 300, "encode");
        let decoder = frame("/venv/lib/site-packages/simplejson/decoder.py", 10, "decode");
        let r = report(vec![
            stack(100, 1, 100, vec![encoder.clone(), handle(), main_frame()]),
            stack(40, 4, 40, vec![decoder.clone(), encoder.clone(), handle(), main_frame()]),
            // Only library frames: dropped once they are excluded.
            stack(1000, 1, 1000, vec![decoder.clone()]),
        ]);
        let exclude = |group_by| ReportOptions {
            group_by,
            exclude: strings(&["*/site-packages/*"]),
            ..ReportOptions::default()
        };
        let shaped = shape(&r, &exclude(GroupBy::Traceback)).unwrap();
        assert_eq!(sums(&shaped), [(140, 5, 140)]);
        assert_eq!(shaped.stacks[0].frames, [handle(), main_frame()]);
        // The dropped stack is said, with its bytes; without filters nothing is.
        assert!(
            shaped.python.notes.iter().any(|n| n
                == "--include/--exclude left out 1 stack holding 1000 B outstanding (counted in the totals)"),
            "{:?}",
            shaped.python.notes
        );
        let unfiltered = shape(&r, &opts(GroupBy::Line)).unwrap();
        assert!(!unfiltered.python.notes.iter().any(|n| n.starts_with("--include/--exclude")));
        let by_line = shape(&r, &exclude(GroupBy::Line)).unwrap();
        assert_eq!(tops(&by_line), ["/srv/app.py:15"]);
        // Without the exclude, the library line leads.
        assert_eq!(tops(&shape(&r, &opts(GroupBy::Line)).unwrap())[0], decoder.file.clone() + ":10");
        // Basename rule for excludes too; the include is checked on the frames that remain.
        let both = ReportOptions {
            include: strings(&["encoder.py", "app.py"]),
            exclude: strings(&["encoder.py"]),
            ..ReportOptions::default()
        };
        let shaped = shape(&r, &both).unwrap();
        assert_eq!(sums(&shaped), [(100, 1, 100), (40, 4, 40)]);
        assert_eq!(shaped.stacks[1].frames[..2], [decoder.clone(), handle()]);
        let only_encoder = ReportOptions {
            include: strings(&["encoder.py"]),
            exclude: strings(&["encoder.py"]),
            ..ReportOptions::default()
        };
        assert!(shape(&r, &only_encoder).unwrap().stacks.is_empty());
    }

    #[test]
    fn bad_globs_are_errors_that_name_the_pattern() {
        let err =
            FrameFilter::new(&strings(&["ok.py", "[abc"]), &[]).err().expect("unclosed class must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("[abc") && msg.contains("--include"), "{msg}");
        let bad = ReportOptions { exclude: strings(&["{a,b"]), ..ReportOptions::default() };
        let msg = format!("{:#}", shape(&report(vec![]), &bad).unwrap_err());
        assert!(msg.contains("{a,b") && msg.contains("--exclude"), "{msg}");
    }

    #[test]
    fn frames_trims_innermost_after_grouping_and_marks_truncated() {
        let deep = vec![handle(), main_frame(), frame("/srv/app.py", 50, "<module>")];
        let mut cut = stack(5, 1, 5, vec![frame("/srv/x.py", 1, "x")]);
        cut.truncated = true;
        let r = report(vec![
            stack(30, 1, 30, deep.clone()),
            stack(20, 1, 20, deep[..2].to_vec()),
            stack(10, 1, 10, vec![frame("/srv/y.py", 1, "y")]),
            cut,
        ]);
        let two = ReportOptions { frames: Some(2), ..ReportOptions::default() };
        let shaped = shape(&r, &two).unwrap();
        // Grouping used the whole stacks: the first two stay apart, though they now look alike.
        assert_eq!(sums(&shaped), [(30, 1, 30), (20, 1, 20), (10, 1, 10), (5, 1, 5)]);
        assert_eq!(shaped.stacks[0].frames, deep[..2]);
        assert!(shaped.stacks[0].truncated);
        assert_eq!(shaped.stacks[1].frames, deep[..2]);
        assert!(!shaped.stacks[1].truncated, "had exactly 2 frames");
        assert!(!shaped.stacks[2].truncated);
        assert!(shaped.stacks[3].truncated, "was truncated at capture");
        let zero = ReportOptions { frames: Some(0), ..ReportOptions::default() };
        let msg = format!("{:#}", shape(&r, &zero).unwrap_err());
        assert!(msg.contains("--frames"), "{msg}");
    }

    #[test]
    fn top_keeps_the_largest_groups() {
        let r = report(vec![
            stack(10, 1, 10, vec![frame("/a.py", 1, "a")]),
            stack(30, 1, 30, vec![frame("/b.py", 1, "b")]),
            stack(20, 1, 20, vec![frame("/c.py", 1, "c")]),
            stack(0, 0, 500, vec![frame("/d.py", 1, "d")]),
        ]);
        let top = |n| ReportOptions { top: Some(n), ..ReportOptions::default() };
        assert_eq!(tops(&shape(&r, &top(2)).unwrap()), ["/b.py:1", "/c.py:1"]);
        // Zero-outstanding groups do not take a place.
        assert_eq!(shape(&r, &top(10)).unwrap().stacks.len(), 3);
        assert!(shape(&r, &top(0)).unwrap().stacks.is_empty());
    }

    #[test]
    fn zero_outstanding_groups_are_dropped_but_their_allocations_count() {
        let r = report(vec![
            stack(0, 0, 500, vec![frame("/a.py", 1, "f"), frame("/m.py", 1, "x")]),
            stack(0, 0, 700, vec![frame("/freed.py", 3, "g")]),
            stack(8, 1, 8, vec![frame("/a.py", 1, "f"), frame("/m.py", 2, "y")]),
        ]);
        let by_tb = shape(&r, &opts(GroupBy::Traceback)).unwrap();
        assert_eq!(sums(&by_tb), [(8, 1, 8)]);
        // Grouped by line, the freed stack through the same line adds to `allocated_bytes`.
        let by_line = shape(&r, &opts(GroupBy::Line)).unwrap();
        assert_eq!(sums(&by_line), [(8, 1, 508)]);
        assert_eq!(tops(&by_line), ["/a.py:1"]);
    }

    #[test]
    fn stacks_without_python_frames_stay_visible() {
        let r = report(vec![
            stack(100, 1, 100, vec![]),
            stack(50, 2, 50, vec![]),
            stack(70, 1, 70, vec![handle()]),
        ]);
        for group_by in [GroupBy::Traceback, GroupBy::Line, GroupBy::Function, GroupBy::File] {
            let shaped = shape(&r, &opts(group_by)).unwrap();
            assert_eq!(sums(&shaped), [(150, 3, 150), (70, 1, 70)], "{group_by:?}");
            let f = &shaped.stacks[0].frames[0];
            assert_eq!((f.file.as_str(), f.line), ("<native>", 0), "{group_by:?}");
            if group_by != GroupBy::File {
                assert_eq!(f.function, "<no Python frame>");
                assert_eq!(f.qualname, "<no Python frame>");
            }
        }
        // An exclude that does not name them keeps them.
        let exclude = ReportOptions { exclude: strings(&["*/site-packages/*"]), ..ReportOptions::default() };
        assert_eq!(shape(&r, &exclude).unwrap().stacks.len(), 2);
        // They can be selected or hidden by their synthetic file name.
        let include = ReportOptions { include: strings(&["<native>"]), ..ReportOptions::default() };
        assert_eq!(sums(&shape(&r, &include).unwrap()), [(150, 3, 150)]);
        let hide = ReportOptions { exclude: strings(&["<native>"]), ..ReportOptions::default() };
        assert_eq!(sums(&shape(&r, &hide).unwrap()), [(70, 1, 70)]);
        let text = table(&shape(&r, &opts(GroupBy::Traceback)).unwrap(), GroupBy::Traceback);
        assert!(text.contains("#1: <no Python frame>: 150 B outstanding in 3 blocks"), "{text}");
    }

    #[test]
    fn table_names_the_leaking_line_first() {
        let mut leak = stack(1024 * 1229, 1024, 3_565_158, vec![handle(), main_frame()]);
        leak.truncated = true;
        let mut r = report(vec![leak, stack(512, 2, 2048, vec![frame("/srv/db.py", 7, "query")])]);
        r.totals.lost_events = 17;
        let text = table(&shape(&r, &ReportOptions::default()).unwrap(), GroupBy::Traceback);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "pyleak: pid 4242 (python app.py) - Python 3.12.1, traced 12.5s");
        assert_eq!(lines[1], "coverage: partial");
        assert_eq!(lines[2], "note: allocator inlined by PGO: only calls > 512 bytes seen");
        assert_eq!(lines[3], "outstanding 2.9 MiB in 3000 allocations (allocated 9.5 MiB, freed 6.7 MiB)");
        assert_eq!(
            lines[4],
            "WARNING: 17 allocations were not recorded (a BPF map was full); totals exclude them"
        );
        let first = lines.iter().position(|l| l.starts_with("#1: ")).unwrap();
        assert_eq!(
            lines[first],
            "#1: /srv/app.py:15: 1.2 MiB outstanding in 1024 blocks (avg 1.2 KiB), 3.4 MiB allocated"
        );
        assert_eq!(lines[first + 1], "    /srv/app.py:15 in Service.handle");
        assert_eq!(lines[first + 2], "    /srv/app.py:40 in main");
        assert_eq!(lines[first + 3], "    ... (stack truncated)");
        assert!(text.contains(
            "#2: /srv/db.py:7: 512 B outstanding in 2 blocks (avg 256 B), 2.0 KiB allocated\n    /srv/db.py:7 in query\n"
        ));
        assert!(text.is_ascii());
        let one = report(vec![stack(700, 1, 700, vec![frame("/srv/db.py", 7, "query")])]);
        assert!(
            table(&shape(&one, &ReportOptions::default()).unwrap(), GroupBy::Line)
                .contains("#1: /srv/db.py:7: 700 B outstanding in 1 block, 700 B allocated")
        );
        r.totals.lost_events = 0;
        assert!(!table(&r, GroupBy::Traceback).contains("WARNING"));
    }

    #[test]
    fn table_rows_per_grouping() {
        let r = report(vec![stack(2048, 2, 4096, vec![handle(), main_frame()])]);
        let row = |group_by| {
            let text = table(&shape(&r, &opts(group_by)).unwrap(), group_by);
            assert!(!text.contains("    /srv/app.py:40"), "only tracebacks list frames");
            text.lines().find(|l| l.starts_with("#1: ")).unwrap().to_string()
        };
        let stats = "2.0 KiB outstanding in 2 blocks (avg 1.0 KiB), 4.0 KiB allocated";
        assert_eq!(row(GroupBy::Line), format!("#1: /srv/app.py:15: {stats}"));
        assert_eq!(row(GroupBy::Function), format!("#1: /srv/app.py:15 in Service.handle: {stats}"));
        assert_eq!(row(GroupBy::File), format!("#1: /srv/app.py: {stats}"));
    }

    #[test]
    fn table_without_groups_says_so() {
        let mut r = report(vec![]);
        r.totals = Totals::default();
        r.command.clear();
        r.python = PythonInfo::default();
        let text = table(&r, GroupBy::Traceback);
        assert!(text.starts_with("pyleak: pid 4242 - Python unknown, traced 12.5s\n"));
        assert!(text.contains("coverage: unknown\n"));
        assert!(text.ends_with("\nno outstanding allocations seen\n"), "{text}");
        // Outstanding memory that the options filtered away is not hidden behind "none seen".
        let filtered = report(vec![]);
        let text = table(&filtered, GroupBy::Traceback);
        assert!(text.contains(
            "no outstanding allocations seen in the selected stacks (2.9 MiB outstanding overall)"
        ));
    }

    #[test]
    fn program_costs_are_listed_only_when_measured() {
        let mut r = report(vec![stack(2048, 2, 4096, vec![handle(), main_frame()])]);
        let text = table(&r, GroupBy::Line);
        assert!(!text.contains("kernel programs"), "{text}");
        r.kernel_programs = Some(vec![
            ProgramCost { program: "alloc_exit".into(), runs: 2_000_000, run_time_ns: 3_020_000_000 },
            ProgramCost { program: "free_enter".into(), runs: 1_900_000, run_time_ns: 703_000_000 },
        ]);
        let shaped = shape(&r, &opts(GroupBy::Line)).unwrap();
        assert_eq!(shaped.kernel_programs, r.kernel_programs, "shaping keeps them");
        let text = table(&shaped, GroupBy::Line);
        let lines: Vec<&str> =
            text.lines().skip_while(|l| !l.starts_with("kernel programs")).take(3).collect();
        assert_eq!(
            lines,
            [
                "kernel programs: 3.723 s in 3900000 runs (the kernel's accounting; the probes' traps cost extra)",
                "    alloc_exit                  2000000 runs       1510 ns/run     3.020 s",
                "    free_enter                  1900000 runs        370 ns/run     0.703 s",
            ]
        );
        let mut out = Vec::new();
        render(&shaped, Format::Json, GroupBy::Line, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["kernel_programs"][0]["program"], "alloc_exit");
        assert_eq!(v["kernel_programs"][1]["run_time_ns"], 703_000_000);
        assert_eq!(serde_json::from_value::<Report>(v).unwrap(), shaped);
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 400 * 1024), "3.4 MiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(3 << 40), "3072.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "17179869184.0 GiB");
    }

    #[test]
    fn json_round_trips_with_the_contract_field_names() {
        let mut cut = stack(64, 1, 64, vec![frame("/srv/db.py", 7, "Db.query")]);
        cut.truncated = true;
        let mut r = report(vec![stack(1000, 10, 5000, vec![handle(), main_frame()]), cut]);
        r.totals.lost_events = 3;
        let shaped = shape(&r, &ReportOptions::default()).unwrap();
        let mut out = Vec::new();
        render(&shaped, Format::Json, GroupBy::Traceback, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n"));

        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, shaped);

        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&v), ["command", "duration_s", "pid", "python", "stacks", "totals"]);
        assert_eq!(keys(&v["python"]), ["coverage", "executable", "notes", "version"]);
        assert_eq!(
            keys(&v["totals"]),
            ["allocated_bytes", "freed_bytes", "lost_events", "outstanding_allocations", "outstanding_bytes"]
        );
        assert_eq!(v["totals"]["lost_events"], 3);
        let first = &v["stacks"][0];
        assert_eq!(
            keys(first),
            [
                "allocated_allocations",
                "allocated_bytes",
                "frames",
                "outstanding_allocations",
                "outstanding_bytes"
            ]
        );
        assert_eq!(first["outstanding_bytes"], 1000);
        assert_eq!(keys(&first["frames"][0]), ["file", "function", "line", "qualname"]);
        assert_eq!(first["frames"][0]["qualname"], "Service.handle");
        assert_eq!(first["frames"][0]["function"], "handle");
        assert_eq!(first["frames"][0]["file"], "/srv/app.py");
        assert_eq!(first["frames"][0]["line"], 15);
        assert_eq!(v["stacks"][1]["truncated"], true);
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["python"]["version"], "3.12.1");
        assert_eq!(v["duration_s"], 12.54);
    }
}
