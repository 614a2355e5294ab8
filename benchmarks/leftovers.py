"""Bindings left on the exchange after 20 start/stop cycles of ``busapp run`` (prints them).

On a private Redis and a private RabbitMQ node (tests/_private_brokers.py), each in turn:
20 times, ``app.run(workers=2)`` is started, one of its workers is killed with kill -9 (its
manager replaces it), and the run is ended: by SIGTERM (even cycles), by kill -9 of the
manager (its workers get SIGTERM from the kernel), or by kill -9 of the manager and its
workers at once (a lost host: nothing of it cleans up). Then one run is started again, and
the bindings on the exchange are counted: they should be the service queue's and the
live workers' own, once the dead workers' heartbeat expired (``BUSAPP_OWN_QUEUE_TTL``,
30 s by default; ``--ttl`` sets it for the runs).

    .venv/bin/python benchmarks/leftovers.py [redis|rabbitmq ...] [--cycles N] [--ttl S]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests._private_brokers import PrivateRabbitMQ, PrivateRedis  # noqa: E402
from tests.test_leftovers import bindings, own, owners, wait_for  # noqa: E402
from tests.test_reliability import _stop  # noqa: E402
from tests.test_storms import run_service, worker_pids  # noqa: E402

ENDS = ("SIGTERM", "kill -9 of the manager", "SIGTERM", "kill -9 of the whole run")


def cycle(server, exchange: str, name: str, end: str) -> None:
    proc = run_service(server.url, exchange, name, 2)
    victim = worker_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in worker_pids(proc.pid) and len(worker_pids(proc.pid)) == 2)
    if end == "SIGTERM":
        _stop(proc)
    elif end == "kill -9 of the manager":
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def measure(server, kind: str, cycles: int, ttl: float) -> None:
    name = f"l{uuid.uuid4().hex[:8]}"
    exchange = f"x-{name}"
    started = time.monotonic()
    ends: dict[str, int] = {}
    for i in range(cycles):
        end = ENDS[i % len(ENDS)]
        ends[end] = ends.get(end, 0) + 1
        cycle(server, exchange, name, end)
    left = len(own(bindings(server, exchange)))
    proc = run_service(server.url, exchange, name, 2)
    try:
        live = set(worker_pids(proc.pid))
        waited = time.monotonic()
        wait_for(lambda: owners(bindings(server, exchange)) == live, deadline=3 * ttl + 30)
        waited = time.monotonic() - waited
        found = bindings(server, exchange)
    finally:
        _stop(proc)
    print(f"{kind}: {cycles} cycles in {time.monotonic() - started:.0f} s, each with a worker "
          f"killed (kill -9), ended by {ends}; own-queue bindings left right after the last: "
          f"{left}; with a new run of 2 workers: {len(found)} bindings on the exchange = "
          f"{len(found) - len(own(found))} of the service queue + {len(own(found))} of the 2 "
          f"live workers' own (the dead ones' were gone {waited:.1f} s after it started; "
          f"own-queue TTL {ttl:g} s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("brokers", nargs="*", default=["redis", "rabbitmq"])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--ttl", type=float, default=None, help="BUSAPP_OWN_QUEUE_TTL")
    args = parser.parse_args()
    if args.ttl is not None:
        os.environ["BUSAPP_OWN_QUEUE_TTL"] = str(args.ttl)
    ttl = float(os.environ.get("BUSAPP_OWN_QUEUE_TTL", "30"))
    for kind in args.brokers:
        workdir = Path(tempfile.mkdtemp(prefix=f"busapp-leftovers-{kind}-"))
        server = PrivateRedis(workdir) if kind == "redis" else PrivateRabbitMQ(workdir)
        server.start()
        try:
            measure(server, kind, args.cycles, ttl)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
