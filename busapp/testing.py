"""Test services without a broker: :class:`TestClient` over the in-memory bus.

::

    def test_add():
        client = app.test_client()             # or TestClient(app)
        assert client.call("add", 1, 2) == 3   # short name; "simple.add" works too
        with pytest.raises(InvalidParams):
            client.call("add", "x", 2)

Every call is JSON-encoded, served by the same :func:`busapp.dispatch.process`
a worker on a broker runs, and its reply JSON-decoded into the same result or
exception class (see :mod:`busapp.transport.memory`). Handlers that call
``bus.call(...)`` reach the registered services in memory; ``client.storage``
is a :class:`~busapp.storage.client.StorageClient` over an in-memory storage
service, and every matching ``on_storage_event`` handler (or
``register_callback`` callback) has run before the storage call returns.

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

import contextvars
import threading
from collections.abc import Callable
from typing import Any

from busapp.service import IncomingMessage, Subscription, injected_client
from busapp.transport.memory import HandlerError, MemoryBus, NoRouteError, Published, topic_matches

__all__ = ["HandlerError", "NoRouteError", "Published", "TestClient"]

#: Handler errors raised under the test's current top-level call (None outside one).
_COLLECTOR: contextvars.ContextVar[list[HandlerError] | None] = contextvars.ContextVar(
    "busapp_testing_collector", default=None)


class TestClient:
    """Call an App (and the services it talks to) in memory, on the production dispatch path.

    Args:
        app: the App (or ``CommissaireService`` subclass) that short names refer to.
        raise_handler_errors: re-raise an exception from a storage-event or
            notification handler in the test (default); False only collects
            them in :attr:`handler_errors`.
        storage: serve an in-memory storage service (``storage.*``) for
            :attr:`storage` and the handlers' ``storage``.

    Thread-safe: several threads may call through one client at once.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, app: Any = None, *, raise_handler_errors: bool = True, storage: bool = True) -> None:
        self.raise_handler_errors = raise_handler_errors
        #: Every exception raised by a handler that had no caller to answer (events, notifications).
        self.handler_errors: list[HandlerError] = []
        self.bus = MemoryBus(getattr(app, "exchange", None) or "commissaire",
                             on_handler_error=self._handler_failed)
        self.service_name = "test"
        self._lock = threading.Lock()
        self._unclaimed: list[HandlerError] = []
        self._short: dict[str, str] = {}
        self._listener: _Listener | None = None
        self._storage: Any = None
        self.storage_app: Any = None
        if storage:
            from busapp.storage.service import make_app

            self.storage_app = make_app("memory://")
            self.register(self.storage_app)
        #: The service short names resolve against (None without ``app``).
        self.service: Any = self.register(app) if app is not None else None

    def __repr__(self) -> str:
        names = ", ".join(s.service_name for s in self.bus.services)
        return f"<TestClient services=[{names}]>"

    # -- registration -----------------------------------------------------------

    def register(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        """Serve ``target`` (an App or a CommissaireService subclass) on this client; return the service.

        A class is constructed as ``target(exchange_name, "memory://", *args, **kwargs)``
        with this client's bus injected, whatever its own ``__init__`` takes.
        """
        service_class = getattr(target, "service_class", None)
        if service_class is not None:  # an App
            args = args or (target.exchange, "memory://", target.qkwargs())
        elif isinstance(target, type):
            service_class = target
            args = args or (self.bus.exchange_name, "memory://")
        else:
            raise TypeError(f"register() takes an App or a CommissaireService subclass, got {target!r}")
        with injected_client(self.bus):
            service = service_class(*args, **kwargs)
        self._check_queues(service)
        self.bus.add_service(service)
        return service

    def _check_queues(self, service: Any) -> None:
        taken = {q.get("name") for s in self.bus.services for q in s.qkwargs}
        clash = [q.get("name") for q in service.qkwargs if q.get("name") in taken]
        if clash:
            raise ValueError(f"queue {clash[0]!r} is already served on this client (workers of one "
                             f"service share a queue; register each service once)")

    def subscribe(self, binding_key: str, callback: Callable[[Any, IncomingMessage], Any], *,
                  queue_name: str | None = None) -> None:
        """Have ``callback(body, message)`` run on every message matching ``binding_key``.

        Also what ``client.storage.register_callback(...)`` uses.
        """
        with self._lock:
            if self._listener is None:
                self._listener = _Listener(self.service_name)
                self.bus.add_service(self._listener)
        self._listener.subscriptions.append(
            Subscription(binding_key, callback, queue_name or f"test.{binding_key}"))

    # -- calls ------------------------------------------------------------------

    def routing_key(self, name: str) -> str:
        """``name`` if it is a full routing key, else the routing key of method ``name`` of the app."""
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
            RemoteProcedureCallError: the subclass chosen by the error reply's code.
            NoRouteError: no registered service consumes the routing key.
        """
        return self._run(self.bus.call, self.routing_key(method), *args, **kwargs)

    def request(self, routing_key: str, params: Any = None, timeout: float | None = None) -> dict:
        """Send a request and return the whole JSON-RPC response dict (Commissaire's form)."""
        return self._run(self.bus.request, self.routing_key(routing_key), params)

    def request_raw(self, routing_key: str, body: bytes | str, *,
                    content_type: str = "application/json") -> dict | None:
        """Deliver ``body`` exactly as given; return the response dict (None for a notification).

        For what a client never sends: bad JSON (-32700), a foreign content
        type, a method that differs from the routing key (-32600).
        """
        return self._run(self.bus.request_raw, self.routing_key(routing_key), body,
                         content_type=content_type)

    def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification; every consumer has handled it when this returns."""
        self._run(self.bus.notify, self.routing_key(method), *args, **kwargs)

    def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON message (e.g. a storage event) to every matching subscription."""
        self._run(self.bus.publish, routing_key, body)

    def _run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        token = _COLLECTOR.set([])
        try:
            result = func(*args, **kwargs)
        finally:
            errors = _COLLECTOR.get()
            _COLLECTOR.reset(token)
        if errors or self._unclaimed:
            self._raise_handler_errors(errors)
        return result

    # -- what the services published -------------------------------------------

    @property
    def notifications(self) -> list[Published]:
        """Every notification and plain message published on the bus (storage events too), in order."""
        return self.bus.published

    def published(self, pattern: str = "#") -> list[Any]:
        """The bodies of the messages published with a routing key matching ``pattern``."""
        return [p.body for p in self.bus.published if topic_matches(pattern, p.routing_key)]

    @property
    def storage(self) -> Any:
        """A StorageClient over the in-memory storage service (reads and writes go through the bus)."""
        if self.storage_app is None:
            raise RuntimeError("this TestClient has no storage service: TestClient(app, storage=True)")
        if self._storage is None:
            from busapp.storage.client import StorageClient

            self._storage = StorageClient(self)
        return self._storage

    # -- handler errors ---------------------------------------------------------

    def _handler_failed(self, error: HandlerError) -> None:
        with self._lock:
            self.handler_errors.append(error)
            collector = _COLLECTOR.get()
            # Outside a test's call (e.g. in the asyncio thread): raise at the next call.
            (collector if collector is not None else self._unclaimed).append(error)

    def _raise_handler_errors(self, errors: list[HandlerError] | None) -> None:
        with self._lock:
            errors = [*(errors or ()), *self._unclaimed]
            self._unclaimed.clear()
        if not errors or not self.raise_handler_errors:
            return
        first = errors[0]
        first.exception.add_note(
            f"raised by the handler on {first.consumer!r} for {first.routing_key!r} "
            f"(TestClient(..., raise_handler_errors=False) collects these in client.handler_errors)")
        for other in errors[1:]:
            first.exception.add_note(f"also failed: {other.consumer!r} for {other.routing_key!r}: "
                                     f"{type(other.exception).__name__}: {other.exception}")
        raise first.exception

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Release the in-memory storage."""
        if self.storage_app is not None:
            self.storage_app.store.close()

    def __enter__(self) -> TestClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _Listener:
    """A consumer with subscriptions only: what :meth:`TestClient.subscribe` registers."""

    qkwargs: list[dict[str, Any]] = []
    routing_keys: list[str] = []
    handlers: dict[str, Any] = {}
    max_body = 1024 * 1024

    def __init__(self, name: str) -> None:
        self.service_name = name
        self.subscriptions: list[Subscription] = []
