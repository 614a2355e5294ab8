#!/usr/bin/env python
"""Events and timers under ``busapp run``: delivery under a worker kill, a timer for a minute,
and events per second against RPC calls per second, measured side by side.

Sections (each per broker: the embedded broker, Redis, RabbitMQ):

- ``delivery``: 1,000 events (``--events``) through two subscriber Apps of ``--workers 3``
  each (tests/event_apps.py: ``billing``, and ``shipping`` with a broadcast handler), with
  kill -9 of a ``billing`` worker half-way (the manager replaces it). Prints, per App, the
  events handled, lost and handled twice (only where the killed worker was mid-handler, or
  had taken events it never acked: those come back);
- ``timer``: a timer ``every=1`` on two ``busapp run`` of one App with 2 workers each, for
  ``--timer-seconds`` (60), with kill -9 of the worker running it half-way: runs, smallest
  gap between two runs (a tick run twice would show as ~0), and how long after the kill the
  next run came;
- ``rate``: one App with one worker; ``--rate-count`` one-way messages each way: events
  (``bus.emit``) and notifications (``bus.notify``, the RPC one-way path), timed from the
  first publish to the handling of the last; and RPC calls (``bus.call`` echo, one in flight,
  then 8 threads). The same App and worker serve all, alternating ``--repeat`` times.

Run by hand (never from the test suite)::

    .venv/bin/python benchmarks/events.py                      # all, ~4 minutes
    .venv/bin/python benchmarks/events.py --section rate --broker redis
    .venv/bin/python benchmarks/events.py --quick              # smoke check
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from busapp import Client  # noqa: E402
from busapp.ops.status import gather  # noqa: E402
from busapp.transport.embedded import ensure_embedded_broker, stop_embedded_broker  # noqa: E402
from tests import event_apps  # noqa: E402
from tests._services import delete_queues  # noqa: E402

APPS = ROOT / "tests" / "event_apps.py"
BROKERS = {"redis": "redis://127.0.0.1:6379/0", "amqp": "amqp://guest:guest@127.0.0.1:5672//"}


class Run:
    """One ``busapp run`` of an App of tests/event_apps.py (stopped by :meth:`stop`)."""

    def __init__(self, app: str, workers: int, url: str, exchange: str, directory: Path) -> None:
        self.log = directory / f"run-{app}-{uuid.uuid4().hex[:6]}.log"
        env = {**os.environ, "EVENT_TEST_DIR": str(directory)}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "busapp", "run", f"{APPS}:{app}", "--workers", str(workers),
                 "--broker", url, "--exchange", exchange, "--log-format", "json",
                 "--log-level", "warning", "--graceful-timeout", "5"],
                cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def read(directory: Path, file: str) -> list[tuple[int, str]]:
    os.environ["EVENT_TEST_DIR"] = str(directory)
    return event_apps.read(file)


def wait_workers(runs: list[Run], count: int, url: str, exchange: str) -> None:
    """Until ``count`` workers answer ``busapp status`` (so each consumes its queues)."""
    deadline = time.monotonic() + 90
    while len(gather(url, exchange, timeout=1.0)) < count:
        assert time.monotonic() < deadline, "workers did not start"


def queues_of(exchange: str, *apps: str) -> list[str]:
    names = []
    for app in apps:
        for entry in getattr(event_apps, app).event_handlers:
            shared = entry.queue_name(f"{exchange}.{app}")
            names += [shared, f"{shared}.dead", f"{shared}.delay.1000", f"{shared}.delay.2000"]
    return names


# -- delivery ----------------------------------------------------------------------------------


def delivery(url: str, events: int, workers: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="busapp-bench-events-"))
    exchange = f"bench-{uuid.uuid4().hex[:8]}"
    runs = [Run("billing", workers, url, exchange, directory),
            Run("shipping", workers, url, exchange, directory)]
    try:
        wait_workers(runs, 2 * workers, url, exchange)
        with Client(url, exchange) as bus:
            for n in range(events):
                if n == events // 2:
                    victim = random.choice(runs[0].worker_pids())
                    os.kill(victim, signal.SIGKILL)
                bus.emit("orders.placed", order_id=n)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
                len({w for _, w in read(directory, "billing")}) >= events
                and len({w for _, w in read(directory, "shipping")}) >= events
                and len(set(read(directory, "shipping-broadcast"))) >= workers * events):
            time.sleep(0.2)
        time.sleep(1.0)
        figures = {}
        for app in ("billing", "shipping"):
            handled = Counter(w for _, w in read(directory, app))
            figures[app] = (len(handled), events - len(handled),
                            sum(c - 1 for c in handled.values() if c > 1))
        # Broadcast: by each worker once; "lost" is an event some worker never got.
        pairs = Counter(read(directory, "shipping-broadcast"))
        reached = Counter(w for _, w in pairs)
        figures["shipping-broadcast"] = (
            sum(1 for c in reached.values() if c >= workers), events - sum(
                1 for c in reached.values() if c >= workers),
            sum(c - 1 for c in pairs.values() if c > 1))
        return figures
    finally:
        for run in runs:
            run.stop()
        delete_queues(url, exchange, *queues_of(exchange, "billing", "shipping"))


# -- timer -------------------------------------------------------------------------------------


def timer(url: str, seconds: float) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="busapp-bench-timer-"))
    exchange = f"bench-{uuid.uuid4().hex[:8]}"
    runs = [Run("clock", 2, url, exchange, directory), Run("clock", 2, url, exchange, directory)]
    try:
        wait_workers(runs, 4, url, exchange)
        started = time.time()
        time.sleep(seconds / 2)
        holder = read(directory, "beat")[-1][0]
        os.kill(holder, signal.SIGKILL)
        killed = time.time()
        time.sleep(seconds / 2)
        ticks = [float(t) for _, t in read(directory, "beat") if float(t) >= started]
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        after = [t for t in ticks if t > killed]
        return {"runs": len(ticks), "seconds": time.time() - started, "min_gap": min(gaps),
                "takeover": after[0] - killed if after else float("nan"),
                "workers": len({p for p, _ in read(directory, "beat")})}
    finally:
        for run in runs:
            run.stop()


# -- rate --------------------------------------------------------------------------------------


def _last_at(directory: Path, file: str, before: int) -> float | None:
    rows = read(directory, file)
    return float(rows[-1][1]) if len(rows) > before else None


def _one_way(bus: Client, directory: Path, kind: str, count: int) -> float:
    file = "sink-event" if kind == "emit" else "sink"
    before = len(read(directory, file))
    started = time.time()
    for n in range(count):
        if kind == "emit":
            bus.emit("bench.tick", n=n, last=count - 1)
        else:
            bus.notify("bench.sink", n=n, last=count - 1)
    deadline = time.monotonic() + 120
    while (done := _last_at(directory, file, before)) is None:
        assert time.monotonic() < deadline, f"the last {kind} never arrived"
        time.sleep(0.01)
    return count / (done - started)


def _calls(bus: Client, count: int, threads: int) -> float:
    per = count // threads

    def work() -> None:
        for _ in range(per):
            bus.call("bench.echo", data="x" * 53)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return per * threads / (time.perf_counter() - started)


def rate(url: str, count: int, repeat: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="busapp-bench-rate-"))
    exchange = f"bench-{uuid.uuid4().hex[:8]}"
    run = Run("bench", 1, url, exchange, directory)
    figures: dict[str, list[float]] = {"emit": [], "notify": [], "call": [], "call x8": []}
    try:
        wait_workers([run], 1, url, exchange)
        with Client(url, exchange) as bus:
            for _ in range(repeat):
                figures["emit"].append(_one_way(bus, directory, "emit", count))
                figures["notify"].append(_one_way(bus, directory, "notify", count))
                figures["call"].append(_calls(bus, count // 2, 1))
                figures["call x8"].append(_calls(bus, count, 8))
        return {k: statistics.median(v) for k, v in figures.items()}
    finally:
        run.stop()
        delete_queues(url, exchange, f"{exchange}.bench", *queues_of(exchange, "bench"))


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", choices=("embedded", "redis", "amqp", "all"), default="all")
    parser.add_argument("--section", choices=("delivery", "timer", "rate", "all"), default="all")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--timer-seconds", type=float, default=60.0)
    parser.add_argument("--rate-count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small counts, short timer")
    args = parser.parse_args()
    if args.quick:
        args.events, args.timer_seconds, args.rate_count, args.repeat = 200, 8.0, 300, 1
    brokers = ["embedded", "redis", "amqp"] if args.broker == "all" else [args.broker]
    sections = ["delivery", "timer", "rate"] if args.section == "all" else [args.section]
    for broker in brokers:
        state = tempfile.mkdtemp(prefix="busapp-bench-embedded-") + "/.busapp"
        url = ensure_embedded_broker(state) if broker == "embedded" else BROKERS[broker]
        try:
            report(broker, url, sections, args)
        finally:
            if broker == "embedded":
                stop_embedded_broker(state)


def report(broker: str, url: str, sections: list[str], args: argparse.Namespace) -> None:
    if "delivery" in sections:
        figures = delivery(url, args.events, args.workers)
        for app, (handled, lost, twice) in figures.items():
            each = " (by each worker)" if app.endswith("broadcast") else ""
            print(f"{broker:9} delivery  {app:19} {args.events} events, {args.workers} workers, "
                  f"a billing worker killed: handled{each} {handled}, lost {lost}, handled "
                  f"twice {twice}", flush=True)
    if "timer" in sections:
        t = timer(url, args.timer_seconds)
        print(f"{broker:9} timer     every=1, 2 runs x 2 workers, {t['seconds']:.0f}s, kill -9 of "
              f"the holder half-way: {t['runs']} runs, smallest gap {t['min_gap']:.3f}s, next "
              f"run {t['takeover']:.2f}s after the kill, {t['workers']} workers ran it",
              flush=True)
    if "rate" in sections:
        r = rate(url, args.rate_count, args.repeat)
        print(f"{broker:9} rate      1 worker, medians of {args.repeat}: events {r['emit']:.0f}/s, "
              f"notifications {r['notify']:.0f}/s (events/notify {r['emit'] / r['notify']:.2f}); "
              f"calls {r['call']:.0f}/s one in flight, {r['call x8']:.0f}/s 8 threads",
              flush=True)


if __name__ == "__main__":
    main()
