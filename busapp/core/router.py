"""Growing an App: :class:`Scaffold` (hooks, dependencies, middleware) and :class:`Router`.

:class:`Scaffold` holds what an :class:`~busapp.core.app.App` and a :class:`Router` both
register besides bus methods: start-up and shut-down hooks, dependencies, middleware,
event handlers and timers. A :class:`Router` also records methods and storage handlers,
so an App can be split over modules::

    # stock.py
    router = Router()

    @router.method()
    def count(item: str, db) -> int: ...

    # app.py
    app = App("inventory")
    app.include(stock.router)        # a name already on the App raises ValueError

A router's middleware wraps only the router's own methods, storage and event handlers and
timers (inside the App's middleware); its dependencies and hooks become the App's.
Registration does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from busapp.core.scaffold import Scaffold, check_method_name, check_storage_subscription, event_key

F = TypeVar("F", bound=Callable[..., Any])


class Router(Scaffold):
    """Methods, storage and event handlers, timers, dependencies, hooks and middleware for
    :meth:`App.include`.

    Registers like an App (``method``, ``on_storage_event``, ``on_event``, ``timer``,
    ``dependency``, ``middleware``, ``on_startup``, ``on_shutdown``); nothing is served
    until an App includes it. The checks that need the App (name clashes) run at include.
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
        name = check_method_name(name or getattr(func, "__name__", ""))
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
        key = event_key(func, model, event)
        if any(event_key(*entry) == key for entry in self.storage_handlers):
            raise ValueError(f"{func.__name__!r} is already subscribed to {key[1]}.{key[2]} "
                             "on this router")
        self.storage_handlers.append((func, model, event))

    # -- include -------------------------------------------------------------------

    def register_on(self, target: Any) -> None:
        """Add everything recorded here to ``target`` (an App); see :meth:`Scaffold.include`."""
        self._check_clashes(target)
        for dep in self.dependencies.values():  # first: the handlers below may take them
            target.add_dependency(dep.provider, dep.name, scope=dep.scope)
        for name, (func, options) in self.methods.items():
            target.add_method(func, name, **options)
            self._scope_middleware(target, ("call", name))
        for func, model, event in self.storage_handlers:
            target.add_storage_handler(func, model, event)
            self._scope_middleware(target, event_key(func, model, event))
        for entry in self.event_handlers:
            target.add_event_handler(entry.func, entry.pattern, **entry.options)
            self._scope_middleware(target, entry.key)
        for timer in self.timers.values():
            target.add_timer(timer.func, **timer.options)
            self._scope_middleware(target, timer.key)
        target.startup_hooks.extend(self.startup_hooks)
        target.shutdown_hooks.extend(self.shutdown_hooks)

    def _scope_middleware(self, target: Any, key: tuple[str, ...]) -> None:
        chain = [*self.middlewares, *self.scoped_middleware.get(key, ())]
        if chain:
            target.scoped_middleware[key] = chain

    def _check_clashes(self, target: Any) -> None:
        clashes = [f"method {n!r}" for n in self.methods if n in target.methods]
        clashes += [f"dependency {n!r}" for n in self.dependencies if n in target.dependencies]
        taken = {event_key(*h) if isinstance(h, tuple) else event_key(h.func, h.model, h.event)
                 for h in target.storage_handlers}
        clashes += [f"storage handler {k[3]!r} for {k[1]}.{k[2]}"
                    for k in (event_key(*entry) for entry in self.storage_handlers) if k in taken]
        subscribed = {h.key for h in target.event_handlers}
        clashes += [f"event handler {h.name!r} for {h.pattern!r}" for h in self.event_handlers
                    if h.key in subscribed]
        clashes += [f"timer {n!r}" for n in self.timers if n in target.timers]
        if clashes:
            raise ValueError(f"cannot include {self!r} in {target!r}: {', '.join(clashes)} "
                             "already registered there; rename one of them")
