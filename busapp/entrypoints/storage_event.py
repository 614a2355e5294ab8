"""Storage events (and any plain-JSON subscription): a callback per message, no answer.

A subscription consumes one named queue, shared by every worker of its service, bound
with one key (``notify.storage.<Model>.<event>``, wildcards allowed): each event is
handled once per service. The callback gets the decoded body and the
:class:`~busapp.core.pipeline.IncomingMessage`; an App's storage handler decodes the
model and runs the handler through the App's middleware and dependencies
(:mod:`busapp.runtime.appservice`). A callback that raises is logged and the event
dropped: storage events are notifications of a change already made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from busapp import config
from busapp.core.pipeline import DONE, IncomingMessage, Outcome
from busapp.entrypoints.base import ErrorHook
from busapp.errors import RemoteProcedureCallError
from busapp.transport.base import QueueSpec


def event_queue_expires() -> float | None:
    """Seconds an event queue outlives its last consumer on RabbitMQ (None: forever).

    Events keep coming to a queue whose App is gone; without an expiry they collect forever.
    """
    value = float(config.get("event_queue_expires"))
    return value if value > 0 else None


@attrs.define
class Subscription:
    """A plain-JSON queue a service consumes besides its RPC queues (e.g. storage events)."""

    binding_key: str
    callback: Callable[[Any, IncomingMessage], Any]
    queue_name: str
    #: Seconds the queue outlives its last consumer (RabbitMQ ``x-expires``; None: forever).
    expires: float | None = attrs.field(factory=event_queue_expires)


class SubscriptionEntrypoint:
    """One :class:`Subscription`, served (see the module docstring)."""

    kind = "storage_event"
    answers = False

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription

    def queue_specs(self) -> list[QueueSpec]:
        sub = self.subscription
        return [QueueSpec(sub.queue_name, (sub.binding_key,), expires=sub.expires)]

    def admit(self, caller: str, routing_key: str | None) -> RemoteProcedureCallError | None:
        return None  # any key of the keyring may publish events

    def describe(self) -> list[str]:
        """``binding key -> handler``, as the start-up banner lists it."""
        sub = self.subscription
        return [f"{sub.binding_key} -> {getattr(sub.callback, '__name__', '?')}"]

    def time_limit(self, message: IncomingMessage) -> float | None:
        return None

    def label(self, message: IncomingMessage) -> str | None:
        return getattr(self.subscription.callback, "__name__", None)

    def run(self, message: IncomingMessage, context: Mapping[str, Any],
            on_error: ErrorHook) -> Outcome:
        try:
            if message.problem is not None:
                raise message.problem
            self.subscription.callback(message.body, message)
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the others
            on_error(self.kind, message, None, exc)
            return Outcome(error=exc)
        return DONE
