"""reused_code: code objects freed and their addresses taken by new ones.

Each of ROUNDS rounds compiles a fresh function from source and calls it once: it keeps
COUNT blocks of BLOCK bytes. The function's first line moves down one line per round
(round r's source starts with r blank lines, so its leak is line 3 + r of
`reused_code_gen.py`, a name for the generated source, never a file). Then the function is
dropped: its code object is freed, and a later round's code object, of the same size, may
take its address. pyleak's kernel side remembers code objects' first lines by address; a
memory kept past the free would charge a round's blocks to an earlier round's line. The
work fails (exit status 3) if no address was reused, so the case cannot pass untested.

The pause after each call lets pyleak name the new stack while its code object is alive.
"""

import sys
import time

import scenario

ROUNDS = 12
COUNT = 50
BLOCK = 3000
KEPT = []


def work():
    addresses = []
    for r in range(ROUNDS):
        source = "\n" * r + f"def leak(keep):\n    for _ in range({COUNT}):\n        keep.append(bytearray({BLOCK}))\n"
        namespace = {}
        exec(compile(source, "reused_code_gen.py", "exec"), namespace)
        leak = namespace.pop("leak")
        addresses.append(id(leak.__code__))
        leak(KEPT)  # GEN
        time.sleep(0.1)
        del leak, namespace
    if len(set(addresses)) == len(addresses):
        print(f"reused_code: no code object address was reused in {ROUNDS} rounds", file=sys.stderr)
        sys.exit(3)


scenario.run(work, ["GEN"])
