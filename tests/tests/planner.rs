// The probe-site planner (issue #5): with it (the default) pyleak probes the allocator
// table's implementations and puts entry probes on instructions the kernel emulates; with
// --no-planner it probes the public entry points on their first instruction. The values the
// programs read at the planned sites must equal those read at the entries: the leaking
// stack must show the same outstanding bytes, outstanding blocks and allocated bytes either
// way, on every interpreter of the matrix (leak_basic.py under `pyleak trace`) and on
// Debian's LTO python3.11 (run_leak.py under `pyleak run`). And `doctor` shows the plan.
//
// The comparison is exact. The leaking line makes the same allocations in every run (bytes
// objects of a fixed size, plus the list's growth, which depends only on the count), so any
// difference means a probe read a wrong value or fired a wrong number of times.

use std::path::Path;

use pyleak_e2e::{
    Python, Report, doctor_of, for_each_python, marker_line, require_root, run_command, script, serial,
    trace_scenario,
};
use serde_json::Value;

const SCRIPT: &str = "run_leak.py";

/// (outstanding bytes, outstanding blocks, allocated bytes) of the stack at the LEAK line.
fn leak_numbers(stack: &pyleak_e2e::Stack) -> (u64, u64, u64) {
    (stack.outstanding_bytes, stack.outstanding_allocations, stack.allocated_bytes)
}

fn planner_note(notes: &[String]) -> bool {
    notes.iter().any(|n| n.contains("planner off"))
}

/// Under `pyleak trace` on a process that is ready: under `pyleak run` the raw allocator's
/// probes are removed during the first second, and a call in flight at that moment is lost
/// (ARCHITECTURE.md, "Forwarders are not probed"), so two runs can differ by one allocation
/// (CI saw 12,037 against 12,038 on 3.8). `run`'s plan is the same as `trace`'s:
/// `run_drops_raw_allocator_probes_once_bound` compares the probed offsets.
#[test]
fn planned_sites_read_what_the_entries_read() {
    const TRACED: &str = "leak_basic.py";
    for_each_python(|python: &Python| {
        let leak = marker_line(&script(TRACED), "LEAK");
        let on = trace_scenario(python, TRACED, &[]);
        let off = trace_scenario(python, TRACED, &["--no-planner"]);
        let (a, b) = (on.expect_stack_at(TRACED, leak), off.expect_stack_at(TRACED, leak));
        assert_eq!(
            leak_numbers(a),
            leak_numbers(b),
            "{python}: the leak's (outstanding bytes, blocks, allocated bytes) differ with the planner on and off\n--- on:\n{on}\n--- off:\n{off}"
        );
        assert!(planner_note(&off.json.python.notes), "no planner-off note\n{off}");
        assert!(!planner_note(&on.json.python.notes), "planner-off note with the planner on\n{on}");
        assert_no_replaced_allocator(&on);
    });
}

/// With the default allocator, no public entry point stands in for a table target.
fn assert_no_replaced_allocator(report: &Report) {
    assert!(
        !report
            .json
            .python
            .notes
            .iter()
            .any(|n| n.contains("replaced allocator") || n.contains("instead of the allocator table")),
        "a default allocator was taken for a replaced one\n{report}"
    );
}

/// Debian's /usr/bin/python3.11 (LTO+PGO, static, stripped): the wrappers are not thunks, so
/// the planner plans the public functions themselves; the leak (1 KB objects, through libc
/// malloc) must come out the same. Skipped, loudly, where that interpreter is absent.
#[test]
fn planned_sites_on_debian_lto_python() {
    let _serial = serial();
    require_root();
    let debian = Path::new("/usr/bin/python3.11");
    if !debian.exists() {
        eprintln!("pyleak-e2e: SKIPPED planned_sites_on_debian_lto_python: no /usr/bin/python3.11");
        return;
    }
    let path = script(SCRIPT);
    let leak = marker_line(&path, "LEAK") as u64;
    let numbers = |args: &[&str]| -> (u64, u64, u64) {
        let report = json_run(debian, &path, args);
        let stack = report["stacks"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["frames"][0]["line"].as_u64() == Some(leak)))
            .unwrap_or_else(|| panic!("no stack at the LEAK line\n{report:#}"))
            .clone();
        let n = |k: &str| stack[k].as_u64().unwrap_or_else(|| panic!("no {k}\n{stack:#}"));
        (n("outstanding_bytes"), n("outstanding_allocations"), n("allocated_bytes"))
    };
    assert_eq!(numbers(&[]), numbers(&["--no-planner"]), "Debian python3.11: planner on vs off");
}

fn json_run(python: &Path, script: &Path, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let mut command = pyleak_e2e::pyleak_command();
    command.args(["run", "--format", "json", "-o"]).arg(&out).args(args).arg("--").arg(python).arg(script);
    command.env_remove("PYTHONMALLOC").env("PYTHONDONTWRITEBYTECODE", "1");
    let finished = run_command(command, pyleak_e2e::RUN_TIMEOUT);
    assert_eq!(finished.status.code(), Some(0), "{finished}");
    serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("json")
}

/// `doctor --pid` shows the plan: pyenv builds probe the table targets, the free
/// implementation on an emulated instruction past its entry.
#[test]
fn doctor_shows_the_plan() {
    for_each_python(|python| {
        let finished = doctor_of(python.path.to_str().expect("utf-8"));
        assert_eq!(finished.status.code(), Some(0), "{finished}");
        let out = &finished.stdout;
        assert!(out.contains("PyObject_Malloc, PyMem_Malloc -> _PyObject_Malloc"), "{python}\n{finished}");
        let free = out
            .lines()
            .skip_while(|l| !l.contains("-> _PyObject_Free"))
            .nth(1)
            .unwrap_or_else(|| panic!("{python}: no _PyObject_Free row\n{finished}"));
        assert!(
            free.contains("+3 `je") && free.contains("emulated") && free.contains("allocator table target"),
            "{python}: _PyObject_Free's plan: {free}\n{finished}"
        );
    });
}

/// A target started with PYTHONMALLOC=malloc sets its allocator up after pyleak attached:
/// `run` must not trust the file's default tables then, and says it probes the public
/// entry points; the leak is still found in full.
#[test]
fn a_configured_allocator_keeps_the_public_entry_points() {
    for_each_python(|python| {
        let path = script(SCRIPT);
        let leak = marker_line(&path, "LEAK") as u64;
        let report = json_run_env(&python.path, &path, &[("PYTHONMALLOC", "malloc")]);
        let notes = report["python"]["notes"].to_string();
        assert!(notes.contains("PYTHONMALLOC=malloc"), "{python}: no note\n{report:#}");
        let top = &report["stacks"][0]["frames"][0];
        assert_eq!(top["line"].as_u64(), Some(leak), "{python}: the top stack is not the leak\n{report:#}");
    });
}

fn json_run_env(python: &Path, script: &Path, env: &[(&str, &str)]) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let mut command = pyleak_e2e::pyleak_command();
    command.args(["run", "--format", "json", "-o"]).arg(&out).arg("--").arg(python).arg(script);
    command.env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in env {
        command.env(k, v);
    }
    let finished = run_command(command, pyleak_e2e::RUN_TIMEOUT);
    assert_eq!(finished.status.code(), Some(0), "{finished}");
    serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("json")
}
