"""The consumer side: :class:`CommissaireService` (one worker process).

A service consumes its named queue(s) on the topic exchange. The main thread
only talks to the broker (receive, ack); handlers run in a pool of
``concurrency`` threads, publish their reply on the service's
:class:`~busapp.bus.Client`, and hand the message back to the main thread to
be acked. A message is acked after its reply is sent, so a worker killed
mid-call leaves the message to be redelivered (at-least-once).

:class:`ServiceManager` lives in :mod:`busapp.manager` and is re-exported here
for Commissaire's import path.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import queue
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import structlog

from busapp import dispatch, wire
from busapp.bus import BusMixin, Client, default_exchange
from busapp.errors import InternalError, RemoteProcedureCallError
from busapp.transport import (
    busy_poll_interval,
    connect,
    connection_errors,
    is_redis,
    mask_url,
    resolve_broker_url,
)

log = structlog.get_logger("busapp.service")

#: ``on_*`` names that are hooks of kombu's ConsumerMixin or of Commissaire's
#: service, never bus methods, even when a subclass defines them.
RESERVED_HOOKS = frozenset({
    "on_message", "on_connection_error", "on_connection_revived", "onconnection_revived",
    "on_consume_ready", "on_consume_end", "on_iteration", "on_decode_error", "on_return",
})

_METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

#: The bus client for services constructed inside :func:`injected_client`.
_INJECTED_CLIENT: contextvars.ContextVar[Any] = contextvars.ContextVar("busapp_client", default=None)


@contextlib.contextmanager
def injected_client(client: Any) -> Iterator[None]:
    """Services constructed in this block use ``client`` as if passed ``client=``.

    The seam for a subclass whose own ``__init__`` does not pass ``client=`` on
    (Commissaire's ``__init__(self, exchange_name, connection_url, config_file=None)``);
    the in-memory test client uses it.
    """
    token = _INJECTED_CLIENT.set(client)
    try:
        yield
    finally:
        _INJECTED_CLIENT.reset(token)


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

    @classmethod
    def from_kombu(cls, message: Any, max_body: int | None = None) -> IncomingMessage:
        """Wrap a kombu message; ``body`` is its JSON, or None if it is not acceptable JSON."""
        props = message.properties or {}
        try:
            body = wire.loads_body(message.body, message.content_type, max_body)
        except RemoteProcedureCallError:  # refused (content type, size, not JSON): no body
            body = None
        headers = message.headers or {}
        return cls(
            body=body,
            routing_key=headers.get("x-busapp-routing-key")
            or (message.delivery_info or {}).get("routing_key"),
            headers=dict(message.headers or {}),
            reply_to=props.get("reply_to"),
            id=wire.request_id_of(body),
            correlation_id=props.get("correlation_id"),
            raw=message,
        )


@attrs.define
class Subscription:
    """A plain-JSON queue a service consumes besides its RPC queues (e.g. storage events)."""

    binding_key: str
    callback: Callable[[Any, IncomingMessage], Any]
    queue_name: str


class ConsumerStalled(ConnectionError):
    """The worker is connected but no longer receives; it re-subscribes."""


class CommissaireService(BusMixin):
    """Base class: each ``on_<name>(self, message, ...)`` a subclass defines is bus method ``name``.

    Args:
        exchange_name: the topic exchange (None: ``$BUSAPP_EXCHANGE`` or ``commissaire``).
        connection_url: kombu broker URL (None: ``$BUSAPP_BROKER_URL`` or the embedded broker).
        qkwargs: ``kombu.Queue`` keyword dicts (``name``, ``routing_key``, ...); default one
            queue named after the class, bound to ``<name>.*``.
        config_file: kept for Commissaire compatibility (available as ``self.config_file``).
        client: keyword-only; the bus object replies and ``self.call``/``request``/``notify``/
            ``publish`` go through (default: a :class:`~busapp.bus.Client` on
            ``connection_url``). The in-memory test client injects its own here.
        concurrency, graceful_timeout, max_body: keyword-only overrides of the class attributes.

    Example::

        class MyService(CommissaireService):
            def on_ping(self, message):
                return "pong"

        MyService("my_exchange", "redis://127.0.0.1:6379/",
                  qkwargs=[{"name": "my_queue", "routing_key": "queues.my_queue.*"}]).run()
    """

    _busapp_framework = True
    #: Messages handled at once in this worker (handler threads).
    concurrency: int = 8
    #: Seconds :meth:`stop` waits for in-flight messages before closing.
    graceful_timeout: float = 30.0
    #: Largest request body accepted, in bytes.
    max_body: int = wire.DEFAULT_MAX_BODY
    #: Deliveries of one message without an answer (its worker died each time) before it
    #: goes to the ``<queue>.dead`` queue and the caller gets an error.
    max_deliveries: int = 3
    #: Seconds between checks that an idle worker still receives (see ``_watchdog``).
    watchdog_interval: float = 5.0

    def __init__(self, exchange_name: str | None = None, connection_url: str | None = None,
                 qkwargs: list[dict[str, Any]] | None = None, config_file: str | None = None,
                 **kwargs: Any) -> None:
        client = kwargs.pop("client", None)
        if client is None:
            client = _INJECTED_CLIENT.get()
        for option in ("concurrency", "graceful_timeout", "max_body", "max_deliveries"):
            if option in kwargs:
                setattr(self, option, kwargs.pop(option))
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        self.exchange_name = default_exchange(exchange_name)
        # An injected client (the in-memory test bus) needs no broker at all.
        self.connection_url = connection_url if client is not None else resolve_broker_url(connection_url)
        if not qkwargs:
            name = type(self).__name__.lower()
            qkwargs = [{"name": name, "routing_key": f"{name}.*"}]
        self.qkwargs = [dict(q) for q in qkwargs]
        self.config_file = config_file
        self.service_name = str(self.qkwargs[0].get("name") or type(self).__name__.lower())
        self.handlers = self._collect_handlers()
        self.subscriptions: list[Subscription] = []
        self._stopping = threading.Event()
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inflight = 0
        self._client: Any = client
        self._client_lock = threading.Lock()

    # -- registration ----------------------------------------------------------

    @classmethod
    def exposed_methods(cls) -> dict[str, Callable[..., Any]]:
        """``{name: function}`` for every ``on_<name>`` a user subclass defines itself."""
        found: dict[str, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            if not issubclass(klass, CommissaireService) or klass.__dict__.get("_busapp_framework"):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("on_") and attr not in RESERVED_HOOKS and callable(value):
                    name = attr[3:]
                    if _METHOD_NAME.match(name):
                        found[name] = value
        return found

    def _collect_handlers(self) -> dict[str, dispatch.Handler]:
        handlers = {}
        for name in self.exposed_methods():
            bound = getattr(self, f"on_{name}")
            handler = getattr(bound, "__busapp_handler__", None)
            handlers[name] = handler or dispatch.Handler.from_function(bound, name, message_first=True)
        return handlers

    def subscribe(self, binding_key: str, callback: Callable[[Any, IncomingMessage], Any], *,
                  queue_name: str) -> None:
        """Consume plain JSON messages matching ``binding_key`` from the named, shared queue.

        Every worker of the service consumes the same ``queue_name``, so each
        message is handled once per service. Call before :meth:`run`.
        """
        self.subscriptions.append(Subscription(binding_key, callback, queue_name))

    @property
    def routing_keys(self) -> list[str]:
        """The binding keys of the service's RPC queues."""
        return [str(q.get("routing_key", q.get("name"))) for q in self.qkwargs]

    def _bus_client(self) -> Client:
        with self._client_lock:
            if self._client is None:
                self._client = Client(self.connection_url, self.exchange_name)
            return self._client

    # -- running ---------------------------------------------------------------

    def run(self) -> None:
        """Consume until :meth:`stop` (or SIGINT/SIGTERM in the main thread), then drain."""
        self._stopping.clear()
        self._ever_ready = False
        self._install_signal_handlers()
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="busapp-handler")
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                try:
                    self._consume_until_stopped()
                except Exception as exc:  # noqa: BLE001 - the worker must outlive any one fault
                    if self._stopping.is_set():
                        break
                    if not self._ever_ready and not isinstance(exc, connection_errors()):
                        raise  # a start-up bug, not a fault: let the manager see it fail
                    if isinstance(exc, connection_errors()):
                        log.warning("broker connection lost; reconnecting",
                                    error=str(exc) or type(exc).__name__, retry_in=backoff,
                                    broker=mask_url(self.connection_url))
                    else:
                        log.error("consumer loop failed; reconnecting", retry_in=backoff,
                                  exc_info=exc)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                else:
                    backoff = 0.5
        finally:
            self._executor.shutdown(wait=True, cancel_futures=False)
            if self._client is not None:
                self._client.close()
                self._client = None
            log.info("worker stopped", pid=os.getpid(), service=self.service_name)

    def stop(self) -> None:
        """Stop taking messages; :meth:`run` finishes the ones in hand and returns."""
        self._stopping.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def _queues(self, exchange: Any) -> tuple[list[Any], list[Any]]:
        from kombu import Queue

        rpc = [Queue(exchange=exchange, **{"durable": True, **q}) for q in self.qkwargs]
        subs = [Queue(s.queue_name, exchange, routing_key=s.binding_key, durable=True)
                for s in self.subscriptions]
        return rpc, subs

    def _consume_until_stopped(self) -> None:
        from kombu import Consumer, Exchange

        conn = connect(self.connection_url)
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2)
            channel = conn.channel()
            exchange = Exchange(self.exchange_name, type="topic", durable=True)
            rpc_queues, sub_queues = self._queues(exchange)
            # Twice the handler threads: the next messages are at hand when a handler
            # finishes (measured: +16% calls/s with 32 calls in flight on RabbitMQ).
            consumers = [Consumer(channel, [q], on_message=self._receiver(q.name, self._serve),
                                  prefetch_count=self.concurrency * 2) for q in rpc_queues]
            for sub, q in zip(self.subscriptions, sub_queues):
                consumers.append(Consumer(channel, [q], on_message=self._receiver(
                    q.name, self._serve_event, sub)))
            self._done = queue.SimpleQueue()  # acks of an old connection are void
            self._inflight = 0
            self._channel = channel
            self._dead_declared: set[str] = set()
            for consumer in consumers:
                consumer.consume()
            self._last_receive = time.monotonic()
            self._stalled_checks = 0
            busy_poll = busy_poll_interval(self.connection_url)
            self._bus_client()
            self._ever_ready = True
            if (cb := getattr(self, "ready_callback", None)) is not None:  # set by ServiceManager
                cb()
            log.info("worker ready", pid=os.getpid(), service=self.service_name,
                     routing_keys=self.routing_keys + [s.binding_key for s in self.subscriptions],
                     exchange=self.exchange_name, broker=mask_url(self.connection_url),
                     concurrency=self.concurrency)
            while not self._stopping.is_set():
                self._drain(conn, busy_poll if self._inflight else 1.0)
                self._watchdog(channel, rpc_queues + sub_queues)
            for consumer in consumers:
                consumer.cancel()
            self._drain_in_flight(conn)
        finally:
            try:
                conn.release()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def _drain(self, conn: Any, timeout: float) -> None:
        try:
            conn.drain_events(timeout=timeout)
        except socket.timeout:
            pass
        self._flush_acks()

    def _watchdog(self, channel: Any, queues: list[Any]) -> None:
        """Reconnect if this worker is idle while its queue holds messages (consumer lost).

        A broker can drop a consumer without dropping the connection; the worker
        then sits connected and deaf. Two checks in a row that find messages
        waiting while this worker has nothing in hand mean it is not receiving.
        """
        now = time.monotonic()
        if self._inflight or now - self._last_receive < self.watchdog_interval:
            return
        self._last_receive = now  # next check one interval later
        if is_redis(self.connection_url):
            # kombu keeps Redis bindings in a set that a flushed or restarted Redis loses,
            # and its channel would not write them again: reconnect to re-declare.
            bound = {queue for _, _, queue in channel.get_table(self.exchange_name)}
            missing = [q.name for q in queues if q.name not in bound]
            if missing:
                log.warning("queue binding lost on the broker; re-subscribing", queues=missing)
                raise ConsumerStalled(f"bindings of {missing} are gone")
        waiting = 0
        for q in queues:
            waiting += q(channel).queue_declare().message_count
        self._stalled_checks = self._stalled_checks + 1 if waiting else 0
        if self._stalled_checks >= 2:
            log.warning("consumer stalled: messages wait but none arrive; re-subscribing",
                        waiting=waiting, service=self.service_name)
            raise ConsumerStalled(f"{waiting} messages waiting on an idle worker")

    def _drain_in_flight(self, conn: Any) -> None:
        deadline = time.monotonic() + self.graceful_timeout
        while self._inflight and time.monotonic() < deadline:
            self._drain(conn, 0.05)
        if self._inflight:
            log.warning("grace period over; unfinished messages go back to the queue",
                        unfinished=self._inflight, graceful_timeout=self.graceful_timeout)

    def _flush_acks(self) -> None:
        while True:
            try:
                message = self._done.get_nowait()
            except queue.Empty:
                return
            self._inflight -= 1
            message.ack()

    # -- per message (main thread hands over, pool threads work) --------------

    def _receiver(self, queue_name: str, serve: Callable[..., None], *args: Any) -> Callable[[Any], None]:
        """The kombu on_message callback for ``queue_name``: hand each message to ``serve``."""
        def receive(message: Any) -> None:
            self._last_receive = time.monotonic()
            if self._stopping.is_set():
                message.requeue()
                return
            if self._is_redelivery(message) and not self._count_delivery(message, queue_name):
                return
            self._inflight += 1
            self._executor.submit(serve, *args, message, self._done)

        return receive

    # A message whose worker died comes back flagged as redelivered. Its delivery
    # count travels in a header: the message is re-published with the count + 1 and
    # the old copy acked, so the count survives the next crash too.
    _COUNT = "x-busapp-deliveries"
    _ROUTING_KEY = "x-busapp-routing-key"

    @staticmethod
    def _is_redelivery(message: Any) -> bool:
        return bool((message.delivery_info or {}).get("redelivered")
                    or (message.headers or {}).get("redelivered"))

    def _count_delivery(self, message: Any, queue_name: str) -> bool:
        """Re-publish a redelivered message with its count, or dead-letter it. Always False."""
        from kombu import Producer, Queue

        headers = dict(message.headers or {})
        headers.pop("redelivered", None)
        count = int(headers.get(self._COUNT, 1)) + 1
        routing_key = headers.get(self._ROUTING_KEY) or (message.delivery_info or {}).get("routing_key")
        headers.update({self._COUNT: count, self._ROUTING_KEY: routing_key})
        target = queue_name if count <= self.max_deliveries else f"{queue_name}.dead"
        if target != queue_name and target not in self._dead_declared:
            Queue(target, durable=True, channel=self._channel).declare()
            self._dead_declared.add(target)
        props = message.properties or {}
        Producer(self._channel).publish(
            message.body, exchange="", routing_key=target, headers=headers,
            content_type=message.content_type, content_encoding=message.content_encoding,
            delivery_mode=2, reply_to=props.get("reply_to"), correlation_id=props.get("correlation_id"),
        )
        message.ack()
        if target != queue_name:
            self._answer_poison(message, routing_key, count, target)
        return False

    def _answer_poison(self, message: Any, routing_key: str | None, count: int, dead: str) -> None:
        info = IncomingMessage.from_kombu(message, self.max_body)
        log.error("message dead-lettered: its worker died on every delivery",
                  routing_key=routing_key, deliveries=count - 1, dead_letter_queue=dead, id=info.id)
        if info.reply_to and info.id is not None:
            exc = InternalError(
                f"the worker handling {routing_key!r} died on each of {count - 1} deliveries; "
                f"the request was moved to queue {dead!r}",
                data={"exception": "WorkerLost", "deliveries": count - 1})
            self._bus_client().publish_reply(
                info.reply_to, wire.error_response(info.id, exc), info.correlation_id or info.id)

    def _serve(self, message: Any, done: queue.SimpleQueue) -> None:
        started = time.perf_counter()
        info = IncomingMessage.from_kombu(message, self.max_body)
        structlog.contextvars.bind_contextvars(routing_key=info.routing_key, id=info.id)
        try:
            # from_kombu already parsed an acceptable JSON object: do not parse it twice.
            body = info.body if isinstance(info.body, dict) else message.body
            response = dispatch.process(
                self.handlers, body,
                content_type=message.content_type, routing_key=info.routing_key,
                context=self._context(info), on_error=self._log_handler_error,
                max_body=self.max_body,
            )
            self._reply(info, response)
            outcome = "notification" if response is None else (
                "error" if "error" in response else "ok")
            log.debug("call", outcome=outcome,
                      duration_ms=round((time.perf_counter() - started) * 1000, 3))
        except Exception:  # noqa: BLE001 - a reply that cannot be sent must not kill the worker
            log.exception("could not reply")
        finally:
            structlog.contextvars.clear_contextvars()
            done.put(message)

    def _context(self, info: IncomingMessage) -> dict[str, Any]:
        return {"message": info, "bus": self, "storage": self._storage_client()}

    def _storage_client(self) -> Any:
        client = getattr(self, "_storage", None)
        if client is None:
            try:
                from busapp.storage.client import StorageClient
            except ImportError:
                return None
            client = self._storage = StorageClient(self)
        return client

    def _reply(self, info: IncomingMessage, response: dict | None) -> None:
        if response is None:
            return
        if not info.reply_to:
            if "error" in response:
                log.warning("bad message dropped (no reply_to to answer)",
                            error=response["error"].get("message"))
            return
        correlation_id = info.correlation_id or response.get("id")
        self._bus_client().publish_reply(info.reply_to, response, correlation_id)

    def _log_handler_error(self, request: wire.Request | None, exc: BaseException) -> None:
        method = request.method if request else None
        if isinstance(exc, RemoteProcedureCallError):
            log.info("handler returned an error", method=method, code=exc.code, error=exc.message)
        else:
            log.error("handler raised", method=method, exc_info=exc)

    def _serve_event(self, sub: Subscription, message: Any, done: queue.SimpleQueue) -> None:
        info = IncomingMessage.from_kombu(message, self.max_body)
        try:
            body = info.body
            if body is None:  # refused, or JSON null: loads_body raises (and we log) the reason
                body = wire.loads_body(message.body, message.content_type, self.max_body)
            sub.callback(body, info)
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the others
            log.error("event handler failed; event dropped", routing_key=info.routing_key,
                      queue=sub.queue_name, exc_info=exc)
        finally:
            done.put(message)


def __getattr__(name: str) -> Any:
    # ServiceManager lives in busapp.manager; imported lazily to keep this module small.
    if name in ("ServiceManager", "CrashLoopError"):
        from busapp import manager

        return getattr(manager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
