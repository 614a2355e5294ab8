"""Poison requests and kill storms never take capacity away (private brokers).

A worker that had been ready and dies is replaced at once by its manager, so a run of
poison requests (each kills its worker on every delivery until dead-lettered) or a storm
of kill -9s leaves the service with all its workers, and every later poison request
still gets its ``WorkerLost`` answer. The tests here are short; ``benchmarks/storms.py``
runs the long version (four poison requests 3 s apart, a 20 s kill storm) and prints the
figures of docs/explanation/faults.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from busapp import Client
from busapp.errors import BusappError, InternalError
from busapp.ops.status import gather
from tests._services import wait_until_served
from tests.test_reliability import _start_manager, _stop

WORKERS = 2


def poison(bus: Client, name: str, timeout: float = 20.0) -> tuple[str, float]:
    """Send one poison request; what its caller got (``WorkerLost`` or an error class) and
    after how long."""
    started = time.monotonic()
    try:
        bus.call(f"{name}.die", timeout=timeout)
        outcome = "answered"
    except InternalError as exc:
        outcome = (exc.data or {}).get("exception") or "InternalError"
    except BusappError as exc:
        outcome = type(exc).__name__
    return outcome, time.monotonic() - started


def worker_pids(manager_pid: int) -> list[int]:
    """The live child processes of the manager."""
    out = subprocess.run(["pgrep", "-P", str(manager_pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def all_serving(url: str, exchange: str, name: str, manager_pid: int, count: int) -> bool:
    """True when ``count`` live workers of the manager each answer a status request."""
    pids = set(worker_pids(manager_pid))
    if len(pids) != count:
        return False
    answered = {s["pid"] for s in gather(url, exchange, name, timeout=0.3)}
    return pids <= answered


def wait_all_serving(url: str, exchange: str, name: str, manager_pid: int, count: int,
                     deadline: float = 30.0) -> float:
    """Seconds until ``count`` workers serve (see :func:`all_serving`)."""
    started = time.monotonic()
    while not all_serving(url, exchange, name, manager_pid, count):
        assert time.monotonic() - started < deadline, "the workers did not all come back"
        time.sleep(0.05)
    return time.monotonic() - started


def kill_storm(bus: Client, name: str, seconds: float, every: float) -> int:
    """kill -9 a worker that just served a call, every ``every`` seconds for ``seconds``;
    how many were killed."""
    end = time.monotonic() + seconds
    killed = 0
    while time.monotonic() < end:
        try:
            victim = bus.call(f"{name}.pid", timeout=2)
        except BusappError:  # every worker was just killed: the next comes back at once
            continue
        os.kill(victim, signal.SIGKILL)
        killed += 1
        time.sleep(every)
    return killed


def run_service(url: str, exchange: str, name: str, workers: int = WORKERS):
    """Start ``app.run(workers=...)`` of a test App (2 or more: under a manager), wait until
    every worker serves; its manager process."""
    assert workers > 1, "one worker runs in-process, without a manager"
    proc = _start_manager(url, exchange, name, workers)
    wait_until_served(url, exchange, f"{name}.ping")
    wait_all_serving(url, exchange, name, proc.pid, workers)
    return proc


def test_poison_requests_in_a_row_each_get_worker_lost(private_broker, unique):
    """Four poison requests one after another under --workers 2: each caller gets
    WorkerLost (before, the back-off grew with each death and the fourth timed out)."""
    url, name, exchange = private_broker.url, f"p{unique}", f"test-{unique}"
    proc = run_service(url, exchange, name)
    try:
        with Client(url, exchange) as bus:
            outcomes = [poison(bus, name) for _ in range(4)]
            print(f"\n[figure] 4 poison requests in a row ({url.split(':')[0]}): "
                  + ", ".join(f"{o} after {t:.1f}s" for o, t in outcomes))
            assert [o for o, _ in outcomes] == ["WorkerLost"] * 4
            assert bus.call(f"{name}.add", 1, 2) == 3
    finally:
        log = _stop(proc)
    assert proc.returncode == 0, log[-3000:]


def test_kill_storm_leaves_every_worker_back(private_broker, unique):
    """kill -9 of a served worker every 0.5 s for 4 s: every worker serves again right
    after, and a poison request then still gets WorkerLost."""
    url, name, exchange = private_broker.url, f"k{unique}", f"test-{unique}"
    proc = run_service(url, exchange, name)
    try:
        with Client(url, exchange) as bus:
            killed = kill_storm(bus, name, seconds=4, every=0.5)
            back = wait_all_serving(url, exchange, name, proc.pid, WORKERS)
            outcome, took = poison(bus, name)
            print(f"\n[figure] kill storm ({url.split(':')[0]}, {killed} kill -9s in 4 s): "
                  f"all {WORKERS} workers serving {back:.1f}s after; poison then: "
                  f"{outcome} after {took:.1f}s")
            assert killed >= 4
            assert outcome == "WorkerLost"
    finally:
        log = _stop(proc)
    assert proc.returncode == 0, log[-3000:]
