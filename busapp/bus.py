"""Calling services: :class:`Client` and Commissaire's :class:`BusMixin`.

A Client owns two broker connections: one to publish (shared by every thread
under a lock) and one for its single reply queue. There is no reply thread:
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
import socket
import threading
import time
import uuid
from typing import Any

import structlog

from busapp import wire
from busapp.errors import BrokerUnavailable, RequestTimeout
from busapp.transport import connect, mask_url, resolve_broker_url, translate_errors

log = structlog.get_logger("busapp.bus")

#: Default seconds a call waits for its reply.
DEFAULT_TIMEOUT = 10.0

#: Reply queues are named ``busapp.reply.<hex>`` (the Redis transport expires orphans).
REPLY_PREFIX = "busapp.reply."

#: Environment variable naming the exchange when none is passed.
EXCHANGE_ENV = "BUSAPP_EXCHANGE"


def default_exchange(name: str | None = None) -> str:
    """``name``, else ``$BUSAPP_EXCHANGE``, else ``commissaire``."""
    return name or os.environ.get(EXCHANGE_ENV) or "commissaire"


class BusMixin:
    """Commissaire's bus API, for any class that provides ``_bus_client()``.

    ``request`` returns the whole JSON-RPC response dict, as Commissaire's did;
    ``call`` returns the result or raises the typed error.
    """

    def _bus_client(self) -> Client:  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    def request(self, routing_key: str, params: Any = None, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """Send a request and return the whole response dict (raises RequestTimeout)."""
        return self._bus_client().request(routing_key, params, timeout=timeout)

    def call(self, routing_key: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
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


class _Pending:
    __slots__ = ("event", "response")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: dict | None = None


class Client(BusMixin):
    """A connection to the bus for calling services.

    Args:
        broker_url: kombu URL; None means ``$BUSAPP_BROKER_URL``, else the embedded broker.
        exchange: topic exchange name; None means ``$BUSAPP_EXCHANGE``, else ``commissaire``.
        timeout: default seconds to wait for a reply.

    Example::

        with Client() as bus:
            bus.call("simple.add", 1, 2)
    """

    def __init__(self, broker_url: str | None = None, exchange: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.broker_url = resolve_broker_url(broker_url)
        self.exchange_name = default_exchange(exchange)
        self.timeout = timeout
        self.reply_queue = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
        self._pending: dict[str, _Pending] = {}
        self._publish_lock = threading.Lock()
        self._conn: Any = None
        self._producer: Any = None
        self._exchange: Any = None
        self._replies = _ReplyQueue(self)
        self._closed = False
        self._pid = os.getpid()

    def _bus_client(self) -> Client:
        return self

    # -- calls -------------------------------------------------------------

    def call(self, routing_key: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
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
        request_id = wire.new_id()
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            self._check_open()
            self._replies.ensure(deadline)
            self._publish(
                wire.encode_request(method, params, request_id),
                routing_key,
                exchange=self._exchange,
                reply_to=self.reply_queue,
                correlation_id=request_id,
                **self._expiration(timeout),
            )
            if not self._replies.wait_for(pending, deadline):
                raise RequestTimeout(
                    f"no reply to {routing_key!r} within {timeout:g}s; "
                    f"is a service consuming it on exchange {self.exchange_name!r}?"
                )
            assert pending.response is not None
            return pending.response
        finally:
            self._pending.pop(request_id, None)
            # A hand-over may have picked this call before it waited (say, its publish
            # failed): make sure a caller still waiting is not left without a leader.
            self._replies.hand_over_if_idle(pending)

    def notify(self, routing_key: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification: the service handles it and sends no reply."""
        method = wire.call_method(routing_key)
        params = wire.params_from(args, kwargs, single_container=True)
        self._publish(wire.encode_request(method, params), routing_key, exchange=self._exchange)

    def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON body on the exchange (e.g. a storage event) to every subscriber.

        Unlike a request, this reads the exchange's bindings afresh (busapp's Redis
        transport caches them briefly), so a subscriber bound a moment ago is not missed.
        """
        self._publish(body, routing_key, exchange=self._exchange, fresh_bindings=True,
                      delivery_mode=2 if persistent else 1)

    def publish_reply(self, reply_to: str, response: dict, correlation_id: Any = None) -> None:
        """Send ``response`` to the queue named ``reply_to`` (through the default exchange)."""
        props = {"correlation_id": str(correlation_id)} if correlation_id is not None else {}
        self._publish(response, reply_to, exchange="", delivery_mode=1, **props)

    def _expiration(self, timeout: float) -> dict[str, Any]:
        # A request nobody took in time is useless: let RabbitMQ drop it. (Redis ignores this.)
        return {"expiration": max(timeout, 0.001)} if self.broker_url.startswith("amqp") else {}

    # -- connections -------------------------------------------------------

    def _publish(self, body: Any, routing_key: str, *, exchange: Any, fresh_bindings: bool = False,
                 **props: Any) -> None:
        payload = wire.dumps(body)
        with self._publish_lock:
            self._check_open()
            for attempt in (1, 2):
                try:
                    with translate_errors(self.broker_url):
                        producer = self._ensure_producer()
                        if fresh_bindings and hasattr(producer.channel, "forget_bindings"):
                            producer.channel.forget_bindings(self.exchange_name)
                        producer.publish(
                            payload,
                            exchange=self._exchange if exchange is None else exchange,
                            routing_key=routing_key,
                            content_type="application/json",
                            content_encoding="utf-8",
                            retry=False,
                            **props,
                        )
                    return
                except BrokerUnavailable:
                    self._drop_connection()
                    if attempt == 2:
                        raise

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            from kombu import Exchange, Producer

            conn = connect(self.broker_url)
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2)
            channel = conn.channel()
            self._exchange = Exchange(self.exchange_name, type="topic", durable=True)
            self._exchange(channel).declare()
            self._conn = conn
            self._producer = Producer(channel)
        return self._producer

    def _drop_connection(self) -> None:
        conn, self._conn, self._producer = self._conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # noqa: BLE001 - it is already broken
                pass

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Client is closed")
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._pid = os.getpid()
            self._conn = self._producer = None
            self._publish_lock = threading.Lock()
            self._replies = _ReplyQueue(self)
            self._pending = {}
            self.reply_queue = f"{REPLY_PREFIX}{uuid.uuid4().hex}"

    def _deliver(self, correlation_id: Any, body: Any) -> None:
        try:
            response = wire.parse_response(body)
        except Exception as exc:  # noqa: BLE001
            log.warning("unparsable reply dropped", error=str(exc))
            return
        key = correlation_id if correlation_id is not None else response.get("id")
        pending = self._pending.get(str(key)) if key is not None else None
        if pending is None:
            log.debug("reply for no pending call dropped", correlation_id=key)
            return
        pending.response = response
        pending.event.set()

    def close(self) -> None:
        """Close both connections and delete the reply queue."""
        if self._closed:
            return
        self._closed = True
        self._replies.close()
        with self._publish_lock:
            self._drop_connection()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {mask_url(self.broker_url)} exchange={self.exchange_name!r}>"


class _ReplyQueue:
    """A Client's reply queue and its connection, drained by one waiting caller at a time."""

    #: Longest single wait on the broker (close() waits up to four for a leader to finish).
    DRAIN_SLICE = 0.25

    def __init__(self, client: Client) -> None:
        self.client = client
        self.lock = threading.Lock()  # held by the caller that drains (the leader)
        self.ready = False
        self._conn: Any = None
        self._queue: Any = None

    def ensure(self, deadline: float) -> None:
        """Make sure the reply queue exists before a request names it."""
        if self.ready:
            return
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise RequestTimeout("reply queue could not be set up in time")
        try:
            self._connect()
        finally:
            self.lock.release()

    def _connect(self) -> None:
        if self.ready:
            return
        from kombu import Consumer, Queue

        url = self.client.broker_url
        with translate_errors(url):
            try:
                conn = connect(url)
                self._conn = conn
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2)
                channel = conn.channel()
                self._queue = Queue(self.client.reply_queue, durable=False, auto_delete=True,
                                    exclusive=url.startswith("amqp"), channel=channel)
                Consumer(channel, [self._queue], on_message=self._on_message, no_ack=True).consume()
            except BaseException:
                self._drop(delete_queue=False)
                raise
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
                pending.event.wait(remaining)
                pending.event.clear()  # a hand-over wake-up: check the response, maybe lead
        return True

    def _lead(self, pending: _Pending, deadline: float) -> None:
        self._connect()
        reconnected = False
        while pending.response is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                with translate_errors(self.client.broker_url):
                    try:
                        self._conn.drain_events(timeout=min(remaining, self.DRAIN_SLICE))
                    except socket.timeout:
                        pass
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
                waiting.event.set()
                return

    def _on_message(self, message: Any) -> None:
        self.client._deliver(message.properties.get("correlation_id"), message.body)

    def _drop(self, *, delete_queue: bool) -> None:
        self.ready = False
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if delete_queue and self._queue is not None:
            try:
                self._queue.delete()
            except Exception:  # noqa: BLE001 - best effort: the broker may be gone
                pass
        try:
            conn.release()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        """Delete the reply queue and close its connection (waits for a leader briefly)."""
        got = self.lock.acquire(timeout=self.DRAIN_SLICE * 4)
        try:
            self._drop(delete_queue=True)
        finally:
            if got:
                self.lock.release()
