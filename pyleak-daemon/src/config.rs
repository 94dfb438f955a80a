//! The daemon's configuration file, `/etc/pyleak/pyleak.toml`.
//!
//! This module owns the file's syntax, its defaults, its validation and the process matching
//! that `[[target]]` tables describe. `packaging/pyleak.toml` is the documented example of
//! every key; a unit test parses it, so it cannot drift from the code. The daemon loop reads a
//! [`Config`] once at start, asks [`TargetSet::matches`] about each process it sees (through a
//! [`ProcInfo`] read from /proc) and sizes the kernel maps from [`Limits`].
//!
//! Matching rules (also stated in the example file):
//! - the conditions inside one `[[target]]` table must **all** hold (AND): `exe = "python3*"`
//!   with `systemd_unit = "api.service"` picks the Python processes of that unit only;
//! - a process is traced when **any** table matches it (OR): write one table per alternative;
//! - a table with no condition is an error, not "match everything".
//!
//! Errors name the file, the line and column, and the key (`pyleak.toml:12:15:
//! limits.stack_depth: ...`), like a compiler's. TOML syntax and type errors come from the
//! `toml` crate's spans; the values it accepts are then checked here, with spans kept through
//! [`toml::Spanned`]. Nothing here panics on any input.
use std::{
    fmt, fs, io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use globset::{GlobBuilder, GlobMatcher};
use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use crate::probes::LoadOptions;

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/pyleak/pyleak.toml";
/// `listen` when the file does not set it: loopback only, the port OpenTelemetry's Prometheus
/// exporter uses.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));
/// `limits.max_processes` when the file does not set it.
pub const DEFAULT_MAX_PROCESSES: u32 = 16;
/// `limits.metrics_top_stacks` when the file does not set it.
pub const DEFAULT_METRICS_TOP_STACKS: usize = 20;
/// The largest `limits.metrics_top_stacks`: each exported stack is one series per process.
pub const MAX_METRICS_TOP_STACKS: usize = 1000;
/// The systemd unit types that own a cgroup, for `systemd_unit`.
const UNIT_TYPES: &[&str] = &["service", "scope", "slice", "socket", "mount", "swap"];

/// The daemon's whole configuration, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address of the HTTP server (`/metrics`, `/api`, flamegraphs).
    pub listen: SocketAddr,
    /// Which processes to trace; empty when only `--pid`/`--match` choose.
    pub targets: TargetSet,
    pub limits: Limits,
    /// `[log] level`; `RUST_LOG`, when set, overrides it.
    pub log_level: LogLevel,
}

impl Default for Config {
    /// No targets and the defaults of every key: what `pyleak daemon --pid N` runs with when
    /// there is no file.
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN,
            targets: TargetSet::default(),
            limits: Limits::default(),
            log_level: LogLevel::Info,
        }
    }
}

/// `[limits]`: how much the daemon may trace and keep.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most processes traced at once; further matches wait for a slot (1..=1024).
    pub max_processes: u32,
    /// Capacity of each traced process's stack map (distinct Python stacks).
    pub max_stacks: u32,
    /// Capacity of each traced process's map of outstanding allocations (not set: see
    /// `sampling::default_max_live_allocs`, smaller when sampling).
    pub max_live_allocations: u32,
    /// Python frames captured per allocation (1..=128).
    pub stack_depth: u32,
    /// Stacks per process exported as their own `/metrics` series (0..=1000); the rest are
    /// summed into one `stack="other"` series.
    pub metrics_top_stacks: usize,
    /// Count only allocations outstanding at least this long (`None`: all).
    pub min_age: Option<Duration>,
    /// Poisson sampling by bytes with this mean interval (0: record every allocation).
    pub sample_bytes: u64,
    /// Export what pyleak's kernel programs cost each process (the kernel's eBPF run-time
    /// statistics, turned on while the daemon runs).
    pub bpf_stats: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_processes: DEFAULT_MAX_PROCESSES,
            max_stacks: pyleak_common::DEFAULT_MAX_STACKS,
            max_live_allocations: pyleak_common::DEFAULT_MAX_LIVE_ALLOCS,
            stack_depth: pyleak_common::DEFAULT_MAX_DEPTH,
            metrics_top_stacks: DEFAULT_METRICS_TOP_STACKS,
            min_age: None,
            sample_bytes: 0,
            bpf_stats: false,
        }
    }
}

impl Limits {
    /// What each process's kernel programs are loaded with.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            max_depth: self.stack_depth,
            max_live_allocs: self.max_live_allocations,
            max_stacks: self.max_stacks,
            sample_bytes: self.sample_bytes,
            empty_programs: false,
            bpf_stats: self.bpf_stats,
        }
    }

    /// Kernel memory each traced process's outstanding-allocation map reserves at attach.
    pub fn live_map_bytes(&self) -> u64 {
        live_map_bytes(self.max_live_allocations)
    }

    /// A hint when sampling and `max_live_allocations` is set above what sampling needs (a
    /// configuration written before sampled mode sized the map, which still says 1048576).
    pub fn oversized_live_map(&self) -> Option<String> {
        if self.sample_bytes == 0 {
            return None;
        }
        let needed = crate::sampling::default_max_live_allocs(self.sample_bytes);
        (self.max_live_allocations > needed).then(|| {
            format!(
                "limits.max_live_allocations = {} reserves {} MiB of kernel memory per traced process; \
                 sampled at {} bytes, {needed} entries ({} MiB) have room for {} GiB outstanding: \
                 remove the key to use that",
                self.max_live_allocations,
                self.live_map_bytes() >> 20,
                self.sample_bytes,
                live_map_bytes(needed) >> 20,
                crate::sampling::SAMPLED_COVER_BYTES >> 30,
            )
        })
    }
}

/// Kernel memory of a `LIVE_ALLOCS` map with `entries` entries, reserved at attach: 112 bytes
/// each, buckets included, as the kernel's `memlock` says.
fn live_map_bytes(entries: u32) -> u64 {
    entries as u64 * 112
}

/// `[log] level`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level as a `tracing_subscriber::EnvFilter` directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

// ---- errors ---------------------------------------------------------------------------------

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read the config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", invalid_message(file, *position, key.as_deref(), message))]
    Invalid {
        /// The file's path (or the name given to [`Config::from_str_named`]).
        file: String,
        /// 1-based line and column, when the error has a place in the file.
        position: Option<(usize, usize)>,
        /// Dotted key the error is about (`limits.stack_depth`, `target.exe`).
        key: Option<String>,
        /// What is wrong and what to write instead.
        message: String,
    },
}

fn invalid_message(file: &str, position: Option<(usize, usize)>, key: Option<&str>, message: &str) -> String {
    let mut s = file.to_string();
    if let Some((line, column)) = position {
        s += &format!(":{line}:{column}");
    }
    s += ": ";
    if let Some(key) = key {
        s += key;
        s += ": ";
    }
    s + message
}

impl ConfigError {
    /// Whether the file does not exist (the daemon may then run on flags alone).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The text being parsed, to turn byte spans into positions and errors.
struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of byte `offset`.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.name.to_string(),
            position: Some(self.position(span.start)),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    /// A `toml` error (syntax, type, unknown key), with its place, its key and a hint.
    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span();
        let key = span.as_ref().and_then(|s| key_at(self.text, s.start));
        let message = improve_message(err.message().trim(), key.as_deref());
        ConfigError::Invalid {
            file: self.name.to_string(),
            position: span.map(|s| self.position(s.start)),
            key,
            message,
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The dotted key whose line holds byte `offset`: `limits.stack_depth` for a value under
/// `[limits]`, `target` for a `[[target]]` header. A best effort for errors from `toml`, which
/// give a place but not a key; `None` when no key is found.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let lines: Vec<&str> = text[..line_start].lines().collect();
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let current = &text[line_start..line_end];
    if let Some(header) = header_name(current) {
        return Some(header);
    }
    // The key of this line, or of the line that starts a multi-line value.
    let key = std::iter::once(current)
        .chain(lines.iter().rev().copied())
        .take_while(|l| header_name(l).is_none())
        .find_map(|l| {
            let (key, _) = l.split_once('=')?;
            let key = key.trim();
            (!key.is_empty() && !key.starts_with('#') && !key.contains(['[', ']', '"', ' ']))
                .then(|| key.to_string())
        });
    let table = lines.iter().rev().find_map(|l| header_name(l));
    match (table, key) {
        (Some(table), Some(key)) => Some(format!("{table}.{key}")),
        (None, Some(key)) => Some(key),
        (Some(table), None) => Some(table),
        (None, None) => None,
    }
}

/// `limits` for a `[limits]` line, `target` for `[[target]]`; `None` for any other line.
fn header_name(line: &str) -> Option<String> {
    let line = line.split('#').next()?.trim();
    let name = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")).or_else(|| {
        line.strip_prefix('[').and_then(|l| l.strip_suffix(']')).filter(|l| !l.starts_with('['))
    })?;
    Some(name.trim().to_string())
}

/// Rewrites `toml`/serde messages into ones that say what to write.
fn improve_message(message: &str, key: Option<&str>) -> String {
    let message = message.trim_end_matches('.');
    for what in ["field", "variant"] {
        if let Some(rest) = message.strip_prefix(&format!("unknown {what} `")) {
            let Some((unknown, expected)) = rest.split_once('`') else { break };
            let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let noun = if what == "field" { "key" } else { "value" };
            let mut s = format!("unknown {noun} `{unknown}`");
            if let Some(best) = closest(unknown, &known) {
                s += &format!("; did you mean `{best}`?");
            }
            if !known.is_empty() {
                let label = if what == "field" { "known keys here" } else { "expected one of" };
                s += &format!(" ({label}: {})", known.join(", "));
            }
            return s;
        }
    }
    let last = key.map(|k| k.rsplit('.').next().unwrap_or(k));
    if message.contains("expected a sequence") || message.contains("expected an array") {
        match last {
            Some("target") => {
                return format!("{message}; write `[[target]]` (an array of tables), not `[target]`");
            }
            Some("pids") => return format!("{message}; write a list, e.g. `pids = [1234]`"),
            _ => {}
        }
    }
    message.to_string()
}

/// The known name closest to `unknown`, if it is close enough to be a likely typo (one edit
/// in a short name, two or a quarter of a longer one) or a part of it (`unit`).
fn closest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let unknown = unknown.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&unknown, k), *k))
        .filter(|(d, k)| {
            let typo = if k.len() <= 4 { 1 } else { 2.max(k.len() / 4) };
            *d <= typo || (unknown.len() >= 3 && k.contains(unknown.as_str()))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (on chars).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---- the file's syntax ----------------------------------------------------------------------

/// The file as written. Values that need checking keep their span.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    #[serde(default, rename = "target")]
    targets: Vec<Spanned<RawTarget>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    pids: Option<Spanned<Vec<Spanned<u32>>>>,
    exe: Option<Spanned<String>>,
    cmdline: Option<Spanned<String>>,
    systemd_unit: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_processes: Option<Spanned<u32>>,
    max_stacks: Option<Spanned<u32>>,
    max_live_allocations: Option<Spanned<u32>>,
    stack_depth: Option<Spanned<u32>>,
    metrics_top_stacks: Option<Spanned<u64>>,
    min_age_secs: Option<Spanned<f64>>,
    sample_bytes: Option<Spanned<u64>>,
    bpf_stats: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<LogLevel>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_str_named(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; errors call it `name`.
    pub fn from_str_named(text: &str, name: &str) -> Result<Config, ConfigError> {
        let src = Source { name, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        let defaults = Config::default();

        let listen = match raw.listen {
            None => defaults.listen,
            Some(v) => parse_listen(v.get_ref()).map_err(|m| src.error(v.span(), "listen", m))?,
        };
        let targets =
            raw.targets.into_iter().map(|t| Target::compile(&src, t)).collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            listen,
            targets: TargetSet { targets },
            limits: compile_limits(&src, raw.limits)?,
            log_level: raw.log.level.unwrap_or(defaults.log_level),
        })
    }
}

fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = value.trim().parse().map_err(|_| {
        format!(
            "{value:?} is not an IP address and port; write e.g. \"127.0.0.1:9464\" or \"[::1]:9464\" \
             (host names are not resolved)"
        )
    })?;
    if addr.port() == 0 {
        return Err(format!("{value:?} has port 0, which picks a random port; choose one, e.g. 9464"));
    }
    Ok(addr)
}

/// Checks `value` (`None`: `default`) against `min..=max`; errors name `key` and say why.
fn in_range<T>(
    src: &Source,
    value: Option<Spanned<T>>,
    key: &str,
    default: T,
    min: T,
    max: Option<(T, &str)>,
) -> Result<T, ConfigError>
where
    T: Copy + PartialOrd + fmt::Display,
{
    let Some(v) = value else { return Ok(default) };
    let n = *v.get_ref();
    if n < min {
        return Err(src.error(v.span(), key, format!("{n} is too small: the least is {min}")));
    }
    if let Some((max, why)) = max
        && n > max
    {
        return Err(src.error(v.span(), key, format!("{n} is too large: the most is {max} ({why})")));
    }
    Ok(n)
}

fn compile_limits(src: &Source, raw: RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let top = in_range(
        src,
        raw.metrics_top_stacks,
        "limits.metrics_top_stacks",
        d.metrics_top_stacks as u64,
        0,
        Some((
            MAX_METRICS_TOP_STACKS as u64,
            "each one is a series per process; see whole stacks in the flamegraph instead",
        )),
    )?;
    let min_age = match raw.min_age_secs {
        None => None,
        Some(v) => {
            let secs = *v.get_ref();
            if !crate::cli::seconds_in_range(secs) {
                return Err(src.error(
                    v.span(),
                    "limits.min_age_secs",
                    format!(
                        "{secs} is not a number of seconds from 0 to {:e} (e.g. 60, or 0.5)",
                        crate::cli::MAX_SECONDS
                    ),
                ));
            }
            Some(Duration::from_secs_f64(secs))
        }
    };
    let sample_bytes = in_range(
        src,
        raw.sample_bytes,
        "limits.sample_bytes",
        d.sample_bytes,
        0,
        Some((pyleak_common::sampling::MAX_SAMPLE_BYTES, "larger intervals see too little to estimate")),
    )?;
    Ok(Limits {
        max_processes: in_range(
            src,
            raw.max_processes,
            "limits.max_processes",
            d.max_processes,
            1,
            Some((pyleak_common::MAX_TARGETS, "the capacity of the kernel's target map")),
        )?,
        max_stacks: in_range(
            src,
            raw.max_stacks,
            "limits.max_stacks",
            d.max_stacks,
            1,
            Some((pyleak_common::MAX_STACKS, "up to 8 GiB of kernel memory per process when full")),
        )?,
        max_live_allocations: in_range(
            src,
            raw.max_live_allocations,
            "limits.max_live_allocations",
            crate::sampling::default_max_live_allocs(sample_bytes),
            1,
            Some((pyleak_common::MAX_LIVE_ALLOCS, "7 GiB of kernel memory reserved per process")),
        )?,
        stack_depth: in_range(
            src,
            raw.stack_depth,
            "limits.stack_depth",
            d.stack_depth,
            1,
            Some((pyleak_common::MAX_FRAMES as u32, "the most frames the kernel side walks")),
        )?,
        metrics_top_stacks: top as usize,
        min_age,
        sample_bytes,
        bpf_stats: raw.bpf_stats.unwrap_or(d.bpf_stats),
    })
}

// ---- targets and matching -------------------------------------------------------------------

/// What the daemon knows about a process when deciding whether to trace it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    /// The executable, resolved (`/usr/bin/python3.11`, not the `python3` symlink), with the
    /// kernel's ` (deleted)` suffix removed (a binary replaced by an upgrade still matches).
    pub exe: PathBuf,
    /// The arguments, `argv[0]` first (empty for kernel threads).
    pub cmdline: Vec<String>,
    /// The path in the unified (v2) cgroup hierarchy, from the `0::` line of
    /// `/proc/PID/cgroup`; empty on a host with cgroup v1 only.
    pub cgroup: String,
    /// `/proc/PID/comm`: the thread name, at most 15 bytes (a metrics label).
    pub comm: String,
}

impl ProcInfo {
    /// Reads `/proc/PID/{exe,cmdline,cgroup,comm}`. Errors keep the kind of the failed read
    /// (`NotFound`: the process is gone or is a kernel thread; `PermissionDenied`: not root)
    /// and name the file.
    pub fn read(pid: u32) -> io::Result<ProcInfo> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let with_path = |file: &str| {
            let path = dir.join(file);
            move |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        };
        let exe = fs::read_link(dir.join("exe")).map_err(with_path("exe"))?;
        let exe = match exe.to_str().and_then(|s| s.strip_suffix(crate::discovery::DELETED)) {
            Some(live) => PathBuf::from(live),
            None => exe,
        };
        let cmdline = fs::read(dir.join("cmdline")).map_err(with_path("cmdline"))?;
        let cmdline = cmdline
            .split(|&b| b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect::<Vec<_>>();
        // The kernel ends every argument with a NUL, so the last piece is empty.
        let cmdline = match cmdline.split_last() {
            Some((last, rest)) if last.is_empty() => rest.to_vec(),
            _ => cmdline,
        };
        // Lossy, as the command line: a name need not be UTF-8, and the kernel cuts `comm` at
        // 15 bytes, mid-character if it must. A strict read would drop the process unseen.
        let cgroup = fs::read(dir.join("cgroup")).map_err(with_path("cgroup"))?;
        let cgroup = String::from_utf8_lossy(&cgroup);
        let cgroup = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("").to_string();
        let comm = fs::read(dir.join("comm")).map_err(with_path("comm"))?;
        let comm = String::from_utf8_lossy(&comm).trim_end_matches('\n').to_string();
        Ok(ProcInfo { pid, exe, cmdline, cgroup, comm })
    }
}

/// The `[[target]]` tables: a process is traced when any of them matches it.
#[derive(Clone, Debug, Default)]
pub struct TargetSet {
    targets: Vec<Target>,
}

impl TargetSet {
    /// Whether any target matches `proc`.
    pub fn matches(&self, proc: &ProcInfo) -> bool {
        self.first_match(proc).is_some()
    }

    /// The first target that matches `proc`, to say why a process was chosen.
    pub fn first_match(&self, proc: &ProcInfo) -> Option<&Target> {
        self.targets.iter().find(|t| t.matches(proc))
    }

    /// Adds a target (for the daemon's `--pid` and `--match` flags).
    pub fn push(&mut self, target: Target) {
        self.targets.push(target);
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter()
    }
}

/// One `[[target]]` table: every condition it sets must hold.
#[derive(Clone, Debug)]
pub struct Target {
    pids: Option<Vec<u32>>,
    exe: Option<PathPattern>,
    cmdline: Option<Regex>,
    systemd_unit: Option<GlobMatcher>,
    /// Normalized: starts with '/', no trailing '/' (except the root itself).
    cgroup: Option<String>,
    /// Where the target comes from, for logs: `pyleak.toml:14` or `--pid`.
    pub origin: String,
}

/// An `exe` pattern.
#[derive(Clone, Debug)]
enum PathPattern {
    /// A glob; `basename` when it has no '/' and is also tried on the file name alone.
    Glob { glob: GlobMatcher, basename: bool },
    /// A `re:` pattern, searched in the whole path.
    Regex(Regex),
}

impl PathPattern {
    fn compile(pattern: &str) -> Result<PathPattern, String> {
        if let Some(re) = pattern.strip_prefix("re:") {
            return Regex::new(re).map(PathPattern::Regex).map_err(|e| regex_message(re, &e));
        }
        let glob = GlobBuilder::new(pattern)
            .build()
            .map_err(|e| format!("invalid glob: {}", e.kind()))?
            .compile_matcher();
        Ok(PathPattern::Glob { glob, basename: !pattern.contains('/') })
    }

    fn matches(&self, path: &Path) -> bool {
        match self {
            PathPattern::Glob { glob, basename } => {
                glob.is_match(path) || (*basename && path.file_name().is_some_and(|n| glob.is_match(n)))
            }
            PathPattern::Regex(re) => re.is_match(&path.to_string_lossy()),
        }
    }
}

/// `regex`'s multi-line error as one line: `invalid regex "(a": unclosed group`.
fn regex_message(pattern: &str, err: &regex::Error) -> String {
    let text = err.to_string();
    let what = text.lines().rev().find_map(|l| l.trim().strip_prefix("error: ")).unwrap_or(text.trim());
    format!("invalid regex {pattern:?}: {what}")
}

impl Target {
    /// A target that matches these pids (the daemon's `--pid`).
    pub fn from_pids(pids: &[u32], origin: &str) -> Target {
        Target { pids: Some(pids.to_vec()), ..Target::empty(origin) }
    }

    /// A target that matches command lines where `regex` is found (the daemon's `--match`).
    pub fn from_cmdline_regex(regex: &str, origin: &str) -> Result<Target, String> {
        if regex.is_empty() {
            // It would match every process on the host, as an empty [[target]] would.
            return Err("an empty pattern matches every process; give a pattern".to_string());
        }
        let re = Regex::new(regex).map_err(|e| regex_message(regex, &e))?;
        Ok(Target { cmdline: Some(re), ..Target::empty(origin) })
    }

    fn empty(origin: &str) -> Target {
        Target {
            pids: None,
            exe: None,
            cmdline: None,
            systemd_unit: None,
            cgroup: None,
            origin: origin.to_string(),
        }
    }

    /// Whether every condition of this target holds for `proc`.
    pub fn matches(&self, proc: &ProcInfo) -> bool {
        self.pids.as_ref().is_none_or(|pids| pids.contains(&proc.pid))
            && self.exe.as_ref().is_none_or(|p| p.matches(&proc.exe))
            && self.cmdline.as_ref().is_none_or(|re| re.is_match(&proc.cmdline.join(" ")))
            && self.systemd_unit.as_ref().is_none_or(|unit| {
                // cgroup paths are `/system.slice/api.service` or deeper (`.../api.service/x`);
                // a unit is one component of it.
                !proc.cgroup.is_empty() && proc.cgroup.split('/').any(|c| unit.is_match(c))
            })
            && self.cgroup.as_ref().is_none_or(|prefix| cgroup_under(&proc.cgroup, prefix))
    }

    fn compile(src: &Source, raw: Spanned<RawTarget>) -> Result<Target, ConfigError> {
        let span = raw.span();
        let origin = format!("{}:{}", src.name, src.position(span.start).0);
        let raw = raw.into_inner();
        let mut t = Target::empty(&origin);
        if raw.pids.is_none()
            && raw.exe.is_none()
            && raw.cmdline.is_none()
            && raw.systemd_unit.is_none()
            && raw.cgroup.is_none()
        {
            return Err(src.error(
                span,
                "target",
                "a [[target]] needs at least one of pids, exe, cmdline, systemd_unit, cgroup \
                 (an empty one would trace every process)",
            ));
        }
        if let Some(pids) = raw.pids {
            if pids.get_ref().is_empty() {
                return Err(src.error(
                    pids.span(),
                    "target.pids",
                    "the list is empty, so nothing matches; list at least one pid or remove the key",
                ));
            }
            if let Some(zero) = pids.get_ref().iter().find(|p| *p.get_ref() == 0) {
                return Err(src.error(zero.span(), "target.pids", "0 is not a process id"));
            }
            t.pids = Some(pids.into_inner().into_iter().map(Spanned::into_inner).collect());
        }
        if let Some(exe) = raw.exe {
            let pattern = exe.get_ref();
            if pattern.is_empty() {
                return Err(src.error(exe.span(), "target.exe", "empty pattern; write a glob such as \"/usr/bin/python3*\" or a regex such as \"re:^/opt/app/\""));
            }
            t.exe = Some(PathPattern::compile(pattern).map_err(|m| src.error(exe.span(), "target.exe", m))?);
        }
        if let Some(cmdline) = raw.cmdline {
            let re = Regex::new(cmdline.get_ref()).map_err(|e| {
                src.error(cmdline.span(), "target.cmdline", regex_message(cmdline.get_ref(), &e))
            })?;
            t.cmdline = Some(re);
        }
        if let Some(unit) = raw.systemd_unit {
            t.systemd_unit = Some(
                compile_unit(unit.get_ref()).map_err(|m| src.error(unit.span(), "target.systemd_unit", m))?,
            );
        }
        if let Some(cgroup) = raw.cgroup {
            t.cgroup = Some(
                normalize_cgroup(cgroup.get_ref())
                    .map_err(|m| src.error(cgroup.span(), "target.cgroup", m))?,
            );
        }
        Ok(t)
    }
}

/// A `systemd_unit` value: a unit name with its type, globs allowed (`worker@*.service`).
fn compile_unit(unit: &str) -> Result<GlobMatcher, String> {
    if unit.contains('/') {
        return Err(format!(
            "{unit:?} is a path; give the unit's name (e.g. \"api.service\"), or use `cgroup` for a path"
        ));
    }
    let kind = unit.rsplit_once('.').map(|(_, k)| k);
    if !kind.is_some_and(|k| UNIT_TYPES.contains(&k)) {
        return Err(format!(
            "{unit:?} has no unit type; did you mean \"{unit}.service\"? (types: {})",
            UNIT_TYPES.join(", ")
        ));
    }
    Ok(GlobBuilder::new(unit)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("invalid glob: {}", e.kind()))?
        .compile_matcher())
}

/// A `cgroup` value as a prefix: `/system.slice/api.service`, no trailing '/'.
fn normalize_cgroup(cgroup: &str) -> Result<String, String> {
    if let Some(inside) = cgroup.strip_prefix("/sys/fs/cgroup") {
        let inside = if inside.is_empty() { "/" } else { inside };
        return Err(format!(
            "{cgroup:?} is a file system path; write the path inside the hierarchy, as in \
             /proc/PID/cgroup: {inside:?}"
        ));
    }
    if !cgroup.starts_with('/') {
        return Err(format!(
            "{cgroup:?} must start with '/' (a path as in /proc/PID/cgroup, e.g. \"/system.slice/api.service\")"
        ));
    }
    let trimmed = cgroup.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/".to_string() } else { trimmed.to_string() })
}

/// Whether `cgroup` is `prefix` or below it, on path components (`/a/b` is under `/a`, not
/// under `/a/` + `b2`).
fn cgroup_under(cgroup: &str, prefix: &str) -> bool {
    if cgroup.is_empty() {
        return false;
    }
    prefix == "/" || cgroup.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../packaging/pyleak.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_named(text, "test.toml")
    }

    /// The error's text, which must name the file; panics if `text` parses.
    fn error(text: &str) -> String {
        let err = parse(text).err().unwrap_or_else(|| panic!("expected an error for:\n{text}"));
        let msg = err.to_string();
        assert!(msg.starts_with("test.toml:"), "{msg}");
        msg
    }

    fn proc(pid: u32, exe: &str, cmdline: &[&str], cgroup: &str) -> ProcInfo {
        ProcInfo {
            pid,
            exe: PathBuf::from(exe),
            cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
            cgroup: cgroup.to_string(),
            comm: "python3".to_string(),
        }
    }

    fn api() -> ProcInfo {
        proc(
            4242,
            "/usr/bin/python3.11",
            &["/usr/bin/python3", "-m", "gunicorn", "app:wsgi"],
            "/system.slice/api.service",
        )
    }

    fn targets(text: &str) -> TargetSet {
        parse(text).unwrap().targets
    }

    #[test]
    fn the_example_file_parses_and_states_the_defaults() {
        let config = Config::from_str_named(EXAMPLE, "packaging/pyleak.toml").unwrap();
        let defaults = Config::default();
        // The keys it sets are the defaults, so what it says about defaults is true.
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.limits, defaults.limits);
        assert_eq!(config.log_level, defaults.log_level);
        assert!(config.targets.is_empty(), "the installed file must not trace anything by itself");
    }

    /// Settings commented out as `#key = value` (documentation is `# text`, with a space)
    /// must parse too once uncommented, and mean what the comments say.
    #[test]
    fn the_examples_in_the_example_file_parse() {
        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.is_empty() && !rest.starts_with([' ', '#']) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(uncommented, EXAMPLE, "the example should show commented-out settings");
        let config = Config::from_str_named(&uncommented, "uncommented").unwrap();
        assert!(!config.targets.is_empty());
        assert_eq!(config.limits.min_age, Some(Duration::from_secs(60)));
        // Its example targets pick a gunicorn worker of api.service, not an unrelated Python.
        assert!(config.targets.matches(&api()));
        assert!(!config.targets.matches(&proc(7, "/usr/bin/python3.11", &["python3"], "/user.slice")));
        // Every key of every table appears in the file.
        for key in [
            "listen",
            "[[target]]",
            "pids",
            "exe",
            "cmdline",
            "systemd_unit",
            "cgroup",
            "[limits]",
            "max_processes",
            "max_stacks",
            "max_live_allocations",
            "stack_depth",
            "metrics_top_stacks",
            "min_age_secs",
            "sample_bytes",
            "bpf_stats",
            "[log]",
            "level",
        ] {
            assert!(EXAMPLE.contains(key), "packaging/pyleak.toml does not mention {key}");
        }
    }

    #[test]
    fn defaults_without_a_file() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.limits.stack_depth, pyleak_common::DEFAULT_MAX_DEPTH);
        assert_eq!(config.limits.max_stacks, pyleak_common::DEFAULT_MAX_STACKS);
        assert_eq!(config.limits.max_live_allocations, pyleak_common::DEFAULT_MAX_LIVE_ALLOCS);
        assert_eq!(config.limits.max_processes, 16);
        assert_eq!(config.limits.metrics_top_stacks, 20);
        assert_eq!(config.limits.min_age, None);
        assert_eq!(config.log_level, LogLevel::Info);
        assert!(config.targets.is_empty() && Config::default().targets.is_empty());
        let opts = config.limits.load_options();
        assert_eq!(
            (opts.max_depth, opts.max_live_allocs, opts.max_stacks),
            (64, pyleak_common::DEFAULT_MAX_LIVE_ALLOCS, pyleak_common::DEFAULT_MAX_STACKS)
        );
    }

    #[test]
    fn sampling_sizes_the_outstanding_map_unless_it_is_set() {
        let sampled = parse("[limits]\nsample_bytes = 524288\n").unwrap();
        assert_eq!(sampled.limits.max_live_allocations, 131_072);
        assert_eq!(sampled.limits.load_options().max_live_allocs, 131_072);
        let set = parse("[limits]\nsample_bytes = 524288\nmax_live_allocations = 2000000\n").unwrap();
        assert_eq!(set.limits.max_live_allocations, 2_000_000, "a value the user sets is kept");
        let exact = parse("[limits]\nsample_bytes = 0\n").unwrap();
        assert_eq!(exact.limits.max_live_allocations, pyleak_common::DEFAULT_MAX_LIVE_ALLOCS);
    }

    #[test]
    fn an_old_explicit_map_size_with_sampling_gets_a_hint() {
        let old = parse("[limits]\nsample_bytes = 524288\nmax_live_allocations = 1048576\n").unwrap();
        assert_eq!(old.limits.live_map_bytes(), 112 << 20);
        let hint = old.limits.oversized_live_map().expect("a hint");
        assert!(hint.contains("reserves 112 MiB") && hint.contains("131072 entries (14 MiB)"), "{hint}");
        let sized = parse("[limits]\nsample_bytes = 524288\n").unwrap();
        assert_eq!(sized.limits.oversized_live_map(), None);
        let smaller = parse("[limits]\nsample_bytes = 524288\nmax_live_allocations = 5000\n").unwrap();
        assert_eq!(smaller.limits.oversized_live_map(), None, "a smaller map is the user's choice");
        assert_eq!(parse("").unwrap().limits.oversized_live_map(), None, "exact mode needs every entry");
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            r#"
listen = "[::1]:9100"
[[target]]
pids = [1, 2]
exe = "python3*"
cmdline = "gunicorn"
systemd_unit = "api.service"
cgroup = "/system.slice/"
[limits]
max_processes = 4
max_stacks = 1000
max_live_allocations = 5000
stack_depth = 128
metrics_top_stacks = 0
min_age_secs = 0.5
bpf_stats = true
[log]
level = "debug"
"#,
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "[::1]:9100");
        assert_eq!(
            config.limits,
            Limits {
                max_processes: 4,
                max_stacks: 1000,
                max_live_allocations: 5000,
                stack_depth: 128,
                metrics_top_stacks: 0,
                min_age: Some(Duration::from_millis(500)),
                sample_bytes: 0,
                bpf_stats: true,
            }
        );
        assert_eq!(config.log_level.as_str(), "debug");
        let t = config.targets.iter().next().unwrap();
        assert_eq!(t.origin, "test.toml:3");
        assert_eq!(t.pids.as_deref(), Some(&[1, 2][..]));
        assert_eq!(t.cgroup.as_deref(), Some("/system.slice"));
        // An integer is accepted for seconds.
        assert_eq!(
            parse("[limits]\nmin_age_secs = 60").unwrap().limits.min_age,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn conditions_in_a_table_and_tables_or() {
        let both = targets("[[target]]\nexe = \"python3*\"\nsystemd_unit = \"api.service\"\n");
        assert!(both.matches(&api()));
        // Right exe, wrong unit; right unit, wrong exe.
        assert!(!both.matches(&proc(1, "/usr/bin/python3.11", &[], "/system.slice/db.service")));
        assert!(!both.matches(&proc(1, "/usr/bin/bash", &[], "/system.slice/api.service")));

        let either = targets("[[target]]\npids = [1]\n[[target]]\nsystemd_unit = \"api.service\"\n");
        assert!(either.matches(&api()));
        assert!(either.matches(&proc(1, "/bin/x", &[], "/")));
        assert!(!either.matches(&proc(2, "/bin/x", &[], "/")));
        assert_eq!(either.first_match(&api()).unwrap().origin, "test.toml:3");
        assert!(!TargetSet::default().matches(&api()));
    }

    #[test]
    fn pids_and_flags() {
        let t = targets("[[target]]\npids = [4242, 7]");
        assert!(t.matches(&api()));
        assert!(!t.matches(&proc(8, "/usr/bin/python3.11", &[], "")));
        let mut set = TargetSet::default();
        set.push(Target::from_pids(&[8], "--pid"));
        assert!(set.matches(&proc(8, "/x", &[], "")));
        set.push(Target::from_cmdline_regex("gunicorn", "--match").unwrap());
        assert!(Target::from_cmdline_regex("", "--match").unwrap_err().contains("matches every process"));
        assert_eq!(set.first_match(&api()).unwrap().origin, "--match");
        let err = Target::from_cmdline_regex("(a", "--match").unwrap_err();
        assert_eq!(err, "invalid regex \"(a\": unclosed group");
    }

    #[test]
    fn exe_globs_and_regexes() {
        let m = |pattern: &str, exe: &str| {
            targets(&format!("[[target]]\nexe = {pattern:?}")).matches(&proc(1, exe, &[], ""))
        };
        assert!(m("/usr/bin/python3*", "/usr/bin/python3.11"));
        assert!(!m("/usr/bin/python3*", "/usr/local/bin/python3.11"));
        // Without '/', the glob is also tried on the file name.
        assert!(m("python3.1?", "/opt/pyenv/versions/3.12.1/bin/python3.12"));
        assert!(!m("python3.1?", "/usr/bin/python2.7"));
        // `*` crosses '/', as in the report's --include.
        assert!(m("/opt/*/python3", "/opt/app/venv/bin/python3"));
        assert!(m("**/venv/bin/python*", "/srv/app/venv/bin/python3.12"));
        // `re:` switches to a regex, searched anywhere in the path unless anchored.
        assert!(m("re:python3\\.(11|12)$", "/usr/bin/python3.12"));
        assert!(!m("re:python3\\.(11|12)$", "/usr/bin/python3.13"));
        assert!(!m("re:^/usr/local/", "/usr/bin/python3.12"));
    }

    #[test]
    fn cmdline_regex_searches_the_joined_arguments() {
        let t = targets("[[target]]\ncmdline = '-m gunicorn\\b'");
        assert!(t.matches(&api()));
        assert!(!t.matches(&proc(1, "/usr/bin/python3", &["python3", "-m", "gunicornx"], "")));
        let anchored = targets("[[target]]\ncmdline = '^/usr/bin/python3 '");
        assert!(anchored.matches(&api()));
        assert!(!anchored.matches(&proc(1, "/x", &["sudo", "/usr/bin/python3", "x"], "")));
    }

    #[test]
    fn systemd_units_are_cgroup_components() {
        let t = targets("[[target]]\nsystemd_unit = \"api.service\"");
        assert!(t.matches(&api()));
        assert!(t.matches(&proc(1, "/x", &[], "/system.slice/api.service/worker")));
        assert!(t.matches(&proc(
            1,
            "/x",
            &[],
            "/user.slice/user-1000.slice/user@1000.service/app.slice/api.service"
        )));
        assert!(!t.matches(&proc(1, "/x", &[], "/system.slice/api.service2")));
        assert!(!t.matches(&proc(1, "/x", &[], "/system.slice/my-api.service")));
        assert!(!t.matches(&proc(1, "/x", &[], "")));
        let template = targets("[[target]]\nsystemd_unit = \"worker@*.service\"");
        assert!(template.matches(&proc(1, "/x", &[], "/system.slice/system-worker.slice/worker@3.service")));
        assert!(!template.matches(&proc(1, "/x", &[], "/system.slice/worker.service")));
    }

    #[test]
    fn cgroup_prefixes_end_on_components() {
        let t = targets("[[target]]\ncgroup = \"/system.slice/api.service\"");
        assert!(t.matches(&api()));
        assert!(t.matches(&proc(1, "/x", &[], "/system.slice/api.service/sub")));
        assert!(!t.matches(&proc(1, "/x", &[], "/system.slice/api.service2")));
        assert!(!t.matches(&proc(1, "/x", &[], "/system.slice")));
        // cgroup v1 only: no unified path, nothing matches.
        assert!(!t.matches(&proc(1, "/x", &[], "")));
        let root = targets("[[target]]\ncgroup = \"/\"");
        assert!(root.matches(&api()));
        assert!(!root.matches(&proc(1, "/x", &[], "")));
    }

    /// Matching on what /proc says about this test process itself.
    #[test]
    fn matches_this_process_from_proc() {
        let me = ProcInfo::read(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.exe, std::env::current_exe().unwrap());
        assert_eq!(me.cmdline, std::env::args().collect::<Vec<_>>());
        assert!(!me.comm.is_empty() && !me.comm.ends_with('\n'));
        let self_cgroup = fs::read_to_string("/proc/self/cgroup").unwrap();
        assert!(self_cgroup.contains(&format!("0::{}\n", me.cgroup)) || me.cgroup.is_empty());

        let exe_name = me.exe.file_name().unwrap().to_str().unwrap();
        let text = format!(
            "[[target]]\npids = [{pid}]\nexe = {exe:?}\ncmdline = {cmdline:?}\n",
            pid = me.pid,
            exe = exe_name,
            cmdline = regex::escape(&me.cmdline[0]),
        );
        let text = if me.cgroup.is_empty() { text } else { format!("{text}cgroup = {:?}\n", me.cgroup) };
        assert!(targets(&text).matches(&me), "{text}\n{me:?}");
        let other = format!("[[target]]\nexe = {:?}\ncmdline = \"^no such command$\"\n", exe_name);
        assert!(!targets(&other).matches(&me));

        let gone = ProcInfo::read(u32::MAX).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert!(gone.to_string().contains(&format!("/proc/{}/exe", u32::MAX)), "{gone}");
    }

    /// A process whose name is not UTF-8 (set with PR_SET_NAME, or cut mid-character at 15
    /// bytes) is still read, so the daemon can match and trace it.
    #[test]
    fn a_name_that_is_not_utf8_is_read() {
        use std::io::Write;
        let mut child = std::process::Command::new("bash")
            .args(["-c", r#"printf 'py\xe2\x82' > /proc/self/comm && echo set && read _"#])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        io::BufRead::read_line(&mut io::BufReader::new(child.stdout.take().unwrap()), &mut said).unwrap();
        assert_eq!(said, "set\n");
        let info = ProcInfo::read(child.id());
        let _ = child.stdin.take().unwrap().write_all(b"\n");
        child.wait().unwrap();
        assert_eq!(info.unwrap().comm, "py\u{fffd}");
    }

    #[test]
    fn load_reads_files_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyleak.toml");
        fs::write(&path, "[limits]\nstack_depth = 200\n").unwrap();
        let msg = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "{}:2:15: limits.stack_depth: 200 is too large: the most is 128 (the most frames the kernel side walks)",
                path.display()
            )
        );
        fs::write(&path, "listen = \"127.0.0.1:9000\"\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().listen.port(), 9000);
        let missing = Config::load(&dir.path().join("nope.toml")).unwrap_err();
        assert!(missing.is_not_found());
        let chain = format!("{:#}", anyhow::Error::from(missing));
        assert!(
            chain.starts_with("cannot read the config file ") && chain.contains("nope.toml: No such file"),
            "{chain}"
        );
    }

    #[test]
    fn errors_in_limits_name_the_key_and_the_bound() {
        assert_eq!(
            error("[limits]\nmax_processes = 0"),
            "test.toml:2:17: limits.max_processes: 0 is too small: the least is 1"
        );
        assert_eq!(
            error("[limits]\nmax_processes = 5000"),
            "test.toml:2:17: limits.max_processes: 5000 is too large: the most is 1024 (the capacity of the kernel's target map)"
        );
        assert!(error("[limits]\nstack_depth = 0").contains("limits.stack_depth: 0 is too small"));
        assert!(error("[limits]\nmax_stacks = 0").contains("limits.max_stacks: 0 is too small"));
        assert!(
            error("[limits]\nmax_live_allocations = 0")
                .contains("limits.max_live_allocations: 0 is too small")
        );
        assert!(error("[limits]\nmax_live_allocations = 4294967295").contains(
            "limits.max_live_allocations: 4294967295 is too large: the most is 67108864 (7 GiB of kernel memory"
        ));
        assert!(error("[limits]\nmetrics_top_stacks = 1001").contains(
            "2:22: limits.metrics_top_stacks: 1001 is too large: the most is 1000 (each one is a series per process"
        ));
        assert_eq!(
            error("[limits]\nmin_age_secs = -1"),
            "test.toml:2:16: limits.min_age_secs: -1 is not a number of seconds from 0 to 1e9 (e.g. 60, or 0.5)"
        );
        assert!(
            error("[limits]\nmin_age_secs = 1e20")
                .contains("limits.min_age_secs: 100000000000000000000 is not")
        );
        assert!(error("[limits]\nmin_age_secs = nan").contains("limits.min_age_secs: NaN is not a number"));
        assert!(error("[limits]\nmin_age_secs = inf").contains("limits.min_age_secs: inf is not a number"));
    }

    #[test]
    fn type_errors_come_with_place_and_key() {
        let msg = error("[limits]\nmax_stacks = -5\n");
        assert!(
            msg.starts_with("test.toml:2:14: limits.max_stacks: invalid value: integer `-5`, expected u32"),
            "{msg}"
        );
        let msg = error("[limits]\nmax_stacks = \"many\"\n");
        assert!(msg.starts_with("test.toml:2:14: limits.max_stacks: invalid type: string"), "{msg}");
        let msg = error("[[target]]\npids = 42\n");
        assert!(msg.starts_with("test.toml:2:8: target.pids: invalid type: integer `42`"), "{msg}");
        assert!(msg.ends_with("write a list, e.g. `pids = [1234]`"), "{msg}");
        let msg = error("[[target]]\npids = [\n  12,\n  -3,\n]\n");
        assert!(msg.starts_with("test.toml:4:3: target.pids: invalid value: integer `-3`"), "{msg}");
        let msg = error("[target]\npids = [1]\n");
        assert!(msg.contains("write `[[target]]` (an array of tables), not `[target]`"), "{msg}");
        let msg = error("[limits]\nbpf_stats = \"yes\"\n");
        assert!(
            msg.starts_with(
                "test.toml:2:13: limits.bpf_stats: invalid type: string \"yes\", expected a boolean"
            ),
            "{msg}"
        );
        let msg = error("listen = 9464\n");
        assert!(
            msg.starts_with("test.toml:1:10: listen: invalid type: integer `9464`, expected a string"),
            "{msg}"
        );
    }

    #[test]
    fn syntax_errors_come_with_place() {
        let msg = error("[limits\nmax_stacks = 1\n");
        assert!(msg.starts_with("test.toml:1:"), "{msg}");
        let msg = error("listen = \"127.0.0.1:9464\"\nlisten = \"127.0.0.1:9465\"\n");
        assert!(msg.starts_with("test.toml:2:1: listen: ") && msg.contains("duplicate key"), "{msg}");
    }

    #[test]
    fn unknown_keys_suggest_the_known_ones() {
        assert_eq!(
            error("[limits]\nmax_proceses = 3\n"),
            "test.toml:2:1: limits.max_proceses: unknown key `max_proceses`; did you mean `max_processes`? \
             (known keys here: max_processes, max_stacks, max_live_allocations, stack_depth, \
             metrics_top_stacks, min_age_secs, sample_bytes, bpf_stats)"
        );
        assert_eq!(
            error("[limit]\nmax_processes = 3\n"),
            "test.toml:1:2: limit: unknown key `limit`; did you mean `limits`? (known keys here: listen, target, limits, log)"
        );
        let msg = error("[[target]]\nunit = \"api.service\"\n");
        assert!(
            msg.starts_with("test.toml:2:1: target.unit: unknown key `unit`; did you mean `systemd_unit`?"),
            "{msg}"
        );
        let msg = error("[[target]]\npid = [1]\n");
        assert!(msg.contains("did you mean `pids`?"), "{msg}");
        let msg = error("[log]\nlevel = \"verbose\"\n");
        assert_eq!(
            msg,
            "test.toml:2:9: log.level: unknown value `verbose` (expected one of: error, warn, info, debug, trace)"
        );
        assert!(error("[log]\nlevel = \"infp\"\n").contains("did you mean `info`?"));
        let msg = error("colour = true\n");
        assert_eq!(
            msg,
            "test.toml:1:1: colour: unknown key `colour` (known keys here: listen, target, limits, log)"
        );
    }

    #[test]
    fn bad_listen_addresses() {
        assert_eq!(
            error("listen = \"localhost:9464\""),
            "test.toml:1:10: listen: \"localhost:9464\" is not an IP address and port; write e.g. \
             \"127.0.0.1:9464\" or \"[::1]:9464\" (host names are not resolved)"
        );
        assert!(error("listen = \"127.0.0.1\"").contains("is not an IP address and port"));
        assert!(error("listen = \"0.0.0.0:0\"").contains("port 0, which picks a random port"));
        assert_eq!(parse("listen = \"0.0.0.0:9464\"").unwrap().listen.to_string(), "0.0.0.0:9464");
    }

    #[test]
    fn bad_targets() {
        assert_eq!(
            error("[[target]]\n\n[[target]]\npids = [1]"),
            "test.toml:1:1: target: a [[target]] needs at least one of pids, exe, cmdline, systemd_unit, \
             cgroup (an empty one would trace every process)"
        );
        assert!(error("[[target]]\npids = []").starts_with("test.toml:2:8: target.pids: the list is empty"));
        assert_eq!(error("[[target]]\npids = [3, 0]"), "test.toml:2:12: target.pids: 0 is not a process id");
        assert_eq!(
            error("[[target]]\ncmdline = \"gunicorn (\""),
            "test.toml:2:11: target.cmdline: invalid regex \"gunicorn (\": unclosed group"
        );
        assert_eq!(
            error("[[target]]\nexe = \"re:python[\""),
            "test.toml:2:7: target.exe: invalid regex \"python[\": unclosed character class"
        );
        assert!(
            error("[[target]]\nexe = \"/usr/bin/python[3\"")
                .starts_with("test.toml:2:7: target.exe: invalid glob: "),
        );
        assert!(error("[[target]]\nexe = \"\"").contains("target.exe: empty pattern"));
        assert_eq!(
            error("[[target]]\nsystemd_unit = \"api\""),
            "test.toml:2:16: target.systemd_unit: \"api\" has no unit type; did you mean \"api.service\"? \
             (types: service, scope, slice, socket, mount, swap)"
        );
        assert!(
            error("[[target]]\nsystemd_unit = \"/system.slice/api.service\"")
                .contains("is a path; give the unit's name")
        );
        assert!(
            error("[[target]]\nsystemd_unit = \"api[.service\"")
                .contains("target.systemd_unit: invalid glob")
        );
        assert_eq!(
            error("[[target]]\ncgroup = \"/sys/fs/cgroup/system.slice/api.service\""),
            "test.toml:2:10: target.cgroup: \"/sys/fs/cgroup/system.slice/api.service\" is a file system path; \
             write the path inside the hierarchy, as in /proc/PID/cgroup: \"/system.slice/api.service\""
        );
        assert!(error("[[target]]\ncgroup = \"system.slice\"").contains("must start with '/'"));
        // The error is about the second table, on its own line.
        assert!(
            error("[[target]]\npids = [1]\n[[target]]\nexe = \"re:(\"")
                .starts_with("test.toml:4:7: target.exe:")
        );
    }

    #[test]
    fn suggestions_are_only_for_likely_typos() {
        let top = ["listen", "target", "limits", "log"];
        assert_eq!(closest("foo", &top), None);
        assert_eq!(closest("lgo", &top), None);
        assert_eq!(closest("Listen", &top), Some("listen"));
        assert_eq!(closest("targets", &top), Some("target"));
        assert_eq!(
            closest("unit", &["pids", "exe", "cmdline", "systemd_unit", "cgroup"]),
            Some("systemd_unit")
        );
    }

    /// Whatever the text, an error and never a panic: every cut of the example file, and the
    /// example with each line damaged.
    #[test]
    fn damaged_files_give_errors_not_panics() {
        let text = EXAMPLE.replace("#[[target]]", "[[target]]").replace("#min_age", "min_age");
        for (i, _) in text.char_indices().step_by(3) {
            let _ = parse(&text[..i]);
        }
        let lines: Vec<&str> = text.lines().collect();
        for i in 0..lines.len() {
            for damage in ["", "= =", "[", "x = \"\u{e9}", "[[target]]", "pids = [-1]"] {
                let mut damaged = lines.clone();
                damaged[i] = damage;
                let _ = parse(&damaged.join("\n"));
            }
        }
    }

    #[test]
    fn positions_count_characters() {
        let src = Source { name: "x", text: "a = \"é\"\nb = 1\n" };
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(6), (1, 6));
        assert_eq!(src.position(9), (2, 1));
        assert_eq!(src.position(1000), (3, 1));
        assert_eq!(key_at("x = 1\n[[target]] # c\nexe = 2\n", 21), Some("target.exe".into()));
        assert_eq!(key_at("", 0), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
