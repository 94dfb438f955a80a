//! Where pyleak's probes go in one process: which functions, and on which instruction.
//!
//! Which functions. CPython's public allocator functions (`PyObject_Malloc`, ...) are
//! thunks, `mov ...; jmp *table` (DESIGN.md §3): each jumps through a slot of an allocator
//! table (`PyMemAllocatorEx`: the static `_PyObject`/`_PyMem`/`_PyMem_Raw` tables in 3.8–3.11,
//! `_PyRuntime.allocators` in 3.12+) to the implementation (`_PyObject_Malloc(void *ctx,
//! size_t n)`). A probe on the thunk's first instruction (a `mov`) is single-stepped; the
//! implementations start with `push` or `test; je`, which the kernel emulates. So with the
//! planner on, pyleak reads each thunk's code to find its table slot ([`planner::table_slot`]),
//! reads the slot, and probes the function it points to, when that is one of libpython's own
//! implementations ([`IMPLEMENTATIONS`]); `PyObject_Malloc` and `PyMem_Malloc` then share
//! one probe on `_PyObject_Malloc`, and the wrapper-plus-implementation double trap is gone.
//! Nesting is unchanged: `_PyObject_Malloc` -> `PyMem_RawMalloc` -> `_PyMem_RawMalloc` ->
//! `malloc` still deepens the outermost call's in-flight record (`pyleak-ebpf/src/alloc.rs`).
//!
//! The slot is read from the process (`process_vm_readv`) and named through
//! `/proc/PID/maps`: a table that points outside libpython, or to other code in it (an
//! allocator replaced with `PyMem_SetAllocator`: tracemalloc, `PYTHONMALLOC=debug`, memray),
//! keeps the public entry point, and the report says so. A process started by `pyleak run`
//! is attached before the dynamic linker relocated libpython and before the interpreter set
//! its allocators up, so its tables are read from the file (the relocated default) instead,
//! unless its environment or command line asks for another allocator (`PYTHONMALLOC`,
//! `PYTHONTRACEMALLOC`, `PYTHONDEVMODE`, `-X dev`, `-X tracemalloc`): then the public entry
//! points are probed. Known gap: an allocator installed later that does not call the
//! original one is not seen through the implementations (tracemalloc's and memray's hooks do
//! call it).
//!
//! Which instruction: [`planner::plan`], with what the entry program reads ([`role`]).
//!
//! With the planner off (`--no-planner`), every function is probed on its first
//! instruction at its public entry point, as before the planner existed.
use std::fmt::Write as _;

use iced_x86::Register;

use crate::{
    discovery::{self, Interpreter},
    elf::ElfImage,
    planner::{self, Plan, Role, TableSlot},
    probes::{AllocFn, ProbeSite},
    procmem::ProcMem,
};

/// The allocator implementations a table may point to, per kind (all `(void *ctx, ...)`).
/// The debug hooks (`_PyMem_Debug*`) are not among them: a table pointing there counts as a
/// replaced allocator.
pub const IMPLEMENTATIONS: &[(AllocFn, &[&str])] = &[
    (AllocFn::Malloc, &["_PyObject_Malloc", "_PyMem_RawMalloc"]),
    (AllocFn::Calloc, &["_PyObject_Calloc", "_PyMem_RawCalloc"]),
    (AllocFn::Realloc, &["_PyObject_Realloc", "_PyMem_RawRealloc"]),
    (AllocFn::Free, &["_PyObject_Free", "_PyMem_RawFree"]),
];

/// Bytes of a function the planner decodes at most (it needs the whole function to see jumps
/// back into the first instructions; the allocator functions are well below this).
const MAX_FUNCTION_BYTES: u64 = 64 * 1024;
/// Bytes decoded when the symbol has no size.
const UNSIZED_FUNCTION_BYTES: u64 = 64;

/// One probed function, as `doctor` shows it.
#[derive(Clone, Debug)]
pub struct Row {
    /// The function probed (`_PyObject_Malloc`, or `PyObject_Malloc` itself).
    pub symbol: String,
    /// The public functions this probe covers (`PyObject_Malloc, PyMem_Malloc`).
    pub covers: Vec<&'static str>,
    /// The function's first instruction, as a file offset.
    pub file_offset: u64,
    /// The entry plan.
    pub plan: Plan,
    /// How the function was chosen: "allocator table target" or why the public entry point.
    pub how: String,
}

/// The probe sites of one file.
#[derive(Clone, Debug, Default)]
pub struct SitePlan {
    pub sites: Vec<ProbeSite>,
    pub rows: Vec<Row>,
    /// Functions of the list absent from the file.
    pub missing: Vec<&'static str>,
    /// What the report should say (replaced allocators, the planner switched off).
    pub notes: Vec<String>,
    /// Functions left unprobed because they only call a probed C library function, with
    /// why (for `doctor`).
    pub delegated: Vec<String>,
    /// Raw delegates probed for now because their call is not bound yet (see [`Binding`]):
    /// the session removes each probe once its slot is bound to the C library.
    pub pending: Vec<DelegateSlot>,
}

/// Where a raw delegate's call into the C library goes (see [`RAW_DELEGATES`]), read from
/// its import slot (GOT entry) in the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// To the C library's function, which pyleak probes: the delegate needs no probe.
    Libc,
    /// Not bound yet: the slot still leads to the interpreter's own PLT (lazy binding binds
    /// it at the first call), or holds its unrelocated link-time value (a process attached
    /// before the dynamic linker relocated it: `pyleak run`, or one attached as it execs).
    Pending,
    /// Elsewhere: an allocator preloaded with `LD_PRELOAD` (jemalloc, tcmalloc). The
    /// delegate keeps its probe: nothing else sees its blocks.
    Elsewhere,
}

/// One raw delegate's import slot in the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelegateSlot {
    /// The raw implementation (`_PyMem_RawMalloc`).
    pub implementation: &'static str,
    /// The C function it only calls (`malloc`).
    pub callee: &'static str,
    /// The slot's address in the target.
    pub addr: u64,
}

impl DelegateSlot {
    /// Where the slot leads now, given the interpreter's text and its load bias and the C
    /// library's text (all in the target). An unreadable slot counts as pending.
    pub fn binding(
        &self,
        mem: &ProcMem,
        interp_text: (u64, u64),
        bias: u64,
        libc_text: (u64, u64),
    ) -> Binding {
        match mem.read_u64(self.addr) {
            Ok(target) => classify(target, interp_text, bias, libc_text),
            Err(_) => Binding::Pending,
        }
    }
}

/// [`DelegateSlot::binding`] of a slot holding `target`.
pub fn classify(target: u64, interp_text: (u64, u64), bias: u64, libc_text: (u64, u64)) -> Binding {
    if (libc_text.0..libc_text.1).contains(&target) {
        Binding::Libc
    } else if (interp_text.0..interp_text.1).contains(&target) || target < bias {
        Binding::Pending
    } else {
        Binding::Elsewhere
    }
}

/// Placement choices.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Plan entry sites and probe allocator-table targets (`false`: `--no-planner`).
    pub planner: bool,
    /// The process was attached before its interpreter started (`pyleak run`): read the
    /// allocator tables from the file, not from its memory.
    pub before_init: bool,
    /// The target's C library text `[lo, hi)`, when its malloc family is probed: then
    /// CPython's raw allocator, which only calls that family, needs no probes of its own
    /// (see [`RAW_DELEGATES`]).
    pub libc_text: Option<(u64, u64)>,
}

/// CPython's raw-domain implementations and the C function each one only calls
/// (`Objects/obmalloc.c`, 3.8–3.14: `_PyMem_RawMalloc` is `return malloc(size ? size : 1)`).
/// When the call resolves to the C library's function, which pyleak probes anyway, probing
/// the implementation too adds traps and nothing else: its first instruction is one the
/// kernel single-steps (about 12 µs per call, measured), and its return probe a second trap.
/// A block it allocates is seen at `malloc`; the native-caller check in the kernel knows a
/// return address inside the interpreter is not native code.
pub const RAW_DELEGATES: &[(&str, &str)] = &[
    ("_PyMem_RawMalloc", "malloc"),
    ("_PyMem_RawCalloc", "calloc"),
    ("_PyMem_RawRealloc", "realloc"),
    ("_PyMem_RawFree", "free"),
];

/// The C ABI registers of what each entry program reads, in the program's order.
pub fn abi_values(kind: AllocFn) -> &'static [Register] {
    match kind {
        AllocFn::Malloc | AllocFn::Free => &[Register::RDI],
        AllocFn::Calloc | AllocFn::Realloc => &[Register::RDI, Register::RSI],
        AllocFn::PosixMemalign => &[Register::RDI, Register::RDX],
        AllocFn::AlignedAlloc => &[Register::RSI],
        AllocFn::Finalize => &[],
    }
}

/// What the entry program of `kind` reads at a function whose arguments follow a context
/// pointer (`with_ctx`: an allocator implementation) or not.
pub fn role(kind: AllocFn, with_ctx: bool) -> Role {
    const ARGS: [Register; 6] =
        [Register::RDI, Register::RSI, Register::RDX, Register::RCX, Register::R8, Register::R9];
    let values = abi_values(kind)
        .iter()
        .map(|r| {
            let i = ARGS.iter().position(|a| a == r).expect("an argument register");
            if with_ctx { ARGS[i + 1] } else { ARGS[i] }
        })
        .collect();
    Role { values, return_probe: kind.has_return_probe(), reads_stack: false }
}

/// The sites for CPython's allocator functions in the interpreter of `pid`.
pub fn interpreter_sites(
    pid: u32,
    interp: &Interpreter,
    functions: &[(&'static str, AllocFn)],
    opts: Options,
) -> SitePlan {
    if !opts.planner {
        let mut plan = public_sites(&interp.image, functions, false);
        plan.notes.push(
            "probe-site planner off (--no-planner): every probe is on its function's first instruction, at the public entry points".into(),
        );
        return plan;
    }
    let image = &interp.image;
    let configured = if opts.before_init { configured_allocator(pid) } else { None };
    let maps = discovery::read_maps(pid).unwrap_or_default();
    let mut out = SitePlan::default();
    let mut replaced = Vec::new();
    for &(name, kind) in functions {
        let name = if kind == AllocFn::Finalize { finalize_point(image) } else { name };
        let Some(public) = image.symbol(name) else {
            if kind != AllocFn::Finalize {
                out.missing.push(name);
            }
            continue;
        };
        let target = match IMPLEMENTATIONS.iter().find(|(k, _)| *k == kind) {
            None => Err(Fallback::NotInTable),
            Some((_, candidates)) => match &configured {
                Some(why) => Err(Fallback::Replaced(why.clone())),
                None => table_target(pid, interp, &maps, public.vaddr, public.size, opts.before_init)
                    .and_then(|vaddr| implementation_at(image, candidates, vaddr, &interp.path)),
            },
        };
        let delegate = target.as_ref().ok().and_then(|i| delegate_slot(interp, i, opts));
        let libc_text = opts.libc_text.unwrap_or_default();
        let binding = delegate.map(|d| d.binding(&ProcMem::new(pid), interp.text, interp.bias, libc_text));
        match target {
            Ok(implementation) if binding == Some(Binding::Libc) => {
                out.delegated.push(format!(
                    "{name} -> {implementation}: not probed: it only calls {}, bound to the C library's, which is probed (one probe less per call, and its first instruction is often single-stepped)",
                    delegate.map_or("", |d| d.callee)
                ));
            }
            Ok(implementation) => {
                if let (Some(d), Some(Binding::Pending)) = (delegate, binding) {
                    out.pending.push(d);
                }
                let sym = image.symbol(implementation).expect("found above");
                let how = "allocator table target".to_string();
                add(&mut out, image, name, implementation, kind, sym.vaddr, sym.size, true, how);
            }
            Err(fallback) => {
                let how = match &fallback {
                    Fallback::NotInTable => "public entry point".to_string(),
                    Fallback::NotThunk(why) | Fallback::Unnamed(why) | Fallback::Replaced(why) => {
                        format!("public entry point: {why}")
                    }
                };
                if let Fallback::Replaced(why) = fallback {
                    replaced.push(format!("{name}: {why}"));
                }
                add(&mut out, image, name, name, kind, public.vaddr, public.size, false, how);
            }
        }
    }
    if !replaced.is_empty() {
        out.notes.push(format!(
            "probing public allocator entry points instead of the allocator table's implementations (slower per call): {}",
            replaced.join("; ")
        ));
    }
    out
}

/// The import slot through which `implementation` calls the C library (see
/// [`RAW_DELEGATES`]), or `None`: it is not a raw delegate, the C library is not probed, or
/// the interpreter imports the callee through no slot.
fn delegate_slot(interp: &Interpreter, implementation: &str, opts: Options) -> Option<DelegateSlot> {
    let &(implementation, callee) = RAW_DELEGATES.iter().find(|(f, _)| *f == implementation)?;
    opts.libc_text?;
    let slot = interp.image.import_slot(callee)?;
    Some(DelegateSlot { implementation, callee, addr: interp.bias.wrapping_add(slot) })
}

/// The sites for `functions` in a file where each is probed at its own symbol (the C
/// library), planned or not. Aliases (glibc's memalign and aligned_alloc) are probed once.
pub fn public_sites(image: &ElfImage, functions: &[(&'static str, AllocFn)], planner: bool) -> SitePlan {
    let mut out = SitePlan::default();
    for &(name, kind) in functions {
        let name = if kind == AllocFn::Finalize { finalize_point(image) } else { name };
        match image.symbol(name) {
            Some(sym) => {
                if planner {
                    add(
                        &mut out,
                        image,
                        name,
                        name,
                        kind,
                        sym.vaddr,
                        sym.size,
                        false,
                        "public entry point".into(),
                    );
                } else if let Some(file_offset) = image.vaddr_to_offset(sym.vaddr) {
                    let row = Row {
                        symbol: name.to_string(),
                        covers: vec![name],
                        file_offset,
                        plan: unplanned(kind),
                        how: "public entry point".into(),
                    };
                    add_site(&mut out, row, kind, 0);
                }
            }
            None if kind == AllocFn::Finalize => {} // only sharpens end-of-run numbers
            None => out.missing.push(name),
        }
    }
    out
}

/// The first-instruction site with the C ABI registers (the planner off).
fn unplanned(kind: AllocFn) -> Plan {
    Plan {
        offset: 0,
        instruction: String::new(),
        emulated: false,
        values: abi_values(kind).to_vec(),
        reason: "the planner is off".into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn add(
    out: &mut SitePlan,
    image: &ElfImage,
    covers: &'static str,
    symbol: &str,
    kind: AllocFn,
    vaddr: u64,
    size: u64,
    with_ctx: bool,
    how: String,
) {
    let Some(file_offset) = image.vaddr_to_offset(vaddr) else { return };
    let len = if size == 0 { UNSIZED_FUNCTION_BYTES } else { size.min(MAX_FUNCTION_BYTES) };
    let code = image.read_at(vaddr, len as usize).or_else(|| image.read_at(vaddr, 16)).unwrap_or_default();
    let plan = planner::plan(code, vaddr, &role(kind, with_ctx));
    let cookie = planner::cookie(&plan.values);
    add_site(
        out,
        Row { symbol: symbol.to_string(), covers: vec![covers], file_offset, plan, how },
        kind,
        cookie,
    );
}

fn add_site(out: &mut SitePlan, row: Row, kind: AllocFn, cookie: u64) {
    if let Some(same) = out.rows.iter_mut().find(|r| r.file_offset == row.file_offset) {
        same.covers.extend(row.covers); // PyMem_Malloc shares _PyObject_Malloc; memalign = aligned_alloc
        return;
    }
    out.sites.push(ProbeSite {
        function: row.symbol.clone(),
        kind,
        file_offset: row.file_offset,
        entry_offset: row.file_offset + row.plan.offset,
        cookie,
    });
    out.rows.push(row);
}

/// Where counting stops at shutdown (see `PyTarget::finalizing`): the function
/// `Py_FinalizeEx` calls once the program is over, its non-daemon threads joined
/// (`wait_for_thread_shutdown`) and its atexit handlers run, just before it collects garbage
/// and clears the modules. The first of [`FINALIZE_POINTS`] the interpreter has, else the
/// entry of `Py_FinalizeEx`, which comes before the threads are joined: a thread still
/// working when the main thread returns is not counted from then on.
pub fn finalize_point(image: &ElfImage) -> &'static str {
    FINALIZE_POINTS.iter().copied().find(|name| image.symbol(name).is_some()).unwrap_or("Py_FinalizeEx")
}

/// In order: `PyOS_FiniInterrupts` (3.8, exported; removed in 3.9), then
/// `_PyThreadState_DeleteExcept` (3.9–3.12, exported; 3.8 has it too, but calls it only
/// after fork), then `_PyThreadState_RemoveExcept` (3.13+, a local symbol: builds that keep
/// their symbol table). The last two also run in a forked child, after fork: another
/// process, which the kernel side does not count anyway.
const FINALIZE_POINTS: &[&str] =
    &["PyOS_FiniInterrupts", "_PyThreadState_DeleteExcept", "_PyThreadState_RemoveExcept"];

/// Why a public allocator function is probed itself rather than its table's target.
enum Fallback {
    /// It is not an allocator-table function (`Py_FinalizeEx`).
    NotInTable,
    /// It is not a thunk through the table (an LTO build inlined the allocator into it).
    NotThunk(String),
    /// The table points to code this file cannot name (a stripped build).
    Unnamed(String),
    /// The table points elsewhere (a replaced allocator), the target will set up another
    /// allocator, or the table could not be read: worth a note in the report.
    Replaced(String),
}

/// Which of `candidates` starts at `vaddr`.
fn implementation_at(
    image: &ElfImage,
    candidates: &[&'static str],
    vaddr: u64,
    path: &str,
) -> Result<&'static str, Fallback> {
    if let Some(found) = candidates.iter().find(|c| image.symbol(c).is_some_and(|s| s.vaddr == vaddr)) {
        return Ok(found);
    }
    if candidates.iter().all(|c| image.symbol(c).is_none()) {
        return Err(Fallback::Unnamed(format!(
            "its allocator table points to {vaddr:#x}, which {path} has no symbols to name (stripped)"
        )));
    }
    Err(Fallback::Replaced(match image.function_at(vaddr) {
        Some((f, 0)) => format!(
            "its allocator table points to {f} (a replaced allocator: tracemalloc, PYTHONMALLOC=debug, memray, ...)"
        ),
        _ => format!("its allocator table points to {vaddr:#x} in {path} (a replaced allocator)"),
    }))
}

/// The link-time address of the function that the public allocator function at `vaddr`
/// jumps to through its allocator table, or why there is none to use.
fn table_target(
    pid: u32,
    interp: &Interpreter,
    maps: &[discovery::Mapping],
    vaddr: u64,
    size: u64,
    before_init: bool,
) -> Result<u64, Fallback> {
    let image = &interp.image;
    let code = image.read_at(vaddr, size.clamp(16, 256) as usize).or_else(|| image.read_at(vaddr, 16));
    let slot = code.and_then(|c| planner::table_slot(c, vaddr)).ok_or_else(|| {
        Fallback::NotThunk(
            "not a thunk through the allocator table (the allocator is inlined into it: an LTO build)".into(),
        )
    })?;
    if before_init {
        // The relocated default, from the file (the process's copy is not relocated yet).
        let slot = match slot {
            TableSlot::At(a) => a,
            TableSlot::Through { pointer, disp } => image
                .pointer_at(pointer)
                .ok_or_else(|| {
                    Fallback::Replaced(format!("no relocation for the table pointer at {pointer:#x}"))
                })?
                .wrapping_add(disp),
        };
        return image
            .pointer_at(slot)
            .ok_or_else(|| Fallback::Replaced(format!("no relocation for the table slot at {slot:#x}")));
    }
    // C: the slot's function pointer, e.g. _PyRuntime.allocators.standard.obj.malloc.
    let mem = ProcMem::new(pid);
    let read = |addr: u64| {
        mem.read_u64(addr)
            .map_err(|e| Fallback::Replaced(format!("reading the allocator table of pid {pid}: {e}")))
    };
    let slot = match slot {
        TableSlot::At(a) => interp.bias.wrapping_add(a),
        TableSlot::Through { pointer, disp } => read(interp.bias.wrapping_add(pointer))?.wrapping_add(disp),
    };
    let target = read(slot)?;
    let Some(m) = maps.iter().find(|m| target >= m.start && target < m.end) else {
        return Err(Fallback::Replaced(format!(
            "its allocator table points to {target:#x}, outside any mapping"
        )));
    };
    if m.path != interp.path {
        let place = if m.path.is_empty() { "anonymous memory".to_string() } else { m.path.clone() };
        return Err(Fallback::Replaced(format!(
            "its allocator table points into {place} (a replaced allocator, such as memray's)"
        )));
    }
    image.offset_to_vaddr(target - m.start + m.offset).ok_or_else(|| {
        Fallback::Replaced(format!(
            "its allocator table points to {target:#x}, outside {}'s segments",
            interp.path
        ))
    })
}

/// Why the allocator of a process attached before its interpreter started will not be the
/// default one, from its environment and command line; `None` when nothing asks for another.
fn configured_allocator(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    allocator_request(&environ, &cmdline)
}

fn allocator_request(environ: &[u8], cmdline: &[u8]) -> Option<String> {
    for var in environ.split(|&b| b == 0) {
        let var = String::from_utf8_lossy(var);
        let Some((key, value)) = var.split_once('=') else { continue };
        let asks = match key {
            "PYTHONMALLOC" => !value.is_empty() && value != "pymalloc",
            "PYTHONTRACEMALLOC" | "PYTHONDEVMODE" => !value.is_empty() && value != "0",
            _ => false,
        };
        if asks {
            return Some(format!("the target starts with {key}={value}, which sets up another allocator"));
        }
    }
    let args: Vec<String> =
        cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    for (i, arg) in args.iter().enumerate() {
        let option = match arg.as_str() {
            "-X" => args.get(i + 1).map(String::as_str),
            a => a.strip_prefix("-X"),
        };
        if let Some(opt) = option
            && (opt == "dev" || opt.starts_with("tracemalloc"))
        {
            return Some(format!("the target starts with -X {opt}, which sets up another allocator"));
        }
    }
    None
}

/// `doctor`'s listing of a plan.
pub fn describe(plan: &SitePlan, out: &mut String) {
    for line in &plan.delegated {
        let _ = writeln!(out, "  {line}");
    }
    for d in &plan.pending {
        let _ = writeln!(
            out,
            "  {}: probed until its call to {} is bound to the C library's (not bound yet: lazy binding); then the probe is removed",
            d.implementation, d.callee
        );
    }
    for row in &plan.rows {
        let covers = row.covers.join(", ");
        let what = if row.symbol == covers { covers.clone() } else { format!("{covers} -> {}", row.symbol) };
        let _ = writeln!(out, "  {what}");
        let instruction = if row.plan.instruction.is_empty() {
            String::new()
        } else {
            format!(" `{}`", row.plan.instruction)
        };
        let _ = writeln!(
            out,
            "      file offset {:#x}+{}{instruction}: {}; {}",
            row.file_offset, row.plan.offset, row.plan.reason, row.how
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::session::{ALLOCATOR_FUNCTIONS, NATIVE_FUNCTIONS};

    #[test]
    fn where_a_raw_delegates_call_leads() {
        // libpython's text, its load bias, and the C library's text, as in a 3.12 process.
        let (interp, bias, libc) =
            ((0x7f00_0010_0000, 0x7f00_0040_0000), 0x7f00_0000_0000, (0x7f10_0002_8000, 0x7f10_001b_d000));
        // Bound by the dynamic linker to glibc's malloc.
        assert_eq!(classify(0x7f10_000a_5120, interp, bias, libc), Binding::Libc);
        // Lazy binding: the slot still leads to libpython's own PLT stub.
        assert_eq!(classify(0x7f00_0010_3036, interp, bias, libc), Binding::Pending);
        // Not relocated yet (pyleak run): the link-time address of that stub, or nothing.
        assert_eq!(classify(0x3036, interp, bias, libc), Binding::Pending);
        assert_eq!(classify(0, interp, bias, libc), Binding::Pending);
        // Bound to another library (jemalloc with LD_PRELOAD).
        assert_eq!(classify(0x7f20_0001_0000, interp, bias, libc), Binding::Elsewhere);
        // The C library's end is not in it.
        assert_eq!(classify(libc.1, interp, bias, libc), Binding::Elsewhere);
    }

    #[test]
    fn roles_shift_past_the_context() {
        assert_eq!(role(AllocFn::Malloc, true).values, [Register::RSI]);
        assert_eq!(role(AllocFn::Realloc, true).values, [Register::RSI, Register::RDX]);
        assert_eq!(role(AllocFn::PosixMemalign, false).values, [Register::RDI, Register::RDX]);
        assert!(role(AllocFn::Calloc, false).return_probe);
        assert!(!role(AllocFn::Free, true).return_probe);
    }

    #[test]
    fn allocator_requests() {
        let env = b"HOME=/root\0PYTHONMALLOC=malloc\0";
        assert!(allocator_request(env, b"python3\0x.py\0").unwrap().contains("PYTHONMALLOC=malloc"));
        assert_eq!(allocator_request(b"PYTHONMALLOC=pymalloc\0PYTHONDEVMODE=\0", b"python3\0"), None);
        assert!(allocator_request(b"", b"python3\0-X\0tracemalloc=5\0x.py\0").is_some());
        assert!(allocator_request(b"", b"python3\0-Xdev\0x.py\0").is_some());
        assert_eq!(allocator_request(b"", b"python3\0-X\0utf8\0x.py\0"), None);
    }

    /// The installed interpreters (pyenv 3.8–3.13 and Debian's LTO python3.11) and the C
    /// library: every planned function gets an emulated site or an explained fallback, and
    /// the pyenv builds' tables resolve (from the file, as for `pyleak run`) to the
    /// implementations. Prints the plans (`cargo test planner -- --nocapture`).
    #[test]
    fn planner_on_the_installed_interpreters() {
        let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
        let mut files: Vec<(String, bool)> = Vec::new();
        for minor in 8..=13 {
            let Ok(dir) = std::fs::read_dir(format!("{root}/versions")) else { break };
            let mut versions: Vec<String> = dir
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.strip_prefix(&format!("3.{minor}.")).is_some_and(|p| p.parse::<u32>().is_ok()))
                .collect();
            versions.sort();
            if let Some(v) = versions.last() {
                files.push((format!("{root}/versions/{v}/lib/libpython3.{minor}.so.1.0"), true));
            }
        }
        files.push(("/usr/bin/python3.11".into(), false));
        let mut tested = 0;
        for (path, pyenv) in &files {
            let Ok(image) = ElfImage::open(Path::new(path)) else {
                eprintln!("planner test: {path} missing; skipped");
                continue;
            };
            tested += 1;
            let interp = Interpreter {
                path: path.clone(),
                host_path: path.into(),
                image,
                bias: 0,
                linkage: discovery::Linkage::Shared,
                version: discovery::PyVersion { major: 3, minor: 0, micro: None },
                text: (0, 0),
                startup_libpython: false,
            };
            // An unused pid: before_init reads the file only (and /proc/PID/environ, absent).
            let opts = Options { planner: true, before_init: true, libc_text: None };
            let plan = interpreter_sites(u32::MAX - 1, &interp, ALLOCATOR_FUNCTIONS, opts);
            let mut text = String::new();
            describe(&plan, &mut text);
            eprintln!("--- {path}\n{text}{:?}", plan.notes);
            check(&plan, path);
            if *pyenv {
                for implementation in
                    ["_PyObject_Malloc", "_PyObject_Free", "_PyMem_RawMalloc", "_PyMem_RawFree"]
                {
                    assert!(
                        plan.rows.iter().any(|r| r.symbol == implementation),
                        "{path}: {implementation} not probed\n{text}"
                    );
                }
                assert!(plan.notes.is_empty(), "{path}: {:?}", plan.notes);
                // The free implementations move past the entry: _PyObject_Free's `test; je`.
                let free = plan.rows.iter().find(|r| r.symbol == "_PyObject_Free").unwrap();
                assert!(free.plan.offset > 0 && free.plan.emulated, "{path}: {free:?}");
            }
        }
        assert!(tested > 0, "no interpreter installed");
        let libc = ElfImage::open(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).expect("glibc");
        let plan = public_sites(&libc, NATIVE_FUNCTIONS, true);
        let mut text = String::new();
        describe(&plan, &mut text);
        eprintln!("--- libc\n{text}");
        check(&plan, "libc");
        let free = plan.rows.iter().find(|r| r.symbol == "free").unwrap();
        assert!(free.plan.emulated, "{free:?}");
    }

    fn check(plan: &SitePlan, path: &str) {
        assert!(!plan.sites.is_empty(), "{path}: nothing planned");
        for (row, site) in plan.rows.iter().zip(&plan.sites) {
            assert!(
                row.plan.emulated || row.plan.reason.contains("kept") || row.plan.reason.contains("fallback"),
                "{path}: {row:?} is neither emulated nor an explained fallback"
            );
            assert_eq!(site.entry_offset, site.file_offset + row.plan.offset);
            if !row.plan.values.is_empty() {
                assert_ne!(site.cookie, 0, "{path}: {row:?}");
            }
        }
    }
}
