"""An in-memory bus: the transport the test client injects into services. No broker, no sockets.

:class:`MemoryBus` has the :class:`~busapp.bus.Client` API (``request``,
``call``, ``notify``, ``publish``, ``publish_reply``) and routes every message
by topic pattern to the services registered on it, synchronously, in the
calling thread. A request is JSON-encoded, served by the same
:func:`busapp.dispatch.process` a broker-fed worker uses, and its response
JSON-decoded and turned into the same exception classes
(:func:`busapp.wire.error_from_response`), so a handler sees exactly what it
would see on a broker.

Where it differs from a broker, on purpose:

- a request nobody consumes raises :class:`NoRouteError` at once (a
  :class:`~busapp.errors.RequestTimeout`, which is what a broker would give
  after the timeout);
- an exception raised by a storage-event or notification handler is reported
  to ``on_handler_error`` (the test client re-raises it in the test) instead
  of being logged and dropped;
- an error reply raised by the caller has the handler's original exception
  as its ``__cause__``, so a failing test shows the real traceback.

Topic patterns follow AMQP: ``*`` is exactly one word, ``#`` zero or more.
"""

from __future__ import annotations

import collections
import functools
import itertools
import threading
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from busapp import dispatch, wire
from busapp.errors import RequestTimeout
from busapp.service import IncomingMessage

#: The ``reply_to`` requests carry on the memory bus (replies are handed back directly).
REPLY_TO = "busapp.reply.memory"


class NoRouteError(RequestTimeout):
    """No registered service consumes the routing key (on a broker: a timeout)."""


@attrs.frozen
class Published:
    """One message a service (or the test) published: a notification or a plain message.

    ``kind`` is ``"notify"`` (JSON-RPC notification) or ``"publish"`` (plain
    JSON such as a storage event); ``body`` is the decoded JSON body.
    """

    routing_key: str
    body: Any
    kind: str


@attrs.frozen
class HandlerError:
    """An exception raised by a handler that had no caller to answer (event or notification)."""

    routing_key: str
    consumer: str
    exception: BaseException


@functools.lru_cache(maxsize=8192)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """True if ``routing_key`` matches the binding ``pattern`` (``*`` one word, ``#`` zero or more)."""
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


class MemoryBus:
    """Routes messages to registered services in memory; the ``client=`` a service is given.

    Args:
        exchange: the exchange name services see (informational).
        on_handler_error: told of every :class:`HandlerError` (default: none).
    """

    def __init__(self, exchange: str = "commissaire", *,
                 on_handler_error: Callable[[HandlerError], None] | None = None) -> None:
        self.exchange_name = exchange
        self.broker_url = "memory://"
        self.on_handler_error = on_handler_error
        #: Services messages are routed to, in registration order.
        self.services: list[Any] = []
        #: Every notification and plain message published, in order.
        self.published: list[Published] = []
        self._routes: dict[str, list[Any]] = {}
        self._early_replies: dict[str, dict[str, Any]] = {}
        # Request ids: unique like a uuid4 per call, at a fraction of the cost.
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._local = threading.local()  # .pending: deliveries queued behind the one running

    def add_service(self, service: Any) -> None:
        """Route messages matching ``service``'s RPC bindings and subscriptions to it."""
        with self._lock:
            self.services.append(service)
            self._routes = {}

    # -- the Client API -------------------------------------------------------

    def call(self, routing_key: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call a method and return its result (raises the error reply's class).

        A failed handler's own exception is the raised error's ``__cause__``.
        """
        response, cause = self._request(routing_key, wire.params_from(args, kwargs))
        error = wire.error_from_response(response)
        if error is not None:
            raise error from cause
        return response.get("result")

    def request(self, routing_key: str, params: Any = None, timeout: float | None = None) -> dict:
        """Serve a request and return the whole JSON-RPC response dict.

        Raises:
            NoRouteError: no registered service consumes ``routing_key``.
        """
        return self._request(routing_key, params)[0]

    def _request(self, routing_key: str, params: Any) -> tuple[dict, BaseException | None]:
        method = wire.call_method(routing_key)
        request_id = f"{self._id_prefix}-{next(self._ids)}"
        body = wire.dumps(wire.encode_request(method, params, request_id)).encode()
        response: dict | None = None
        cause: BaseException | None = None
        for service in self._rpc_route(routing_key):
            served, failure = self._serve(service, routing_key, body, request_id)
            if response is None:
                response, cause = served, failure
        if self._has_subscribers(routing_key):
            self._in_order(self._deliver_to_subscribers, routing_key, body)
        early = self._early_replies.pop(request_id, None)
        if early is not None:
            return early, None
        if response is None:
            raise NoRouteError(self._no_route_message(routing_key))
        return response, cause

    def request_raw(self, routing_key: str, body: bytes | str, *,
                    content_type: str = "application/json") -> dict | None:
        """Serve a body exactly as given (e.g. not JSON, or a foreign content type).

        Returns the decoded response, or None when none is owed (a notification).
        Raises NoRouteError when no registered service consumes ``routing_key``.
        """
        body = body.encode() if isinstance(body, str) else bytes(body)
        route = self._rpc_route(routing_key)
        if not route:
            raise NoRouteError(self._no_route_message(routing_key))
        responses = [self._serve(s, routing_key, body, "raw", content_type)[0] for s in route]
        return responses[0]

    def notify(self, routing_key: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification: every consumer handles it before this returns; nothing answers."""
        method = wire.call_method(routing_key)
        params = wire.params_from(args, kwargs, single_container=True)
        self._send(routing_key, wire.encode_request(method, params), "notify")

    def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON body: every matching subscription has run before this returns."""
        self._send(routing_key, body, "publish")

    def publish_reply(self, reply_to: str, response: dict, correlation_id: Any = None) -> None:
        """Answer a request in flight early (the first reply wins, as on a broker)."""
        key = str(correlation_id if correlation_id is not None else response.get("id"))
        self._early_replies.setdefault(key, wire.parse_response(wire.dumps(response)))

    def close(self) -> None:
        """Nothing to release (the Client API has it)."""

    def _bus_client(self) -> MemoryBus:
        return self

    # -- routing ----------------------------------------------------------------

    def _rpc_route(self, routing_key: str) -> list[Any]:
        route = self._routes.get(routing_key)
        if route is None:
            route = [s for s in list(self.services)
                     if any(topic_matches(k, routing_key) for k in s.routing_keys)]
            self._routes[routing_key] = route
        return route

    def _no_route_message(self, routing_key: str) -> str:
        known = sorted({k for s in self.services for k in s.routing_keys})
        return (f"no service on the test bus consumes {routing_key!r} (on a broker this call "
                f"would time out); bindings: {', '.join(known) or 'none'}; "
                f"register the service with client.register(...)")

    def _send(self, routing_key: str, body: Any, kind: str) -> None:
        payload = wire.dumps(body).encode()
        # The record is for the test to read: no size limit (each consumer applies its own).
        record = wire.loads_body(payload, "application/json", max_body=len(payload))
        self.published.append(Published(routing_key, record, kind))
        self._in_order(self._deliver, routing_key, payload)

    def _deliver(self, routing_key: str, payload: bytes) -> None:
        for service in self._rpc_route(routing_key):
            self._serve(service, routing_key, payload, None)
        self._deliver_to_subscribers(routing_key, payload)

    def _in_order(self, deliver: Callable[..., None], *args: Any) -> None:
        """Run ``deliver(*args)`` now, or after the delivery this thread is in the middle of.

        So a handler's own publications reach every consumer after the message
        being handled, in the order they were published, as from a broker queue;
        all are done before the outermost publish returns.
        """
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append((deliver, args))
            return
        pending = self._local.pending = collections.deque([(deliver, args)])
        try:
            while pending:
                deliver, args = pending.popleft()
                deliver(*args)
        finally:
            self._local.pending = None

    # -- delivery ---------------------------------------------------------------

    def _serve(self, service: Any, routing_key: str, body: bytes, request_id: Any,
               content_type: str = "application/json") -> tuple[dict | None, BaseException | None]:
        data = _loads_or_none(body, service.max_body)
        info = IncomingMessage(body=data, routing_key=routing_key, headers={},
                               reply_to=REPLY_TO if request_id is not None else None,
                               id=wire.request_id_of(data), correlation_id=request_id)
        # Decoded once here, as a worker does for the message; anything else goes raw to dispatch.
        payload = data if isinstance(data, dict) else body
        failure: list[BaseException] = []
        response = dispatch.process(
            service.handlers, payload, content_type=content_type, routing_key=routing_key,
            context=service._context(info), on_error=lambda _req, exc: failure.append(exc),
            max_body=service.max_body,
        )
        if response is None:  # a notification: nobody to answer, so report the failure
            if failure:
                self._handler_failed(routing_key, service.service_name, failure[0])
            return None, None
        # The reply crosses the "wire" as JSON text, as a broker would carry it.
        return wire.parse_response(wire.dumps(response).encode()), (failure[0] if failure else None)

    def _has_subscribers(self, routing_key: str) -> bool:
        return any(topic_matches(sub.binding_key, routing_key)
                   for service in self.services for sub in service.subscriptions)

    def _deliver_to_subscribers(self, routing_key: str, body: bytes) -> None:
        for service in list(self.services):
            for sub in list(service.subscriptions):
                if not topic_matches(sub.binding_key, routing_key):
                    continue
                data = wire.loads_body(body, "application/json", service.max_body)
                info = IncomingMessage(body=data, routing_key=routing_key, headers={},
                                       reply_to=None, id=wire.request_id_of(data))
                try:
                    sub.callback(data, info)
                except Exception as exc:  # noqa: BLE001 - reported to the test, as a broker would log it
                    self._handler_failed(routing_key, sub.queue_name, exc)

    def _handler_failed(self, routing_key: str, consumer: str, exc: BaseException) -> None:
        if self.on_handler_error is not None:
            self.on_handler_error(HandlerError(routing_key, consumer, exc))


def _loads_or_none(body: bytes, max_body: int) -> Any:
    try:
        return wire.loads_body(body, "application/json", max_body)
    except Exception:  # noqa: BLE001 - dispatch reports the parse error itself
        return None


