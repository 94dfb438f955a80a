//! Building the kernel's `PyTarget` for one process: the version's offsets plus the
//! process-specific addresses (load bias applied) of the thread-state source.
use anyhow::{Result, bail};
use pyleak_common::{PyTarget, TSTATE_GLOBAL, TSTATE_TLS_DYNAMIC, TSTATE_TLS_STATIC};

use super::layout::{Layout, TstateSource};
use crate::discovery::{Interpreter, Linkage};

/// The thread-local that holds the current `PyThreadState *` in 3.12+.
const TSS_TSTATE: &str = "_Py_tss_tstate";

pub fn build(interp: &Interpreter, layout: &Layout) -> Result<PyTarget> {
    let mut t = PyTarget {
        instr_kind: layout.instr_kind,
        code_mask: u64::MAX,
        tstate_thread_id: layout.tstate_thread_id,
        tstate_frame: layout.tstate_frame,
        cframe_current_frame: layout.cframe_current_frame,
        frame_back: layout.frame_back,
        frame_code: layout.frame_code,
        frame_instr: layout.frame_instr,
        frame_owner: layout.frame_owner,
        owner_skip_min: layout.owner_skip_min,
        code_first_line: layout.co_firstlineno as i32,
        ..Default::default()
    };
    if layout.skip_none_code {
        let Some(none) = interp.image.symbol("_Py_NoneStruct") else {
            bail!("{} has no _Py_NoneStruct symbol", interp.path);
        };
        t.skip_code = interp.bias + none.vaddr;
    }
    match layout.tstate {
        TstateSource::RuntimeField(offset) => {
            let Some(runtime) = interp.image.symbol("_PyRuntime") else {
                bail!("{} has no _PyRuntime symbol", interp.path);
            };
            t.tstate_kind = TSTATE_GLOBAL;
            t.tstate_addr = interp.bias + runtime.vaddr + offset;
        }
        TstateSource::ThreadLocal => {
            let Some(tls) = interp.image.tls_symbol(TSS_TSTATE) else {
                bail!(
                    "{} has no symbol table entry for {TSS_TSTATE} (a stripped build); pyleak cannot find the thread state",
                    interp.path
                );
            };
            match interp.linkage {
                Linkage::Shared => {
                    // Any DTPMOD64 slot of this module holds its TLS module id once the
                    // dynamic linker has run; the kernel side reads it at each use.
                    let Some(&slot) = interp.image.dtpmod_slots.first() else {
                        bail!("{} has a TLS symbol but no TLS module relocation", interp.path);
                    };
                    t.tstate_kind = TSTATE_TLS_DYNAMIC;
                    t.tls_module_id_addr = interp.bias + slot;
                    t.tls_offset = tls.vaddr as i64;
                }
                Linkage::Static => {
                    // x86_64 variant II: the executable's TLS block ends at the thread
                    // pointer, aligned up to the segment's alignment.
                    let Some((memsz, align)) = interp.image.tls_segment else {
                        bail!("{} has a TLS symbol but no PT_TLS segment", interp.path);
                    };
                    let block = memsz.div_ceil(align) * align;
                    t.tstate_kind = TSTATE_TLS_STATIC;
                    t.tls_offset = tls.vaddr as i64 - block as i64;
                }
            }
        }
    }
    Ok(t)
}
