"""A kombu message, as the :class:`~busapp.transport.base.Delivery` busapp serves: its body
as the bytes that crossed the wire, its properties, and how to settle it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from busapp.transport.base import Delivery

#: ``settle("ack" | "requeue", delivery_tag)``, on the channel the message came from.
Settle = Callable[[str, Any], None]


def from_amqp(raw: Any, queue: str, settle: Settle | None, counted: bool) -> Delivery:
    """A py-amqp message taken from ``queue`` (``settle`` None: consumed without acks;
    ``counted``: a quorum queue, whose broker counts deliveries)."""
    props = raw.properties
    info = raw.delivery_info
    headers = props.get("application_headers") or {}
    body = raw.body
    delivery = Delivery(
        body=body if isinstance(body, bytes) else str(body).encode(),
        content_type=props.get("content_type"), headers=headers,
        routing_key=info.get("routing_key"), reply_to=props.get("reply_to"),
        correlation_id=props.get("correlation_id"), redelivered=bool(info.get("redelivered")),
        compression=headers.get("compression"), queue=queue,
    )
    if counted:
        delivery.deliveries = _broker_count(delivery)
    if settle is not None:
        _settled_by(delivery, settle, info["delivery_tag"])
    return delivery


def from_redis(message: Any, queue: str, settle: Settle | None, counted: bool = False) -> Delivery:
    """A kombu Redis message taken from ``queue`` (see :func:`from_amqp`)."""
    props = message.properties or {}
    info = message.delivery_info or {}
    headers = message.headers or {}
    body = message.body
    delivery = Delivery(
        body=body if isinstance(body, bytes) else str(body or "").encode(),
        content_type=message.content_type, headers=headers,
        routing_key=info.get("routing_key"), reply_to=props.get("reply_to"),
        correlation_id=props.get("correlation_id"),
        redelivered=bool(info.get("redelivered") or headers.get("redelivered")),
        compression=getattr(message, "compression", None), queue=queue,
    )
    if settle is not None:
        _settled_by(delivery, settle, message.delivery_tag)
    return delivery


def _settled_by(delivery: Delivery, settle: Settle, tag: Any) -> None:
    delivery._ack = lambda: settle("ack", tag)
    delivery._requeue = lambda: settle("requeue", tag)


def _broker_count(delivery: Delivery) -> int:
    """This delivery's number on a quorum queue: 1, or 1 + the broker's ``x-delivery-count``.

    The header is read only on a redelivery (the broker's flag): a first delivery carries
    whatever header its sender put there, a redelivered one the broker's own count.
    """
    count = delivery.headers.get("x-delivery-count") if delivery.redelivered else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return 2 if delivery.redelivered else 1
    return count + 1


