//! A small reader for the kernel's BTF (BPF Type Format), enough to find struct member offsets.
//!
//! Our eBPF programs are written in Rust with aya, which gives us no CO-RE field relocations,
//! so they cannot ask the loader to patch `task->thread.fsbase` for the running kernel. Instead
//! the daemon reads the kernel's own type information from `/sys/kernel/btf/vmlinux`, computes
//! the byte offset here ([`task_fsbase_offset`]), and `probes` hands it to the kernel programs
//! as a loader-set global. With it they read the calling thread's fs base (the x86_64 TLS
//! pointer) from `bpf_get_current_task()`.
//!
//! The format follows <https://docs.kernel.org/bpf/btf.html> and the kernel's
//! `include/uapi/linux/btf.h`: a header, a type section of variable-length records (type ids
//! are their 1-based positions; id 0 is `void`), and a section of NUL-terminated names. Only
//! struct and union members are kept; every other record is walked over by its kind's known
//! trailing size. Every read is bounds-checked, so malformed input is an error, never a panic.
//! Split BTF (kernel modules, which refer to vmlinux's ids) is not supported.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where the running kernel exposes its BTF (needs `CONFIG_DEBUG_INFO_BTF`).
pub const SYS_FS_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// `BTF_MAGIC`, read little-endian. A big-endian blob reads as `0x9feb`.
const MAGIC: u16 = 0xeb9f;
/// `sizeof(struct btf_header)` for `BTF_VERSION` 1; later headers may be longer (`hdr_len`).
const HEADER_LEN: usize = 24;
/// Bytes of `struct btf_type` before each kind's trailing data.
const TYPE_LEN: usize = 12;

// `BTF_KIND_*` from include/uapi/linux/btf.h.
const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// How many typedef/const/volatile/restrict/type_tag links [`Btf::resolve`] follows before it
/// calls the chain a loop. Real kernels need a handful.
const MAX_MODIFIER_CHAIN: usize = 32;
/// How deeply anonymous struct/union members may nest before the search calls it a loop.
const MAX_ANON_DEPTH: usize = 32;

/// Why BTF could not be read or a member offset could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read (missing on kernels without `CONFIG_DEBUG_INFO_BTF`).
    #[error("failed to read btf from {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not well-formed BTF; `offset` is from the start of the blob.
    #[error("malformed btf in {origin} at byte {offset}: {reason}")]
    Malformed { origin: String, offset: usize, reason: String },
    /// A type id points outside the type table, or a chain of references loops.
    #[error("bad btf type id {type_id} in {origin}: {reason}")]
    BadType { origin: String, type_id: u32, reason: &'static str },
    /// No struct of this name (or only empty forward-declared ones).
    #[error("struct {name} not found in {origin}")]
    StructNotFound { name: String, origin: String },
    /// `member_offset` was given no member names.
    #[error("empty member path for struct {struct_name}")]
    EmptyPath { struct_name: String },
    /// A path element is not a member of the struct or union reached so far; `container`
    /// reads like `struct thread_struct` or `union (anon)`.
    #[error("member `{member}` not found in {container}")]
    MemberNotFound { member: String, container: String },
    /// The path goes on past a member whose type is not a struct or union.
    #[error("member `{member}` of {container} is not a struct or union, cannot look inside it")]
    NotComposite { member: String, container: String },
    /// The member is a bitfield that does not start on a byte boundary.
    #[error("member `{path}` of struct {struct_name} is at bit offset {bit_offset}, not on a byte boundary")]
    Unaligned { struct_name: String, path: String, bit_offset: u64 },
    /// The summed offset does not fit a `u32` (only possible with malformed input).
    #[error("offset of member `{path}` of struct {struct_name} does not fit in 32 bits")]
    OffsetOverflow { struct_name: String, path: String },
}

/// One type record, reduced to what member lookups need.
#[derive(Debug, Clone)]
struct BtfType {
    name_off: u32,
    kind: u8,
    /// Bit 31 of `info`. For struct/union: member `offset` fields hold
    /// `bitfield_size << 24 | bit_offset`.
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Index of the first member in [`Btf::members`] (struct/union only).
    members_start: usize,
    /// Member count (struct/union only; 0 for other kinds).
    members_len: usize,
}

/// One `struct btf_member`.
#[derive(Debug, Clone, Copy)]
struct BtfMember {
    name_off: u32,
    type_id: u32,
    /// Raw `offset` field; see [`BtfType::kind_flag`].
    offset: u32,
}

impl BtfMember {
    /// Bit offset from the start of the containing struct/union.
    fn bit_offset(&self, kind_flag: bool) -> u64 {
        if kind_flag { u64::from(self.offset & 0x00ff_ffff) } else { u64::from(self.offset) }
    }
}

/// Parsed BTF: the type table and the string section.
#[derive(Debug, Clone)]
pub struct Btf {
    /// Index = type id; index 0 is a placeholder for `void`.
    types: Vec<BtfType>,
    members: Vec<BtfMember>,
    strings: Vec<u8>,
    /// Where the bytes came from, for error messages.
    origin: String,
}

/// Bounds-checked little-endian reads over the blob; errors name the absolute byte offset.
struct Reader<'a> {
    data: &'a [u8],
    origin: &'a str,
}

impl Reader<'_> {
    fn malformed(&self, offset: usize, reason: impl Into<String>) -> BtfError {
        BtfError::Malformed { origin: self.origin.to_owned(), offset, reason: reason.into() }
    }

    fn bytes<const N: usize>(&self, at: usize, what: &str) -> Result<[u8; N], BtfError> {
        at.checked_add(N)
            .and_then(|end| self.data.get(at..end))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| self.malformed(at, format!("{what} truncated")))
    }

    fn u8(&self, at: usize, what: &str) -> Result<u8, BtfError> {
        Ok(self.bytes::<1>(at, what)?[0])
    }

    fn u16(&self, at: usize, what: &str) -> Result<u16, BtfError> {
        Ok(u16::from_le_bytes(self.bytes(at, what)?))
    }

    fn u32(&self, at: usize, what: &str) -> Result<u32, BtfError> {
        Ok(u32::from_le_bytes(self.bytes(at, what)?))
    }

    /// `len` bytes at `hdr_len + off`, as the absolute range.
    fn section(
        &self,
        hdr_len: usize,
        off: u32,
        len: u32,
        what: &str,
    ) -> Result<std::ops::Range<usize>, BtfError> {
        let start = hdr_len.checked_add(off as usize);
        let end = start.and_then(|s| s.checked_add(len as usize));
        match (start, end) {
            (Some(start), Some(end)) if end <= self.data.len() => Ok(start..end),
            _ => Err(self.malformed(
                hdr_len,
                format!(
                    "{what} section (offset {off}, length {len}) runs past the end of {} bytes",
                    self.data.len()
                ),
            )),
        }
    }
}

/// Trailing bytes after `struct btf_type` for `kind`, or `None` for a kind this reader does not
/// know (so it cannot tell where the next record starts).
fn trailing_len(kind: u8, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => 12 * vlen,
        KIND_ENUM => 8 * vlen,
        KIND_FUNC_PROTO => 8 * vlen,
        KIND_VAR => 4,
        KIND_DATASEC => 12 * vlen,
        KIND_DECL_TAG => 4,
        KIND_ENUM64 => 12 * vlen,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC
        | KIND_FLOAT | KIND_TYPE_TAG => 0,
        _ => return None,
    })
}

fn is_composite(kind: u8) -> bool {
    kind == KIND_STRUCT || kind == KIND_UNION
}

impl Btf {
    /// Parses a whole BTF blob (as in `/sys/kernel/btf/vmlinux` or an ELF `.BTF` section).
    pub fn from_bytes(data: Vec<u8>) -> Result<Btf, BtfError> {
        Self::parse(&data, "in-memory btf data".to_owned())
    }

    /// Reads and parses the running kernel's BTF from `/sys/kernel/btf/vmlinux`.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Self::from_file(Path::new(SYS_FS_VMLINUX))
    }

    /// Reads and parses a raw BTF file (not an ELF object).
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.to_owned(), source })?;
        Self::parse(&data, path.display().to_string())
    }

    fn parse(data: &[u8], origin: String) -> Result<Btf, BtfError> {
        let r = Reader { data, origin: &origin };
        // struct btf_header { u16 magic; u8 version; u8 flags; u32 hdr_len;
        //                     u32 type_off, type_len, str_off, str_len; }
        let magic = r.u16(0, "header")?;
        if magic != MAGIC {
            let reason = if magic == MAGIC.swap_bytes() {
                "big-endian btf is not supported".to_owned()
            } else {
                format!("bad magic {magic:#06x}, expected {MAGIC:#06x}")
            };
            return Err(r.malformed(0, reason));
        }
        let version = r.u8(2, "header")?;
        if version != 1 {
            return Err(r.malformed(2, format!("unsupported btf version {version}")));
        }
        let hdr_len = r.u32(4, "header")? as usize;
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(
                r.malformed(4, format!("header length {hdr_len} is outside {HEADER_LEN}..={}", data.len()))
            );
        }
        let type_off = r.u32(8, "header")?;
        let type_len = r.u32(12, "header")?;
        let str_off = r.u32(16, "header")?;
        let str_len = r.u32(20, "header")?;
        let type_range = r.section(hdr_len, type_off, type_len, "type")?;
        let str_range = r.section(hdr_len, str_off, str_len, "string")?;

        // The kernel requires the string section to start with the empty name and end with a
        // NUL; with that, every in-range name offset has a terminator.
        let strings = &data[str_range.clone()];
        if !strings.is_empty() && (strings[0] != 0 || strings[strings.len() - 1] != 0) {
            return Err(r.malformed(str_range.start, "string section does not start and end with a nul byte"));
        }
        let check_name = |name_off: u32, at: usize| -> Result<(), BtfError> {
            if name_off == 0 || (name_off as usize) < strings.len() {
                Ok(())
            } else {
                Err(r.malformed(
                    at,
                    format!("name offset {name_off} is past the string section ({} bytes)", strings.len()),
                ))
            }
        };

        let mut types = vec![BtfType {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members_start: 0,
            members_len: 0,
        }];
        let mut members = Vec::new();
        let mut pos = type_range.start;
        while pos < type_range.end {
            if type_range.end - pos < TYPE_LEN {
                return Err(r.malformed(pos, "type record truncated"));
            }
            let name_off = r.u32(pos, "type record")?;
            let info = r.u32(pos + 4, "type record")?;
            let size_or_type = r.u32(pos + 8, "type record")?;
            check_name(name_off, pos)?;
            // info: bits 0-15 vlen, bits 24-28 kind, bit 31 kind_flag.
            let vlen = (info & 0xffff) as usize;
            let kind = ((info >> 24) & 0x1f) as u8;
            let kind_flag = info >> 31 == 1;
            let type_id = types.len();
            let extra = trailing_len(kind, vlen)
                .ok_or_else(|| r.malformed(pos, format!("unknown btf kind {kind} for type id {type_id}")))?;
            let body = pos + TYPE_LEN;
            if type_range.end - body < extra {
                return Err(
                    r.malformed(pos, format!("type id {type_id} (kind {kind}) runs past the type section"))
                );
            }
            let members_start = members.len();
            let mut members_len = 0;
            if is_composite(kind) {
                // struct btf_member { u32 name_off; u32 type; u32 offset; }
                for i in 0..vlen {
                    let at = body + 12 * i;
                    let member = BtfMember {
                        name_off: r.u32(at, "member")?,
                        type_id: r.u32(at + 4, "member")?,
                        offset: r.u32(at + 8, "member")?,
                    };
                    check_name(member.name_off, at)?;
                    members.push(member);
                }
                members_len = vlen;
            }
            types.push(BtfType { name_off, kind, kind_flag, size_or_type, members_start, members_len });
            pos = body + extra;
        }

        Ok(Btf { types, members, strings: strings.to_vec(), origin })
    }

    /// Byte offset of a member path inside a named struct, following nested struct/union
    /// members (and anonymous struct/union members transparently), e.g.
    /// `member_offset("task_struct", &["thread", "fsbase"])`.
    ///
    /// When several structs share the name, the first one that has the whole path wins,
    /// trying non-empty ones first; if none has it, the error is from the first one tried.
    pub fn member_offset(&self, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        if path.is_empty() {
            return Err(BtfError::EmptyPath { struct_name: struct_name.to_owned() });
        }
        // Candidates with a body first: an empty `struct foo {}` (or a stray zero-sized
        // duplicate) should not be the one whose error is reported.
        let mut candidates: Vec<u32> = (1..self.types.len())
            .filter(|&id| {
                let t = &self.types[id];
                t.kind == KIND_STRUCT && self.name_bytes(t.name_off) == struct_name.as_bytes()
            })
            // Ids fit in u32: each came from a record of at least 12 bytes in a u32-long section.
            .map(|id| id as u32)
            .collect();
        candidates.sort_by_key(|&id| self.types[id as usize].size_or_type == 0);
        let mut first_err = None;
        for id in candidates {
            match self.path_offset(id, struct_name, path) {
                Ok(offset) => return Ok(offset),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| BtfError::StructNotFound {
            name: struct_name.to_owned(),
            origin: self.origin.clone(),
        }))
    }

    /// Number of type ids, counting `void` (id 0).
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    fn path_offset(&self, struct_id: u32, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut container = struct_id;
        let mut bits: u64 = 0;
        for (i, &member) in path.iter().enumerate() {
            let (member_bits, member_type) = self.find_member(container, member, 0)?.ok_or_else(|| {
                BtfError::MemberNotFound { member: member.to_owned(), container: self.describe(container) }
            })?;
            bits += member_bits;
            if i + 1 < path.len() {
                let next = self.resolve(member_type)?;
                if !is_composite(self.ty(next)?.kind) {
                    return Err(BtfError::NotComposite {
                        member: member.to_owned(),
                        container: self.describe(container),
                    });
                }
                container = next;
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Unaligned {
                struct_name: struct_name.to_owned(),
                path: path.join("."),
                bit_offset: bits,
            });
        }
        u32::try_from(bits / 8).map_err(|_| BtfError::OffsetOverflow {
            struct_name: struct_name.to_owned(),
            path: path.join("."),
        })
    }

    /// Finds `name` among the members of struct/union `container`, descending into anonymous
    /// struct/union members as C does. Returns the bit offset from `container`'s start and the
    /// member's (unresolved) type id.
    fn find_member(&self, container: u32, name: &str, depth: usize) -> Result<Option<(u64, u32)>, BtfError> {
        if depth > MAX_ANON_DEPTH {
            return Err(self.bad_type(container, "anonymous members nest too deeply (a loop?)"));
        }
        let t = self.ty(container)?;
        for m in self.members_of(t) {
            let offset = m.bit_offset(t.kind_flag);
            let member_name = self.name_bytes(m.name_off);
            if member_name == name.as_bytes() {
                return Ok(Some((offset, m.type_id)));
            }
            if member_name.is_empty() {
                let inner = self.resolve(m.type_id)?;
                if is_composite(self.ty(inner)?.kind)
                    && let Some((inner_offset, type_id)) = self.find_member(inner, name, depth + 1)?
                {
                    return Ok(Some((offset + inner_offset, type_id)));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedef/const/volatile/restrict/type_tag links to the underlying type id.
    fn resolve(&self, mut type_id: u32) -> Result<u32, BtfError> {
        for _ in 0..=MAX_MODIFIER_CHAIN {
            let t = self.ty(type_id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_CONST | KIND_VOLATILE | KIND_RESTRICT | KIND_TYPE_TAG => {
                    type_id = t.size_or_type;
                }
                _ => return Ok(type_id),
            }
        }
        Err(self.bad_type(type_id, "typedef/modifier chain too long (a loop?)"))
    }

    fn ty(&self, type_id: u32) -> Result<&BtfType, BtfError> {
        self.types.get(type_id as usize).ok_or_else(|| self.bad_type(type_id, "no such type"))
    }

    fn members_of(&self, t: &BtfType) -> &[BtfMember] {
        self.members.get(t.members_start..t.members_start.saturating_add(t.members_len)).unwrap_or(&[])
    }

    /// The NUL-terminated name at `name_off`; empty for anonymous types and for offsets that
    /// parsing would have rejected.
    fn name_bytes(&self, name_off: u32) -> &[u8] {
        let tail = self.strings.get(name_off as usize..).unwrap_or(&[]);
        tail.split(|&b| b == 0).next().unwrap_or(&[])
    }

    /// `struct thread_struct`, `union (anon)`: how errors name a container.
    fn describe(&self, type_id: u32) -> String {
        let Ok(t) = self.ty(type_id) else {
            return format!("type id {type_id}");
        };
        let kind = match t.kind {
            KIND_STRUCT => "struct",
            KIND_UNION => "union",
            _ => "type",
        };
        let name = self.name_bytes(t.name_off);
        if name.is_empty() {
            format!("{kind} (anon)")
        } else {
            format!("{kind} {}", String::from_utf8_lossy(name))
        }
    }

    fn bad_type(&self, type_id: u32, reason: &'static str) -> BtfError {
        BtfError::BadType { origin: self.origin.clone(), type_id, reason }
    }
}

/// Offset of `task_struct.thread.fsbase` in the running kernel: where the saved fs base (the
/// x86_64 TLS pointer) of a task lives. Only x86_64's `thread_struct` has `fsbase`; elsewhere
/// this returns [`BtfError::MemberNotFound`].
pub fn task_fsbase_offset() -> Result<u32, BtfError> {
    Btf::from_sys_fs()?.member_offset("task_struct", &["thread", "fsbase"])
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- Against the running kernel ----

    /// The running kernel's BTF, or `None` (with a message) on kernels without it.
    fn sys_btf() -> Option<Btf> {
        if !Path::new(SYS_FS_VMLINUX).exists() {
            eprintln!("skipping: {SYS_FS_VMLINUX} missing (kernel built without CONFIG_DEBUG_INFO_BTF)");
            return None;
        }
        Some(Btf::from_sys_fs().unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn sys_list_head_prev() {
        let Some(btf) = sys_btf() else { return };
        assert_eq!(btf.member_offset("list_head", &["next"]).unwrap(), 0);
        assert_eq!(btf.member_offset("list_head", &["prev"]).unwrap(), 8);
    }

    #[test]
    fn sys_errors_name_what_is_missing() {
        let Some(btf) = sys_btf() else { return };
        let err = btf.member_offset("no_such_struct_xyz", &["a"]).unwrap_err();
        assert_eq!(err.to_string(), "struct no_such_struct_xyz not found in /sys/kernel/btf/vmlinux");
        let err = btf.member_offset("list_head", &["nope"]).unwrap_err();
        assert_eq!(err.to_string(), "member `nope` not found in struct list_head");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sys_task_fsbase_offset() {
        let Some(btf) = sys_btf() else { return };
        let fsbase = task_fsbase_offset().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("task_struct.thread.fsbase at byte {fsbase}");
        // An unsigned long somewhere inside task_struct (a few KiB on every config).
        assert!(fsbase > 0 && fsbase < 64 * 1024, "implausible offset {fsbase}");
        assert_eq!(fsbase % 8, 0, "fsbase is an unsigned long, 8-byte aligned");

        let pid = btf.member_offset("task_struct", &["pid"]).unwrap();
        let thread = btf.member_offset("task_struct", &["thread"]).unwrap();
        // `thread` is documented to be the last member of task_struct (it varies in size).
        assert!(pid < thread, "pid {pid} should precede thread {thread}");
        assert!(fsbase > thread && fsbase - thread < 512, "fsbase {fsbase}, thread {thread}");

        match independent_fsbase_offset() {
            Some((source, expected)) => {
                eprintln!("cross-checked against {source}: {expected}");
                assert_eq!(fsbase, expected, "disagrees with {source}");
            }
            None => eprintln!("no bpftool or pahole: checked ordering only"),
        }
    }

    /// `task_struct.thread.fsbase` as bpftool or pahole (both independent BTF decoders) see
    /// it, when one of them is installed.
    fn independent_fsbase_offset() -> Option<(&'static str, u32)> {
        for bpftool in ["bpftool", "/usr/sbin/bpftool"] {
            if let Some(raw) = run(bpftool, &["btf", "dump", "file", SYS_FS_VMLINUX, "format", "raw"]) {
                if let Some(offset) = bpftool_raw_offset(&raw, "task_struct", &["thread", "fsbase"]) {
                    return Some(("bpftool btf dump format raw", offset));
                }
                eprintln!("bpftool ran but its dump did not have task_struct.thread.fsbase");
            }
        }
        let task = run("pahole", &["-C", "task_struct", SYS_FS_VMLINUX])?;
        let thread = run("pahole", &["-C", "thread_struct", SYS_FS_VMLINUX])?;
        let offset = pahole_offset(&task, "thread")? + pahole_offset(&thread, "fsbase")?;
        Some(("pahole -C", offset))
    }

    fn run(program: &str, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new(program).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Resolves a member path over `bpftool btf dump format raw` text, whose lines look like
    /// `[114] STRUCT 'task_struct' size=3264 vlen=248` followed by tab-indented
    /// `'thread' type_id=221 bits_offset=24704` member lines.
    fn bpftool_raw_offset(raw: &str, struct_name: &str, path: &[&str]) -> Option<u32> {
        use std::collections::HashMap;
        let mut records: HashMap<u32, (&str, Vec<&str>)> = HashMap::new();
        let mut current = None;
        for line in raw.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                let (id, head) = rest.split_once("] ")?;
                let id = id.parse().ok()?;
                records.insert(id, (head, Vec::new()));
                current = Some(id);
            } else if let (Some(id), Some(member)) = (current, line.strip_prefix('\t')) {
                records.get_mut(&id)?.1.push(member);
            }
        }
        let field = |text: &str, key: &str| -> Option<u32> {
            text.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok())
        };
        let head = format!("STRUCT '{struct_name}' ");
        let mut ids: Vec<_> = records
            .iter()
            .filter(|(_, (h, _))| h.starts_with(&head) && !h.contains(" size=0 "))
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        let mut id = *ids.first()?;
        let mut bits = 0;
        for (i, name) in path.iter().enumerate() {
            let quoted = format!("'{name}' ");
            let member = records.get(&id)?.1.iter().find(|m| m.starts_with(&quoted))?;
            bits += field(member, "bits_offset=")?;
            id = field(member, "type_id=")?;
            while i + 1 < path.len() {
                let (h, _) = records.get(&id)?;
                if h.starts_with("STRUCT ") || h.starts_with("UNION ") {
                    break;
                }
                id = field(h, "type_id=")?; // typedef, const, volatile, ...
            }
        }
        Some(bits / 8)
    }

    /// The byte offset pahole prints for `member`: `long unsigned int fsbase; /* 40 8 */`.
    fn pahole_offset(text: &str, member: &str) -> Option<u32> {
        let needle = format!(" {member};");
        let line = text.lines().find(|l| l.contains(&needle))?;
        let comment = line.split("/*").nth(1)?;
        comment.split_whitespace().next()?.parse().ok()
    }

    /// The cross-check parsers, on output captured from bpftool 7.1 and pahole 1.24.
    #[test]
    fn tool_output_parsers() {
        let raw = "[1] INT 'long unsigned int' size=8 bits_offset=0 nr_bits=64 encoding=(none)\n\
                   [114] STRUCT 'task_struct' size=3264 vlen=2\n\
                   \t'pid' type_id=1 bits_offset=10112\n\
                   \t'thread' type_id=222 bits_offset=24704\n\
                   [221] STRUCT 'thread_struct' size=152 vlen=2\n\
                   \t'fsindex' type_id=1 bits_offset=288 bitfield_size=16\n\
                   \t'fsbase' type_id=1 bits_offset=320\n\
                   [222] CONST '(anon)' type_id=221\n";
        assert_eq!(bpftool_raw_offset(raw, "task_struct", &["thread", "fsbase"]), Some(3128));
        assert_eq!(bpftool_raw_offset(raw, "task_struct", &["thread", "gs"]), None);
        let pahole = "struct thread_struct {\n\
                      \tlong unsigned int          fsbase;               /*    40     8 */\n\
                      };\n";
        assert_eq!(pahole_offset(pahole, "fsbase"), Some(40));
        assert_eq!(pahole_offset(pahole, "base"), None);
    }

    // ---- Hand-built blobs ----

    /// Builds BTF bytes: a 24-byte header, the type records, then the strings.
    struct Blob {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Blob {
        fn new() -> Blob {
            Blob { types: Vec::new(), strings: vec![0], next_id: 1 }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        /// Appends `struct btf_type` and returns its id; trailing data follows via `word`.
        fn ty(&mut self, name: &str, kind: u8, kind_flag: bool, vlen: u32, size_or_type: u32) -> u32 {
            let name_off = self.name(name);
            let info = vlen | (u32::from(kind) << 24) | (u32::from(kind_flag) << 31);
            for w in [name_off, info, size_or_type] {
                self.word(w);
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn word(&mut self, w: u32) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }

        fn member(&mut self, name: &str, type_id: u32, offset: u32) {
            let name_off = self.name(name);
            for w in [name_off, type_id, offset] {
                self.word(w);
            }
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]); // version, flags
            let type_len = self.types.len() as u32;
            for w in [HEADER_LEN as u32, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// ```c
    /// struct inner { int a; int b; };
    /// typedef struct inner inner_t;
    /// struct outer {                        // kind_flag set
    ///     int x;                            // byte 0
    ///     const inner_t in;                 // byte 8
    ///     union {                           // byte 16
    ///         int u;
    ///         struct { int p; int q; };     // q at byte 20
    ///     };
    ///     int flags : 3;                    // bit 192 = byte 24
    ///     int g : 5;                        // bit 195
    /// };
    /// ```
    /// preceded by one record of every other kind (so a wrong skip size misparses `outer`) and
    /// by an empty `struct outer` (so lookups must skip it).
    fn sample_blob() -> Vec<u8> {
        let mut b = Blob::new();
        let int = b.ty("int", KIND_INT, false, 0, 4);
        b.word((1 << 24) | 32); // BTF_INT_SIGNED, 32 bits
        let ptr = b.ty("", KIND_PTR, false, 0, int);
        b.ty("", KIND_ARRAY, false, 0, 0);
        for w in [int, int, 4] {
            b.word(w); // struct btf_array { type, index_type, nelems }
        }
        b.ty("color", KIND_ENUM, false, 2, 4);
        for (name, val) in [("RED", 0), ("BLUE", 1)] {
            let off = b.name(name);
            b.word(off);
            b.word(val);
        }
        b.ty("outer", KIND_FWD, false, 0, 0);
        let proto = b.ty("", KIND_FUNC_PROTO, false, 2, int);
        for _ in 0..2 {
            b.word(0);
            b.word(ptr); // struct btf_param { name_off, type }
        }
        b.ty("f", KIND_FUNC, false, 0, proto);
        let var = b.ty("v", KIND_VAR, false, 0, int);
        b.word(1); // linkage
        b.ty(".data", KIND_DATASEC, false, 1, 4);
        for w in [var, 0, 4] {
            b.word(w);
        }
        b.ty("double", KIND_FLOAT, false, 0, 8);
        b.ty("tag", KIND_DECL_TAG, false, 0, var);
        b.word(u32::MAX); // component_idx -1
        b.ty("user", KIND_TYPE_TAG, false, 0, ptr);
        b.ty("big", KIND_ENUM64, false, 1, 8);
        let off = b.name("HUGE");
        for w in [off, 0, 1] {
            b.word(w);
        }
        b.ty("outer", KIND_STRUCT, false, 0, 0); // empty, same name

        let inner = b.ty("inner", KIND_STRUCT, false, 2, 8);
        b.member("a", int, 0);
        b.member("b", int, 32);
        let inner_t = b.ty("inner_t", KIND_TYPEDEF, false, 0, inner);
        let const_inner = b.ty("", KIND_CONST, false, 0, inner_t);
        let anon_struct = b.ty("", KIND_STRUCT, false, 2, 8);
        b.member("p", int, 0);
        b.member("q", int, 32);
        let vol_anon = b.ty("", KIND_VOLATILE, false, 0, anon_struct);
        let anon_union = b.ty("", KIND_UNION, false, 2, 8);
        b.member("u", int, 0);
        b.member("", vol_anon, 0);
        b.ty("outer", KIND_STRUCT, true, 5, 32);
        b.member("x", int, 0);
        b.member("in", const_inner, 64);
        b.member("", anon_union, 128);
        b.member("flags", int, (3 << 24) | 192);
        b.member("g", int, (5 << 24) | 195);
        b.build()
    }

    fn sample() -> Btf {
        Btf::from_bytes(sample_blob()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn blob_parses_every_kind() {
        // void + 21 records.
        assert_eq!(sample().type_count(), 22);
    }

    #[test]
    fn blob_nested_paths() {
        let btf = sample();
        assert_eq!(btf.member_offset("outer", &["x"]).unwrap(), 0);
        assert_eq!(btf.member_offset("outer", &["in"]).unwrap(), 8);
        assert_eq!(btf.member_offset("outer", &["in", "a"]).unwrap(), 8);
        assert_eq!(btf.member_offset("outer", &["in", "b"]).unwrap(), 12);
        assert_eq!(btf.member_offset("inner", &["b"]).unwrap(), 4);
    }

    #[test]
    fn blob_anonymous_members_are_transparent() {
        let btf = sample();
        assert_eq!(btf.member_offset("outer", &["u"]).unwrap(), 16);
        assert_eq!(btf.member_offset("outer", &["p"]).unwrap(), 16);
        assert_eq!(btf.member_offset("outer", &["q"]).unwrap(), 20);
    }

    #[test]
    fn blob_kind_flag_bitfields() {
        let btf = sample();
        // bitfield_size 3 in the top byte must not leak into the offset.
        assert_eq!(btf.member_offset("outer", &["flags"]).unwrap(), 24);
        let err = btf.member_offset("outer", &["g"]).unwrap_err();
        assert!(matches!(err, BtfError::Unaligned { bit_offset: 195, .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "member `g` of struct outer is at bit offset 195, not on a byte boundary"
        );
    }

    #[test]
    fn blob_lookup_errors() {
        let btf = sample();
        let msg = |s: &str, p: &[&str]| btf.member_offset(s, p).unwrap_err().to_string();
        assert_eq!(msg("nosuch", &["x"]), "struct nosuch not found in in-memory btf data");
        // `color` and `inner_t` exist, but are not structs.
        assert_eq!(msg("color", &["x"]), "struct color not found in in-memory btf data");
        assert_eq!(msg("inner_t", &["a"]), "struct inner_t not found in in-memory btf data");
        assert_eq!(msg("outer", &["in", "zzz"]), "member `zzz` not found in struct inner");
        // Both `struct outer`s lack it; the error names the non-empty one's miss.
        assert_eq!(msg("outer", &["zzz"]), "member `zzz` not found in struct outer");
        assert_eq!(
            msg("outer", &["x", "y"]),
            "member `x` of struct outer is not a struct or union, cannot look inside it"
        );
        assert_eq!(msg("outer", &[]), "empty member path for struct outer");
    }

    #[test]
    fn blob_reference_loops_are_errors() {
        let mut b = Blob::new();
        let looped = b.ty("loop_t", KIND_TYPEDEF, false, 0, 1);
        let cyc = b.ty("cyc", KIND_STRUCT, false, 2, 8);
        b.member("l", looped, 0);
        b.member("", cyc, 0); // anonymous member of its own type
        b.ty("dangling", KIND_STRUCT, false, 1, 8);
        b.member("d", 999, 0);
        let btf = Btf::from_bytes(b.build()).unwrap();
        let err = btf.member_offset("cyc", &["l", "x"]).unwrap_err();
        assert!(matches!(err, BtfError::BadType { .. }), "{err:?}");
        let err = btf.member_offset("cyc", &["nope"]).unwrap_err();
        assert!(matches!(err, BtfError::BadType { .. }), "{err:?}");
        let err = btf.member_offset("dangling", &["d", "x"]).unwrap_err();
        assert_eq!(err.to_string(), "bad btf type id 999 in in-memory btf data: no such type");
    }

    #[test]
    fn blob_bad_headers() {
        let good = sample_blob();
        let err = |bytes: Vec<u8>| Btf::from_bytes(bytes).unwrap_err().to_string();

        assert_eq!(err(Vec::new()), "malformed btf in in-memory btf data at byte 0: header truncated");
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(err(bad).contains("bad magic 0xeb00"));
        let mut be = good.clone();
        be.swap(0, 1);
        assert!(err(be).ends_with("big-endian btf is not supported"));
        let mut v2 = good.clone();
        v2[2] = 2;
        assert!(err(v2).ends_with("unsupported btf version 2"));
        let mut long_str = good.clone();
        long_str[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(long_str).contains("string section"));
        let mut huge_off = good.clone();
        huge_off[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(huge_off).contains("type section"));
        let mut unknown_kind = good.clone();
        unknown_kind[HEADER_LEN + 7] = 30; // kind byte of type id 1
        assert!(err(unknown_kind).contains("unknown btf kind 30"));
        let mut bad_name = good.clone();
        bad_name[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        assert!(err(bad_name).contains("name offset"));
    }

    #[test]
    fn blob_truncated_input_is_an_error() {
        let good = sample_blob();
        for len in 0..good.len() {
            assert!(Btf::from_bytes(good[..len].to_vec()).is_err(), "prefix of {len} bytes parsed");
        }
        // A type section that ends mid-record, with the header agreeing.
        let mut short = good.clone();
        let type_len = u32::from_le_bytes(short[12..16].try_into().unwrap());
        short[12..16].copy_from_slice(&(type_len - 4).to_le_bytes());
        assert!(Btf::from_bytes(short).is_err());
    }

    /// Every single-byte corruption and some random blobs: errors are fine, panics are not.
    #[test]
    fn blob_garbage_never_panics() {
        let good = sample_blob();
        let probe = |bytes: Vec<u8>| {
            if let Ok(btf) = Btf::from_bytes(bytes) {
                for path in [&["x"][..], &["in", "b"], &["q"], &["g"], &["x", "y"]] {
                    let _ = btf.member_offset("outer", path);
                }
            }
        };
        for i in 0..good.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bytes = good.clone();
                bytes[i] = v;
                probe(bytes);
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut bytes = good.clone();
            for _ in 0..8 {
                // xorshift64
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed % bytes.len() as u64) as usize;
                bytes[i] = (seed >> 32) as u8;
            }
            probe(bytes);
        }
    }
}
