"""Control requests: live workers answer for themselves (``busapp status``, ``busapp probe``).

Each worker consumes, besides its service's shared queue, a control queue of its own
(non-durable, auto-deleted when the worker goes), bound to the exchange with two
keys: ``busapp-control`` (every worker) and ``busapp-control.<service>``. A status
request is a JSON-RPC request for the method ``rpc.status`` published with one of
those keys, so it reaches every live worker (a broadcast), and each worker answers
to the caller's reply queue with its own figures. JSON-RPC reserves method names
starting with ``rpc.``: no user method can be named so, and the shared queues
(bound to ``<service>.*``) never see a control key, so control messages never reach
user handlers.

Control requests pass the worker's pipeline like every other message: they are
answered only to reply queues, and a service with a keyring answers only requests
signed by one of its keys, signed to that key; an unsigned one gets no answer at all.
:func:`busapp.ops.status.gather` is the caller's side.
"""

from __future__ import annotations

import datetime
import itertools
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from busapp import names
from busapp._version import __version__
from busapp.core import wire
from busapp.core.pipeline import IncomingMessage, Outcome
from busapp.entrypoints.base import ErrorHook
from busapp.errors import InvalidRequest, MethodNotFound, RemoteProcedureCallError
from busapp.transport.base import QueueSpec

CONTROL_KEY = names.CONTROL_KEY
STATUS_METHOD = names.STATUS_METHOD
#: Fields of each worker's status, in the order ``busapp status`` shows them.
FIELDS = ("service", "host", "pid", "started", "handled", "errors", "in_flight", "version")
#: Largest control request read, in bytes.
MAX_BODY = 65536

_numbers = itertools.count()


def _restart_numbers() -> None:
    global _numbers
    _numbers = itertools.count()


# A forked worker process's first control queue is named by its pid alone (the manager
# finds a dead worker's by its pid).
os.register_at_fork(after_in_child=_restart_numbers)


def control_queue(service: str, pid: int | None = None, number: int | None = None) -> QueueSpec:
    """A new worker's own control queue: named by host and pid, and a number after the first
    one in a process (a test client runs several workers in one)."""
    number = next(_numbers) if number is None else number
    name = names.control_queue(service, socket.gethostname(), os.getpid() if pid is None else pid,
                               number)
    return QueueSpec(name, (names.control_key(), names.control_key(service)), durable=False,
                     auto_delete=True)


def service_name(service: Any) -> str:
    """The name ``busapp status NAME`` knows a service by: an App's name (its queue may carry
    the exchange, ``prod.simple``), else the service's queue name."""
    app = getattr(service, "app", None)
    return str(getattr(app, "name", None) or service.service_name)


def status(service: str, started_at: float, handled: int, errors: int,
           in_flight: int) -> dict[str, Any]:
    """One worker's answer to ``rpc.status`` (see :data:`FIELDS`)."""
    started = datetime.datetime.fromtimestamp(started_at, datetime.UTC)
    return {"service": service, "host": socket.gethostname(), "pid": os.getpid(),
            "started": started.isoformat(timespec="seconds"), "handled": handled,
            "errors": errors, "in_flight": in_flight, "version": __version__}


class ControlEntrypoint:
    """A worker's own control queue.

    Args:
        spec: the queue (see :func:`control_queue`).
        report: gives this worker's status dict when asked.
    """

    kind = "control"
    answers = True

    def __init__(self, spec: QueueSpec, report: Callable[[], dict[str, Any]]) -> None:
        self.spec = spec
        self.report = report

    def queue_specs(self) -> list[QueueSpec]:
        return [self.spec]

    def admit(self, caller: str, routing_key: str | None) -> RemoteProcedureCallError | None:
        return None  # any key of the service's keyring may ask

    def time_limit(self, message: IncomingMessage) -> float | None:
        return None

    def label(self, message: IncomingMessage) -> str | None:
        return STATUS_METHOD

    def run(self, message: IncomingMessage, context: Mapping[str, Any],
            on_error: ErrorHook) -> Outcome:
        try:
            if message.problem is not None:
                raise message.problem
            body = message.body
            method = body.get("method") if isinstance(body, dict) else None
            if not isinstance(method, str):
                raise InvalidRequest("a control message must be a JSON-RPC request")
            if method != STATUS_METHOD:
                raise MethodNotFound(f"no control method {method!r}; known: {STATUS_METHOD}")
            response = wire.result_response(message.id, self.report())
        except RemoteProcedureCallError as exc:
            response = wire.error_response(message.id, exc)
        return Outcome(response)
