"""Poison requests and a kill storm never take capacity away (prints the figures).

On a private Redis and a private RabbitMQ node (tests/_private_brokers.py), each in turn:

1. ``app.run(workers=2)``; four poison requests (each kills its worker on every delivery
   until it is dead-lettered) sent 3 s apart: what each caller got, after how long.
2. ``app.run(workers=3)``; 6 threads calling without pause while a worker that just
   served a call is killed with kill -9 every second for 20 s; then how long until all 3
   workers serve again, and three poison requests (one after another, then three at
   once): what each caller got.

    .venv/bin/python benchmarks/storms.py [redis|rabbitmq ...] [--storm SECONDS]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from busapp import Client  # noqa: E402
from busapp.errors import BusappError  # noqa: E402
from tests._private_brokers import PrivateRabbitMQ, PrivateRedis  # noqa: E402
from tests.test_reliability import _stop  # noqa: E402
from tests.test_storms import kill_storm, poison, run_service, wait_all_serving  # noqa: E402


def spaced_poison(url: str, exchange: str, name: str, count: int, every: float) -> list:
    """``count`` poison requests started ``every`` seconds apart, each from its own thread."""
    outcomes: list = [None] * count

    def one(i: int) -> None:
        with Client(url, exchange) as bus:
            outcomes[i] = poison(bus, name, timeout=20)

    threads = []
    for i in range(count):
        thread = threading.Thread(target=one, args=(i,))
        thread.start()
        threads.append(thread)
        time.sleep(every)
    for thread in threads:
        thread.join(30)
    return outcomes


def load(url: str, exchange: str, name: str, stop: threading.Event, tally: dict) -> None:
    """Call ``add`` without pause until ``stop``; count outcomes in ``tally``."""
    with Client(url, exchange) as bus:
        while not stop.is_set():
            try:
                bus.call(f"{name}.add", 1, 1, timeout=5)
                key = "ok"
            except BusappError as exc:
                key = type(exc).__name__
            tally[key] = tally.get(key, 0) + 1


def storm(url: str, exchange: str, name: str, seconds: float) -> None:
    proc = run_service(url, exchange, name, 3)
    try:
        stop, tally = threading.Event(), {}
        callers = [threading.Thread(target=load, args=(url, exchange, name, stop, tally))
                   for _ in range(6)]
        for caller in callers:
            caller.start()
        with Client(url, exchange) as bus:
            killed = kill_storm(bus, name, seconds, every=1.0)
        ended = time.monotonic()
        stop.set()
        for caller in callers:
            caller.join(30)
        back = wait_all_serving(url, exchange, name, proc.pid, 3, deadline=60)
        print(f"  kill storm: {killed} kill -9s in {seconds:g} s under 6 calling threads "
              f"(calls: {tally}); all 3 workers serving {back:.1f} s after it ended "
              f"({time.monotonic() - ended:.1f} s with the callers' last calls)")
        with Client(url, exchange) as bus:
            outcomes = [poison(bus, name, timeout=20) for _ in range(3)]
        print("  then 3 poison requests, one after another: "
              + ", ".join(f"{o} after {t:.1f} s" for o, t in outcomes))
        outcomes = spaced_poison(url, exchange, name, 3, 0.0)
        print("  and 3 at once: " + ", ".join(f"{o} after {t:.1f} s" for o, t in outcomes))
    finally:
        _stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("brokers", nargs="*", default=["redis", "rabbitmq"])
    parser.add_argument("--storm", type=float, default=20.0, help="seconds of kill storm")
    args = parser.parse_args()
    for kind in args.brokers:
        workdir = Path(tempfile.mkdtemp(prefix=f"busapp-storms-{kind}-"))
        server = PrivateRedis(workdir) if kind == "redis" else PrivateRabbitMQ(workdir)
        server.start()
        try:
            print(f"{kind}:")
            name = f"p{uuid.uuid4().hex[:8]}"
            proc = run_service(server.url, f"x-{name}", name, 2)
            try:
                outcomes = spaced_poison(server.url, f"x-{name}", name, 4, 3.0)
                print("  4 poison requests 3 s apart, --workers 2: "
                      + ", ".join(f"{o} after {t:.1f} s" for o, t in outcomes))
            finally:
                _stop(proc)
            name = f"k{uuid.uuid4().hex[:8]}"
            storm(server.url, f"x-{name}", name, args.storm)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
