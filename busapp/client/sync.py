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

import sys
import threading
import time
import uuid
from typing import Any


from busapp import names, security
from busapp.client.replies import (
    _FORKS,
    MAX_BODY,
    _close_when_dropped,
    _maybe_delivered,
    _Pending,
    _ReplyQueue,
    accept_reply,
    check_size,
    deadline_headers,
    not_sent,
    publish_routed,
    reply_key,
    reply_queue_spec,
)
from busapp.core import events, tracing, wire
from busapp.errors import AccessRefused, BrokerUnavailable, RequestTimeout
from busapp.log import get_logger
from busapp.names import default_exchange, default_queue
from busapp.transport import mask_url, open_transport, resolve_broker_url, revive_if_embedded
from busapp.transport.base import REPLY_PREFIX, Delivery, Transport

log = get_logger("busapp.bus")

#: Default seconds a call waits for its reply.
DEFAULT_TIMEOUT = 10.0

__all__ = ["DEFAULT_TIMEOUT", "REPLY_PREFIX", "BusMixin", "Client", "default_exchange",
           "default_queue", "reply_key", "reply_queue_spec"]


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


class Client(BusMixin):
    """A connection to the bus for calling services.

    Args:
        broker_url: broker URL; None means ``$BUSAPP_BROKER_URL``, else the embedded broker.
        exchange: topic exchange name; None means ``$BUSAPP_EXCHANGE``, else ``commissaire``.
        timeout: default seconds to wait for a reply.
        key: ``(key_id, secret)`` (or ``"id:secret"``) to sign every message with; None
            means ``$BUSAPP_KEY``, else unsigned. With a key, replies not signed with it
            are dropped (see :mod:`busapp.security`).
        max_body: largest body sent (bytes; None: no limit); more raises RequestTooLarge.

    Example::

        with Client() as bus:
            bus.call("simple.add", 1, 2)
    """

    def __init__(self, broker_url: str | None = None, exchange: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, key: Any = None,
                 max_body: int | None = MAX_BODY) -> None:
        #: The key this client signs with (None: unsigned).
        self.key = security.parse_key(key) if key is not None else security.key_from_env()
        self._reply_secrets = dict([self.key]) if self.key is not None else None
        self.broker_url = resolve_broker_url(broker_url)
        self.exchange_name = default_exchange(exchange)
        self.timeout = timeout
        self.max_body = max_body
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent's sockets are not
        ours)."""
        self._forks = _FORKS[0]
        self.reply_queue = names.reply_queue(uuid.uuid4().hex)
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
        #: When a connection of this Client last failed (see :func:`publish_routed`).
        self.fault_at = float("-inf")

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
        pending = self._pending[request_id] = _Pending()
        hook = WAIT_HOOK.hook
        if hook is not None:
            hook.waiting()
        headers = deadline_headers(timeout)
        span = tracing.outgoing(routing_key, request_id, headers)  # request id, traceparent
        try:
            self._replies.ensure(deadline)
            pending.reply_to = self.reply_queue  # the one it names, whatever comes next
            try:
                publish_routed(lambda: self._publish(
                    wire.encode_request(method, params, request_id), routing_key,
                    exchange=self.exchange_name, reply_to=pending.reply_to,
                    correlation_id=request_id, expiration=timeout, headers=headers,
                ), self, deadline)
            except BrokerUnavailable as exc:
                if exc.sent is False:
                    raise
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
        self._publish(wire.encode_request(method, params), routing_key, exchange=self.exchange_name,
                      **tracing.carried())

    def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON body on the exchange (e.g. a storage event) to every subscriber.

        Unlike a request, this reads the exchange's bindings afresh (busapp's Redis
        transport can cache them briefly), so a subscriber bound a moment ago is not missed.
        """
        self._publish(body, routing_key, exchange=self.exchange_name, persistent=persistent,
                      **tracing.carried())

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
        with tracing.outgoing_event(routing_key, event_id, headers):
            self._publish(body, routing_key, exchange=self.exchange_name, headers=headers,
                          correlation_id=event_id, persistent=True)
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
            props["headers"] = security.signer(
                key, payload, routing_key, props.get("reply_to"), props.get("correlation_id"),
                props.get("headers"), props.get("content_type", security.CONTENT_TYPE))

    def _publish(self, body: Any, routing_key: str, *, exchange: str, sign_key: Any = "own",
                 **props: Any) -> None:
        payload = body if isinstance(body, bytes) else wire.dumps(body).encode()
        check_size(payload, routing_key, self.max_body if exchange else None)  # not replies
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
                    self.fault_at = time.monotonic()
                    self._drop_publisher()
                    if attempt == 2:
                        if sent:
                            raise
                        raise not_sent(exc) from exc
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
        client with a key) not signed with that key, checked before anything is parsed."""
        response, refused = accept_reply(delivery, self._reply_secrets, self.reply_queue)
        if refused is not None:
            self._drop_reply(delivery, refused)
        return response

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


