"""reexec: a process that replaces its program with another Python program (os.execv).

Run without arguments, it keeps OLD_COUNT objects (line `# OLD`), prints `ready` and waits
for the line `exec` on stdin; then it execs the same interpreter on this file with the
argument `again`. The new program keeps NEW_COUNT objects of NEW_SIZE bytes (line `# NEW`),
prints `ready again`, and exits when its stdin is closed. Same pid, same start time, a new
program: the daemon must trace the new one, not the old one's leftovers.
"""

import os
import sys

OLD_COUNT = 300
NEW_COUNT = 400
NEW_SIZE = 20000

if len(sys.argv) < 2:
    KEPT = [bytes(10000) for _ in range(OLD_COUNT)]  # OLD
    print("ready", flush=True)
    if sys.stdin.readline().strip() == "exec":
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), "again"])
    sys.exit(1)

sys.stdin.readline()  # `go`: the daemon has attached to the new program
KEPT = [bytes(NEW_SIZE) for _ in range(NEW_COUNT)]  # NEW
print("ready again", flush=True)
sys.stdin.read()
