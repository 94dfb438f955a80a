//! Finding the CPython interpreter inside a process: which file holds it (a shared
//! libpython, or the executable itself), where it is loaded, and which version it is.
//!
//! Files are opened through `/proc/PID/root/...`, so a process in another mount namespace
//! (a container) is read from its own filesystem view.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::{elf::ElfImage, python::debug_offsets};

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    /// The mapped file as the target sees it ("" for anonymous mappings).
    pub path: String,
}

/// Why a process cannot be traced as Python. Callers branch on these to print remedies.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: u32 },
    #[error("pid {pid} has exited: a zombie its parent has not reaped yet, nothing left to trace")]
    Zombie { pid: u32 },
    #[error("pid {pid} is a thread of process {tgid}, not a process: trace the process (--pid {tgid})")]
    Thread { pid: u32, tgid: u32 },
    #[error("cannot read /proc/{pid} (permission denied): {}", permission_remedy())]
    PermissionDenied { pid: u32 },
    #[error(
        "pid {pid} ({exe}) is not a Python process: no libpython is mapped and the executable has no CPython runtime (_PyRuntime)"
    )]
    NotPython { pid: u32, exe: String },
    #[error("pid {pid} runs Python {version}, which pyleak does not support (supported: {supported})")]
    UnsupportedVersion { pid: u32, version: String, supported: String },
    #[error(
        "cannot tell which Python version {path} is: no Py_Version symbol, no _Py_DebugOffsets and no version in its file name"
    )]
    UnknownVersion { path: String },
    #[error(
        "pid {pid} runs a free-threaded (no-GIL) CPython build ({path}); pyleak does not support those yet: its objects, frames and bytecode are laid out differently"
    )]
    FreeThreaded { pid: u32, path: String },
}

/// What to do about a /proc entry that cannot be read: as root, nothing pyleak can do (the
/// kernel protects the process: another namespace's init, a kernel thread, a lockdown).
fn permission_remedy() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        "the kernel refuses it even to root (a protected process, such as another namespace's init or a kernel thread)"
    } else {
        "run pyleak as root, or with CAP_SYS_PTRACE"
    }
}

/// A CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PyVersion {
    pub major: u8,
    pub minor: u8,
    /// `None` when only the file name told the version.
    pub micro: Option<u8>,
}

impl std::fmt::Display for PyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.micro {
            Some(m) => write!(f, "{}.{}.{}", self.major, self.minor, m),
            None => write!(f, "{}.{}", self.major, self.minor),
        }
    }
}

/// How the interpreter is linked into the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linkage {
    /// libpython3.X.so is a separate shared object.
    Shared,
    /// The runtime is linked into the executable.
    Static,
}

/// The interpreter found in a process.
pub struct Interpreter {
    /// The file holding the runtime, as the target names it.
    pub path: String,
    /// A path that reaches the same file from pyleak's mount namespace.
    pub host_path: PathBuf,
    pub image: ElfImage,
    /// Runtime address minus link-time address.
    pub bias: u64,
    pub linkage: Linkage,
    pub version: PyVersion,
    /// Its executable mapping in the target, `[start, end)` ((0, 0) if not mapped yet).
    pub text: (u64, u64),
    /// Shared linkage: libpython is a DT_NEEDED library of the executable, so it was loaded
    /// at start-up and its TLS is static (see `PyTarget::tls_static`). False when unknown.
    pub startup_libpython: bool,
}

/// The process (thread group) `pid` belongs to: itself for a process, another pid for a
/// thread (`/proc/PID` answers for threads too).
fn thread_group(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The process's command line, space-joined (for reports).
pub fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub fn read_maps(pid: u32) -> Result<Vec<Mapping>, TargetError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => TargetError::PermissionDenied { pid },
        _ => TargetError::NoSuchProcess { pid },
    })?;
    Ok(text.lines().filter_map(parse_maps_line).collect())
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.to_string();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        path,
    })
}

/// Whether a file name is a CPython shared library (`libpython3.12.so.1.0`, `libpython3.13t.so`).
pub fn is_libpython_name(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.starts_with("libpython3.") && base.contains(".so")
}

/// The host-side path of a file the target has mapped.
pub fn host_path(pid: u32, target_path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{target_path}"))
}

/// Where pyleak opens (and attaches to) the file `path` maps in the target: through the
/// target's root (`/proc/PID/root/PATH`), or, for a file deleted since it was mapped (a
/// package upgrade replaced it: maps say `PATH (deleted)`), through the mapping itself
/// (`/proc/PID/map_files/START-END`, which leads to the mapped file whatever its name;
/// readable with CAP_SYS_ADMIN, which tracing needs anyway).
pub fn mapped_file_path(pid: u32, maps: &[Mapping], path: &str) -> PathBuf {
    if path.ends_with(DELETED)
        && let Some(m) = maps.iter().find(|m| m.path == path)
    {
        return PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    }
    host_path(pid, path)
}

/// What /proc/PID/maps appends to the path of a file unlinked since it was mapped.
pub const DELETED: &str = " (deleted)";

/// A shared library mapped by the target.
pub struct Library {
    /// As the target names it.
    pub path: String,
    pub host_path: PathBuf,
    pub image: ElfImage,
    /// Its executable mapping in the target, `[start, end)`.
    pub text: (u64, u64),
}

/// The C library the target uses (glibc's `libc.so.6`), if it maps one.
pub fn find_libc(pid: u32) -> anyhow::Result<Option<Library>> {
    let maps = read_maps(pid)?;
    let Some(m) = maps.iter().find(|m| is_libc_name(&m.path)) else {
        return Ok(None);
    };
    let host_path = mapped_file_path(pid, &maps, &m.path);
    let image = ElfImage::open(&host_path).with_context(|| format!("opening the C library of pid {pid}"))?;
    let text = executable_range(&maps, &m.path);
    Ok(Some(Library { path: m.path.clone(), host_path, image, text }))
}

/// The executable mapping of `path`, `[start, end)`, or (0, 0).
fn executable_range(maps: &[Mapping], path: &str) -> (u64, u64) {
    maps.iter().find(|t| t.path == path && t.perms.contains('x')).map_or((0, 0), |t| (t.start, t.end))
}

/// `libc.so.6`, `libc-2.31.so`, `libc.musl-x86_64.so.1`.
pub fn is_libc_name(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.starts_with("libc.so") || base.starts_with("libc-") || base.starts_with("libc.musl")
}

/// Finds the interpreter in `pid`. Errors name the pid and what was missing.
pub fn find_interpreter(pid: u32) -> anyhow::Result<Interpreter> {
    if !process_exists(pid) {
        if is_zombie(pid) {
            return Err(TargetError::Zombie { pid }.into());
        }
        return Err(TargetError::NoSuchProcess { pid }.into());
    }
    if let Some(tgid) = thread_group(pid)
        && tgid != pid
    {
        return Err(TargetError::Thread { pid, tgid }.into());
    }
    let maps = read_maps(pid)?;
    let lib = maps.iter().find(|m| is_libpython_name(m.path.trim_end_matches(DELETED)));
    let (path, linkage) = match lib {
        Some(m) => (m.path.clone(), Linkage::Shared),
        None => {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map_err(|_| TargetError::PermissionDenied { pid })?;
            (exe.to_string_lossy().into_owned(), Linkage::Static)
        }
    };
    let host = mapped_file_path(pid, &maps, &path);
    let image = ElfImage::open(&host).with_context(|| format!("opening the interpreter of pid {pid}"))?;
    if image.symbol("_PyRuntime").is_none() {
        return Err(TargetError::NotPython { pid, exe: path }.into());
    }
    let bias = load_bias(&maps, &path, &image)
        .with_context(|| format!("{path} is not mapped at file offset 0 in pid {pid}"))?;
    let version = detect_version(&image, &path)?;
    if is_free_threaded(&image, &path) {
        return Err(TargetError::FreeThreaded { pid, path }.into());
    }
    let startup_libpython = linkage == Linkage::Shared && exe_needs_libpython(pid);
    let text = executable_range(&maps, &path);
    Ok(Interpreter { path, host_path: host, image, bias, linkage, version, text, startup_libpython })
}

/// Whether the process's executable names a libpython among its DT_NEEDED libraries.
fn exe_needs_libpython(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return false };
    let host = host_path(pid, &exe.to_string_lossy());
    ElfImage::open(&host).is_ok_and(|image| needs_libpython(&image))
}

/// Whether `image` names a libpython among its DT_NEEDED libraries.
pub fn needs_libpython(image: &ElfImage) -> bool {
    image.needed.iter().any(|n| is_libpython_name(n))
}

/// Whether the build is free-threaded (PEP 703, 3.13+): a `t` after the version in the file
/// name (`libpython3.13t.so`, `python3.13t`), or `_Py_DebugOffsets.free_threaded` set at the
/// start of the `.PyRuntime` section (after the "xdebugpy" cookie and the version).
pub fn is_free_threaded(image: &ElfImage, path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    let rest = base.strip_prefix("libpython").or_else(|| base.strip_prefix("python")).unwrap_or("");
    let digits_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    if rest[digits_end..].starts_with('t') && digits_end > 0 {
        return true;
    }
    image.section(".PyRuntime").is_some_and(debug_offsets_free_threaded)
}

/// `_Py_DebugOffsets`: cookie[8] = "xdebugpy", u64 version, u64 free_threaded, ...
fn debug_offsets_free_threaded(runtime: &[u8]) -> bool {
    debug_offsets::Header::parse(runtime).is_ok_and(|h| h.free_threaded)
}

/// The `_Py_DebugOffsets` header the file initializes `_PyRuntime` with (3.13+), if any.
fn debug_offsets_header(image: &ElfImage) -> Option<debug_offsets::Header> {
    let runtime = image.symbol("_PyRuntime")?;
    debug_offsets::Header::parse(image.read_at(runtime.vaddr, 24)?).ok()
}

/// Load bias: where the file's first page is mapped, minus its link-time address.
fn load_bias(maps: &[Mapping], path: &str, image: &ElfImage) -> Option<u64> {
    let first = maps.iter().find(|m| m.path == path && m.offset == 0)?;
    let vaddr = image.offset_to_vaddr(0)? & !0xfff;
    Some(first.start.wrapping_sub(vaddr))
}

/// The version, from the most reliable source available: the `Py_Version` constant
/// (3.11+), then `_Py_DebugOffsets.version` at the start of `_PyRuntime` (3.13+; the same
/// `PY_VERSION_HEX`, for a build that does not export `Py_Version`), then the file name.
pub fn detect_version(image: &ElfImage, path: &str) -> Result<PyVersion, TargetError> {
    if let Some(sym) = image.symbol("Py_Version")
        && let Some(bytes) = image.read_at(sym.vaddr, 4)
    {
        let hex = u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
        return Ok(PyVersion {
            major: (hex >> 24) as u8,
            minor: (hex >> 16) as u8,
            micro: Some((hex >> 8) as u8),
        });
    }
    if let Some(header) = debug_offsets_header(image) {
        tracing::info!(path, "no Py_Version symbol; version from _Py_DebugOffsets");
        return Ok(PyVersion { major: header.major(), minor: header.minor(), micro: Some(header.micro()) });
    }
    let mut version =
        version_from_name(path).ok_or_else(|| TargetError::UnknownVersion { path: path.to_string() })?;
    version.micro = image.section(".rodata").and_then(|data| micro_from_rodata(data, version));
    Ok(version)
}

/// Before 3.11 the full version exists only as the `PY_VERSION` string literal that
/// `Py_GetVersion()` formats. Linkers merge a string into the tail of a longer one ending the
/// same way (here "/tmp/python-build.../Python-3.8.18"), so look for NUL-terminated strings
/// in `.rodata` that end in "MAJOR.MINOR.MICRO" (optionally a release tag such as "rc1" or
/// "+"), not preceded by a digit or a dot. `None` unless exactly one micro version appears,
/// so an unrelated string cannot mislabel the interpreter.
fn micro_from_rodata(data: &[u8], v: PyVersion) -> Option<u8> {
    let prefix = format!("{}.{}.", v.major, v.minor);
    let mut found = None;
    for s in data.split(|&b| b == 0) {
        let Some(at) = find_last(s, prefix.as_bytes()) else { continue };
        if at > 0 && (s[at - 1].is_ascii_digit() || s[at - 1] == b'.') {
            continue;
        }
        let rest = &s[at + prefix.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let tail = &rest[digits..];
        let tag_ok = tail.is_empty()
            || tail == b"+"
            || [&b"a"[..], b"b", b"rc"].iter().any(|t| {
                tail.strip_prefix(*t).is_some_and(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
            });
        if digits == 0 || digits > 3 || !tag_ok {
            continue;
        }
        let micro: u8 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        match found {
            None => found = Some(micro),
            Some(m) if m == micro => {}
            Some(_) => return None,
        }
    }
    found
}

/// `.../libpython3.9.so.1.0` or `.../python3.9` -> 3.9.
pub fn version_from_name(path: &str) -> Option<PyVersion> {
    let base = path.rsplit('/').next()?;
    let rest = base.strip_prefix("libpython").or_else(|| base.strip_prefix("python"))?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major: u8 = parts.next()?.parse().ok()?;
    let minor: u8 = parts.next()?.parse().ok()?;
    Some(PyVersion { major, minor, micro: None })
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let m = parse_maps_line(
            "7f1c2a400000-7f1c2a4f5000 r--p 00000000 fe:01 1234   /root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0",
        )
        .unwrap();
        assert_eq!(m.start, 0x7f1c2a400000);
        assert_eq!(m.offset, 0);
        assert!(is_libpython_name(&m.path));
        let anon = parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, "");
    }

    #[test]
    fn names() {
        assert!(is_libpython_name("/usr/lib/libpython3.13t.so.1.0"));
        assert!(!is_libpython_name("/usr/lib/libpython2.7.so"));
        assert!(is_libc_name("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(!is_libc_name("/usr/lib/x86_64-linux-gnu/libcrypt.so.1"));
        assert_eq!(
            version_from_name("/usr/bin/python3.11"),
            Some(PyVersion { major: 3, minor: 11, micro: None })
        );
        assert_eq!(
            version_from_name("/x/libpython3.9.so.1.0"),
            Some(PyVersion { major: 3, minor: 9, micro: None })
        );
        assert_eq!(version_from_name("/bin/sleep"), None);
    }

    #[test]
    fn free_threaded_builds_are_recognized() {
        let mut image = b"xdebugpy".to_vec();
        image.extend(0x030d_00f0u64.to_le_bytes());
        image.extend(1u64.to_le_bytes());
        assert!(debug_offsets_free_threaded(&image));
        image[16] = 0;
        assert!(!debug_offsets_free_threaded(&image));
        assert!(!debug_offsets_free_threaded(b"notdebug"));
        // The installed GIL builds are not free-threaded; 3.13's section says so too.
        for lib in [
            "/root/.pyenv/versions/3.13.0/lib/libpython3.13.so.1.0",
            "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0",
        ] {
            if let Ok(img) = ElfImage::open(Path::new(lib)) {
                assert!(!is_free_threaded(&img, lib), "{lib}");
                if lib.contains("3.13") {
                    let section = img.section(".PyRuntime").expect(".PyRuntime in 3.13");
                    assert_eq!(&section[0..8], b"xdebugpy");
                }
            }
        }
        let own = ElfImage::open(&std::fs::read_link("/proc/self/exe").unwrap()).unwrap();
        assert!(is_free_threaded(&own, "/usr/lib/libpython3.13t.so.1.0"));
        assert!(is_free_threaded(&own, "/usr/bin/python3.14t"));
        assert!(!is_free_threaded(&own, "/usr/bin/python3.13"));
    }

    #[test]
    fn micro_version_from_rodata() {
        let v = PyVersion { major: 3, minor: 9, micro: None };
        assert_eq!(micro_from_rodata(b"abc\x003.9.18\x00%s\x00", v), Some(18));
        assert_eq!(micro_from_rodata(b"\x003.9.0rc2\x00", v), Some(0));
        // Ambiguous or malformed candidates give no answer rather than a wrong one.
        assert_eq!(micro_from_rodata(b"\x003.9.1\x003.9.2\x00", v), None);
        assert_eq!(micro_from_rodata(b"\x003.9.x\x003.10.4\x0013.9.2\x00", v), None);
        assert_eq!(micro_from_rodata(b"\x00/build/Python-3.9.7\x00/x/3.9.7/lib\x00", v), Some(7));
        // The installed pyenv builds, where present.
        for (minor, micro) in [(8, 18), (9, 18), (10, 13)] {
            let lib = format!("/root/.pyenv/versions/3.{minor}.{micro}/lib/libpython3.{minor}.so.1.0");
            if let Ok(img) = ElfImage::open(Path::new(&lib)) {
                let v = detect_version(&img, &lib).unwrap();
                assert_eq!(v.micro, Some(micro), "{lib}");
            }
        }
    }

    #[test]
    fn own_process_is_not_python() {
        let err = find_interpreter(std::process::id()).err().unwrap();
        assert!(err.to_string().contains("is not a Python process"), "{err:#}");
    }

    #[test]
    fn missing_pid() {
        let err = find_interpreter(u32::MAX - 1).err().unwrap();
        assert_eq!(err.to_string(), format!("no process with pid {}", u32::MAX - 1));
    }
}
