"""Keeps 1,000,000 small objects alive: pyleak's own memory with a million allocations tracked.

Each object is a 7-digit bytes object (40 bytes, one PyObject_Malloc), stored in KEPT, which
is allocated before the work starts. bench_truth() counts them for `cargo xtask bench`.
"""

import sys

COUNT = 1_000_000

KEPT = [None] * COUNT


def main():
    for i in range(COUNT):
        KEPT[i] = b"%07d" % i  # KEEP


def bench_truth():
    return {"blocks": len(KEPT), "bytes": sum(map(sys.getsizeof, KEPT))}


if __name__ == "__main__":
    main()
