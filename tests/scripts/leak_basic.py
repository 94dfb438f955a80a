"""leak_basic: one function leaks a known amount amid churn of the same size.

leak() keeps LEAK_COUNT bytes objects of LEAK_SIZE payload bytes in the
module-level list LEAKED (line `# LEAK`). churn() allocates CHURN_PER_LEAK
objects of the same size per leaked one (line `# CHURN`) and drops them all
before returning, so the allocator keeps handing freed addresses back to the
leak. When the work is over, nothing from churn() is outstanding. The test
also checks the leak's whole stack, innermost first: leak (`# LEAK`), work
(`# CALL-LEAK`), scenario.run (`# WORK` in scenario.py), <module> (`# MAIN`).

Every leaked object is a distinct allocation: `(b"%06d" % i) * k` builds a
new bytes object each time (a constant like b"x" * 996 would be folded into
one shared object by the compiler). LEAK_SIZE > 512, so the objects come from
PyObject_Malloc's large-object path (the raw allocator, i.e. libc malloc).

Protocol and ground-truth mode (PYLEAK_TEST_TRACEMALLOC=1): see scenario.py.
"""

import scenario

LEAK_COUNT = 2000
LEAK_SIZE = 996  # payload bytes per object; a multiple of 6 (the "%06d" unit)
CHURN_PER_LEAK = 20

LEAKED = []


def leak(i):
    LEAKED.append((b"%06d" % i) * (LEAK_SIZE // 6))  # LEAK


def churn(i):
    scratch = []
    for j in range(CHURN_PER_LEAK):
        scratch.append((b"%06d" % (i * CHURN_PER_LEAK + j)) * (LEAK_SIZE // 6))  # CHURN
    return len(scratch)


def work():
    for i in range(LEAK_COUNT):
        leak(i)  # CALL-LEAK
        churn(i)


if __name__ == "__main__":
    scenario.run(work, ["LEAK", "CHURN"])  # MAIN
