"""Nothing of a worker outlives it on the broker (private brokers).

Each worker has queues of its own (its control queue: any queue it alone consumes) bound
to the service's exchange. However a worker ends (SIGTERM, kill -9 of it, of its manager,
or of the whole ``busapp run`` at once), its own queues and their bindings go: removed by
the worker, by its manager, by the broker (RabbitMQ), or swept by the next manager once
the dead worker's heartbeat expired (Redis). ``benchmarks/leftovers.py`` runs 20 such
cycles and prints the figure of docs/explanation/faults.md.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests._private_brokers import PrivateRabbitMQ, PrivateRedis
from tests.test_reliability import _stop
from tests.test_storms import run_service, worker_pids

WORKERS = 2
#: A short heartbeat expiry, so the sweep of a run killed whole is seen within the test.
TTL = "1"


def bindings(server: PrivateRedis | PrivateRabbitMQ, exchange: str) -> list[tuple[str, str]]:
    """Every binding on ``exchange``: ``(routing key, queue)``, sorted."""
    if isinstance(server, PrivateRedis):
        import redis

        members = redis.Redis(port=server.port).smembers(f"_kombu.binding.{exchange}")
        rows = [m.decode().split("\x06\x16") for m in members]
        return sorted((row[0], row[-1]) for row in rows)
    out = server.ctl("list_bindings", "-q", "--no-table-headers", "source_name",  # private
                     "destination_name", "routing_key").stdout
    rows = [line.split("\t") for line in out.splitlines() if line.startswith(exchange + "\t")]
    return sorted((row[2], row[1]) for row in rows)


def own(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The bindings of workers' own (control) queues among ``found``."""
    return [b for b in found if b[1].startswith("busapp.control.")]


def owners(found: list[tuple[str, str]]) -> set[int]:
    """The pids whose own queues ``found`` holds."""
    return {int(queue.rsplit(".", 1)[-1]) for _, queue in own(found)}


def wait_for(condition, deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.1)


def test_a_stopped_run_leaves_no_binding(private_broker, unique, monkeypatch):
    """busapp run --workers 2 stopped by SIGTERM (exit 0): its workers' control queues and
    their 4 bindings are gone; the service's queue stays bound."""
    url, name, exchange = private_broker.url, f"g{unique}", f"test-{unique}"
    proc = run_service(url, exchange, name, WORKERS)
    running = bindings(private_broker, exchange)
    assert owners(running) == set(worker_pids(proc.pid))
    assert len(own(running)) == 2 * WORKERS
    log = _stop(proc)
    assert proc.returncode == 0, log[-3000:]
    assert bindings(private_broker, exchange) == [b for b in running if b not in own(running)]


def test_a_killed_worker_leaves_no_binding(private_broker, unique):
    """kill -9 of a worker: its manager (Redis) or the broker (RabbitMQ) removes its own
    queues; the bindings are those of the live workers."""
    url, name, exchange = private_broker.url, f"w{unique}", f"test-{unique}"
    proc = run_service(url, exchange, name, WORKERS)
    try:
        victim = worker_pids(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in owners(bindings(private_broker, exchange))
                 and len(worker_pids(proc.pid)) == WORKERS)
        wait_for(lambda: owners(bindings(private_broker, exchange)) == set(worker_pids(proc.pid)))
    finally:
        _stop(proc)


def test_a_killed_manager_leaves_no_binding(private_broker, unique):
    """kill -9 of busapp run's manager: its workers get SIGTERM from the kernel and remove
    their own queues as they stop."""
    url, name, exchange = private_broker.url, f"m{unique}", f"test-{unique}"
    proc = run_service(url, exchange, name, WORKERS)
    workers = worker_pids(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_for(lambda: not any(_alive(pid) for pid in workers))
    wait_for(lambda: own(bindings(private_broker, exchange)) == [])


def test_a_run_killed_whole_is_swept_by_the_next(private_broker, unique, monkeypatch):
    """kill -9 of the manager and its workers at once: nothing removes their own queues
    then (Redis), so the next manager does once their heartbeat expired; RabbitMQ deletes
    them as their connections die."""
    monkeypatch.setenv("BUSAPP_OWN_QUEUE_TTL", TTL)
    url, name, exchange = private_broker.url, f"k{unique}", f"test-{unique}"
    proc = run_service(url, exchange, name, WORKERS)
    dead = set(worker_pids(proc.pid))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    time.sleep(float(TTL) + 0.5)
    proc = run_service(url, exchange, name, WORKERS)
    try:
        wait_for(lambda: not owners(bindings(private_broker, exchange)) & dead)
        assert owners(bindings(private_broker, exchange)) == set(worker_pids(proc.pid))
    finally:
        _stop(proc)


@pytest.mark.parametrize("private_broker", ["redis"], indirect=True)
def test_live_workers_sweep_what_the_dead_left(private_broker, unique, monkeypatch):
    """With no new manager starting, a live worker sweeps the own queues of a run killed
    whole within about two heartbeat expiries (Redis)."""
    monkeypatch.setenv("BUSAPP_OWN_QUEUE_TTL", TTL)
    url, exchange = private_broker.url, f"test-{unique}"
    survivor = run_service(url, exchange, f"s{unique}", WORKERS)
    victim = run_service(url, exchange, f"v{unique}", WORKERS)
    try:
        dead = set(worker_pids(victim.pid))
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        assert owners(bindings(private_broker, exchange)) & dead  # nothing removed them yet
        wait_for(lambda: not owners(bindings(private_broker, exchange)) & dead, deadline=10)
    finally:
        _stop(survivor)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
