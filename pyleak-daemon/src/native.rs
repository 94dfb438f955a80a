//! Naming native code addresses in a target: the C function that called the C library's
//! allocator directly (ctypes, a C extension), shown as the extra leaf frame of a native
//! allocation's Python stack.
//!
//! An address is mapped to its file through `/proc/PID/maps`, the file is opened through
//! `/proc/PID/root` (so containers work), and the containing function is found in the file's
//! symbol tables. Files and maps are cached; the maps are re-read when an address falls
//! outside every known mapping (a library loaded after the last read, as ctypes does).
use std::collections::HashMap;

use crate::{
    discovery::{self, Mapping},
    elf::ElfImage,
    model::NativeFrame,
};

pub struct NativeNamer {
    pid: u32,
    maps: Vec<Mapping>,
    /// Per mapped path; `None` when the file could not be read (not ELF, unreadable).
    images: HashMap<String, Option<ElfImage>>,
}

impl NativeNamer {
    pub fn new(pid: u32) -> NativeNamer {
        NativeNamer { pid, maps: Vec::new(), images: HashMap::new() }
    }

    /// Names the return address `addr`. The call instruction is just before it, so the
    /// function is looked up at `addr - 1` (a call that ends a function must not name the
    /// next one); the offset shown is the return address's, as debuggers print it.
    pub fn name(&mut self, addr: u64) -> NativeFrame {
        let Some(m) = self.mapping(addr) else {
            return NativeFrame { function: format!("{addr:#x}"), library: "<unmapped>".into(), offset: 0 };
        };
        let file_offset = addr - m.start + m.offset;
        let library = m.path.clone();
        let image = self.images.entry(library.clone()).or_insert_with(|| {
            ElfImage::open(&discovery::mapped_file_path(self.pid, &self.maps, &library))
                .ok()
                .map(ElfImage::for_naming)
        });
        let named = image.as_ref().and_then(|img| {
            let vaddr = img.offset_to_vaddr(file_offset)?;
            let (name, off) = img.function_at(vaddr.saturating_sub(1))?;
            Some((name.to_string(), off + 1))
        });
        match named {
            Some((function, offset)) => NativeFrame { function, library, offset },
            // No symbol covers it (stripped, or a JIT's code): the file offset still lets a
            // user look it up with addr2line against debug symbols.
            None => NativeFrame { function: format!("{file_offset:#x}"), library, offset: 0 },
        }
    }

    fn mapping(&mut self, addr: u64) -> Option<Mapping> {
        let find = |maps: &[Mapping]| maps.iter().find(|m| m.start <= addr && addr < m.end).cloned();
        if let Some(m) = find(&self.maps) {
            return Some(m);
        }
        self.maps = discovery::read_maps(self.pid).ok()?;
        find(&self.maps).filter(|m| !m.path.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_return_address_in_this_process() {
        // The address just after a call into malloc is inside `malloc`'s caller; here we
        // name an address inside malloc itself as a stand-in: libc is mapped and symbolized.
        let libc = discovery::find_libc(std::process::id()).unwrap().unwrap();
        let malloc = libc.image.symbol("malloc").unwrap();
        let maps = discovery::read_maps(std::process::id()).unwrap();
        let text = maps.iter().find(|m| m.path == libc.path && m.perms.contains('x')).unwrap();
        let file_offset = libc.image.vaddr_to_offset(malloc.vaddr + 8).unwrap();
        let addr = text.start + (file_offset - text.offset);
        let frame = NativeNamer::new(std::process::id()).name(addr);
        assert_eq!(frame.function, "malloc");
        assert_eq!(frame.offset, 8);
        assert_eq!(frame.library, libc.path);
    }

    #[test]
    fn an_unmapped_address_is_named_as_such() {
        let frame = NativeNamer::new(std::process::id()).name(8);
        assert_eq!(frame.library, "<unmapped>");
    }
}
