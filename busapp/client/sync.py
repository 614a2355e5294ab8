"""Calling services: :class:`Client` and Commissaire's :class:`BusMixin`.

A Client owns two transports (:mod:`busapp.transport.base`): one to publish
(shared by every thread under a lock) and one for its single reply queue. There is no reply thread:
a caller waiting for its reply drains the reply connection itself if no other
caller is doing so (the leader), and hands every reply it reads to the call it
belongs to by ``correlation_id``; the other callers wait on their own event
and one of them takes over when the leader's reply has come. So a lone caller
pays no thread hand-off, many threads can have calls in flight on one Client,
and a reply that arrives after its call timed out is read and dropped, never
left behind.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
import weakref
from typing import Any


from busapp import security
from busapp.core import events, tracing, wire
from busapp import names
from busapp.names import default_exchange, default_queue
from busapp.errors import AccessRefused, BrokerUnavailable, RequestTimeout, Unauthorized
from busapp.log import get_logger
from busapp.transport import mask_url, open_transport, resolve_broker_url, revive_if_embedded
from busapp.transport.base import REPLY_PREFIX, Delivery, QueueSpec, Transport

log = get_logger("busapp.bus")

#: Default seconds a call waits for its reply.
DEFAULT_TIMEOUT = 10.0

__all__ = ["DEFAULT_TIMEOUT", "REPLY_PREFIX", "BusMixin", "Client", "default_exchange",
           "default_queue"]



class _WaitHook(threading.local):
    """What a worker wants to know of a call its handler makes: it is about to wait.

    A worker runs a handler in the thread that received its message; before that
    handler blocks on a call's reply, the worker hands its receiving role to another
    thread (so the call, even to the worker's own queue, can be served). See
    :mod:`busapp.runtime.worker`.
    """

    hook: Any = None


WAIT_HOOK = _WaitHook()


class BusMixin:
    """Commissaire's bus API, for any class that provides ``_bus_client()``.

    ``request`` returns the whole JSON-RPC response dict, as Commissaire's did;
    ``call`` returns the result or raises the typed error.
    """

    def _bus_client(self) -> Client:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def request(self, routing_key: str, params: Any = None,
                timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Send a request and return the whole response dict (raises RequestTimeout)."""
        return self._bus_client().request(routing_key, params, timeout=timeout)

    def call(self, routing_key: str, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        """Call ``routing_key`` with positional or keyword params; return the result."""
        return self._bus_client().call(routing_key, *args, timeout=timeout, **kwargs)

    def notify(self, routing_key: str, *args: Any, **kwargs: Any) -> None:
        """Send a JSON-RPC notification (no id, no reply).

        Accepts Commissaire's form ``notify(key, params)`` with one dict or list too.
        """
        self._bus_client().notify(routing_key, *args, **kwargs)

    def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON message (not JSON-RPC) on the exchange."""
        self._bus_client().publish(routing_key, body, persistent=persistent)

    def emit(self, name: str, /, **payload: Any) -> str:
        """Publish event ``name`` to every App subscribed to it; its id (see
        :meth:`Client.emit`)."""
        return self._bus_client().emit(name, **payload)


_EVENT_LOCK = threading.Lock()

#: Forks this process is down from (a Client made before a fork starts afresh after it).
_FORKS = [0]


def _forked() -> None:
    _FORKS[0] += 1


os.register_at_fork(after_in_child=_forked)


class _NotSent(BrokerUnavailable):
    """The broker could not be reached before the request was published (so it was not)."""


def _maybe_delivered(exc: BrokerUnavailable, routing_key: str) -> BrokerUnavailable:
    return BrokerUnavailable(f"{exc}; the request to {routing_key!r} may have been delivered "
                             f"(and run): check before repeating a call that is not idempotent")


class _Pending:
    """A call waiting for its reply. Its Event is made only if the caller ever has to sleep
    (never on the in-memory transport, where the reply is there when the publish returns)."""

    __slots__ = ("event", "response", "arrived", "refused")

    def __init__(self) -> None:
        self.event: threading.Event | None = None
        self.response: dict | None = None
        self.arrived = 0.0
        self.refused: str | None = None  # why a reply to it was dropped (bad signature)

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


class Client(BusMixin):
    """A connection to the bus for calling services.

    Args:
        broker_url: broker URL; None means ``$BUSAPP_BROKER_URL``, else the embedded broker.
        exchange: topic exchange name; None means ``$BUSAPP_EXCHANGE``, else ``commissaire``.
        timeout: default seconds to wait for a reply.
        key: ``(key_id, secret)`` (or ``"id:secret"``) to sign every message with; None
            means ``$BUSAPP_KEY``, else unsigned. With a key, replies not signed with it
            are dropped (see :mod:`busapp.security`).

    Example::

        with Client() as bus:
            bus.call("simple.add", 1, 2)
    """

    def __init__(self, broker_url: str | None = None, exchange: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, key: Any = None) -> None:
        #: The key this client signs with (None: unsigned).
        self.key = security.parse_key(key) if key is not None else security.key_from_env()
        self._reply_secrets = dict([self.key]) if self.key is not None else None
        self.broker_url = resolve_broker_url(broker_url)
        self.exchange_name = default_exchange(exchange)
        self.timeout = timeout
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent's sockets are not
        ours)."""
        self._forks = _FORKS[0]
        self.reply_queue = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
        old = getattr(self, "_finalizer", None)
        if old is not None:
            old.detach()  # the parent's connections are the parent's to close
        #: The transports this Client has open, closed by :attr:`_finalizer` if it is dropped.
        self._owned: set[Transport] = set()
        self._finalizer = _close_when_dropped(self, self._owned)
        self._pending: dict[str, _Pending] = {}
        # Reentrant: on the in-memory transport a publish delivers (and so may reply) inline.
        self._publish_lock = threading.RLock()
        self._publisher: Transport | None = None
        self._replies = _ReplyQueue(self)

    def _bus_client(self) -> Client:
        return self

    # -- calls -------------------------------------------------------------

    def call(self, routing_key: str, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        """Call a method and return its result.

        Raises:
            RemoteProcedureCallError: (a subclass chosen by code) on an error reply.
            RequestTimeout: no reply within ``timeout`` seconds (default 10).
            BrokerUnavailable: the broker cannot be reached.
        """
        response = self.request(routing_key, wire.params_from(args, kwargs), timeout=timeout)
        error = wire.error_from_response(response)
        if error is not None:
            raise error
        return response.get("result")

    def request(self, routing_key: str, params: Any = None, timeout: float | None = None) -> dict:
        """Send a request and return the whole JSON-RPC response dict."""
        method = wire.call_method(routing_key)
        timeout = self.timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + timeout
        self._check_open()
        request_id = wire.new_id()
        pending = _Pending()
        self._pending[request_id] = pending
        hook = WAIT_HOOK.hook
        if hook is not None:
            hook.waiting()
        headers = {names.DEADLINE_HEADER: round(time.time() + timeout, 3)}
        span = tracing.outgoing(routing_key, request_id, headers)  # request id, traceparent
        try:
            self._replies.ensure(deadline)
            try:
                self._publish(
                    wire.encode_request(method, params, request_id),
                    routing_key,
                    exchange=self.exchange_name,
                    reply_to=self.reply_queue,
                    correlation_id=request_id,
                    expiration=timeout,
                    headers=headers,
                )
            except _NotSent:
                raise
            except BrokerUnavailable as exc:
                raise _maybe_delivered(exc, routing_key) from exc
            try:
                replied = self._replies.wait_for(pending, deadline)
            except BrokerUnavailable as exc:
                raise _maybe_delivered(exc, routing_key) from exc
            if not replied or pending.arrived > deadline:
                why = (f"a reply came but was dropped: {pending.refused}" if pending.refused
                       else f"is a service consuming it on exchange {self.exchange_name!r}?")
                raise RequestTimeout(f"no reply to {routing_key!r} within {timeout:g}s; {why}")
            assert pending.response is not None
            return pending.response
        finally:
            if span is not None:
                tracing.end_outgoing(span, pending.response, sys.exc_info()[1])
            if hook is not None:
                hook.done_waiting()
            self._pending.pop(request_id, None)
            # A hand-over may have picked this call before it waited (say, its publish
            # failed): make sure a caller still waiting is not left without a leader.
            self._replies.hand_over_if_idle(pending)

    def notify(self, routing_key: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the service handles it and sends no reply."""
        method = wire.call_method(routing_key)
        params = wire.params_from(args, kwargs, single_container=True)
        self._publish(wire.encode_request(method, params), routing_key, exchange=self.exchange_name)

    def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON body on the exchange (e.g. a storage event) to every subscriber.

        Unlike a request, this reads the exchange's bindings afresh (busapp's Redis
        transport can cache them briefly), so a subscriber bound a moment ago is not missed.
        """
        self._publish(body, routing_key, exchange=self.exchange_name, persistent=persistent)

    def emit(self, name: str, /, **payload: Any) -> str:
        """Publish event ``name`` (``"<source>.<event>"``) with ``payload``, a JSON object of
        the keywords, to every App subscribed to it; return the event's id.

        With no subscriber the event is dropped, without error. Published persistent, signed
        with this client's key, with the request id of the call it is made in.

        Raises:
            ValueError: ``name`` is not ``"<source>.<event>"``.
            BrokerUnavailable: the broker cannot be reached.
        """
        routing_key, body, event_id = events.event_message(name, payload)
        headers: dict[str, Any] = {}
        span = tracing.outgoing(routing_key, event_id, headers)
        failed: BaseException | None = None
        try:
            self._publish(body, routing_key, exchange=self.exchange_name, headers=headers,
                          correlation_id=event_id, persistent=True)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            if span is not None:
                tracing.end_outgoing(span, None, failed)
        return event_id

    def publish_reply(self, reply_to: str, response: dict | bytes, correlation_id: Any = None,
                      *, key: Any = "own") -> None:
        """Send ``response`` (a dict, or its JSON already encoded) to the queue ``reply_to``.

        ``key``: the ``(id, secret)`` to sign it with (a worker signs with the caller's
        key), None for unsigned; default this client's own key.
        """
        self._publish(response, reply_to, exchange="",
                      correlation_id=None if correlation_id is None else str(correlation_id),
                      sign_key=key)

    # -- connections -------------------------------------------------------

    def sign(self, payload: bytes, routing_key: str, props: dict[str, Any],
             sign_key: Any = "own") -> None:
        """Add the signature headers to ``props`` (with this client's key by default)."""
        key = self.key if sign_key == "own" else sign_key
        if key is not None:
            props["headers"] = security.signer(key, payload, routing_key, props.get("reply_to"),
                                               props.get("correlation_id"), props.get("headers"))

    def _publish(self, body: Any, routing_key: str, *, exchange: str, sign_key: Any = "own",
                 **props: Any) -> None:
        payload = body if isinstance(body, bytes) else wire.dumps(body).encode()
        self.sign(payload, routing_key, props, sign_key)
        with self._publish_lock:
            self._check_open()
            sent = False  # True once the broker may have the message
            for attempt in (1, 2):
                try:
                    publisher = self._publisher
                    if publisher is None:
                        publisher = self._connect_publisher()
                    else:
                        publisher.drain(0)  # a connection the broker closed is found out now
                    sent = True
                    publisher.publish(payload, exchange=exchange, routing_key=routing_key, **props)
                    return
                except BrokerUnavailable as exc:
                    self._drop_publisher()
                    if attempt == 2:
                        if sent:
                            raise
                        raise _NotSent(f"{exc}; the request was not sent") from exc
                    revive_if_embedded(self.broker_url)  # a killed embedded broker comes back

    def _connect_publisher(self) -> Transport:
        transport = open_transport(self.broker_url)
        try:
            transport.connect()
            # Passively: a caller needs no configure permission on an exchange that exists.
            if not transport.declare_exchange(self.exchange_name, passive=True):
                self._declare_missing_exchange(transport)
        except BaseException:
            transport.close()
            raise
        self._publisher = transport
        self._owned.add(transport)
        return transport

    def _declare_missing_exchange(self, transport: Transport) -> None:
        try:
            transport.declare_exchange(self.exchange_name)
        except AccessRefused as exc:
            raise AccessRefused(
                f"exchange {self.exchange_name!r} does not exist and this broker user may not "
                f"create it; start a service on it (services declare it) or check the "
                f"exchange name") from exc

    def _drop_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            self._owned.discard(publisher)
            publisher.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Client is closed")
        if self._forks != _FORKS[0]:
            self._reset()

    def _deliver(self, delivery: Delivery) -> None:
        response = self.accept_reply(delivery)
        if response is None:
            return
        key = reply_key(delivery, response)
        pending = self._pending.get(key) if key is not None else None
        if pending is None:
            log.debug("reply for no pending call dropped", correlation_id=key)
            return
        pending.arrived = time.monotonic()
        pending.response = response
        event = pending.event
        if event is not None:  # a caller without one checks the response before it sleeps
            event.set()

    def accept_reply(self, delivery: Delivery) -> dict | None:
        """The response a reply carries, or None if it is dropped: unparsable, or (for a
        client with a key) not signed with that key — checked before anything is parsed."""
        refused = self._check_reply(delivery) if self._reply_secrets is not None else None
        if refused is not None and security.KEY_HEADER in delivery.headers:
            self._drop_reply(delivery, refused)  # signed, but not by us: never parsed
            return None
        try:
            response = wire.parse_response(delivery.body)
        except Exception as exc:  # noqa: BLE001
            log.warning("unparsable reply dropped", error=str(exc))
            return None
        if refused is not None and not security.unsigned_refusal(delivery.headers, response):
            self._drop_reply(delivery, refused)
            return None
        return response

    def _check_reply(self, delivery: Delivery) -> str | None:
        """Why a reply is not signed with this client's key (None: it is). No parsing."""
        secrets = self._reply_secrets
        if secrets is None:
            return None
        try:
            security.verify(secrets, delivery.headers, delivery.body,
                            self.reply_queue, None, delivery.correlation_id)
        except Unauthorized as exc:
            return exc.message
        return None

    def _drop_reply(self, delivery: Delivery, why: str) -> None:
        log.warning("reply dropped: not signed with this client's key", reason=why,
                    key=security.signed_by(delivery.headers),
                    correlation_id=delivery.correlation_id)
        pending = self._pending.get(str(delivery.correlation_id))
        if pending is not None:
            own = self.key[0] if self.key is not None else None
            pending.refused = (f"{why} (a forged reply, or a service without this client's "
                               f"key {own!r} in its keyring)")

    def close(self) -> None:
        """Close both connections and delete the reply queue."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._replies.close()
        with self._publish_lock:
            self._drop_publisher()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {mask_url(self.broker_url)} exchange={self.exchange_name!r}>"


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
            raise _NotSent(f"{exc}; the request was not sent") from exc
        finally:
            self.lock.release()

    def _check_alive(self) -> None:
        try:
            assert self._transport is not None
            self._transport.drain(0)
        except BrokerUnavailable as exc:
            log.warning("reply connection lost; reconnecting", error=str(exc))
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
                self.client.reply_queue = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
            except BaseException:
                transport.close()
                raise
        self._transport = transport
        self.client._owned.add(transport)
        self.ready = True

    def wait_for(self, pending: _Pending, deadline: float) -> bool:
        """Wait until ``pending`` has its response (True) or the deadline passes (False)."""
        while pending.response is None:
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
        while pending.response is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                assert self._transport is not None
                self._transport.drain(min(remaining, self.DRAIN_SLICE))
            except BrokerUnavailable as exc:
                self._drop(delete_queue=False)
                if reconnected:
                    raise
                # The broker may have come back since the last call: reconnect once, and
                # wait on (a Redis reply list survives; a RabbitMQ one is declared anew).
                log.warning("reply connection lost; reconnecting", error=str(exc))
                reconnected = True
                self._connect()

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
