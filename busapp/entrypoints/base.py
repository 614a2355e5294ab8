"""What an entrypoint kind is: the queues it consumes and what running one message means.

The worker's pipeline (:mod:`busapp.runtime.pipeline`) does everything else, the same
way for every kind: screening, signature and replay checks, the reply-target rule,
decoding, middleware and dependencies, tracing, metrics and the per-call log line,
replies and acknowledgements. An entrypoint cannot skip a stage; it only says::

    kind          "call", "storage_event", "control", "event", "timer"
    answers       whether its messages are answered (to their reply_to)
    queue_specs   the queues it consumes and their bindings
    admit         whether a verified key may have this message run (allow lists)
    run           the step itself: an IncomingMessage in, an Outcome out

and, if it likes, ``describe()``: the lines the worker's start-up banner lists for it (a
method with its params, a subscription with its handler); without it, the banner lists
the binding keys of its queues.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from busapp.core.pipeline import IncomingMessage, Outcome
from busapp.errors import RemoteProcedureCallError
from busapp.transport.base import QueueSpec

#: Told of a handler's exception: ``(kind, message, request or None, exception)``.
ErrorHook = Callable[[str, IncomingMessage, Any, BaseException], None]


class Entrypoint(Protocol):
    """One kind of message a worker consumes (see the module docstring)."""

    #: What :class:`busapp.Call` and the log lines call these messages.
    kind: str
    #: True if a message of this kind owes its sender an answer.
    answers: bool

    def queue_specs(self) -> list[QueueSpec]:
        """The queues to declare and consume, with their bindings."""
        ...

    def admit(self, caller: str, routing_key: str | None) -> RemoteProcedureCallError | None:
        """Why key ``caller`` may not have a message sent with ``routing_key`` run (None: it
        may)."""
        ...

    def run(self, message: IncomingMessage, context: Mapping[str, Any],
            on_error: ErrorHook) -> Outcome:
        """Run one decoded message; never raises (a failure is an :class:`Outcome`)."""
        ...

    def time_limit(self, message: IncomingMessage) -> float | None:
        """Seconds ``message`` may run before its caller is answered with an error (None:
        the worker's default)."""
        ...

    def label(self, message: IncomingMessage) -> str | None:
        """What the per-call log line and the metrics name this message by (a method)."""
        ...
