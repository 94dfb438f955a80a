//! What pyleak needs from an ELF file on disk: symbol addresses (dynamic and full symbol
//! tables), file offsets for uprobes, constant data, and the TLS facts of a shared library.
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use object::{
    Object, ObjectSection, ObjectSymbol, RelocationTarget,
    elf::{PT_LOAD, PT_TLS, R_X86_64_DTPMOD64},
    read::elf::{ElfFile64, ProgramHeader},
};

/// One loadable segment: `[vaddr, vaddr+memsz)` backed by `[offset, offset+filesz)`.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
}

/// A symbol's virtual address and size, as linked (add the load bias for runtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub vaddr: u64,
    pub size: u64,
}

/// An ELF file read fully into memory, with its symbols indexed by name.
pub struct ElfImage {
    data: Vec<u8>,
    segments: Vec<Segment>,
    symbols: std::collections::HashMap<String, Symbol>,
    /// Function symbols sorted by address, for naming a code address.
    functions: Vec<(u64, u64, String)>,
    tls_symbols: std::collections::HashMap<String, Symbol>,
    /// GOT slots filled with a TLS module id (`R_X86_64_DTPMOD64`) for this module.
    pub dtpmod_slots: Vec<u64>,
    /// The PT_TLS segment's memory size and alignment, if any.
    pub tls_segment: Option<(u64, u64)>,
    /// DT_NEEDED entries.
    pub needed: Vec<String>,
}

impl ElfImage {
    pub fn open(path: &Path) -> Result<ElfImage> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(path, data)
    }

    pub fn parse(path: &Path, data: Vec<u8>) -> Result<ElfImage> {
        let file = ElfFile64::<object::Endianness>::parse(&*data)
            .map_err(|e| anyhow!("{} is not a 64-bit ELF file: {e}", path.display()))?;
        let endian = file.endian();
        let mut segments = Vec::new();
        let mut tls_segment = None;
        for ph in file.elf_program_headers() {
            let kind = ph.p_type(endian);
            if kind == PT_LOAD {
                segments.push(Segment {
                    vaddr: ph.p_vaddr(endian),
                    offset: ph.p_offset(endian),
                    filesz: ph.p_filesz(endian),
                });
            } else if kind == PT_TLS {
                tls_segment = Some((ph.p_memsz(endian), ph.p_align(endian).max(1)));
            }
        }
        let mut symbols = std::collections::HashMap::new();
        let mut tls_symbols = std::collections::HashMap::new();
        let mut functions = Vec::new();
        let mut add = |sym: object::read::elf::ElfSymbol64<'_, '_, object::Endianness>| {
            let Ok(name) = sym.name() else { return };
            if name.is_empty() {
                return;
            }
            let entry = Symbol { vaddr: sym.address(), size: sym.size() };
            if sym.kind() == object::SymbolKind::Text && sym.is_definition() {
                functions.push((entry.vaddr, entry.size, name.to_string()));
            }
            if sym.kind() == object::SymbolKind::Tls {
                tls_symbols.entry(name.to_string()).or_insert(entry);
            } else if sym.is_definition() {
                symbols.entry(name.to_string()).or_insert(entry);
            }
        };
        for sym in file.dynamic_symbols() {
            add(sym);
        }
        for sym in file.symbols() {
            add(sym);
        }
        let mut dtpmod_slots = Vec::new();
        if let Some(relocs) = file.dynamic_relocations() {
            for (offset, reloc) in relocs {
                if let object::RelocationFlags::Elf { r_type } = reloc.flags()
                    && r_type == R_X86_64_DTPMOD64
                    && matches!(reloc.target(), RelocationTarget::Absolute | RelocationTarget::Symbol(_))
                {
                    dtpmod_slots.push(offset);
                }
            }
        }
        let needed = dynamic_needed(&file).unwrap_or_default();
        drop(file);
        // Aliases share an address: keep the public spelling (`malloc`, not `__libc_malloc`).
        functions.sort_by(|a, b| (a.0, a.2.starts_with('_'), &a.2).cmp(&(b.0, b.2.starts_with('_'), &b.2)));
        functions.dedup_by_key(|f| f.0);
        Ok(ElfImage { data, segments, symbols, functions, tls_symbols, dtpmod_slots, tls_segment, needed })
    }

    /// This image reduced to what naming code addresses needs ([`ElfImage::function_at`],
    /// [`ElfImage::offset_to_vaddr`]): the file's bytes and its symbol index by name go,
    /// and other lookups find nothing. Kept per mapped library for a whole session, a whole
    /// file (tens of MB for a big C extension) would be pyleak's largest allocation.
    pub fn for_naming(self) -> ElfImage {
        ElfImage {
            data: Vec::new(),
            segments: self.segments,
            symbols: Default::default(),
            functions: self.functions,
            tls_symbols: Default::default(),
            dtpmod_slots: Vec::new(),
            tls_segment: None,
            needed: Vec::new(),
        }
    }

    /// The function containing link-time address `vaddr`, and the offset into it. A symbol
    /// without a size (some assembly) contains everything up to the next symbol.
    pub fn function_at(&self, vaddr: u64) -> Option<(&str, u64)> {
        let i = self.functions.partition_point(|f| f.0 <= vaddr).checked_sub(1)?;
        let (start, size, name) = &self.functions[i];
        let inside = if *size > 0 {
            vaddr < start.saturating_add(*size)
        } else {
            self.functions.get(i + 1).is_none_or(|next| vaddr < next.0)
        };
        inside.then(|| (name.as_str(), vaddr - start))
    }

    pub fn symbol(&self, name: &str) -> Option<Symbol> {
        self.symbols.get(name).copied()
    }

    pub fn tls_symbol(&self, name: &str) -> Option<Symbol> {
        self.tls_symbols.get(name).copied()
    }

    /// File offset of a virtual address (what uprobes take).
    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr.saturating_add(s.filesz))
            .map(|s| vaddr - s.vaddr + s.offset)
    }

    /// Bytes stored in the file at a virtual address (constant data such as `Py_Version`).
    pub fn read_at(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let off = self.vaddr_to_offset(vaddr)? as usize;
        self.data.get(off..off.checked_add(len)?)
    }

    /// The pointer (a link-time address) that the 8-byte word at `vaddr` holds once the
    /// dynamic linker has relocated the file: from its dynamic relocation (`R_X86_64_RELATIVE`:
    /// the addend; `R_X86_64_64`/`GLOB_DAT` against a symbol defined here: its address plus
    /// the addend), else the word stored in the file (a position-dependent executable).
    /// `None` for a relocation against another module's symbol.
    pub fn pointer_at(&self, vaddr: u64) -> Option<u64> {
        use object::{
            ObjectSymbolTable,
            elf::{R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_RELATIVE},
        };
        let file = ElfFile64::<object::Endianness>::parse(&*self.data).ok()?;
        if let Some(relocs) = file.dynamic_relocations() {
            for (offset, reloc) in relocs {
                if offset != vaddr {
                    continue;
                }
                let object::RelocationFlags::Elf { r_type } = reloc.flags() else { return None };
                return match (r_type, reloc.target()) {
                    (R_X86_64_RELATIVE, _) => Some(reloc.addend() as u64),
                    (R_X86_64_64 | R_X86_64_GLOB_DAT, RelocationTarget::Symbol(index)) => {
                        let sym = file.dynamic_symbol_table()?.symbol_by_index(index).ok()?;
                        sym.is_definition().then(|| sym.address().wrapping_add(reloc.addend() as u64))
                    }
                    _ => None,
                };
            }
        }
        Some(u64::from_le_bytes(self.read_at(vaddr, 8)?.try_into().ok()?))
    }

    /// The link-time address of the GOT slot through which this file calls `name`, a
    /// function of another module (its `R_X86_64_JUMP_SLOT` or `GLOB_DAT` relocation).
    pub fn import_slot(&self, name: &str) -> Option<u64> {
        use object::{
            ObjectSymbol, ObjectSymbolTable,
            elf::{R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT},
        };
        let file = ElfFile64::<object::Endianness>::parse(&*self.data).ok()?;
        let symbols = file.dynamic_symbol_table()?;
        file.dynamic_relocations()?.find_map(|(offset, reloc)| {
            let object::RelocationFlags::Elf { r_type } = reloc.flags() else { return None };
            let RelocationTarget::Symbol(index) = reloc.target() else { return None };
            if r_type != R_X86_64_JUMP_SLOT && r_type != R_X86_64_GLOB_DAT {
                return None;
            }
            let sym = symbols.symbol_by_index(index).ok()?;
            (sym.name().ok()? == name && !sym.is_definition()).then_some(offset)
        })
    }

    /// The bytes of a section (e.g. `.rodata`), if present.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        let file = ElfFile64::<object::Endianness>::parse(&*self.data).ok()?;
        let section = file.section_by_name(name)?;
        let (offset, size) = section.file_range()?;
        self.data.get(offset as usize..offset.saturating_add(size) as usize)
    }

    /// The link-time address the file expects at file offset `offset` (to compute the load
    /// bias from a mapping's start and file offset).
    pub fn offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| offset >= s.offset && offset < s.offset.saturating_add(s.filesz.max(1)))
            .map(|s| offset - s.offset + s.vaddr)
    }
}

fn dynamic_needed(file: &ElfFile64<'_, object::Endianness>) -> Option<Vec<String>> {
    let endian = file.endian();
    let section = file.section_by_name(".dynamic")?;
    let data = section.data().ok()?;
    let strtab = file.section_by_name(".dynstr")?.data().ok()?;
    let mut out = Vec::new();
    for entry in data.as_chunks::<16>().0 {
        let tag = endian.read_u64_bytes(entry[0..8].try_into().ok()?);
        let val = endian.read_u64_bytes(entry[8..16].try_into().ok()?);
        if tag == object::elf::DT_NULL as u64 {
            break;
        }
        if tag == object::elf::DT_NEEDED as u64 {
            let start = val as usize;
            let end = strtab.get(start..)?.iter().position(|&b| b == 0)? + start;
            out.push(String::from_utf8_lossy(&strtab[start..end]).into_owned());
        }
    }
    Some(out)
}

use object::Endian as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_executable() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let img = ElfImage::open(&exe).unwrap();
        assert!(!img.segments.is_empty());
        assert!(img.needed.iter().any(|n| n.starts_with("libc.so")), "{:?}", img.needed);
    }

    #[test]
    fn names_an_address_inside_a_function() {
        let libc = crate::discovery::find_libc(std::process::id()).unwrap().expect("a libc");
        let malloc = libc.image.symbol("malloc").unwrap();
        assert_eq!(libc.image.function_at(malloc.vaddr + 5), Some(("malloc", 5)));
        assert_eq!(libc.image.function_at(0), None);
    }

    #[test]
    fn not_elf_is_a_clear_error() {
        let err = ElfImage::parse(Path::new("/x"), b"#!/bin/sh\n".to_vec()).err().unwrap();
        assert!(err.to_string().contains("not a 64-bit ELF"), "{err}");
    }
}
