//! Running external commands.
//!
//! Every child gets `~/.cargo/bin` first on `PATH` (a fresh rustup install may not have put it
//! on the caller's `PATH` yet, and `cargo install bpf-linker` puts the linker there), and every
//! failure is an error that names the command and what it wrote to stderr.
use std::{
    env,
    ffi::OsString,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
};

use anyhow::{Context, Result, bail};

/// How much of a failed command's stderr an error message quotes (its last lines).
const STDERR_TAIL_LINES: usize = 30;

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`: where rustup's proxies and `cargo install` live.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cargo/bin"))
}

/// The `PATH` every child runs with: the cargo bin directory first, then the caller's `PATH`.
pub fn child_path() -> &'static OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let current: Vec<PathBuf> =
            env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
        let bin = cargo_bin_dir();
        let mut dirs: Vec<PathBuf> = bin.iter().cloned().collect();
        dirs.extend(current.into_iter().filter(|d| Some(d) != bin.as_ref()));
        env::join_paths(dirs).unwrap_or_else(|_| env::var_os("PATH").unwrap_or_default())
    })
}

/// The first executable file called `name` on [`child_path`].
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    env::split_paths(child_path())
        .map(|dir| dir.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A command that runs with [`child_path`] (which is also where `program` is looked up).
pub fn cmd(program: impl AsRef<Path>) -> Command {
    let mut c = Command::new(program.as_ref());
    c.env("PATH", child_path());
    c
}

/// The command as a shell line, with the variables it sets (except `PATH`), for messages.
pub fn show(c: &Command) -> String {
    let mut parts = Vec::new();
    for (k, v) in c.get_envs() {
        if k != "PATH"
            && let Some(v) = v
        {
            parts.push(format!("{}={}", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    parts.push(c.get_program().to_string_lossy().into_owned());
    parts.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// What a finished command printed.
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `c` to completion with its output captured; a non-zero exit is not an error here (for
/// checks where it means "no").
pub fn capture_any(c: &mut Command) -> Result<Captured> {
    let out = c.stdin(Stdio::null()).output().with_context(|| format!("could not run `{}`", show(c)))?;
    Ok(Captured {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `c` with its output captured and returns its stdout; a non-zero exit is an error that
/// quotes its stderr.
pub fn capture(c: &mut Command) -> Result<String> {
    let out = capture_any(c)?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", show(c), out.status, tail(&out.stderr));
    }
    Ok(out.stdout)
}

/// Runs `c` with its stdout going straight to ours and its stderr both echoed live and kept,
/// so a failure's error can quote it. For installers, whose progress the user should see.
pub fn run_teed(c: &mut Command) -> Result<()> {
    let shown = show(c);
    let mut child = c
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not run `{shown}`"))?;
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading stderr of `{shown}`")),
        };
        let _ = io::stderr().write_all(&buf[..n]);
        kept.extend_from_slice(&buf[..n]);
        // Only the tail is ever quoted; keep memory bounded on chatty installers.
        if kept.len() > 256 * 1024 {
            kept.drain(..kept.len() - 64 * 1024);
        }
    }
    let status = child.wait().with_context(|| format!("waiting for `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}): {}", tail(&String::from_utf8_lossy(&kept)));
    }
    Ok(())
}

/// Runs `c` with stdin, stdout and stderr inherited (cargo keeps its colours and progress bar).
/// Its stderr is already on the terminal, so a failure's error names the command and says so.
pub fn run(c: &mut Command) -> Result<()> {
    let shown = show(c);
    let status = c.status().with_context(|| format!("could not run `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); its stderr is above");
    }
    Ok(())
}

/// The last lines of a command's stderr, for an error message.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    if lines.is_empty() {
        return "(no stderr output)".into();
    }
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let mut s = String::new();
    if start > 0 {
        s.push_str("…\n");
    }
    s.push_str(&lines[start..].join("\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_lists_env_then_program_and_args() {
        let mut c = cmd("cargo");
        c.env("LLVM_PREFIX", "/usr/lib/llvm-22").args(["+1.98.0", "install", "bpf-linker"]);
        assert_eq!(show(&c), "LLVM_PREFIX=/usr/lib/llvm-22 cargo +1.98.0 install bpf-linker");
    }

    #[test]
    fn failure_quotes_stderr() {
        let err = capture(cmd("sh").args(["-c", "echo out; echo oops >&2; exit 3"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("`sh -c"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
    }

    #[test]
    fn teed_failure_quotes_stderr() {
        let err = run_teed(cmd("sh").args(["-c", "echo bad-thing >&2; exit 1"])).unwrap_err();
        assert!(format!("{err:#}").contains("bad-thing"));
    }

    #[test]
    fn missing_program_is_named() {
        let err = capture(&mut cmd("pyleak-no-such-program")).unwrap_err();
        assert!(format!("{err:#}").contains("could not run `pyleak-no-such-program`"));
    }

    #[test]
    fn tail_keeps_last_lines() {
        let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&many);
        assert!(t.starts_with("…\n"));
        assert!(t.ends_with("line 99"));
        assert_eq!(t.lines().count(), STDERR_TAIL_LINES + 1);
    }
}
