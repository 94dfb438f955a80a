//! What this host offers pyleak at run time: privileges, kernel features, CPython builds.
//!
//! These checks never fail `setup` (a build machine need not be able to trace). They print
//! their lines and come back as a [`Host`], and the tasks that load eBPF programs (`test`,
//! `demo`) call [`Host::require_tracing`], which refuses with the reasons and the fix.
use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use crate::{
    cmd::{self, find_on_path},
    setup::say,
};

/// `CAP_SYS_ADMIN` (include/uapi/linux/capability.h): attaching uprobes needs it.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_SYS_PTRACE`: reading `/proc/PID/mem` of another user's process needs it.
const CAP_SYS_PTRACE: u32 = 19;
/// pyleak reads struct offsets (the task's TLS base) from the kernel's BTF.
const BTF: &str = "/sys/kernel/btf/vmlinux";
/// The perf PMU that `perf_event_open`-based uprobes (what aya uses) go through.
const UPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/uprobe/type";
/// The CPython minor versions (3.x) the tests may use.
const TEST_MINORS: std::ops::RangeInclusive<u32> = 8..=14;
/// Debian's own interpreter (LTO+PGO, static libpython, stripped): a test case of its own.
const SYSTEM_PYTHON: &str = "/usr/bin/python3.11";

/// What stops this host from loading pyleak's eBPF programs, as (check, fix) pairs.
pub struct Host {
    blockers: Vec<(String, String)>,
    /// Not root: the refusal shows how to rerun the task as root.
    not_root: bool,
}

impl Host {
    /// Fails, naming every reason and its fix, unless pyleak can trace on this host.
    pub fn require_tracing(&self, task: &str) -> Result<()> {
        if self.blockers.is_empty() {
            return Ok(());
        }
        let reasons: Vec<String> =
            self.blockers.iter().map(|(what, fix)| format!("\n  - {what}: {fix}")).collect();
        let rerun = if self.not_root {
            format!(
                "\nrerun it as root: `sudo -E env \"PATH=$PATH\" cargo xtask {task}` \
                 (or from a root shell)"
            )
        } else {
            String::new()
        };
        bail!(
            "`cargo xtask {task}` loads eBPF programs and attaches uprobes, which this host \
             cannot do now:{}{rerun}",
            reasons.concat()
        )
    }
}

/// Runs the host checks, printing one `setup:` line each.
pub fn check() -> Host {
    let mut blockers = Vec::new();
    let mut blocker = |what: &str, fix: String| {
        say(what, &format!("MISSING: {fix}"));
        blockers.push((what.to_string(), fix));
    };

    let caps = effective_caps();
    let uid = uid();
    let privileges = "privileges (root or CAP_SYS_ADMIN)";
    match caps {
        Some(c) if c & (1 << CAP_SYS_ADMIN) != 0 => {
            let uid = uid.map_or("?".into(), |u| u.to_string());
            let mut detail = format!("uid {uid}, CAP_SYS_ADMIN effective");
            if uid != "0" && c & (1 << CAP_SYS_PTRACE) == 0 {
                detail.push_str("; without CAP_SYS_PTRACE, only this user's processes");
            }
            say(privileges, &format!("ok ({detail})"));
        }
        Some(_) if uid == Some(0) => blocker(
            privileges,
            "running as root but CAP_SYS_ADMIN is not effective (in a container, run it \
             --privileged or with --cap-add SYS_ADMIN)"
                .into(),
        ),
        Some(_) => blocker(
            privileges,
            "not root and CAP_SYS_ADMIN is not effective: attaching uprobes needs it; \
             rerun as root"
                .into(),
        ),
        None => blocker(privileges, "cannot read CapEff from /proc/self/status".into()),
    }

    if Path::new(BTF).exists() {
        say("kernel BTF", &format!("ok ({BTF})"));
    } else {
        blocker(
            "kernel BTF",
            format!("{BTF} is missing: pyleak needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        );
    }

    match fs::read_to_string(UPROBE_PMU_TYPE) {
        Ok(t) => say("uprobe PMU", &format!("ok (perf type {})", t.trim())),
        Err(e) => blocker(
            "uprobe PMU",
            format!(
                "cannot read {UPROBE_PMU_TYPE} ({e}): pyleak needs a kernel built with \
                 CONFIG_UPROBE_EVENTS=y"
            ),
        ),
    }

    let found = test_interpreters();
    let what = "CPython for tests";
    if found.iter().any(|i| i.pyenv && (i.minor == 11 || i.minor == 12)) {
        let list: Vec<String> = found.iter().map(Interpreter::describe).collect();
        say(what, &format!("ok ({})", list.join(", ")));
    } else {
        let have = if found.is_empty() {
            "none found".to_string()
        } else {
            found.iter().map(Interpreter::describe).collect::<Vec<_>>().join(", ")
        };
        say(
            what,
            &format!(
                "MISSING: no pyenv CPython 3.11 or 3.12 ({have}); install one with \
                 `pyenv install 3.12`, the end-to-end tests need it"
            ),
        );
    }
    Host { blockers, not_root: uid != Some(0) }
}

/// The effective capability set, from `CapEff:` in /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_status_field(&status, "CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok())
}

/// The real uid, from `Uid:` in /proc/self/status.
fn uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_status_field(&status, "Uid:").and_then(|v| v.parse().ok())
}

pub fn is_root() -> bool {
    uid() == Some(0)
}

fn parse_status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next())
}

/// A CPython the tests or the demo can run.
#[derive(Debug, Clone)]
pub struct Interpreter {
    /// The pyenv version name (`3.12.1`), or the path for a system interpreter.
    pub name: String,
    pub minor: u32,
    /// `Some(n)` for a plain `3.x.n` release, `None` for other names (`3.12-dev`, `3.11.4-debug`).
    pub patch: Option<u32>,
    pub executable: PathBuf,
    pub pyenv: bool,
}

impl Interpreter {
    fn describe(&self) -> String {
        if self.pyenv { format!("pyenv {}", self.name) } else { self.name.clone() }
    }
}

/// pyenv's root: `pyenv root` if pyenv runs, else `$PYENV_ROOT`, `~/.pyenv`, `/root/.pyenv`
/// (the first of them that has a `versions` directory).
fn pyenv_root() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(pyenv) = find_on_path("pyenv")
        && let Ok(out) = cmd::capture(cmd::cmd(pyenv).arg("root"))
    {
        candidates.push(PathBuf::from(out.trim()));
    }
    if let Some(r) = env::var_os("PYENV_ROOT").filter(|r| !r.is_empty()) {
        candidates.push(PathBuf::from(r));
    }
    if let Some(h) = env::var_os("HOME").filter(|h| !h.is_empty()) {
        candidates.push(PathBuf::from(h).join(".pyenv"));
    }
    candidates.push(PathBuf::from("/root/.pyenv"));
    candidates.into_iter().find(|r| r.join("versions").is_dir())
}

/// `3.12.1` -> (12, Some(1)); `3.12-dev` -> (12, None); `pypy3.10-7.3` or `2.7.18` -> None.
fn parse_version_name(name: &str) -> Option<(u32, Option<u32>)> {
    let rest = name.strip_prefix("3.")?;
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let minor = rest[..end].parse().ok()?;
    let patch = rest[end..].strip_prefix('.').and_then(|p| p.parse().ok());
    Some((minor, patch))
}

/// pyenv interpreters 3.8–3.14 (those with a `bin/python3.N`), oldest first.
pub fn pyenv_interpreters() -> Vec<Interpreter> {
    let mut found = Vec::new();
    if let Some(entries) = pyenv_root().and_then(|root| fs::read_dir(root.join("versions")).ok()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((minor, patch)) = parse_version_name(&name) else {
                continue;
            };
            let executable = e.path().join(format!("bin/python3.{minor}"));
            if TEST_MINORS.contains(&minor) && executable.is_file() {
                found.push(Interpreter { name, minor, patch, executable, pyenv: true });
            }
        }
    }
    found.sort_by_key(|i| (i.minor, i.patch.is_none(), i.patch, i.name.clone()));
    found
}

/// Every interpreter the tests may use: pyenv 3.8–3.14 and Debian's /usr/bin/python3.11.
pub fn test_interpreters() -> Vec<Interpreter> {
    let mut found = pyenv_interpreters();
    if Path::new(SYSTEM_PYTHON).is_file() {
        found.push(Interpreter {
            name: SYSTEM_PYTHON.into(),
            minor: 11,
            patch: None,
            executable: SYSTEM_PYTHON.into(),
            pyenv: false,
        });
    }
    found
}

/// The interpreter for the demo, and why it was picked: the newest pyenv 3.12.N, else the
/// newest 3.11.N, else any other pyenv 3.11/3.12 build, else `python3` on `PATH`.
pub fn demo_python() -> Result<(PathBuf, String)> {
    Ok(match pick_demo(&pyenv_interpreters()) {
        Some(i) => (i.executable.clone(), format!("pyenv {}", i.name)),
        None => match find_on_path("python3") {
            Some(p) => (
                p,
                "python3 on PATH: no pyenv CPython 3.11 or 3.12 found, which the demo \
                 prefers; if this one is stripped or LTO-built, install one with \
                 `pyenv install 3.12`"
                    .into(),
            ),
            None => bail!("no CPython found for the demo: install one with `pyenv install 3.12`"),
        },
    })
}

fn pick_demo(found: &[Interpreter]) -> Option<&Interpreter> {
    let newest =
        |minor: u32| found.iter().filter(|i| i.minor == minor && i.patch.is_some()).max_by_key(|i| i.patch);
    newest(12).or_else(|| newest(11)).or_else(|| found.iter().rev().find(|i| i.minor == 12 || i.minor == 11))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp(name: &str) -> Interpreter {
        let (minor, patch) = parse_version_name(name).unwrap();
        let executable = PathBuf::from(format!("/p/versions/{name}/bin/python3.{minor}"));
        Interpreter { name: name.into(), minor, patch, executable, pyenv: true }
    }

    #[test]
    fn version_names() {
        assert_eq!(parse_version_name("3.12.1"), Some((12, Some(1))));
        assert_eq!(parse_version_name("3.8.18"), Some((8, Some(18))));
        assert_eq!(parse_version_name("3.12-dev"), Some((12, None)));
        assert_eq!(parse_version_name("3.13.0t"), Some((13, None)));
        assert_eq!(parse_version_name("2.7.18"), None);
        assert_eq!(parse_version_name("pypy3.10-7.3.12"), None);
    }

    #[test]
    fn demo_prefers_newest_312_then_311() {
        let all = ["3.10.13", "3.11.7", "3.11.9", "3.12.1", "3.12.4", "3.13.0"].map(interp);
        assert_eq!(pick_demo(&all).unwrap().name, "3.12.4");
        let no312 = ["3.11.7", "3.11.9", "3.13.0"].map(interp);
        assert_eq!(pick_demo(&no312).unwrap().name, "3.11.9");
        let odd = ["3.10.13", "3.12-dev"].map(interp);
        assert_eq!(pick_demo(&odd).unwrap().name, "3.12-dev");
        assert!(pick_demo(&["3.10.13", "3.13.0"].map(interp)).is_none());
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tx\nUid:\t0\t0\t0\t0\nCapEff:\t000001fffeffffff\n";
        assert_eq!(parse_status_field(status, "Uid:"), Some("0"));
        let caps = u64::from_str_radix(parse_status_field(status, "CapEff:").unwrap(), 16).unwrap();
        assert_ne!(caps & (1 << CAP_SYS_ADMIN), 0);
    }

    #[test]
    fn refusal_names_reason_and_fix() {
        let host =
            Host { blockers: vec![("uprobe PMU".into(), "CONFIG_UPROBE_EVENTS".into())], not_root: true };
        let msg = host.require_tracing("test").unwrap_err().to_string();
        assert!(msg.contains("cargo xtask test") && msg.contains("uprobe PMU: CONFIG_UPROBE_EVENTS"));
        assert!(msg.contains("sudo -E env \"PATH=$PATH\" cargo xtask test"), "{msg}");
        assert!(Host { blockers: vec![], not_root: true }.require_tracing("demo").is_ok());
    }
}
