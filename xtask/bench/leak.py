"""A request handler that leaks one response per request, amid churn: the bench's leak.

handle() builds each response from short-lived objects (a list of sixteen strings, a dict, a
joined string: about twenty small allocations, all freed before it returns) and keeps one
bytes object per request in LEAKED, on the line marked `# LEAK`: REQUESTS objects of 1,000 to
1,999 payload bytes, about 60 MB in all. LEAKED is allocated before the work starts, so
storing into it allocates nothing.

bench_truth() gives the leaking line and what it holds: sys.getsizeof() of each leaked object
(header plus payload: the size CPython asks the allocator for), for `cargo xtask bench` to
compare with pyleak's report.
"""

import sys

REQUESTS = 40_000

LEAKED = [None] * REQUESTS


def handle(i):
    fields = [str(i * k) for k in range(16)]
    record = {"id": i, "fields": fields, "name": "request-%d" % i}
    body = "|".join(fields) + record["name"]
    LEAKED[i] = b"x" * (1000 + (i * 7919) % 1000)  # LEAK
    return len(body)


def main():
    total = 0
    for i in range(REQUESTS):
        total += handle(i)
    return total


def bench_truth():
    with open(__file__, encoding="utf-8") as source:
        lines = [n for n, text in enumerate(source, start=1) if text.rstrip().endswith("# LEAK")]
    return {
        "file": __file__,
        "line": lines[0],
        "bytes": sum(map(sys.getsizeof, LEAKED)),
        "blocks": len(LEAKED),
    }


if __name__ == "__main__":
    main()
