"""subinterp_leak: a leak inside a subinterpreter and one in the main interpreter.

3.12 and 3.13 run subinterpreters in one process (`_xxsubinterpreters`, renamed
`_interpreters` in 3.13). SUB_COUNT blocks of BLOCK bytes are kept by code in
the subinterpreter (line `# SUB` of SUB_CODE, reported as `<string>`), and
MAIN_COUNT blocks by main_leak() (line `# MAIN`). Each must be charged to its
own line: the kernel follows whichever thread state is running, and both
interpreters' code objects live in this one address space.
"""

try:
    import _interpreters as interpreters  # 3.13
except ImportError:
    import _xxsubinterpreters as interpreters  # 3.12

SUB_COUNT = 2000
MAIN_COUNT = 1000
BLOCK = 1000

SUB_CODE = f"""
KEPT = []
def sub_leak():
    for _ in range({SUB_COUNT}):
        KEPT.append(bytearray({BLOCK}))  # SUB
sub_leak()
"""
SUB_LINE = 5

MAIN_KEPT = []


def main_leak():
    for _ in range(MAIN_COUNT):
        MAIN_KEPT.append(bytearray(BLOCK))  # MAIN


interp = interpreters.create()
if hasattr(interpreters, "exec"):
    interpreters.exec(interp, SUB_CODE)
else:
    interpreters.run_string(interp, SUB_CODE)
main_leak()
