"""Running on the brokers' own clusters: queue types, and the queues a quorum queue needs.

busapp adds no clustering of its own (SPEC §11). On a RabbitMQ cluster its queues are
declared as *quorum* queues (``App(..., queue_type="quorum")`` or
``$BUSAPP_QUEUE_TYPE=quorum``): replicated over the cluster's nodes, so losing the node
that leads one loses no message the broker confirmed. A quorum queue counts deliveries
itself, so its ``x-delivery-limit`` is the poison bound, and it dead-letters to the same
``<queue>.dead`` queue a classic queue's worker uses (see :mod:`busapp.runtime.redelivery`).

Reply queues stay classic, non-durable and auto-deleted: they are per client and
short-lived, and a client whose node dies declares its reply queue again on another.

Several nodes go in one broker URL, separated by ``;`` (kombu's failover form:
``amqp://h1:5672;amqp://h2:5672``, ``sentinel://s1:26379;sentinel://s2:26379``); a
connection tries each in turn. No I/O here: this module only shapes :class:`QueueSpec`.
"""

from __future__ import annotations


import attrs

from busapp import config, names
from busapp.core.options import QUEUE_TYPES, check_queue_type
from busapp.transport.base import QueueSpec

__all__ = ["QUEUE_TYPES", "check_queue_type", "dead_letter_queue", "dead_letter_spec",
           "declared_as", "resolve_queue_type"]

def resolve_queue_type(value: str | None = None) -> str:
    """``value``, else ``$BUSAPP_QUEUE_TYPE``, else ``classic`` (ValueError if unknown)."""
    resolved = value or config.get("queue_type")
    try:
        return check_queue_type(resolved) or "classic"
    except ValueError as exc:
        if value is None:
            raise ValueError(f"${config.env_name('queue_type')}: {exc}") from None
        raise


def dead_letter_name(queue: str) -> str:
    """The queue a message of ``queue`` that kept killing its workers is moved to."""
    return names.dead_letter(queue)


def declared_as(spec: QueueSpec, queue_type: str, max_deliveries: int) -> QueueSpec:
    """``spec`` as a queue of ``queue_type`` with ``max_deliveries`` as its poison bound.

    A quorum queue is durable and never auto-deleted (RabbitMQ refuses either), and
    dead-letters a message returned more than ``max_deliveries`` times to
    ``<queue>.dead`` itself: the same bound and queue as a classic queue's worker uses.
    The worker still answers the caller of such a request (it sees the broker's count,
    see :attr:`busapp.transport.base.Delivery.deliveries`), and the broker's limit is the
    backstop if the worker dies on that last delivery too.
    """
    if queue_type != "quorum":
        return spec
    arguments = dict(spec.arguments or {})
    arguments.update({
        "x-queue-type": "quorum",
        "x-delivery-limit": max_deliveries,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_name(spec.name),
    })
    return attrs.evolve(spec, durable=True, auto_delete=False, arguments=arguments)


def dead_letter_spec(spec: QueueSpec) -> QueueSpec | None:
    """The dead-letter queue a quorum ``spec`` (from :func:`declared_as`) needs, else None.

    The broker drops what it dead-letters to a queue that does not exist, so it is
    declared with the queue, as a quorum queue too.
    """
    arguments = spec.arguments or {}
    if arguments.get("x-queue-type") != "quorum" or "x-dead-letter-routing-key" not in arguments:
        return None
    return QueueSpec(arguments["x-dead-letter-routing-key"], arguments={"x-queue-type": "quorum"})


def dead_letter_queue(name: str, queue_type: str | None = None) -> QueueSpec:
    """A dead-letter queue workers publish to themselves (an event handler's), of the type
    their queues are (``queue_type``, default ``$BUSAPP_QUEUE_TYPE``)."""
    quorum = resolve_queue_type(queue_type) == "quorum"
    return QueueSpec(name, arguments={"x-queue-type": "quorum"} if quorum else None)
