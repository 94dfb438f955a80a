"""exits_midway: the target exits while pyleak is still tracing it.

After `go`, work() keeps LEAK_COUNT objects of LEAK_SIZE payload bytes (line
`# LEAK`) and the scenario prints `done`; about EXIT_AFTER_S seconds later it
exits by itself, without waiting for the test.

It leaves with os._exit(0), like a crashed or killed process: interpreter
teardown would free every module global (LEAKED included), and the test wants
the leak still outstanding when the process disappears.
Protocol: see scenario.py.
"""

import os
import time

import scenario

LEAK_COUNT = 1000
LEAK_SIZE = 996  # payload bytes per object; a multiple of 6
EXIT_AFTER_S = 1.0

LEAKED = []


def work():
    for i in range(LEAK_COUNT):
        LEAKED.append((b"%06d" % i) * (LEAK_SIZE // 6))  # LEAK


def exit_soon():
    time.sleep(EXIT_AFTER_S)
    os._exit(0)


if __name__ == "__main__":
    scenario.run(work, ["LEAK"], after_done=exit_soon)  # MAIN
