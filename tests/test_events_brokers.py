"""Events and timers under ``busapp run``, on the embedded broker, Redis and RabbitMQ.

The Apps are in tests/event_apps.py; their handlers append ``<pid> <what>`` lines to files
in the test's directory, so the test counts what each App (and each worker) handled.
The longer runs of the same properties (1,000 events with a worker killed, a timer for
60 s) are benchmarks/events.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from busapp import Client, names
from busapp.transport import open_transport
from busapp.transport.embedded import ensure_embedded_broker, stop_embedded_broker
from tests import event_apps
from tests._services import delete_queues

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "event_apps.py"


@pytest.fixture(params=["embedded", "redis", "amqp"])
def broker(request: pytest.FixtureRequest, tmp_path: Path):
    """Each broker in turn: its URL (the embedded one private to the test)."""
    if request.param != "embedded":
        yield request.getfixturevalue(f"{request.param}_url")
        return
    state = str(tmp_path / ".busapp")
    yield ensure_embedded_broker(state)
    stop_embedded_broker(state)


class Runs:
    """``busapp run`` processes of the test, their logs, and the queues to delete after."""

    def __init__(self, url: str, exchange: str, directory: Path) -> None:
        self.url, self.exchange, self.dir = url, exchange, directory
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.queues: list[str] = []

    def start(self, app: str, workers: int) -> subprocess.Popen:
        log = self.dir / f"run-{app}-{len(self.procs)}.log"
        env = {**os.environ, "EVENT_TEST_DIR": str(self.dir)}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "busapp", "run", f"{APPS}:{app}", "--workers",
                 str(workers), "--broker", self.url, "--exchange", self.exchange,
                 "--graceful-timeout", "5", "--log-format", "json"],
                cwd=self.dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.procs.append((proc, log))
        queue = f"{self.exchange}.{app}"
        target = getattr(event_apps, app)
        for entry in target.event_handlers:
            shared = entry.queue_name(queue)
            self.queues += [shared, names.dead_letter(shared),
                            *(names.delay_queue(shared, ms) for ms in (1000, 2000, 4000))]
        return proc

    def wait_ready(self, workers: int, timeout: float = 30.0) -> None:
        """Until ``workers`` workers (over all runs) logged that they are ready."""
        deadline = time.monotonic() + timeout
        while sum(log.read_bytes().count(b'"worker ready"') for _, log in self.procs) < workers:
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(log.read_text(errors="replace")[-3000:] for _, log in self.procs)

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        delete_queues(self.url, self.exchange, *self.queues)


@pytest.fixture
def runs(broker: str, tmp_path: Path, unique: str):
    """The test's ``busapp run`` processes (stopped, and their queues deleted, after it)."""
    started = Runs(broker, f"test-{unique}", tmp_path)
    yield started
    started.stop()


def until(done, timeout: float = 20.0) -> bool:
    """Poll ``done()`` every 50 ms until true or ``timeout``; its last value."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(done())


def lines(runs: Runs, file: str) -> list[tuple[int, str]]:
    os.environ["EVENT_TEST_DIR"] = str(runs.dir)
    return event_apps.read(file)


def test_each_app_handles_each_event_once_and_broadcast_reaches_every_worker(runs: Runs) -> None:
    """Two subscriber Apps of 3 workers each: each handles every event once; the broadcast
    handler runs on each of its 3 workers."""
    runs.start("billing", 3)
    runs.start("shipping", 3)
    runs.wait_ready(6)
    count = 200
    with Client(runs.url, runs.exchange) as bus:
        for n in range(count):
            bus.emit("orders.placed", order_id=n)
    assert until(lambda: len(lines(runs, "shipping-broadcast")) >= 3 * count
                 and len(lines(runs, "billing")) >= count
                 and len(lines(runs, "shipping")) >= count), runs.logs()
    time.sleep(0.5)  # nothing more comes
    for app in ("billing", "shipping"):
        handled = Counter(what for _, what in lines(runs, app))
        assert sorted(int(n) for n in handled) == list(range(count)), app
        assert set(handled.values()) == {1}, f"{app} handled some event twice"
    broadcast = lines(runs, "shipping-broadcast")
    by_event: dict[str, set[int]] = {}
    for pid, what in broadcast:
        by_event.setdefault(what, set()).add(pid)
    assert len(broadcast) == 3 * count
    assert {len(pids) for pids in by_event.values()} == {3}
    print(f"\n[figure] {count} events, 2 Apps x 3 workers: 0 lost, 0 duplicates; broadcast "
          f"{len(broadcast)} runs over {len({p for p, _ in broadcast})} workers")


def test_failing_handler_is_retried_then_dead_lettered_while_others_flow(runs: Runs) -> None:
    """A handler failing twice succeeds on its third try; one failing always is
    dead-lettered after its retries; other events flow meanwhile."""
    runs.start("flaky", 2)
    runs.wait_ready(2)
    emitted = time.time()
    with Client(runs.url, runs.exchange) as bus:
        bus.emit("jobs.flaky", job="a")
        bus.emit("jobs.broken", job="b")
        for n in range(50):
            bus.emit("jobs.fine", job=str(n))
    assert until(lambda: len(lines(runs, "fine")) == 50), runs.logs()
    fine_done = time.time()
    assert until(lambda: lines(runs, "flaky") != [] and len(lines(runs, "broken")) == 3,
                 timeout=30), runs.logs()
    tries = [float(t) for _, t in lines(runs, "tries-a")]
    assert len(tries) == 3 and fine_done < tries[-1]  # the others did not wait for it
    gaps = [round(b - a, 1) for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps  # 1 s, then 2 s
    dead = names.dead_letter(f"{runs.exchange}.flaky.event.jobs.broken.broken")
    transport = open_transport(runs.url)
    transport.connect()
    got: list = []
    try:
        transport.consume(dead, got.append)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            transport.drain(0.1)
    finally:
        transport.close()
    assert [json.loads(d.body) for d in got] == [{"job": "b"}]
    assert got[0].headers[names.ERROR_HEADER] == "RuntimeError: b always fails"
    print(f"\n[figure] fail-twice job done {tries[-1] - emitted:.1f}s after emit; "
          f"50 other events done in {fine_done - emitted:.1f}s; always-failing one "
          f"dead-lettered after 3 tries")


@pytest.mark.slow  # ~10 s per broker
@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)  # embedded: Redis's code
def test_timer_runs_once_per_tick_across_two_runs_and_a_kill(runs: Runs) -> None:
    """every=1 on two ``busapp run`` of 2 workers each: one run per tick; kill -9 of the worker
    running it: the next tick comes within 2 intervals."""
    runs.start("clock", 2)
    runs.start("clock", 2)
    runs.wait_ready(4)
    assert until(lambda: len(lines(runs, "beat")) >= 3, timeout=10), runs.logs()
    holder = lines(runs, "beat")[-1][0]
    os.kill(holder, signal.SIGKILL)
    killed = time.time()
    time.sleep(3.5)
    beats = lines(runs, "beat")
    ticks = [float(t) for _, t in beats]
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    after = [t for t in ticks if t > killed]
    print(f"\n[figure] timer every=1, 2 runs x 2 workers: {len(ticks)} runs, smallest "
          f"gap {min(gaps):.3f}s; after kill -9 of the holder the next run came "
          f"{after[0] - killed:.2f}s later")
    assert min(gaps) > 0.9, "a tick ran twice"
    assert after and after[0] - killed < 2.0
    assert len({pid for pid, _ in beats}) >= 2  # another worker took over


def _bound(url: str, exchange: str) -> set[str]:
    transport = open_transport(url)
    transport.connect()
    try:
        return transport.bound_queues(exchange) or set()
    finally:
        transport.close()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_broadcast_queues_go_with_their_workers_on_redis(runs: Runs) -> None:
    """On Redis, a killed worker's broadcast queue is deleted by its manager, and a stopped
    worker deletes its own (RabbitMQ deletes auto-delete queues itself)."""
    proc = runs.start("shipping", 2)
    runs.wait_ready(2)
    pattern = f"{runs.exchange}.shipping.event.orders.placed.forget."
    own = {q for q in _bound(runs.url, runs.exchange) if q.startswith(pattern)}
    assert len(own) == 2
    victim = int(next(iter(own)).rsplit(".", 1)[-1])
    os.kill(victim, signal.SIGKILL)
    assert until(lambda: not any(q.endswith(f".{victim}")
                                 for q in _bound(runs.url, runs.exchange)), timeout=10)
    runs.wait_ready(3)  # the manager's new worker
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert not {q for q in _bound(runs.url, runs.exchange) if q.startswith(pattern)}
