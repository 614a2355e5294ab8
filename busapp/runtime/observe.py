"""What a worker tells about each message it serves: counters, trace spans, log lines, metrics.

The pipeline calls :meth:`Observer.begin` before a message's run step and
:meth:`Observer.end` after its answer went out, for every entrypoint kind. The observer
keeps the figures ``busapp status`` reports, continues the caller's trace
(:mod:`busapp.core.tracing`), binds the log context (routing key, id, request id) for
everything the handler logs, writes the per-call log line, and tells the metrics
recorder it was handed, if any (``busapp run --metrics-port``: :mod:`busapp.ops.metrics`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

import structlog

from busapp.core import tracing
from busapp.core.pipeline import DEAD, REQUEUE, IncomingMessage, Outcome
from busapp.errors import InternalError, RemoteProcedureCallError
from busapp.log import quiet, writes_info

log = structlog.get_logger("busapp.worker")

#: This process's pid, for the per-call log line (kept up to date across forks: no syscall
#: per call).
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


class Metrics(Protocol):
    """What the observer tells a metrics recorder (:class:`busapp.ops.metrics.WorkerMetrics`)."""

    def call_started(self) -> None: ...

    def call_finished(self, method: str | None, ok: bool, seconds: float) -> None: ...

    def redelivered(self, dead: bool) -> None: ...

    def event_finished(self, handler: str | None, outcome: str, seconds: float) -> None: ...

    def timer_finished(self, timer: str | None, ok: bool, seconds: float) -> None: ...


class Scope:
    """One message being served: what :meth:`Observer.end` needs to close it."""

    __slots__ = ("bound", "kind", "label", "started", "trace")

    def __init__(self, kind: str, label: str | None, trace: tracing.Incoming, bound: Any) -> None:
        self.kind, self.label, self.trace, self.bound = kind, label, trace, bound
        self.started = time.perf_counter()


class Observer:
    """One worker's counters, and the hooks every served message passes through.

    ``handled``, ``errors`` and ``in_flight`` count RPC calls (what ``busapp status``
    shows); each is changed by one statement, which the GIL does not split, and read
    without a lock.
    """

    def __init__(self) -> None:
        self.started_at = time.time()
        self.handled = 0
        self.errors = 0
        self.in_flight = 0
        #: Records calls for Prometheus (``busapp run --metrics-port``), else None.
        self.metrics: Metrics | None = None

    def begin(self, kind: str, message: IncomingMessage, label: str | None) -> Scope:
        """Enter ``message``'s context: its trace span and its log context."""
        trace = tracing.incoming(message.headers, message.routing_key, message.correlation_id,
                                 message.id)
        bound = structlog.contextvars.bind_contextvars(
            routing_key=message.routing_key, id=message.id, request_id=trace.request_id)
        if kind == "call":
            self.in_flight += 1
            if self.metrics is not None:
                self.metrics.call_started()
        return Scope(kind, label, trace, bound)

    def end(self, scope: Scope, message: IncomingMessage, outcome: Outcome | None,
            known: bool) -> None:
        """Leave ``message``'s context: count it, end its span, write its log line.

        ``known``: its label is a name of this service (else metrics file it as unknown).
        """
        seconds = time.perf_counter() - scope.started
        response = outcome.response if outcome is not None else None
        error = response.get("error") if response is not None else None
        code = error.get("code") if isinstance(error, dict) else None
        if outcome is not None and outcome.error is not None and code is None:
            code = getattr(outcome.error, "code", InternalError.code)  # nobody was answered
        failed = code is not None
        try:
            scope.trace.close(response)
            if scope.kind == "call":
                self.in_flight -= 1
                self.handled += 1
                if failed:
                    self.errors += 1
                if self.metrics is not None:
                    self.metrics.call_finished(scope.label if known else None, not failed,
                                               seconds)
            elif self.metrics is not None and scope.kind in ("event", "timer"):
                self._count(scope, outcome, failed, seconds)
            if not quiet() and scope.kind != "control":
                self._log_line(scope, message, response, code, seconds, outcome)
        finally:
            structlog.contextvars.reset_contextvars(**scope.bound)

    def _count(self, scope: Scope, outcome: Outcome | None, failed: bool, seconds: float) -> None:
        assert self.metrics is not None
        if scope.kind == "timer":
            self.metrics.timer_finished(scope.label, not failed, seconds)
        else:
            self.metrics.event_finished(scope.label, settled(outcome, failed), seconds)

    @staticmethod
    def _log_line(scope: Scope, message: IncomingMessage, response: dict | None,
                  code: int | None, seconds: float, result: Outcome | None = None) -> None:
        """One line per message: info, or warning when it failed and nobody was answered
        (a notification, an event): that line is the only trace of the failure."""
        unanswered_failure = code is not None and response is None
        if not unanswered_failure and not writes_info():
            return  # an info line, below the configured level: not worth building
        outcome = "error" if code is not None else "ok" if response or scope.kind != "call" \
            else "notification"
        if scope.kind == "event":
            outcome = settled(result, code is not None)
        fields = {"method": scope.label, "outcome": outcome, "code": code,
                  "duration_ms": round(seconds * 1000, 3), "pid": _PID[0],
                  "correlation_id": message.correlation_id}
        write = log.warning if unanswered_failure else log.info
        write("call" if scope.kind == "call" else scope.kind.replace("_", " "), **fields)

    def redelivered(self, dead: bool) -> None:
        """A redelivered message was counted (``dead``: and dead-lettered)."""
        if self.metrics is not None:
            self.metrics.redelivered(dead)


def settled(outcome: Outcome | None, failed: bool) -> str:
    """How an event ended: ``ok``, ``retried`` (sent again later) or ``dead_lettered``."""
    if outcome is not None and outcome.settle == REQUEUE:
        return "retried"
    if outcome is not None and outcome.settle == DEAD:
        return "dead_lettered"
    return "error" if failed else "ok"


def log_handler_error(kind: str, message: IncomingMessage, request: Any,
                      exc: BaseException) -> None:
    """A worker's default error hook: one line for a handler's exception, by kind."""
    if kind == "event":
        log.error("event handler failed; event dead-lettered", routing_key=message.routing_key,
                  queue=message.raw.queue, retries=message.retries, exc_info=exc)
    elif kind == "timer":
        log.error("timer failed; it runs again at its next tick",
                  routing_key=message.routing_key, exc_info=exc)
    elif kind != "call":
        log.error(f"{kind.replace('_', ' ')} handler failed; message dropped",
                  routing_key=message.routing_key, queue=message.raw.queue, exc_info=exc)
    elif isinstance(exc, RemoteProcedureCallError):
        log.info("handler returned an error", method=request.method if request else None,
                 code=exc.code, error=exc.message)
    else:
        log.error("handler raised", method=request.method if request else None, exc_info=exc)
