"""Protocol shared by the pyleak end-to-end scenarios (stdlib only).

The Rust harness (tests/src/lib.rs) drives every scenario the same way:

  1. the scenario does its setup, then prints `ready`;
  2. it waits for the line `go` on stdin (the test attaches pyleak first);
  3. it does its work -- the allocations the test checks -- and prints `done`;
  4. it blocks reading stdin until EOF, so the process stays alive, its leaks
     still outstanding, until the test has ended the trace.

Lines that allocate on purpose end with a marker comment (`# LEAK`,
`# CHURN`, ...). The tests look markers up in the source instead of
hard-coding line numbers; a marker must end exactly one line of code.

Ground truth: with PYLEAK_TEST_TRACEMALLOC=1 the work runs under
tracemalloc.start(1), and after `done` the scenario prints one JSON line:

  {"markers": {"LEAK": {"line": 31, "bytes": 2071000, "blocks": 2001}, ...},
   "tracemalloc_leak_bytes": 2071000, "line": 31}

`bytes`/`blocks` are what tracemalloc still counts as allocated at that line
when the work is over -- what pyleak's frames[0] == that line should report.
The two top-level keys repeat the first marker's figures.
"""

import json
import os
import select
import sys
import tracemalloc


def marker_line(path, marker):
    """Line number of the one line of code ending with `# <marker>`."""
    suffix = "# " + marker
    found = []
    with open(path, encoding="utf-8") as source:
        for number, text in enumerate(source, start=1):
            text = text.rstrip()
            if text.endswith(suffix) and not text.lstrip().startswith("#"):
                found.append(number)
    if len(found) != 1:
        raise SystemExit(f"{path}: marker {suffix!r} ends {len(found)} lines, want 1")
    return found[0]


def _ground_truth(snapshot, path, markers):
    lines = {marker: marker_line(path, marker) for marker in markers}
    by_line = {}
    for stat in snapshot.statistics("lineno"):
        frame = stat.traceback[0]
        if os.path.abspath(frame.filename) == path:
            by_line[frame.lineno] = stat
    result = {"markers": {}}
    for marker, line in lines.items():
        stat = by_line.get(line)
        result["markers"][marker] = {
            "line": line,
            "bytes": stat.size if stat else 0,
            "blocks": stat.count if stat else 0,
        }
    first = result["markers"][markers[0]]
    result["tracemalloc_leak_bytes"] = first["bytes"]
    result["line"] = first["line"]
    return result


def run(work, markers, after_done=None, busy_wait=None):
    """Run `work()` under the protocol above.

    `markers` lists the marker comments whose ground truth is reported in
    tracemalloc mode (the first one is the main leak). `after_done`, if
    given, is called after `done` instead of waiting for EOF on stdin.
    `busy_wait`, if given, is called over and over while waiting for `go`
    (instead of blocking), so the test attaches in the middle of its calls.
    """
    path = os.path.abspath(sys.modules["__main__"].__file__)
    for marker in markers:  # fail early on a broken marker, in both modes
        marker_line(path, marker)
    ground_truth = os.environ.get("PYLEAK_TEST_TRACEMALLOC") == "1"

    print("ready", flush=True)
    if busy_wait is not None:
        while not select.select([sys.stdin], [], [], 0)[0]:
            busy_wait()
    command = sys.stdin.readline().strip()
    if command != "go":
        raise SystemExit(f"expected 'go' on stdin, got {command!r}")

    if ground_truth:
        tracemalloc.start(1)
    work()  # WORK
    if ground_truth:
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()

    print("done", flush=True)
    if ground_truth:
        print(json.dumps(_ground_truth(snapshot, path, markers)), flush=True)

    if after_done is not None:
        after_done()
    sys.stdin.read()  # stay alive until the test closes stdin (or kills us)
