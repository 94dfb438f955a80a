"""threads: two threads leak different amounts at the same time.

Thread "leak-a" runs leak_a(), keeping A_COUNT objects of SIZE payload bytes
(line `# LEAK-A`, about 1.5 MB); thread "leak-b" runs leak_b(), keeping
B_COUNT (line `# LEAK-B`, about 0.5 MB). Both go through ROUNDS rounds that
start on a shared barrier, so their allocations alternate (about a hundred
hand-overs between the threads); a tiny switch interval lets the interpreter
also switch threads inside a round when allocations are slow, as they are
under probes. pyleak must walk the allocating thread's own Python stack: the
LEAK-A stack goes through leak_a and never leak_b, and vice versa.

Expected bytes per line: the ground-truth run (PYLEAK_TEST_TRACEMALLOC=1)
prints tracemalloc's figures. Protocol: see scenario.py.
"""

import sys
import threading

import scenario

SIZE = 996  # payload bytes per object; a multiple of 6
A_COUNT = 1500
B_COUNT = 500
ROUNDS = 50

BARRIER = threading.Barrier(2)
KEPT_A = []
KEPT_B = []


def leak_a():
    for r in range(ROUNDS):
        BARRIER.wait()
        for i in range(A_COUNT // ROUNDS):
            KEPT_A.append((b"A%05d" % i) * (SIZE // 6))  # LEAK-A


def leak_b():
    for r in range(ROUNDS):
        BARRIER.wait()
        for i in range(B_COUNT // ROUNDS):
            KEPT_B.append((b"B%05d" % i) * (SIZE // 6))  # LEAK-B


def work():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    threads = [
        threading.Thread(target=leak_a, name="leak-a"),
        threading.Thread(target=leak_b, name="leak-b"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sys.setswitchinterval(interval)


if __name__ == "__main__":
    scenario.run(work, ["LEAK-A", "LEAK-B"])  # MAIN
