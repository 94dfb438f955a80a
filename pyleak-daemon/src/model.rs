//! The user side's data model: what a trace produces once stacks are symbolized.
//!
//! `aggregate` builds these from the kernel maps; `report` groups, filters and renders them;
//! the JSON form is the contract of DESIGN.md §4 (field names must not change).
use serde::{Deserialize, Serialize};

/// One Python frame, symbolized.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// `co_name` (the bare function name; `<module>` for module level).
    pub function: String,
    /// `co_qualname` (3.11+), else the same as `function`.
    pub qualname: String,
    /// `co_filename` as the target sees it.
    pub file: String,
    /// Line being executed in that frame; 0 when the line table has no entry for it.
    pub line: u32,
}

/// A frame for tests: at `file:line` in `qualname`, whose last dotted part is the function
/// name (`Service.handle` -> `handle`).
#[cfg(test)]
pub fn test_frame(file: &str, line: u32, qualname: &str) -> Frame {
    let function = qualname.rsplit('.').next().unwrap_or(qualname).to_string();
    Frame { function, qualname: qualname.to_string(), file: file.to_string(), line }
}

impl Frame {
    /// A frame that could not be symbolized: its code object was freed (or replaced at the
    /// same address) before pyleak read it, or was unreadable.
    pub fn unknown(code_addr: u64) -> Frame {
        Frame {
            function: format!("<unknown code {code_addr:#x}>"),
            qualname: format!("<unknown code {code_addr:#x}>"),
            file: "<unknown>".to_string(),
            line: 0,
        }
    }
}

/// Outstanding allocations of one process that share one Python stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackStats {
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Bytes allocated by this stack since tracing began, freed or not.
    pub allocated_bytes: u64,
    /// Allocations made by this stack since tracing began, freed or not.
    #[serde(default)]
    pub allocated_allocations: u64,
    /// Innermost first: `frames[0]` is the line that allocated.
    pub frames: Vec<Frame>,
    /// The capture stopped at the depth limit; outer frames are missing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// For memory asked of the C library directly (ctypes, a C extension's malloc): the C
    /// function that called the allocator, the leaf below `frames[0]`. Absent for memory
    /// from the Python allocators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_caller: Option<NativeFrame>,
}

/// A native code location: the function containing a return address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NativeFrame {
    /// The symbol containing the address, or the file offset in hex when none does.
    pub function: String,
    /// The mapped file, as the target names it.
    pub library: String,
    /// Bytes from the function's start to the return address (0 when unnamed).
    pub offset: u64,
}

impl std::fmt::Display for NativeFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lib = self.library.rsplit('/').next().unwrap_or(&self.library);
        if self.offset > 0 {
            write!(f, "{}+{:#x} ({lib})", self.function, self.offset)
        } else {
            write!(f, "{} ({lib})", self.function)
        }
    }
}

/// What pyleak knows about the traced interpreter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonInfo {
    /// "3.12.1".
    pub version: String,
    /// The file holding the interpreter (libpython or the executable).
    pub executable: String,
    /// "full" when every allocation path is probed, "partial" otherwise (see `notes`).
    pub coverage: String,
    /// Plain-language facts about what is and is not seen.
    pub notes: Vec<String>,
}

/// Whole-trace totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub allocated_bytes: u64,
    pub freed_bytes: u64,
    pub outstanding_bytes: u64,
    pub outstanding_allocations: u64,
    /// Allocations that could not be recorded (a full map); the totals exclude them.
    pub lost_events: u64,
}

/// A complete report for one process (the JSON contract of DESIGN.md §4).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub pid: u32,
    pub command: String,
    pub python: PythonInfo,
    pub duration_s: f64,
    pub totals: Totals,
    /// Sorted by `outstanding_bytes`, descending.
    pub stacks: Vec<StackStats>,
    /// Present when allocations were sampled (`--sample-bytes`): the mean sampling interval
    /// in bytes. Every byte and count in the report is then an unbiased estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_bytes: Option<u64>,
    /// Present with `--bpf-stats`: what pyleak's kernel programs cost this process so far,
    /// per program that ran (the kernel's own run-time statistics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_programs: Option<Vec<ProgramCost>>,
}

/// One of pyleak's kernel programs, as the kernel accounts for it (`BPF_ENABLE_STATS`): how
/// often it ran and the time spent in it, the probe's trap excluded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramCost {
    /// The program's name in pyleak's object (`alloc_exit`, `free_enter`, ...).
    pub program: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgramCost {
    /// Mean time per run in nanoseconds (0 if it never ran).
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 { 0.0 } else { self.run_time_ns as f64 / self.runs as f64 }
    }
}
