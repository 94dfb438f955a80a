//! Per-CPython-version struct layouts, as data.
//!
//! Everything pyleak needs to know about one minor version lives in one `Layout` value:
//! the offsets the kernel walker uses (turned into a `PyTarget` per process) and the code
//! object / string offsets the symbolizer uses. Adding a version is adding a `Layout`, not
//! code. Values were read from the pyenv builds' DWARF with gdb `offsetof` (see
//! docs/CPYTHON.md); the `layouts_match_dwarf` test re-checks them against every installed
//! interpreter's debug info.
use pyleak_common::{ABSENT, INSTR_PTR};

use super::linetable::LineTableFormat;
use crate::discovery::PyVersion;

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
}

/// The versions this build of pyleak can trace.
pub const SUPPORTED: &[Layout] = &[LAYOUT_3_11, LAYOUT_3_12];

/// CPython 3.11 (verified on 3.11.7). Frames are `_PyInterpreterFrame`s reached through
/// `tstate->cframe->current_frame`; `prev_instr` points at the executing instruction.
pub const LAYOUT_3_11: Layout = Layout {
    minor: 11,
    tstate: TstateSource::RuntimeField(576),
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
};

/// CPython 3.12 (verified on 3.12.1). The thread state moved to the `_Py_tss_tstate`
/// thread-local (gh-104812); `_PyCFrame.current_frame` is its first field; entry frames
/// owned by the C stack (`FRAME_OWNED_BY_CSTACK` = 3) are shims with no Python code.
pub const LAYOUT_3_12: Layout = Layout {
    minor: 12,
    tstate: TstateSource::ThreadLocal,
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
};

/// The layout for a version, or `None` when pyleak does not support it.
pub fn for_version(v: PyVersion) -> Option<&'static Layout> {
    if v.major != 3 {
        return None;
    }
    SUPPORTED.iter().find(|l| l.minor == v.minor)
}

/// "3.11, 3.12" — for error messages.
pub fn supported_list() -> String {
    SUPPORTED.iter().map(|l| format!("3.{}", l.minor)).collect::<Vec<_>>().join(", ")
}

impl Layout {
    /// Byte offset into the bytecode for the line table, from a frame's recorded position.
    pub fn bytecode_offset(&self, instr: u32) -> Option<u32> {
        match self.instr_unit {
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
        assert_eq!(for_version(v(12)).unwrap().minor, 12);
        assert!(for_version(v(7)).is_none());
        assert_eq!(supported_list(), "3.11, 3.12");
        assert_eq!(LAYOUT_3_12.bytecode_offset(192 + 10), Some(10));
        assert_eq!(LAYOUT_3_12.bytecode_offset(4), None);
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
        for layout in SUPPORTED {
            let Some(lib) = find_libpython(&root, layout.minor) else {
                eprintln!("python 3.{} not installed under {root}; not checked", layout.minor);
                continue;
            };
            let frame_type = if layout.minor <= 10 { "PyFrameObject" } else { "_PyInterpreterFrame" };
            let mut exprs: Vec<(&str, String, i64)> = vec![
                ("tstate_thread_id", "&((PyThreadState*)0)->thread_id".into(), layout.tstate_thread_id as i64),
                ("co_filename", "&((PyCodeObject*)0)->co_filename".into(), layout.co_filename as i64),
                ("co_name", "&((PyCodeObject*)0)->co_name".into(), layout.co_name as i64),
                ("co_linetable", "&((PyCodeObject*)0)->co_linetable".into(), layout.co_linetable as i64),
                ("co_firstlineno", "&((PyCodeObject*)0)->co_firstlineno".into(), layout.co_firstlineno as i64),
                ("co_code_adaptive", "&((PyCodeObject*)0)->co_code_adaptive".into(), layout.co_code_adaptive as i64),
                ("frame_back", format!("&(({frame_type}*)0)->previous"), layout.frame_back as i64),
                ("frame_code", format!("&(({frame_type}*)0)->f_code"), layout.frame_code as i64),
                ("frame_instr", format!("&(({frame_type}*)0)->prev_instr"), layout.frame_instr as i64),
                ("tstate_frame", "&((PyThreadState*)0)->cframe".into(), layout.tstate_frame as i64),
                ("cframe_current_frame", "&((_PyCFrame*)0)->current_frame".into(), layout.cframe_current_frame as i64),
                ("unicode_ascii_data", "sizeof(PyASCIIObject)".into(), layout.unicode_ascii_data as i64),
                ("unicode_compact_data", "sizeof(PyCompactUnicodeObject)".into(), layout.unicode_compact_data as i64),
            ];
            if let Some(q) = layout.co_qualname {
                exprs.push(("co_qualname", "&((PyCodeObject*)0)->co_qualname".into(), q as i64));
            }
            if layout.frame_owner != ABSENT {
                exprs.push(("frame_owner", format!("&(({frame_type}*)0)->owner"), layout.frame_owner as i64));
                exprs.push(("owner_skip_min", "(int)FRAME_OWNED_BY_CSTACK".into(), layout.owner_skip_min as i64));
            }
            if let TstateSource::RuntimeField(off) = layout.tstate {
                exprs.push(("tstate_current", "&((_PyRuntimeState*)0)->gilstate.tstate_current".into(), off as i64));
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
