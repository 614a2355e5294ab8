"""RabbitMQ's part of delayed messages and leases, on py-amqp channels (no kombu here).

Delayed messages (:meth:`busapp.transport.base.Transport.publish_delayed`): one queue per
delay, ``<queue>.delay.<ms>``, declared with that delay as its message TTL and the default
exchange with ``<queue>`` as its dead-letter target. A message published there waits on
the broker and, when its TTL runs out, RabbitMQ dead-letters it back to ``<queue>``. Every
message of one such queue has the same TTL, so they expire in the order they came (a
per-message TTL would hold an expired message behind a longer-lived one at the head).
The queue is declared again at least once a minute while it is used, and expires an hour
after that (``x-expires``), so a delay no longer used leaves nothing behind.

Leases (:meth:`~busapp.transport.base.Transport.acquire_lease`): an exclusive queue named
after the lease is the lock. Only the connection that declared it may declare it again
(another gets 405 RESOURCE_LOCKED, which closes that channel), and RabbitMQ deletes it when
its connection closes: at once when the holder's process dies (its socket closes), after
the missed heartbeats when its host goes away. So leases need no TTL on RabbitMQ.
"""

from __future__ import annotations

import time
from typing import Any

from amqp.exceptions import NotFound, ResourceLocked

from busapp import names

#: Seconds a delay queue's declaration is trusted before it is declared again.
REDECLARE_AFTER = 60.0
#: Milliseconds a delay queue outlives its last declaration (and its messages' TTL).
EXPIRES_AFTER_MS = 3_600_000


def publish_delayed(channel: Any, declared: dict[str, float], message: Any, queue: str,
                    delay_ms: int) -> None:
    """Publish ``message`` to ``queue``'s delay queue of ``delay_ms`` (declared when
    ``declared``, name -> monotonic time of the next declaration, says it is time)."""
    name = names.delay_queue(queue, delay_ms)
    now = time.monotonic()
    if declared.get(name, 0.0) <= now:
        channel.queue_declare(queue=name, durable=True, auto_delete=False, arguments={
            "x-message-ttl": delay_ms, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue, "x-expires": delay_ms + EXPIRES_AFTER_MS})
        declared[name] = now + REDECLARE_AFTER
    channel.basic_publish(message, exchange="", routing_key=name)


class Leases:
    """The leases one connection holds, on a channel of their own (a refusal closes it)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.channel: Any = None
        #: ``{lease name: owner}`` held on this connection.
        self.held: dict[str, str] = {}

    def _channel(self) -> Any:
        channel = self.channel
        if channel is None or not getattr(channel, "is_open", True):
            channel = self.channel = self.connection.channel()
        return channel

    def acquire(self, name: str, owner: str) -> bool:
        """True if ``owner`` holds ``name`` now (checked with the broker each time)."""
        holder = self.held.get(name)
        if holder is not None and holder != owner:
            return False  # another owner of this very connection holds it
        try:
            self._channel().queue_declare(queue=name, passive=holder is not None, durable=False,
                                          exclusive=True, auto_delete=False)
        except ResourceLocked:  # another connection holds it
            self.channel = None
            return False
        except NotFound:  # held, but the queue was deleted (by hand): take it again next time
            self.channel = None
            self.held.pop(name, None)
            return False
        self.held[name] = owner
        return True

    def release(self, name: str, owner: str) -> None:
        """Delete the lease's queue if ``owner`` (or ``owner.<more>``) holds it here."""
        holder = self.held.get(name)
        if holder is None or not (holder == owner or holder.startswith(owner + ".")):
            return
        del self.held[name]
        self._channel().queue_delete(queue=name)
