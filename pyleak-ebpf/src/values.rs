//! Where an entry program finds its values: in the C ABI argument registers (attach cookie 0,
//! a probe on a public function's first instruction), or in the registers the user side's
//! planner named in the attach cookie (a probe placed past the first instruction, or on an
//! allocator-table implementation such as `_PyObject_Malloc(void *ctx, size_t n)`, whose first
//! argument is a context). See `pyleak_common::entry_cookie`.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel_buf, generated::bpf_get_attach_cookie},
    programs::ProbeContext,
};
use pyleak_common::{PT_REGS_WORDS, cookie_word};

/// The values of one entry probe hit.
pub struct Values<'a> {
    ctx: &'a ProbeContext,
    cookie: u64,
}

impl<'a> Values<'a> {
    #[inline(always)]
    pub fn of(ctx: &'a ProbeContext) -> Values<'a> {
        // SAFETY: helper call on the program's own context; 0 when no cookie was attached.
        let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
        Values { ctx, cookie }
    }

    /// Value `i` of the program, which is C ABI argument `abi_arg` at a function's entry.
    #[inline(always)]
    pub fn get(&self, i: u32, abi_arg: usize) -> u64 {
        let Some(word) = cookie_word(self.cookie, i) else {
            return self.ctx.arg::<u64>(abi_arg).unwrap_or(0);
        };
        // A context field cannot be loaded at a variable offset: copy the saved registers
        // (168 bytes) to the stack and index there.
        let mut regs = [0u64; PT_REGS_WORDS as usize];
        // SAFETY: the destination is this stack array, viewed as bytes; the helper checks the
        // source (the kernel's pt_regs of this probe hit).
        let copied = unsafe {
            let bytes = core::slice::from_raw_parts_mut(
                regs.as_mut_ptr().cast::<u8>(),
                core::mem::size_of_val(&regs),
            );
            bpf_probe_read_kernel_buf(self.ctx.regs as *const u8, bytes)
        };
        if copied.is_err() {
            return 0; // cannot happen for a live probe context; 0 is ignored as a pointer
        }
        regs.get(word as usize).copied().unwrap_or(0)
    }
}
