// Bad input: `pyleak trace` on a pid with no process, on a process that is
// not Python, on an unsupported CPython, and without CAP_SYS_ADMIN must fail with exit 1 and a one-line
// message naming the problem; bad flags are usage errors (exit 2).

use std::path::Path;
use std::process::Command;

use pyleak_e2e::{
    Finished, KillOnDrop, RUN_TIMEOUT, Target, find_in_path, for_each_python, pyleak, pyleak_bin,
    require_root, run_command, serial,
};

/// Exit 1 and exactly one non-empty stderr line, containing `needle`.
fn assert_runtime_error(finished: &Finished, needle: &str) {
    assert_eq!(finished.status.code(), Some(1), "want exit 1 (runtime failure)\n{finished}");
    assert!(finished.stderr.contains(needle), "stderr should contain {needle:?}\n{finished}");
    let lines = finished.stderr.lines().filter(|line| !line.trim().is_empty()).count();
    assert_eq!(lines, 1, "want a one-line message on stderr\n{finished}");
}

/// Pids with no process: one just reaped (if the kernel has not reused it
/// yet) and one above /proc/sys/kernel/pid_max (never a process).
fn unused_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    let mut child = Command::new("true").spawn().expect("spawn true");
    child.wait().expect("wait true");
    let reaped = child.id();
    if !Path::new(&format!("/proc/{reaped}")).exists() {
        pids.push(reaped);
    }
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("read /proc/sys/kernel/pid_max")
        .trim()
        .parse()
        .expect("pid_max is a number");
    pids.push(pid_max + 1);
    pids
}

/// `trace --pid` of a pid with no process: exit 1, `no process with pid N`.
#[test]
fn trace_no_such_process() {
    let _serial = serial();
    require_root();
    for pid in unused_pids() {
        let finished = pyleak(["trace", "--pid", &pid.to_string(), "--duration", "5"]);
        assert_runtime_error(&finished, "no process with pid");
        assert!(finished.stderr.contains(&pid.to_string()), "the message should name pid {pid}\n{finished}");
    }
}

/// `trace --pid` of `sleep 1000`: exit 1, `not a Python process`.
#[test]
fn trace_not_python() {
    let _serial = serial();
    require_root();
    let sleep = KillOnDrop::spawn("sleep", &["1000"]);
    let finished = pyleak(["trace", "--pid", &sleep.pid().to_string(), "--duration", "5"]);
    assert_runtime_error(&finished, "not a Python process");
}

/// `trace --pid` of a CPython older than pyleak supports (pyenv 3.7 or 3.6,
/// both present on this project's machines): exit 1, the message names the
/// version and lists the supported ones. Skipped, loudly, where neither is
/// installed.
#[test]
fn trace_unsupported_version() {
    let _serial = serial();
    require_root();
    let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    let old = std::fs::read_dir(format!("{root}/versions"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let minor = name.strip_prefix("3.")?.split('.').next()?.parse::<u32>().ok()?;
            let bin = e.path().join(format!("bin/python3.{minor}"));
            (minor < 8 && bin.exists()).then(|| (format!("3.{minor}"), bin))
        })
        .next();
    let Some((version, bin)) = old else {
        eprintln!("pyleak-e2e: SKIPPED trace_unsupported_version: no CPython < 3.8 under {root}");
        return;
    };
    let python = KillOnDrop::spawn(bin.to_str().expect("utf-8"), &["-c", "import time; time.sleep(1000)"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let finished = pyleak(["trace", "--pid", &python.pid().to_string(), "--duration", "5"]);
    // The message names the version (with its micro release when pyleak can read it).
    assert_runtime_error(&finished, "which pyleak does not support");
    assert!(
        finished.stderr.contains(&format!("runs Python {version}")),
        "the message should name {version}\n{finished}"
    );
    assert!(
        finished.stderr.contains("supported: 3.8,"),
        "the message should list the supported versions\n{finished}"
    );
}

/// Capabilities removed by `setpriv` before it execs pyleak. As root, a
/// capability missing from the bounding set is not regained at exec.
const DROP_CAPS: [&str; 2] =
    ["--bounding-set=-sys_admin,-bpf,-perfmon", "--inh-caps=-sys_admin,-bpf,-perfmon"];
const CAP_SYS_ADMIN_BIT: u32 = 21;

/// `trace --pid` of a live Python target, run by root without CAP_SYS_ADMIN
/// (and CAP_BPF, CAP_PERFMON): exit 1, message names `CAP_SYS_ADMIN`.
#[test]
fn trace_without_cap_sys_admin() {
    let setpriv =
        find_in_path("setpriv").unwrap_or_else(|| panic!("this test needs setpriv (util-linux) in $PATH"));

    // First make sure the dropped set really lacks CAP_SYS_ADMIN.
    let mut check = Command::new(&setpriv);
    check.args(DROP_CAPS).args(["--", "cat", "/proc/self/status"]);
    let status = run_command(check, RUN_TIMEOUT);
    let cap_eff = status
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapEff in /proc/self/status under setpriv\n{status}"));
    assert_eq!(cap_eff & (1 << CAP_SYS_ADMIN_BIT), 0, "setpriv did not drop CAP_SYS_ADMIN\n{status}");

    for_each_python(|python| {
        let target = Target::ready(python, "leak_basic.py");
        let mut command = Command::new(&setpriv);
        command
            .args(DROP_CAPS)
            .arg("--")
            .arg(pyleak_bin())
            .args(["trace", "--pid", &target.pid().to_string(), "--duration", "5"])
            .env_remove("RUST_LOG");
        let finished = run_command(command, RUN_TIMEOUT);
        assert_runtime_error(&finished, "CAP_SYS_ADMIN");
    });
}

/// Bad command lines exit 2 (usage error) with a message on stderr.
#[test]
fn usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &["trace"],                                     // --pid is required
        &["trace", "--pid", "1", "--format", "nope"],   // unknown format
        &["trace", "--pid", "1", "--group-by", "nope"], // unknown grouping
        &["trace", "--pid", "not-a-pid"],               // not a number
        &["trace", "--pid", "1", "--top", "many"],      // not a number
        &["run", "--format", "json"],                   // no command to run
        &["trace", "--pid", "1", "--include", "["],     // a glob that does not compile
        &["run", "--exclude", "a{b", "--", "true"],     // the same, on run
        &["daemon", "--match", ""],                     // would match every process
        &["daemon", "--match", "(a"],                   // a regex that does not compile
        &["no-such-subcommand"],
    ];
    for args in cases {
        let finished = pyleak(*args);
        assert_eq!(finished.status.code(), Some(2), "`pyleak {}`: want exit 2\n{finished}", args.join(" "));
        assert!(!finished.stderr.trim().is_empty(), "`pyleak {}`: no message\n{finished}", args.join(" "));
    }
}

/// `run -o PATH` where the report cannot go: refused before the command starts (a marker
/// file the command would create stays absent), exit 1, one line naming the path. Before,
/// the whole program was traced and the report lost at the end.
#[test]
fn run_refuses_an_unwritable_output_before_starting() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let is_dir = dir.path().to_str().unwrap().to_string();
    let missing = dir.path().join("no/such/dir/report.json").to_str().unwrap().to_string();
    for (output, needle) in [(missing.as_str(), "does not exist"), (is_dir.as_str(), "is a directory")] {
        let finished = pyleak(["run", "-o", output, "--", "touch", marker.to_str().unwrap()]);
        assert_runtime_error(&finished, needle);
        assert!(!marker.exists(), "the command ran although its report could not be written\n{finished}");
    }
}

/// `trace --pid` of a thread of a Python process (its tid also answers in /proc): exit 1,
/// one line naming the process to trace instead. Before, the kernel refused the probes
/// with a bare "No such process".
#[test]
fn trace_a_thread_names_its_process() {
    let _serial = serial();
    require_root();
    let python = pyleak_e2e::pythons().pop().expect("a python");
    let code = "import threading,time\nt=threading.Thread(target=time.sleep,args=(60,))\nt.start()\nprint('ready',flush=True)\ntime.sleep(60)";
    let mut child =
        Command::new(&python.path).args(["-c", code]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line)
        .unwrap();
    let pid = child.id();
    let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&t| t != pid)
        .expect("the worker thread");
    let finished = pyleak(["trace", "--pid", &tid.to_string(), "--duration", "5"]);
    let _ = child.kill();
    let _ = child.wait();
    assert_runtime_error(&finished, &format!("is a thread of process {pid}"));
}
