"""through_c: a leak whose Python stack passes through C calls many times over.

work() maps make() over a range (map's C code calls make: Python entered from C); each
make() builds a Node, whose __init__ the type's C code calls, and each __init__ makes the
next Node, DEPTH levels deep. The innermost __init__ keeps COUNT blocks of BLOCK bytes in
all (one per call, line `# LEAK`); the Nodes themselves are dropped.

Every entry from C into Python is a frame of its own on CPython 3.12+ (an entry shim on the
C stack, between two data-stack frames), about 800 bytes of C stack apart: DEPTH + 1 of
them here, more than one 4 KiB copy of the C stack holds. The walk must step over every one
and keep every Python frame, innermost first:

    __init__ (LEAK), make (NEW), DEPTH x [__init__ (RECURSE), make (NEW)],
    <lambda> (MAP), work (MAP), run (WORK in scenario.py), <module> (MAIN)
"""

import scenario

COUNT = 400
BLOCK = 2000
DEPTH = 7

LEAKED = []


class Node:
    def __init__(self, i, depth):
        if depth == 0:
            LEAKED.append(bytearray(BLOCK))  # LEAK
        else:
            self.child = make(i, depth - 1)  # RECURSE


def make(i, depth):
    return Node(i, depth)  # NEW


def work():
    for _ in map(lambda i: make(i, DEPTH), range(COUNT)):  # MAP
        pass


if __name__ == "__main__":
    scenario.run(work, ["LEAK"])  # MAIN
