"""A caller's replies: its reply queue, the calls waiting on it, and which reply is whose.

What :class:`~busapp.client.sync.Client` and :class:`~busapp.client.aio.AsyncClient` share:
:func:`accept_reply` (a reply is parsed only if it is signed as the caller requires),
:func:`reply_key` (the call a reply answers), and the blocking client's reply queue,
drained by one waiting caller at a time (:class:`_ReplyQueue`).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from busapp import names, security
from busapp.core import wire
from busapp.errors import (
    BrokerUnavailable,
    NoRouteError,
    RequestTimeout,
    RequestTooLarge,
    Unauthorized,
)
from busapp.log import get_logger
from busapp.transport import open_transport
from busapp.transport.base import Delivery, QueueSpec, Transport

if TYPE_CHECKING:
    from busapp.client.sync import Client

log = get_logger("busapp.bus")


_EVENT_LOCK = threading.Lock()


#: Forks this process is down from (a Client made before a fork starts afresh after it).
_FORKS = [0]


def _forked() -> None:
    _FORKS[0] += 1


os.register_at_fork(after_in_child=_forked)


#: A Client's default ``max_body``: the largest body a busapp service takes by default
#: (the storage service's; an App's own default is 1 MiB).
MAX_BODY = 16 * 1024 * 1024


def check_size(payload: bytes, routing_key: str, limit: int | None) -> None:
    """Raise RequestTooLarge if ``payload`` is over ``limit`` bytes (None: no limit)."""
    if limit is not None and len(payload) > limit:
        raise RequestTooLarge(
            f"message to {routing_key!r} of {len(payload)} bytes is over this Client's limit "
            f"of {limit} bytes (max_body); it was not sent. Services refuse bodies over "
            f"their own max_body too (App(max_body=...), 1 MiB by default): to send it, raise "
            f"both (Client(max_body=...))", size=len(payload), limit=limit)


def deadline_headers(timeout: float) -> dict[str, Any]:
    """A request's headers with its deadline: a worker drops it unrun once its caller stopped
    waiting (and, signed, a captured copy cannot be re-sent with a later deadline)."""
    return {names.DEADLINE_HEADER: round(time.time() + timeout, 3)}


def not_sent(exc: BrokerUnavailable) -> BrokerUnavailable:
    """``exc``, raised before the request was published: it says so (``sent`` False)."""
    error = BrokerUnavailable(f"{exc}; the request was not sent")
    error.sent = False
    return error


#: Seconds after a client saw a broker fault during which a request's missing route is
#: waited for (the service's workers may not have bound their queues again yet).
REBIND_WINDOW = 15.0


def publish_routed(publish: Callable[[], None], client: Client, deadline: float) -> None:
    """``publish()`` a request; right after a broker fault (within :data:`REBIND_WINDOW` of
    ``client.fault_at``) a NoRouteError is retried until ``deadline``, as the service's
    workers bind their queues again. On a healthy connection it is raised at once."""
    pause = 0.05
    while True:
        try:
            return publish()
        except NoRouteError:
            now = time.monotonic()
            if now - client.fault_at > REBIND_WINDOW or deadline - now < 0.01:
                raise
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 0.5)


def _maybe_delivered(exc: BrokerUnavailable, routing_key: str) -> BrokerUnavailable:
    return BrokerUnavailable(f"{exc}; the request to {routing_key!r} may have been delivered "
                             f"(and run): check before repeating a call that is not idempotent")


class _Pending:
    """A call waiting for its reply. Its Event is made only if the caller ever has to sleep
    (never on the in-memory transport, where the reply is there when the publish returns)."""

    __slots__ = ("event", "response", "arrived", "refused", "reply_to", "lost")

    def __init__(self, reply_to: str = "") -> None:
        self.event: threading.Event | None = None
        self.response: dict | None = None
        self.arrived = 0.0
        self.refused: str | None = None  # why a reply to it was dropped (bad signature)
        self.reply_to = reply_to  # the reply queue its request names
        self.lost: str | None = None  # why no reply can come any more (its queue is gone)

    def _ensure_event(self) -> threading.Event:
        event = self.event
        if event is None:
            with _EVENT_LOCK:
                event = self.event
                if event is None:
                    event = self.event = threading.Event()
        return event

    def wake(self) -> None:
        """Wake the caller (its reply came, or it is to drain next)."""
        self._ensure_event().set()

    def sleep(self, timeout: float) -> None:
        """Sleep until woken (or ``timeout``), unless the reply is already here."""
        event = self._ensure_event()
        if self.response is None:
            event.wait(timeout)
        event.clear()


def reply_queue_spec(name: str) -> QueueSpec:
    """A caller's reply queue: durable, not exclusive, not auto-deleted, no arguments.

    Exactly what a Commissaire server declares again before it answers
    (``SimpleQueue(reply_to)``): RabbitMQ refuses a re-declaration that differs in any of
    these (405 for an exclusive queue, 406 for ``auto_delete`` or an ``x-expires``
    argument). Not exclusive, it also outlives a dropped connection, so a reply sent
    meanwhile waits for the reconnected client. :meth:`Client.close` deletes it; on Redis,
    a reply list expires a minute after its last push.
    """
    return QueueSpec(name, durable=True, auto_delete=False)


def reply_key(delivery: Delivery, response: dict) -> str | None:
    """The call a reply answers: its correlation id, else the response's ``id``."""
    key = delivery.correlation_id
    if key is None:
        key = response.get("id")
    return None if key is None else str(key)


def _close_when_dropped(client: Client, owned: set[Transport]) -> weakref.finalize:
    """Close ``owned`` (and delete the reply queue) once ``client`` is garbage, unclosed.

    A Client dropped without :meth:`Client.close` would otherwise keep its broker connections
    until its process exits (kombu's Redis channel is held by a process-wide finalizer
    registry): 1,000 dropped Clients held 4,000 Redis connections. Nothing the transports
    hold refers back to the Client (its reply callback is a weak reference), so it does
    become garbage.
    """
    finalizer = weakref.finalize(client, _close_owned, owned, client.reply_queue, _FORKS[0])
    finalizer.atexit = False  # at exit the sockets close with the process
    return finalizer


def _close_owned(owned: set[Transport], reply_queue: str, forks: int) -> None:
    if forks != _FORKS[0]:
        return  # a forked child: these sockets are its parent's
    for transport in list(owned):
        try:
            transport.close(delete_queue=reply_queue)
        except Exception:  # noqa: BLE001 - garbage collection must not raise
            log.debug("closing a dropped Client's connection failed", exc_info=True)
    owned.clear()


def _weak_callback(method: Any) -> Any:
    """``method`` (a bound method) called through a weak reference: the transport that calls
    it does not keep its object alive. A call after the object is gone does nothing."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> None:
        target = ref()
        if target is not None:
            target(*args)

    return call


class _ReplyQueue:
    """A Client's reply queue and its transport, drained by one waiting caller at a time."""

    #: Longest single wait on the broker (close() waits up to four for a leader to finish).
    DRAIN_SLICE = 0.25

    def __init__(self, client: Client) -> None:
        self.client = client
        self.lock = threading.Lock()  # held by the caller that drains (the leader)
        self.ready = False
        self._transport: Transport | None = None

    def ensure(self, deadline: float) -> None:
        """Make sure the reply queue exists and is consumed before a request names it.

        If nobody drains now, a connection the broker closed since the last call is found
        out here (it costs a poll, no round trip) and opened again, before the request goes.
        """
        if self.ready and not self.lock.acquire(blocking=False):
            return  # a leader is draining it: alive
        if not self.ready and not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise RequestTimeout("reply queue could not be set up in time")
        try:
            self._check_alive() if self.ready else self._connect()
        except BrokerUnavailable as exc:
            self.client.fault_at = time.monotonic()
            raise not_sent(exc) from exc
        finally:
            self.lock.release()

    def _check_alive(self) -> None:
        try:
            assert self._transport is not None
            self._transport.drain(0)
        except BrokerUnavailable as exc:
            self._reconnect(exc)

    def _reconnect(self, exc: BrokerUnavailable) -> None:
        """The reply connection broke (``exc``): open it again (a Redis reply list survives;
        a RabbitMQ one is declared anew)."""
        log.warning("reply connection lost; reconnecting", error=str(exc))
        self.client.fault_at = time.monotonic()
        self._drop(delete_queue=False)
        self._connect()

    def _connect(self) -> None:
        if self.ready:
            return
        for attempt in (1, 2):
            transport = open_transport(self.client.broker_url)
            try:
                transport.connect()
                transport.declare_queue("", reply_queue_spec(self.client.reply_queue))
                transport.consume(self.client.reply_queue, _weak_callback(self.client._deliver),
                                  no_ack=True)
                break
            except BrokerUnavailable as exc:
                transport.close()
                if attempt == 2 or "home node" not in str(exc):
                    raise
                # A durable reply queue lives on one node of a RabbitMQ cluster; with that
                # node gone it cannot be declared again: carry on with a new one.
                log.warning("reply queue lost with its cluster node; using a new one",
                            queue=self.client.reply_queue)
                self._lose(self.client.reply_queue)
                self.client.reply_queue = names.reply_queue(uuid.uuid4().hex)
            except BaseException:
                transport.close()
                raise
        self._transport = transport
        self.client._owned.add(transport)
        self.ready = True

    def _lose(self, queue: str) -> None:
        """Tell the calls whose replies go to ``queue`` (lost with its node) that none can come:
        they end at once (BrokerUnavailable) instead of waiting out their timeout."""
        for pending in list(self.client._pending.values()):
            if pending.reply_to == queue and pending.response is None:
                pending.lost = f"reply queue {queue!r} was lost with its broker node"
                pending.wake()

    def wait_for(self, pending: _Pending, deadline: float) -> bool:
        """Wait until ``pending`` has its response (True) or the deadline passes (False).

        Raises:
            BrokerUnavailable: its reply queue was lost (see :meth:`_lose`).
        """
        while pending.response is None:
            if pending.lost is not None:
                raise BrokerUnavailable(pending.lost)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.lock.acquire(blocking=False):
                try:
                    self._lead(pending, deadline)
                finally:
                    self.lock.release()
                    self._hand_over(pending)
            else:
                pending.sleep(remaining)  # woken by its reply, or to lead: look again
        return True

    def _lead(self, pending: _Pending, deadline: float) -> None:
        self._connect()
        reconnected = False
        while pending.response is None and pending.lost is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                assert self._transport is not None
                self._transport.drain(min(remaining, self.DRAIN_SLICE))
            except BrokerUnavailable as exc:
                if reconnected:
                    self._drop(delete_queue=False)
                    raise
                # The broker may have come back since the last call: reconnect once, wait on.
                reconnected = True
                self._reconnect(exc)

    def hand_over_if_idle(self, leaving: _Pending) -> None:
        """Wake a waiting caller to lead if nobody drains now."""
        if not self.lock.locked():
            self._hand_over(leaving)

    def _hand_over(self, leaving: _Pending) -> None:
        # Wake one other caller still waiting, so someone drains for it.
        for waiting in list(self.client._pending.values()):
            if waiting is not leaving and waiting.response is None:
                waiting.wake()
                return

    def _drop(self, *, delete_queue: bool) -> None:
        self.ready = False
        transport, self._transport = self._transport, None
        if transport is not None:
            self.client._owned.discard(transport)
            transport.close(delete_queue=self.client.reply_queue if delete_queue else None)

    def close(self) -> None:
        """Delete the reply queue and close its connection (waits for a leader briefly)."""
        got = self.lock.acquire(timeout=self.DRAIN_SLICE * 4)
        try:
            self._drop(delete_queue=True)
        finally:
            if got:
                self.lock.release()


def accept_reply(delivery: Delivery, secrets: Mapping[str, bytes] | None,
                 reply_queue: str) -> tuple[dict | None, str | None]:
    """``(response, why it was refused)`` for one reply to ``reply_queue``.

    With ``secrets`` (a keyed caller), a reply must be signed with one of them; a reply
    signed with another key is never parsed. The one unsigned reply taken is a -32001
    refusal (a service that could not verify the caller cannot sign for it). The response
    is None when the reply is dropped: refused (the reason is given) or unparsable.
    """
    refused = None
    if secrets is not None:
        try:
            security.verify(secrets, delivery.headers, delivery.body, reply_queue, None,
                            delivery.correlation_id, content_type=delivery.content_type)
        except Unauthorized as exc:
            refused = exc.message
    if refused is not None and security.KEY_HEADER in delivery.headers:
        return None, refused  # signed, but not by us: never parsed
    try:
        response = wire.parse_response(delivery.body)
    except Exception as exc:  # noqa: BLE001
        log.warning("unparsable reply dropped", error=str(exc))
        return None, None
    if refused is not None and not security.unsigned_refusal(delivery.headers, response):
        return None, refused
    return response, None
