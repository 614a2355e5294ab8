"""Live workers answer for themselves: ``busapp status`` and ``busapp probe``.

Each worker consumes, besides its service's shared queue, a control queue of its own
(non-durable, auto-deleted when the worker goes), bound to the exchange with two
keys: ``busapp-control`` (every worker) and ``busapp-control.<service>``. A status
request is a JSON-RPC request for the method ``rpc.status`` published with one of
those keys, so it reaches every live worker (a broadcast), and each worker answers
to the caller's reply queue with its own figures. JSON-RPC reserves method names
starting with ``rpc.``: no user method can be named so, and the shared queues
(bound to ``<service>.*``) never see a control key, so control messages never reach
user handlers.

:func:`busapp.ops.status.gather` is the caller's side; :func:`answer` the worker's.
"""

from __future__ import annotations

import datetime
import itertools
import os
import socket
from typing import Any

import structlog

from busapp import names
from busapp.core import wire
from busapp.errors import InvalidRequest, MethodNotFound
from busapp.transport import is_redis, open_transport
from busapp.transport.base import Delivery, QueueSpec

log = structlog.get_logger("busapp.control")

CONTROL_KEY = names.CONTROL_KEY
STATUS_METHOD = names.STATUS_METHOD
#: Fields of each worker's status, in the order ``busapp status`` shows them.
FIELDS = ("service", "host", "pid", "started", "handled", "errors", "in_flight", "version")

_numbers = itertools.count()


def _restart_numbers() -> None:
    global _numbers
    _numbers = itertools.count()


# A forked worker process's first control queue is named by its pid alone (see forget_worker).
os.register_at_fork(after_in_child=_restart_numbers)


def control_queue(service: str, pid: int | None = None, number: int | None = None) -> QueueSpec:
    """A new worker's own control queue: named by host and pid, and a number after the first
    one in a process (a test client runs several workers in one)."""
    number = next(_numbers) if number is None else number
    name = names.control_queue(service, socket.gethostname(), os.getpid() if pid is None else pid,
                               number)
    return QueueSpec(name, (names.control_key(), names.control_key(service)), durable=False,
                     auto_delete=True)


def forget_worker(url: str, exchange: str, service: str, pid: int) -> None:
    """Delete the control queue of worker ``pid`` (on this host), killed before it could.

    RabbitMQ deletes an auto-delete queue when its consumer's connection dies; Redis
    keeps the list and its bindings, and every later status broadcast would add to it.
    """
    if not is_redis(url):
        return
    spec = control_queue(service, pid, number=0)
    transport = open_transport(url)
    transport.connect()
    try:
        transport.declare_queue(exchange, spec)  # kombu unbinds only the bindings it declared
    finally:
        transport.close(delete_queue=spec.name)


def service_name(service: Any) -> str:
    """The name ``busapp status NAME`` knows a service by: an App's name (its queue may carry
    the exchange, ``prod.simple``), else the service's queue name."""
    app = getattr(service, "app", None)
    return str(getattr(app, "name", None) or service.service_name)


def status_of(worker: Any) -> dict[str, Any]:
    """A worker's answer to ``rpc.status`` (see :data:`FIELDS`)."""
    import busapp

    started = datetime.datetime.fromtimestamp(worker.started_at, datetime.UTC)
    return {
        "service": service_name(worker.service),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started.isoformat(timespec="seconds"),
        "handled": worker.handled,
        "errors": worker.errors,
        "in_flight": worker.calls_in_flight,
        "version": busapp.__version__,
    }


def answer(worker: Any, delivery: Delivery) -> None:
    """Answer one control message on ``worker``'s behalf (the caller settles it)."""
    request_id = None
    try:
        body = wire.loads_body(delivery.body, delivery.content_type, 65536)
        request_id = wire.request_id_of(body)
        method = body.get("method") if isinstance(body, dict) else None
        if not isinstance(method, str):
            raise InvalidRequest("a control message must be a JSON-RPC request")
        if method != STATUS_METHOD:
            raise MethodNotFound(f"no control method {method!r}; known: {STATUS_METHOD}")
        response = wire.result_response(request_id, status_of(worker))
    except Exception as exc:  # noqa: BLE001 - a bad control message gets an error, never a crash
        response = wire.error_response(request_id, exc)
    if delivery.reply_to is None:
        if "error" in response:
            log.warning("bad control message dropped", error=response["error"].get("message"))
        return
    worker.service._bus_client().publish_reply(
        delivery.reply_to, response, delivery.correlation_id or request_id)
