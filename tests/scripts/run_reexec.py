"""run_reexec: a program for `pyleak run` that replaces itself with another Python program.

Run without arguments, it keeps LEAK_COUNT objects of LEAK_SIZE payload bytes (line
`# OLD`), pauses 2 s (so pyleak names the stack while the program lives: a debug build of
pyleak can take that long to catch up with the start-up imports), and execs the same
interpreter on this file with the argument `again`. The new program keeps as much again
(line `# NEW`) and exits. The new program is not the one pyleak attached to (its addresses,
its probes, its blocks are the old one's): `pyleak run` reports the old program, up to the
exec, and says so; it must not mix in the new one's allocations.
"""

import os
import sys
import time

LEAK_COUNT = 2000
LEAK_SIZE = 996  # payload bytes per object; a multiple of 6

KEPT = []

if len(sys.argv) < 2:
    for i in range(LEAK_COUNT):
        KEPT.append((b"%06d" % i) * (LEAK_SIZE // 6))  # OLD
    time.sleep(2)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), "again"])

for i in range(LEAK_COUNT):
    KEPT.append((b"%06d" % i) * (LEAK_SIZE // 6))  # NEW
