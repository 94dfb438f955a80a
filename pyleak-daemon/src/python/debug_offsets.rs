//! CPython's own description of its layout: `_Py_DebugOffsets`, the first member of
//! `_PyRuntime` from 3.13 on (`Include/internal/pycore_debug_offsets.h`, filled in by
//! `_Py_DebugOffsets_INIT` with `offsetof` over the interpreter's real structs).
//!
//! For 3.13 and later pyleak takes its struct offsets from there instead of a hand table: the
//! process says where `tstate->current_frame`, `frame->instr_ptr` or `code->co_qualname` are.
//! What this module owns:
//!
//! - **Reading it** ([`read`]): from the live process at `_PyRuntime`'s runtime address
//!   (`process_vm_readv`), else from the bytes the ELF file initializes `_PyRuntime` with
//!   (they are a compile-time constant; the process is only preferred because it is what
//!   runs).
//! - **Decoding it** ([`DebugOffsets::parse`]): the struct is a cookie ("xdebugpy"), the
//!   `PY_VERSION_HEX` of the build, then nested `{size, offsets...}` blocks of `uint64_t`.
//!   Its own layout changes between minor versions (3.14 inserts `threads_main`,
//!   `code_object_generation`, `stackpointer`, `co_tlbc`, `set_object`, ...), so there is one
//!   reader layout per minor version ([`READERS`]), chosen by the `version` field after the
//!   cookie is checked. Each is the C declaration's field list, in order; every slot is 8
//!   bytes, so a field's offset is its index times 8.
//! - **Turning it into a [`Layout`]** ([`layout`]): the debug offsets describe structs, not
//!   how the interpreter uses them. Which thread-local holds the thread state, where the
//!   PyGILState pthread key is, which frame owners are shims, whether `f_executable` is
//!   tagged, the size of a compact non-ASCII string: those come from a small per-version
//!   [`Remainder`] table, from the matching CPython headers.
//!
//! 3.13 is checked end to end: the layout built from a live 3.13.0 process equals the
//! hand-written, DWARF-checked `LAYOUT_3_13`. 3.14 could not be run here: its reader layout
//! and remainder row come from the v3.14.0 headers (via py-spy's bindgen output), and a test
//! runs the whole user side over a byte image laid out as 3.14 lays it out.
use std::io;

use anyhow::{Context, Result, bail};
use pyleak_common::{ABSENT, INSTR_PTR};

use super::{
    layout::{InstrUnit, Layout, TstateSource},
    linetable::LineTableFormat,
};
use crate::{discovery::Interpreter, elf::ElfImage, procmem::ProcMem};

/// `_Py_Debug_Cookie`.
pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// Cookie, `version` and `free_threaded`: the part every minor version shares.
const HEADER_LEN: usize = 24;

/// Why `_Py_DebugOffsets` could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DebugOffsetsError {
    #[error("_Py_DebugOffsets is truncated: {len} bytes, {need} needed")]
    Truncated { len: usize, need: usize },
    #[error(
        "_PyRuntime does not start with _Py_DebugOffsets: its cookie is {found:?}, not \"xdebugpy\" (not CPython 3.13+, or not CPython)"
    )]
    BadCookie { found: String },
    #[error(
        "_Py_DebugOffsets says Python {major}.{minor} (version {version:#x}), which pyleak has no reader layout for (known: {known})"
    )]
    UnknownVersion { version: u64, major: u64, minor: u64, known: String },
    #[error("_Py_DebugOffsets has no field {field} in its 3.{minor} reader layout")]
    MissingField { minor: u8, field: &'static str },
}

/// How one minor version lays out `_Py_DebugOffsets`: the C declaration's fields in order,
/// `group.field` for the nested blocks ("cookie" is the one 8-byte `char[8]`).
pub struct ReaderLayout {
    pub minor: u8,
    pub fields: &'static [&'static str],
}

impl ReaderLayout {
    /// Size of the whole struct in bytes.
    pub const fn size(&self) -> usize {
        self.fields.len() * 8
    }

    /// Byte offset of a field in the struct.
    pub fn offset_of(&self, field: &'static str) -> Result<usize, DebugOffsetsError> {
        self.fields
            .iter()
            .position(|f| *f == field)
            .map(|i| i * 8)
            .ok_or(DebugOffsetsError::MissingField { minor: self.minor, field })
    }
}

/// 3.13 (v3.13.0 `pycore_debug_offsets.h`; 584 bytes, checked against the 3.13.0 build).
pub const READER_3_13: ReaderLayout = ReaderLayout {
    minor: 13,
    fields: &[
        "cookie",
        "version",
        "free_threaded",
        "runtime_state.size",
        "runtime_state.finalizing",
        "runtime_state.interpreters_head",
        "interpreter_state.size",
        "interpreter_state.id",
        "interpreter_state.next",
        "interpreter_state.threads_head",
        "interpreter_state.gc",
        "interpreter_state.imports_modules",
        "interpreter_state.sysdict",
        "interpreter_state.builtins",
        "interpreter_state.ceval_gil",
        "interpreter_state.gil_runtime_state",
        "interpreter_state.gil_runtime_state_enabled",
        "interpreter_state.gil_runtime_state_locked",
        "interpreter_state.gil_runtime_state_holder",
        "thread_state.size",
        "thread_state.prev",
        "thread_state.next",
        "thread_state.interp",
        "thread_state.current_frame",
        "thread_state.thread_id",
        "thread_state.native_thread_id",
        "thread_state.datastack_chunk",
        "thread_state.status",
        "interpreter_frame.size",
        "interpreter_frame.previous",
        "interpreter_frame.executable",
        "interpreter_frame.instr_ptr",
        "interpreter_frame.localsplus",
        "interpreter_frame.owner",
        "code_object.size",
        "code_object.filename",
        "code_object.name",
        "code_object.qualname",
        "code_object.linetable",
        "code_object.firstlineno",
        "code_object.argcount",
        "code_object.localsplusnames",
        "code_object.localspluskinds",
        "code_object.co_code_adaptive",
        "pyobject.size",
        "pyobject.ob_type",
        "type_object.size",
        "type_object.tp_name",
        "type_object.tp_repr",
        "type_object.tp_flags",
        "tuple_object.size",
        "tuple_object.ob_item",
        "tuple_object.ob_size",
        "list_object.size",
        "list_object.ob_item",
        "list_object.ob_size",
        "dict_object.size",
        "dict_object.ma_keys",
        "dict_object.ma_values",
        "float_object.size",
        "float_object.ob_fval",
        "long_object.size",
        "long_object.lv_tag",
        "long_object.ob_digit",
        "bytes_object.size",
        "bytes_object.ob_size",
        "bytes_object.ob_sval",
        "unicode_object.size",
        "unicode_object.state",
        "unicode_object.length",
        "unicode_object.asciiobject_size",
        "gc.size",
        "gc.collecting",
    ],
};

/// 3.14 (v3.14.0 `pycore_debug_offsets.h`, as py-spy's bindgen `v3_14_0.rs` shows it; 760
/// bytes; untested on a build). New against 3.13: `interpreter_state.threads_main`,
/// `.code_object_generation`, `.tlbc_generation`, `interpreter_frame.stackpointer`,
/// `.tlbc_index`, `code_object.co_tlbc`, and the `set_object`, `gen_object`, `llist_node`
/// and `debugger_support` blocks (PEP 768).
pub const READER_3_14: ReaderLayout = ReaderLayout {
    minor: 14,
    fields: &[
        "cookie",
        "version",
        "free_threaded",
        "runtime_state.size",
        "runtime_state.finalizing",
        "runtime_state.interpreters_head",
        "interpreter_state.size",
        "interpreter_state.id",
        "interpreter_state.next",
        "interpreter_state.threads_head",
        "interpreter_state.threads_main",
        "interpreter_state.gc",
        "interpreter_state.imports_modules",
        "interpreter_state.sysdict",
        "interpreter_state.builtins",
        "interpreter_state.ceval_gil",
        "interpreter_state.gil_runtime_state",
        "interpreter_state.gil_runtime_state_enabled",
        "interpreter_state.gil_runtime_state_locked",
        "interpreter_state.gil_runtime_state_holder",
        "interpreter_state.code_object_generation",
        "interpreter_state.tlbc_generation",
        "thread_state.size",
        "thread_state.prev",
        "thread_state.next",
        "thread_state.interp",
        "thread_state.current_frame",
        "thread_state.thread_id",
        "thread_state.native_thread_id",
        "thread_state.datastack_chunk",
        "thread_state.status",
        "interpreter_frame.size",
        "interpreter_frame.previous",
        "interpreter_frame.executable",
        "interpreter_frame.instr_ptr",
        "interpreter_frame.localsplus",
        "interpreter_frame.owner",
        "interpreter_frame.stackpointer",
        "interpreter_frame.tlbc_index",
        "code_object.size",
        "code_object.filename",
        "code_object.name",
        "code_object.qualname",
        "code_object.linetable",
        "code_object.firstlineno",
        "code_object.argcount",
        "code_object.localsplusnames",
        "code_object.localspluskinds",
        "code_object.co_code_adaptive",
        "code_object.co_tlbc",
        "pyobject.size",
        "pyobject.ob_type",
        "type_object.size",
        "type_object.tp_name",
        "type_object.tp_repr",
        "type_object.tp_flags",
        "tuple_object.size",
        "tuple_object.ob_item",
        "tuple_object.ob_size",
        "list_object.size",
        "list_object.ob_item",
        "list_object.ob_size",
        "set_object.size",
        "set_object.used",
        "set_object.table",
        "set_object.mask",
        "dict_object.size",
        "dict_object.ma_keys",
        "dict_object.ma_values",
        "float_object.size",
        "float_object.ob_fval",
        "long_object.size",
        "long_object.lv_tag",
        "long_object.ob_digit",
        "bytes_object.size",
        "bytes_object.ob_size",
        "bytes_object.ob_sval",
        "unicode_object.size",
        "unicode_object.state",
        "unicode_object.length",
        "unicode_object.asciiobject_size",
        "gc.size",
        "gc.collecting",
        "gen_object.size",
        "gen_object.gi_name",
        "gen_object.gi_iframe",
        "gen_object.gi_frame_state",
        "llist_node.next",
        "llist_node.prev",
        "debugger_support.eval_breaker",
        "debugger_support.remote_debugger_support",
        "debugger_support.remote_debugging_enabled",
        "debugger_support.debugger_pending_call",
        "debugger_support.debugger_script_path",
        "debugger_support.debugger_script_path_size",
    ],
};

/// Every reader layout, one per minor version.
pub const READERS: &[ReaderLayout] = &[READER_3_13, READER_3_14];

/// What a version's [`Layout`] needs beyond `_Py_DebugOffsets`.
#[derive(Clone, Copy, Debug)]
pub struct Remainder {
    pub minor: u8,
    /// Offset of `autoTSSkey._key` in `_PyRuntimeState` (`Py_tss_t` plus 4).
    pub tss_key: u64,
    /// Frames whose `owner` is at least this are shims without Python code.
    pub owner_skip_min: u32,
    /// Mask for a frame's `f_executable` (a tagged `_PyStackRef` in 3.14).
    pub code_mask: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where a non-ASCII compact string's data starts.
    pub unicode_compact_data: u64,
    pub tstate: TstateSource,
    pub linetable_format: LineTableFormat,
    /// Whether pyleak has traced a live interpreter of this version (reports say so).
    pub tested_live: bool,
}

/// 3.13, verified on 3.13.0 (DWARF and live). `FRAME_OWNED_BY_CSTACK` = 3 marks C-stack
/// entry frames, whose `f_executable` is `&_Py_NoneStruct`; `f_executable` is a plain
/// `PyObject *` in GIL builds.
pub const REMAINDER_3_13: Remainder = Remainder {
    minor: 13,
    tss_key: 2160 + 4,
    owner_skip_min: 3,
    code_mask: u64::MAX,
    unicode_compact_data: 56,
    tstate: TstateSource::ThreadLocal,
    linetable_format: LineTableFormat::Locations,
    tested_live: true,
};

/// 3.14, from the v3.14.0 headers, untested on a live interpreter.
/// - `enum _frameowner` (`pycore_interpframe_structs.h`) gained `FRAME_OWNED_BY_INTERPRETER`
///   = 3, which the interpreter's entry frames now use (`ceval.c`: `entry.frame.owner =
///   FRAME_OWNED_BY_INTERPRETER`, `f_executable = PyStackRef_None`), and moved
///   `FRAME_OWNED_BY_CSTACK` to 4: skipping owners >= 3 skips both, as CPython's own
///   `owner >= FRAME_OWNED_BY_INTERPRETER` tests do.
/// - `f_executable` is a `_PyStackRef` (`pycore_stackref.h`): in GIL builds the low bits are
///   tags (`Py_TAG_REFCNT` = 1 marks a deferred/immortal reference; `Py_TAG_BITS` is 1 or 3
///   depending on the revision). Objects are at least 8-byte aligned, so `& !7` is the
///   pointer; `PyStackRef_None` masks to `&_Py_NoneStruct` as in 3.13.
/// - `_Py_tss_tstate` is still the thread-local holding the running thread state, and the
///   PyGILState machinery still uses the `autoTSSkey` pthread key (its replacement by the
///   `_Py_tss_gilstate` thread-local, gh-131185, landed in 3.15.0a1), at 2336 in
///   `_PyRuntimeState` per py-spy's v3.14.0 bindgen output.
/// - `PyASCIIObject` keeps the 3.13 layout in GIL builds (gh-128972), so compact strings
///   are unchanged.
/// - The location table format is 3.11's, unchanged (`linetable.rs`).
pub const REMAINDER_3_14: Remainder = Remainder {
    minor: 14,
    tss_key: 2336 + 4,
    owner_skip_min: 3,
    code_mask: !7,
    unicode_compact_data: 56,
    tstate: TstateSource::ThreadLocal,
    linetable_format: LineTableFormat::Locations,
    tested_live: false,
};

/// Every version whose layout comes from `_Py_DebugOffsets`.
pub const REMAINDERS: &[Remainder] = &[REMAINDER_3_13, REMAINDER_3_14];

pub fn remainder(major: u8, minor: u8) -> Option<&'static Remainder> {
    if major != 3 {
        return None;
    }
    REMAINDERS.iter().find(|r| r.minor == minor)
}

/// The first 24 bytes, shared by every minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// `PY_VERSION_HEX` of the build: 0x030e00f0 is 3.14.0 final.
    pub version: u64,
    pub free_threaded: bool,
}

impl Header {
    /// The header, or why the bytes are not one (too short, wrong cookie).
    pub fn parse(bytes: &[u8]) -> Result<Header, DebugOffsetsError> {
        if bytes.len() < HEADER_LEN {
            return Err(DebugOffsetsError::Truncated { len: bytes.len(), need: HEADER_LEN });
        }
        if &bytes[0..8] != COOKIE {
            return Err(DebugOffsetsError::BadCookie {
                found: String::from_utf8_lossy(&bytes[0..8]).into_owned(),
            });
        }
        Ok(Header { version: u64_at(bytes, 8), free_threaded: u64_at(bytes, 16) != 0 })
    }

    pub fn major(&self) -> u8 {
        (self.version >> 24) as u8
    }

    pub fn minor(&self) -> u8 {
        (self.version >> 16) as u8
    }

    pub fn micro(&self) -> u8 {
        (self.version >> 8) as u8
    }

    /// The reader layout for this version, or `UnknownVersion`.
    pub fn reader(&self) -> Result<&'static ReaderLayout, DebugOffsetsError> {
        READERS.iter().find(|r| self.major() == 3 && r.minor == self.minor()).ok_or_else(|| {
            DebugOffsetsError::UnknownVersion {
                version: self.version,
                major: (self.version >> 24) & 0xff,
                minor: (self.version >> 16) & 0xff,
                known: known_versions(),
            }
        })
    }
}

fn known_versions() -> String {
    READERS.iter().map(|r| format!("3.{}", r.minor)).collect::<Vec<_>>().join(", ")
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The offsets pyleak uses, as one `_Py_DebugOffsets` gives them (bytes, from the start of
/// each struct). Field names follow the C struct's `group.field`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugOffsets {
    pub header: Header,
    /// `runtime_state.interpreters_head`: `_PyRuntime.interpreters.head`.
    pub interpreters_head: u64,
    /// `interpreter_state.threads_head`: `interp->threads.head`.
    pub threads_head: u64,
    /// `thread_state.current_frame`, `.thread_id` (pthread_self), `.native_thread_id` (tid).
    pub tstate_current_frame: u64,
    pub tstate_thread_id: u64,
    pub tstate_native_thread_id: u64,
    /// `interpreter_frame.previous`, `.executable` (`f_executable`), `.instr_ptr`, `.owner`.
    pub frame_previous: u64,
    pub frame_executable: u64,
    pub frame_instr_ptr: u64,
    pub frame_owner: u64,
    /// `code_object.*`.
    pub co_filename: u64,
    pub co_name: u64,
    pub co_qualname: u64,
    pub co_linetable: u64,
    pub co_firstlineno: u64,
    pub co_code_adaptive: u64,
    /// `pyobject.ob_type`.
    pub ob_type: u64,
    /// `bytes_object.ob_size`, `.ob_sval`.
    pub bytes_ob_size: u64,
    pub bytes_ob_sval: u64,
    /// `unicode_object.length`, `.state`, `.asciiobject_size` (where compact ASCII data starts).
    pub unicode_length: u64,
    pub unicode_state: u64,
    pub unicode_ascii_size: u64,
}

impl DebugOffsets {
    /// Decodes `bytes` (the start of `_PyRuntime`, at least the version's struct size).
    pub fn parse(bytes: &[u8]) -> Result<DebugOffsets, DebugOffsetsError> {
        let header = Header::parse(bytes)?;
        let reader = header.reader()?;
        if bytes.len() < reader.size() {
            return Err(DebugOffsetsError::Truncated { len: bytes.len(), need: reader.size() });
        }
        let get = |field| reader.offset_of(field).map(|at| u64_at(bytes, at));
        Ok(DebugOffsets {
            header,
            interpreters_head: get("runtime_state.interpreters_head")?,
            threads_head: get("interpreter_state.threads_head")?,
            tstate_current_frame: get("thread_state.current_frame")?,
            tstate_thread_id: get("thread_state.thread_id")?,
            tstate_native_thread_id: get("thread_state.native_thread_id")?,
            frame_previous: get("interpreter_frame.previous")?,
            frame_executable: get("interpreter_frame.executable")?,
            frame_instr_ptr: get("interpreter_frame.instr_ptr")?,
            frame_owner: get("interpreter_frame.owner")?,
            co_filename: get("code_object.filename")?,
            co_name: get("code_object.name")?,
            co_qualname: get("code_object.qualname")?,
            co_linetable: get("code_object.linetable")?,
            co_firstlineno: get("code_object.firstlineno")?,
            co_code_adaptive: get("code_object.co_code_adaptive")?,
            ob_type: get("pyobject.ob_type")?,
            bytes_ob_size: get("bytes_object.ob_size")?,
            bytes_ob_sval: get("bytes_object.ob_sval")?,
            unicode_length: get("unicode_object.length")?,
            unicode_state: get("unicode_object.state")?,
            unicode_ascii_size: get("unicode_object.asciiobject_size")?,
        })
    }

    /// Reads and decodes the struct at `addr` with `read` (first the header, to learn the
    /// version and so the size).
    pub fn read_with(addr: u64, read: impl Fn(u64, usize) -> io::Result<Vec<u8>>) -> Result<DebugOffsets> {
        let header = Header::parse(&read(addr, HEADER_LEN)?)?;
        let size = header.reader()?.size();
        Ok(DebugOffsets::parse(&read(addr, size)?)?)
    }
}

/// Where the debug offsets were read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The running process's `_PyRuntime`.
    Process,
    /// The ELF file's initialized `_PyRuntime` (the process could not be read).
    File,
}

/// The interpreter's `_Py_DebugOffsets`: from process `pid`'s memory, else from the file.
pub fn read(interp: &Interpreter, pid: u32) -> Result<(DebugOffsets, Source)> {
    let Some(runtime) = interp.image.symbol("_PyRuntime") else {
        bail!("{} has no _PyRuntime symbol, where _Py_DebugOffsets lives", interp.path);
    };
    let mem = ProcMem::new(pid);
    let live = DebugOffsets::read_with(interp.bias.wrapping_add(runtime.vaddr), |a, n| mem.read_vec(a, n));
    match live {
        Ok(offsets) => Ok((offsets, Source::Process)),
        Err(live_err) => {
            let file = read_file(&interp.image, runtime.vaddr)
                .with_context(|| format!("reading _Py_DebugOffsets from {}", interp.path))?;
            tracing::info!(pid, error = %format!("{live_err:#}"), "_Py_DebugOffsets read from the file: the process's copy could not be read");
            Ok((file, Source::File))
        }
    }
}

/// `_Py_DebugOffsets` as the ELF file initializes `_PyRuntime` (at link-time address
/// `runtime_vaddr`, in `.PyRuntime` or `.data`).
pub fn read_file(image: &ElfImage, runtime_vaddr: u64) -> Result<DebugOffsets> {
    DebugOffsets::read_with(runtime_vaddr, |a, n| {
        image.read_at(a, n).map(<[u8]>::to_vec).ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, format!("no file bytes for {n} bytes at {a:#x}"))
        })
    })
}

/// The layout for a build described by `offsets`: struct offsets from the debug offsets,
/// the rest from the version's [`Remainder`]. Fails on a free-threaded build, a version
/// without a remainder row, and offsets the symbolizer's fixed reads would contradict.
/// Bound on the offsets of code object and string fields taken from `_Py_DebugOffsets`.
const MAX_OBJECT_OFFSET: u64 = 4096;

pub fn layout(offsets: &DebugOffsets) -> Result<Layout> {
    let h = offsets.header;
    let Some(rest) = remainder(h.major(), h.minor()) else {
        bail!("no layout for Python {}.{} beyond its _Py_DebugOffsets", h.major(), h.minor());
    };
    if h.free_threaded {
        bail!("_Py_DebugOffsets says this is a free-threaded build, which pyleak does not support");
    }
    // The symbolizer reads these at fixed offsets (as every CPython 3 lays them out); a build
    // that disagrees must fail here, not misname frames.
    for (name, got, want) in [
        ("pyobject.ob_type", offsets.ob_type, 8),
        ("bytes_object.ob_size", offsets.bytes_ob_size, 16),
        ("bytes_object.ob_sval", offsets.bytes_ob_sval, 32),
        ("unicode_object.length", offsets.unicode_length, 16),
        ("unicode_object.state", offsets.unicode_state, 32),
    ] {
        if got != want {
            bail!("_Py_DebugOffsets {name} is {got}, pyleak assumes {want}");
        }
    }
    let small = |name: &str, v: u64| {
        i32::try_from(v).with_context(|| format!("_Py_DebugOffsets {name} is out of range: {v}"))
    };
    // Offsets into code objects and strings, which pyleak reads (and sizes its reads by): a
    // value the process's memory holds, so bounded before use. Every CPython has them within
    // the first few hundred bytes of the object.
    for (name, v) in [
        ("code_object.filename", offsets.co_filename),
        ("code_object.name", offsets.co_name),
        ("code_object.qualname", offsets.co_qualname),
        ("code_object.linetable", offsets.co_linetable),
        ("code_object.firstlineno", offsets.co_firstlineno),
        ("code_object.co_code_adaptive", offsets.co_code_adaptive),
        ("unicode_object.asciiobject_size", offsets.unicode_ascii_size),
    ] {
        if v >= MAX_OBJECT_OFFSET {
            bail!(
                "_Py_DebugOffsets {name} is {v}, past the {MAX_OBJECT_OFFSET} bytes pyleak reads of an object"
            );
        }
    }
    Ok(Layout {
        minor: h.minor(),
        tstate: rest.tstate,
        tstate_thread_id: small("thread_state.thread_id", offsets.tstate_thread_id)?,
        tstate_frame: small("thread_state.current_frame", offsets.tstate_current_frame)?,
        // 3.13 removed _PyCFrame: the thread state points at the frame itself.
        cframe_current_frame: ABSENT,
        frame_back: small("interpreter_frame.previous", offsets.frame_previous)?,
        frame_code: small("interpreter_frame.executable", offsets.frame_executable)?,
        frame_instr: small("interpreter_frame.instr_ptr", offsets.frame_instr_ptr)?,
        instr_kind: INSTR_PTR,
        instr_unit: InstrUnit::PointerFromCode,
        frame_owner: small("interpreter_frame.owner", offsets.frame_owner)?,
        owner_skip_min: rest.owner_skip_min,
        co_filename: offsets.co_filename,
        co_name: offsets.co_name,
        co_qualname: Some(offsets.co_qualname),
        co_linetable: offsets.co_linetable,
        co_firstlineno: offsets.co_firstlineno,
        co_code_adaptive: offsets.co_code_adaptive,
        linetable_format: rest.linetable_format,
        unicode_ascii_data: offsets.unicode_ascii_size,
        unicode_compact_data: rest.unicode_compact_data,
        tss_key: rest.tss_key,
        // C-stack entry frames hold `&_Py_NoneStruct` (3.13) / `PyStackRef_None` (3.14).
        skip_none_code: true,
        code_mask: rest.code_mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::layout::LAYOUT_3_13;

    /// `_Py_DebugOffsets` as a 3.13.0 build initializes it: the bytes of the pyenv build's
    /// `.PyRuntime` section, as integers (dumped with Python's `struct`).
    const VALUES_3_13_0: [u64; 72] = [
        0x030d_00f0,
        0,
        283320,
        608,
        632,
        194968,
        7272,
        7264,
        7344,
        7400,
        7656,
        7640,
        7648,
        16,
        7752,
        0,
        7768,
        7760,
        304,
        0,
        8,
        16,
        72,
        152,
        160,
        232,
        32,
        80,
        8,
        0,
        56,
        72,
        70,
        208,
        112,
        120,
        128,
        136,
        68,
        52,
        96,
        104,
        200,
        16,
        8,
        416,
        24,
        88,
        168,
        32,
        24,
        16,
        40,
        24,
        16,
        48,
        32,
        40,
        24,
        16,
        32,
        16,
        24,
        40,
        16,
        32,
        64,
        32,
        16,
        40,
        240,
        200,
    ];

    pub(crate) fn image(values: &[u64]) -> Vec<u8> {
        let mut out = COOKIE.to_vec();
        for v in values {
            out.extend(v.to_le_bytes());
        }
        out
    }

    #[test]
    fn reader_layouts_match_the_documented_sizes_and_offsets() {
        // CPYTHON-INTERNALS.md §3: 584 bytes in 3.13, 760 in 3.14; current_frame at 184 / 208.
        assert_eq!(READER_3_13.size(), 584);
        assert_eq!(READER_3_14.size(), 760);
        assert_eq!(READER_3_13.offset_of("thread_state.current_frame"), Ok(184));
        assert_eq!(READER_3_14.offset_of("thread_state.current_frame"), Ok(208));
        for reader in READERS {
            let mut seen = std::collections::HashSet::new();
            assert!(reader.fields.iter().all(|f| seen.insert(f)), "3.{}: duplicate field", reader.minor);
        }
    }

    #[test]
    fn decodes_the_3_13_0_image_into_layout_3_13() {
        let bytes = image(&VALUES_3_13_0);
        assert_eq!(bytes.len(), 584);
        let offsets = DebugOffsets::parse(&bytes).unwrap();
        assert_eq!(offsets.header, Header { version: 0x030d_00f0, free_threaded: false });
        assert_eq!((offsets.interpreters_head, offsets.threads_head), (632, 7344));
        assert_eq!(offsets.tstate_native_thread_id, 160);
        assert_eq!(layout(&offsets).unwrap(), LAYOUT_3_13);
    }

    #[test]
    fn clear_errors() {
        let good = image(&VALUES_3_13_0);
        let mut bad = good.clone();
        bad[0..8].copy_from_slice(b"notdebug");
        assert_eq!(
            DebugOffsets::parse(&bad).unwrap_err(),
            DebugOffsetsError::BadCookie { found: "notdebug".into() }
        );
        assert_eq!(
            DebugOffsets::parse(&good[..100]).unwrap_err(),
            DebugOffsetsError::Truncated { len: 100, need: 584 }
        );
        assert_eq!(
            DebugOffsets::parse(&good[..8]).unwrap_err(),
            DebugOffsetsError::Truncated { len: 8, need: 24 }
        );
        let mut future = good.clone();
        future[8..16].copy_from_slice(&0x030f_00a1u64.to_le_bytes()); // 3.15.0a1
        let err = DebugOffsets::parse(&future).unwrap_err();
        assert_eq!(
            err.to_string(),
            "_Py_DebugOffsets says Python 3.15 (version 0x30f00a1), which pyleak has no reader layout for (known: 3.13, 3.14)"
        );
        let mut threaded = good.clone();
        threaded[16] = 1;
        let err = layout(&DebugOffsets::parse(&threaded).unwrap()).unwrap_err();
        assert!(err.to_string().contains("free-threaded"), "{err}");
        let mut odd = VALUES_3_13_0;
        odd[READER_3_13.offset_of("bytes_object.ob_sval").unwrap() / 8 - 1] = 40;
        let err = layout(&DebugOffsets::parse(&image(&odd)).unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "_Py_DebugOffsets bytes_object.ob_sval is 40, pyleak assumes 32");
        // The process's own memory holds these: a wild one must not size pyleak's reads.
        let mut wild = VALUES_3_13_0;
        wild[READER_3_13.offset_of("code_object.filename").unwrap() / 8 - 1] = 1 << 40;
        let err = layout(&DebugOffsets::parse(&image(&wild)).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "_Py_DebugOffsets code_object.filename is 1099511627776, past the 4096 bytes pyleak reads of an object"
        );
    }

    // --- 3.13 on a real interpreter ---

    /// `$PYENV_ROOT`, else what `pyenv root` says, else `~/.pyenv`.
    fn pyenv_root() -> std::path::PathBuf {
        if let Some(root) = std::env::var_os("PYENV_ROOT") {
            return root.into();
        }
        if let Ok(out) = std::process::Command::new("pyenv").arg("root").output()
            && out.status.success()
        {
            return String::from_utf8_lossy(&out.stdout).trim().into();
        }
        std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".pyenv")
    }

    /// The pyenv 3.13 build (GIL, not `3.13t`): its `bin/python3.13` and its libpython.
    fn pyenv_3_13() -> (std::path::PathBuf, std::path::PathBuf) {
        let versions = pyenv_root().join("versions");
        let dir = std::fs::read_dir(&versions)
            .unwrap_or_else(|e| panic!("no pyenv versions in {}: {e}", versions.display()))
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("3.13.") && !name.contains('t') && p.join("bin/python3.13").is_file()
            })
            .unwrap_or_else(|| {
                panic!("no pyenv 3.13 build under {}: install one (pyenv install 3.13)", versions.display())
            });
        (dir.join("bin/python3.13"), dir.join("lib/libpython3.13.so.1.0"))
    }

    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A live 3.13 process: the layout built from the `_Py_DebugOffsets` in its memory is
    /// the hand-written, DWARF-checked LAYOUT_3_13, and so is the one `resolve` picks.
    #[test]
    fn live_3_13_process_gives_layout_3_13() {
        use std::io::BufRead;
        let (python, _) = pyenv_3_13();
        let mut child = KillOnDrop(
            std::process::Command::new(&python)
                .args(["-c", "import time; print('ready', flush=True); time.sleep(30)"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", python.display())),
        );
        let mut line = String::new();
        std::io::BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let pid = child.0.id();
        let interp = crate::discovery::find_interpreter(pid).unwrap();
        assert_eq!((interp.version.major, interp.version.minor), (3, 13));

        let (offsets, source) = read(&interp, pid).unwrap();
        assert_eq!(source, Source::Process);
        assert_eq!(offsets.header.minor(), 13);
        assert_eq!(layout(&offsets).unwrap(), LAYOUT_3_13);

        let resolved = crate::python::layout::resolve(&interp, pid).unwrap();
        assert_eq!(resolved.layout, LAYOUT_3_13);
        let note = resolved.describe();
        assert!(
            note.contains("_Py_DebugOffsets (read from the process)") && !note.contains("untested"),
            "{note}"
        );

        // The offsets lead to this process's own main thread: runtime -> interpreters.head ->
        // threads.head, whose native_thread_id is the pid.
        let mem = ProcMem::new(pid);
        let runtime = interp.bias + interp.image.symbol("_PyRuntime").unwrap().vaddr;
        let interp_state = mem.read_u64(runtime + offsets.interpreters_head).unwrap();
        let tstate = mem.read_u64(interp_state + offsets.threads_head).unwrap();
        assert_eq!(mem.read_u64(tstate + offsets.tstate_native_thread_id).unwrap(), pid as u64);
    }

    /// The same from the file alone (the bytes `.PyRuntime` initializes `_PyRuntime` with), and
    /// the file's `_Py_DebugOffsets.version` as a version source.
    #[test]
    fn file_3_13_gives_layout_3_13() {
        let (_, lib) = pyenv_3_13();
        let image = ElfImage::open(&lib).unwrap();
        let runtime = image.symbol("_PyRuntime").expect("_PyRuntime");
        let section = image.section(".PyRuntime").expect(".PyRuntime section");
        assert_eq!(&section[0..8], COOKIE);
        let offsets = read_file(&image, runtime.vaddr).unwrap();
        assert_eq!(DebugOffsets::parse(section).unwrap(), offsets);
        assert_eq!(layout(&offsets).unwrap(), LAYOUT_3_13);
        // Py_Version, and the debug offsets' version, agree.
        let v = crate::discovery::detect_version(&image, &lib.to_string_lossy()).unwrap();
        assert_eq!(
            (offsets.header.major(), offsets.header.minor(), offsets.header.micro()),
            (v.major, v.minor, v.micro.unwrap())
        );
    }

    // --- 3.14, over a byte image ---

    /// `_Py_DebugOffsets` of CPython 3.14.0 (x86_64, GIL build), by field. Values are
    /// `offsetof`/`sizeof` over py-spy's bindgen `v3_14_0.rs` (generated at tag v3.14.0),
    /// computed with Rust's `offset_of!`; the same method reproduces every 3.13.0 value
    /// except `runtime_state.size`, so that one is approximate (pyleak never reads sizes).
    /// `set_object` comes from `PySetObject`'s declaration; `gen_object` is not in those
    /// bindings and is left 0 (pyleak never reads it). Free-threaded-only fields are 0, as
    /// `_Py_DebugOffsets_INIT` writes them in a GIL build.
    const VALUES_3_14_0: &[(&str, u64)] = &[
        ("version", 0x030e_00f0),
        ("free_threaded", 0),
        ("runtime_state.size", 316536),
        ("runtime_state.finalizing", 784),
        ("runtime_state.interpreters_head", 808),
        ("interpreter_state.size", 225808),
        ("interpreter_state.id", 7280),
        ("interpreter_state.next", 7272),
        ("interpreter_state.threads_head", 7344),
        ("interpreter_state.threads_main", 7360),
        ("interpreter_state.gc", 7408),
        ("interpreter_state.imports_modules", 7664),
        ("interpreter_state.sysdict", 7648),
        ("interpreter_state.builtins", 7656),
        ("interpreter_state.ceval_gil", 16),
        ("interpreter_state.gil_runtime_state", 7760),
        ("interpreter_state.gil_runtime_state_enabled", 0),
        ("interpreter_state.gil_runtime_state_locked", 7776),
        ("interpreter_state.gil_runtime_state_holder", 7768),
        ("interpreter_state.code_object_generation", 7968),
        ("interpreter_state.tlbc_generation", 0),
        ("thread_state.size", 824),
        ("thread_state.prev", 0),
        ("thread_state.next", 8),
        ("thread_state.interp", 16),
        ("thread_state.current_frame", 72),
        ("thread_state.thread_id", 152),
        ("thread_state.native_thread_id", 160),
        ("thread_state.datastack_chunk", 232),
        ("thread_state.status", 32),
        ("interpreter_frame.size", 88),
        ("interpreter_frame.previous", 8),
        ("interpreter_frame.executable", 0),
        ("interpreter_frame.instr_ptr", 56),
        ("interpreter_frame.localsplus", 80),
        ("interpreter_frame.owner", 74),
        ("interpreter_frame.stackpointer", 64),
        ("interpreter_frame.tlbc_index", 0),
        ("code_object.size", 216),
        ("code_object.filename", 112),
        ("code_object.name", 120),
        ("code_object.qualname", 128),
        ("code_object.linetable", 136),
        ("code_object.firstlineno", 68),
        ("code_object.argcount", 52),
        ("code_object.localsplusnames", 96),
        ("code_object.localspluskinds", 104),
        ("code_object.co_code_adaptive", 208),
        ("code_object.co_tlbc", 0),
        ("pyobject.size", 16),
        ("pyobject.ob_type", 8),
        ("type_object.size", 416),
        ("type_object.tp_name", 24),
        ("type_object.tp_repr", 88),
        ("type_object.tp_flags", 168),
        ("tuple_object.size", 40),
        ("tuple_object.ob_item", 32),
        ("tuple_object.ob_size", 16),
        ("list_object.size", 40),
        ("list_object.ob_item", 24),
        ("list_object.ob_size", 16),
        ("set_object.size", 200),
        ("set_object.used", 24),
        ("set_object.table", 40),
        ("set_object.mask", 32),
        ("dict_object.size", 48),
        ("dict_object.ma_keys", 32),
        ("dict_object.ma_values", 40),
        ("float_object.size", 24),
        ("float_object.ob_fval", 16),
        ("long_object.size", 32),
        ("long_object.lv_tag", 16),
        ("long_object.ob_digit", 24),
        ("bytes_object.size", 40),
        ("bytes_object.ob_size", 16),
        ("bytes_object.ob_sval", 32),
        ("unicode_object.size", 64),
        ("unicode_object.state", 32),
        ("unicode_object.length", 16),
        ("unicode_object.asciiobject_size", 40),
        ("gc.size", 240),
        ("gc.collecting", 192),
        ("gen_object.size", 0),
        ("gen_object.gi_name", 0),
        ("gen_object.gi_iframe", 0),
        ("gen_object.gi_frame_state", 0),
        ("llist_node.next", 0),
        ("llist_node.prev", 8),
        ("debugger_support.eval_breaker", 24),
        ("debugger_support.remote_debugger_support", 304),
        ("debugger_support.remote_debugging_enabled", 8052),
        ("debugger_support.debugger_pending_call", 0),
        ("debugger_support.debugger_script_path", 4),
        ("debugger_support.debugger_script_path_size", 512),
    ];

    /// The 760-byte image: every field of the 3.14 reader layout, in order, from the table.
    fn image_3_14() -> Vec<u8> {
        let values: Vec<u64> = READER_3_14.fields[1..]
            .iter()
            .map(|f| {
                VALUES_3_14_0.iter().find(|(n, _)| n == f).unwrap_or_else(|| panic!("no value for {f}")).1
            })
            .collect();
        assert_eq!(values.len(), VALUES_3_14_0.len(), "a value for a field 3.14 does not have");
        image(&values)
    }

    /// Process memory laid out as CPython 3.14 lays it out, built in this process (so that
    /// `ProcMem` on our own pid reads it, as it reads a target): `_PyRuntime` starting with
    /// the 3.14 `_Py_DebugOffsets`, an interpreter, a thread state, a frame chain and code
    /// objects with their strings and line tables.
    struct Fake314 {
        buf: Vec<u8>,
        /// Address of `buf[org]`, 16-byte aligned like CPython's objects.
        base: u64,
        org: usize,
        next: usize,
    }

    impl Fake314 {
        fn new() -> Fake314 {
            let buf = vec![0u8; 32 * 1024];
            let start = buf.as_ptr() as u64;
            let org = ((16 - start % 16) % 16) as usize;
            Fake314 { base: start + org as u64, buf, org, next: 0 }
        }
        /// Reserves `len` bytes (16-aligned); returns their address.
        fn alloc(&mut self, len: usize) -> u64 {
            let at = self.next;
            self.next = (at + len).next_multiple_of(16);
            assert!(self.org + self.next <= self.buf.len(), "fake image too small");
            self.base + at as u64
        }
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            let i = self.org + (addr - self.base) as usize;
            self.buf[i..i + bytes.len()].copy_from_slice(bytes);
        }
        fn u64(&mut self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }
        /// A compact str: ASCII (`PyASCIIObject`, data at 40) or UCS1 (`PyCompactUnicodeObject`,
        /// data at 56). `state`: interned:2, kind:3, compact:1, ascii:1 (3.14 GIL = 3.13).
        fn str(&mut self, s: &str) -> u64 {
            let ascii = s.is_ascii();
            let chars: Vec<u8> = s.chars().map(|c| u8::try_from(u32::from(c)).expect("UCS1 only")).collect();
            let header = if ascii { 40 } else { 56 };
            let obj = self.alloc(header + chars.len() + 1);
            self.u64(obj, 1); // ob_refcnt
            self.u64(obj + 16, chars.len() as u64); // length
            let state: u32 = (1 << 2) | (1 << 5) | (u32::from(ascii) << 6);
            self.put(obj + 32, &state.to_le_bytes());
            self.put(obj + header as u64, &chars);
            obj
        }
        /// A `bytes` object: ob_size at 16, ob_sval at 32.
        fn bytes(&mut self, data: &[u8]) -> u64 {
            let obj = self.alloc(32 + data.len() + 1);
            self.u64(obj + 16, data.len() as u64);
            self.put(obj + 32, data);
            obj
        }
        /// A code object (`PyCodeObject`, 3.14 offsets) with `units` code units of bytecode.
        #[allow(clippy::too_many_arguments)]
        fn code(
            &mut self,
            code_type: u64,
            name: &str,
            qualname: &str,
            file: u64,
            first_line: u32,
            table: &[u8],
            units: usize,
        ) -> u64 {
            let (name, qualname, table) = (self.str(name), self.str(qualname), self.bytes(table));
            let code = self.alloc(208 + units * 2);
            self.u64(code, 1); // ob_refcnt: alive
            self.u64(code + 8, code_type); // ob_type
            self.u64(code + 112, file); // co_filename
            self.u64(code + 120, name); // co_name
            self.u64(code + 128, qualname); // co_qualname
            self.u64(code + 136, table); // co_linetable
            self.put(code + 68, &first_line.to_le_bytes()); // co_firstlineno
            code
        }
        /// A `_PyInterpreterFrame` (3.14: f_executable 0, previous 8, instr_ptr 56, owner 74).
        fn frame(&mut self, executable: u64, previous: u64, instr_ptr: u64, owner: u8) -> u64 {
            let frame = self.alloc(88);
            self.u64(frame, executable);
            self.u64(frame + 8, previous);
            self.u64(frame + 56, instr_ptr);
            self.put(frame + 74, &[owner]);
            frame
        }
    }

    /// What `pyleak-ebpf/src/walk.rs` (`walk_step`/`read_frame`) does with a `PyTarget`,
    /// step for step, from a thread state: each Python frame's (code, position, fingerprint),
    /// innermost first. A model: the eBPF code itself does not run here.
    fn walk_model(mem: &ProcMem, t: &pyleak_common::PyTarget, tstate: u64) -> Vec<(u64, u32, u32)> {
        let at = |base: u64, off: i32| base.wrapping_add(off as i64 as u64);
        let mut frame = mem.read_u64(at(tstate, t.tstate_frame)).unwrap();
        if t.cframe_current_frame != ABSENT && frame != 0 {
            frame = mem.read_u64(at(frame, t.cframe_current_frame)).unwrap();
        }
        let mut out = Vec::new();
        while frame != 0 {
            let back = mem.read_u64(at(frame, t.frame_back)).unwrap();
            if t.frame_owner != ABSENT {
                let owner = mem.read_vec(at(frame, t.frame_owner), 1).unwrap()[0];
                if owner as u32 >= t.owner_skip_min {
                    frame = back;
                    continue;
                }
            }
            let code = mem.read_u64(at(frame, t.frame_code)).unwrap() & t.code_mask;
            if t.skips_code(code) {
                frame = back;
                continue;
            }
            let instr = mem.read_u64(at(frame, t.frame_instr)).unwrap().wrapping_sub(code) as u32;
            let first_line =
                u32::from_le_bytes(mem.read_vec(at(code, t.code_first_line), 4).unwrap().try_into().unwrap());
            let filename = mem.read_u64(at(code, t.code_filename)).unwrap();
            let linetable = mem.read_u64(at(code, t.code_linetable)).unwrap();
            // (The kernel fails the frame where these fail: see the untagged walk below.)
            let length = mem.read_u64(filename.wrapping_add(16)).unwrap_or(0);
            let last_bytes = pyleak_common::filename_tail_at(filename, t.str_ascii_data as u64, length)
                .map_or(0, |a| mem.read_u64(a).unwrap_or(0));
            let tail = pyleak_common::FilenameTail { length, last_bytes };
            out.push((code, instr, pyleak_common::code_fingerprint(first_line, filename, linetable, tail)));
            frame = back;
        }
        out
    }

    /// The user side over a 3.14-shaped process image: `_Py_DebugOffsets` reader -> `Layout`
    /// -> `PyTarget` offsets -> (a model of) the kernel frame walk -> symbolizer and line
    /// table. Covers: the 3.14 reader layout and remainder row, tagged `f_executable`
    /// pointers, the renumbered frame owners (INTERPRETER = 3 and CSTACK = 4 both skipped),
    /// 3.14 code object and string offsets, and line decoding. Does not cover: a real 3.14
    /// binary (values are from its headers), the `_Py_tss_tstate` / autoTSSkey thread-state
    /// lookup, the eBPF verifier or program, uprobes.
    #[test]
    fn a_3_14_frame_symbolizes_from_a_3_14_image() {
        let mut m = Fake314::new();
        let runtime = m.alloc(1024);
        let header = image_3_14();
        assert_eq!(header.len(), 760);
        m.put(runtime, &header);
        let interp = m.alloc(7344 + 8);
        m.u64(runtime + 808, interp); // _PyRuntime.interpreters.head
        let tstate = m.alloc(824);
        m.u64(interp + 7344, tstate); // interp->threads.head
        let code_type = m.alloc(416); // &PyCode_Type
        let none = m.alloc(16); // &_Py_NoneStruct

        // def leak(), first line 10, in a non-ASCII file. Location table (kind = bits 3-6 of a
        // header byte, code units = low 3 bits + 1): no-columns form (13) +0 for 1 unit (line
        // 10), no-columns +2 for 3 units (line 12), one-line form (11: +1) for 2 units (line
        // 13), short form (0: same line) for 2 units.
        let file = m.str("/srv/app/naïve.py");
        let leak_table = [0xe8, 0x00, 0xea, 0x04, 0xd9, 0x04, 0x10, 0x81, 0x05];
        let leak = m.code(code_type, "leak", "Service.leak", file, 10, &leak_table, 8);
        // Module body, first line 1: +0 for 1 unit, then +19 (svarint 38) for 7 units: line 20.
        let module = m.code(code_type, "<module>", "<module>", file, 1, &[0xe8, 0x00, 0xee, 0x26], 8);

        // current_frame -> leak (owner THREAD, executing code unit 5) -> interpreter entry
        // frame (owner INTERPRETER = 3, f_executable = PyStackRef_None, as ceval.c sets it)
        // -> <module> (unit 3) -> C-stack frame (owner CSTACK = 4) -> end. f_executable
        // values carry Py_TAG_REFCNT (bit 0), as deferred references do. The C-stack frame's
        // f_executable is left pointing at garbage, so only the owner check can skip it.
        let garbage = m.alloc(256);
        let cstack = m.frame(garbage, 0, 0, 4);
        let module_frame = m.frame(module | 1, cstack, module + 208 + 2 * 3, 0);
        let entry = m.frame(none | 1, module_frame, 0, 3);
        let leak_frame = m.frame(leak | 1, entry, leak + 208 + 2 * 5, 0);
        m.u64(tstate + 72, leak_frame); // tstate->current_frame

        let mem = ProcMem::new(std::process::id());
        let offsets = DebugOffsets::read_with(runtime, |a, n| mem.read_vec(a, n)).unwrap();
        assert_eq!(offsets.header, Header { version: 0x030e_00f0, free_threaded: false });
        let layout = layout(&offsets).unwrap();
        assert_eq!(layout.minor, 14);
        assert_eq!((layout.frame_owner, layout.owner_skip_min, layout.code_mask), (74, 3, !7));
        assert_eq!((layout.co_code_adaptive, layout.tss_key), (208, 2340));

        // The thread state as py-spy finds it, through the debug offsets.
        let interp_state = mem.read_u64(runtime + offsets.interpreters_head).unwrap();
        let found = mem.read_u64(interp_state + offsets.threads_head).unwrap();
        assert_eq!(found, tstate);

        let mut target = crate::python::target::offsets(&layout);
        target.skip_code = none; // target::build: &_Py_NoneStruct, for skip_none_code
        let frames = walk_model(&mem, &target, found);
        let positions: Vec<(u64, u32)> = frames.iter().map(|&(code, instr, _)| (code, instr)).collect();
        assert_eq!(positions, [(leak, 208 + 10), (module, 208 + 6)]);
        // The fingerprints differ (first lines 10 and 1); the symbolizer below names a
        // frame only if it computes the same one from the code object.
        assert_ne!(frames[0].2, frames[1].2);

        let mut symbolizer = crate::python::symbolize::Symbolizer::new(mem, layout, code_type);
        let names: Vec<_> = frames.iter().filter_map(|&(c, i, f)| symbolizer.frame(c, i, f)).collect();
        let frame = |function: &str, qualname: &str, line| crate::model::Frame {
            function: function.into(),
            qualname: qualname.into(),
            file: "/srv/app/naïve.py".into(),
            line,
        };
        assert_eq!(names, [frame("leak", "Service.leak", 13), frame("<module>", "<module>", 20)]);

        // Without the tag mask, the tagged pointer is not the code object.
        let untagged =
            crate::python::target::offsets(&crate::python::layout::Layout { code_mask: u64::MAX, ..layout });
        let wrong = walk_model(&mem, &untagged, found);
        assert_eq!(wrong[0].0, leak | 1);
    }
}
