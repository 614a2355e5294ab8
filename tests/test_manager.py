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
from structlog.testing import capture_logs

from busapp import Client
from busapp.runtime.manager import CrashLoopError, ServiceManager, backoff_delay
from busapp.service import CommissaireService
from tests._services import delete_queues, wait_until_served
from tests.apps import make_app

ROOT = Path(__file__).resolve().parent.parent


def _pids(bus, name, n=60):
    return {bus.call(f"{name}.pid") for _ in range(n)}


def _start_in_own_group(code: str) -> subprocess.Popen:
    """Run ``code`` in a new session, so teardown can kill it and its workers and nothing else."""
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group the test started (the manager and its forked workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(10)


@pytest.fixture
def manager_proc(broker_url, exchange, unique):
    """`app.run(workers=3)` of a test App in a real subprocess; yields
    (proc, app, url, exchange)."""
    name = f"m{unique}"
    proc = _start_in_own_group(
        "import sys; from tests.apps import make_app; "
        f"make_app({name!r}).run({broker_url!r}, exchange={exchange!r}, workers=3, "
        "graceful_timeout=10)"
    )
    app = make_app(name)
    try:
        wait_until_served(broker_url, exchange, f"{name}.ping")
        yield proc, app, broker_url, exchange
    finally:
        _kill_group(proc)
        delete_queues(broker_url, exchange, app.queue_for(exchange))


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
                            start_new_session=True,
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
        _kill_group(proc)
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


def test_worker_killed_after_ready_is_replaced_forever(broker_url, exchange, unique):
    """Seven kill -9s, each of a worker that had served calls: replaced every time,
    manager runs on."""
    name = f"k{unique}"
    proc = _start_in_own_group(
        "from busapp.runtime.manager import ServiceManager; from tests.apps import make_app; "
        f"app = make_app({name!r}); "
        f"m = ServiceManager(app.service_class, 1, {exchange!r}, {broker_url!r}, app.qkwargs()); "
        "m.max_backoff = 1.0; m.run()"
    )
    try:
        victims: list[int] = []
        gaps: list[float] = []  # from each kill until a new worker answered
        killed_at: float | None = None
        for _ in range(7):
            pid = _served_by_new_pid(broker_url, exchange, name, victims)
            if killed_at is not None:
                gaps.append(time.monotonic() - killed_at)
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            victims.append(pid)
        survivor = _served_by_new_pid(broker_url, exchange, name, victims)
        gaps.append(time.monotonic() - killed_at)  # the 7th kill's replacement counts too
        print(f"\n[figure] 7 kill -9s of ready workers: served again after "
              f"{min(gaps):.1f}-{max(gaps):.1f}s each (max_backoff 1s)")
        assert proc.poll() is None, "the manager gave up on workers that had been ready"
        assert survivor not in victims
        with Client(broker_url, exchange) as bus:
            assert bus.call(f"{name}.add", 2, 3) == 5
    finally:
        _kill_group(proc)
        delete_queues(broker_url, exchange, name)


def _served_by_new_pid(url: str, exchange: str, name: str, old: list[int]) -> int:
    """Call ``<name>.pid`` until a worker that is not in ``old`` answers; return its pid."""
    end = time.monotonic() + 30
    while True:
        pid = wait_until_served(url, exchange, f"{name}.pid")
        if pid not in old:
            return pid
        assert time.monotonic() < end, f"no new worker replaced {old[-1]}"


class _ReadyThenExit:
    """A stand-in worker: becomes ready, stays up ``uptime`` seconds, then dies (exit 1)."""

    uptime = 0.0

    def __init__(self, **kwargs):
        pass

    def run(self):
        self.ready_callback()
        time.sleep(self.uptime)
        os._exit(1)


def _restart_delays(manager: ServiceManager, deaths: int) -> list[float]:
    """Run ``manager`` in a thread until its worker died ``deaths`` times;
    the back-offs it chose."""
    with capture_logs() as logs:
        runner = threading.Thread(target=manager.run, daemon=True)
        runner.start()
        end = time.monotonic() + 60
        while (len(delays := [e["restart_in_s"] for e in logs if "restart_in_s" in e]) < deaths
               and runner.is_alive() and time.monotonic() < end):
            time.sleep(0.05)
        manager.stop()
        runner.join(30)
    return delays[:deaths]


def test_ready_workers_dying_at_once_are_replaced_without_backoff(redis_url):
    """Ready workers dying as soon as they are ready: each is started again within the
    slot's restart rate (4 a second), never after a growing back-off; never a crash loop."""
    manager = ServiceManager(_ReadyThenExit, 1, "x", redis_url, None)
    manager.max_backoff, manager.max_fast_failures = 30.0, 2
    delays = _restart_delays(manager, 6)
    assert len(delays) == 6
    assert max(delays) <= 1 / manager.restarts_per_second, delays


class _ReadyForAWhile(_ReadyThenExit):
    uptime = 0.4


def test_worker_that_was_ready_is_replaced_at_once(redis_url):
    """A ready worker that stayed up longer than the restart interval is replaced with no
    wait at all, every time."""
    manager = ServiceManager(_ReadyForAWhile, 1, "x", redis_url, None)
    assert _restart_delays(manager, 3) == [0.0, 0.0, 0.0]


class _NeverReady:
    """A stand-in worker that dies before it is ever ready (a start-up bug)."""

    def __init__(self, **kwargs):
        pass

    def run(self):
        os._exit(1)


def test_backoff_grows_for_workers_that_never_became_ready(redis_url):
    """Workers dying before ready wait 0.5, 1, 2 s... (a start-up bug is not retried hot)."""
    manager = ServiceManager(_NeverReady, 1, "x", redis_url, None)
    manager.max_fast_failures = 10
    assert _restart_delays(manager, 3) == [0.5, 1.0, 2.0]


def test_backoff_delay_doubles_up_to_the_cap():
    """backoff_delay: 0.5 s after the first death, doubling, never above the cap."""
    assert [backoff_delay(n, 5.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 5.0]
