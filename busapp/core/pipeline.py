"""The message pipeline's pure stages: what every message of every entrypoint kind passes.

A worker takes each message through five stages, in this order, in one place
(:class:`busapp.runtime.pipeline.Pipeline`)::

    screen   size, content type, compression, the caller's deadline, redelivery count
    verify   signature bound to the delivered routing key, replay, allow lists, reply target
    decode   the body's JSON (and the entrypoint's own shape of it)
    run      the entrypoint's step, under the App's middleware and dependencies
    reply    the answer (signed for the caller), then settle: ack, requeue or dead-letter

What those stages decide without I/O lives here: the :class:`IncomingMessage` a handler's
``message`` parameter receives, the :class:`Outcome` an entrypoint's run step returns,
decoding, deadlines and the reply-target rule. The I/O (acks, publishes, the broker's
replay memory) is the runtime's.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import time
from typing import TYPE_CHECKING, Any

import attrs

from busapp import config, names
from busapp.core import compression, wire
from busapp.errors import ParseError

if TYPE_CHECKING:
    from busapp.transport.base import Delivery

#: The variable naming further queues (glob patterns) a service may send replies to.
REPLY_TO_ENV = config.env_name("reply_to")

#: How a message is settled once served.
ACK, REQUEUE, DEAD = "ack", "requeue", "dead"


def expired_by(delivery: Delivery, now: float | None = None) -> float | None:
    """Seconds since ``delivery``'s caller gave up (its deadline header), or None (no
    deadline, or not yet)."""
    deadline = delivery.headers.get(names.DEADLINE_HEADER)
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        return None
    late = (time.time() if now is None else now) - deadline
    return late if late > 0 else None


def reply_target_allowed(reply_to: str) -> bool:
    """True if a service may publish a reply to the queue ``reply_to``.

    Only callers' reply queues qualify (:func:`busapp.names.is_reply_queue`), plus the
    patterns of ``$BUSAPP_REPLY_TO``: a message naming any other queue (a service's work
    queue, a Celery list, a Redis key of another type) as its ``reply_to`` would otherwise
    make the service push its answer there.
    """
    if names.is_reply_queue(reply_to):
        return True
    extra = config.get("reply_to")
    return bool(extra) and _extra_reply_targets(extra).match(reply_to) is not None


@functools.lru_cache(maxsize=8)
def _extra_reply_targets(globs: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(g) for g in globs) or r"(?!)")


def decode(delivery: Delivery, max_body: int | None) -> Any:
    """The JSON a delivery carries. Size, content type and compression are checked first; a
    compressed body is inflated no further than ``max_body`` (:mod:`busapp.core.compression`).

    Raises:
        ParseError: too large (inflated or not), an unknown or corrupt compression, a foreign
            content type, or not JSON.
    """
    body = delivery.body
    limit = wire.DEFAULT_MAX_BODY if max_body is None else max_body
    unread = delivery.headers.get(names.UNREAD_HEADER)
    if unread and not body:  # the broker's worker did not read it (busapp.transport)
        raise ParseError(f"message of {unread} bytes on the broker exceeds the limit of "
                         f"{limit} bytes for its body (the service's max_body); it was not "
                         f"read", data={"size": unread, "limit": limit})
    if delivery.compression:
        body = compression.inflate(body, delivery.compression, limit)
    return wire.loads_body(body, delivery.content_type, max_body)


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
    #: Why the body could not be decoded (None: it was, or it is not decoded yet).
    problem: ParseError | None = attrs.field(default=None, repr=False)
    #: Times its handler failed before and it was sent again (an event's retries), as the
    #: worker that sent it signed it.
    retries: int = 0

    @classmethod
    def from_delivery(cls, delivery: Delivery, max_body: int | None = None, *,
                      routing_key: str | None = None, caller: str | None = None,
                      retries: int = 0, answered: bool = True) -> IncomingMessage:
        """Wrap a delivery; ``body`` is its JSON, or None when it is not acceptable JSON
        (:attr:`problem` says why). ``routing_key``: the key it was sent with, when the
        worker knows it better than the delivery (a re-published message). ``answered``:
        a message of a kind that owes no answer (an event, a tick) is known by its
        correlation id, not by an ``id`` its body may carry."""
        problem = None
        try:
            body = decode(delivery, max_body)
        except ParseError as exc:  # refused: content type, size, compression, not JSON
            body, problem = None, exc
        return cls(body=body, routing_key=routing_key or delivery.routing_key,
                   headers=delivery.headers, reply_to=delivery.reply_to,
                   id=wire.request_id_of(body) if answered else delivery.correlation_id,
                   correlation_id=delivery.correlation_id, raw=delivery, caller=caller,
                   problem=problem, retries=retries)

    @property
    def is_request(self) -> bool:
        """True when an answer is owed: a JSON-RPC request with an id (not a notification),
        or a body that could not be read at all (the refusal is the answer)."""
        body = self.body
        return not isinstance(body, dict) or "id" in body


@attrs.frozen
class Outcome:
    """What running one message came to: the answer to send, and how to settle it."""

    #: The JSON-RPC response owed to the caller (None: nothing to send).
    response: dict[str, Any] | None = None
    #: ``response`` already encoded (encoding a result is how it is checked).
    payload: bytes | None = None
    #: :data:`ACK`, :data:`REQUEUE` or :data:`DEAD`.
    settle: str = ACK
    #: Seconds to wait before the message is delivered again (``settle == REQUEUE``).
    delay: float = 0.0
    #: Where a message settled :data:`DEAD` goes (None: ``<its queue>.dead``).
    dead_letter_queue: str | None = None
    #: The handler's exception, if it raised (for counters and logs).
    error: BaseException | None = attrs.field(default=None, eq=False)

    @property
    def failed(self) -> bool:
        """True when the caller gets an error, or the handler raised."""
        return self.error is not None or (
            self.response is not None and "error" in self.response)


#: The outcome of a message that owes nobody anything and is done with.
DONE = Outcome()
