"""preexisting: frees of allocations made before pyleak attached.

Before `ready`, the module builds OLD: BEFORE_COUNT bytes objects (line
`# BEFORE`), mostly 96-byte payloads (pymalloc) and every 100th one 1200
bytes (libc malloc). The test attaches pyleak after `ready`, so it never sees
these allocations. After `go`, work() frees them all, then keeps AFTER_COUNT
new objects of AFTER_SIZE payload bytes (line `# AFTER`), small enough for
pymalloc, so they likely reuse the addresses just freed.

pyleak must ignore frees of blocks it never saw (no negative or wrapped
counts) and must report the AFTER line with its bytes.
Protocol: see scenario.py.
"""

import scenario

BEFORE_COUNT = 200000
AFTER_COUNT = 1000
AFTER_SIZE = 180  # payload bytes per object; a multiple of 6

OLD = [(b"%06d" % i) * (200 if i % 100 == 0 else 16) for i in range(BEFORE_COUNT)]  # BEFORE
KEPT = []


def work():
    global OLD
    del OLD  # the last reference: the list and all its objects are freed
    for i in range(AFTER_COUNT):
        KEPT.append((b"%06d" % i) * (AFTER_SIZE // 6))  # AFTER


if __name__ == "__main__":
    scenario.run(work, ["AFTER", "BEFORE"])  # MAIN
