"""The worker core: no deadlock on nested self-calls, no stall behind a slow handler,
one serve path for the test client and a broker worker, kombu behind one module."""

from __future__ import annotations

import pathlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from busapp import App, Client
from busapp.runtime.pipeline import Pipeline
from tests._services import run_app

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _nesting_app(name: str) -> App:
    app = App(name)

    @app.method()
    def ping() -> str:
        return "pong"

    @app.method()
    def nest(depth: int, bus) -> int:
        """Calls itself ``depth`` times deep; returns the depth reached."""
        if depth <= 1:
            return 1
        return 1 + bus.call(f"{name}.nest", depth - 1, timeout=30)

    @app.method()
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    return app


def _fan_out(call, parallel: int, depth: int) -> list[int]:
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda _: call(depth), range(parallel)))


def test_nested_self_calls_on_the_test_client_never_deadlock(unique: str) -> None:
    """50 parallel nested-5 self-calls through the test client (concurrency 2) all complete."""
    client = _nesting_app(f"nest{unique}").test_client()
    assert _fan_out(lambda d: client.call("nest", d), 50, 5) == [5] * 50


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_nested_self_calls_on_one_worker_never_deadlock(request, broker: str, exchange: str,
                                                        unique: str) -> None:
    """50 parallel nested-5 self-calls on ONE worker with concurrency 2 all complete (250 handlers
    in flight at the deepest point), on a real broker."""
    url = request.getfixturevalue(f"{broker}_url")
    app = _nesting_app(f"nest{unique}")
    with run_app(app, url, exchange, concurrency=2), Client(url, exchange, timeout=60) as bus:
        started = time.monotonic()
        results = _fan_out(lambda d: bus.call(f"{app.name}.nest", d), 50, 5)
        print(f"\n{broker}: 50 x nested-5 on 1 worker, concurrency 2: "
              f"{time.monotonic() - started:.2f}s")
        assert results == [5] * 50
        # One nested-8 call (deeper than the old default pool of 8) too.
        assert bus.call(f"{app.name}.nest", 9) == 9


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_a_blocked_handler_does_not_hold_up_its_worker(request, broker: str, exchange: str,
                                                       unique: str) -> None:
    """While one handler sleeps 2 s, the same worker (concurrency 2) answers 50 other calls."""
    url = request.getfixturevalue(f"{broker}_url")
    app = _nesting_app(f"slow{unique}")
    with run_app(app, url, exchange, concurrency=2), Client(url, exchange, timeout=30) as bus:
        slow_done = threading.Event()

        def slow() -> None:
            bus.call(f"{app.name}.sleep", 2.0)
            slow_done.set()

        sleeper = threading.Thread(target=slow)
        sleeper.start()
        time.sleep(0.2)  # the sleep is in hand
        latencies = []
        for _ in range(50):
            t0 = time.perf_counter()
            assert bus.call(f"{app.name}.ping") == "pong"
            latencies.append(time.perf_counter() - t0)
        # Every other call was answered while the sleeping handler still ran.
        assert not slow_done.is_set()
        latencies.sort()
        print(f"\n{broker}: ping beside a 2 s handler: p50 {latencies[25] * 1e3:.2f} ms, "
              f"max {latencies[-1] * 1e3:.2f} ms")
        sleeper.join(10)
        assert slow_done.is_set()


def test_test_client_calls_go_through_the_worker_serve(monkeypatch, unique: str) -> None:
    """The test client's calls run Pipeline.serve, what a broker worker runs per message."""
    served: list[str | None] = []
    original = Pipeline.serve

    def spy(self: Pipeline, delivery, **options) -> None:
        served.append(delivery.routing_key)
        original(self, delivery, **options)

    monkeypatch.setattr(Pipeline, "serve", spy)
    client = _nesting_app(f"spy{unique}").test_client()
    assert client.call("nest", 3) == 3
    assert served == [f"spy{unique}.nest"] * 3


def test_the_test_client_counts_and_dead_letters_redeliveries(unique: str) -> None:
    """Redelivery counting runs under the test client too: past max_deliveries, the caller
    gets WorkerLost and the message sits in <queue>.dead."""
    from busapp.runtime.redelivery import sign_count
    from busapp.transport.base import Delivery
    from busapp.transport.memory import MemoryBroker

    app = _nesting_app(f"dl{unique}")
    client = app.test_client()
    broker = MemoryBroker.named(client.url)
    replies = []
    broker.queue("busapp.reply.dl").consumers.append(replies.append)
    body = b'{"jsonrpc":"2.0","id":"r1","method":"ping"}'
    delivery = Delivery(body=body, content_type="application/json",
                        headers={"x-busapp-deliveries": 3}, routing_key=f"{app.name}.ping",
                        reply_to="busapp.reply.dl", correlation_id="r1", redelivered=True,
                        queue=app.queue)
    delivery.headers["x-busapp-deliveries-sig"] = sign_count(3, delivery, f"{app.name}.ping")
    broker.put(broker.queue(app.queue), delivery)
    [reply] = replies
    assert b"WorkerLost" in reply.body
    assert len(broker.queues[f"{app.queue}.dead"].waiting) == 1


def test_only_the_kombu_transport_imports_kombu() -> None:
    """kombu is behind the transport seam: only the kombu and Redis transport modules import
    it."""
    pattern = re.compile(r"^\s*(import kombu|from kombu)", re.M)
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "busapp").rglob("*.py")
                   if pattern.search(p.read_text()))
    assert users == ["busapp/transport/kombu_setup.py", "busapp/transport/kombu_transport.py",
                     "busapp/transport/redis.py", "busapp/transport/redis_routing.py",
                     "busapp/transport/redis_state.py"]


def test_a_message_is_acked_only_after_its_reply_is_sent(monkeypatch, unique: str) -> None:
    """The serve path publishes the reply first and acks the request after it."""
    from busapp.bus import Client
    from busapp.transport.base import Delivery

    events: list[str] = []
    publish_reply, ack = Client.publish_reply, Delivery.ack

    def spy_reply(self, *args, **kwargs):
        events.append("reply")
        return publish_reply(self, *args, **kwargs)

    def spy_ack(self):
        if self.reply_to is not None:  # the request, not the reply's own delivery
            events.append("ack")
        return ack(self)

    monkeypatch.setattr(Client, "publish_reply", spy_reply)
    monkeypatch.setattr(Delivery, "ack", spy_ack)
    client = _nesting_app(f"ack{unique}").test_client()
    assert client.call("ping") == "pong"
    assert events == ["reply", "ack"]
