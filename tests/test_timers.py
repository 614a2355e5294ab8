"""Timers: schedules, registration, client.tick, and the lease-holding scheduler (in memory)."""

from __future__ import annotations

import datetime
import threading
import time
import uuid

import pytest

from busapp import App, Router
from busapp.core.timers import Schedule
from busapp.runtime.timers import TimerScheduler, lease_ttl
from busapp.runtime.worker import Worker
from busapp.testing import TestClient


def _utc(*args: int) -> float:
    return datetime.datetime(*args, tzinfo=datetime.UTC).timestamp()


# -- schedules -------------------------------------------------------------------------------


def test_every_ticks_at_multiples_of_its_interval() -> None:
    """every=S: the ticks are the multiples of S since the epoch (every host agrees)."""
    schedule = Schedule.checked(every=30)
    assert schedule.next_after(_utc(2026, 1, 1, 0, 0, 10)) == _utc(2026, 1, 1, 0, 0, 30)
    assert schedule.next_after(_utc(2026, 1, 1, 0, 0, 30)) == _utc(2026, 1, 1, 0, 1, 0)
    assert schedule.latest(_utc(2026, 1, 1, 0, 0, 59)) == _utc(2026, 1, 1, 0, 0, 30)


def test_cron_ticks_at_its_times_in_utc() -> None:
    """cron='*/5 * * * *': the next tick is the next multiple of five minutes, in UTC."""
    schedule = Schedule.checked(cron="*/5 * * * *")
    assert schedule.next_after(_utc(2026, 1, 1, 9, 1)) == _utc(2026, 1, 1, 9, 5)
    assert schedule.latest(_utc(2026, 1, 1, 9, 5)) == _utc(2026, 1, 1, 9, 5)
    assert schedule.interval(_utc(2026, 1, 1, 9, 1)) == 300


@pytest.mark.parametrize("options", [{}, {"every": 1, "cron": "* * * * *"}, {"every": 0},
                                     {"every": "5"}, {"cron": "every day"}])
def test_bad_schedule_is_refused_at_registration(options) -> None:
    """Neither or both of every/cron, a bad interval or cron expression: ValueError."""
    def sweep() -> None: ...

    with pytest.raises(ValueError):
        App("reg").add_timer(sweep, **options)


def test_timer_returns_the_function_unchanged() -> None:
    """@app.timer hands back the very function it decorates."""
    def sweep() -> None: ...

    assert App("reg").timer(every=5)(sweep) is sweep


def test_timer_with_a_parameter_nothing_fills_fails_at_build() -> None:
    """A timer parameter that is neither injectable nor a dependency fails when the service is
    built, not at the first tick."""
    app = App("unfilled")

    @app.timer(every=5)
    def sweep(limit) -> None: ...

    with pytest.raises(ValueError, match="limit"):
        app.test_client()


def test_lease_ttl_follows_the_shortest_interval() -> None:
    """A lease lasts 0.6 of the shortest interval, between 0.3 s and 6 s."""
    assert (lease_ttl(1), lease_ttl(0.1), lease_ttl(3600)) == (0.6, 0.3, 6.0)


# -- client.tick -----------------------------------------------------------------------------


def test_tick_runs_the_timer_once_on_the_serve_path() -> None:
    """client.tick runs one tick, through middleware (kind 'timer') and dependencies."""
    app, seen, kinds = App("ticked"), [], []

    @app.dependency("ledger")
    def ledger():
        return "ledger"

    @app.middleware
    def spy(call, call_next):
        kinds.append((call.kind, call.method))
        return call_next(call)

    @app.timer(every=60)
    def sweep(ledger, bus) -> None:
        seen.append((ledger, bus is not None))

    with app.test_client() as client:
        client.tick("sweep")
    assert (seen, kinds) == ([("ledger", True)], [("timer", "sweep")])


def test_router_timer_joins_the_app() -> None:
    """A router's timer is the App's once included."""
    app, router, seen = App("routed"), Router(), []

    @router.timer(every=60)
    def report() -> None:
        seen.append(1)

    app.include(router)
    with app.test_client() as client:
        client.tick("report")
    assert seen == [1]


def test_failing_timer_raises_from_tick() -> None:
    """A timer that raises: client.tick raises it (on a broker it is logged)."""
    app = App("failing")

    @app.timer(every=60)
    def sweep() -> None:
        raise RuntimeError("sweep broke")

    with app.test_client() as client, pytest.raises(RuntimeError, match="sweep broke"):
        client.tick("sweep")


def test_tick_of_an_unknown_timer_raises_key_error() -> None:
    """client.tick of a name no registered App has raises KeyError listing the known ones."""
    app = App("known")

    @app.timer(every=60)
    def sweep() -> None: ...

    with app.test_client() as client, pytest.raises(KeyError, match="known: sweep"):
        client.tick("nope")


# -- the scheduler ---------------------------------------------------------------------------


def clock_app(period: float, runs: list, run_for: float = 0.0) -> App:
    """An App with one timer every ``period`` that records ``(worker pid label, tick start)``."""
    app = App("clock")

    @app.timer(every=period)
    def beat(message) -> None:
        runs.append((threading.current_thread().name, time.time(), message.body["tick"]))
        time.sleep(run_for)

    return app


def scheduler(app: App, url: str) -> tuple[TimerScheduler, Worker]:
    """A worker of ``app`` on the memory broker ``url`` and its (not started) scheduler."""
    worker = Worker(app.service_class(app.exchange, url, app.qkwargs()))
    worker.attach()
    return TimerScheduler(url, f"busapp.timers.{app.queue}", worker.timer_pipelines), worker


def test_only_the_lease_holder_runs_the_ticks() -> None:
    """Two schedulers of one App: each tick runs once, by the one holding the lease."""
    runs: list = []
    app, url = clock_app(0.2, runs), f"memory://timers-{uuid.uuid4().hex}"
    (first, _), (second, _) = scheduler(app, url), scheduler(app, url)
    first.start()
    second.start()
    time.sleep(1.3)
    first.stop(5)
    second.stop(5)
    ticks = [tick for _, _, tick in runs]
    assert len(ticks) >= 4 and len(ticks) == len(set(ticks))
    ran = [s.states["beat"].last_at is not None for s in (first, second)]
    assert ran == [True, False]


def test_takeover_after_the_holder_stops() -> None:
    """When the holder stops, the other scheduler runs the next tick, and no tick twice."""
    runs: list = []
    app, url = clock_app(0.2, runs), f"memory://timers-{uuid.uuid4().hex}"
    (first, _), (second, _) = scheduler(app, url), scheduler(app, url)
    first.start()
    time.sleep(0.5)
    second.start()
    time.sleep(0.5)
    first.stop(5)
    stopped = time.time()
    time.sleep(0.8)
    second.stop(5)
    after = [start for _, start, _ in runs if start > stopped]
    ticks = [tick for _, _, tick in runs]
    assert after and after[0] - stopped < 0.5
    assert len(ticks) == len(set(ticks))


def test_a_run_longer_than_the_interval_delays_the_next_tick() -> None:
    """Runs of one timer never overlap: the tick after a long run waits until it ended."""
    runs: list = []
    app, url = clock_app(0.2, runs, run_for=0.5), f"memory://timers-{uuid.uuid4().hex}"
    sched, _ = scheduler(app, url)
    sched.start()
    time.sleep(1.8)
    sched.stop(5)
    starts = [start for _, start, _ in runs]
    assert len(starts) >= 2
    assert all(b - a >= 0.5 for a, b in zip(starts, starts[1:], strict=False))


def test_eager_timer_runs_when_taken_over() -> None:
    """eager=True: a run as soon as the worker takes the timers over."""
    app, runs = App("eager"), []

    @app.timer(every=3600, eager=True)
    def report() -> None:
        runs.append(time.time())

    url = f"memory://timers-{uuid.uuid4().hex}"
    sched, _ = scheduler(app, url)
    started = time.time()
    sched.start()
    time.sleep(0.5)
    sched.stop(5)
    assert len(runs) == 1 and runs[0] - started < 0.5


def test_status_reports_last_and_next_run() -> None:
    """The worker's status lists each timer with its schedule, last and next run."""
    runs: list = []
    app, url = clock_app(0.2, runs), f"memory://timers-{uuid.uuid4().hex}"
    sched, _ = scheduler(app, url)
    sched.start()
    time.sleep(0.6)
    report = sched.report()["beat"]
    sched.stop(5)
    assert report["schedule"] == "every 0.2s" and report["holder"] is True
    assert report["last"] and report["outcome"] == "ok" and report["next"] > report["last"]


def test_test_client_runs_no_clock() -> None:
    """Under the test client no timer runs by itself."""
    runs: list = []
    with TestClient(clock_app(0.05, runs)):
        time.sleep(0.3)
    assert runs == []
