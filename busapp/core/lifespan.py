"""One worker's run of an App's start-up and shut-down hooks, dependencies and middleware.

Every worker process (and every test client) makes its own :class:`Lifespan` from
its App, after the fork: nothing is opened at import time, so no two workers share
a connection. The worker calls :meth:`Lifespan.start` before it consumes and
:meth:`Lifespan.stop` after its last in-flight message; the serve path calls each
handler through :meth:`Lifespan.invoke` (middleware, then call-scoped dependencies,
then the handler).

Order at start-up: worker-scoped dependencies (each after what it needs), then the
start-up hooks in registration order. At stop: the shut-down hooks in registration
order (they can still use the dependencies), then the dependencies' teardowns in
the reverse order of making.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Any

import attrs
import structlog

from busapp.core import middleware
from busapp.core.convert import unstructure
from busapp.core.deps import Dependency, Resolver, call_with, check_consumer, override
from busapp.core.dispatch import INJECTABLE, Handler

log = structlog.get_logger("busapp.lifespan")

#: What start-up and shut-down hooks may declare besides worker-scoped dependencies.
HOOK_INJECTABLES = ("bus", "storage")


@attrs.define
class AppHandler(Handler):
    """A Handler run through its worker's middleware and dependencies."""

    lifespan: Any = attrs.field(default=None, repr=False)
    kind: str = "call"
    middlewares: tuple[Any, ...] = ()
    #: The dependencies among the injected parameters.
    deps: tuple[str, ...] = ()

    def call(self, params: list[Any] | dict[str, Any], context: Mapping[str, Any]) -> Any:
        return self.lifespan.invoke(self, params, context)


class Lifespan:
    """An App's hooks, dependencies and middleware, run for one worker.

    Args:
        app: the App (or anything with its registries: ``dependencies``, ``middlewares``,
            ``scoped_middleware``, ``startup_hooks``, ``shutdown_hooks``).
        overrides: ``{name: provider or value}`` replacing registered providers
            (a test's fakes); the scope stays the registered one.

    Raises:
        ValueError: an override names no dependency, or the dependency graph or a hook's
            parameters are wrong (see :func:`busapp.core.deps.plan`).
    """

    def __init__(self, app: Any, overrides: Mapping[str, Any] | None = None) -> None:
        dependencies: dict[str, Dependency] = dict(app.dependencies)
        for name, replacement in (overrides or {}).items():
            if name not in dependencies:
                known = ", ".join(sorted(dependencies)) or "none"
                raise ValueError(f"cannot override {name!r}: no such dependency (known: {known})")
            dependencies[name] = override(dependencies[name], replacement)
        self.resolver = Resolver(dependencies)
        for kind, hooks in (("start-up", app.startup_hooks), ("shut-down", app.shutdown_hooks)):
            for hook in hooks:
                check_consumer(f"{kind} hook {getattr(hook, '__name__', hook)!r}", hook,
                               dependencies, HOOK_INJECTABLES)
        self.startup_hooks = list(app.startup_hooks)
        self.shutdown_hooks = list(app.shutdown_hooks)
        self.middlewares = tuple(app.middlewares)
        self.scoped_middleware = dict(app.scoped_middleware)
        self._stack: contextlib.ExitStack | None = None
        self._values: dict[str, Any] = {}

    # -- handlers ----------------------------------------------------------------

    def wrap(self, handler: Handler, kind: str, key: tuple[str, ...]) -> Handler:
        """``handler`` as this worker runs it: with its middleware and dependencies.

        ``key`` picks the middleware of the router the handler came from.
        """
        chain = self.middlewares + tuple(self.scoped_middleware.get(key, ()))
        names = self.resolver.dependencies
        if not chain and not any(p.name in names for p in _all_params(handler)):
            return handler  # nothing to add: the plain path
        # What the handler injects stays injected (an event handler's ``event``). Its wire
        # params are a subset of those checked at registration: no need to check them again.
        wrapped = AppHandler.from_function(handler.func, handler.name,
                                           injectables=(*INJECTABLE, *handler.inject, *names),
                                           checked=True)
        wrapped.lifespan, wrapped.kind, wrapped.middlewares = self, kind, chain
        wrapped.time_limit, wrapped.allow = handler.time_limit, handler.allow  # set at registration
        wrapped.deps = tuple(n for n in wrapped.inject if n in names)
        return wrapped

    def invoke(self, handler: AppHandler, params: Any, context: Mapping[str, Any]) -> Any:
        """Run ``handler`` inside its middleware, with its dependencies made and torn down."""
        def innermost(call: middleware.Call) -> Any:
            if not handler.deps:
                return Handler.call(handler, call.params, context)
            with contextlib.ExitStack() as stack:
                values = self.resolver.resolve(handler.deps, context, stack)
                return Handler.call(handler, call.params, values)

        call = middleware.Call(handler.kind, handler.name, params, context.get("message"))
        if not handler.middlewares:
            return innermost(call)
        return unstructure(middleware.run(handler.middlewares, call, innermost))

    # -- start and stop --------------------------------------------------------------

    def start(self, context: Mapping[str, Any]) -> None:
        """Make the worker-scoped dependencies, then run the start-up hooks.

        On failure, what was made is torn down and the error raised.
        """
        stack = contextlib.ExitStack()
        try:
            self.resolver.start(context, stack)
            values = {**context, **self.resolver.worker_values}
            for hook in self.startup_hooks:
                call_with(hook, values)
        except BaseException:
            stack.close()
            raise
        self._stack, self._values = stack, values

    def stop(self) -> None:
        """Run the shut-down hooks, then tear the worker-scoped dependencies down.

        Every hook and teardown runs even if one fails; the first failure is raised at
        the end (the others are logged).
        """
        stack, self._stack = self._stack, None
        if stack is None:
            return
        errors: list[BaseException] = []
        for hook in self.shutdown_hooks:
            try:
                call_with(hook, self._values)
            except Exception as exc:  # noqa: BLE001 - the others must still run
                exc.add_note(f"in shut-down hook {getattr(hook, '__name__', hook)!r}")
                errors.append(exc)
        try:
            stack.close()
        except Exception as exc:  # noqa: BLE001 - reported like a hook's
            exc.add_note("in the teardown of a worker-scoped dependency")
            errors.append(exc)
        self.resolver.worker_values.clear()
        for later in errors[1:]:
            log.error("shut-down step also failed", exc_info=later)
        if errors:
            raise errors[0]


def _all_params(handler: Handler) -> list[Any]:
    try:
        return list(inspect.signature(handler.func).parameters.values())
    except (TypeError, ValueError):
        return []
