"""Settling a message whose handler failed: sent again after a delay, or dead-lettered.

An entrypoint's run step says how its message ends (:class:`~busapp.core.pipeline.Outcome`):
``ack``; ``requeue`` after ``delay`` seconds; or ``dead``. The pipeline hands the last two
to a :class:`Resender`, which publishes a copy and only then lets the original be acked,
so a worker that dies in between leaves the original to be delivered again (at least once,
never lost). A copy for later waits on the broker (:meth:`Transport.publish_delayed`), not
in the worker, so the worker may die during the delay.

A copy sent again carries, besides the original's headers:

- ``x-busapp-routing-key``: the routing key it was first published with (the broker
  delivers a copy with its queue's name);
- ``x-busapp-retries`` and ``x-busapp-retries-sig``: how many times it was sent again,
  signed with the workers' delivery key (:mod:`busapp.runtime.redelivery`), so a sender
  cannot forge a count or a routing key; the next worker reads it back
  (:func:`~busapp.runtime.redelivery.retry_count`);
- with a keyring, a new signature by the key that signed the original, for the original
  routing key: a retry is not taken for a replay, nor refused as too old.

A dead-lettered copy goes to its handler's ``.dead`` queue with ``x-busapp-error`` (the
exception, one line) added. The copies are published on a connection of the resender's own
(made on first use), so any handler thread may settle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from busapp import names, security
from busapp.core.pipeline import IncomingMessage
from busapp.errors import BrokerUnavailable
from busapp.log import get_logger
from busapp.runtime.redelivery import sign_count
from busapp.transport import open_transport
from busapp.transport.base import Transport

log = get_logger("busapp.worker")

#: Headers a copy does not keep: the broker's own, and what the copy gets anew.
_DROPPED = frozenset({"redelivered", "x-death", "x-first-death-exchange", "x-first-death-queue",
                      "x-first-death-reason", names.RETRIES_HEADER,
                      names.RETRIES_SIGNATURE_HEADER, names.ERROR_HEADER})


def error_line(exc: BaseException | None) -> str:
    """``ExceptionClass: message``, on one line, at most 500 characters."""
    if exc is None:
        return ""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 500 else text[:497] + "..."


class Resender:
    """Publishes the copies of messages to be sent again or dead-lettered (see the module
    docstring).

    Args:
        url: the broker.
        key_for: the key to sign a copy of a message signed by key id ``caller`` with
            (None: unsigned; the worker's gate knows its keyring's keys).
    """

    def __init__(self, url: str, key_for: Callable[[str | None], Any] | None = None) -> None:
        self.url = url
        self.key_for = key_for
        self._transport: Transport | None = None
        self._lock = threading.Lock()

    def later(self, message: IncomingMessage, delay: float) -> None:
        """Send ``message`` back to the queue it came from in ``delay`` seconds, counted as
        one more retry.

        Raises:
            BrokerUnavailable: not sent (the original is still unsettled).
        """
        delivery = message.raw
        queue = delivery.queue or ""
        count = message.retries + 1
        headers = self._headers(message)
        headers[names.RETRIES_HEADER] = count
        headers[names.RETRIES_SIGNATURE_HEADER] = sign_count(count, delivery, message.routing_key,
                                                             "retries:")
        headers = self._signed(message, headers)
        self._send(lambda t: t.publish_delayed(
            delivery.body, queue=queue, delay=delay, headers=headers,
            correlation_id=delivery.correlation_id,
            content_type=delivery.content_type or "application/json"))

    def dead(self, message: IncomingMessage, queue: str, error: BaseException | None) -> None:
        """Put ``message`` in the dead-letter queue ``queue``, with its error (one line).

        Raises:
            BrokerUnavailable: not sent (the original is still unsettled).
        """
        delivery = message.raw
        headers = self._headers(message)
        if message.retries:
            headers[names.RETRIES_HEADER] = message.retries
        headers[names.ERROR_HEADER] = error_line(error)
        self._send(lambda t: t.publish(
            delivery.body, exchange="", routing_key=queue, headers=headers,
            correlation_id=delivery.correlation_id, persistent=True,
            content_type=delivery.content_type or "application/json"))

    def _headers(self, message: IncomingMessage) -> dict[str, Any]:
        headers = {k: v for k, v in message.headers.items() if k not in _DROPPED}
        headers[names.ROUTING_KEY_HEADER] = message.routing_key
        return headers

    def _signed(self, message: IncomingMessage, headers: dict[str, Any]) -> dict[str, Any]:
        key = self.key_for(message.caller) if self.key_for and message.caller else None
        if key is None:
            return headers
        delivery = message.raw
        return security.signer(key, delivery.body, message.routing_key, None,
                               delivery.correlation_id, headers) or headers

    def _send(self, publish: Callable[[Transport], None]) -> None:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._transport is None:
                        transport = open_transport(self.url)
                        transport.connect()
                        self._transport = transport
                    publish(self._transport)
                    return
                except BrokerUnavailable:
                    self._close()
                    if attempt == 2:
                        raise

    def _close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def close(self) -> None:
        """Close the connection, if one was made."""
        with self._lock:
            self._close()
