"""Runs one program for `cargo xtask bench`, and times the program alone.

Usage: python wrapper.py PROGRAM [ARG ...]

The harness talks to this wrapper over stdout lines that start with `@@bench ` and over stdin:

  1. compile PROGRAM and import pyperf (neither is timed), print `@@bench ready`;
  2. wait for one line on stdin: the harness attaches its tracer first;
  3. run PROGRAM as __main__, with sys.argv = [PROGRAM, ARG, ...];
  4. if PROGRAM defines bench_truth(), print `@@bench truth JSON` with what it returns;
  5. print `@@bench done SECONDS`: the wall time (time.perf_counter) of step 3 alone, so
     interpreter start-up, attaching, detaching and step 4 are not counted;
  6. wait for EOF on stdin, then exit: the program's memory stays allocated while the harness
     reads the tracer's state and ends the trace.

Under tracemalloc (-X tracemalloc=N) and memray (python -m memray run ... wrapper.py) the
same protocol holds; those tools run inside this process.
"""

import json
import os
import sys
import time

try:
    import pyperf  # noqa: F401  (the pyperformance programs import it; keep that out of the timing)
except ImportError:
    pass


def say(*words):
    sys.stdout.write("@@bench " + " ".join(words) + "\n")
    sys.stdout.flush()


def main():
    path = os.path.abspath(sys.argv[1])
    with open(path, encoding="utf-8") as source:
        code = compile(source.read(), path, "exec")
    sys.argv = [path, *sys.argv[2:]]
    sys.path.insert(0, os.path.dirname(path))  # as `python PROGRAM` would
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    say("ready")
    sys.stdin.readline()
    start = time.perf_counter()
    exec(code, namespace)
    seconds = time.perf_counter() - start
    truth = namespace.get("bench_truth")
    if truth is not None:
        say("truth", json.dumps(truth(), sort_keys=True))
    say("done", f"{seconds:.6f}")
    sys.stdin.read()


if __name__ == "__main__":
    main()
