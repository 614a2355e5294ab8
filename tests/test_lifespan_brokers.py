"""§8 on real brokers under `busapp run --workers 2`:
hooks per worker pid, scopes, middleware, routers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from busapp import Client
from busapp.errors import InternalError, RemoteProcedureCallError
from tests._services import delete_queues, wait_until_served

ROOT = Path(__file__).resolve().parent.parent


def _lines(path: Path) -> list[tuple[str, int]]:
    text = path.read_text() if path.exists() else ""
    return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in text.splitlines()]


def _wait_for(path: Path, what: str, count: int, deadline: float = 30.0) -> list[int]:
    end = time.monotonic() + deadline
    while True:
        pids = [pid for step, pid in _lines(path) if step.startswith(what)]
        if len(pids) >= count or time.monotonic() > end:
            return pids
        time.sleep(0.05)


@pytest.fixture
def served(broker_url, exchange, unique, tmp_path):
    """`busapp run tests/lifespan_app.py --workers 2`; yields
    (proc, name, url, exchange, log path)."""
    name, log = f"life{unique}", tmp_path / "steps.log"
    env = dict(os.environ, LIFESPAN_APP=name, LIFESPAN_LOG=str(log))
    proc = subprocess.Popen([sys.executable, "-m", "busapp", "run", "tests/lifespan_app.py:app",
                             "--workers", "2", "--broker", broker_url, "--exchange", exchange,
                             "--graceful-timeout", "10"], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until_served(broker_url, exchange, f"{name}.ping")
        assert len(_wait_for(log, "startup", 2)) == 2
        yield proc, name, broker_url, exchange, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        delete_queues(broker_url, exchange, name)


def test_hooks_and_worker_scope_once_per_worker_pid_and_shutdown_on_sigterm(served):
    """Each worker (not the manager) makes its conn then runs start-up once;
    SIGTERM runs shut-down then teardown."""
    proc, name, url, exchange, log = served
    started = _wait_for(log, "startup", 2)
    assert len(set(started)) == 2 and proc.pid not in started
    for pid in started:
        steps = [step for step, p in _lines(log) if p == pid]
        assert steps[:2] == ["conn made", f"startup conn-{pid}"]
    with Client(url, exchange) as bus:
        answers = [bus.call(f"{name}.whoami", i) for i in range(20)]
    for answer in answers:
        assert answer["pid"] in started and answer["conn"] == f"conn-{answer['pid']}"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    steps = _lines(log)
    assert [step for step, _ in steps].count("cursor made") == 20
    assert [step for step, _ in steps].count("cursor closed") == 20
    for pid in started:
        mine = [step for step, p in steps if p == pid]
        assert mine[-2:] == [f"shutdown conn-{pid}", "conn closed"]
        assert mine.count("startup " + f"conn-{pid}") == 1


def test_call_scope_middleware_and_router_on_a_broker(served):
    """Per-call dependencies, middleware order,
    error answers and router middleware over the broker."""
    _proc, name, url, exchange, _log = served
    with Client(url, exchange) as bus:
        cursors = [(a["pid"], a["cursor"]) for a in (bus.call(f"{name}.whoami") for _ in range(6))]
        assert len(set(cursors)) == 6  # a new cursor for every call
        assert bus.call(f"{name}.routed") == {"mw": ["outer", "router"]}
        with pytest.raises(RemoteProcedureCallError, match="denied by policy") as info:
            bus.call(f"{name}.whoami", "deny")
        assert info.value.code == -32001
        with pytest.raises(InternalError, match="policy table"):
            bus.call(f"{name}.whoami", "crash")
