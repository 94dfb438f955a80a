//! `cargo xtask setup`: install what building pyleak needs, check what running it needs.
//!
//! Every step checks first and installs only what is missing, so a second run takes well
//! under a second (0.2 s here). Each step prints one line, `setup: <thing>: ok|installing…|MISSING: <what to do>`
//! (an install is followed by a second line saying how it ended). The toolchain steps
//! ([`toolchains`]) must all succeed; the host checks ([`host::check`]) never fail setup, they
//! are handed to the tasks that load eBPF programs, which refuse with the reason.
use std::{env, fs, path::Path, process};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{self, capture, capture_any, find_on_path, run_teed},
    host,
};

/// The user-side toolchain. Keep in sync with `rust-toolchain.toml` (a unit test checks).
pub const USER_TOOLCHAIN: &str = "1.98.0";
const USER_COMPONENTS: &[&str] = &["clippy", "rustfmt"];

/// The nightly that compiles `pyleak-ebpf` (through aya-build, from `pyleak-daemon/build.rs`).
/// It is pinned because it must use LLVM 22, like bpf-linker; later nightlies moved to LLVM 23.
/// Keep in sync with `EBPF_NIGHTLY` in `pyleak-daemon/build.rs` (a unit test checks).
pub const EBPF_NIGHTLY: &str = "nightly-2026-06-25";
const EBPF_COMPONENTS: &[&str] = &["rust-src"];

/// The LLVM major version bpf-linker must be built against: the one `EBPF_NIGHTLY` uses.
const LLVM_MAJOR: u32 = 22;
/// Where Debian's `llvm-22-dev` puts LLVM (bpf-linker's build looks there via `LLVM_PREFIX`).
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// bpf-linker 0.13 defaults to LLVM 23, which Debian 12 does not ship; it is built with its
/// `llvm-22` feature instead.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// A Debian package setup installs when it is missing.
struct AptPackage {
    name: &'static str,
    /// What it is for, shown while it installs.
    why: &'static str,
}

impl AptPackage {
    const fn new(name: &'static str, why: &'static str) -> Self {
        AptPackage { name, why }
    }
}

/// The Debian packages the build and the tests need, installed with one `apt-get install`.
const APT_PACKAGES: &[AptPackage] = &[
    // One line per package.
    AptPackage::new("llvm-22-dev", "the LLVM 22 that bpf-linker links against"),
    AptPackage::new("golang-go", "go tool pprof reads pyleak's pprof output in the tests"),
    AptPackage::new("prometheus", "a real Prometheus server and promtool for the metrics tests"),
    AptPackage::new("systemd", "systemd-analyze verify checks the unit file in the tests"),
];

/// Prints one step's line.
pub fn say(thing: &str, state: &str) {
    eprintln!("setup: {thing}: {state}");
}

/// Runs one step: its `Ok` detail becomes an `ok` line, its error a `MISSING` line (the error
/// says what to do) and an entry in `failed`.
fn step(failed: &mut Vec<String>, thing: &str, f: impl FnOnce(&str) -> Result<String>) {
    match f(thing) {
        Ok(detail) if detail.is_empty() => say(thing, "ok"),
        Ok(detail) => say(thing, &format!("ok ({detail})")),
        Err(e) => {
            say(thing, &format!("MISSING: {e:#}"));
            failed.push(thing.to_string());
        }
    }
}

/// Everything: the toolchain steps, then the host checks. Fails only if a toolchain step did.
pub fn all() -> Result<()> {
    let failed = toolchain_steps();
    host::check();
    finish(failed)
}

/// Everything, for a task that loads eBPF programs: fails if a toolchain step failed or the
/// host cannot trace. The host's reasons come first, as they are usually the root cause (a
/// user who is not root cannot install the apt packages either).
pub fn all_for_tracing(task: &str) -> Result<()> {
    let failed = toolchain_steps();
    let host = host::check();
    if let Err(e) = host.require_tracing(task) {
        if failed.is_empty() {
            return Err(e);
        }
        bail!("{e:#}\nsetup is also incomplete: {} (see the MISSING lines above)", failed.join(", "));
    }
    finish(failed)
}

/// The toolchain steps only (what `build` and `lint` need).
pub fn toolchains() -> Result<()> {
    finish(toolchain_steps())
}

fn finish(failed: Vec<String>) -> Result<()> {
    if !failed.is_empty() {
        bail!("setup is incomplete: {} (see the MISSING lines above)", failed.join(", "));
    }
    Ok(())
}

fn toolchain_steps() -> Vec<String> {
    let mut failed = Vec::new();
    let user = format!("rust {USER_TOOLCHAIN} ({})", USER_COMPONENTS.join(", "));
    step(&mut failed, &user, |t| rustup_toolchain(t, USER_TOOLCHAIN, USER_COMPONENTS));
    let ebpf = format!("rust {EBPF_NIGHTLY} ({})", EBPF_COMPONENTS.join(", "));
    step(&mut failed, &ebpf, |t| rustup_toolchain(t, EBPF_NIGHTLY, EBPF_COMPONENTS));
    apt_packages(&mut failed);
    // Building bpf-linker needs the user toolchain and LLVM; without them, say so instead.
    let prerequisites: Vec<String> = failed.iter().filter(|f| **f != ebpf).cloned().collect();
    step(&mut failed, "bpf-linker", |t| bpf_linker(t, &prerequisites));
    failed
}

// ---- rustup ---------------------------------------------------------------------------------

fn rustup() -> Result<process::Command> {
    match find_on_path("rustup") {
        Some(p) => Ok(cmd::cmd(p)),
        None => bail!("rustup not found: install it from https://rustup.rs, then rerun setup"),
    }
}

/// Whether a name from `rustup toolchain list` or `rustup component list` (`1.98.0-x86_64-…`,
/// `clippy-x86_64-…`, `rust-src`) is `want`, with or without the host triple. `nightly` is not
/// `nightly-2026-06-25-x86_64-…`: what follows the name must not start with a digit.
fn names(listed: &str, want: &str) -> bool {
    listed == want
        || listed
            .strip_prefix(want)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

fn installed_toolchains() -> Result<Vec<String>> {
    let out = capture(rustup()?.args(["toolchain", "list"]))?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect())
}

fn installed_components(toolchain: &str) -> Result<Vec<String>> {
    let out = capture(rustup()?.args(["component", "list", "--installed", "--toolchain", toolchain]))?;
    Ok(out.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

fn missing_components<'a>(toolchain: &str, components: &[&'a str]) -> Result<Vec<&'a str>> {
    let have = installed_components(toolchain)?;
    Ok(components.iter().copied().filter(|c| !have.iter().any(|h| names(h, c))).collect())
}

/// Installs `toolchain` (profile minimal) with `components`, or adds the missing components.
fn rustup_toolchain(thing: &str, toolchain: &str, components: &[&str]) -> Result<String> {
    if !installed_toolchains()?.iter().any(|t| names(t, toolchain)) {
        say(thing, "installing…");
        run_teed(rustup()?.args(["toolchain", "install", toolchain, "--profile", "minimal"]).args(
            if components.is_empty() { vec![] } else { vec!["--component".into(), components.join(",")] },
        ))?;
    } else {
        let missing = missing_components(toolchain, components)?;
        if missing.is_empty() {
            return Ok(String::new());
        }
        say(thing, &format!("installing… (components {})", missing.join(", ")));
        run_teed(rustup()?.args(["component", "add", "--toolchain", toolchain]).args(&missing))?;
    }
    let still = missing_components(toolchain, components)?;
    if !still.is_empty() {
        bail!(
            "rustup did not install {}: run `rustup component add --toolchain {toolchain} {}`",
            still.join(", "),
            still.join(" ")
        );
    }
    Ok("installed".into())
}

// ---- apt ------------------------------------------------------------------------------------

/// Whether dpkg knows `package` as installed. Errors when there is no dpkg (not Debian).
fn dpkg_installed(package: &str, why: &str) -> Result<bool> {
    let mut c = cmd::cmd("dpkg-query");
    c.args(["-W", "-f=${Status}", package]);
    let out = capture_any(&mut c).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}: setup installs packages on Debian only; install {package} ({why}) \
             with your package manager"
        )
    })?;
    match out.status.code() {
        Some(0) => Ok(out.stdout.split_whitespace().last() == Some("installed")),
        // "dpkg-query: no packages found matching …"
        Some(1) => Ok(false),
        _ => bail!("`{}` failed ({}): {}", cmd::show(&c), out.status, out.stderr.trim()),
    }
}

fn apt_packages(failed: &mut Vec<String>) {
    let mut missing = Vec::new();
    for p in APT_PACKAGES {
        match dpkg_installed(p.name, p.why) {
            Ok(true) => say(p.name, "ok"),
            Ok(false) => missing.push(p),
            Err(e) => {
                say(p.name, &format!("MISSING: {e:#}"));
                failed.push(p.name.to_string());
            }
        }
    }
    if missing.is_empty() {
        return;
    }
    let list: Vec<&str> = missing.iter().map(|p| p.name).collect();
    if !host::is_root() {
        for p in &missing {
            say(
                p.name,
                &format!(
                    "MISSING: {} is not installed; as root run `apt-get install -y {}`",
                    p.why,
                    list.join(" ")
                ),
            );
            failed.push(p.name.to_string());
        }
        return;
    }
    for p in &missing {
        say(p.name, &format!("installing… ({})", p.why));
    }
    let installed = (|| -> Result<()> {
        let apt = |args: &[&str]| {
            let mut c = cmd::cmd("apt-get");
            c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
            c
        };
        run_teed(&mut apt(&["update", "-q"]))?;
        // Recommends would add node-exporter and dozens of packages nothing here uses.
        run_teed(apt(&["install", "-y", "-q", "--no-install-recommends"]).args(&list))
    })();
    for p in &missing {
        match (&installed, dpkg_installed(p.name, p.why)) {
            (_, Ok(true)) => say(p.name, "ok (installed)"),
            (Err(e), _) => {
                say(p.name, &format!("MISSING: {e:#}"));
                failed.push(p.name.to_string());
            }
            (Ok(()), Ok(false)) => {
                say(p.name, "MISSING: apt-get reported success but dpkg does not list it as installed");
                failed.push(p.name.to_string());
            }
            (Ok(()), Err(e)) => {
                say(p.name, &format!("MISSING: {e:#}"));
                failed.push(p.name.to_string());
            }
        }
    }
}

// ---- bpf-linker -----------------------------------------------------------------------------

/// The LLVM version a bpf-linker binary is built against, e.g. `22.1.8`.
///
/// `bpf-linker --version` prints only its own version, so ask LLVM itself: bpf-linker hands
/// `--llvm-args` to LLVM's option parser, which prints its version and exits on `--version`
/// before any input is read or output written.
fn bpf_linker_llvm(linker: &Path) -> Result<String> {
    let dir = env::temp_dir().join(format!("pyleak-xtask-{}", process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut c = cmd::cmd(linker);
    c.arg("--llvm-args=--version").arg("-o").arg(dir.join("probe.o")).arg("/dev/null");
    let out = capture_any(&mut c);
    let _ = fs::remove_dir_all(&dir);
    let out = out?;
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let version = text
        .split("LLVM version ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string);
    match version {
        Some(v) if out.status.success() => Ok(v),
        _ => bail!("`{}` did not print an LLVM version ({}): {}", cmd::show(&c), out.status, text.trim()),
    }
}

fn llvm_major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// Checks the bpf-linker on `PATH`; returns what is wrong with it, or its description.
fn inspect_bpf_linker() -> std::result::Result<String, String> {
    let Some(path) = find_on_path("bpf-linker") else {
        return Err("not found on PATH or in ~/.cargo/bin".into());
    };
    let version = capture(cmd::cmd(&path).arg("--version"))
        .map(|v| v.trim().trim_start_matches("bpf-linker").trim().to_string())
        .map_err(|e| format!("{} does not run: {e:#}", path.display()))?;
    let llvm = bpf_linker_llvm(&path).map_err(|e| format!("{e:#}"))?;
    if llvm_major(&llvm) != Some(LLVM_MAJOR) {
        return Err(format!("{} is built against LLVM {llvm}, not LLVM {LLVM_MAJOR}", path.display()));
    }
    Ok(format!("{version}, LLVM {llvm}, {}", path.display()))
}

/// Checks bpf-linker, and installs it when it is missing or not built against LLVM 22, unless
/// a step it depends on (`prerequisites`: those that failed) did not succeed.
fn bpf_linker(thing: &str, prerequisites: &[String]) -> Result<String> {
    let problem = match inspect_bpf_linker() {
        Ok(detail) => return Ok(detail),
        Err(problem) => problem,
    };
    if !prerequisites.is_empty() {
        bail!("{problem}; building it needs {} first", prerequisites.join(" and "));
    }
    say(thing, &format!("installing… ({problem}; takes about a minute)"));
    let mut c = cmd::cmd("cargo");
    c.env("LLVM_PREFIX", LLVM_PREFIX)
        .arg(format!("+{USER_TOOLCHAIN}"))
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}"), "--locked"]);
    // Replace one that cargo installed before with other features (another LLVM).
    if find_on_path("bpf-linker").is_some() {
        c.arg("--force");
    }
    run_teed(&mut c)?;
    inspect_bpf_linker()
        .map(|d| format!("installed: {d}"))
        .map_err(|problem| anyhow::anyhow!("after `{}`: {problem}", cmd::show(&c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolchain_names() {
        assert!(names("1.98.0-x86_64-unknown-linux-gnu", "1.98.0"));
        assert!(names("nightly-2026-06-25-x86_64-unknown-linux-gnu", "nightly-2026-06-25"));
        assert!(names("nightly-2026-06-25", "nightly-2026-06-25"));
        assert!(!names("nightly-2026-06-25-x86_64-unknown-linux-gnu", "nightly"));
        assert!(!names("1.98.0-x86_64-unknown-linux-gnu", "1.98"));
        assert!(!names("1.98.1-x86_64-unknown-linux-gnu", "1.98.0"));
    }

    #[test]
    fn component_names() {
        assert!(names("clippy-x86_64-unknown-linux-gnu", "clippy"));
        assert!(names("rust-src", "rust-src"));
        assert!(!names("rust-std-x86_64-unknown-linux-gnu", "rust-src"));
        assert!(!names("rustfmt-preview", "rust"));
    }

    #[test]
    fn llvm_versions() {
        assert_eq!(llvm_major("22.1.8"), Some(22));
        assert_eq!(llvm_major("23.0.0git"), Some(23));
        assert_eq!(llvm_major("x"), None);
    }

    // The checks below run the real tools, and skip (passing) where a tool is absent.

    #[test]
    fn dpkg_check_tells_installed_from_unknown() {
        if find_on_path("dpkg-query").is_none() {
            return;
        }
        assert!(!dpkg_installed("pyleak-no-such-package", "test").unwrap());
        assert!(dpkg_installed("dpkg", "test").unwrap());
    }

    #[test]
    fn rustup_check_finds_missing_components() {
        if find_on_path("rustup").is_none()
            || !installed_toolchains().unwrap().iter().any(|t| names(t, USER_TOOLCHAIN))
        {
            return;
        }
        let missing = missing_components(USER_TOOLCHAIN, &["rustc", "cargo", "pyleak-no-such-component"]);
        assert_eq!(missing.unwrap(), ["pyleak-no-such-component"]);
    }

    #[test]
    fn bpf_linker_reports_its_llvm() {
        let Some(linker) = find_on_path("bpf-linker") else {
            return;
        };
        let version = bpf_linker_llvm(&linker).unwrap();
        assert!(llvm_major(&version).is_some(), "{version}");
    }

    /// The pins here must match the files that cargo and aya-build read.
    #[test]
    fn pins_match_the_build() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let toolchain = fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
        assert!(
            toolchain.contains(&format!("channel = \"{USER_TOOLCHAIN}\"")),
            "rust-toolchain.toml does not pin {USER_TOOLCHAIN}"
        );
        for c in USER_COMPONENTS {
            assert!(toolchain.contains(&format!("\"{c}\"")), "rust-toolchain.toml lacks {c}");
        }
        let build_rs = fs::read_to_string(root.join("pyleak-daemon/build.rs")).unwrap();
        assert!(
            build_rs.contains(&format!("\"{EBPF_NIGHTLY}\"")),
            "pyleak-daemon/build.rs does not use {EBPF_NIGHTLY}"
        );
    }
}
