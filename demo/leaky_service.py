#!/usr/bin/env python3
"""A small request-handling service with a memory leak, for `cargo xtask demo`.

It serves fake requests (JSON bodies asking for a product page) for about
nine seconds at a steady rate, then stops by itself. Almost everything a
request allocates is garbage a moment later: the parsed JSON, the product
record, the rendered HTML. One thing is not: `Service.handle` keeps every
rendered page in `self._cache`, keyed by the request id. Request ids never
repeat, so the cache never hits and is never evicted -- it only grows. That
line, marked `# the leak`, is what pyleak should put on top of its report:
the pages are allocated in `render_page`, called from that line, and the
cache's own table grows on it.

    python3 demo/leaky_service.py [--seconds 9] [--rate 200]
    pyleak run -- python3 demo/leaky_service.py
    pyleak trace --pid <pid of a running copy> --duration 5

Standard library only; deterministic (no randomness, no network).
"""

import argparse
import json
import os
import sys
import time

PRODUCTS = ["kettle", "teapot", "mug", "saucer", "strainer", "tray"]


def make_request(request_id):
    """What a client would send: a small JSON body."""
    product = PRODUCTS[request_id % len(PRODUCTS)]
    return json.dumps({"id": f"req-{request_id:08d}", "product": product, "qty": request_id % 5 + 1})


def load_product(name):
    """Stand-in for a database lookup: a fresh record each time."""
    return {
        "name": name,
        "price_cents": 100 * (len(name) + 3),
        "tags": [name.upper(), "in-stock", f"shelf-{len(name)}"],
        "description": f"A fine {name}. " * 20,
    }


def render_page(record, qty):
    """A product page of about eight kilobytes."""
    rows = "".join(f"<li>{tag}</li>" for tag in record["tags"])
    total = record["price_cents"] * qty / 100
    return (
        f"<html><body><h1>{record['name']}</h1><ul>{rows}</ul>"
        f"<p>{record['description']}</p><p>{qty} x = {total:.2f} EUR</p>"
        + "<!-- padding -->" * 480
        + "</body></html>"
    )


class Service:
    def __init__(self):
        self._cache = {}  # request id -> rendered page; nothing ever removes entries
        self.handled = 0

    def handle(self, body):
        request = json.loads(body)
        record = load_product(request["product"])
        # Request ids never repeat, so this "cache" never hits and only grows.
        self._cache[request["id"]] = render_page(record, request["qty"])  # the leak
        self.handled += 1
        return json.dumps({"status": 200, "id": request["id"]})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=9.0, help="how long to serve (default 9)")
    parser.add_argument("--rate", type=int, default=200, help="requests per second (default 200)")
    args = parser.parse_args()

    print(f"leaky_service: pid {os.getpid()}, serving for {args.seconds:g} s", file=sys.stderr, flush=True)
    service = Service()
    interval = 1.0 / args.rate
    start = time.monotonic()
    request_id = 0
    while time.monotonic() - start < args.seconds:
        service.handle(make_request(request_id))
        request_id += 1
        # Keep a steady rate: sleep until this request's slot is over.
        time.sleep(max(0.0, start + request_id * interval - time.monotonic()))

    cached = sum(len(page) for page in service._cache.values())
    print(
        f"leaky_service: handled {service.handled} requests; the cache holds "
        f"{len(service._cache)} pages, {cached / 1e6:.1f} MB of text",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
