//! Building the kernel's `PyTarget` for one process: the version's offsets plus the
//! process-specific addresses (load bias applied) of the thread-state source.
use anyhow::{Result, bail};
use pyleak_common::{
    ABSENT, PyTarget, TSTATE_GLOBAL, TSTATE_KEY_ONLY, TSTATE_TLS_DYNAMIC, TSTATE_TLS_STATIC,
};

use super::layout::{Layout, TstateSource};
use crate::discovery::{Interpreter, Linkage};

/// The thread-local that holds the current `PyThreadState *` in 3.12+.
const TSS_TSTATE: &str = "_Py_tss_tstate";

/// The version-dependent half of a `PyTarget`: struct offsets and masks, no addresses.
pub fn offsets(layout: &Layout) -> PyTarget {
    PyTarget {
        instr_kind: layout.instr_kind,
        code_mask: layout.code_mask,
        tstate_thread_id: layout.tstate_thread_id,
        tstate_frame: layout.tstate_frame,
        cframe_current_frame: layout.cframe_current_frame,
        frame_back: layout.frame_back,
        frame_code: layout.frame_code,
        frame_instr: layout.frame_instr,
        frame_owner: layout.frame_owner,
        owner_skip_min: layout.owner_skip_min,
        code_first_line: layout.co_firstlineno as i32,
        code_filename: layout.co_filename as i32,
        code_linetable: layout.co_linetable as i32,
        str_ascii_data: layout.unicode_ascii_data as i32,
        ..Default::default()
    }
}

pub fn build(interp: &Interpreter, layout: &Layout) -> Result<PyTarget> {
    let mut t = offsets(layout);
    // The kernel reads each frame's fields from one window of FRAME_WINDOW bytes (8 per
    // field, the owner byte included).
    for (field, offset) in
        [("back", t.frame_back), ("code", t.frame_code), ("instr", t.frame_instr), ("owner", t.frame_owner)]
    {
        if offset != ABSENT && !(0..=(pyleak_common::FRAME_WINDOW as i32 - 8)).contains(&offset) {
            bail!(
                "frame field {field} at offset {offset} lies outside the {} bytes pyleak reads per frame",
                pyleak_common::FRAME_WINDOW
            );
        }
    }
    let runtime = interp.image.symbol("_PyRuntime").map(|s| interp.bias.wrapping_add(s.vaddr));
    match (runtime, pthread_specific_offset()) {
        (Some(runtime), Some(offset)) => {
            t.tss_key_addr = runtime.wrapping_add(layout.tss_key);
            t.pthread_specific = offset;
        }
        _ => t.pthread_specific = ABSENT,
    }
    if layout.skip_none_code {
        let Some(none) = interp.image.symbol("_Py_NoneStruct") else {
            bail!("{} has no _Py_NoneStruct symbol", interp.path);
        };
        t.skip_code = interp.bias.wrapping_add(none.vaddr);
    }
    // A local symbol: found in builds that keep their symbol table (see PyTarget).
    if let Some(cleanup) = interp.image.symbol("_Py_InitCleanup") {
        t.init_cleanup_code = interp.bias.wrapping_add(cleanup.vaddr);
    }
    match layout.tstate {
        TstateSource::RuntimeField(offset) => {
            let Some(runtime) = interp.image.symbol("_PyRuntime") else {
                bail!("{} has no _PyRuntime symbol", interp.path);
            };
            t.tstate_kind = TSTATE_GLOBAL;
            t.tstate_addr = interp.bias.wrapping_add(runtime.vaddr).wrapping_add(offset);
        }
        TstateSource::ThreadLocal => {
            let Some(tls) = interp.image.tls_symbol(TSS_TSTATE) else {
                // A stripped build: no symbol for the thread-local. Every Python thread is
                // still registered under the PyGILState pthread key, which is enough.
                if t.pthread_specific == ABSENT {
                    bail!(
                        "{} is stripped (no {TSS_TSTATE} symbol) and the C library's pthread layout could not be measured; pyleak cannot find thread states",
                        interp.path
                    );
                }
                tracing::info!(path = %interp.path, "no {TSS_TSTATE} symbol (stripped); using the pthread-key thread state only");
                t.tstate_kind = TSTATE_KEY_ONLY;
                return Ok(t);
            };
            match interp.linkage {
                Linkage::Shared => {
                    // Any DTPMOD64 slot of this module holds its TLS module id once the
                    // dynamic linker has run; the kernel side reads it at each use.
                    let Some(&slot) = interp.image.dtpmod_slots.first() else {
                        bail!("{} has a TLS symbol but no TLS module relocation", interp.path);
                    };
                    t.tstate_kind = TSTATE_TLS_DYNAMIC;
                    t.tls_module_id_addr = interp.bias.wrapping_add(slot);
                    t.tls_offset = tls.vaddr as i64;
                    t.tls_static = interp.startup_libpython as u32;
                }
                Linkage::Static => {
                    // x86_64 variant II: the executable's TLS block ends at the thread
                    // pointer, aligned up to the segment's alignment.
                    let Some((memsz, align)) = interp.image.tls_segment else {
                        bail!("{} has a TLS symbol but no PT_TLS segment", interp.path);
                    };
                    // p_align 0 or 1 both mean unaligned (ELF).
                    let align = align.max(1);
                    let block = memsz.div_ceil(align).saturating_mul(align);
                    t.tstate_kind = TSTATE_TLS_STATIC;
                    t.tls_offset = tls.vaddr as i64 - block as i64;
                }
            }
        }
    }
    Ok(t)
}

/// Offset of `specific_1stblock` in the C library's `struct pthread`, measured on pyleak's
/// own thread: create a key, store a marker under it, and find the marker in our thread
/// control block (which starts at `pthread_self()`). A target with another C library (in a
/// container) may differ; the kernel side checks every thread state found this way against
/// the calling thread, so a wrong offset loses stacks but never misattributes them.
pub fn pthread_specific_offset() -> Option<i32> {
    use std::sync::OnceLock;
    static OFFSET: OnceLock<Option<i32>> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        const MARKER: u64 = 0x7079_6c65_616b_7473; // "pyleakts"
        // SAFETY: plain libc calls on a key we create and delete here.
        unsafe {
            let mut key: libc::pthread_key_t = 0;
            if libc::pthread_key_create(&mut key, None) != 0 {
                return None;
            }
            libc::pthread_setspecific(key, MARKER as *const libc::c_void);
            let tcb = libc::pthread_self() as u64;
            // Read through process_vm_readv: never faults, whatever follows the TCB. A
            // thread's TCB may sit near the end of its mapping, so try shorter reads too.
            let mem = crate::procmem::ProcMem::new(std::process::id());
            let block = [4096, 2048, 1024].into_iter().find_map(|len| mem.read_vec(tcb, len).ok());
            libc::pthread_key_delete(key);
            let block = block?;
            if key >= 32 {
                return None;
            }
            let at = block.as_chunks::<8>().0.iter().position(|w| u64::from_le_bytes(*w) == MARKER)? * 8;
            i32::try_from(at as i64 - 16 * key as i64 - 8).ok()
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn pthread_specific_offset_is_glibcs() {
        // glibc 2.36 on x86_64 (this project's machines): specific_1stblock is at 0x310.
        let off = super::pthread_specific_offset().expect("measured");
        assert_eq!(off, 0x310, "struct pthread layout changed: {off:#x}");
    }
}
