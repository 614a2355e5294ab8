"""Counting redeliveries, and dead-lettering a message its workers keep dying on.

A message whose worker died comes back flagged as redelivered. Its delivery count
travels in a header: the worker re-publishes the message to its queue with the count
+ 1 and acks the old copy, so the count survives the next crash too. Past
``max_deliveries`` the message goes to ``<queue>.dead`` instead, and its caller gets
an error reply (see :func:`poison_error`).
"""

from __future__ import annotations

from typing import Any

from busapp.errors import InternalError
from busapp.serve import ROUTING_KEY_HEADER
from busapp.transport.base import Delivery, QueueSpec, Transport

COUNT_HEADER = "x-busapp-deliveries"
#: The largest count a header may claim (a bigger or unparsable one counts as 1).
_MAX_COUNT = 1000


def delivery_count(headers: dict[str, Any]) -> int:
    """Deliveries so far by the message's own header; 1 if absent or not a sane integer."""
    value = headers.get(COUNT_HEADER, 1)
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        return 1
    try:
        count = int(value)
    except (TypeError, ValueError):
        return 1
    return count if 1 <= count <= _MAX_COUNT else 1


def count_redelivery(delivery: Delivery, transport: Transport, max_deliveries: int,
                     declared: set[str]) -> tuple[int, str | None]:
    """Re-publish ``delivery`` with its count + 1, or dead-letter it; ack the old copy.

    Returns the new count and the dead-letter queue's name (None if re-queued).
    """
    queue = delivery.queue or ""
    headers = {k: v for k, v in delivery.headers.items() if k != "redelivered"}
    count = delivery_count(headers) + 1
    routing_key = headers.get(ROUTING_KEY_HEADER) or delivery.routing_key
    headers.update({COUNT_HEADER: count, ROUTING_KEY_HEADER: routing_key})
    dead = f"{queue}.dead" if count > max_deliveries else None
    if dead is not None and dead not in declared:
        transport.declare_queue("", QueueSpec(dead))
        declared.add(dead)
    transport.publish(delivery.body, exchange="", routing_key=dead or queue, headers=headers,
                      reply_to=delivery.reply_to, correlation_id=delivery.correlation_id,
                      persistent=True)
    delivery.ack()
    return count, dead


def poison_error(routing_key: str | None, count: int, dead: str) -> InternalError:
    """The error a dead-lettered request's caller gets."""
    return InternalError(
        f"the worker handling {routing_key!r} died on each of {count - 1} deliveries; "
        f"the request was moved to queue {dead!r}",
        data={"exception": "WorkerLost", "deliveries": count - 1})
