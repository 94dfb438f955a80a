"""reused_module_code: code objects freed and their addresses taken by new ones that start
on the same line, in other files.

Each of ROUNDS rounds compiles the same module source under its own file name
(`reused_gen_R.py`, a name, never a file) and runs it once, as an import runs a module's
body: it keeps COUNT blocks of BLOCK bytes at line 3. Then the code object is dropped, and a
later round's, of the same size, may take its address. Every module body starts on line 1
and these run the same bytecode, so neither a code object's address nor its first line nor
its position tells round r from an earlier round at that address: only what the code object
points to (its file name, its line table) does. The work fails (exit status 3) if no
address was reused, so the case cannot pass untested.

The pause after each round lets pyleak name the new stack while its code object is alive.
"""

import sys
import time

import scenario

ROUNDS = 12
COUNT = 50
BLOCK = 3000
KEPT = []
SOURCE = f"keep = KEPT\nfor _ in range({COUNT}):\n    keep.append(bytearray({BLOCK}))\n"


def work():
    addresses = []
    for r in range(ROUNDS):
        code = compile(SOURCE, f"reused_gen_{r}.py", "exec")
        addresses.append(id(code))
        exec(code, {"KEPT": KEPT})  # GEN
        time.sleep(0.1)
        del code
    if len(set(addresses)) == len(addresses):
        print(f"reused_module_code: no code object address was reused in {ROUNDS} rounds", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    scenario.run(work, ["GEN"])
