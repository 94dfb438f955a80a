//! Per-CPython-version struct layouts, as data, and the one place that picks a process's.
//!
//! Everything pyleak needs to know about one minor version lives in one `Layout` value:
//! the offsets the kernel walker uses (turned into a `PyTarget` per process) and the code
//! object / string offsets the symbolizer uses. Where the values come from depends on the
//! version ([`resolve`]):
//!
//! - **3.8–3.12: tables** ([`TABLES`]). Values were read from the pyenv builds' DWARF with
//!   gdb (`print &((T*)0)->field`); the `layouts_match_dwarf` test re-checks every one against
//!   each installed interpreter's debug info, so a wrong value fails the build's tests rather
//!   than a user's trace.
//! - **3.13+: the interpreter's own `_Py_DebugOffsets`** (`super::debug_offsets`), read from
//!   the process, plus a small per-version remainder for what that struct does not carry.
//!   [`LAYOUT_3_13`] stays here as the documented, DWARF-checked oracle the debug-offsets path
//!   must reproduce (a test compares them on a live 3.13 process); it is not used at run time.
use anyhow::Result;
use pyleak_common::{ABSENT, INSTR_I32, INSTR_PTR};

use super::{
    debug_offsets::{self, Source},
    linetable::LineTableFormat,
};
use crate::discovery::{Interpreter, PyVersion, TargetError};

/// How the current thread state is found in a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TstateSource {
    /// `_PyRuntime.gilstate.tstate_current` at this offset from `_PyRuntime` (3.8–3.11).
    RuntimeField(u64),
    /// The `_Py_tss_tstate` thread-local (3.12+).
    ThreadLocal,
}

/// How a frame's bytecode position converts to a byte offset for the line table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstrUnit {
    /// `f_lasti` in bytes (3.8–3.9).
    LastiBytes,
    /// `f_lasti` in 2-byte code units (3.10, bpo-27129).
    LastiCodeUnits,
    /// Instruction pointer minus the code object's address; subtract `co_code_adaptive`.
    PointerFromCode,
}

/// One CPython minor version's layout (x86_64, default GIL build).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub minor: u8,
    pub tstate: TstateSource,
    // PyThreadState
    pub tstate_thread_id: i32,
    pub tstate_frame: i32,
    pub cframe_current_frame: i32,
    // frames
    pub frame_back: i32,
    pub frame_code: i32,
    pub frame_instr: i32,
    pub instr_kind: u32,
    pub instr_unit: InstrUnit,
    pub frame_owner: i32,
    pub owner_skip_min: u32,
    // PyCodeObject
    pub co_filename: u64,
    pub co_name: u64,
    pub co_qualname: Option<u64>,
    pub co_linetable: u64,
    pub co_firstlineno: u64,
    /// Start of the bytecode inside the code object (3.11+).
    pub co_code_adaptive: u64,
    pub linetable_format: LineTableFormat,
    // PyUnicodeObject: data offset of compact ASCII and compact non-ASCII strings.
    pub unicode_ascii_data: u64,
    pub unicode_compact_data: u64,
    /// Offset of `autoTSSkey._key` in `_PyRuntimeState` (the `Py_tss_t` plus 4).
    pub tss_key: u64,
    /// Frames whose code pointer is `&_Py_NoneStruct` are not Python code (3.13 C-stack
    /// entries); the kernel side skips them.
    pub skip_none_code: bool,
    /// Mask applied to a frame's code pointer: all ones, except where the pointer carries
    /// tag bits (3.14's `_PyStackRef f_executable`).
    pub code_mask: u64,
}

/// The versions whose layout is a table here. 3.13 and later are built from the process's
/// `_Py_DebugOffsets` instead (see `debug_offsets::REMAINDERS` for which).
pub const TABLES: &[Layout] = &[LAYOUT_3_8, LAYOUT_3_9, LAYOUT_3_10, LAYOUT_3_11, LAYOUT_3_12];

/// CPython 3.8 (verified on 3.8.18). Frames are heap `PyFrameObject`s linked by `f_back`;
/// `f_lasti` counts bytes; line numbers come from `co_lnotab`.
pub const LAYOUT_3_8: Layout = Layout {
    minor: 8,
    tstate: TstateSource::RuntimeField(1368),
    tss_key: 1392 + 4,
    tstate_thread_id: 176,
    tstate_frame: 24,
    cframe_current_frame: ABSENT,
    frame_back: 24,
    frame_code: 32,
    frame_instr: 104,
    instr_kind: INSTR_I32,
    instr_unit: InstrUnit::LastiBytes,
    frame_owner: ABSENT,
    owner_skip_min: 0,
    co_filename: 104,
    co_name: 112,
    co_qualname: None,
    co_linetable: 120,
    co_firstlineno: 40,
    co_code_adaptive: 0,
    linetable_format: LineTableFormat::Lnotab,
    unicode_ascii_data: 48,
    unicode_compact_data: 72,
    skip_none_code: false,
    code_mask: u64::MAX,
};

/// CPython 3.9 (verified on 3.9.18): as 3.8, but `_PyRuntimeState` shrank (the GIL state
/// moved up), so `gilstate.tstate_current` is at 568.
pub const LAYOUT_3_9: Layout =
    Layout { minor: 9, tstate: TstateSource::RuntimeField(568), tss_key: 584 + 4, ..LAYOUT_3_8 };

/// CPython 3.10 (verified on 3.10.13): `f_lasti` counts 2-byte code units and moved to 96;
/// `co_linetable` (PEP 626) replaces `co_lnotab` at the same offset.
pub const LAYOUT_3_10: Layout = Layout {
    minor: 10,
    tstate: TstateSource::RuntimeField(568),
    tss_key: 584 + 4,
    frame_instr: 96,
    instr_unit: InstrUnit::LastiCodeUnits,
    linetable_format: LineTableFormat::Linetable310,
    ..LAYOUT_3_8
};

/// CPython 3.13 (verified on 3.13.0). `_PyCFrame` is gone: `tstate->current_frame`; frames
/// hold `f_executable` (a code object, or None for C-stack entries) and `instr_ptr` (the
/// instruction executing). Not used at run time: 3.13 layouts are built from the process's
/// `_Py_DebugOffsets`, and tests check that this is what they build (and that this matches
/// the build's DWARF).
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the oracle for 3.13's debug-offsets layout, and its documentation")
)]
pub const LAYOUT_3_13: Layout = Layout {
    minor: 13,
    tss_key: 2160 + 4,
    tstate_thread_id: 152,
    tstate_frame: 72,
    cframe_current_frame: ABSENT,
    co_code_adaptive: 200,
    skip_none_code: true,
    ..LAYOUT_3_12
};

/// CPython 3.11 (verified on 3.11.7). Frames are `_PyInterpreterFrame`s reached through
/// `tstate->cframe->current_frame`; `prev_instr` points at the executing instruction.
pub const LAYOUT_3_11: Layout = Layout {
    minor: 11,
    tstate: TstateSource::RuntimeField(576),
    tss_key: 592 + 4,
    tstate_thread_id: 152,
    tstate_frame: 56,
    cframe_current_frame: 8,
    frame_back: 48,
    frame_code: 32,
    frame_instr: 56,
    instr_kind: INSTR_PTR,
    instr_unit: InstrUnit::PointerFromCode,
    // 3.11 has no C-stack shim frames (`is_entry` marks entries but they are real frames).
    frame_owner: ABSENT,
    owner_skip_min: 0,
    co_filename: 112,
    co_name: 120,
    co_qualname: Some(128),
    co_linetable: 136,
    co_firstlineno: 72,
    co_code_adaptive: 184,
    linetable_format: LineTableFormat::Locations,
    unicode_ascii_data: 48,
    unicode_compact_data: 72,
    skip_none_code: false,
    code_mask: u64::MAX,
};

/// CPython 3.12 (verified on 3.12.1). The thread state moved to the `_Py_tss_tstate`
/// thread-local (gh-104812); `_PyCFrame.current_frame` is its first field; entry frames
/// owned by the C stack (`FRAME_OWNED_BY_CSTACK` = 3) are shims with no Python code.
pub const LAYOUT_3_12: Layout = Layout {
    minor: 12,
    tstate: TstateSource::ThreadLocal,
    tss_key: 1544 + 4,
    tstate_thread_id: 136,
    tstate_frame: 56,
    cframe_current_frame: 0,
    frame_back: 8,
    frame_code: 0,
    frame_instr: 56,
    instr_kind: INSTR_PTR,
    instr_unit: InstrUnit::PointerFromCode,
    frame_owner: 70,
    owner_skip_min: 3,
    co_filename: 112,
    co_name: 120,
    co_qualname: Some(128),
    co_linetable: 136,
    co_firstlineno: 68,
    co_code_adaptive: 192,
    linetable_format: LineTableFormat::Locations,
    unicode_ascii_data: 40,
    unicode_compact_data: 56,
    skip_none_code: false,
    code_mask: u64::MAX,
};

/// The table layout for a version (3.8–3.12), or `None`.
pub fn table_for(v: PyVersion) -> Option<&'static Layout> {
    if v.major != 3 {
        return None;
    }
    TABLES.iter().find(|l| l.minor == v.minor)
}

/// "3.8, 3.9, ..., 3.14" — for error messages.
pub fn supported_list() -> String {
    TABLES
        .iter()
        .map(|l| l.minor)
        .chain(debug_offsets::REMAINDERS.iter().map(|r| r.minor))
        .map(|minor| format!("3.{minor}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A process's layout and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub layout: Layout,
    pub origin: Origin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A hand table of [`TABLES`] (3.8–3.12).
    Table,
    /// The interpreter's `_Py_DebugOffsets` plus a remainder row (3.13+).
    DebugOffsets {
        /// `PY_VERSION_HEX` the struct carries.
        version: u64,
        source: Source,
        /// Whether pyleak has traced a live interpreter of this minor version.
        tested_live: bool,
    },
}

impl Resolved {
    /// One line for reports and `doctor`: where the offsets came from, and for a version
    /// never traced live, that it is untested.
    pub fn describe(&self) -> String {
        let minor = self.layout.minor;
        match self.origin {
            Origin::Table => {
                format!("struct offsets from pyleak's 3.{minor} table (checked against that version's DWARF)")
            }
            Origin::DebugOffsets { source, tested_live, .. } => {
                let from = match source {
                    Source::Process => "read from the process",
                    Source::File => "read from the interpreter file (the process's memory could not be read)",
                };
                if tested_live {
                    format!(
                        "struct offsets from the interpreter's own _Py_DebugOffsets ({from}); thread-state key, frame-owner values and string sizes from pyleak's 3.{minor} table"
                    )
                } else {
                    format!(
                        "Python 3.{minor} support is untested on a live interpreter: struct offsets come from its _Py_DebugOffsets ({from}), the rest of the layout (thread-state key, frame-owner values, tagged code pointers) from CPython 3.{minor} headers"
                    )
                }
            }
        }
    }
}

/// The layout for an interpreter: its version's table, or (3.13+) its `_Py_DebugOffsets`
/// read from process `pid` (from the file when the process cannot be read). The version the
/// debug offsets state must be the one discovery found. Unsupported versions are a
/// [`TargetError::UnsupportedVersion`].
pub fn resolve(interp: &Interpreter, pid: u32) -> Result<Resolved> {
    let v = interp.version;
    if let Some(layout) = table_for(v) {
        return Ok(Resolved { layout: *layout, origin: Origin::Table });
    }
    let Some(rest) = debug_offsets::remainder(v.major, v.minor) else {
        return Err(TargetError::UnsupportedVersion {
            pid,
            version: v.to_string(),
            supported: supported_list(),
        }
        .into());
    };
    let (offsets, source) = debug_offsets::read(interp, pid)?;
    let h = offsets.header;
    if (h.major(), h.minor()) != (v.major, v.minor) {
        anyhow::bail!(
            "{} is Python {v} by its version, but its _Py_DebugOffsets says {}.{}",
            interp.path,
            h.major(),
            h.minor()
        );
    }
    let layout = debug_offsets::layout(&offsets)?;
    Ok(Resolved {
        layout,
        origin: Origin::DebugOffsets { version: h.version, source, tested_live: rest.tested_live },
    })
}

impl Layout {
    /// Byte offset into the bytecode for the line table, from a frame's recorded position.
    pub fn bytecode_offset(&self, instr: u32) -> Option<u32> {
        match self.instr_unit {
            InstrUnit::LastiBytes => Some(instr),
            InstrUnit::LastiCodeUnits => instr.checked_mul(2),
            InstrUnit::PointerFromCode => instr.checked_sub(self.co_code_adaptive as u32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup() {
        let v = |minor| PyVersion { major: 3, minor, micro: None };
        assert_eq!(table_for(v(12)).unwrap().minor, 12);
        assert!(table_for(v(7)).is_none());
        assert!(table_for(v(13)).is_none(), "3.13+ come from _Py_DebugOffsets");
        assert!(debug_offsets::remainder(3, 14).is_some() && debug_offsets::remainder(3, 15).is_none());
        assert_eq!(supported_list(), "3.8, 3.9, 3.10, 3.11, 3.12, 3.13, 3.14");
        assert_eq!(LAYOUT_3_10.bytecode_offset(7), Some(14));
        assert_eq!(LAYOUT_3_9.bytecode_offset(7), Some(7));
        assert_eq!(LAYOUT_3_12.bytecode_offset(192 + 10), Some(10));
        assert_eq!(LAYOUT_3_12.bytecode_offset(4), None);
    }

    #[test]
    fn origin_notes() {
        let table = Resolved { layout: LAYOUT_3_12, origin: Origin::Table };
        assert!(table.describe().contains("pyleak's 3.12 table"), "{}", table.describe());
        let v313 = Resolved {
            layout: LAYOUT_3_13,
            origin: Origin::DebugOffsets { version: 0x030d_00f0, source: Source::Process, tested_live: true },
        };
        assert!(!v313.describe().contains("untested"), "{}", v313.describe());
        let v314 = Resolved {
            layout: Layout { minor: 14, ..LAYOUT_3_13 },
            origin: Origin::DebugOffsets { version: 0x030e_00f0, source: Source::File, tested_live: false },
        };
        let note = v314.describe();
        assert!(note.starts_with("Python 3.14 support is untested on a live interpreter"), "{note}");
        assert!(
            note.contains("from CPython 3.14 headers") && note.contains("read from the interpreter file"),
            "{note}"
        );
    }

    /// Every layout value against the interpreter's own DWARF (gdb), for each installed
    /// pyenv build. Fails if none can be checked.
    #[test]
    fn layouts_match_dwarf() {
        let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
        if std::process::Command::new("gdb").arg("--version").output().is_err() {
            panic!("gdb is needed to check layouts against DWARF (apt-get install gdb)");
        }
        let mut checked = 0;
        // The tables, and the 3.13 oracle the debug-offsets path is checked against.
        for layout in TABLES.iter().chain([&LAYOUT_3_13]) {
            let Some(lib) = find_libpython(&root, layout.minor) else {
                eprintln!("python 3.{} not installed under {root}; not checked", layout.minor);
                continue;
            };
            let old = layout.minor <= 10; // PyFrameObject era
            let frame_type = if old { "PyFrameObject" } else { "_PyInterpreterFrame" };
            let field = |old_name: &str, name_311: &str, name_313: &str| match layout.minor {
                ..=10 => old_name.to_string(),
                11 | 12 => name_311.to_string(),
                _ => name_313.to_string(),
            };
            let linetable = if layout.minor <= 9 { "co_lnotab" } else { "co_linetable" };
            let mut exprs: Vec<(&str, String, i64)> = vec![
                (
                    "tstate_thread_id",
                    "&((PyThreadState*)0)->thread_id".into(),
                    layout.tstate_thread_id as i64,
                ),
                ("co_filename", "&((PyCodeObject*)0)->co_filename".into(), layout.co_filename as i64),
                ("co_name", "&((PyCodeObject*)0)->co_name".into(), layout.co_name as i64),
                ("co_linetable", format!("&((PyCodeObject*)0)->{linetable}"), layout.co_linetable as i64),
                (
                    "co_firstlineno",
                    "&((PyCodeObject*)0)->co_firstlineno".into(),
                    layout.co_firstlineno as i64,
                ),
                (
                    "frame_back",
                    format!("&(({frame_type}*)0)->{}", field("f_back", "previous", "previous")),
                    layout.frame_back as i64,
                ),
                (
                    "frame_code",
                    format!("&(({frame_type}*)0)->{}", field("f_code", "f_code", "f_executable")),
                    layout.frame_code as i64,
                ),
                (
                    "frame_instr",
                    format!("&(({frame_type}*)0)->{}", field("f_lasti", "prev_instr", "instr_ptr")),
                    layout.frame_instr as i64,
                ),
                (
                    "tstate_frame",
                    format!("&((PyThreadState*)0)->{}", field("frame", "cframe", "current_frame")),
                    layout.tstate_frame as i64,
                ),
                ("unicode_ascii_data", "sizeof(PyASCIIObject)".into(), layout.unicode_ascii_data as i64),
                (
                    "unicode_compact_data",
                    "sizeof(PyCompactUnicodeObject)".into(),
                    layout.unicode_compact_data as i64,
                ),
            ];
            if !old {
                exprs.push((
                    "co_code_adaptive",
                    "&((PyCodeObject*)0)->co_code_adaptive".into(),
                    layout.co_code_adaptive as i64,
                ));
            }
            if layout.cframe_current_frame != ABSENT {
                exprs.push((
                    "cframe_current_frame",
                    "&((_PyCFrame*)0)->current_frame".into(),
                    layout.cframe_current_frame as i64,
                ));
            }
            if let Some(q) = layout.co_qualname {
                exprs.push(("co_qualname", "&((PyCodeObject*)0)->co_qualname".into(), q as i64));
            }
            if layout.frame_owner != ABSENT {
                exprs.push(("frame_owner", format!("&(({frame_type}*)0)->owner"), layout.frame_owner as i64));
                exprs.push((
                    "owner_skip_min",
                    "(int)FRAME_OWNED_BY_CSTACK".into(),
                    layout.owner_skip_min as i64,
                ));
            }
            let tss = if layout.minor <= 11 { "gilstate.autoTSSkey._key" } else { "autoTSSkey._key" };
            exprs.push(("tss_key", format!("&((_PyRuntimeState*)0)->{tss}"), layout.tss_key as i64));
            if let TstateSource::RuntimeField(off) = layout.tstate {
                exprs.push((
                    "tstate_current",
                    "&((_PyRuntimeState*)0)->gilstate.tstate_current".into(),
                    off as i64,
                ));
            }
            let mut cmd = std::process::Command::new("gdb");
            cmd.args(["-batch", "-nx", &lib]);
            for (_, e, _) in &exprs {
                cmd.args(["-ex", &format!("print (long)({e})")]);
            }
            let out = cmd.output().expect("running gdb");
            let text = String::from_utf8_lossy(&out.stdout);
            let values: Vec<i64> = text
                .lines()
                .filter_map(|l| l.split_once(" = ").and_then(|(_, v)| v.trim().parse().ok()))
                .collect();
            assert_eq!(
                values.len(),
                exprs.len(),
                "gdb could not evaluate every field for 3.{}:\n{text}\n{}",
                layout.minor,
                String::from_utf8_lossy(&out.stderr)
            );
            for ((name, _, want), got) in exprs.iter().zip(values) {
                assert_eq!(got, *want, "3.{} {name}: DWARF says {got}, layout says {want}", layout.minor);
            }
            checked += 1;
        }
        assert!(checked > 0, "no supported interpreter installed under {root} to check layouts");
    }

    fn find_libpython(root: &str, minor: u8) -> Option<String> {
        let dir = std::fs::read_dir(format!("{root}/versions")).ok()?;
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("3.{minor}.")) && !name.contains('t') {
                let lib = entry.path().join(format!("lib/libpython3.{minor}.so.1.0"));
                if lib.exists() {
                    return Some(lib.to_string_lossy().into_owned());
                }
            }
        }
        None
    }
}
