"""Parity: the same handlers, called through the test client and through a real Redis broker,
give the same results, the same error classes and the same storage effects.

Written once, run on each side (``side`` is parametrised). The broker side runs
the App and a storage service in forked processes, once for the module, on a
session-unique exchange and queue names.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from busapp import App, Client
from busapp.core import wire
from busapp.errors import (
    BrokerUnavailable,
    ContainerManagerError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RemoteProcedureCallError,
    RequestTimeout,
    StorageLookupError,
)
from busapp.models import Host
from busapp.storage.client import StorageClient
from busapp.testing import TestClient

TOKEN = uuid.uuid4().hex[:8]
NAME = f"parity{TOKEN}"
EXCHANGE = f"test-parity-{TOKEN}"
STORAGE_QUEUE = f"storage-parity-{TOKEN}"


@attrs.define
class Point:
    """A model param and result (converted by cattrs on both sides)."""

    x: int
    y: int = 0


def make_app() -> App:
    """The App both sides serve."""
    app = App(NAME)

    @app.method()
    def ping() -> str:
        return "pong"

    @app.method()
    def add(x: int, y: int) -> int:
        return x + y

    @app.method()
    def shift(point: Point, dx: int = 1) -> Point:
        return attrs.evolve(point, x=point.x + dx)

    @app.method()
    async def async_add(x: int, y: int) -> int:
        return x + y

    @app.method()
    def wordy_add(x: int, y: int, bus) -> str:
        return f"{x} plus {y} is {bus.call(f'{NAME}.add', x, y)}"

    @app.method()
    def where(message) -> str:
        return message.routing_key

    @app.method()
    def fail():
        raise NotImplementedError("I was never created")

    @app.method()
    def teapot():
        raise RemoteProcedureCallError("teapot", code=-31999, data={"why": "short and stout"})

    @app.method()
    def lookup(key: str):
        raise StorageLookupError(f"no record {key!r}", data={"key": key})

    @app.method()
    def container():
        raise ContainerManagerError("no container manager", data={"name": "cm"})

    @app.method()
    def unserialisable():
        return object()

    @app.method()
    def remember(address: str, storage) -> None:
        storage.save(Host.new(address=address, status="remembered"))

    @app.on_storage_event(Host, "created")
    def investigate(event, model, storage):
        if model.status == "":
            storage.save(attrs.evolve(model, status="investigating"))

    return app


APP = make_app()


# -- the two sides -----------------------------------------------------------


@attrs.define
class Side:
    """One way of reaching APP: ``bus`` has call/request/notify; ``raw`` sends bytes as they are."""

    name: str
    bus: Any
    storage: StorageClient
    raw: Callable[..., dict | None]
    wait: bool  # the broker side's effects are asynchronous

    def eventually(self, probe: Callable[[], Any], deadline: float = 15.0) -> Any:
        """``probe()``'s first truthy value (the memory side's first try must be it)."""
        end = time.monotonic() + deadline
        while True:
            value = _quiet(probe)
            if value or not self.wait or time.monotonic() > end:
                return value
            time.sleep(0.05)


def _quiet(probe: Callable[[], Any]) -> Any:
    try:
        return probe()
    except StorageLookupError:
        return None


def _run_forked(target: Callable[[], None]) -> multiprocessing.Process:
    process = multiprocessing.get_context("fork").Process(target=target, daemon=True)
    process.start()
    return process


def _wait_served(url: str, routing_key: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    with Client(url, EXCHANGE, timeout=0.5) as bus:
        while True:
            try:
                bus.call(routing_key)
                return
            except (RequestTimeout, BrokerUnavailable):
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)  # NoRouteError comes at once while the queue is not bound yet


def _delete_queues(url: str, names: list[str]) -> None:
    from kombu import Connection, Exchange, Queue

    with Connection(url, connect_timeout=3) as conn:
        for name in names:
            try:
                Queue(name, channel=conn.channel()).delete()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        try:
            Exchange(EXCHANGE, "topic", channel=conn.channel()).delete()
        except Exception:  # noqa: BLE001
            pass


class BrokerServices:
    """APP and a memory-backed storage service, each in a forked process, started on first use."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.processes: list[multiprocessing.Process] = []
        self.client: Client | None = None  # one for the module: closing a Client takes a moment

    def start(self, url: str) -> None:
        if self.url is not None:
            return
        from busapp.storage.service import make_app as make_storage

        self.url = url
        storage = make_storage("memory://", queue=STORAGE_QUEUE)
        for app in (storage, APP):
            self.processes.append(_run_forked(lambda app=app: app.run(url, exchange=EXCHANGE)))
        _wait_served(url, "storage.list_store_handlers")
        _wait_served(url, f"{NAME}.ping")
        self.client = Client(url, EXCHANGE, timeout=10)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        for process in self.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()
        if self.url is not None:
            queue = APP.queue_for(EXCHANGE)
            queues = [queue, STORAGE_QUEUE, *(h.queue_name(queue) for h in APP.storage_handlers)]
            _delete_queues(self.url, queues)


@pytest.fixture(scope="module")
def broker_services() -> Iterator[BrokerServices]:
    """The module's broker-side services (started by the first redis test)."""
    services = BrokerServices()
    yield services
    services.stop()


def _broker_raw(url: str, routing_key: str, body: bytes, *, content_type: str = "application/json",
                deadline: float = 10.0) -> dict | None:
    """Publish ``body`` as it is with kombu and return the decoded reply."""
    from kombu import Connection, Exchange, Producer, Queue

    reply_name = f"busapp.reply.parity-{uuid.uuid4().hex}"  # a name a service answers
    with Connection(url) as conn:
        channel = conn.channel()
        reply_queue = Queue(reply_name, channel=channel, durable=False, auto_delete=True)
        reply_queue.declare()
        try:
            topic = Exchange(EXCHANGE, "topic", durable=True)
            Producer(channel).publish(
                body, exchange=topic, routing_key=routing_key, declare=[topic],
                content_type=content_type, content_encoding="binary", reply_to=reply_name,
                correlation_id="raw")
            end = time.monotonic() + deadline
            while time.monotonic() < end:
                message = reply_queue.get(no_ack=True)
                if message is not None:
                    return wire.parse_response(message.body)
                time.sleep(0.02)
            return None
        finally:
            reply_queue.delete()


@pytest.fixture(params=["memory", "redis"])
def side(request: pytest.FixtureRequest, broker_services: BrokerServices) -> Iterator[Side]:
    """APP through the test client, then through a real Redis broker."""
    if request.param == "memory":
        client = TestClient(APP)
        yield Side("memory", client, client.storage, client.request_raw, wait=False)
        return
    url = request.getfixturevalue("redis_url")
    broker_services.start(url)
    bus = broker_services.client
    raw = lambda key, body, **kw: _broker_raw(url, key, body, **kw)  # noqa: E731
    yield Side("redis", bus, StorageClient(bus), raw, wait=True)


def rk(method: str) -> str:
    """The routing key of APP's ``method``."""
    return f"{NAME}.{method}"


def _address() -> str:
    """A host address no other test uses (the broker side's storage lives for the module)."""
    n = uuid.uuid4().int
    return f"10.{n % 250}.{n // 250 % 250}.{n // 62500 % 250}"


# -- results -----------------------------------------------------------------


def test_results_by_position_and_keyword(side: Side) -> None:
    """Positional and keyword params give the same result."""
    assert side.bus.call(rk("add"), 1, 2) == 3
    assert side.bus.call(rk("add"), x=1, y=2) == 3


def test_models_convert_in_and_out(side: Side) -> None:
    """An attrs param is built from a JSON object; an attrs result becomes one."""
    assert side.bus.call(rk("shift"), {"x": 1, "y": 5}, 2) == {"x": 3, "y": 5}


def test_async_handler(side: Side) -> None:
    """async def handlers give their result."""
    assert side.bus.call(rk("async_add"), 2, 3) == 5


def test_handler_calls_over_the_bus(side: Side) -> None:
    """A handler's bus.call reaches the App."""
    assert side.bus.call(rk("wordy_add"), 1, 2) == "1 plus 2 is 3"


def test_injected_message(side: Side) -> None:
    """The injected message carries the routing key."""
    assert side.bus.call(rk("where")) == rk("where")


def test_request_returns_the_response_dict(side: Side) -> None:
    """request() returns Commissaire's whole response dict."""
    response = side.bus.request(rk("add"), [2, 2])
    assert set(response) == {"jsonrpc", "id", "result"}
    assert response["result"] == 4


# -- errors ------------------------------------------------------------------


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("abc", 2), {}, "parameter 'x' of add(): expected an integer, got str 'abc'"),
    ((1,), {}, "add() missing required parameter 'y'"),
    ((1, 2, 3), {}, "add() takes 2 positional params but 3 were given"),
    ((), {"x": 1, "y": 2, "z": 3}, "add() got unexpected parameter 'z'; it takes: x: int, y: int"),
])
def test_invalid_params(side: Side, args: tuple, kwargs: dict, message: str) -> None:
    """Bad params are -32602 InvalidParams with the same message."""
    with pytest.raises(InvalidParams) as info:
        side.bus.call(rk("add"), *args, **kwargs)
    assert (info.value.code, info.value.message) == (-32602, message)


def test_method_not_found(side: Side) -> None:
    """An unknown method is -32601 MethodNotFound."""
    with pytest.raises(MethodNotFound) as info:
        side.bus.call(rk("nope"))
    assert info.value.data == {"exception": "AttributeError", "method": "nope"}


def test_handler_exception_is_internal_error(side: Side) -> None:
    """A handler's own exception is -32603 InternalError naming it."""
    with pytest.raises(InternalError) as info:
        side.bus.call(rk("fail"))
    assert (info.value.message, info.value.data) == (
        "I was never created", {"exception": "NotImplementedError"})


def test_unserialisable_result_is_internal_error(side: Side) -> None:
    """A result JSON cannot carry is -32603."""
    with pytest.raises(InternalError, match="not JSON serialisable"):
        side.bus.call(rk("unserialisable"))


@pytest.mark.parametrize(("method", "cls", "code", "data"), [
    ("lookup", StorageLookupError, -20000, {"key": "k"}),
    ("container", ContainerManagerError, -20001, {"name": "cm"}),
    ("teapot", RemoteProcedureCallError, -31999, {"why": "short and stout"}),
])
def test_rpc_errors_keep_code_and_data(side: Side, method: str, cls: type, code: int,
                                       data: dict) -> None:
    """A RemoteProcedureCallError raised by a handler arrives as the class of its code."""
    with pytest.raises(RemoteProcedureCallError) as info:
        side.bus.call(rk(method), *(["k"] if method == "lookup" else []))
    assert (type(info.value), info.value.code, info.value.data) == (cls, code, data)


def test_params_neither_array_nor_object_is_invalid_request(side: Side) -> None:
    """params that are a JSON string are -32600 InvalidRequest."""
    response = side.bus.request(rk("add"), "abc")
    error = wire.error_from_response(response)
    assert isinstance(error, InvalidRequest)
    assert error.message == "params must be an array or an object, got a JSON string"


@pytest.mark.parametrize(("body", "content_type", "cls"), [
    (b"{not json", "application/json", ParseError),
    (pickle.dumps({"method": "add"}), "application/x-python-serialize", ParseError),
    (b'{"jsonrpc": "2.0", "id": "1", "method": "sub", "params": [1, 2]}', "application/json",
     InvalidRequest),
    (b'{"jsonrpc": "2.0", "id": "1", "params": [1, 2]}', "application/json", InvalidRequest),
    (b'[1, 2]', "application/json", InvalidRequest),
])
def test_raw_bodies_a_client_never_sends(side: Side, body: bytes, content_type: str,
                                         cls: type) -> None:
    """Bad JSON and foreign content types are -32700; non-requests are -32600;
    same reply both ways."""
    response = side.raw(rk("add"), body, content_type=content_type)
    assert response is not None
    error = wire.error_from_response(response)
    assert (type(error), error.code) == (cls, cls.code)


class _Trap:
    """Unpickling this creates a file: proof that a body was (or was never) deserialised."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def test_pickle_is_never_deserialised(side: Side, tmp_path) -> None:
    """A pickle body is refused unread (-32700 naming the content type) and never unpickled."""
    trap = tmp_path / "unpickled"
    response = side.raw(rk("add"), pickle.dumps(_Trap(str(trap))),
                        content_type="application/x-python-serialize")
    assert response is not None
    assert response["error"]["code"] == ParseError.code
    assert response["error"]["data"] == {"content_type": "application/x-python-serialize"}
    assert not trap.exists()


def test_raw_request_is_served(side: Side) -> None:
    """A hand-written request body gets the same result (with the id it sent)."""
    body = b'{"jsonrpc": "2.0", "id": "raw-7", "method": "add", "params": {"x": 3, "y": 4}}'
    assert side.raw(rk("add"), body) == {"jsonrpc": "2.0", "id": "raw-7", "result": 7}


def test_routing_key_nobody_serves_is_a_timeout(side: Side) -> None:
    """A call nobody consumes ends in RequestTimeout
    (at once in memory, after the timeout on a broker)."""
    with pytest.raises(RequestTimeout):
        side.bus.call(f"nobody{TOKEN}.add", 1, 2, timeout=0.5)


# -- storage -------------------------------------------------------------------


def test_missing_record_is_storage_lookup_error(side: Side) -> None:
    """storage.get of a missing record is -20000 StorageLookupError."""
    with pytest.raises(StorageLookupError):
        side.storage.get_host(_address())


def test_storage_event_reaches_the_apps_handler(side: Side) -> None:
    """Saving a Host fires the App's on_storage_event handler, which updates the record."""
    address = _address()
    side.storage.save(Host.new(address=address))
    status = side.eventually(lambda: side.storage.get_host(address).status == "investigating")
    assert status is True


def test_handler_storage_writes_through_the_storage_service(side: Side) -> None:
    """A handler's injected storage saves through the same storage service the test reads."""
    address = _address()
    side.bus.call(rk("remember"), address)
    assert side.storage.get_host(address).status == "remembered"


def test_notification_is_handled(side: Side) -> None:
    """A notification (no reply) is still handled."""
    address = _address()
    side.bus.notify(rk("remember"), address=address)
    found = side.eventually(lambda: side.storage.get_host(address))
    assert found is not None and found.status == "remembered"
