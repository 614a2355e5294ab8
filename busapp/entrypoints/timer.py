"""Timers: one tick of a timer, run like any message.

A tick is a message made in the worker that runs it: the worker holding its App's timer
lease (:mod:`busapp.runtime.timers`), or a test client's ``client.tick(name)``. It never
crosses the broker, so no other worker can run it, none is left in a queue when its
worker dies, and none is delivered twice; but it passes the same pipeline as a message
that did (signed with the service's own key when the service has a keyring and checked,
middleware, dependencies, trace span, metrics, the per-call log line). Its body is
``{"timer": NAME, "tick": SCHEDULED UNIX TIME, "eager": BOOL}``, its routing key
``busapp-timer.<service>.<timer>``.

A timer that raises is logged with its traceback; it runs again at the next tick.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from busapp import names
from busapp.core import wire
from busapp.core.dispatch import Handler
from busapp.core.pipeline import DONE, IncomingMessage, Outcome
from busapp.core.timers import Timer
from busapp.entrypoints.base import ErrorHook
from busapp.errors import InvalidParams, RemoteProcedureCallError
from busapp.security import Key, signer
from busapp.transport.base import Delivery, QueueSpec


class TimerEntrypoint:
    """One timer of a service (see the module docstring).

    Args:
        timer: the registered timer.
        handler: the same, as this worker runs it (middleware, dependencies).
        service: the service's name (in the ticks' routing key).
    """

    kind = "timer"
    answers = False

    def __init__(self, timer: Timer, handler: Handler, service: str) -> None:
        self.timer = timer
        self.handler = handler
        self.routing_key = names.timer_key(service, timer.name)

    @property
    def name(self) -> str:
        return self.timer.name

    def queue_specs(self) -> list[QueueSpec]:
        return []  # ticks are made where they run

    def admit(self, caller: str, routing_key: str | None) -> RemoteProcedureCallError | None:
        return None  # signed by the service's own key

    def time_limit(self, message: IncomingMessage) -> float | None:
        return None

    def label(self, message: IncomingMessage | None) -> str | None:
        return self.timer.name

    def tick(self, scheduled: float, *, eager: bool = False, key: Key | None = None) -> Delivery:
        """The message of the tick scheduled at ``scheduled`` (signed with ``key``, if any)."""
        body = wire.dumps({"timer": self.name, "tick": scheduled, "eager": eager}).encode()
        tick_id = wire.new_id()
        headers = signer(key, body, self.routing_key, None, tick_id, {}) or {}
        return Delivery(body, "application/json", headers, self.routing_key,
                        correlation_id=tick_id, queue=self.routing_key)

    def run(self, message: IncomingMessage, context: Mapping[str, Any],
            on_error: ErrorHook) -> Outcome:
        try:
            if message.problem is not None:
                raise message.problem
            body = message.body
            if not isinstance(body, dict) or body.get("timer") != self.name:
                raise InvalidParams(f"not a tick of timer {self.name!r}")
            self.handler.call({}, context)
        except Exception as exc:  # noqa: BLE001 - logged; the timer runs at its next tick
            on_error(self.kind, message, None, exc)
            return Outcome(error=exc)
        return DONE
