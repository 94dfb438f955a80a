"""realloc_calloc: leaks made through PyObject_Realloc and PyObject_Calloc.

`# REALLOC`: REALLOC_BUFFERS bytearrays, kept in GROWN, each grown from empty
by REALLOC_STEPS appends of REALLOC_CHUNK bytes with `+=`. A bytearray's
buffer is made and grown by PyObject_Realloc (the first call with NULL).
Fewer than 8 equal steps keep every resize exact (CPython over-allocates by
1/8 only when the new size is within 1/8 of the old allocation), so each
buffer ends at REALLOC_STEPS * REALLOC_CHUNK + 1 bytes. The chunk is large,
so these reallocs go to the raw allocator (libc realloc).

`# REALLOC-SMALL`: the same with small buffers (< 512 bytes), which pymalloc
reallocates itself (usually by moving to a block of a larger size class).

`# CALLOC`: CALLOC_OBJECTS `bytes(CALLOC_SIZE)` objects, kept in ZEROED;
bytes(n) allocates with PyObject_Calloc (CALLOC_SIZE + 33 bytes each).

The bytearray objects themselves and the lists' item arrays are allocated on
other lines. Protocol: see scenario.py.
"""

import scenario

REALLOC_BUFFERS = 64
REALLOC_CHUNK = 8192
REALLOC_STEPS = 7
SMALL_BUFFERS = 512
SMALL_CHUNK = 48
SMALL_STEPS = 7
CALLOC_OBJECTS = 48
CALLOC_SIZE = 65536

CHUNK = b"r" * REALLOC_CHUNK
SMALL = b"s" * SMALL_CHUNK
GROWN = []
ZEROED = []


def grow_large():
    for _ in range(REALLOC_BUFFERS):
        buf = bytearray()
        GROWN.append(buf)
        for _ in range(REALLOC_STEPS):
            buf += CHUNK  # REALLOC


def grow_small():
    for _ in range(SMALL_BUFFERS):
        buf = bytearray()
        GROWN.append(buf)
        for _ in range(SMALL_STEPS):
            buf += SMALL  # REALLOC-SMALL


def zeroed():
    for _ in range(CALLOC_OBJECTS):
        ZEROED.append(bytes(CALLOC_SIZE))  # CALLOC


def work():
    grow_large()
    grow_small()
    zeroed()


if __name__ == "__main__":
    scenario.run(work, ["REALLOC", "REALLOC-SMALL", "CALLOC"])  # MAIN
