"""Test services without a broker: :class:`TestClient` over the in-memory transport.

::

    def test_add():
        client = app.test_client()             # or TestClient(app)
        assert client.call("add", 1, 2) == 3   # short name; "simple.add" works too
        with pytest.raises(InvalidParams):
            client.call("add", "x", 2)

Nothing here re-implements the bus: calls go through a real
:class:`~busapp.client.sync.Client`, and each registered service is served by a real
:class:`~busapp.runtime.worker.Worker` (the same serve path as on a broker: redelivery
counting, JSON decoding, dispatch, reply publishing, ack, log context) over the
in-memory transport (:mod:`busapp.transport.memory`), which delivers every message
synchronously. So when a call returns, everything it caused has happened: handlers
that call ``bus.call(...)`` reach the registered services, and every matching
``on_storage_event`` handler (or ``register_callback`` callback) and ``on_event``
handler has run. The test client runs no clock: an event handler's retries run at once,
and a timer runs when the test says so (``client.tick(name)``).
``client.storage`` is a :class:`~busapp.storage.client.StorageClient` over an
in-memory storage service.

Differences from a broker, all meant to make tests fail fast and clearly:

- a call to a routing key no registered service consumes raises
  :class:`~busapp.transport.memory.NoRouteError` at once; it is a
  :class:`~busapp.errors.RequestTimeout`, what a broker gives after the timeout;
- an exception in a storage-event or notification handler is re-raised, with
  its own traceback, from the test's call that caused it
  (``raise_handler_errors=False`` collects them in ``client.handler_errors``);
- an error reply's exception has the handler's original exception as its
  ``__cause__``.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any


from busapp.core import wire
from busapp.client.sync import Client
from busapp.core.pipeline import IncomingMessage
from busapp.entrypoints.storage_event import Subscription
from busapp.storage.client import StorageClient
from busapp.testing.errors import HandlerErrors
from busapp.testing.support import ClientPerThread, HandlerError, Listener, Published
from busapp.storage.service import make_app
from busapp.transport.base import QueueSpec
from busapp.transport.memory import MemoryBroker, MemoryTransport, NoRouteError, topic_matches
from busapp.runtime.worker import Worker

__all__ = ["HandlerError", "NoRouteError", "Published", "TestClient"]

class TestClient:
    """Call an App (and the services it talks to) in memory, on the production serve path.

    Args:
        app: the App (or ``CommissaireService`` subclass) that short names refer to.
        raise_handler_errors: re-raise an exception from a storage-event or
            notification handler in the test (default); False only collects
            them in :attr:`handler_errors`.
        storage: serve an in-memory storage service (``storage.*``) for
            :attr:`storage` and the handlers' ``storage``.
        key: sign the test's calls with this key: ``(id, secret)``, or the id of a key
            of the App's keyring (default: unsigned). The storage service shares the
            App's keyring.

    Thread-safe: several threads may call through one client at once.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, app: Any = None, *, raise_handler_errors: bool = True, storage: bool = True,
                 dependencies: dict[str, Any] | None = None, key: Any = None) -> None:
        self.raise_handler_errors = raise_handler_errors
        self._errors = HandlerErrors(lambda: self.raise_handler_errors)
        #: Every exception raised by a handler that had no caller to answer (events, notifications).
        self.handler_errors: list[HandlerError] = self._errors.errors
        #: The in-memory broker URL every service and client of this test client shares.
        self.url = f"memory://test-{uuid.uuid4().hex}"
        self.exchange = getattr(app, "exchange", None) or "commissaire"
        #: The test's own bus client (a real :class:`~busapp.client.sync.Client`).
        keyring = getattr(app, "keyring", None)
        if isinstance(key, str) and keyring is not None and key in keyring:
            key = keyring.key(key)
        self.bus = Client(self.url, self.exchange, key=key)
        self._key = key
        #: Clients no call is using now (:meth:`_calling`); :attr:`bus` is the first.
        self._idle: collections.deque[Client] = collections.deque([self.bus])
        self._extra: list[Client] = []  # made for threads calling at once; closed by close()
        #: Services served on this client, in registration order.
        self.services: list[Any] = []
        self.service_name = "test"
        self._published: list[Published] = []
        self._lock = threading.Lock()
        self._short: dict[str, str] = {}
        self._storage: Any = None
        self._raw = MemoryTransport(self.url)
        self._raw_replies: dict[str, dict] = {}
        self._raw_queue = f"busapp.reply.test-raw-{uuid.uuid4().hex}"
        self._workers: list[Worker] = []
        broker = MemoryBroker.named(self.url)
        broker.taps.append(self._record)
        broker.delays.instant = True  # no clock: an event's retry is run at once
        self.storage_app: Any = None
        if storage:
            self.storage_app = make_app("memory://", keyring=keyring)
            self.register(self.storage_app)
        options = {"dependencies": dependencies} if dependencies is not None else {}
        try:
            #: The service short names resolve against (None without ``app``).
            self.service: Any = self.register(app, **options) if app is not None else None
        except BaseException:
            self.close()  # e.g. a failed start-up hook: shut down what did start
            raise

    def __repr__(self) -> str:
        names = ", ".join(s.service_name for s in self.services)
        return f"<TestClient services=[{names}]>"

    # -- registration -----------------------------------------------------------

    def register(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        """Serve ``target`` (an App or a CommissaireService subclass) on this client; return
        the service.

        A class is constructed as ``target(exchange_name, <memory URL>, *args, **kwargs)``.
        """
        service_class = getattr(target, "service_class", None)
        if service_class is not None:  # an App
            args = args or (target.exchange, self.url, target.qkwargs())
        elif isinstance(target, type):
            service_class = target
            args = args or (self.exchange, self.url)
        else:
            raise TypeError("register() takes an App or a CommissaireService subclass, "
                            f"got {target!r}")
        service = service_class(*args, **kwargs)
        if getattr(service, "_client", True) is None:  # no client of its own yet
            service._client = ClientPerThread(service)
        self._check_queues(service)
        self._attach(service)
        return service

    def _attach(self, service: Any) -> None:
        worker = Worker(service, getattr(service, "options", None))
        worker.on_handler_error = self._errors.hook
        worker.attach()  # runs the service's start-up hooks
        with self._lock:
            self.services.append(service)
            self._workers.append(worker)

    def _check_queues(self, service: Any) -> None:
        taken = {q.get("name") for s in self.services for q in s.qkwargs}
        clash = [q.get("name") for q in service.qkwargs if q.get("name") in taken]
        if clash:
            raise ValueError(f"queue {clash[0]!r} is already served on this client (workers of one "
                             f"service share a queue; register each service once)")

    def subscribe(self, binding_key: str, callback: Callable[[Any, IncomingMessage], Any], *,
                  queue_name: str | None = None) -> None:
        """Have ``callback(body, message)`` run on every message matching ``binding_key``.

        Also what ``client.storage.register_callback(...)`` uses.
        """
        listener = Listener(self.service_name, self.url, self.exchange, self.bus)
        listener.subscriptions.append(
            Subscription(binding_key, callback, queue_name or f"test.{binding_key}"))
        self._attach(listener)

    # -- calls ------------------------------------------------------------------

    def routing_key(self, name: str) -> str:
        """``name`` if it is a full routing key, else the routing key of method ``name`` of
        the app."""
        key = self._short.get(name)
        if key is None:
            key = self._short[name] = name if "." in name else self._resolve_short(name)
        return key

    def _resolve_short(self, name: str) -> str:
        if self.service is None:
            raise ValueError(f"short name {name!r} needs an app: TestClient(app), or pass "
                             f"a full routing key such as 'service.{name}'")
        for binding in self.service.routing_keys:
            if binding.endswith((".*", ".#")):
                return f"{binding[:-1]}{name}"
        raise ValueError(f"cannot build a routing key for {name!r} from the bindings "
                         f"{self.service.routing_keys}; pass the full routing key")

    def call(self, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``method`` (short name or routing key) and return its result.

        Raises:
            RemoteProcedureCallError: the subclass chosen by the error reply's code, with
                the handler's own exception as its ``__cause__``.
            NoRouteError: no registered service consumes the routing key.
            RequestTimeout: no reply within ``timeout`` seconds, raised at the timeout (the
                handler, run in a thread of its own, goes on; no ``timeout``: 10 s, checked
                once the handler returned)
        """
        response = self._errors.request(self._calling, self.routing_key(method),
                                        wire.params_from(args, kwargs), timeout)
        error = wire.error_from_response(response)
        if error is not None:
            raise error from self._errors.causes.pop(str(response.get("id")), None)
        return response.get("result")

    def request(self, routing_key: str, params: Any = None, timeout: float | None = None) -> dict:
        """Send a request and return the whole JSON-RPC response dict (Commissaire's form)."""
        response = self._errors.request(self._calling, self.routing_key(routing_key), params,
                                        timeout)
        self._errors.causes.pop(str(response.get("id")), None)
        return response


    def request_raw(self, routing_key: str, body: bytes | str, *,
                    content_type: str = "application/json") -> dict | None:
        """Deliver ``body`` exactly as given; return the response dict (None for a notification).

        For what a client never sends: bad JSON (-32700), a foreign content
        type, a method that differs from the routing key (-32600).
        """
        with self._lock:
            if not self._raw_replies:
                self._raw.declare_queue("", _reply_spec(self._raw_queue))
                self._raw.consume(self._raw_queue, self._on_raw_reply, no_ack=True)
                self._raw_replies["ready"] = {}
        correlation_id = uuid.uuid4().hex
        payload = body.encode() if isinstance(body, str) else bytes(body)
        self._errors.run(self._raw.publish, payload, exchange=self.exchange,
                  routing_key=self.routing_key(routing_key), reply_to=self._raw_queue,
                  correlation_id=correlation_id, content_type=content_type)
        return self._raw_replies.pop(correlation_id, None)

    def _on_raw_reply(self, delivery: Any) -> None:
        self._raw_replies[str(delivery.correlation_id)] = wire.parse_response(delivery.body)

    def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification; every consumer has handled it when this returns."""
        with self._calling() as bus:
            self._errors.run(bus.notify, self.routing_key(method), *args, **kwargs)

    def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON message (e.g. a storage event) to every matching subscription."""
        with self._calling() as bus:
            self._errors.run(bus.publish, routing_key, body)

    @contextlib.contextmanager
    def _calling(self) -> Iterator[Client]:
        """A Client for one call: :attr:`bus` unless another thread's call is using it.

        A Client publishes under a lock, and on the in-memory transport a publish runs the
        whole call (handler, reply) before it returns: threads sharing one Client would
        take turns, each waking the next. So a call takes an idle Client, and threads
        calling at once get one each (made on first need, kept for the next call).
        """
        try:
            bus = self._idle.pop()  # deque.pop/append are atomic: no lock to contend for
        except IndexError:
            bus = Client(self.url, self.exchange, key=self._key)
            with self._lock:
                self._extra.append(bus)
        try:
            yield bus
        finally:
            self._idle.append(bus)

    def emit(self, name: str, /, **payload: Any) -> str:
        """Emit event ``name`` (see :meth:`busapp.Client.emit`); every matching handler of the
        registered Apps has run when this returns, its retries included (at once: the test
        client runs no clock). A handler that fails on its last retry raises here, as the
        event is dead-lettered; its id."""
        return self._errors.run(self.bus.emit, name, **payload)

    def tick(self, name: str) -> None:
        """Run one tick of timer ``name`` of a registered App (on the serve path: middleware,
        dependencies, log line) and return when it has finished; a timer that raises raises
        here.

        Raises:
            KeyError: no registered App has a timer ``name``.
        """
        for worker in self._workers:
            if name in worker.timer_pipelines:
                self._errors.run(worker.tick, name)
                return
        known = sorted(t for w in self._workers for t in w.timer_pipelines)
        raise KeyError(f"no timer {name!r} on the registered Apps; known: "
                       f"{', '.join(known) or 'none'}")

    def dead_letters(self, queue: str | None = None) -> list[Any]:
        """The bodies waiting in dead-letter queues (``<queue>.dead``; ``queue``: that one only),
        oldest first."""
        broker = MemoryBroker.named(self.url)
        found = []
        for name, waiting in list(broker.queues.items()):
            if name.endswith(".dead") and (queue is None or name == queue):
                found += [wire.loads_body(w.delivery.body, w.delivery.content_type, None)
                          for w in waiting.waiting]
        return found

    # -- what the services published -------------------------------------------

    def _record(self, exchange: str, routing_key: str, body: bytes, reply_to: str | None) -> None:
        if not exchange or reply_to is not None:
            return  # replies and requests are not "published"
        try:
            data = wire.loads_body(body, "application/json", max_body=len(body))
        except Exception:  # noqa: BLE001 - not JSON: record the text
            data = body.decode("utf-8", "replace")
        kind = "notify" if isinstance(data, dict) and "method" in data and "jsonrpc" in data \
            else "publish"
        self._published.append(Published(routing_key, data, kind))

    @property
    def notifications(self) -> list[Published]:
        """Every notification and plain message published on the bus (storage events too),
        in order."""
        return self._published

    def published(self, pattern: str = "#") -> list[Any]:
        """The bodies of the messages published with a routing key matching ``pattern``."""
        return [p.body for p in self._published if topic_matches(pattern, p.routing_key)]

    @property
    def storage(self) -> Any:
        """A StorageClient over the in-memory storage service (reads and writes go through
        the bus)."""
        if self.storage_app is None:
            raise RuntimeError("this TestClient has no storage service: "
                               "TestClient(app, storage=True)")
        if self._storage is None:
            self._storage = StorageClient(self)
        return self._storage

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Run the services' shut-down hooks (last registered first), release storage and broker.

        Raises:
            Exception: the first shut-down hook or teardown that failed (all still run).
        """
        errors = []
        while self._workers:
            try:
                self._workers.pop().detach()
            except Exception as exc:  # noqa: BLE001 - the other services still shut down
                errors.append(exc)
        for service in self.services:
            client = getattr(service, "_client", None)
            if isinstance(client, ClientPerThread):
                client.close()
        if self.storage_app is not None:
            self.storage_app.store.close()
        self.bus.close()
        with self._lock:
            extra, self._extra = self._extra, []
        for bus in extra:
            bus.close()
        MemoryBroker.forget(self.url)
        if errors:
            raise errors[0]

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _reply_spec(name: str) -> Any:
    return QueueSpec(name, durable=False, auto_delete=True)
