//! The probe-site planner: on which instruction of a function its entry probe goes, and
//! where the entry program then finds its values. Pure logic over the function's bytes.
//!
//! Why: a uprobe costs what the kernel does with the probed instruction. Most instructions
//! are single-stepped out of line (12–13.5 µs per hit measured here, DESIGN.md §3); a few
//! are emulated in the trap handler (0.6–0.85 µs). `arch/x86/kernel/uprobes.c` (6.18)
//! emulates:
//! - `push %reg` (`50+r`, or `41 50+r`: `push_setup_xol_ops`);
//! - `jmp rel8/rel32`, `call rel32`, `jcc rel8/rel32` (`branch_setup_xol_ops`), except with
//!   a `66` operand-size prefix, which the kernel refuses to probe at all (ENOTSUPP);
//! - NOPs (`90`, not `f3 90` pause; `0f 1f /0`: `insn_is_nop`, emulated since 6.18).
//!
//! Instructions with a `cs`/`ds`/`es`/`ss`/`lock` prefix are refused by the kernel
//! (`is_prefix_bad`); `endbr64` is single-stepped. Everything else (`mov`, `lea`, `test`,
//! indirect jumps) is single-stepped.
//!
//! So the entry probe goes on the first emulated instruction, provided that:
//! - it lies on the straight-line path from the entry: every call passes it exactly once
//!   (the planner stops at the first branch, and rejects instructions that a jump from
//!   inside the function also reaches, which could fire without a call or twice per call);
//! - the values the entry program reads are still in registers there: the planner follows
//!   the argument registers, through 64-bit register copies (`mov %rdi,%rbx`), and forgets
//!   a register at any write to it (partial writes included);
//! - if the program read the stack at `%rsp`, no instruction before it moved `%rsp` (none of
//!   pyleak's programs does; [`Role::reads_stack`] keeps the rule in place).
//!
//! A function with a return probe (every allocating function) keeps its entry probe on the
//! first instruction: the return probe must sit there (the kernel hijacks the return address
//! at `%rsp` when it fires), so that trap is taken anyway, and a second probe further on
//! would add a trap instead of removing one. Such a function is cheap when its first
//! instruction is itself emulated (`push`), which is why pyleak probes the allocator table's
//! implementations (`_PyObject_Malloc` starts with `push`) rather than the public wrappers
//! (`mov`); [`table_slot`] reads a wrapper's code to find its table slot.
use std::collections::BTreeSet;

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, InstructionInfoFactory,
    OpAccess, OpKind, Register,
};

/// How many instructions from the entry the planner examines.
pub const MAX_INSTRUCTIONS: usize = 16;

/// What an entry program reads at the function, which decides where it may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    /// The registers that hold, at the function's first instruction, each value the entry
    /// program reads, in the program's order (malloc: `[rdi]`; `_PyObject_Realloc(ctx, p, n)`:
    /// `[rsi, rdx]`).
    pub values: Vec<Register>,
    /// A return probe sits on the first instruction (allocating functions).
    pub return_probe: bool,
    /// The program reads memory at `%rsp` (none does today).
    pub reads_stack: bool,
}

/// Where the entry probe goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Byte offset from the function's first instruction.
    pub offset: u64,
    /// The instruction there, in AT&T syntax (`push %rbp`).
    pub instruction: String,
    /// Whether the kernel emulates it (a cheap trap).
    pub emulated: bool,
    /// Where each of [`Role::values`] is at that instruction.
    pub values: Vec<Register>,
    /// Why this site, in words (for `doctor`).
    pub reason: String,
}

/// Plans the entry probe of the function whose bytes are `code` (from its first instruction,
/// as long as known: the symbol's size), linked at `ip`.
pub fn plan(code: &[u8], ip: u64, role: &Role) -> Plan {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let first = decoder.decode();
    if first.is_invalid() {
        return Plan {
            offset: 0,
            instruction: "(undecodable)".into(),
            emulated: false,
            values: role.values.clone(),
            reason: "fallback: the first instruction could not be decoded".into(),
        };
    }
    let first_kind = emulation(&first, bytes_of(code, ip, &first));
    let found = scan(code, ip, role);
    if role.return_probe {
        let reason = match (first_kind, &found) {
            (Some(kind), _) => format!("emulated ({kind}); shared with the return probe"),
            (None, Ok(site)) => format!(
                "single-stepped, kept: the return probe must sit on the first instruction and its trap is taken anyway (an entry probe alone would go to +{} `{}`)",
                site.offset, site.instruction
            ),
            (None, Err(_)) => {
                "single-stepped, kept: the return probe must sit on the first instruction and its trap is taken anyway".into()
            }
        };
        return Plan {
            offset: 0,
            instruction: format_instr(&first),
            emulated: first_kind.is_some(),
            values: role.values.clone(),
            reason,
        };
    }
    match found {
        Ok(site) => site,
        Err(why) => Plan {
            offset: 0,
            instruction: format_instr(&first),
            emulated: first_kind.is_some(),
            values: role.values.clone(),
            reason: format!("fallback to the entry: {why}"),
        },
    }
}

/// The first emulated instruction where the values are intact, or why there is none.
fn scan(code: &[u8], ip: u64, role: &Role) -> Result<Plan, String> {
    let entries = interior_targets(code, ip);
    // Each value's current homes (a copy keeps a value alive when its register is reused).
    let mut homes: Vec<Vec<Register>> = role.values.iter().map(|r| vec![r.full_register()]).collect();
    let mut stack_moved = false;
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    for _ in 0..MAX_INSTRUCTIONS {
        if !decoder.can_decode() {
            return Err("the function's known bytes end first".into());
        }
        let instr = decoder.decode();
        let offset = instr.ip() - ip;
        if instr.is_invalid() {
            return Err(format!("undecodable instruction at +{offset}"));
        }
        if offset > 0 && entries.contains(&offset) {
            return Err(format!(
                "+{offset} is also the target of a jump inside the function (a probe there could fire without a call)"
            ));
        }
        if let Some(kind) = emulation(&instr, bytes_of(code, ip, &instr))
            && !(role.reads_stack && stack_moved)
        {
            let values: Vec<Register> = homes.iter().map(|h| h[0]).collect();
            let moved = values.iter().zip(&role.values).any(|(now, was)| *now != was.full_register());
            return Ok(Plan {
                offset,
                instruction: format_instr(&instr),
                emulated: true,
                reason: format!(
                    "emulated ({kind}){}{}",
                    if offset == 0 { "" } else { ", values intact" },
                    if moved { format!(" (read from {})", names(&values)) } else { String::new() }
                ),
                values,
            });
        }
        if instr.flow_control() != FlowControl::Next {
            return Err(format!(
                "no emulated instruction before the first branch (`{}`)",
                format_instr(&instr)
            ));
        }
        // A 64-bit register-to-register copy gives a value a second home.
        let copy = (matches!(instr.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64)
            && instr.op0_kind() == OpKind::Register
            && instr.op1_kind() == OpKind::Register)
            .then(|| (instr.op1_register().full_register(), instr.op0_register().full_register()));
        let info = factory.info(&instr);
        for used in info.used_registers() {
            let written = matches!(
                used.access(),
                OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            );
            if !written {
                continue;
            }
            let reg = used.register().full_register();
            if reg == Register::RSP {
                stack_moved = true;
            }
            for h in &mut homes {
                h.retain(|r| *r != reg);
            }
        }
        if let Some((from, to)) = copy {
            for h in &mut homes {
                if h.contains(&from) && !h.contains(&to) {
                    h.push(to);
                }
            }
        }
        if let Some(lost) = homes.iter().position(|h| h.is_empty()) {
            return Err(format!(
                "{} is overwritten at +{offset} (`{}`) before any emulated instruction",
                names(&role.values[lost..=lost]),
                format_instr(&instr)
            ));
        }
    }
    Err(format!("no emulated instruction in the first {MAX_INSTRUCTIONS}"))
}

/// Offsets (> 0) that a direct jump or call from inside `code` reaches.
fn interior_targets(code: &[u8], ip: u64) -> BTreeSet<u64> {
    let end = ip + code.len() as u64;
    let mut out = BTreeSet::new();
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    while decoder.can_decode() {
        let instr = decoder.decode();
        if instr.is_invalid() {
            break;
        }
        if matches!(instr.op0_kind(), OpKind::NearBranch64) {
            let target = instr.near_branch_target();
            if target > ip && target < end {
                out.insert(target - ip);
            }
        }
    }
    out
}

/// What the kernel emulates this instruction as, or `None` if it single-steps it (or
/// refuses it). Follows `arch/x86/kernel/uprobes.c`; `bytes` are the instruction's bytes.
fn emulation(instr: &Instruction, bytes: &[u8]) -> Option<&'static str> {
    let mut legacy = Vec::new();
    let mut rest = bytes;
    while let Some((&b, tail)) = rest.split_first()
        && matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3)
    {
        legacy.push(b);
        rest = tail;
    }
    let rex = match rest.first() {
        Some(&b) if (0x40..=0x4f).contains(&b) => {
            rest = &rest[1..];
            Some(b)
        }
        _ => None,
    };
    // is_prefix_bad(): the kernel refuses to probe these at all.
    if legacy.iter().any(|b| matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0xf0)) {
        return None;
    }
    let op = *rest.first()?;
    let op2 = rest.get(1).copied();
    // insn_is_nop(): `90` (not `f3 90`, pause; not `41 90`, xchg %r8), `0f 1f /0`.
    if instr.mnemonic() == iced_x86::Mnemonic::Nop {
        let plain = op == 0x90 && !legacy.contains(&0xf3) && rex.is_none_or(|r| r & 1 == 0);
        let nopl = op == 0x0f && op2 == Some(0x1f) && rest.get(2).is_some_and(|m| (m >> 3) & 7 == 0);
        return (plain || nopl).then_some("nop");
    }
    let branch = match (op, op2) {
        (0xeb | 0xe9, _) => Some("jmp rel"),
        (0xe8, _) => Some("call rel32"),
        (0x70..=0x7f, _) => Some("jcc rel8"),
        (0x0f, Some(0x80..=0x8f)) => Some("jcc rel32"),
        _ => None,
    };
    if let Some(kind) = branch {
        // CALLW/JMPW-style 66 prefixes: ENOTSUPP.
        return (!legacy.contains(&0x66)).then_some(kind);
    }
    if (0x50..=0x57).contains(&op) {
        // push_setup_xol_ops(): one byte, or two with exactly the REX prefix 41.
        let ok = match bytes.len() {
            1 => true,
            2 => rex == Some(0x41) && legacy.is_empty(),
            _ => false,
        };
        return ok.then_some("push");
    }
    None
}

fn bytes_of<'a>(code: &'a [u8], ip: u64, instr: &Instruction) -> &'a [u8] {
    let start = (instr.ip() - ip) as usize;
    &code[start..start + instr.len()]
}

fn format_instr(instr: &Instruction) -> String {
    let mut f = GasFormatter::new();
    f.options_mut().set_space_after_operand_separator(false);
    f.options_mut().set_uppercase_hex(false);
    f.options_mut().set_branch_leading_zeros(false);
    let mut out = String::new();
    f.format(instr, &mut out);
    out
}

fn names(regs: &[Register]) -> String {
    regs.iter().map(|r| format!("%{}", format!("{r:?}").to_lowercase())).collect::<Vec<_>>().join(", ")
}

/// Where a public allocator function (`PyObject_Malloc`) finds its implementation: the
/// allocator-table slot its indirect jump reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSlot {
    /// `jmp *slot(%rip)`: the slot is at this link-time address (3.8–3.11: the static
    /// `_PyObject`, `_PyMem`, `_PyMem_Raw` tables).
    At(u64),
    /// `mov pointer(%rip),%rax; jmp *disp(%rax)`: the slot is `disp` bytes past the address
    /// stored at `pointer` (3.12+: `&_PyRuntime` from the GOT, the slot in
    /// `_PyRuntime.allocators`).
    Through { pointer: u64, disp: u64 },
}

/// Reads a public wrapper's code (`mov ...; jmp *table`): the table slot its tail jump goes
/// through, or `None` when the function is not such a thunk (an LTO build inlines the
/// allocator into it). Follows the fall-through of conditional branches (the size checks),
/// and the loads that lead to the jump: `jmp *slot(%rip)`, `jmp *disp(%reg)` or
/// `mov disp(%reg),%rax; jmp *%rax`, with `%reg` loaded from a rip-relative word.
pub fn table_slot(code: &[u8], ip: u64) -> Option<TableSlot> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut factory = InstructionInfoFactory::new();
    // Registers holding the word stored at a slot: (register, slot).
    let mut words: Vec<(Register, TableSlot)> = Vec::new();
    // The slot a memory operand names, if known.
    let slot_of = |instr: &Instruction, words: &[(Register, TableSlot)]| -> Option<TableSlot> {
        if instr.is_ip_rel_memory_operand() {
            return Some(TableSlot::At(instr.ip_rel_memory_address()));
        }
        if instr.memory_index() != Register::None {
            return None;
        }
        let base = instr.memory_base().full_register();
        match words.iter().find(|(r, _)| *r == base)? {
            (_, TableSlot::At(pointer)) => {
                Some(TableSlot::Through { pointer: *pointer, disp: instr.memory_displacement64() })
            }
            _ => None,
        }
    };
    for _ in 0..MAX_INSTRUCTIONS {
        if !decoder.can_decode() {
            return None;
        }
        let instr = decoder.decode();
        if instr.is_invalid() {
            return None;
        }
        match instr.flow_control() {
            FlowControl::Next | FlowControl::ConditionalBranch => {}
            FlowControl::IndirectBranch if instr.code() == Code::Jmp_rm64 => {
                return match instr.op0_kind() {
                    OpKind::Memory => slot_of(&instr, &words),
                    OpKind::Register => {
                        let reg = instr.op0_register().full_register();
                        words.iter().find(|(r, _)| *r == reg).map(|(_, slot)| *slot)
                    }
                    _ => None,
                };
            }
            _ => return None,
        }
        let load = (instr.code() == Code::Mov_r64_rm64 && instr.op1_kind() == OpKind::Memory)
            .then(|| slot_of(&instr, &words).map(|slot| (instr.op0_register().full_register(), slot)))
            .flatten();
        for used in factory.info(&instr).used_registers() {
            if matches!(
                used.access(),
                OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            ) {
                let reg = used.register().full_register();
                words.retain(|(r, _)| *r != reg);
            }
        }
        if let Some(l) = load {
            words.push(l);
        }
    }
    None
}

/// The `struct pt_regs` word of a general-purpose register (for the attach cookie).
pub fn pt_regs_word(reg: Register) -> Option<u8> {
    use pyleak_common::*;
    Some(match reg.full_register() {
        Register::R15 => PT_R15,
        Register::R14 => PT_R14,
        Register::R13 => PT_R13,
        Register::R12 => PT_R12,
        Register::RBP => PT_RBP,
        Register::RBX => PT_RBX,
        Register::R11 => PT_R11,
        Register::R10 => PT_R10,
        Register::R9 => PT_R9,
        Register::R8 => PT_R8,
        Register::RAX => PT_RAX,
        Register::RCX => PT_RCX,
        Register::RDX => PT_RDX,
        Register::RSI => PT_RSI,
        Register::RDI => PT_RDI,
        _ => return None,
    })
}

/// The attach cookie telling the entry program where `plan`'s values are (see
/// `pyleak_common::entry_cookie`); 0 (the C ABI registers) when a value has no such home.
pub fn cookie(values: &[Register]) -> u64 {
    let mut words = [0u8; pyleak_common::MAX_ENTRY_VALUES];
    for (i, reg) in values.iter().enumerate().take(words.len()) {
        match pt_regs_word(*reg) {
            Some(w) => words[i] = w,
            None => return 0,
        }
    }
    let cookie = pyleak_common::entry_cookie(words);
    // Unused value slots stay "C ABI" (byte 0).
    let used_bytes = values.len().min(words.len());
    if used_bytes == 0 { 0 } else { cookie & ((1u64 << (8 * used_bytes)) - 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: u64 = 0x1000;

    fn role(values: &[Register], return_probe: bool) -> Role {
        Role { values: values.to_vec(), return_probe, reads_stack: false }
    }

    #[test]
    fn push_at_the_entry_is_taken() {
        // _PyObject_Malloc (3.12): push %rbp; push %rbx; mov %rsi,%rbx
        let code = [0x55, 0x53, 0x48, 0x89, 0xf3];
        let p = plan(&code, IP, &role(&[Register::RSI], true));
        assert_eq!((p.offset, p.emulated, p.instruction.as_str()), (0, true, "push %rbp"), "{p:?}");
        assert!(p.reason.contains("shared with the return probe"), "{p:?}");
    }

    #[test]
    fn free_moves_to_the_je() {
        // _PyObject_Free: test %rsi,%rsi; je +0xb7 (rel32)
        let code = [0x48, 0x85, 0xf6, 0x0f, 0x84, 0xb7, 0x00, 0x00, 0x00, 0x41, 0x54];
        let p = plan(&code, IP, &role(&[Register::RSI], false));
        assert_eq!((p.offset, p.emulated), (3, true), "{p:?}");
        assert_eq!(p.values, [Register::RSI]);
        assert!(p.instruction.starts_with("je"), "{p:?}");
    }

    #[test]
    fn a_copy_keeps_the_value() {
        // mov %rdi,%rbx; xor %edi,%edi; push %rbp  -> the value is in %rbx at the push
        let code = [0x48, 0x89, 0xfb, 0x31, 0xff, 0x55];
        let p = plan(&code, IP, &role(&[Register::RDI], false));
        assert_eq!((p.offset, p.values.as_slice()), (5, &[Register::RBX][..]), "{p:?}");
        assert!(p.reason.contains("%rbx"), "{p:?}");
        assert_eq!(cookie(&p.values), pyleak_common::PT_RBX as u64 + 1);
    }

    #[test]
    fn an_overwritten_argument_falls_back() {
        // mov %rsi,%rdi (rdi lost); push %rbx
        let code = [0x48, 0x89, 0xf7, 0x53];
        let p = plan(&code, IP, &role(&[Register::RDI], false));
        assert_eq!((p.offset, p.emulated), (0, false), "{p:?}");
        assert!(p.reason.contains("%rdi is overwritten at +0"), "{p:?}");
        // A partial write (mov $1,%edi) counts as an overwrite too.
        let code = [0xbf, 0x01, 0x00, 0x00, 0x00, 0x53];
        let p = plan(&code, IP, &role(&[Register::RDI], false));
        assert_eq!(p.offset, 0, "{p:?}");
    }

    #[test]
    fn no_emulated_instruction_before_a_branch() {
        // mov %rdi,%rsi; mov 0x10(%rip),%rdi... no: jmp *0x10(%rip) ends the straight line.
        let code = [0x48, 0x89, 0xfe, 0xff, 0x25, 0x10, 0x00, 0x00, 0x00];
        let p = plan(&code, IP, &role(&[Register::RDI], false));
        assert_eq!(p.offset, 0, "{p:?}");
        assert!(p.reason.contains("before the first branch"), "{p:?}");
    }

    #[test]
    fn a_jump_target_inside_the_prefix_is_not_a_site() {
        // +0 test %rdi,%rdi; +3 push %rbx; +4 jmp +3 (back to the push)
        let code = [0x48, 0x85, 0xff, 0x53, 0xeb, 0xfd];
        let p = plan(&code, IP, &role(&[Register::RDI], false));
        assert_eq!(p.offset, 0, "{p:?}");
        assert!(p.reason.contains("target of a jump"), "{p:?}");
    }

    #[test]
    fn the_kernels_refusals_and_exceptions() {
        let at = |code: &[u8]| {
            let instr = Decoder::with_ip(64, code, IP, DecoderOptions::NONE).decode();
            emulation(&instr, &code[..instr.len()])
        };
        assert_eq!(at(&[0x55]), Some("push"));
        assert_eq!(at(&[0x41, 0x54]), Some("push")); // push %r12
        assert_eq!(at(&[0x48, 0x55]), None); // rex.W push: single-stepped
        assert_eq!(at(&[0x90]), Some("nop"));
        assert_eq!(at(&[0xf3, 0x90]), None); // pause
        assert_eq!(at(&[0x0f, 0x1f, 0x44, 0x00, 0x00]), Some("nop"));
        assert_eq!(at(&[0x2e, 0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0]), None); // cs prefix: refused
        assert_eq!(at(&[0x66, 0x66, 0x48, 0xe8, 0, 0, 0, 0]), None); // TLS call with 66 66
        assert_eq!(at(&[0x3e, 0xff, 0xe0]), None); // notrack jmp *%rax
        assert_eq!(at(&[0xe8, 0, 0, 0, 0]), Some("call rel32"));
        assert_eq!(at(&[0x78, 0x10]), Some("jcc rel8"));
        assert_eq!(at(&[0xf3, 0x0f, 0x1e, 0xfa]), None); // endbr64: single-stepped
        assert_eq!(at(&[0x48, 0x89, 0xfe]), None); // mov
    }

    #[test]
    fn endbr64_is_stepped_over() {
        // endbr64; test %rdi,%rdi; je +0x10
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x10];
        let p = plan(&code, IP, &role(&[Register::RDI], false));
        assert_eq!(p.offset, 7, "{p:?}");
    }

    #[test]
    fn the_stack_rule() {
        // push %rbx; ... a program reading [rsp] may only go on the first instruction.
        let code = [0x48, 0x89, 0xf8, 0x53, 0x55];
        let mut r = role(&[Register::RDI], false);
        assert_eq!(plan(&code, IP, &r).offset, 3);
        r.reads_stack = true;
        let code = [0x48, 0x83, 0xec, 0x08, 0x53]; // sub $8,%rsp; push %rbx
        assert_eq!(plan(&code, IP, &r).offset, 0);
    }

    #[test]
    fn a_return_probe_keeps_the_entry() {
        // PyObject_Malloc (3.12): mov %rdi,%rsi; test %rdi,%rdi; js +0x18
        let code = [0x48, 0x89, 0xfe, 0x48, 0x85, 0xff, 0x78, 0x18];
        let p = plan(&code, IP, &role(&[Register::RDI], true));
        assert_eq!((p.offset, p.emulated), (0, false), "{p:?}");
        assert!(p.reason.contains("+6 `js"), "{p:?}");
        let p = plan(&code, IP, &role(&[Register::RDI], false));
        assert_eq!((p.offset, p.emulated), (6, true), "{p:?}");
    }

    #[test]
    fn wrappers_name_their_table_slot() {
        // 3.8 PyObject_Free: mov %rdi,%rsi; mov 0x250c56(%rip),%rdi; jmp *0x250c70(%rip)
        let code =
            [0x48, 0x89, 0xfe, 0x48, 0x8b, 0x3d, 0x56, 0x0c, 0x25, 0x00, 0xff, 0x25, 0x70, 0x0c, 0x25, 0x00];
        assert_eq!(table_slot(&code, 0xe1ba0), Some(TableSlot::At(0x332820)));
        // 3.12 PyObject_Free: mov 0x374819(%rip),%rax; mov %rdi,%rsi; mov 0xb0(%rax),%rdi;
        // jmp *0xd0(%rax)
        let code = [
            0x48, 0x8b, 0x05, 0x19, 0x48, 0x37, 0x00, 0x48, 0x89, 0xfe, 0x48, 0x8b, 0xb8, 0xb0, 0x00, 0x00,
            0x00, 0xff, 0xa0, 0xd0, 0x00, 0x00, 0x00,
        ];
        assert_eq!(table_slot(&code, 0x1cf4e0), Some(TableSlot::Through { pointer: 0x543d00, disp: 0xd0 }));
        // 3.12 PyObject_Calloc, after its overflow check: mov 0x374880(%rip),%rax; ...;
        // mov 0xc0(%rax),%rax; mov %rcx,%rdi; jmp *%rax
        let code = [
            0x48, 0x8b, 0x05, 0x80, 0x48, 0x37, 0x00, 0x48, 0x89, 0xf2, 0x48, 0x8b, 0x80, 0xc0, 0x00, 0x00,
            0x00, 0x48, 0x89, 0xcf, 0xff, 0xe0,
        ];
        assert_eq!(table_slot(&code, 0x1cf479), Some(TableSlot::Through { pointer: 0x543d00, disp: 0xc0 }));
        // An inlined allocator (tail call to free@plt) is not a thunk.
        assert_eq!(table_slot(&[0x48, 0x89, 0xf7, 0xe9, 0, 0, 0, 0], 0x1000), None);
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie(&[]), 0);
        assert_eq!(cookie(&[Register::RSI]), pyleak_common::PT_RSI as u64 + 1);
        let c = cookie(&[Register::RSI, Register::RDX]);
        assert_eq!(pyleak_common::cookie_word(c, 0), Some(pyleak_common::PT_RSI as u32));
        assert_eq!(pyleak_common::cookie_word(c, 1), Some(pyleak_common::PT_RDX as u32));
        assert_eq!(pyleak_common::cookie_word(0, 0), None);
    }
}
