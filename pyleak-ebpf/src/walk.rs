//! Walking the calling thread's Python frames, driven by the per-process `PyTarget` offsets
//! (versions differ only in data, never in code here).
use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
    generated::{self as helper, bpf_loop},
};
use pyleak_common::{
    ABSENT, CODE_FINGERPRINT_BITS, Counter, FRAME_WINDOW, INSTR_I32, INSTR_PTR, MAX_FRAMES, PyTarget,
    STACK_NO_PYTHON, STACK_READ_ERROR, STACK_TRUNCATED, StackTrace, TSTATE_GLOBAL, TSTATE_KEY_ONLY,
    TSTATE_TLS_DYNAMIC, TSTATE_TLS_STATIC,
};

use crate::maps::{
    CODE_CACHE, FRAME_SPAN, FSBASE_OFFSET, MAX_DEPTH, SPAN_BYTES, SPAN_CSTACK, SPAN_DATA, SPAN_WORDS,
    TARGETS, code_slot, count,
};

const PAGE_BYTES: u64 = 4096;

/// Reads a `T` at `addr` in the current (target) process.
#[inline(always)]
fn read<T>(addr: u64) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_user validates the address and fails instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const T) }.map_err(|_| ())
}

#[inline(always)]
fn at(base: u64, offset: i32) -> u64 {
    base.wrapping_add(offset as i64 as u64)
}

/// The calling thread's fs base: its thread pointer, `pthread_self()` with glibc.
#[inline(always)]
fn fsbase() -> Result<u64, ()> {
    let offset = FSBASE_OFFSET.load();
    if offset == 0 {
        return Err(());
    }
    // SAFETY: the helper returns the current task; the read is checked by the kernel.
    unsafe {
        let task = bpf_get_current_task();
        bpf_probe_read_kernel((task + offset as u64) as *const u64).map_err(|_| ())
    }
}

/// The calling thread's `PyThreadState *`, or 0 if it has none (a thread that never ran
/// Python): the running thread state, else the thread's own one from the pthread key (set
/// for every Python thread, with or without the GIL).
#[inline(always)]
fn current_tstate(t: &PyTarget) -> Result<u64, ()> {
    let tstate = running_tstate(t)?;
    if tstate != 0 || t.tss_key_addr == 0 || t.pthread_specific == ABSENT {
        return Ok(tstate);
    }
    // C: pthread_getspecific(_PyRuntime.gilstate.autoTSSkey._key), as glibc implements it
    // for keys below 32: THREAD_SELF->specific_1stblock[key].data.
    let key: u32 = read(t.tss_key_addr)?;
    if key >= 32 {
        return Ok(0);
    }
    let fs = fsbase()?;
    let slot = fs.wrapping_add(t.pthread_specific as i64 as u64) + 16 * key as u64 + 8;
    // Only trust it if it names this thread (a wrong libc offset must not misattribute).
    owned_by(t, read(slot)?, fs)
}

/// `tstate` if it belongs to the thread whose fs base is `fs` (`tstate->thread_id ==
/// pthread_self()`, which is the fs base with glibc), else 0. Without a `thread_id` offset
/// it is taken as is.
#[inline(always)]
fn owned_by(t: &PyTarget, tstate: u64, fs: u64) -> Result<u64, ()> {
    if tstate == 0 || t.tstate_thread_id == ABSENT {
        return Ok(tstate);
    }
    let owner: u64 = read(at(tstate, t.tstate_thread_id))?;
    Ok(if owner == fs { tstate } else { 0 })
}

/// The thread state running Python on the calling thread (holding the GIL), or 0.
#[inline(always)]
fn running_tstate(t: &PyTarget) -> Result<u64, ()> {
    match t.tstate_kind {
        TSTATE_GLOBAL => {
            // C: _PyRuntime.gilstate.tstate_current (the GIL holder). Allocations without the
            // GIL (PyMem_RawMalloc) are legal, so check that the holder is this thread.
            let tstate: u64 = read(t.tstate_addr)?;
            if tstate == 0 {
                return Ok(0);
            }
            owned_by(t, tstate, fsbase()?)
        }
        TSTATE_TLS_DYNAMIC => {
            let fs = fsbase()?;
            if t.tls_static != 0 && t.tls_static_off != 0 {
                // Static TLS: the block sits at the offset learnt below, in every thread.
                return read((fs as i64 + t.tls_static_off + t.tls_offset) as u64);
            }
            // C: ((void **)((dtv_t *)fsbase->dtv)[modid].pointer.val)[tls_offset], i.e. what
            // __tls_get_addr returns for _Py_tss_tstate in a shared libpython (glibc x86_64:
            // the DTV pointer is at fs:8, entries are 16 bytes).
            let modid: u64 = read(t.tls_module_id_addr)?;
            let dtv: u64 = read(fs + 8)?;
            let block: u64 = read(dtv + 16 * modid)?;
            if block == 0 || block == u64::MAX {
                return Ok(0); // this thread never touched the module's TLS
            }
            if t.tls_static != 0 && block != fs {
                if let Some(slot) = TARGETS.get_ptr_mut(0) {
                    // SAFETY: the target slot; every CPU would store the same value.
                    unsafe { (*slot).tls_static_off = block.wrapping_sub(fs) as i64 };
                }
            }
            read((block as i64 + t.tls_offset) as u64)
        }
        TSTATE_TLS_STATIC => read((fsbase()? as i64 + t.tls_offset) as u64),
        TSTATE_KEY_ONLY => Ok(0),
        _ => Err(()),
    }
}

/// FNV-1a step over one 64-bit word.
#[inline(always)]
fn mix(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Fills `st` with the calling thread's Python frames, innermost first, and returns the
/// stack id (a hash of the pid, the native caller and the frames). Never fails: what could
/// not be read is flagged in `st.flags` and counted.
#[inline(always)]
pub fn walk(tgid: u32, t: &PyTarget, native_caller: u64, st: &mut StackTrace) -> u64 {
    st.tgid = tgid;
    st.len = 0;
    st.flags = 0;
    st._pad = 0;
    st.native_caller = native_caller;
    let hash = mix(mix(0xcbf2_9ce4_8422_2325, tgid as u64), native_caller);

    let tstate = match current_tstate(t) {
        Ok(0) => {
            count(Counter::NoPythonStack);
            st.flags = STACK_NO_PYTHON;
            return mix(hash, STACK_NO_PYTHON as u64);
        }
        Ok(tstate) => tstate,
        Err(()) => {
            count(Counter::TstateReadErrors);
            st.flags = STACK_READ_ERROR | STACK_NO_PYTHON;
            return mix(hash, (STACK_READ_ERROR | STACK_NO_PYTHON) as u64);
        }
    };

    // This CPU's C-stack span, left over from an earlier walk: empty it.
    let cstack = FRAME_SPAN.get_ptr_mut(SPAN_CSTACK).unwrap_or(core::ptr::null_mut());
    // SAFETY: null or this CPU's map value, which outlives the walk.
    if let Some(c) = unsafe { cstack.as_mut() } {
        c.hi = 0;
    }

    // C (3.8–3.10): tstate->frame; (3.11–3.12): tstate->cframe->current_frame;
    // (3.13+): tstate->current_frame.
    let mut frame: u64 = read(at(tstate, t.tstate_frame)).unwrap_or(0);
    if t.cframe_current_frame != ABSENT && frame != 0 {
        // SAFETY: as above.
        frame = cframe_current_frame(t, frame, unsafe { cstack.as_mut() });
    }

    // bpf_loop verifies the step once, however deep the walk: an open-coded 128-iteration
    // loop made the verifier explore every iteration's exits and hit its 1M-insn limit.
    let mut walk = Walk {
        target: t,
        stack: st,
        frame,
        depth: (MAX_DEPTH.load() as usize).min(MAX_FRAMES) as u32,
        hash,
        // Only data-stack frames (3.11+, whose position is a pointer) sit next to each other;
        // older versions' frames are separate heap objects, read one window at a time.
        span: if t.instr_kind == INSTR_PTR {
            FRAME_SPAN.get_ptr_mut(SPAN_DATA).unwrap_or(core::ptr::null_mut())
        } else {
            core::ptr::null_mut()
        },
        cstack,
    };
    // SAFETY: null or this CPU's map value; left over from an earlier walk: empty it.
    if let Some(span) = unsafe { walk.span.as_mut() } {
        span.hi = 0;
    }
    // Two callbacks, one per frame kind, so the verifier explores each alone (together
    // their paths multiplied past its 1M-instruction limit).
    // SAFETY (both calls): the callback is a static function; the context lives on this
    // stack frame for the duration of the call.
    if !walk.span.is_null() {
        // SAFETY: as above.
        unsafe {
            bpf_loop(MAX_FRAMES as u32, walk_step_span as *mut c_void, (&mut walk as *mut Walk).cast(), 0)
        };
    }
    if walk.span.is_null() {
        // SAFETY: as above.
        unsafe { bpf_loop(MAX_FRAMES as u32, walk_step as *mut c_void, (&mut walk as *mut Walk).cast(), 0) };
    }
    // Frames left after the loops' last iteration (more shims than the bound allows for):
    // a cut, whatever they hold.
    if walk.frame != 0 && st.flags & (STACK_TRUNCATED | STACK_READ_ERROR) == 0 {
        truncate(st);
    }
    mix(walk.hash, st.flags as u64)
}

/// C (3.11–3.12): `cframe->current_frame`. The `_PyCFrame` is a local of the innermost
/// `_PyEval_EvalFrameDefault`, next to that call's entry shim (112 bytes below it in pyenv's
/// 3.12 build), so the C-stack span is copied from it: the 8 bytes needed cost one helper
/// call either way, and the span usually holds the walk's shims as well (see
/// [`entry_shim`]). 0 if it cannot be read.
#[inline(always)]
fn cframe_current_frame(t: &PyTarget, cframe: u64, cstack: Option<&mut Span>) -> u64 {
    if let Some(c) = cstack
        && c.fill_up(cframe)
        && let Ok(frame) = c.word(cframe, t.cframe_current_frame)
    {
        return frame;
    }
    read(at(cframe, t.cframe_current_frame)).unwrap_or(0)
}

/// State shared with [`walk_step`] across bpf_loop iterations.
#[repr(C)]
struct Walk {
    target: *const PyTarget,
    stack: *mut StackTrace,
    /// The next frame to read (0: done).
    frame: u64,
    depth: u32,
    hash: u64,
    /// This CPU's span (data-stack frames, 3.11+), or null: frames are read one by one.
    span: *mut Span,
    /// This CPU's span of the C stack, for entry shims (3.12+), or null.
    cstack: *mut Span,
}

/// A copy of the target's memory `[lo, hi)` in this CPU's [`FRAME_SPAN`] (`hi == 0`: none).
///
/// CPython 3.11+ pushes a thread's frames one above the other on its data stack (a caller
/// sits below its callee), so one copy from the leaf frame's window down to its page's start
/// holds most of the frames a walk needs. Each helper call costs far more than the bytes it
/// copies: a 10-frame walk made 10 window reads, and now makes one or two. The page bound
/// keeps the copy inside the data-stack chunk (chunks are whole pages), so it does not fail
/// on an unmapped page below. The bounds live in the map value, not in the walk's stack
/// state: the verifier does not track map contents, so iterations still prune.
#[repr(C)]
pub struct Span {
    lo: u64,
    hi: u64,
    words: [u64; SPAN_WORDS],
}

impl Span {
    /// Copies the memory below `frame`'s window, the window included. False (and the span
    /// emptied) if it cannot be read.
    #[inline(always)]
    fn fill(&mut self, frame: u64) -> bool {
        self.hi = 0;
        let hi = frame.wrapping_add(FRAME_WINDOW as u64);
        let lo = (frame & !(PAGE_BYTES - 1)).max(hi.wrapping_sub(SPAN_BYTES as u64));
        hi >= frame && self.copy(lo, hi.wrapping_sub(lo))
    }

    /// Copies the memory above `shim`, its window included: up to [`SPAN_BYTES`], else to the
    /// end of the page the window ends in (the top of a stack mapping). False (and the span
    /// emptied) if not even that can be read.
    #[inline(always)]
    fn fill_up(&mut self, shim: u64) -> bool {
        self.hi = 0;
        let end = shim.wrapping_add(FRAME_WINDOW as u64);
        let page_end = end.wrapping_add(PAGE_BYTES - 1) & !(PAGE_BYTES - 1);
        end >= shim
            && page_end >= end
            && (self.copy(shim, SPAN_BYTES as u64) || self.copy(shim, page_end.wrapping_sub(shim)))
    }

    /// Copies `len` bytes of the target's memory from `lo` into the buffer and makes them the
    /// span. False, the span left as it was, if `len` exceeds the buffer or the read fails.
    #[inline(always)]
    fn copy(&mut self, lo: u64, len: u64) -> bool {
        if len > SPAN_BYTES as u64 {
            return false;
        }
        // SAFETY: the helper validates the source; the destination is this CPU's buffer,
        // SPAN_BYTES long, and `len` is at most that.
        let failed = unsafe {
            helper::bpf_probe_read_user(self.words.as_mut_ptr().cast(), len as u32, lo as *const c_void)
        };
        if failed != 0 {
            return false;
        }
        (self.lo, self.hi) = (lo, lo.wrapping_add(len));
        true
    }

    /// Whether `frame`'s window lies in the span.
    #[inline(always)]
    fn holds(&self, frame: u64) -> bool {
        frame >= self.lo && frame < self.hi && frame.wrapping_add(FRAME_WINDOW as u64) <= self.hi
    }

    /// The 8 bytes at `frame + offset` (8-aligned); the frame must be held.
    #[inline(always)]
    fn word(&self, frame: u64, offset: i32) -> Result<u64, ()> {
        let o = frame.wrapping_sub(self.lo).wrapping_add(offset as u32 as u64);
        // The bound is checked on the byte offset itself, the form the verifier follows.
        if o > (SPAN_BYTES - 8) as u64 || o & 7 != 0 {
            return Err(());
        }
        // SAFETY: `o + 8` is within `words`, and `o` is 8-aligned like `words`.
        Ok(unsafe { *self.words.as_ptr().cast::<u8>().add(o as usize).cast::<u64>() })
    }

    /// The byte at `frame + offset`; the frame must be held.
    #[inline(always)]
    fn byte(&self, frame: u64, offset: i32) -> Result<u8, ()> {
        let offset = offset as u32;
        Ok((self.word(frame, (offset & !7) as i32)? >> (8 * (offset & 7))) as u8)
    }
}

/// One bpf_loop iteration over heap frames (3.8–3.10): records one Python frame. Returns 1
/// to stop.
#[inline(never)]
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: ctx is the `Walk` passed by `walk`, valid for the whole loop.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    if !more(w) {
        return 1;
    }
    // SAFETY: points into a map value that outlives the loop.
    let frame = read_frame(unsafe { &*w.target }, w.frame);
    take(w, frame)
}

/// One bpf_loop iteration over data-stack frames (3.11+), read through the span.
#[inline(never)]
extern "C" fn walk_step_span(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: ctx is the `Walk` passed by `walk`, valid for the whole loop.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    if !more(w) {
        return 1;
    }
    // SAFETY: points into a map value that outlives the loop.
    let t = unsafe { &*w.target };
    // SAFETY: null or this CPU's map value, which outlives the loop.
    let Some(span) = (unsafe { w.span.as_mut() }) else {
        return 1; // set null below: the verifier does not know that 1 ends the loop
    };
    if !span.holds(w.frame) {
        // A frame above the span is likely a shim on the C stack (a caller lies below its
        // callee on the data stack); the leaf (no span yet) or a frame below is copied at once.
        if span.hi != 0
            && w.frame >= span.hi
            // SAFETY: null or this CPU's other map value, which outlives the loop.
            && let Some(cstack) = unsafe { w.cstack.as_mut() }
            && let Some(back) = entry_shim(t, w.frame, cstack)
        {
            w.frame = back;
            return 0;
        }
        if !span.fill(w.frame) {
            // A window running off its mapping: `walk` goes on with `walk_step`, which reads
            // field by field (in this callback too, that path multiplied the verifier's
            // states).
            w.span = core::ptr::null_mut();
            return 1;
        }
    }
    let frame = frame_in_span(t, w.frame, span);
    take(w, frame)
}

/// The caller of `frame` if it is a C-stack entry shim (3.12+: `owner >=
/// FRAME_OWNED_BY_CSTACK`), read through `cstack`, the span of the C stack. Each call from C
/// into Python links such a frame, a local of `_PyEval_EvalFrameDefault` on the C stack,
/// between two data-stack frames: copying its page into the data-stack span would throw away
/// the page the caller is in, and the next frame would copy that back (measured on
/// pyperformance float: 7.3 page copies per walk with one span). Shims sit one above the
/// other on the C stack, outer calls higher, about 800 bytes apart on 3.12 (one
/// `_PyEval_EvalFrameDefault` and the few C frames between), so the span copied upwards from
/// the first one usually holds the rest: float's 3.6 shims per walk cost one copy, not 3.6
/// window reads (each helper call costs about 70 ns, its bytes almost nothing). `None` for
/// any other frame, or one that cannot be read.
#[inline(always)]
fn entry_shim(t: &PyTarget, frame: u64, cstack: &mut Span) -> Option<u64> {
    if t.frame_owner == ABSENT {
        return None;
    }
    if !cstack.holds(frame) && !cstack.fill_up(frame) {
        return None;
    }
    let owner = cstack.byte(frame, t.frame_owner).ok()?;
    if (owner as u32) < t.owner_skip_min {
        return None;
    }
    cstack.word(frame, t.frame_back).ok()
}

/// Whether the walk goes on: a frame is left. The depth is checked in [`take`], on Python
/// frames only: the entry shims and trampolines above the outermost one are not a cut.
#[inline(always)]
fn more(w: &mut Walk) -> bool {
    w.frame != 0
}

/// Flags the stack as cut at the depth (or at the walk's iteration bound).
#[inline(always)]
fn truncate(st: &mut StackTrace) {
    st.flags |= STACK_TRUNCATED;
    count(Counter::StacksTruncated);
}

/// Records what [`read_frame`] found and moves to the caller. Returns bpf_loop's 1 to stop.
#[inline(always)]
fn take(w: &mut Walk, frame: Result<(u64, Option<(u64, u32, u32)>), ()>) -> i64 {
    // SAFETY: points into a map value that outlives the loop.
    let st = unsafe { &mut *w.stack };
    match frame {
        Ok((_, Some(_))) if st.len >= w.depth => {
            truncate(st);
            1
        }
        Ok((back, Some((code, instr, fingerprint)))) => {
            let i = st.len as usize;
            if let (Some(c), Some(p), Some(f)) =
                (st.code.get_mut(i), st.instr.get_mut(i), st.fingerprint.get_mut(i))
            {
                *c = code;
                *p = instr;
                *f = fingerprint;
                st.len += 1;
                w.hash = mix(mix(w.hash, code), ((fingerprint as u64) << 32) | instr as u64);
            }
            w.frame = back;
            0
        }
        Ok((back, None)) => {
            w.frame = back; // a C-stack shim frame: not Python code
            0
        }
        Err(()) => {
            st.flags |= STACK_READ_ERROR;
            count(Counter::FrameReadErrors);
            1
        }
    }
}

/// One frame: its caller, and its (code, position, first line) unless it is a shim to skip.
///
/// The frame's fields all lie in its first [`FRAME_WINDOW`] bytes (the user side checks every
/// layout), so they come from one read of that window: one helper call per frame instead of
/// four, the largest cost of a walk. A window that cannot be read whole (a frame at the very
/// end of a mapping) is read field by field.
#[inline(always)]
fn read_frame(t: &PyTarget, frame: u64) -> Result<(u64, Option<(u64, u32, u32)>), ()> {
    let mut slot = MaybeUninit::uninit();
    let Some(buf) = read_window(frame, &mut slot) else {
        return read_frame_fields(t, frame);
    };
    decode(t, |offset| word(buf, offset), |offset| buf.get(offset as u32 as usize).copied().ok_or(()))
}

/// [`read_frame`] for a data-stack frame (3.11+) held in `span`.
#[inline(always)]
fn frame_in_span(t: &PyTarget, frame: u64, span: &Span) -> Result<(u64, Option<(u64, u32, u32)>), ()> {
    decode(t, |offset| span.word(frame, offset), |offset| span.byte(frame, offset))
}

/// Copies `frame`'s first [`FRAME_WINDOW`] bytes into `slot`, which is not zeroed first:
/// clearing 128 bytes of BPF stack costs as much as reading them. `None` if unreadable.
#[inline(always)]
fn read_window(frame: u64, slot: &mut MaybeUninit<[u8; FRAME_WINDOW]>) -> Option<&[u8; FRAME_WINDOW]> {
    // SAFETY: the helper validates the source and, on success, fills the whole destination
    // (on failure it zeroes it); the verifier accepts uninitialized stack for it.
    let failed = unsafe {
        helper::bpf_probe_read_user(slot.as_mut_ptr().cast(), FRAME_WINDOW as u32, frame as *const c_void)
    };
    // SAFETY: filled when the helper succeeded.
    (failed == 0).then(|| unsafe { slot.assume_init_ref() })
}

/// One frame's caller and (code, position, first line), from its bytes wherever they were
/// copied: `word(offset)` and `byte(offset)` give the frame's fields.
#[inline(always)]
fn decode(
    t: &PyTarget,
    word: impl Fn(i32) -> Result<u64, ()>,
    byte: impl Fn(i32) -> Result<u8, ()>,
) -> Result<(u64, Option<(u64, u32, u32)>), ()> {
    let back = word(t.frame_back)?;
    // C (3.12+): frame->owner >= FRAME_OWNED_BY_CSTACK marks an entry shim.
    if t.frame_owner != ABSENT && byte(t.frame_owner)? as u32 >= t.owner_skip_min {
        return Ok((back, None));
    }
    // C: frame->f_code (3.8–3.12) / frame->f_executable (3.13+, tagged in 3.14).
    let code = word(t.frame_code)? & t.code_mask;
    if t.skips_code(code) {
        return Ok((back, None));
    }
    let raw = word(t.frame_instr)?;
    let instr = if t.instr_kind == INSTR_I32 {
        // C: frame->f_lasti (the low half of the word: little endian).
        raw as u32
    } else {
        // C: frame->prev_instr (3.11–3.12) / frame->instr_ptr (3.13+), kept relative to the
        // code object so that it fits in 32 bits.
        raw.wrapping_sub(code) as u32
    };
    // C: code->co_firstlineno, the fingerprint of this code object.
    let fingerprint = fingerprint(t, code)?;
    Ok((back, Some((code, instr, fingerprint))))
}

/// The code object's `pyleak_common::code_fingerprint` (its first line, file name and line
/// table): from the code cache when the target allows it (`PyTarget::code_cache`), else
/// read. Sound because a code object on the walking thread's stack is alive (its frame
/// holds a reference), and its free, which comes before its address can be reused, clears
/// its entry (`free::forget_code`).
#[inline(always)]
fn fingerprint(t: &PyTarget, code: u64) -> Result<u32, ()> {
    let cacheable = t.code_cache != 0 && code & 15 == 0;
    let slot = if cacheable { CODE_CACHE.get_ptr_mut(code_slot(code)) } else { None };
    let Some(slot) = slot else {
        return read_fingerprint(t, code);
    };
    // SAFETY: a valid array slot; whole-u64 accesses (no torn entries across CPUs).
    let entry = unsafe { core::ptr::read_volatile(slot) };
    if entry != 0 && entry >> CODE_FINGERPRINT_BITS == code >> 4 {
        return Ok((entry & ((1 << CODE_FINGERPRINT_BITS) - 1)) as u32);
    }
    let fingerprint = read_fingerprint(t, code)?;
    if code >> (64 - CODE_FINGERPRINT_BITS + 4) == 0 {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(slot, (code >> 4) << CODE_FINGERPRINT_BITS | fingerprint as u64) };
    }
    Ok(fingerprint)
}

/// C: `code_fingerprint(code->co_firstlineno, code->co_filename, code->co_linetable,
/// tail of code->co_filename)`.
#[inline(always)]
fn read_fingerprint(t: &PyTarget, code: u64) -> Result<u32, ()> {
    let first_line = read::<u32>(at(code, t.code_first_line))?;
    let filename = read::<u64>(at(code, t.code_filename))?;
    let linetable = read::<u64>(at(code, t.code_linetable))?;
    // C: ((PyASCIIObject *)filename)->length
    let length = read::<u64>(filename.wrapping_add(16))?;
    let last_bytes = match pyleak_common::filename_tail_at(filename, t.str_ascii_data as u64, length) {
        Some(addr) => read::<u64>(addr)?,
        None => 0,
    };
    let tail = pyleak_common::FilenameTail { length, last_bytes };
    Ok(pyleak_common::code_fingerprint(first_line, filename, linetable, tail))
}

/// The 8 bytes at `offset` in a frame window (little endian).
#[inline(always)]
fn word(buf: &[u8; FRAME_WINDOW], offset: i32) -> Result<u64, ()> {
    let o = offset as u32 as usize; // a negative offset becomes huge and fails the check
    if o > FRAME_WINDOW - 8 {
        return Err(());
    }
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[o..o + 8]);
    Ok(u64::from_le_bytes(bytes))
}

/// [`read_frame`], one field at a time. Inlined: a BPF subprogram returning a Rust enum gets
/// BTF the kernel refuses, and bpf_loop needs the object's BTF.
#[inline(always)]
fn read_frame_fields(t: &PyTarget, frame: u64) -> Result<(u64, Option<(u64, u32, u32)>), ()> {
    let back: u64 = read(at(frame, t.frame_back))?;
    if t.frame_owner != ABSENT {
        let owner: u8 = read(at(frame, t.frame_owner))?;
        if owner as u32 >= t.owner_skip_min {
            return Ok((back, None));
        }
    }
    let code: u64 = read::<u64>(at(frame, t.frame_code))? & t.code_mask;
    if t.skips_code(code) {
        return Ok((back, None));
    }
    let instr = if t.instr_kind == INSTR_I32 {
        read::<i32>(at(frame, t.frame_instr))? as u32
    } else {
        read::<u64>(at(frame, t.frame_instr))?.wrapping_sub(code) as u32
    };
    let fingerprint = fingerprint(t, code)?;
    Ok((back, Some((code, instr, fingerprint))))
}
