//! Turning a frame's (code object address, position) into (function, qualname, file, line)
//! by reading the code object from the target's memory.
//!
//! Code objects are read once and cached by address. The kernel records each frame's
//! `co_firstlineno`; a cached entry is used only when it matches, and a new read must match
//! it too (and have `PyCode_Type` as its type), so a code object freed and replaced at the
//! same address is noticed rather than misnamed.
use std::collections::{HashMap, HashSet};

use super::{layout::Layout, linetable};
use crate::{model::Frame, procmem::ProcMem};

/// Longest string or line table read from a target (a corrupted length must not make us
/// read gigabytes).
const MAX_READ: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    ob_type: u64,
    filename: u64,
    name: u64,
    linetable: u64,
    firstlineno: u32,
    filename_tail: pyleak_common::FilenameTail,
}

impl Fingerprint {
    /// What the kernel captured for this code object (`pyleak_common::code_fingerprint`).
    fn hash(&self) -> u32 {
        pyleak_common::code_fingerprint(self.firstlineno, self.filename, self.linetable, self.filename_tail)
    }
}

struct CodeInfo {
    fingerprint: Fingerprint,
    name: String,
    qualname: String,
    filename: String,
    linetable: Vec<u8>,
    /// The interpreter's own trampoline, not Python code (see [`is_init_cleanup`]).
    trampoline: bool,
}

/// Whether a code object is CPython's `_Py_InitCleanup` (3.13+): a static code object whose
/// frame the specialized `CALL_ALLOC_AND_ENTER_INIT` pushes under every `__init__` it calls,
/// to check that `__init__` returned None. It would show as a frame `__init__` in a file
/// named `__init__` at line 0 between the `__init__` and its caller. Its symbol is local (a
/// stripped build has none), so it is told by what it is: named `__init__`, in file
/// `__init__`, first line 0, and a line table that gives no line (only "no location"
/// entries: 3.13's is the one byte 0xfb), which no compiled Python code has.
fn is_init_cleanup(name: &str, filename: &str, first_line: u32, linetable: &[u8]) -> bool {
    // C: an entry's first byte is 1CCCCLLL; code 15 (PY_CODE_LOCATION_INFO_NONE) has no
    // further bytes, so a table of such entries is all first bytes.
    let no_line = linetable.iter().all(|&b| b & 0x80 != 0 && (b >> 3) & 15 == 15);
    name == "__init__" && filename == "__init__" && first_line == 0 && no_line
}

/// Whether `first_word`, an object's reference count if it is alive, is rather the free-list
/// link pymalloc writes there when the block at `addr` is freed: NULL, or an address in the
/// same pool (pools are at most 16 KiB, and aligned to their size). No live reference count
/// is the object's own address give or take 16 KiB.
fn looks_freed(first_word: u64, addr: u64) -> bool {
    first_word == 0 || first_word >> 14 == addr >> 14
}

pub struct Symbolizer {
    mem: ProcMem,
    layout: Layout,
    /// Runtime address of `PyCode_Type`, to reject pointers that are not code objects.
    code_type: u64,
    cache: HashMap<u64, CodeInfo>,
    /// (code, fingerprint) found freed or not matching: not read again. An import makes
    /// thousands of stacks through the same short-lived module body; once it is gone, every
    /// one of them would read it again (several reads each), and the symbolizer would fall
    /// further behind the code objects still alive.
    gone: HashSet<(u64, u32)>,
    /// Line by (code, position, fingerprint).
    lines: HashMap<(u64, u32, u32), u32>,
}

impl Symbolizer {
    pub fn new(mem: ProcMem, layout: Layout, code_type: u64) -> Symbolizer {
        Symbolizer {
            mem,
            layout,
            code_type,
            cache: HashMap::new(),
            gone: HashSet::new(),
            lines: HashMap::new(),
        }
    }

    /// Symbolizes one frame captured with `fingerprint` (the code object's
    /// `pyleak_common::code_fingerprint` at capture). A code object that cannot be read, or
    /// that is no longer the one captured (freed, its address reused), gives
    /// `Frame::unknown` rather than another function's name. `None` for an interpreter
    /// trampoline, which is not a frame of Python code.
    pub fn frame(&mut self, code: u64, instr: u32, fingerprint: u32) -> Option<Frame> {
        // A cached code object at this address with the same fingerprint is taken as the
        // same one without reading the target again: symbolizing must keep up with a process
        // that makes thousands of new stacks a second (imports), or their code objects are
        // gone before they are read. (Another code object reusing the address would also
        // need the same first line, file name object and line table object, or a 21-bit
        // hash collision, to be mistaken for it.)
        let cached = self.cache.get(&code).is_some_and(|c| c.fingerprint.hash() == fingerprint);
        if !cached {
            if self.gone.contains(&(code, fingerprint)) {
                return Some(Frame::unknown(code));
            }
            let Some(fp) = self.fingerprint(code) else {
                // Freed, or its memory unmapped: gone either way.
                self.gone.insert((code, fingerprint));
                return Some(Frame::unknown(code));
            };
            if fp.ob_type != self.code_type || fp.hash() != fingerprint {
                self.gone.insert((code, fingerprint));
                return Some(Frame::unknown(code));
            }
            match self.read_code(code, &fp) {
                Some(info) => {
                    self.cache.insert(code, info);
                }
                None => return Some(Frame::unknown(code)),
            }
        }
        let info = &self.cache[&code];
        if info.trampoline {
            return None;
        }
        // Stacks share most of their frames (an import's dozen bootstrap frames, a server's
        // dispatch loop): each position's line is decoded once, not once per stack.
        let layout = &self.layout;
        let line = *self.lines.entry((code, instr, fingerprint)).or_insert_with(|| {
            layout
                .bytecode_offset(instr)
                .and_then(|off| {
                    linetable::line_for_offset(
                        layout.linetable_format,
                        &info.linetable,
                        info.fingerprint.firstlineno,
                        off,
                    )
                })
                .unwrap_or(0)
        });
        Some(Frame {
            function: info.name.clone(),
            qualname: info.qualname.clone(),
            file: info.filename.clone(),
            line,
        })
    }

    fn fingerprint(&self, code: u64) -> Option<Fingerprint> {
        let l = &self.layout;
        let end = [l.co_filename, l.co_name, l.co_linetable, l.co_firstlineno].into_iter().max()? + 8;
        let raw = self.mem.read_vec(code, end as usize).ok()?;
        let u64_at = |off: u64| {
            raw.get(off as usize..off as usize + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        let u32_at = |off: u64| {
            raw.get(off as usize..off as usize + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        // A code object freed since its frame was captured (the main script's module code
        // is freed as soon as the script ends, and `pyleak run` may symbolize after that) can
        // still hold its fields, pointing to objects freed and reused: it must not be named
        // from them. pymalloc puts its free-list link (the next free block of the same pool,
        // or NULL) where the reference count was; glibc overwrites the type too.
        if looks_freed(u64_at(0)?, code) {
            return None;
        }
        let filename = u64_at(l.co_filename)?;
        // As the kernel reads it (walk::read_fingerprint): the length, then the last 8 bytes.
        let length = self.mem.read_u64(filename.wrapping_add(16)).ok()?;
        let last_bytes = match pyleak_common::filename_tail_at(filename, l.unicode_ascii_data, length) {
            Some(addr) => self.mem.read_u64(addr).ok()?,
            None => 0,
        };
        Some(Fingerprint {
            // C: Py_TYPE(code) == &PyCode_Type
            ob_type: u64_at(8)?,
            filename,
            name: u64_at(l.co_name)?,
            linetable: u64_at(l.co_linetable)?,
            firstlineno: u32_at(l.co_firstlineno)?,
            filename_tail: pyleak_common::FilenameTail { length, last_bytes },
        })
    }

    fn read_code(&self, code: u64, fp: &Fingerprint) -> Option<CodeInfo> {
        let name = self.read_str(fp.name)?;
        // C: code->co_qualname (3.11+; before that the bare name is all there is).
        let qualname = match self.layout.co_qualname {
            Some(off) => self.mem.read_u64(code.wrapping_add(off)).ok().and_then(|p| self.read_str(p)),
            None => None,
        };
        let filename = self.read_str(fp.filename)?;
        let linetable = self.read_bytes(fp.linetable)?;
        Some(CodeInfo {
            fingerprint: fp.clone(),
            qualname: qualname.unwrap_or_else(|| name.clone()),
            trampoline: is_init_cleanup(&name, &filename, fp.firstlineno, &linetable),
            name,
            filename,
            linetable,
        })
    }

    /// Reads a `str` object (compact ASCII or compact UCS1/2/4).
    fn read_str(&self, obj: u64) -> Option<String> {
        // C: ((PyASCIIObject *)obj)->length, ->state
        // Pointers and lengths come from the target's memory, maybe freed or torn: wrapping
        // arithmetic, and the read fails where the value is wild.
        let header = self.mem.read_vec(obj.wrapping_add(16), 24).ok()?;
        let length = i64::from_le_bytes(header[0..8].try_into().ok()?);
        let state = u32::from_le_bytes(header[16..20].try_into().ok()?);
        let kind = (state >> 2) & 7;
        let compact = (state >> 5) & 1 == 1;
        let ascii = (state >> 6) & 1 == 1;
        if !compact || length < 0 {
            return None;
        }
        let chars = length as usize;
        if ascii {
            let data = self
                .mem
                .read_vec(obj.wrapping_add(self.layout.unicode_ascii_data), chars.min(MAX_READ))
                .ok()?;
            return Some(String::from_utf8_lossy(&data).into_owned());
        }
        let width = match kind {
            1 | 2 | 4 => kind as usize,
            _ => return None,
        };
        let data = self
            .mem
            .read_vec(
                obj.wrapping_add(self.layout.unicode_compact_data),
                chars.saturating_mul(width).min(MAX_READ),
            )
            .ok()?;
        Some(
            data.chunks_exact(width)
                .map(|c| {
                    let cp = match width {
                        1 => c[0] as u32,
                        2 => u16::from_le_bytes([c[0], c[1]]) as u32,
                        _ => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    };
                    char::from_u32(cp).unwrap_or('\u{fffd}')
                })
                .collect(),
        )
    }

    /// Reads a `bytes` object's contents.
    fn read_bytes(&self, obj: u64) -> Option<Vec<u8>> {
        // C: ((PyVarObject *)obj)->ob_size, ((PyBytesObject *)obj)->ob_sval
        let size = self.mem.read_i64(obj.wrapping_add(16)).ok()?;
        if !(0..=MAX_READ as i64).contains(&size) {
            return None;
        }
        self.mem.read_vec(obj.wrapping_add(32), size as usize).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::{is_init_cleanup, looks_freed};

    #[test]
    fn freed_code_objects_are_told_by_their_first_word() {
        let code = 0x7f3b_9162_cc60;
        // pymalloc's free-list link: another block of the pool, or the end of the list.
        assert!(looks_freed(0x7f3b_9162_cd00, code));
        assert!(looks_freed(0x7f3b_9162_c010, code));
        assert!(looks_freed(0, code));
        // Live reference counts, 3.12's immortal one included.
        for refcnt in [1, 2, 1000, 999_999_999, 0xffff_ffff] {
            assert!(!looks_freed(refcnt, code), "{refcnt}");
        }
        // A block of another pool.
        assert!(!looks_freed(0x7f3b_9163_0010, code));
    }

    #[test]
    fn only_the_init_trampoline_is_dropped() {
        // 3.13's _Py_InitCleanup: one "no location" entry for its 4 code units.
        assert!(is_init_cleanup("__init__", "__init__", 0, &[0xfb]));
        assert!(is_init_cleanup("__init__", "__init__", 0, b""));
        // A real __init__ has a first line and a line table, even in a file named __init__.
        assert!(!is_init_cleanup("__init__", "/srv/app/models.py", 12, &[0x80, 0x00]));
        assert!(!is_init_cleanup("__init__", "__init__", 1, &[0xfb]));
        assert!(!is_init_cleanup("__init__", "__init__", 0, &[0xfb, 0x80, 0x00]));
        assert!(!is_init_cleanup("make", "__init__", 0, &[0xfb]));
    }
}
