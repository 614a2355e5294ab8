"""The transport seam: what the Client and the worker need from a broker, and nothing more.

Two implementations: :mod:`busapp.transport.kombu_transport` (Redis, RabbitMQ and the
embedded broker, through kombu; the only modules of busapp that import kombu) and
:mod:`busapp.transport.memory` (in-process, for the test client). Everything above the
seam (:class:`~busapp.client.sync.Client`, :class:`~busapp.runtime.worker.Worker`) is written once.

A transport is one broker connection. It is driven by one thread at a time
(:meth:`Transport.drain` and everything that reads), except :meth:`Transport.publish`,
which callers serialise themselves. Broker failures surface as
:class:`~busapp.errors.BrokerUnavailable`, never as a library's own exception.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, Protocol

import attrs

#: Reply queues of busapp clients are named ``busapp.reply.<hex>``.
REPLY_PREFIX = "busapp.reply."

#: Reply queues of Commissaire's clients: ``response-<uuid>``.
COMMISSAIRE_REPLY = re.compile(r"response-[0-9A-Fa-f]{8}(-?[0-9A-Fa-f]{4}){3}-?[0-9A-Fa-f]{12}\Z")


def is_reply_queue(name: str | None) -> bool:
    """True if ``name`` is a caller's reply queue: busapp's ``busapp.reply.<hex>`` or
    Commissaire's ``response-<uuid>`` (what a service may answer to, see
    :func:`busapp.core.pipeline.reply_target_allowed`)."""
    if not name:
        return False
    return name.startswith(REPLY_PREFIX) or COMMISSAIRE_REPLY.match(name) is not None


@attrs.define(slots=True)
class Delivery:
    """One message taken from a queue.

    ``body`` is the payload exactly as it crossed the wire (bytes, not decoded); the
    transport never deserialises or decompresses it, so size and content-type checks
    come first. ``compression`` is the sender's compression header, if any (busapp
    refuses such messages instead of inflating them).
    """

    body: bytes
    content_type: str | None
    headers: dict[str, Any]
    routing_key: str | None
    reply_to: str | None = None
    correlation_id: str | None = None
    redelivered: bool = False
    compression: str | None = None
    queue: str | None = None
    #: Deliveries of this message so far, this one included, as the broker counts them
    #: (RabbitMQ quorum queues); None where the broker does not count (busapp does).
    deliveries: int | None = None
    #: Settles the message on its broker: ``ack()`` or ``requeue()`` (set by the transport).
    _ack: Callable[[], None] | None = attrs.field(default=None, repr=False)
    _requeue: Callable[[], None] | None = attrs.field(default=None, repr=False)

    def ack(self) -> None:
        """Remove the message from its queue for good."""
        if self._ack is not None:
            self._ack()

    def requeue(self) -> None:
        """Give the message back to its queue (for another consumer)."""
        if self._requeue is not None:
            self._requeue()


@attrs.frozen
class QueueSpec:
    """A queue to declare, and the bindings that feed it from the exchange."""

    name: str
    binding_keys: tuple[str, ...] = ()
    durable: bool = True
    auto_delete: bool = False
    #: Seconds the queue outlives its last consumer (None: forever).
    expires: float | None = None
    #: Extra broker arguments (``x-queue-type``, ...).
    arguments: dict[str, Any] | None = None


class Transport(Protocol):
    """One connection to a broker (see the module docstring for the threading rule)."""

    url: str
    #: True if acknowledging from a thread other than the draining one is safe.
    concurrent_ack: bool
    #: Largest body to receive, set before :meth:`connect` (None: no limit). A transport
    #: that must read a message whole before busapp sees it refuses bigger ones unread.
    max_body: int | None
    #: RabbitMQ: seconds between heartbeats, set before :meth:`connect` (None: none), so the
    #: broker finds a vanished peer (what ends a lease when its holder's host goes away).
    heartbeat: float | None

    def connect(self) -> None:
        """Open the connection (raises BrokerUnavailable)."""

    def declare_exchange(self, exchange: str, *, passive: bool = False) -> bool:
        """Make sure the topic ``exchange`` exists (idempotent).

        ``passive``: only check that it exists (False if not), which needs no *configure*
        permission on RabbitMQ; on Redis, where an exchange is local state, it declares.
        """

    def declare_queue(self, exchange: str, spec: QueueSpec) -> None:
        """Declare ``spec`` and bind it to ``exchange`` with its binding keys."""

    def publish(self, body: bytes, *, exchange: str, routing_key: str,
                headers: dict[str, Any] | None = None, reply_to: str | None = None,
                correlation_id: str | None = None, expiration: float | None = None,
                persistent: bool = False, content_type: str = "application/json") -> None:
        """Publish one JSON message (``exchange=""``: straight to the queue ``routing_key``)."""

    def publish_delayed(self, body: bytes, *, queue: str, delay: float,
                        headers: dict[str, Any] | None = None, correlation_id: str | None = None,
                        content_type: str = "application/json") -> None:
        """Publish one persistent message straight to ``queue``, to arrive ``delay`` seconds
        from now; it waits on the broker (not in this process), so it arrives even if the
        publisher dies meanwhile. It arrives with ``queue`` as its routing key.

        RabbitMQ holds it in a queue of that delay (``<queue>.delay.<ms>``, a queue-level
        TTL, then dead-lettered back to ``queue``); Redis in a sorted set, moved back by
        :meth:`move_due`, which some consumer of ``queue`` must call now and then.
        """

    def move_due(self, queues: list[str]) -> int:
        """Put the delayed messages of ``queues`` that are due back on their queues (Redis;
        elsewhere nothing to do); how many."""

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``owner``, or keep it if ``owner`` holds it; True if
        ``owner`` holds it now.

        A lease is held until :meth:`release_lease`, until this connection closes (RabbitMQ:
        an exclusive queue of that name; the broker deletes it with the connection), or
        (Redis: a key set with ``NX PX``) until ``ttl`` seconds pass without its holder
        calling this again. Call it every ``ttl / 3`` seconds to keep a lease.
        """

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease ``name`` up if ``owner`` holds it, or (a process prefix,
        ``<host>.<pid>``) any owner ``<owner>.<more>`` does."""

    def consume(self, queue: str, callback: Callable[[Delivery], None], *,
                no_ack: bool = False) -> None:
        """Call ``callback`` (from :meth:`drain`) with each message of ``queue``."""

    def cancel(self) -> None:
        """Stop consuming every queue (messages already sent may still arrive on drain)."""

    def set_prefetch(self, count: int) -> None:
        """Unacknowledged messages the broker may hand this connection at once."""

    def drain(self, timeout: float) -> bool:
        """Deliver what arrives within ``timeout`` seconds; False if nothing came.

        ``timeout=0`` delivers only what has already arrived, without waiting: a cheap
        check that the connection is alive (raises BrokerUnavailable if it is known dead).
        """

    def queue_depth(self, queue: str) -> int:
        """Messages waiting in ``queue`` (not yet delivered to anyone)."""

    def bound_queues(self, exchange: str) -> set[str] | None:
        """Queues bound to ``exchange`` as the broker sees it now, or None if unknowable."""

    def claim(self, key: str, ttl: float) -> bool | None:
        """Set ``key`` on the broker for ``ttl`` seconds unless it is set: True if this call
        set it, False if it was there; None if this broker keeps no such keys (RabbitMQ).

        The workers of a service share their replay memory this way (busapp.runtime.gate).
        """

    def close(self, *, delete_queue: str | None = None) -> None:
        """Close the connection (deleting ``delete_queue`` first, best effort)."""


@functools.lru_cache(maxsize=8192)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """True if ``routing_key`` matches the binding ``pattern`` (``*`` one word, ``#`` zero
    or more)."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])
