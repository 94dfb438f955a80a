"""many_stacks: far more distinct stacks over time than the kernel keeps room for at once.

Each of ROUNDS rounds compiles a fresh function under its own file name (a code object of
its own, so stacks of their own), calls it once (it allocates and frees CHURN blocks), and
pauses a moment: a few new stacks a round, thousands over the run, each used once and idle
ever after. Then the work leaks LEAK_COUNT objects of LEAK_SIZE payload bytes (line
`# LEAK`). Traced with --max-stacks below the number of stacks made, the leak is seen only if
pyleak gave the room of idle stacks to new ones.

Protocol and ground-truth mode (PYLEAK_TEST_TRACEMALLOC=1): see scenario.py.
"""

import time

import scenario

ROUNDS = 3000
CHURN = 8
LEAK_COUNT = 2000
LEAK_SIZE = 996  # payload bytes per object; a multiple of 6

LEAKED = []


def leak():
    for i in range(LEAK_COUNT):
        LEAKED.append((b"%06d" % i) * (LEAK_SIZE // 6))  # LEAK


def work():
    for r in range(ROUNDS):
        namespace = {}
        source = f"def f():\n    return [bytearray({100 + r % 50}) for _ in range({CHURN})]\n"
        exec(compile(source, f"many_stacks_gen_{r}.py", "exec"), namespace)
        namespace["f"]()
        time.sleep(0.002)
    leak()


if __name__ == "__main__":
    scenario.run(work, ["LEAK"])
