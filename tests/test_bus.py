"""Client behaviour on real brokers: shared use from threads, broker down, reconnect."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from busapp import Client
from busapp.errors import BrokerUnavailable
from tests._services import run_app
from tests.apps import make_app


@pytest.fixture(scope="module", params=["redis", "amqp"])
def served(request):
    """A test App with 2 workers on each broker; yields (app, url, exchange)."""
    url = request.getfixturevalue(f"{request.param}_url")
    token = uuid.uuid4().hex[:10]
    app = make_app(f"b{token}")
    with run_app(app, url, f"test-{token}", workers=2):
        yield app, url, f"test-{token}"


def test_many_threads_share_one_client(served):
    """16 threads x 20 calls on one Client each get their own answers."""
    app, url, exchange = served
    errors: list[BaseException] = []
    with Client(url, exchange) as bus:
        def worker(n: int) -> None:
            try:
                for i in range(20):
                    assert bus.call(f"{app.name}.add", n, i) == n + i
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n * 100,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []


def test_calls_in_flight_do_not_wait_for_each_other(served):
    """Two slow calls in flight at once on one Client finish together, not one after the other."""
    app, url, exchange = served
    with Client(url, exchange) as bus:
        bus.call(f"{app.name}.ping")
        results: list[float] = []
        threads = [threading.Thread(target=lambda: results.append(bus.call(f"{app.name}.slow", 1)))
                   for _ in range(4)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        elapsed = time.monotonic() - started
    assert results == [1, 1, 1, 1]
    assert elapsed < 3.5  # serial would take 4 s; 2 workers x 8 threads run them at once


def test_broker_down_raises_broker_unavailable_quickly():
    """A call to a broker nobody listens on raises BrokerUnavailable, not a hang."""
    bus = Client("redis://127.0.0.1:1/0", "x")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="127.0.0.1:1"):
        bus.call("simple.add", 1, 2, timeout=5)
    assert time.monotonic() - started < 5
    bus.close()


def test_amqp_broker_down_raises_broker_unavailable():
    """Same on an amqp URL, and the password is not in the message."""
    bus = Client("amqp://guest:s3cret@127.0.0.1:1//", "x")
    with pytest.raises(BrokerUnavailable) as info:
        bus.call("simple.add", 1, 2, timeout=5)
    assert "s3cret" not in str(info.value)
    bus.close()


def test_closed_client_refuses_calls(served):
    """A closed Client says so instead of reconnecting silently."""
    app, url, exchange = served
    bus = Client(url, exchange)
    bus.close()
    with pytest.raises(RuntimeError, match="closed"):
        bus.call(f"{app.name}.ping")


def test_routing_key_without_method_is_a_value_error(served):
    """call('simple') is refused locally with a hint."""
    _, url, exchange = served
    with Client(url, exchange) as bus, pytest.raises(ValueError, match="<service>.<method>"):
        bus.call("simple")
