"""The Flask-style front: plain functions registered on an :class:`App`. No I/O.

This is the App's registry: methods, storage handlers, hooks, dependencies, middleware,
and the names its queues and routing keys get. What runs it (``service_class``,
``run()``, ``test_client()``) is added by :class:`busapp.app.App`, the class users import
as ``busapp.App``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from busapp import names
from busapp.core.dispatch import INJECTABLE, Handler
from busapp.core.options import check_queue_type
from busapp.core.scaffold import STORAGE_EVENTS as STORAGE_EVENTS  # re-exported
from busapp.core.scaffold import (
    Scaffold,
    StorageHandler,
    check_method_name,
    check_storage_subscription,
)

F = TypeVar("F", bound=Callable[..., Any])

class App(Scaffold):
    """A bus service made of plain functions (its registry; see :class:`busapp.app.App`).

    Args:
        name: the service name: queue ``name`` and routing keys ``name.<method>``.
        exchange: the topic exchange (default ``$BUSAPP_EXCHANGE``, else ``commissaire``).
        queue: queue name, shared by all workers (default ``name`` on the ``commissaire``
            exchange, ``<exchange>.<name>`` on another: see :func:`busapp.names.default_queue`).
        routing_key: binding key (default ``name.*``).
        max_body: largest request body accepted, in bytes (default 1 MiB).
        keyring: a :class:`~busapp.security.Keyring`: callers must sign their requests
            with one of its keys (unsigned ones get -32001); see :mod:`busapp.security`.
        queue_type: ``"quorum"`` to declare the queues as RabbitMQ quorum queues (a
            cluster), ``"classic"``; default ``$BUSAPP_QUEUE_TYPE``, else classic.

    Example::

        app = App("simple")

        @app.method("add")
        def add(x: int, y: int) -> int:
            return x + y
    """

    def __init__(self, name: str, *, exchange: str | None = None, queue: str | None = None,
                 routing_key: str | None = None, max_body: int | None = None,
                 keyring: Any = None, queue_type: str | None = None) -> None:
        if not name or not isinstance(name, str) or "." in name or "*" in name or "#" in name \
                or name.startswith("busapp-"):
            raise ValueError("App name must be a non-empty string without '.', '*' or '#', "
                             f"not starting with 'busapp-' (busapp's own keys do): {name!r}")
        self.name = name
        self._exchange = exchange
        self._queue = queue
        self.routing_key = routing_key or f"{name}.*"
        self.max_body = max_body
        #: The :class:`~busapp.security.Keyring` callers must sign with (None: anyone may call).
        self.keyring = keyring
        #: ``classic``, ``quorum``, or None (``$BUSAPP_QUEUE_TYPE``); see
        #: :mod:`busapp.runtime.cluster`.
        self.queue_type = check_queue_type(queue_type)
        super().__init__()  # hooks, dependencies, middleware (busapp.core.scaffold)
        #: Bus methods: ``{method name: Handler}``, filled by :meth:`method`.
        self.methods: dict[str, Handler] = {}
        #: Storage event subscriptions, filled by :meth:`on_storage_event`.
        self.storage_handlers: list[StorageHandler] = []
        #: The generated service class, once made (see :class:`busapp.app.App`).
        self._service_class: Any = None

    @property
    def exchange(self) -> str:
        """The exchange given, else ``$BUSAPP_EXCHANGE``, else ``commissaire``."""
        return names.default_exchange(self._exchange)

    @property
    def queue(self) -> str:
        """The RPC queue's name on :attr:`exchange` (see :meth:`queue_for`)."""
        return self.queue_for(self.exchange)

    @queue.setter
    def queue(self, name: str | None) -> None:
        self._queue = name
        self._service_class = None

    def queue_for(self, exchange: str) -> str:
        """The RPC queue's name when serving on ``exchange``: the one given, else
        :func:`busapp.names.default_queue`."""
        return self._queue or names.default_queue(self.name, exchange)

    def __repr__(self) -> str:
        return f"<App {self.name!r} methods={sorted(self.methods)}>"

    def _registered(self) -> None:
        self._service_class = None

    # -- registration --------------------------------------------------------

    @overload
    def method(self, name: F, /) -> F: ...

    @overload
    def method(self, name: str | None = None, *, time_limit: float | None = None,
               allow: Any = None) -> Callable[[F], F]: ...

    def method(self, name: str | Callable[..., Any] | None = None, *,
               time_limit: float | None = None, allow: Any = None) -> Any:
        """Expose the decorated function as bus method ``name`` (default: its own name).

        ``time_limit``: seconds a call may run; past it the caller gets -32603
        (``data.exception == "TimeLimitExceeded"``) and the handler is interrupted (see
        :mod:`busapp.runtime.timelimit`). Default: the worker's ``WorkerOptions.time_limit``.

        ``allow``: the key ids (of the App's keyring) that may call it; a caller signing
        with another valid key gets -32002 (Forbidden). Default: any key of the keyring.

        Example::

            @app.method()
            def wordy_add(x: int, y: int, bus) -> str:
                return f"{x} plus {y} is {bus.call('simple.add', x, y)}"
        """
        if callable(name):  # used bare: @app.method
            self.add_method(name)
            return name

        def decorator(func: F) -> F:
            self.add_method(func, name, time_limit=time_limit, allow=allow)
            return func

        return decorator

    def add_method(self, func: Callable[..., Any], name: str | None = None, *,
                   time_limit: float | None = None, allow: Any = None) -> None:
        """Register ``func`` as bus method ``name``; the imperative twin of :meth:`method`."""
        name = check_method_name(name or getattr(func, "__name__", ""))
        if name in self.methods:
            raise ValueError(f"method {name!r} is already registered on App {self.name!r}")
        if time_limit is not None and not time_limit > 0:
            raise ValueError(f"time_limit of {name!r} must be a positive number of seconds, "
                             f"got {time_limit!r}")
        handler = Handler.from_function(func, name, injectables=self._injectables())
        handler.time_limit = time_limit
        if allow is not None:
            if isinstance(allow, str) or not all(isinstance(k, str) for k in allow):
                raise ValueError(f"allow of {name!r} must be a set of key ids, got {allow!r}")
            handler.allow = frozenset(allow)
            if self.keyring is not None:
                self.keyring.check_allow(handler.allow, f"method {name!r}")
        self.methods[name] = handler
        self._service_class = None

    def on_storage_event(self, model: type | None = None, event: str = "*") -> Callable[[F], F]:
        """Call the decorated function on storage changes of ``model`` (None: any model).

        The function receives ``event`` (str) and ``model`` (the instance), plus
        ``storage``, ``bus`` or ``message`` if it declares them.

        Example::

            @app.on_storage_event(Host, "created")
            def host_created(event, model, storage):
                storage.save(attrs.evolve(model, status="investigating"))
        """

        def decorator(func: F) -> F:
            self.add_storage_handler(func, model, event)
            return func

        return decorator

    def add_storage_handler(self, func: Callable[..., Any], model: type | None = None,
                            event: str = "*") -> None:
        """Subscribe ``func`` to storage events; the imperative twin of :meth:`on_storage_event`."""
        check_storage_subscription(model, event)
        handler = Handler.from_function(func, getattr(func, "__name__", "handler"),
                                        injectables=self._injectables())
        entry = StorageHandler(func=func, model=model, event=event, handler=handler)
        queue = entry.queue_name(self.queue)
        if any(h.queue_name(self.queue) == queue for h in self.storage_handlers):
            raise ValueError(f"{func.__name__!r} is already subscribed to {entry.binding_key}")
        self.storage_handlers.append(entry)
        self._service_class = None

    def _injectables(self) -> tuple[str, ...]:
        """The parameter names never taken from the wire: busapp's own and the dependencies
        registered so far."""
        return (*INJECTABLE, *self.dependencies)

    def routing_key_for(self, method: str) -> str:
        """The routing key callers use for ``method`` (``<binding prefix>.<method>``)."""
        prefix = self.routing_key[:-2] if self.routing_key.endswith(".*") else self.name
        return f"{prefix}.{method}"

    def qkwargs(self, exchange: str | None = None) -> list[dict[str, Any]]:
        """The kombu queue arguments of the App's RPC queue on ``exchange``
        (default :attr:`exchange`)."""
        queue = self.queue_for(exchange or self.exchange)
        return [{"name": queue, "routing_key": self.routing_key}]
