"""What an :class:`~busapp.core.app.App` and a :class:`~busapp.core.router.Router` share:
start-up and shut-down hooks, dependencies, middleware, event handlers, timers, and the
checks of what may be registered. Neither imports the other. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import attrs

from busapp import names
from busapp.core.deps import Dependency
from busapp.core.dispatch import Handler
from busapp.core.events import DEFAULT_RETRIES, EventHandler
from busapp.core.middleware import check as check_middleware
from busapp.core.timers import Timer

F = TypeVar("F", bound=Callable[..., Any])


def check_method_name(name: Any) -> str:
    """``name`` if it may name a bus method (``[A-Za-z][A-Za-z0-9_]*``), else ValueError."""
    if not isinstance(name, str) or not names.NAME.match(name):
        raise ValueError(f"method name {name!r} must match [A-Za-z][A-Za-z0-9_]*")
    return name


#: Events a storage handler may ask for.
STORAGE_EVENTS = (*names.STORAGE_EVENTS, "*")


def check_storage_subscription(model: type | None, event: str) -> None:
    """Raise ValueError unless ``event`` is a storage event and ``model`` a class or None."""
    if event not in STORAGE_EVENTS:
        raise ValueError(f"event must be one of {', '.join(STORAGE_EVENTS)}; got {event!r}")
    if model is not None and not isinstance(model, type):
        raise ValueError(f"model must be a model class or None, got {model!r}")


class Scaffold:
    """Registries shared by App and Router: hooks, dependencies, middleware, event handlers
    and timers."""

    def __init__(self) -> None:
        #: Run in each worker before it consumes, in order; filled by :meth:`on_startup`.
        self.startup_hooks: list[Callable[..., Any]] = []
        #: Run in each worker after its last message, in order; filled by :meth:`on_shutdown`.
        self.shutdown_hooks: list[Callable[..., Any]] = []
        #: ``{parameter name: Dependency}``, filled by :meth:`dependency`.
        self.dependencies: dict[str, Dependency] = {}
        #: Wrapping every call and storage event, outermost first; filled by :meth:`middleware`.
        self.middlewares: list[Callable[..., Any]] = []
        #: Middleware of included routers, by the handler it wraps:
        #: ``{("call", method) or ("event", model, event, function name): [middleware, ...]}``.
        self.scoped_middleware: dict[tuple[str, ...], list[Callable[..., Any]]] = {}
        #: Subscriptions to events between services, filled by :meth:`on_event`.
        self.event_handlers: list[EventHandler] = []
        #: ``{timer name: Timer}``, filled by :meth:`timer`.
        self.timers: dict[str, Timer] = {}

    def _registered(self) -> None:
        """Told after each registration (an App forgets the service class it made)."""

    def on_startup(self, func: F) -> F:
        """Run ``func`` in each worker after the fork, before it consumes (sync or async).

        It may declare ``bus``, ``storage`` and worker-scoped dependencies. If it raises,
        the worker stops with the error logged.

        Example::

            @app.on_startup
            def warm_cache(db):
                db.execute("select 1")
        """
        self.add_startup_hook(func)
        return func

    def add_startup_hook(self, func: Callable[..., Any]) -> None:
        """The imperative twin of :meth:`on_startup`."""
        self.startup_hooks.append(_checked_hook(func))

    def on_shutdown(self, func: F) -> F:
        """Run ``func`` in each worker after its last in-flight message (sync or async).

        Example::

            @app.on_shutdown
            def flush(bus):
                bus.notify("audit.flushed")
        """
        self.add_shutdown_hook(func)
        return func

    def add_shutdown_hook(self, func: Callable[..., Any]) -> None:
        """The imperative twin of :meth:`on_shutdown`."""
        self.shutdown_hooks.append(_checked_hook(func))

    @overload
    def dependency(self, name: F, /) -> F: ...

    @overload
    def dependency(self, name: str | None = None, *, scope: str = "worker") -> Callable[[F], F]:
        ...

    def dependency(self, name: str | Callable[..., Any] | None = None, *,
                   scope: str = "worker") -> Any:
        """Inject the decorated provider's value into every handler with a parameter ``name``.

        The provider returns the value or yields it once (code after the ``yield`` is
        its teardown). ``scope="worker"``: made once per worker at start-up;
        ``scope="call"``: made per message, torn down after it.

        Example::

            @app.dependency("db")
            def db():
                conn = sqlite3.connect("inventory.sqlite3")
                yield conn
                conn.close()
        """
        if callable(name):  # used bare: @app.dependency
            self.add_dependency(name)
            return name

        def decorator(func: F) -> F:
            self.add_dependency(func, name, scope=scope)
            return func

        return decorator

    def add_dependency(self, provider: Callable[..., Any], name: str | None = None, *,
                       scope: str = "worker") -> None:
        """The imperative twin of :meth:`dependency` (``name`` defaults to the provider's)."""
        if not name:
            name = getattr(provider, "__name__", "")
        dep = Dependency.checked(name, provider, scope)
        if dep.name in self.dependencies:
            raise ValueError(f"dependency {dep.name!r} is already registered on {self!r}")
        self.dependencies[dep.name] = dep

    def middleware(self, func: F) -> F:
        """Wrap every call and storage event in ``func(call, call_next)`` (outermost first).

        Example::

            @app.middleware
            def timing(call, call_next):
                started = time.perf_counter()
                try:
                    return call_next(call)
                finally:
                    log.info("handled", method=call.method, s=time.perf_counter() - started)
        """
        self.add_middleware(func)
        return func

    def add_middleware(self, func: Callable[..., Any]) -> None:
        """The imperative twin of :meth:`middleware`."""
        check_middleware(func)
        self.middlewares.append(func)

    def on_event(self, pattern: str, *, broadcast: bool = False, retries: int = DEFAULT_RETRIES,
                 allow: Any = None) -> Callable[[F], F]:
        """Call the decorated function on each event matching ``pattern``.

        ``pattern`` is an event name (``orders.placed``) or a topic pattern (``orders.*``,
        ``*.placed``, ``orders.#``). The payload's keys bind to the function's parameters
        by name, converted like a method's (keys it does not declare are ignored); it may
        also declare ``event`` (the event's name), ``message``, ``bus``, ``storage`` and
        dependencies. Each event is handled once per App (``broadcast=True``: by every
        worker). A handler that raises is retried ``retries`` times, 1 s later, then 2 s,
        4 s... (at most 60 s), then the event goes to its queue's ``.dead`` queue.
        ``allow``: the key ids (of the App's keyring) that may emit to it.

        Example::

            @app.on_event("orders.placed")
            def bill(order_id: str, item: str, bus) -> None:
                bus.call("ledger.add", order_id, item)
        """

        def decorator(func: F) -> F:
            self.add_event_handler(func, pattern, broadcast=broadcast, retries=retries,
                                   allow=allow)
            return func

        return decorator

    def add_event_handler(self, func: Callable[..., Any], pattern: str, *,
                          broadcast: bool = False, retries: int = DEFAULT_RETRIES,
                          allow: Any = None) -> None:
        """The imperative twin of :meth:`on_event`."""
        entry = EventHandler.build(func, pattern, broadcast=broadcast, retries=retries,
                                   allow=allow, dependencies=self.dependencies)
        if any(h.key == entry.key for h in self.event_handlers):
            raise ValueError(f"{entry.name!r} is already subscribed to {pattern!r} on {self!r}")
        keyring = getattr(self, "keyring", None)
        if entry.allow is not None and keyring is not None:
            keyring.check_allow(entry.allow, f"event handler {entry.name!r}")
        self.event_handlers.append(entry)
        self._registered()

    def timer(self, every: Any = None, *, cron: str | None = None,
              eager: bool = False) -> Callable[[F], F]:
        """Run the decorated function every ``every`` seconds, or at the times of ``cron``.

        Once per App: whatever ``--workers`` says and however many ``busapp run`` of the
        App are up, one worker runs each tick; runs of one timer never overlap. ``cron``
        takes a cron expression read in UTC (``pip install 'busapp[cron]'``); ``eager``:
        also run it when a worker takes the timers over (at start-up). The function may
        declare ``bus``, ``storage``, ``message`` and dependencies.

        Example::

            @app.timer(every=30)
            def sweep(storage) -> None:
                ...
        """

        def decorator(func: F) -> F:
            self.add_timer(func, every, cron=cron, eager=eager)
            return func

        return decorator

    def add_timer(self, func: Callable[..., Any], every: Any = None, *, cron: str | None = None,
                  eager: bool = False) -> None:
        """The imperative twin of :meth:`timer`."""
        entry = Timer.build(func, every, cron, eager, dependencies=self.dependencies)
        if entry.name in self.timers:
            raise ValueError(f"timer {entry.name!r} is already registered on {self!r}")
        self.timers[entry.name] = entry
        self._registered()

    def include(self, router: Any) -> None:
        """Add ``router``'s methods, storage handlers, event handlers, timers, dependencies,
        hooks and middleware.

        Raises:
            ValueError: a method, timer or dependency name, or a storage or event
                subscription, is already here (nothing is added then).
        """
        router.register_on(self)


def _checked_hook(func: Any) -> Callable[..., Any]:
    if not callable(func):
        raise ValueError(f"a start-up or shut-down hook must be callable, got {func!r}")
    return func


def event_key(func: Callable[..., Any], model: type | None, event: str) -> tuple[str, ...]:
    return ("event", model.__name__ if model is not None else "*", event,
            getattr(func, "__name__", "handler"))


@attrs.define
class StorageHandler:
    """A function subscribed to storage change events."""

    func: Callable[..., Any]
    model: type | None
    event: str
    handler: Handler

    @property
    def model_name(self) -> str:
        return self.model.__name__ if self.model is not None else "*"

    @property
    def binding_key(self) -> str:
        return names.storage_binding(self.model_name, self.event)

    def queue_name(self, app_queue: str) -> str:
        model = self.model.__name__ if self.model is not None else None
        return names.storage_queue(app_queue, model, self.event, self.func.__name__)

    @property
    def key(self) -> tuple[str, ...]:
        """What picks the router middleware that wraps it (see :func:`event_key`)."""
        return event_key(self.func, self.model, self.event)
