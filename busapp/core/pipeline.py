"""One message in, one reply out: the step a worker runs per message. No I/O.

:func:`serve_request` and :func:`serve_event` are the same for every transport (a
broker-fed worker and the in-memory test client run exactly these): they turn a
:class:`~busapp.transport.base.Delivery` into an :class:`IncomingMessage`, run the
handler through :func:`busapp.core.dispatch.process`, and return what to publish. The
caller (:mod:`busapp.runtime.worker`) publishes and settles.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from busapp import config
from busapp.core import dispatch, wire
from busapp.errors import ParseError, RemoteProcedureCallError
from busapp.log import get_logger
from busapp.transport.base import Delivery, is_reply_queue

log = get_logger("busapp.serve")

#: Header carrying the routing key a re-published (redelivered) message was first sent with.
ROUTING_KEY_HEADER = "x-busapp-routing-key"
#: Header of a request: when its caller stops waiting (Unix time, seconds). A worker drops
#: a request it takes after that instead of running it (callers' and workers' clocks are
#: assumed in step, as NTP keeps them).
DEADLINE_HEADER = "x-busapp-deadline"


def expired_by(delivery: Delivery, now: float) -> float | None:
    """Seconds since ``delivery``'s caller gave up, or None (no deadline, or not yet)."""
    deadline = delivery.headers.get(DEADLINE_HEADER)
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        return None
    late = now - deadline
    return late if late > 0 else None

def event_queue_expires() -> float | None:
    """Seconds an event queue outlives its last consumer on RabbitMQ (None: forever).

    Events keep coming to a queue whose App is gone; without an expiry they collect forever.
    """
    value = float(config.get("event_queue_expires"))
    return value if value > 0 else None


#: The variable naming further queues (glob patterns) a service may send replies to.
REPLY_TO_ENV = config.env_name("reply_to")


def reply_target_allowed(reply_to: str) -> bool:
    """True if a service may publish a reply to the queue ``reply_to``.

    Only callers' reply queues qualify (:func:`busapp.transport.base.is_reply_queue`), plus
    the patterns of ``$BUSAPP_REPLY_TO``: a request naming any other queue (a service's
    work queue, a Celery list, a Redis key of another type) as its ``reply_to`` would
    otherwise make the service push its reply there.
    """
    if is_reply_queue(reply_to):
        return True
    extra = config.get("reply_to")
    return bool(extra) and _extra_reply_targets(extra).match(reply_to) is not None


@functools.lru_cache(maxsize=8)
def _extra_reply_targets(globs: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(g) for g in globs) or r"(?!)")


@attrs.define
class IncomingMessage:
    """What a handler's ``message`` parameter receives."""

    body: Any
    routing_key: str | None
    headers: dict[str, Any]
    reply_to: str | None
    id: Any
    correlation_id: str | None = None
    raw: Any = attrs.field(default=None, repr=False)
    #: The key id that signed it, verified (None when the service has no keyring).
    caller: str | None = None

    @classmethod
    def from_delivery(cls, delivery: Delivery, max_body: int | None = None) -> IncomingMessage:
        """Wrap a delivery; ``body`` is its JSON, or None if it is not acceptable JSON."""
        try:
            body = decode(delivery, max_body)
        except RemoteProcedureCallError:  # refused (content type, size, compression, not JSON)
            body = None
        headers = delivery.headers
        original = headers.get(ROUTING_KEY_HEADER)
        return cls(
            body=body,
            routing_key=original if isinstance(original, str) and original
            else delivery.routing_key,
            headers=headers,
            reply_to=delivery.reply_to,
            id=wire.request_id_of(body),
            correlation_id=delivery.correlation_id,
            raw=delivery,
        )


@attrs.define
class Subscription:
    """A plain-JSON queue a service consumes besides its RPC queues (e.g. storage events)."""

    binding_key: str
    callback: Callable[[Any, IncomingMessage], Any]
    queue_name: str
    #: Seconds the queue outlives its last consumer (RabbitMQ ``x-expires``; None: forever).
    expires: float | None = attrs.field(factory=event_queue_expires)


def decode(delivery: Delivery, max_body: int | None) -> Any:
    """The JSON a delivery carries. Size, content type and compression are checked first.

    Raises:
        ParseError: compressed, too large, a foreign content type, or not JSON.
    """
    if delivery.compression:
        raise ParseError(f"compressed messages ({delivery.compression}) are not accepted; "
                         "send plain application/json",
                         data={"compression": str(delivery.compression)})
    return wire.loads_body(delivery.body, delivery.content_type, max_body)


def serve_request(
    handlers: Mapping[str, dispatch.Handler],
    info: IncomingMessage,
    context: Mapping[str, Any],
    *,
    max_body: int | None,
    on_error: Callable[[wire.Request | None, BaseException], None] | None = None,
) -> tuple[dict[str, Any] | None, bytes | None]:
    """Run the request in ``info``: the response to send and its JSON when already encoded;
    (None, None) for a notification, or a request whose ``reply_to`` is not a reply queue
    (dropped unrun, with a warning)."""
    delivery: Delivery = info.raw
    if info.reply_to and not reply_target_allowed(info.reply_to) and not _is_notification(info):
        log.warning("request dropped: its reply_to is not a reply queue", reply_to=info.reply_to,
                    hint=f"callers reply to busapp.reply.* or response-<uuid>; "
                         f"${REPLY_TO_ENV} allows more")
        return None, None
    if isinstance(info.body, dict):  # already parsed by from_delivery: not twice
        body: Any = info.body
    elif delivery.compression:
        body = b""  # refused below, before anything is inflated
        try:
            decode(delivery, max_body)
        except ParseError as exc:
            return wire.error_response(None, exc), None
    else:
        body = delivery.body
    return dispatch.process_encoded(handlers, body, content_type=delivery.content_type,
                                    routing_key=info.routing_key, context=context,
                                    on_error=on_error, max_body=max_body)


def _is_notification(info: IncomingMessage) -> bool:
    return isinstance(info.body, dict) and "id" not in info.body


def serve_event(subscription: Subscription, info: IncomingMessage, max_body: int | None) -> None:
    """Hand an event's JSON to its subscriber (raises what decoding or the subscriber raises)."""
    body = info.body
    if body is None:  # refused, or JSON null: decode raises the reason (or gives None)
        body = decode(info.raw, max_body)
    subscription.callback(body, info)
