"""short_lived: a Python process that lives only as long as the test wants.

Keeps a few objects (line `# KEEP`), prints `ready`, and exits when its stdin
is closed. The daemon tests start 20 of these in a row.
"""

import sys

KEPT = [bytes(10000) for _ in range(50)]  # KEEP

print("ready", flush=True)
sys.stdin.read()
