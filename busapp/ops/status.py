"""``busapp status`` and ``busapp probe``, the caller's side: ask every live worker.

The worker's side is :mod:`busapp.entrypoints.control`. Workers of a service with a keyring
answer only a request signed by one of its keys, with an answer signed with that key:
:func:`gather` signs with ``key`` and drops answers not signed with it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from busapp import names, security
from busapp.core import wire
from busapp.errors import RequestTimeout, Unauthorized
from busapp.transport import open_transport
from busapp.transport.base import Delivery, QueueSpec


def gather(url: str, exchange: str, service: str | None = None, *, timeout: float = 1.0,
           first: bool = False, host: str | None = None,
           key: Any = None) -> list[dict[str, Any]]:
    """Ask every live worker (of ``service``, or all; on ``host``, or any) for its status.

    Waits the whole ``timeout`` (there is no knowing how many will answer) unless
    ``first``: then returns as soon as one answers.

    ``key``: ``(id, secret)`` or ``"id:secret"`` to sign the request with (workers of a
    service with a keyring answer only signed requests); answers not signed with it are
    then dropped unread. None: unsigned, and only services without a keyring answer.

    Returns:
        One status dict per worker that answered, sorted by service, host and pid.

    Raises:
        BrokerUnavailable: the broker cannot be reached.
    """
    replies: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    request_id = wire.new_id()
    queue = names.reply_queue(uuid.uuid4().hex)
    signing = security.parse_key(key) if key is not None else None

    def on_reply(delivery: Delivery) -> None:
        if signing is not None and not _signed_with(signing, delivery, queue):
            return  # checked before anything is parsed, as a Client checks its replies
        try:
            response = wire.parse_response(delivery.body)
        except Exception:  # noqa: BLE001 - not an answer: ignore it
            return
        result = response.get("result")
        if delivery.correlation_id == request_id and isinstance(result, dict) \
                and (host is None or result.get("host") == host):
            replies[(result.get("service"), result.get("host"), result.get("pid"))] = result

    transport = open_transport(url)
    transport.connect()
    try:
        transport.declare_queue("", QueueSpec(queue, durable=False, auto_delete=True))
        transport.consume(queue, on_reply, no_ack=True)
        transport.declare_exchange(exchange)
        body = wire.dumps(wire.encode_request(names.STATUS_METHOD, None, request_id)).encode()
        routing_key = names.control_key(service)
        try:
            transport.publish(
                body, exchange=exchange, routing_key=routing_key, reply_to=queue,
                correlation_id=request_id, expiration=timeout,
                headers=security.signer(signing, body, routing_key, queue, request_id, None))
        except RequestTimeout:  # the in-memory bus says at once that no worker listens
            return []
        deadline = time.monotonic() + timeout
        while not (first and replies):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            transport.drain(min(remaining, 0.1))
    finally:
        transport.close(delete_queue=queue)
    return sorted(replies.values(), key=lambda r: (str(r.get("service")), str(r.get("host")),
                                                   int(r.get("pid") or 0)))


def _signed_with(key: Any, delivery: Delivery, queue: str) -> bool:
    """True if an answer to :func:`gather` is signed with ``key`` (checked unparsed)."""
    try:
        security.verify(dict([key]), delivery.headers, delivery.body, queue, None,
                        delivery.correlation_id, content_type=delivery.content_type)
    except Unauthorized:
        return False
    return True
