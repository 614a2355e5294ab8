"""Events between services: one handler's queue, each event run once, retried, or dead-lettered.

An event (``bus.emit("orders.placed", order_id=...)``) is a plain JSON object published
with the routing key ``busapp-event.<name>`` (:mod:`busapp.names`). Each handler of an App
has a durable queue of its own, bound with ``busapp-event.<pattern>`` and shared by the
App's workers, so each event is handled once per App; a ``broadcast`` handler has one
queue per worker instead (not durable, removed when the worker stops), so every worker
handles it.

Running one: the payload's keys bind to the handler's parameters by name, with the same
conversion as a method's params (keys the handler does not declare are ignored, so an
emitter may add fields); ``event`` (the name), ``message``, ``bus``, ``storage`` and
dependencies are injected. Then the outcome says how the worker settles it
(:mod:`busapp.runtime.retry`):

- the handler returned: acked;
- it raised, and has retries left: sent again after 1 s, 2 s, 4 s ... (at most 60 s),
  while the queue's other events go on;
- it raised on its last retry, or the event can never be handled (not a JSON object,
  a payload that does not convert): to the handler's ``.dead`` queue, with one error
  line in the log.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Mapping
from typing import Any

from busapp import names
from busapp.core import events
from busapp.core.dispatch import Handler
from busapp.core.pipeline import DEAD, DONE, REQUEUE, IncomingMessage, Outcome
from busapp.entrypoints.base import ErrorHook
from busapp.entrypoints.storage_event import event_queue_expires
from busapp.errors import Forbidden, InvalidParams, RemoteProcedureCallError
from busapp.transport.base import QueueSpec

_numbers = itertools.count()


def _restart_numbers() -> None:
    global _numbers
    _numbers = itertools.count()


# As control queues: a forked worker's first broadcast queues carry its pid alone (the
# manager finds a dead worker's by its pid).
os.register_at_fork(after_in_child=_restart_numbers)


def handler_queue(entry: events.EventHandler, app_queue: str, *, pid: int | None = None,
                  number: int | None = None) -> QueueSpec:
    """The queue a worker consumes for ``entry``: the App's shared one, or (broadcast) this
    worker's own (``pid``/``number``: another worker's, for clean-up)."""
    name = entry.queue_name(app_queue)
    if not entry.broadcast:
        return QueueSpec(name, (entry.binding_key,), expires=event_queue_expires())
    number = next(_numbers) if number is None else number
    own = names.broadcast_queue(name, socket.gethostname(), os.getpid() if pid is None else pid,
                                number)
    return QueueSpec(own, (entry.binding_key,), durable=False, auto_delete=True)


class EventEntrypoint:
    """One event handler of an App, served from its queue (see the module docstring).

    Args:
        entry: the registered handler.
        handler: the same, as this worker runs it (middleware, dependencies).
        spec: the queue to consume (:func:`handler_queue`).
        dead_letter_queue: where events it gives up on go (shared by a broadcast
            handler's workers).
    """

    kind = "event"
    answers = False
    #: Its messages may be sent again later (the worker moves due ones back on Redis).
    requeues_later = True

    def __init__(self, entry: events.EventHandler, handler: Handler, spec: QueueSpec,
                 dead_letter_queue: str) -> None:
        self.entry = entry
        self.handler = handler
        self.spec = spec
        self.dead_letter_queue = dead_letter_queue
        accepted = {p.name for p in handler.params}
        #: The payload keys bound to parameters (None: all, the handler takes ``**kwargs``).
        self.accepted: frozenset[str] | None = None if handler.var_keyword \
            else frozenset(accepted)

    def queue_specs(self) -> list[QueueSpec]:
        return [self.spec]

    def admit(self, caller: str, routing_key: str | None) -> RemoteProcedureCallError | None:
        allow = self.entry.allow
        if allow is not None and caller not in allow:
            return Forbidden(f"key {caller!r} may not emit to {self.entry.name!r}",
                             data={"key": caller, "handler": self.entry.name})
        return None

    def time_limit(self, message: IncomingMessage) -> float | None:
        return None

    def label(self, message: IncomingMessage | None) -> str | None:
        return self.entry.name

    def run(self, message: IncomingMessage, context: Mapping[str, Any],
            on_error: ErrorHook) -> Outcome:
        try:
            name, params = self._decode(message)
        except RemoteProcedureCallError as exc:
            return self._give_up(message, exc, on_error)
        try:
            self.handler.call(params, {**context, "event": name})
        except InvalidParams as exc:  # a payload that never converts: retrying cannot help
            return self._give_up(message, exc, on_error)
        except Exception as exc:  # noqa: BLE001 - retried or dead-lettered, never lost
            if message.retries < self.entry.retries:
                return Outcome(settle=REQUEUE, delay=events.retry_delay(message.retries),
                               error=exc)
            return self._give_up(message, exc, on_error)
        return DONE

    def _decode(self, message: IncomingMessage) -> tuple[str, dict[str, Any]]:
        if message.problem is not None:
            raise message.problem
        name = names.event_of(message.routing_key)
        if name is None:
            raise InvalidParams(f"routing key {message.routing_key!r} is not an event's "
                                f"({names.EVENT_PREFIX}.<source>.<event>)")
        body = message.body
        if not isinstance(body, dict):
            raise InvalidParams(f"an event's body must be a JSON object, got "
                                f"{type(body).__name__}")
        accepted = self.accepted
        params = dict(body) if accepted is None else {k: v for k, v in body.items()
                                                      if k in accepted}
        return name, params

    def _give_up(self, message: IncomingMessage, exc: BaseException,
                 on_error: ErrorHook) -> Outcome:
        on_error(self.kind, message, None, exc)
        return Outcome(settle=DEAD, error=exc, dead_letter_queue=self.dead_letter_queue)
