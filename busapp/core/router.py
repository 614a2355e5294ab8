"""Growing an App: :class:`Scaffold` (hooks, dependencies, middleware) and :class:`Router`.

:class:`Scaffold` holds what an :class:`~busapp.core.app.App` and a :class:`Router` both
register besides bus methods: start-up and shut-down hooks, dependencies and
middleware. A :class:`Router` also records methods and storage handlers, so an App
can be split over modules::

    # stock.py
    router = Router()

    @router.method()
    def count(item: str, db) -> int: ...

    # app.py
    app = App("inventory")
    app.include(stock.router)        # a name already on the App raises ValueError

A router's middleware wraps only the router's own methods and storage handlers (inside
the App's middleware); its dependencies and hooks become the App's.
Registration does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from busapp.core.deps import Dependency
from busapp.core.middleware import check as check_middleware

F = TypeVar("F", bound=Callable[..., Any])


#: Events a storage handler may ask for.
STORAGE_EVENTS = ("created", "updated", "deleted", "*")


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

    def include(self, router: Router) -> None:
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


class Router(Scaffold):
    """Methods, storage handlers, dependencies, hooks and middleware for :meth:`App.include`.

    Registers like an App (``method``, ``on_storage_event``, ``dependency``,
    ``middleware``, ``on_startup``, ``on_shutdown``); nothing is served until an App
    includes it. The checks that need the App (name clashes) run at include.
    """

    def __init__(self) -> None:
        super().__init__()
        #: ``{method name: (function, options for App.add_method)}``, filled by :meth:`method`.
        self.methods: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}
        #: ``[(function, model, event)]``, filled by :meth:`on_storage_event`.
        self.storage_handlers: list[tuple[Callable[..., Any], type | None, str]] = []

    def __repr__(self) -> str:
        return f"<Router methods={sorted(self.methods)}>"

    @overload
    def method(self, name: F, /) -> F: ...

    @overload
    def method(self, name: str | None = None, **options: Any) -> Callable[[F], F]: ...

    def method(self, name: str | Callable[..., Any] | None = None, **options: Any) -> Any:
        """Record the decorated function as bus method ``name``; see :meth:`App.method`."""
        if callable(name):  # used bare: @router.method
            self.add_method(name)
            return name

        def decorator(func: F) -> F:
            self.add_method(func, name, **options)
            return func

        return decorator

    def add_method(self, func: Callable[..., Any], name: str | None = None, **options: Any) -> None:
        """The imperative twin of :meth:`method`."""
        from busapp.core.app import _NAME

        name = name or getattr(func, "__name__", "")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"method name {name!r} must match [A-Za-z][A-Za-z0-9_]*")
        if name in self.methods:
            raise ValueError(f"method {name!r} is already registered on this router")
        self.methods[name] = (func, options)

    def on_storage_event(self, model: type | None = None, event: str = "*") -> Callable[[F], F]:
        """Record the decorated function as a storage handler; see :meth:`App.on_storage_event`."""

        def decorator(func: F) -> F:
            self.add_storage_handler(func, model, event)
            return func

        return decorator

    def add_storage_handler(self, func: Callable[..., Any], model: type | None = None,
                            event: str = "*") -> None:
        """The imperative twin of :meth:`on_storage_event`."""
        check_storage_subscription(model, event)
        key = _event_key(func, model, event)
        if any(_event_key(*entry) == key for entry in self.storage_handlers):
            raise ValueError(f"{func.__name__!r} is already subscribed to {key[1]}.{key[2]} "
                             "on this router")
        self.storage_handlers.append((func, model, event))

    # -- include -------------------------------------------------------------------

    def register_on(self, target: Any) -> None:
        """Add everything recorded here to ``target`` (an App); see :meth:`Scaffold.include`."""
        self._check_clashes(target)
        for name, (func, options) in self.methods.items():
            target.add_method(func, name, **options)
            self._scope_middleware(target, ("call", name))
        for func, model, event in self.storage_handlers:
            target.add_storage_handler(func, model, event)
            self._scope_middleware(target, _event_key(func, model, event))
        for dep in self.dependencies.values():
            target.add_dependency(dep.provider, dep.name, scope=dep.scope)
        target.startup_hooks.extend(self.startup_hooks)
        target.shutdown_hooks.extend(self.shutdown_hooks)

    def _scope_middleware(self, target: Any, key: tuple[str, ...]) -> None:
        chain = [*self.middlewares, *self.scoped_middleware.get(key, ())]
        if chain:
            target.scoped_middleware[key] = chain

    def _check_clashes(self, target: Any) -> None:
        clashes = [f"method {n!r}" for n in self.methods if n in target.methods]
        clashes += [f"dependency {n!r}" for n in self.dependencies if n in target.dependencies]
        taken = {_event_key(*h) if isinstance(h, tuple) else _event_key(h.func, h.model, h.event)
                 for h in target.storage_handlers}
        clashes += [f"storage handler {k[3]!r} for {k[1]}.{k[2]}"
                    for k in (_event_key(*entry) for entry in self.storage_handlers) if k in taken]
        if clashes:
            raise ValueError(f"cannot include {self!r} in {target!r}: {', '.join(clashes)} "
                             "already registered there; rename one of them")


def _event_key(func: Callable[..., Any], model: type | None, event: str) -> tuple[str, ...]:
    return ("event", model.__name__ if model is not None else "*", event,
            getattr(func, "__name__", "handler"))
