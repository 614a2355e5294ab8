"""Calls per second through the in-memory test client (no broker), one thread and several.

Run:  .venv/bin/python benchmarks/testclient.py [--seconds 2] [--threads 4]

Each call is the full production path: JSON encode, dispatch.process (parse,
bind, convert, call, unstructure), JSON reply, decode. Prints a table of the cases on
one thread, then the same client called from 1 and from ``--threads`` threads at once
(passes alternating, medians), with the ratio: the target is >= 0.9 (threads must not
make the client slower in all; the GIL keeps them from making it faster).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import attrs

from busapp import App
from busapp.errors import InvalidParams


@attrs.define
class Point:
    """A small model, to price cattrs conversion of params and results."""

    x: int
    y: int = 0


def make_app() -> App:
    """The App under test: a trivial handler and a few heavier ones."""
    app = App("bench")

    @app.method()
    def ping() -> str:
        return "pong"

    @app.method()
    def add(x: int, y: int) -> int:
        return x + y

    @app.method()
    def move(p: Point, dx: int) -> Point:
        return Point(p.x + dx, p.y)

    @app.method()
    def relay(x: int, y: int, bus) -> int:
        return bus.call("bench.add", x, y)

    return app


def bad_params(client) -> None:
    try:
        client.call("add", "x", 1)
    except InvalidParams:
        pass


def cases(client) -> dict[str, Callable[[], object]]:
    return {
        "ping()": lambda: client.call("ping"),
        "add(1, 2)": lambda: client.call("add", 1, 2),
        "add(x=1, y=2) full key": lambda: client.call("bench.add", x=1, y=2),
        "move(Point) (cattrs)": lambda: client.call("move", {"x": 1, "y": 2}, 3),
        "relay -> add (nested call)": lambda: client.call("relay", 1, 2),
        "add('x', 1) -> InvalidParams": lambda: bad_params(client),
    }


def rate(func: Callable[[], object], seconds: float, threads: int = 1) -> tuple[float, float]:
    """``(calls per wall second, calls per CPU second)`` of ``func`` from ``threads`` threads.

    The CPU figure is what predicts other machines (and ignores other load on this one).
    """
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            for _ in range(100):
                func()
            n += 100
        counts[i] = n

    started, cpu = time.perf_counter(), time.process_time()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return sum(counts) / wall, sum(counts) / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--passes", type=int, default=3, help="median of this many")
    parser.add_argument("--threads", type=int, default=4, help="for the threaded row")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval (CPython's default is 0.005 s): how often "
                             "threads hand the GIL over")
    args = parser.parse_args()
    if args.switch_interval is not None:
        import sys

        sys.setswitchinterval(args.switch_interval)
    client = make_app().test_client()
    print(f"{'case':<32} {'calls/s':>10} {'calls/CPU-s':>12} {'CPU us/call':>12}")
    for name, func in cases(client).items():
        func()  # warm up (first-call caches)
        runs = [rate(func, args.seconds) for _ in range(args.passes)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"{name:<32} {wall:>10,.0f} {cpu:>12,.0f} {1e6 / cpu:>12.1f}")
    print()
    n = args.threads
    print(f"{'one client, threads at once':<32} {'1 thread':>10} {f'{n} threads':>12} "
          f"{f'{n}/1':>6}   (calls/s, all threads together)")
    for name in ("ping()", "add(1, 2)", "relay -> add (nested call)"):
        func = cases(client)[name]
        one: list[float] = []
        many: list[float] = []
        for _ in range(args.passes):  # alternating, so drift on the machine hits both alike
            one.append(rate(func, args.seconds, 1)[0])
            many.append(rate(func, args.seconds, n)[0])
        a, b = statistics.median(one), statistics.median(many)
        print(f"{name:<32} {a:>10,.0f} {b:>12,.0f} {b / a:>6.2f}")


if __name__ == "__main__":
    main()
