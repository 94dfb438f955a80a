"""run_leak: a short program for `pyleak run` (no stdin protocol).

From its first statement it keeps LEAK_COUNT objects of LEAK_SIZE payload
bytes (line `# LEAK`) amid churn of the same size (line `# CHURN`, all
freed), then exits by itself. `pyleak run` traces it from the start, so the
whole leak must be in the report.

It exits normally. Interpreter teardown frees every module global, the leak
included; pyleak stops counting when the interpreter enters Py_FinalizeEx, so
the report shows what was outstanding when the program's work ended, not what
teardown leaves behind. This scenario checks exactly that.
"""

import sys

LEAK_COUNT = 3000
LEAK_SIZE = 996  # payload bytes per object; a multiple of 6
CHURN_PER_LEAK = 10

LEAKED = []


def leak(i):
    LEAKED.append((b"%06d" % i) * (LEAK_SIZE // 6))  # LEAK


def churn(i):
    scratch = [(b"%06d" % (i + j)) * (LEAK_SIZE // 6) for j in range(CHURN_PER_LEAK)]  # CHURN
    return len(scratch)


def main():
    for i in range(LEAK_COUNT):
        leak(i)
        churn(i)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
