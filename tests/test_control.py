"""Each worker's own control queue (busapp.entrypoints.control): status answers, and control
messages that never reach user handlers. On the in-memory transport; the CLI on brokers is in
test_ops_cli.py."""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import pytest

import busapp
from busapp import App
from busapp.core import wire
from busapp.entrypoints.control import CONTROL_KEY, FIELDS, STATUS_METHOD
from busapp.names import control_key as routing_key
from busapp.ops.status import gather
from busapp.errors import InternalError
from busapp.transport.base import QueueSpec
from busapp.transport.memory import MemoryTransport


def counting_app(name: str, calls: list[str]) -> App:
    """An App with a user method named ``status`` (a control broadcast must never run it)."""
    app = App(name)

    @app.method()
    def status() -> str:
        calls.append("status")
        return "user status"

    @app.method()
    def add(x: int, y: int) -> int:
        return x + y

    @app.method()
    def boom() -> None:
        raise ValueError("boom")

    return app


def send_raw(url: str, exchange: str, key: str, body: bytes) -> list[dict]:
    """Publish ``body`` with routing key ``key`` and a reply queue; return the replies."""
    replies: list[dict] = []
    transport = MemoryTransport(url)
    queue = f"busapp.reply.{uuid.uuid4().hex}"
    transport.declare_queue("", QueueSpec(queue, durable=False, auto_delete=True))
    transport.consume(queue, lambda d: replies.append(wire.parse_response(d.body)), no_ack=True)
    transport.publish(body, exchange=exchange, routing_key=key, reply_to=queue, correlation_id="c1")
    transport.close(delete_queue=queue)
    return replies


def test_each_worker_answers_status_with_its_figures(unique: str) -> None:
    """A status broadcast for one service gets one answer per worker, with its calls and errors."""
    app = counting_app(f"ctl{unique}", [])
    with app.test_client() as client:
        assert client.call("add", 1, 2) == 3
        assert client.call("add", 2, 2) == 4
        with pytest.raises(InternalError):
            client.call("boom")
        [worker] = gather(client.url, client.exchange, app.name)
    assert tuple(worker) == FIELDS
    assert worker["service"] == app.name and worker["pid"] == os.getpid()
    assert worker["host"] == socket.gethostname() and worker["version"] == busapp.__version__
    assert (worker["handled"], worker["errors"], worker["in_flight"]) == (3, 1, 0)
    assert worker["started"].endswith("+00:00")


def test_broadcast_without_a_name_reaches_every_service(unique: str) -> None:
    """With no service named, every worker on the exchange answers
    (here the app and the storage service)."""
    app = counting_app(f"ctl{unique}", [])
    with app.test_client() as client:
        services = [w["service"] for w in gather(client.url, client.exchange)]
    assert sorted(services) == sorted([app.name, "storage"])


def test_status_never_reaches_a_user_method_of_the_same_name(unique: str) -> None:
    """A user method called ``status`` is not run by a status broadcast,
    nor by a request sent to the control key."""
    calls: list[str] = []
    app = counting_app(f"ctl{unique}", calls)
    with app.test_client() as client:
        assert gather(client.url, client.exchange, app.name)
        body = wire.dumps(wire.encode_request("status", None, "r1")).encode()
        [reply] = send_raw(client.url, client.exchange, routing_key(app.name), body)
        assert reply["error"]["code"] == -32601 and STATUS_METHOD in reply["error"]["message"]
        assert calls == []
        assert client.call("status") == "user status"  # the user's method itself still works
    assert calls == ["status"]


def test_bad_control_message_gets_an_error_and_the_worker_goes_on(unique: str) -> None:
    """Junk on the control key is answered with a parse error;
    the worker still answers status after."""
    app = counting_app(f"ctl{unique}", [])
    with app.test_client() as client:
        [reply] = send_raw(client.url, client.exchange, routing_key(app.name), b"{not json")
        assert reply["error"]["code"] == -32700
        replies = send_raw(client.url, client.exchange, CONTROL_KEY, json.dumps([1, 2]).encode())
        assert [r["error"]["code"] for r in replies] == [-32600, -32600]  # the app and storage
        assert [w["service"] for w in gather(client.url, client.exchange, app.name)] == [app.name]


def test_no_worker_means_no_answer() -> None:
    """With nobody listening, gather returns an empty list (at once on the in-memory bus)."""
    assert gather(f"memory://nobody-{uuid.uuid4().hex}", "commissaire", "ghost", timeout=0.2) == []


def test_status_counts_in_flight_requests(unique: str) -> None:
    """A worker asked while it serves a request reports it in flight."""
    app = App(f"ctl{unique}")
    seen: list[Any] = []

    @app.method()
    def peek() -> None:
        seen.extend(gather(client.url, client.exchange, app.name))

    with app.test_client() as client:
        client.call("peek")
    [worker] = seen
    assert worker["in_flight"] == 1 and worker["handled"] == 0


def test_control_queue_is_the_workers_own_and_auto_deleted(unique: str) -> None:
    """Each worker consumes a non-durable, auto-deleted queue of its own,
    bound to both control keys."""
    app = counting_app(f"ctl{unique}", [])
    with app.test_client() as client:
        worker = next(w for w in client._workers if w.service.service_name == app.name)
        spec = worker._control
        assert not spec.durable and spec.auto_delete
        assert spec.binding_keys == (CONTROL_KEY, f"{CONTROL_KEY}.{app.name}")
        assert str(os.getpid()) in spec.name
        other = next(w for w in client._workers if w is not worker)
        assert other._control.name != spec.name

