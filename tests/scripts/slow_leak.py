"""slow_leak: leaks steadily for a while with no stdin protocol, for targets
started by something other than the harness (e.g. inside `unshare -m`).

Prints `ready`, then every 50 ms keeps one LEAK_SIZE-byte bytes object (line
`# LEAK`), for RUN_SECONDS, then exits.
"""

import sys
import time

LEAK_SIZE = 50000
RUN_SECONDS = 20

LEAKED = []


def leak():
    LEAKED.append(bytes(LEAK_SIZE))  # LEAK


if __name__ == "__main__":
    print("ready", flush=True)
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        leak()
        time.sleep(0.05)
    sys.exit(0)
