"""run_native_leak: memory taken straight from the C library through ctypes, as C
extensions do (numpy arrays, native buffers), for `pyleak run`.

native_leak() keeps NATIVE_COUNT blocks of NATIVE_SIZE bytes from libc
malloc (line `# NATIVE`); native_churn() mallocs and frees as many blocks of
the same size (line `# NATIVE-CHURN`). ctypes releases the GIL around the call,
so the stack must come from the thread's own state, not the GIL holder.
"""

import ctypes

NATIVE_COUNT = 300
NATIVE_SIZE = 20000

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

KEPT = []


def native_leak():
    for _ in range(NATIVE_COUNT):
        KEPT.append(libc.malloc(NATIVE_SIZE))  # NATIVE


def native_churn():
    for _ in range(NATIVE_COUNT):
        libc.free(libc.malloc(NATIVE_SIZE))  # NATIVE-CHURN


native_leak()
native_churn()
