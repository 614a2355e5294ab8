"""What an :class:`~busapp.core.app.App` and a :class:`~busapp.core.router.Router` share:
start-up and shut-down hooks, dependencies, middleware, and the checks of what may be
registered. Neither imports the other. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import attrs

from busapp import names
from busapp.core.deps import Dependency
from busapp.core.dispatch import Handler
from busapp.core.middleware import check as check_middleware

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
    """Registries shared by App and Router: hooks, dependencies, middleware."""

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

    def include(self, router: Any) -> None:
        """Add ``router``'s methods, storage handlers, dependencies, hooks and middleware.

        Raises:
            ValueError: a method or dependency name, or a storage subscription, is already
                here (nothing is added then).
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
