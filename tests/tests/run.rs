// `pyleak run [REPORT OPTIONS] -- CMD`: pyleak starts run_leak.py itself,
// traces it from its first allocation until it exits, and reports; and the
// report options (--group-by/--top, --frames, --min-age, --include/--exclude,
// the default table format on stdout), once per interpreter of
// PYTHON_VERSIONS. Also that the demo app (demo/leaky_service.py) still shows
// its leak.

use std::{
    ffi::OsStr,
    process::Stdio,
    time::{Duration, Instant},
};

use pyleak_e2e::{
    KillOnDrop, Python, Report, Tracer, assert_between, children_of, demo_script, for_each_python,
    leak_bounds, marker_line, probed_offsets, pyleak, pyleak_command, run_report, script, script_const,
    script_leak_bounds,
};

const SCRIPT: &str = "run_leak.py";

/// `pyleak run --format json -o FILE REPORT_ARGS... -- python run_leak.py`.
fn run_leak(python: &Python, report_args: &[&str]) -> Report {
    run_report(python, &script(SCRIPT), &[], report_args)
}

fn leak_line() -> u32 {
    marker_line(&script(SCRIPT), "LEAK")
}

/// The whole leak of run_leak.py (it starts leaking at once), from its constants.
fn leak_bytes_bounds() -> (u64, u64) {
    let path = script(SCRIPT);
    script_leak_bounds(&path)
}

fn assert_top_is_leak(report: &Report) {
    let leak = leak_line();
    let top = report.top();
    assert!(top.is_at(SCRIPT, leak), "the top stack is not at {SCRIPT}:{leak}\n{report}");
    assert_eq!(top.frames[0].function, "leak", "frames[0].function\n{report}");
}

/// Exit 0; the top stack is the leak with all of its bytes (so tracing
/// started before the script's first allocation), the freed churn is not
/// in the top 3, and `command` names the script.
#[test]
fn run_reports_the_leak() {
    for_each_python(|python| {
        let report = run_leak(python, &[]);
        report.check_contract(python, None);
        assert_top_is_leak(&report);
        let (low, high) = leak_bytes_bounds();
        assert_between(report.top().outstanding_bytes, low, high, "leak bytes", &report);
        let churn = marker_line(&script(SCRIPT), "CHURN");
        let top_bytes = report.top().outstanding_bytes;
        for (rank, stack) in report.stacks().iter().enumerate().take(3) {
            assert!(
                !stack.is_at(SCRIPT, churn) || stack.outstanding_bytes * 20 <= top_bytes,
                "stack #{rank} at the CHURN line holds more than 5% of the leak\n{report}"
            );
        }
        assert!(report.json.command.contains(SCRIPT), "`command` does not name {SCRIPT}\n{report}");
    });
}

/// run_reexec.py: the program replaces itself (os.execv) with another Python program. The
/// report is the old program's, up to the exec, and says so; the new program's allocations
/// (read with the old one's addresses) are not mixed in. The child still runs to its end,
/// and pyleak exits 0. Before, the trace went on: the new program's blocks came out as
/// unknown code, the old one's freed image as outstanding.
#[test]
fn run_reports_the_program_before_an_exec() {
    for_each_python(|python| {
        let path = script("run_reexec.py");
        let report = run_report(python, &path, &[], &[]);
        assert!(
            report.stderr.contains("replaced its program (execve); tracing ends here"),
            "no word of the exec\n{report}"
        );
        assert!(report.stderr.contains("exited with status 0"), "{report}");
        let (low, high) = script_leak_bounds(&path);
        let old = marker_line(&path, "OLD");
        assert_between(report.bytes_at("run_reexec.py", old), low, high, "the old program's leak", &report);
        let new = marker_line(&path, "NEW");
        assert_eq!(report.bytes_at("run_reexec.py", new), 0, "the new program's allocations\n{report}");
    });
}

/// run_thread_outlives_main.py: the main thread returns at once, and a worker thread leaks
/// afterwards, while the interpreter waits for it in Py_FinalizeEx. The leak is in the
/// report: counting stops once the threads are joined and the atexit handlers have run
/// (`_PyThreadState_DeleteExcept`, 3.13+ `_PyThreadState_RemoveExcept`), not at the entry of
/// Py_FinalizeEx, which froze the numbers before the worker had allocated anything.
#[test]
fn run_counts_threads_that_outlive_the_main_thread() {
    for_each_python(|python| {
        let path = script("run_thread_outlives_main.py");
        let report = run_report(python, &path, &[], &[]);
        let leak = marker_line(&path, "LEAK");
        let (low, high) = script_leak_bounds(&path);
        assert_between(
            report.bytes_at("run_thread_outlives_main.py", leak),
            low,
            high,
            "the worker's leak",
            &report,
        );
    });
}
/// `--sample-bytes 4KiB`: the report says it holds estimates, the leak's line
/// still ranks first, and its estimated bytes and blocks fall within the
/// bounds sampling theory gives: the exact bounds widened by four standard
/// deviations of the estimator, sd^2 = n * s^2 (1 - p) / p with
/// p = 1 - exp(-s/R), for n blocks of s bytes (about 3.4% here). The churn,
/// ten times the leak and all freed, leaves next to nothing outstanding: every
/// sampled block's free is seen (the kernel's filter in front of the
/// outstanding map must never turn one away).
#[test]
fn run_sampled_estimates_fall_within_statistical_bounds() {
    const R: f64 = 4096.0;
    for_each_python(|python| {
        let report = run_leak(python, &["--sample-bytes", "4KiB", "--group-by", "line"]);
        report.check_contract(python, None);
        assert_eq!(report.json.sample_bytes, Some(4096), "a sampled report must say so\n{report}");
        assert!(
            report.json.python.notes.iter().any(|n| n.contains("estimates")),
            "a sampled report must note that its numbers are estimates\n{report}"
        );
        assert!(report.top().is_at(SCRIPT, leak_line()), "the leak's line should rank first\n{report}");
        let path = script(SCRIPT);
        let n = script_const(&path, "LEAK_COUNT") as f64;
        let s = script_const(&path, "LEAK_SIZE") as f64 + 33.0; // a bytes object's header
        let p = 1.0 - (-s / R).exp();
        let sd = (n * s * s * (1.0 - p) / p).sqrt() as u64;
        let (low, high) = leak_bytes_bounds();
        assert_between(
            report.top().outstanding_bytes,
            low.saturating_sub(4 * sd),
            high + 4 * sd,
            "estimated leak bytes",
            &report,
        );
        // Not zero: 3.8 keeps one frame per code object for reuse (the list comprehension's
        // is made at this line), and a sampled one stands for about R bytes.
        let churn = report.bytes_at(SCRIPT, marker_line(&path, "CHURN"));
        assert!(
            churn * 20 <= report.top().outstanding_bytes,
            "the CHURN line holds {churn} bytes, more than 5% of the leak: freed churn counted\n{report}"
        );
        let blocks_sd = (n * (1.0 - p) / p).sqrt();
        let blocks = report.top().outstanding_allocations as f64;
        assert!(
            (blocks - n).abs() < 4.0 * blocks_sd + n * 0.02,
            "estimated leak blocks {blocks}, expected {n} within 4 sd ({blocks_sd:.0})\n{report}"
        );
    });
}

/// `--group-by line --top 1`: exactly one stack, the leak's line, with all
/// of its bytes.
#[test]
fn run_group_by_line_top_1() {
    for_each_python(|python| {
        let report = run_leak(python, &["--group-by", "line", "--top", "1"]);
        report.check_contract(python, None);
        assert_eq!(report.stacks().len(), 1, "--top 1 should give exactly one stack\n{report}");
        assert!(report.top().is_at(SCRIPT, leak_line()), "the one stack is not the leak's line\n{report}");
        let (low, high) = leak_bytes_bounds();
        assert_between(report.top().outstanding_bytes, low, high, "leak bytes", &report);
    });
}

/// `--frames 1`: no stack has more than one frame, and the leak still tops.
#[test]
fn run_frames_limit() {
    for_each_python(|python| {
        let report = run_leak(python, &["--frames", "1"]);
        report.check_contract(python, None);
        for (rank, stack) in report.stacks().iter().enumerate() {
            assert!(
                stack.frames.len() <= 1,
                "stack #{rank} has {} frames with --frames 1\n{report}",
                stack.frames.len()
            );
        }
        assert_top_is_leak(&report);
    });
}

/// `--min-age 3600`: nothing in a run of a second has been outstanding for
/// an hour, so no stacks.
#[test]
fn run_min_age_filters_young_allocations() {
    for_each_python(|python| {
        let report = run_leak(python, &["--min-age", "3600"]);
        report.check_contract(python, None);
        assert!(report.stacks().is_empty(), "--min-age 3600 should leave no stacks\n{report}");
    });
}

/// `--exclude GLOB`: no frame in the report is in run_leak.py;
/// `--include GLOB`: every stack has a frame in run_leak.py (whether the
/// filters drop stacks or frames), and the leak tops.
#[test]
fn run_include_exclude() {
    const GLOB: &str = "**/run_leak.py";
    for_each_python(|python| {
        let report = run_leak(python, &["--exclude", GLOB]);
        report.check_contract(python, None);
        for (rank, stack) in report.stacks().iter().enumerate() {
            assert!(
                stack.frames.iter().all(|f| f.basename() != SCRIPT),
                "stack #{rank} has a frame in {SCRIPT} despite --exclude {GLOB}\n{report}"
            );
        }

        let report = run_leak(python, &["--include", GLOB]);
        report.check_contract(python, None);
        for (rank, stack) in report.stacks().iter().enumerate() {
            assert!(
                stack.frames.iter().any(|f| f.basename() == SCRIPT),
                "stack #{rank} has no frame in {SCRIPT} despite --include {GLOB}\n{report}"
            );
        }
        assert_top_is_leak(&report);
    });
}

/// Without --format and -o: exit 0 and a table on stdout that names the
/// script.
#[test]
fn run_table_format_to_stdout() {
    for_each_python(|python| {
        let path = script(SCRIPT);
        let finished =
            pyleak([OsStr::new("run"), OsStr::new("--"), python.path.as_os_str(), path.as_os_str()]);
        assert_eq!(finished.status.code(), Some(0), "{python}: want exit 0\n{finished}");
        assert!(finished.stdout.contains(SCRIPT), "{python}: the table does not name {SCRIPT}\n{finished}");
    });
}

/// The demo as `cargo xtask demo` runs it: the service is started, pyleak
/// attaches to it while it serves and traces for a few seconds. The top stack
/// is a page rendered in render_page, called from Service.handle at the line
/// marked `# the leak`.
#[test]
fn trace_demo_service_shows_the_leak() {
    for_each_python(|python| {
        let demo = demo_script();
        let leak = marker_line(&demo, "the leak");
        let service = KillOnDrop::spawn(
            python.path.to_str().expect("utf-8 path"),
            &[demo.to_str().expect("utf-8 path"), "--seconds", "30"],
        );
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let mut tracer = Tracer::start(service.pid(), &["--duration", "4"]);
        tracer.wait_attached();
        let report = tracer.finish(std::time::Duration::from_secs(120));
        report.check_contract(python, None);
        let top = report.top();
        assert_eq!(top.frames[0].function, "render_page", "frames[0] of the top stack\n{report}");
        let caller = top.frames.get(1);
        assert!(
            // co_qualname exists from 3.11 on; before, the qualname is the bare name.
            caller.is_some_and(|f| f.function == "handle"
                && (f.qualname == "Service.handle" || python.minor_number() < 11)
                && f.is_at("leaky_service.py", leak)),
            "frames[1] of the top stack should be Service.handle at leaky_service.py:{leak}\n{report}"
        );
    });
}

/// run_native_leak.py: blocks taken from libc malloc through ctypes (with the
/// GIL released) are charged to the Python line that called malloc, with the
/// expected bytes; the malloc/free churn of the same size is not outstanding;
/// and the native code that called malloc (libffi's call trampoline) is the
/// stack's extra leaf frame.
#[test]
fn run_native_leak_is_charged_to_its_python_line() {
    for_each_python(|python| {
        let path = script("run_native_leak.py");
        let line = marker_line(&path, "NATIVE");
        let churn = marker_line(&path, "NATIVE-CHURN");
        let expected = script_const(&path, "NATIVE_COUNT") * script_const(&path, "NATIVE_SIZE");
        let report = run_report(python, &path, &[], &[]);
        let bytes = report.bytes_at("run_native_leak.py", line);
        // ctypes' own small objects for each call come on top of the malloc'd blocks.
        assert_between(bytes, expected, expected + expected / 10, "bytes at the NATIVE line", &report);
        assert!(
            report.bytes_at("run_native_leak.py", churn) < expected / 100,
            "the malloc/free churn shows as outstanding\n{report}"
        );
        let top = report.expect_stack_at("run_native_leak.py", line);
        let native = top
            .native_caller
            .as_ref()
            .unwrap_or_else(|| panic!("the malloc'd blocks' stack has no native caller frame\n{report}"));
        assert!(
            native.library.contains("libffi"),
            "malloc's caller should be libffi's call trampoline, got {native:?}\n{report}"
        );
    });
}

/// Debian's /usr/bin/python3.11 (LTO+PGO, static, stripped): the report says
/// coverage is partial and why; the leak of 1 KB objects (above pymalloc's 512
/// bytes, so through libc malloc) is still found; with PYTHONMALLOC=malloc
/// every allocation is seen and small objects are found too. Skipped, loudly,
/// where that interpreter is absent.
#[test]
fn run_debian_lto_python() {
    let debian = std::path::Path::new("/usr/bin/python3.11");
    if !debian.exists() {
        eprintln!("pyleak-e2e: SKIPPED run_debian_lto_python: no /usr/bin/python3.11");
        return;
    }
    let path = script("run_leak.py");
    let leak = marker_line(&path, "LEAK");
    let finished = pyleak_json_run(debian, &path, &[]);
    let coverage = finished["python"]["coverage"].as_str().unwrap_or_default().to_string();
    let notes = finished["python"]["notes"].to_string();
    assert_eq!(coverage, "partial", "{finished:#}");
    assert!(notes.contains("inlined") && notes.contains("PYTHONMALLOC=malloc"), "{finished:#}");
    let top = &finished["stacks"][0]["frames"][0];
    assert_eq!(top["line"].as_u64(), Some(leak as u64), "the top stack is not the leak\n{finished:#}");

    // PYTHONMALLOC=malloc routes pymalloc's small objects through libc malloc: pyleak must
    // then see far more (small) blocks than the inlined allocator let it see.
    let all = pyleak_json_run(debian, &path, &[("PYTHONMALLOC", "malloc")]);
    let seen = |r: &serde_json::Value| r["totals"]["outstanding_allocations"].as_u64().unwrap_or(0);
    assert!(
        seen(&all) > 2 * seen(&finished),
        "PYTHONMALLOC=malloc did not widen coverage: {} vs {} blocks outstanding",
        seen(&all),
        seen(&finished)
    );
    let top = &all["stacks"][0]["frames"][0];
    assert_eq!(top["line"].as_u64(), Some(leak as u64), "the top stack is not the leak\n{all:#}");
}

/// Runs `pyleak run --format json` on `script` with an arbitrary interpreter
/// binary (not one of the pyenv matrix) and returns the parsed report.
fn pyleak_json_run(
    python: &std::path::Path,
    script: &std::path::Path,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let mut command = pyleak_e2e::pyleak_command();
    command.args(["run", "--format", "json", "-o"]).arg(&out).arg("--").arg(python).arg(script);
    for (k, v) in env {
        command.env(k, v);
    }
    let finished = pyleak_e2e::run_command(command, pyleak_e2e::RUN_TIMEOUT);
    assert_eq!(finished.status.code(), Some(0), "{finished}");
    serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("json")
}

/// A stripped libpython (no .symtab, as distributions ship it) of 3.12+ has no
/// `_Py_tss_tstate` symbol: pyleak must fall back to the PyGILState pthread key
/// and still find the leak. The test strips a copy of the pyenv library and
/// loads it with LD_LIBRARY_PATH (searched before the binary's RUNPATH).
#[test]
fn run_stripped_libpython() {
    let Some(strip) = pyleak_e2e::find_in_path("strip") else {
        panic!("strip (binutils) is needed for this test");
    };
    for_each_python(|python| {
        if python.minor_number() < 12 {
            return; // before 3.12 the thread state comes from the exported _PyRuntime
        }
        let prefix = python.path.parent().and_then(|p| p.parent()).expect("pyenv prefix");
        let name = format!("libpython{}.so.1.0", python.minor);
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new(&strip)
            .arg("--strip-all")
            .arg("-o")
            .arg(dir.path().join(&name))
            .arg(prefix.join("lib").join(&name))
            .status()
            .expect("running strip");
        assert!(status.success(), "strip failed");
        let path = script("run_leak.py");
        let leak = marker_line(&path, "LEAK");
        let lib_dir = dir.path().to_str().expect("utf-8").to_string();
        let report = pyleak_json_run(&python.path, &path, &[("LD_LIBRARY_PATH", &lib_dir)]);
        assert!(
            report["python"]["executable"].as_str().is_some_and(|e| e.starts_with(&lib_dir)),
            "the target did not load the stripped copy\n{report:#}"
        );
        let top = &report["stacks"][0]["frames"][0];
        assert_eq!(top["line"].as_u64(), Some(leak as u64), "the top stack is not the leak\n{report:#}");
    });
}

/// subinterp_leak.py (3.12+): a leak in a subinterpreter and one in the main
/// interpreter of the same process are each charged to their own line, with
/// their own bytes: nothing is lost or mis-attributed across interpreters.
#[test]
fn subinterpreter_leaks_are_told_apart() {
    for_each_python(|python| {
        if python.minor_number() < 12 {
            eprintln!("pyleak-e2e: {python}: no subinterpreter module before 3.12; case not run");
            return;
        }
        let path = script("subinterp_leak.py");
        let block = script_const(&path, "BLOCK");
        let sub_line = script_const(&path, "SUB_LINE") as u32;
        let main_line = marker_line(&path, "MAIN");
        let report = run_report(python, &path, &[], &["--group-by", "line"]);
        // Code run by the subinterpreter from a string is named `<string>`.
        let (low, high) = leak_bounds(script_const(&path, "SUB_COUNT"), block);
        let sub = report.bytes_at("<string>", sub_line);
        assert_between(sub, low, high, "bytes at the subinterpreter's SUB line", &report);
        let (low, high) = leak_bounds(script_const(&path, "MAIN_COUNT"), block);
        let main = report.bytes_at("subinterp_leak.py", main_line);
        assert_between(main, low, high, "bytes at the main interpreter's MAIN line", &report);
    });
}

/// `pyleak run` attaches before the dynamic linker has bound libpython's calls into the C
/// library, so it cannot know yet that CPython's raw allocator (`_PyMem_RawMalloc`, ...) only
/// calls the C library's functions, which are probed anyway: it probes them at first, then
/// removes those probes once each call is bound (each cost a single-stepped trap and a return
/// probe per call). So a moment into the run, `pyleak run` probes the same offsets of
/// libpython as a `pyleak trace` attached later to the same process, which finds the calls
/// bound and leaves the raw functions alone; and the same offsets of the C library.
#[test]
fn run_drops_raw_allocator_probes_once_bound() {
    for_each_python(|python| {
        let code = "import time\nkept = [bytes(2000) for _ in range(2000)]\ntime.sleep(15)\n";
        let mut command = pyleak_command();
        command.args(["run", "-o", "/dev/null", "--"]).arg(&python.path).args(["-c", code]);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let run = KillOnDrop(command.spawn().expect("starting pyleak run"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let child = loop {
            let kids = children_of(run.pid());
            if let Some(&pid) = kids.first()
                && !probed_offsets(run.pid(), "libpython").is_empty()
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "pyleak run did not attach within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut tracer = Tracer::start(child, &[]);
        tracer.wait_attached();
        // Both settle: the checks back off to once a second, and each removal takes a moment.
        std::thread::sleep(Duration::from_secs(3));
        for file in ["libpython", "libc.so"] {
            let by_run = probed_offsets(run.pid(), file);
            let by_trace = probed_offsets(tracer.pid(), file);
            assert!(!by_trace.is_empty(), "pyleak trace probes nothing in {file}");
            assert_eq!(
                by_run, by_trace,
                "{file}: what pyleak run probes (left) against pyleak trace attached later (right)"
            );
        }
        drop(tracer.stop());
    });
}
