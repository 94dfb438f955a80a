"""run_thread_outlives_main: the main thread is done long before the program is.

The main thread starts a (non-daemon) worker thread and returns at once. The interpreter
then waits for the worker in Py_FinalizeEx (threading's shutdown), and only then runs the
atexit handlers and tears itself down. The worker keeps LEAK_COUNT objects of LEAK_SIZE
payload bytes (line `# LEAK`) after the main thread has returned: `pyleak run` must still
count them, so it may stop counting only once the worker is joined, not when the main
thread's code ends.
"""

import threading
import time

LEAK_COUNT = 2000
LEAK_SIZE = 996  # payload bytes per object; a multiple of 6

LEAKED = []


def worker():
    time.sleep(0.5)  # the main thread has returned by now
    for i in range(LEAK_COUNT):
        LEAKED.append((b"%06d" % i) * (LEAK_SIZE // 6))  # LEAK


threading.Thread(target=worker).start()
