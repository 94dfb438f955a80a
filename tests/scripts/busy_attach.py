"""busy_attach: the thread that leaks is in the middle of allocating as pyleak attaches.

While it waits for `go`, the main thread keeps allocating and freeing: small objects
(pymalloc), large ones (the raw allocator, i.e. libc malloc) and resizes (realloc), about a
million allocator calls a second, so pyleak's probes come live during its calls. Then the
same thread leaks LEAK_COUNT bytes objects of LEAK_SIZE payload bytes (line `# LEAK`).
Every allocation of that thread after the attach must be seen: a probe made live in the
wrong order would leave the thread's call record nested forever, and the leak unseen.

Protocol and ground-truth mode (PYLEAK_TEST_TRACEMALLOC=1): see scenario.py.
"""

import scenario

LEAK_COUNT = 2000
LEAK_SIZE = 996  # payload bytes per object; a multiple of 6 (the "%06d" unit)

LEAKED = []


def leak(i):
    LEAKED.append((b"%06d" % i) * (LEAK_SIZE // 6))  # LEAK


def work():
    for i in range(LEAK_COUNT):
        leak(i)


def busy():
    scratch = []
    for i in range(200):
        scratch.append([i, i + 1])
        scratch.append(b"%06d" % i * 200)
    grown = []
    for i in range(200):
        grown.append(i)
    return len(scratch) + len(grown)


if __name__ == "__main__":
    scenario.run(work, ["LEAK"], busy_wait=busy)
