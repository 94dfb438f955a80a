// `pyleak trace --pid PID` on live CPython processes, once per interpreter of
// PYTHON_VERSIONS: leak accuracy against tracemalloc (bytes, block count and
// the exact Python stack), leaks made through realloc and calloc, frees of
// allocations made before pyleak attached, per-thread stacks, stacks through
// many calls from C into Python, attaching while the target allocates, a target
// that exits or execs during the trace, and --duration ending a trace by itself.
//
// Scenarios are tests/scripts/*.py (protocol in scenario.py); line numbers
// come from their marker comments, sizes from their constants.

use std::time::{Duration, Instant};

use pyleak_e2e::{
    Python, Stack, Target, Tracer, assert_between, assert_close, for_each_python, leak_bounds,
    live_allocs_capacities, marker_line, pythons, require_root, script, script_const, script_leak_bounds,
    serial, trace_scenario, trace_work, tracemalloc_truth,
};

/// leak_basic.py: the top stack is the leak, with tracemalloc's bytes and
/// block count (±10%), the whole stack innermost first, and the churn of
/// same-sized objects that are all freed does not show up.
#[test]
fn trace_leak_basic_stack_and_bytes() {
    for_each_python(|python| {
        let path = script("leak_basic.py");
        let leak = marker_line(&path, "LEAK");
        let churn = marker_line(&path, "CHURN");
        let expected_stack = [
            ("leak", "leak", "leak_basic.py", leak),
            ("work", "work", "leak_basic.py", marker_line(&path, "CALL-LEAK")),
            ("run", "run", "scenario.py", marker_line(&script("scenario.py"), "WORK")),
            ("<module>", "<module>", "leak_basic.py", marker_line(&path, "MAIN")),
        ];
        let truth = tracemalloc_truth(python, "leak_basic.py").marker("LEAK");

        let report = trace_scenario(python, "leak_basic.py", &[]);
        assert!(report.json.kernel_programs.is_none(), "program costs without --bpf-stats\n{report}");

        let top = report.top();
        assert!(top.is_at("leak_basic.py", leak), "the top stack is not at leak_basic.py:{leak}\n{report}");
        let frames: Vec<_> = top
            .frames
            .iter()
            .map(|f| (f.function.as_str(), f.qualname.as_str(), f.basename(), f.line))
            .collect();
        assert_eq!(frames, expected_stack, "the leak's stack, innermost first\n{report}");
        assert_close(top.outstanding_bytes, truth.bytes, 10, "outstanding bytes of the leak", &report);
        assert_close(
            top.outstanding_allocations,
            truth.blocks,
            10,
            "outstanding allocations of the leak",
            &report,
        );
        for (rank, stack) in report.stacks().iter().enumerate().take(3) {
            assert!(
                !stack.is_at("leak_basic.py", churn) || stack.outstanding_bytes * 20 <= top.outstanding_bytes,
                "stack #{rank} at the CHURN line (leak_basic.py:{churn}) holds {} bytes, more than 5% \
                 of the leak's {}: freed churn counted as outstanding\n{report}",
                stack.outstanding_bytes,
                top.outstanding_bytes
            );
        }
    });
}

/// busy_attach.py: pyleak attaches while the leaking thread is inside its allocator calls
/// (about a million a second); the leak that thread makes afterwards is all seen.
/// Regression: the entry programs went live before the return program, and a call between
/// the two left the thread's call record nested for good: nothing that thread allocated
/// afterwards was recorded, and nothing was counted as lost.
#[test]
fn trace_attach_to_a_busy_thread_sees_its_later_allocations() {
    for_each_python(|python| {
        let path = script("busy_attach.py");
        let leak = marker_line(&path, "LEAK");
        let count = script_const(&path, "LEAK_COUNT");
        let (low, high) = script_leak_bounds(&path);
        let report = trace_scenario(python, "busy_attach.py", &[]);
        let top = report.top();
        assert!(top.is_at("busy_attach.py", leak), "the top stack is not at busy_attach.py:{leak}\n{report}");
        assert_between(top.outstanding_bytes, low, high, "outstanding bytes of the leak", &report);
        // The leaked objects, and a few more made on the same line (the list's item array,
        // the interpreter's own small blocks): not a whole missed share of the leak.
        assert_between(top.outstanding_allocations, count, count + 10, "outstanding allocations", &report);
    });
}

/// through_c.py: a leak DEPTH + 1 calls from C into Python deep (`map`, then a class's
/// `__init__` at every level). Its whole stack, innermost first, every frame on either side
/// of every C call: on 3.12+ the walk steps over an entry shim on the C stack at each, more
/// of them than one copy of the C stack holds. Its bytes are the script's. A capture depth
/// of exactly its Python frames holds them all; one less cuts the outermost and says so.
#[test]
fn trace_stacks_through_c_calls() {
    for_each_python(|python| {
        let path = script("through_c.py");
        let line = |marker| marker_line(&path, marker);
        let mut expected =
            vec![("__init__", "through_c.py", line("LEAK")), ("make", "through_c.py", line("NEW"))];
        for _ in 0..script_const(&path, "DEPTH") {
            expected.push(("__init__", "through_c.py", line("RECURSE")));
            expected.push(("make", "through_c.py", line("NEW")));
        }
        expected.extend([
            ("<lambda>", "through_c.py", line("MAP")),
            ("work", "through_c.py", line("MAP")),
            ("run", "scenario.py", marker_line(&script("scenario.py"), "WORK")),
            ("<module>", "through_c.py", line("MAIN")),
        ]);
        let (low, high) = leak_bounds(script_const(&path, "COUNT"), script_const(&path, "BLOCK"));

        let report = trace_scenario(python, "through_c.py", &[]);

        let top = report.top();
        let frames = places(top);
        assert_eq!(frames, expected, "the leak's stack, innermost first\n{report}");
        assert_between(top.outstanding_bytes, low, high, "outstanding bytes of the leak", &report);

        // A capture depth of exactly those frames holds them all: the interpreter's own
        // frames between them (3.12+'s entry shims, 3.13+'s `_Py_InitCleanup` under each
        // `__init__`) cost none of it.
        let depth = expected.len().to_string();
        let report = trace_scenario(python, "through_c.py", &["--stack-depth", &depth]);
        let top = report.top();
        let frames = places(top);
        assert_eq!(frames, expected, "the leak's stack with --stack-depth {depth}\n{report}");
        assert!(!top.truncated, "cut at --stack-depth {depth}\n{report}");
        // One frame less is a cut, and says so.
        let depth = (expected.len() - 1).to_string();
        let report = trace_scenario(python, "through_c.py", &["--stack-depth", &depth]);
        let top = report.top();
        let frames = places(top);
        assert_eq!(
            frames,
            expected[..expected.len() - 1],
            "the leak's stack with --stack-depth {depth}\n{report}"
        );
        assert!(top.truncated, "not flagged as cut at --stack-depth {depth}\n{report}");
    });
}

/// A stack's frames as (function, file base name, line), innermost first.
fn places(stack: &Stack) -> Vec<(&str, &str, u32)> {
    stack.frames.iter().map(|f| (f.function.as_str(), f.basename(), f.line)).collect()
}

/// realloc_calloc.py: bytearrays grown with `+=` (PyObject_Realloc, large
/// and pymalloc-sized) and `bytes(n)` (PyObject_Calloc) are reported at
/// their lines with the bytes the script's constants give (+10% and 4 KiB at
/// most), one outstanding block per kept object (a realloc replaces its
/// block, it does not add one).
#[test]
fn trace_realloc_and_calloc() {
    for_each_python(|python| {
        let path = script("realloc_calloc.py");
        let c = |name| script_const(&path, name);
        let cases = [
            ("REALLOC", "grow_large", c("REALLOC_BUFFERS"), c("REALLOC_STEPS") * c("REALLOC_CHUNK")),
            ("REALLOC-SMALL", "grow_small", c("SMALL_BUFFERS"), c("SMALL_STEPS") * c("SMALL_CHUNK")),
            ("CALLOC", "zeroed", c("CALLOC_OBJECTS"), c("CALLOC_SIZE")),
        ];

        let report = trace_scenario(python, "realloc_calloc.py", &[]);

        for (marker, function, count, size) in cases {
            let line = marker_line(&path, marker);
            let stack = report.expect_stack_at("realloc_calloc.py", line);
            assert_eq!(stack.frames[0].function, function, "{marker}: frames[0].function\n{report}");
            let expected = count * size;
            let bytes = report.bytes_at("realloc_calloc.py", line);
            assert_between(bytes, expected, expected * 11 / 10 + 4096, &format!("{marker} bytes"), &report);
            let blocks: u64 = report
                .stacks_at("realloc_calloc.py", line)
                .iter()
                .map(|(_, s)| s.outstanding_allocations)
                .sum();
            // +2: the list that keeps the objects may grow on the same line.
            assert_between(blocks, count, count + 2, &format!("{marker} outstanding allocations"), &report);
        }
    });
}

/// preexisting.py: 200k objects allocated before pyleak attached and freed
/// during the trace leave no trace (no stack at their line, no wrapped or
/// negative totals), and the small leak made after them is reported.
#[test]
fn trace_ignores_preexisting_allocations() {
    for_each_python(|python| {
        let path = script("preexisting.py");
        let before = marker_line(&path, "BEFORE");
        let after = marker_line(&path, "AFTER");
        let (low, high) = leak_bounds(script_const(&path, "AFTER_COUNT"), script_const(&path, "AFTER_SIZE"));

        let report = trace_scenario(python, "preexisting.py", &[]);

        assert!(
            report.stacks_at("preexisting.py", before).is_empty(),
            "a stack at the BEFORE line (preexisting.py:{before}), allocated before the trace\n{report}"
        );
        report.expect_stack_at("preexisting.py", after);
        assert_between(report.bytes_at("preexisting.py", after), low, high, "AFTER bytes", &report);
        // check_contract (in trace_scenario) already bounds every total below 2^62.
        assert!(
            report.json.totals.outstanding_bytes >= low,
            "totals.outstanding_bytes is below the AFTER leak ({low})\n{report}"
        );
    });
}

/// threads.py: two threads leaking concurrently each get their own stack
/// (LEAK-A under leak_a and Thread.run, never leak_b; and vice versa) with
/// tracemalloc's bytes (±10%).
#[test]
fn trace_threads_have_their_own_stacks() {
    for_each_python(|python| {
        let path = script("threads.py");
        let truth = tracemalloc_truth(python, "threads.py");

        let report = trace_scenario(python, "threads.py", &[]);

        for (marker, own, other) in [("LEAK-A", "leak_a", "leak_b"), ("LEAK-B", "leak_b", "leak_a")] {
            let line = marker_line(&path, marker);
            let stack = report.expect_stack_at("threads.py", line);
            assert_eq!(stack.frames[0].function, own, "{marker}: frames[0].function\n{report}");
            assert!(!stack.has_function(other), "the {marker} stack goes through {other}\n{report}");
            let caller = stack.frames.get(1);
            assert!(
                // co_qualname exists from 3.11 on; before, the qualname is the bare name.
                caller.is_some_and(|f| f.function == "run"
                    && (f.qualname == "Thread.run" || python.minor_number() < 11)
                    && f.basename() == "threading.py"),
                "{marker}: frames[1] should be Thread.run in threading.py\n{report}"
            );
            assert_close(
                stack.outstanding_bytes,
                truth.marker(marker).bytes,
                10,
                &format!("{marker} bytes"),
                &report,
            );
        }
        for (rank, stack) in report.stacks().iter().enumerate() {
            assert!(
                !(stack.has_function("leak_a") && stack.has_function("leak_b")),
                "stack #{rank} mixes both threads' functions\n{report}"
            );
        }
    });
}

/// exits_midway.py: the target exits by itself during the trace; pyleak
/// still exits 0, says `exited during the trace` on stderr, and reports the
/// leak made before the exit.
#[test]
fn trace_target_exits_midway() {
    for_each_python(|python| {
        let path = script("exits_midway.py");
        let leak = marker_line(&path, "LEAK");
        let (low, high) = script_leak_bounds(&path);

        let mut target = Target::ready(python, "exits_midway.py");
        let pid = target.pid();
        let tracer = trace_work(&mut target, &[]);
        let status = target.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "exits_midway.py failed: {status}\n{}", target.output());
        let mut report = tracer.stop_after_target_exit(Duration::from_secs(15));
        report.context = format!("{python}, exits_midway.py: {}", report.context);

        assert!(
            report.stderr.contains("exited during the trace"),
            "no `exited during the trace` on stderr\n{report}"
        );
        report.check_contract(python, Some(pid));
        report.expect_stack_at("exits_midway.py", leak);
        assert_between(report.bytes_at("exits_midway.py", leak), low, high, "leak bytes", &report);
    });
}

/// reexec.py: the target replaces its program (os.execv) during the trace. Its pid stays,
/// but what pyleak attached to (probes, addresses, blocks) was the old program: the trace
/// ends by itself, exit 0, saying so, as at an exit. Before, it went on tracing the new
/// program with the old one's addresses.
#[test]
fn trace_ends_when_the_target_execs() {
    let python = &pythons()[0];
    let mut target = Target::ready(python, "reexec.py");
    let mut tracer = Tracer::start(target.pid(), &[]);
    tracer.wait_attached();
    target.send("exec");
    let report = tracer.finish(Duration::from_secs(20));
    assert!(
        report
            .stderr
            .contains(&format!("pid {} replaced its program (execve) during the trace", target.pid())),
        "no word of the exec on stderr\n{report}"
    );
    assert!(report.json.python.notes.iter().any(|n| n.contains("replaced its program")), "no note\n{report}");
    // The old program only waited on stdin, then exec'd. The new one maps the same libpython,
    // so the probes fire in its start-up (about 500 KB allocated, 4,300 blocks kept, charged
    // to the old program, before the kernel side stopped counting at the exec).
    let totals = &report.json.totals;
    assert!(
        totals.allocated_bytes < 64 * 1024 && totals.outstanding_allocations < 100,
        "the new program's start-up is in the report: {totals:?}\n{report}"
    );
    target.send("go");
    target.wait_for_line("ready again");
}

/// `--duration 5` ends the trace by itself (no SIGINT) after about 5 s,
/// exit 0, and the leak made meanwhile is in the report.
#[test]
fn trace_duration_ends_trace() {
    for_each_python(|python| {
        let leak = marker_line(&script("leak_basic.py"), "LEAK");

        let mut target = Target::ready(python, "leak_basic.py");
        let started = Instant::now();
        let mut report = trace_work(&mut target, &["--duration", "5"]).finish(Duration::from_secs(60));
        let elapsed = started.elapsed();
        report.context = format!("{python}, leak_basic.py: {}", report.context);

        report.check_contract(python, Some(target.pid()));
        assert!(
            elapsed >= Duration::from_millis(4900),
            "pyleak ended after {elapsed:?}, before --duration 5\n{report}"
        );
        let duration = report.json.duration_s;
        assert!((4.5..=30.0).contains(&duration), "duration_s is {duration}, want about 5\n{report}");
        report.expect_stack_at("leak_basic.py", leak);
    });
}

/// `--bpf-stats` reports what each kernel program cost, from the kernel's own accounting:
/// leak_basic.py makes LEAK_COUNT * (1 + CHURN_PER_LEAK) allocations of about 1 KB and frees
/// the churn, so the return program ran at least once per allocation and the free program
/// once per freed block; the times are nanoseconds (more than 10 and under a millisecond
/// per run, which a unit mistake or an unset statistic would not be), and only pyleak's own
/// programs of this trace are listed (the benchmark's empty ones are not attached).
#[test]
fn trace_bpf_stats_account_each_program() {
    for_each_python(|python| {
        let path = script("leak_basic.py");
        let leaked = script_const(&path, "LEAK_COUNT");
        let churned = leaked * script_const(&path, "CHURN_PER_LEAK");
        let report = trace_scenario(python, "leak_basic.py", &["--bpf-stats"]);
        let programs = report.json.kernel_programs.as_ref().unwrap_or_else(|| panic!("no costs\n{report}"));
        let known = [
            "malloc_enter",
            "calloc_enter",
            "realloc_enter",
            "posix_memalign_enter",
            "aligned_alloc_enter",
            "alloc_exit",
            "free_enter",
            "finalize_enter",
        ];
        for p in programs {
            assert!(known.contains(&p.program.as_str()), "unexpected program {}\n{report}", p.program);
            let ns = p.run_time_ns as f64 / p.runs as f64;
            assert!(p.runs > 0 && (10.0..1e6).contains(&ns), "{}: {ns} ns per run\n{report}", p.program);
        }
        let runs = |name: &str| programs.iter().find(|p| p.program == name).map_or(0, |p| p.runs);
        assert!(
            runs("alloc_exit") >= leaked + churned,
            "alloc_exit ran {} times\n{report}",
            runs("alloc_exit")
        );
        assert!(runs("free_enter") >= churned, "free_enter ran {} times\n{report}", runs("free_enter"));
        assert!(
            report.json.kernel_programs.iter().flatten().is_sorted_by(|a, b| a.run_time_ns >= b.run_time_ns),
            "not sorted by run time\n{report}"
        );
        assert!(report.top().is_at("leak_basic.py", marker_line(&path, "LEAK")), "{report}");
    });
}

/// A full kernel map must cost counted, reported allocations, never a crash
/// or a silently wrong total: with room for only 200 outstanding blocks,
/// leak_basic.py (2,000 leaked blocks) loses allocations, the report says
/// how many (totals.lost_events and a note naming the full map, its size and
/// the option to raise), and what it does report stays consistent (no more
/// than 200 blocks outstanding).
#[test]
fn trace_full_map_counts_lost_events() {
    for_each_python(|python| {
        let mut target = Target::ready(python, "leak_basic.py");
        let report = trace_work(&mut target, &["--max-allocations", "200"]).stop();
        let t = &report.json.totals;
        assert!(t.lost_events > 1000, "expected lost events with a 200-entry map\n{report}");
        assert!(t.outstanding_allocations <= 200, "more blocks outstanding than the map holds\n{report}");
        assert!(
            report.json.python.notes.iter().any(|n| n.contains(
                "not recorded because the outstanding-allocation map was full (200 entries: raise --max-allocations"
            )),
            "the report does not say which map was full, how large it was, and what to raise\n{report}"
        );
    });
}

/// A target in its own mount namespace, where the path of its libpython names
/// a different file than on the host (a container's view): `unshare -m` runs
/// the interpreter with a copy of its libpython bind-mounted over the original
/// path. pyleak must read and probe the file the target really mapped (through
/// /proc/PID/root), and find the leaking line.
#[test]
fn trace_target_in_private_mount_namespace() {
    let Some(unshare) = pyleak_e2e::find_in_path("unshare") else {
        panic!("unshare (util-linux) is needed for this test");
    };
    for_each_python(|python| {
        let prefix = python.path.parent().and_then(|p| p.parent()).expect("pyenv prefix");
        let lib = prefix.join(format!("lib/libpython{}.so.1.0", python.minor));
        assert!(lib.exists(), "{} has no shared libpython at {}", python.minor, lib.display());
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("libpython-copy.so");
        std::fs::copy(&lib, &copy).expect("copying libpython");
        let host_inode = std::fs::metadata(&lib).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
        let path = script("slow_leak.py");
        let shell = format!(
            "mount --bind '{}' '{}' && exec '{}' '{}'",
            copy.display(),
            lib.display(),
            python.path.display(),
            path.display()
        );
        let child = std::process::Command::new(&unshare)
            .args(["-m", "--propagation", "private", "sh", "-c", &shell])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting unshare");
        let target = pyleak_e2e::KillOnDrop(child);
        std::thread::sleep(Duration::from_millis(1500));
        // The exec'd interpreter keeps unshare's pid.
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", target.pid())).expect("maps");
        assert!(
            maps.contains(&lib.display().to_string()),
            "the target did not map {}:\n{maps}",
            lib.display()
        );
        let mapped_inode: u64 = maps
            .lines()
            .find(|l| l.ends_with(&lib.display().to_string()))
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|i| i.parse().ok())
            .expect("inode in maps");
        assert_ne!(mapped_inode, host_inode, "the bind mount did not take effect");

        let mut tracer = Tracer::start(target.pid(), &["--duration", "3"]);
        tracer.wait_attached();
        let report = tracer.finish(Duration::from_secs(60));
        let leak = marker_line(&path, "LEAK");
        assert!(
            report.top().is_at("slow_leak.py", leak),
            "the top stack is not slow_leak.py:{leak}\n{report}"
        );
    });
}

/// reused_code.py: code objects freed and their addresses reused. Every round's blocks stay
/// on that round's own line. The kernel remembers code objects' first lines by address (the
/// code cache); a free must make it forget, or a round would be charged to an earlier
/// round's line at the same address. The script fails if no address was reused.
#[test]
fn trace_reused_code_addresses_keep_their_own_lines() {
    // Round r's source starts with r blank lines; its leak is line 3 of round 0.
    for_each_python(|python| {
        assert_each_round_at(python, "reused_code.py", |round| {
            ("reused_code_gen.py".into(), 3 + round as u32)
        })
    });
}

/// Traces a scenario of ROUNDS rounds, each keeping COUNT blocks of BLOCK bytes, grouped by
/// line; asserts each round's bytes at its own place, `at(round)` (file basename, line).
fn assert_each_round_at(python: &Python, script_name: &str, at: impl Fn(u64) -> (String, u32)) {
    let path = script(script_name);
    let (low, high) = leak_bounds(script_const(&path, "COUNT"), script_const(&path, "BLOCK"));
    let report = trace_scenario(python, script_name, &["--group-by", "line", "--top", "100"]);
    for round in 0..script_const(&path, "ROUNDS") {
        let (file, line) = at(round);
        let what = format!("bytes at round {round}'s {file}:{line}");
        assert_between(report.bytes_at(&file, line), low, high, &what, &report);
    }
}

/// reused_module_code.py: code objects freed and their addresses reused by code objects that
/// start on the same line and run the same bytecode, in other files (module bodies all start
/// on line 1). Every round's blocks stay in that round's own file: a code object is told
/// from an earlier one at its address by what it points to (file name, line table), in the
/// kernel's stack id as in the user side's cache of names. The script fails if no address
/// was reused.
#[test]
fn trace_reused_code_addresses_keep_their_own_files() {
    for_each_python(|python| {
        assert_each_round_at(python, "reused_module_code.py", |round| (format!("reused_gen_{round}.py"), 3))
    });
}

/// A process started before a package upgrade maps files that are gone: its C library and
/// libpython show as `PATH (deleted)` in its maps. It is traced all the same, through the
/// mappings themselves (`/proc/PID/map_files`): the leak is found, native allocations
/// included. Here the upgrade is a copy of both libraries, loaded through LD_LIBRARY_PATH
/// and deleted once the process runs. Before, the attach failed (`opening the C library`).
#[test]
fn trace_a_process_whose_libraries_were_deleted() {
    let mut traced = 0;
    for_each_python(|python| {
        let prefix = python.path.parent().and_then(|bin| bin.parent()).unwrap();
        let libpython = prefix.join(format!("lib/libpython{}.so.1.0", python.minor));
        if !libpython.is_file() {
            eprintln!("pyleak-e2e: {python} has no shared libpython; skipped");
            return;
        }
        let libc = std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let dir = tempfile::tempdir().unwrap();
        for lib in [&libpython, &libc.to_path_buf()] {
            std::fs::copy(lib, dir.path().join(lib.file_name().unwrap())).unwrap();
        }
        let ld_path = dir.path().to_str().unwrap();
        let mut target = Target::spawn(python, "leak_basic.py", &[("LD_LIBRARY_PATH", ld_path)]);
        target.wait_for_line("ready");
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", target.pid())).unwrap();
        assert!(maps.contains(ld_path), "{python} did not load the copies:\n{maps}");
        drop(dir); // the upgrade: the mapped files are unlinked
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", target.pid())).unwrap();
        assert!(maps.contains("libc.so.6 (deleted)"), "{maps}");

        let report = trace_work(&mut target, &[]).stop();
        let leak = marker_line(&script("leak_basic.py"), "LEAK");
        let (low, high) = script_leak_bounds(&script("leak_basic.py"));
        assert_between(report.bytes_at("leak_basic.py", leak), low, high, "leak bytes", &report);
        assert!(
            report
                .json
                .python
                .notes
                .iter()
                .any(|n| n.contains("native allocations") && n.contains("(deleted)")),
            "the deleted C library is not probed\n{report}"
        );
        traced += 1;
    });
    assert!(traced > 0, "no interpreter with a shared libpython to test with");
}

/// many_stacks.py: thousands of distinct stacks over the trace, each used once, with room
/// for 4096 at a time (--max-stacks). pyleak reclaims the idle ones as it goes (and says
/// so), so the map never fills: nothing is lost, the leak made at the end is found whole,
/// and the reclaimed stacks' allocations stay in the totals. Before, the map filled and
/// every stack after that, the leak's included, was lost. The reclaiming does not depend on
/// the interpreter: one is enough.
#[test]
fn trace_reclaims_idle_stacks_when_the_map_fills() {
    let python = pythons().pop().expect("pythons() is never empty");
    let path = script("many_stacks.py");
    let leak = marker_line(&path, "LEAK");
    let (low, high) = script_leak_bounds(&path);
    let report = trace_scenario(&python, "many_stacks.py", &["--max-stacks", "4096", "--top", "20"]);
    assert!(
        report.json.python.notes.iter().any(|n| n.contains("were reclaimed to make room")),
        "no stack was reclaimed: the test made too few\n{report}"
    );
    assert_between(report.bytes_at("many_stacks.py", leak), low, high, "leak bytes", &report);
    // Every round allocated CHURN bytearrays of 100+ bytes, all freed; their stacks were
    // reclaimed, their bytes are still in the totals.
    let churn = script_const(&path, "ROUNDS") * script_const(&path, "CHURN") * 100;
    assert!(report.json.totals.allocated_bytes >= churn, "allocated bytes forget reclaimed stacks\n{report}");
}

/// The outstanding-allocation map is sized for the mode, as the kernel holds it: exact mode
/// keeps the default (1,048,576 entries, 112 MiB reserved at attach); sampled mode at
/// 512 KiB takes room for 64 GiB outstanding (131,072 entries, 14 MiB), since it records a
/// block of s bytes with probability at most s/R; `--max-allocations` wins over both. The
/// sizing does not depend on the interpreter: one is enough.
#[test]
fn trace_sizes_the_outstanding_map_for_the_mode() {
    let _serial = serial();
    require_root();
    let python = pythons().pop().expect("pythons() is never empty");
    let target = Target::ready(&python, "leak_basic.py");
    for (args, expected) in [
        (&[][..], 1_048_576),
        (&["--sample-bytes", "512KiB"][..], 131_072),
        (&["--sample-bytes", "512KiB", "--max-allocations", "5000"][..], 5000),
        (&["--max-allocations", "3000000"][..], 3_000_000),
    ] {
        let mut tracer = Tracer::start(target.pid(), args);
        tracer.wait_attached();
        let held = live_allocs_capacities(tracer.pid());
        drop(tracer.stop());
        assert_eq!(
            held,
            [expected],
            "{python}, pyleak trace {args:?}: capacity of the outstanding-allocation map"
        );
    }
}
