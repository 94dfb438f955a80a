//! Where an entry program finds its values: in the C ABI argument registers (attach cookie 0,
//! a probe on a public function's first instruction), or in the registers the user side's
//! planner named in the attach cookie (a probe placed past the first instruction, or on an
//! allocator-table implementation such as `_PyObject_Malloc(void *ctx, size_t n)`, whose first
//! argument is a context). See `pyleak_common::entry_cookie`.
use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_attach_cookie, programs::ProbeContext};
use pyleak_common::{
    PT_R8, PT_R9, PT_R10, PT_R11, PT_R12, PT_R13, PT_R14, PT_R15, PT_RAX, PT_RBP, PT_RBX, PT_RCX, PT_RDI,
    PT_RDX, PT_RSI, cookie_word,
};

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
        let regs = self.ctx.regs;
        // A context field cannot be loaded at a variable offset, so each word is its own
        // constant-offset load. Volatile keeps LLVM from merging the arms into one load at a
        // computed offset, which the verifier would refuse.
        // SAFETY: a uprobe's context is the trapped thread's saved registers; every arm reads
        // one field of it.
        unsafe {
            let field = |p: *const u64| core::ptr::read_volatile(p);
            match word as u8 {
                PT_R15 => field(&raw const (*regs).r15),
                PT_R14 => field(&raw const (*regs).r14),
                PT_R13 => field(&raw const (*regs).r13),
                PT_R12 => field(&raw const (*regs).r12),
                PT_RBP => field(&raw const (*regs).rbp),
                PT_RBX => field(&raw const (*regs).rbx),
                PT_R11 => field(&raw const (*regs).r11),
                PT_R10 => field(&raw const (*regs).r10),
                PT_R9 => field(&raw const (*regs).r9),
                PT_R8 => field(&raw const (*regs).r8),
                PT_RAX => field(&raw const (*regs).rax),
                PT_RCX => field(&raw const (*regs).rcx),
                PT_RDX => field(&raw const (*regs).rdx),
                PT_RSI => field(&raw const (*regs).rsi),
                PT_RDI => field(&raw const (*regs).rdi),
                // The planner names general-purpose registers only; 0 is ignored as a pointer.
                _ => 0,
            }
        }
    }
}
