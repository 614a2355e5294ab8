"""ServiceManager on real brokers: work sharing, replacing dead workers, graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from busapp import Client
from busapp.manager import CrashLoopError, ServiceManager
from busapp.service import CommissaireService
from tests._services import delete_queues, wait_until_served
from tests.apps import make_app

ROOT = Path(__file__).resolve().parent.parent


def _pids(bus, name, n=60):
    return {bus.call(f"{name}.pid") for _ in range(n)}


@pytest.fixture
def manager_proc(broker_url, exchange, unique):
    """`app.run(workers=3)` of a test App in a real subprocess; yields (proc, app, url, exchange)."""
    name = f"m{unique}"
    code = (
        "import sys; from tests.apps import make_app; "
        f"make_app({name!r}).run({broker_url!r}, exchange={exchange!r}, workers=3, "
        "graceful_timeout=10)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    app = make_app(name)
    try:
        wait_until_served(broker_url, exchange, f"{name}.ping")
        yield proc, app, broker_url, exchange
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        subprocess.run(["pkill", "-9", "-f", f"make_app\\({name!r}"], check=False)
        delete_queues(broker_url, exchange, name)


def test_three_workers_share_one_queue(manager_proc):
    """Calls land on three distinct worker pids, none of them the manager."""
    proc, app, url, exchange = manager_proc
    with Client(url, exchange) as bus:
        pids = set()
        end = time.monotonic() + 20
        while len(pids) < 3 and time.monotonic() < end:
            pids |= _pids_concurrently(bus, app.name)
    assert len(pids) == 3
    assert proc.pid not in pids


def _pids_concurrently(bus, name):
    """Six overlapping slow-ish calls, so every worker has to take some."""
    results: list[int] = []

    def one():
        bus.call(f"{name}.slow", 0.3)
        results.append(bus.call(f"{name}.pid"))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return set(results) | _pids(bus, name, 10)


def test_killed_worker_is_replaced(manager_proc):
    """kill -9 of a worker: a new pid serves within seconds, calls keep working."""
    proc, app, url, exchange = manager_proc
    with Client(url, exchange) as bus:
        victim = bus.call(f"{app.name}.pid")
        os.kill(victim, signal.SIGKILL)
        seen: set[int] = set()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            seen |= _pids_concurrently(bus, app.name)
            if len(seen - {victim}) >= 3:
                break
        assert victim not in seen
        assert len(seen) == 3
        assert bus.call(f"{app.name}.add", 1, 1) == 2


def test_sigterm_finishes_in_flight_call_and_exits_zero(manager_proc):
    """SIGTERM while a 2 s call is in flight: the call gets its result, the manager exits 0."""
    proc, app, url, exchange = manager_proc
    with Client(url, exchange) as bus:
        result: dict = {}
        caller = threading.Thread(
            target=lambda: result.setdefault("value", bus.call(f"{app.name}.slow", 2, timeout=15)))
        caller.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        caller.join(20)
        assert result.get("value") == 2
        assert proc.wait(30) == 0


class _Crashing(CommissaireService):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("cannot start: config missing")


def test_crash_loop_gives_up(redis_url):
    """A service that fails at start is backed off and the manager raises CrashLoopError."""
    manager = ServiceManager(_Crashing, 1, "x", redis_url, None)
    manager.max_fast_failures = 3
    with pytest.raises(CrashLoopError, match="failed 3 times"):
        manager.run()


def test_classic_example_runs_under_manager(broker_url):
    """examples/classic_service.py (the seed's MyService, 3 processes) answers ping/echo/fail."""
    from busapp.errors import InternalError

    proc = subprocess.Popen([sys.executable, "examples/classic_service.py", broker_url], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until_served(broker_url, "my_exchange", "queues.my_queue.ping") == "pong"
        with Client(broker_url, "my_exchange") as bus:
            assert bus.call("queues.my_queue.echo", "hi") == "hi"
            assert bus.call("queues.my_queue.echo", words="hi") == "hi"
            with pytest.raises(InternalError, match="never created"):
                bus.call("queues.my_queue.fail")
            response = bus.request("queues.my_queue.ping")
            assert response["result"] == "pong" and "id" in response
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        delete_queues(broker_url, "my_exchange", "my_queue")


class _BrokenStart(CommissaireService):
    """Fails inside run(), before it is ever ready (like a missing module in the transport)."""

    def queue_specs(self):
        raise ImportError("No module named 'packaging'")


def test_startup_failure_inside_run_is_a_crash_loop(redis_url):
    """A non-broker error before the first ready line ends the worker, so the manager gives up."""
    manager = ServiceManager(_BrokenStart, 1, "x", redis_url, None)
    manager.max_fast_failures = 2
    with pytest.raises(CrashLoopError, match="failed 2 times"):
        manager.run()
