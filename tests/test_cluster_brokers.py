"""Real broker clusters, built by these tests (SPEC §11): callers and workers through a node loss.

Four threads call a service without pause while the node leading its quorum queue is
killed (a 3-node RabbitMQ cluster), or while the Redis master is killed and the
Sentinels fail over to the replica. Every call ends ``ok``, with a typed busapp error, or
``hung`` (not back within its timeout + 5 s); a request is ``lost`` if the broker took it
(its publish returned: confirmed on a multi-node RabbitMQ URL) and no handler ever ran it.
The figures are printed (``-s``) and copied to docs/explanation/faults.md.

Marked ``cluster`` (``pytest -m "not cluster"`` skips them; ``.ci/run`` runs them); the
clusters are private (tests/_clusters.py) and thrown away after the module.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from busapp import App, Client
from busapp.errors import BusappError
from tests._clusters import RabbitCluster, RedisSentinels
from tests._services import running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
#: Seconds each call may wait for its reply.
CALL_TIMEOUT = 10.0
#: A call not back this long after it started is hung.
HUNG_AFTER = CALL_TIMEOUT + 5.0
THREADS = 4


@pytest.fixture(scope="module")
def rabbit_cluster(tmp_path_factory):
    """Three RabbitMQ nodes of this module's own, clustered (killed after the module)."""
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"))
    try:
        cluster.start()
        print(f"\n[figure] 3-node RabbitMQ cluster built in {cluster.built_in:.1f}s")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory):
    """A Redis primary + replica and 3 Sentinels of this module's own (killed after it)."""
    group = RedisSentinels(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        group.start()
        print(f"\n[figure] Redis primary + replica + 3 Sentinels up in {group.built_in:.1f}s")
        yield group
    finally:
        group.stop()


def make_app(name: str, served: Path, queue_type: str | None = None) -> App:
    """A service whose ``echo(token)`` notes each token it runs for in ``served``."""
    app = App(name, queue_type=queue_type)

    @app.method()
    def ping() -> str:
        return "pong"

    @app.method()
    def echo(token: str) -> str:
        fd = os.open(served, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{token}\n".encode())
        finally:
            os.close(fd)
        return token

    return app


class TallyingClient(Client):
    """A Client that notes the token of each request whose publish returned (broker took it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken: set[str] = set()

    def _publish(self, body: Any, routing_key: str, *, exchange: str, **props: Any) -> None:
        super()._publish(body, routing_key, exchange=exchange, **props)
        if props.get("reply_to"):
            request = body if isinstance(body, dict) else json.loads(body)
            self.taken.add(request["params"][0])


@attrs.define
class Outcome:
    kind: str  # ok, typed, untyped, wrong
    thread: int
    started: float
    ended: float
    error: str = ""
    token: str = ""


class Load:
    """``THREADS`` threads calling ``routing_key`` on one shared client until :meth:`finish`."""

    def __init__(self, bus: TallyingClient, routing_key: str) -> None:
        self.bus = bus
        self.routing_key = routing_key
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._caller, args=(i,), daemon=True)
                        for i in range(THREADS)]

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def _caller(self, index: int) -> None:
        serial = 0
        while not self.stopping.is_set():
            token = f"{index}-{serial}"
            serial += 1
            started = time.monotonic()
            kind, error = "ok", ""
            try:
                if self.bus.call(self.routing_key, token, timeout=CALL_TIMEOUT) != token:
                    kind = "wrong"
            except BusappError as exc:
                kind, error = "typed", type(exc).__name__
            except Exception as exc:  # noqa: BLE001 - counted: a caller must only see busapp errors
                kind, error = "untyped", repr(exc)
            self.outcomes.append(Outcome(kind, index, started, time.monotonic(), error, token))
            if kind != "ok":
                time.sleep(0.1)

    def recovered_all(self, since: float) -> bool:
        """Every thread has had a call started after ``since`` succeed."""
        return len({o.thread for o in self.outcomes if o.kind == "ok" and o.started >= since}) \
            == THREADS

    def finish(self) -> int:
        """Stop the callers; how many did not come back in time (hung)."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(HUNG_AFTER + 5)
        return sum(thread.is_alive() for thread in self.threads)


def run_through_fault(load: Load, fault, served: Path, label: str) -> dict[str, Any]:
    """Call for a while, inject ``fault()``, call until every thread recovered; the figures."""
    time.sleep(3)
    assert any(o.kind == "ok" for o in load.outcomes), \
        f"no call succeeded before the fault: {load.outcomes[:5]}"
    t_fault = time.monotonic()
    fault()
    end = t_fault + 60
    while not load.recovered_all(t_fault) and time.monotonic() < end:
        time.sleep(0.2)
    time.sleep(2)  # and a little steady state after it
    hung_threads = load.finish()
    # Requests still queued are served now;
    # then whatever the broker took and no handler ran is lost.
    deadline = time.monotonic() + CALL_TIMEOUT + 5
    while time.monotonic() < deadline:
        ran = served.read_text().split() if served.exists() else []
        if load.bus.taken <= set(ran):
            break
        time.sleep(0.5)
    kinds = collections.Counter(o.kind for o in load.outcomes)
    first_ok = {}
    for o in sorted(load.outcomes, key=lambda o: o.ended):
        if o.kind == "ok" and o.started >= t_fault:
            first_ok.setdefault(o.thread, o.ended - t_fault)
    figures = {
        "calls": len(load.outcomes), "ok": kinds["ok"], "typed": kinds["typed"],
        "untyped": kinds["untyped"], "wrong": kinds["wrong"],
        "lost": len(load.bus.taken - set(ran)),
        "hung": hung_threads + sum(o.ended - o.started > HUNG_AFTER for o in load.outcomes),
        "duplicates": len(ran) - len(set(ran)),
        "errors": dict(collections.Counter(o.error for o in load.outcomes if o.error)),
        "recovered_s": max(first_ok.values()) if len(first_ok) == THREADS else None,
    }
    lost = load.bus.taken - set(ran)
    figures["lost_calls"] = [
        (o.kind, o.error, round(o.started - t_fault, 3), round(o.ended - t_fault, 3))
        for o in load.outcomes if o.token in lost]
    print(f"\n[figure] {label}: {figures['calls']} calls by {THREADS} threads: ok {figures['ok']}, "
          f"typed errors {figures['typed']} {figures['errors']}, lost {figures['lost']}, "
          f"hung {figures['hung']}, served twice {figures['duplicates']}; every thread "
          f"served again {figures['recovered_s'] and round(figures['recovered_s'], 1)}s "
          f"after the fault")
    return figures


def check(figures: dict[str, Any]) -> None:
    assert figures["untyped"] == 0 and figures["wrong"] == 0, figures
    assert figures["lost"] == 0, figures["lost_calls"]
    assert figures["hung"] == 0, figures
    assert figures["recovered_s"] is not None, f"a calling thread never recovered: {figures}"


def test_rabbitmq_cluster_loses_the_quorum_queue_leader(rabbit_cluster, tmp_path, unique):
    """Killing the node leading the RPC quorum queue: 0 lost, 0 hung, every caller served again."""
    served = tmp_path / "served"
    app = make_app(f"c{unique}", served, queue_type="quorum")
    exchange = f"test-{unique}"
    url = rabbit_cluster.url
    with running(lambda: app.run(url, exchange=exchange, workers=2), ready=f"{app.name}.ping",
                 url=url, exchange=exchange), TallyingClient(url, exchange) as bus:
        leader = rabbit_cluster.leader_of(app.queue_for(exchange))
        load = Load(bus, f"{app.name}.echo").start()
        listed = rabbit_cluster.nodes.index(leader) + 1
        figures = run_through_fault(load, lambda: rabbit_cluster.kill(leader), served,
                                    f"RabbitMQ: the quorum queue's leader (node {listed} of the "
                                    f"URL's 3) killed")
        assert rabbit_cluster.leader_of(app.queue_for(exchange)) is not leader
    check(figures)


def test_sentinel_url_everywhere_then_failover(sentinels, tmp_path, unique, monkeypatch):
    """sentinel:// in workers, Client, CLI and the storage backend;
    through a failover 0 lost, 0 hung."""
    served = tmp_path / "served"
    app = make_app(f"s{unique}", served)
    exchange = f"test-{unique}"
    url = sentinels.url
    # Messages a worker had taken when its master died come back after this
    # (see docs/explanation/delivery.md).
    monkeypatch.setenv("BUSAPP_VISIBILITY_TIMEOUT", "5")
    with running(lambda: app.run(url, exchange=exchange, workers=2), ready=f"{app.name}.ping",
                 url=url, exchange=exchange), TallyingClient(url, exchange) as bus:
        cli = subprocess.run([sys.executable, "-m", "busapp", "call", f"{app.name}.echo", '["cli"]',
                              "--broker", url, "--exchange", exchange, "--timeout", "10"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and json.loads(cli.stdout) == "cli", cli.stderr

        from busapp.storage.backends import open_backend

        backend = open_backend(f"{url}&prefix=busapp-test-{unique}")
        backend.save("Host", "h1", {"address": "h1"})

        primary = sentinels.master_port()
        load = Load(bus, f"{app.name}.echo").start()
        figures = run_through_fault(load, sentinels.primary.stop, served,
                                    "Redis Sentinel: the master killed, the replica promoted")
        assert sentinels.master_port() != primary
        assert backend.get_versioned("Host", "h1") == ({"address": "h1"}, 1)  # the new master
        backend.drop()
        backend.close()
    check(figures)
