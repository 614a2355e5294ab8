"""Dependencies: named providers injected into handlers by parameter name. No I/O.

A provider returns its value, or yields it once: the code after the ``yield`` is its
teardown, and it always runs, whether the handler returned or raised (as a pytest
fixture's; the handler's exception is not thrown into the provider). Sync and async
providers (``async def``, async generators) are both accepted.

- ``scope="worker"``: made once per worker at start-up, torn down when it stops,
  in the reverse order of making;
- ``scope="call"``: made for each message whose handler needs it (directly or
  through another provider), at most once per message, torn down after it.

A provider may declare the injectables ``bus`` and ``storage``, other dependencies,
and (``scope="call"`` only) ``message``. :func:`plan` checks the whole graph before
anything is made: an unknown name, a cycle, or a worker-scoped provider that needs
a per-message value is a :class:`ValueError` then, never a failure at the first call.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import attrs

from busapp.core.dispatch import INJECTABLE, run_coroutine

#: The scopes a dependency may have.
SCOPES = ("worker", "call")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_EMPTY = inspect.Parameter.empty


@attrs.frozen
class Dependency:
    """A named provider and its scope."""

    name: str
    provider: Callable[..., Any]
    scope: str = "worker"
    #: The provider's parameter names (read once from its signature).
    needs: tuple[str, ...] = ()
    #: Those of :attr:`needs` without a default (they may not be unknown names).
    required: tuple[str, ...] = ()

    @classmethod
    def checked(cls, name: str, provider: Callable[..., Any], scope: str = "worker") -> Dependency:
        """A Dependency, with what can be checked alone checked now.

        Raises:
            ValueError: a bad name or scope, a name busapp injects itself, or a provider
                that is not callable or needs what its scope cannot give.
        """
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise ValueError(f"dependency name {name!r} must be a Python identifier")
        if name in INJECTABLE:
            raise ValueError(f"{name!r} is injected by busapp itself; give the dependency "
                             "another name")
        if scope not in SCOPES:
            raise ValueError(f"dependency {name!r}: scope must be 'worker' or 'call', "
                             f"got {scope!r}")
        if not callable(provider):
            raise ValueError(f"dependency {name!r}: the provider must be callable, "
                             f"got {provider!r}")
        params = _params(provider)
        dep = cls(name, provider, scope, tuple(p.name for p in params),
                  tuple(p.name for p in params if p.default is _EMPTY))
        if scope == "worker" and "message" in dep.needs:
            raise ValueError(f"dependency {name!r} takes 'message', which only exists per call; "
                             "give it scope='call'")
        if name in dep.needs:
            raise ValueError(f"dependency {name!r} takes itself as a parameter")
        return dep


def _params(func: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin without a signature takes nothing we can give
        return []
    return [p for p in sig.parameters.values()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def override(original: Dependency, replacement: Any) -> Dependency:
    """``original`` with its provider replaced.

    A function (``def``, ``lambda``, a bound method) is a provider; anything else (an
    object, a class, a mock, a ``sqlite3.Connection``, which is callable too) is the
    value itself. To have a class called, pass ``lambda: MyFake()``.
    """
    provider = replacement if inspect.isfunction(replacement) or inspect.ismethod(replacement) \
        else (lambda: replacement)
    return Dependency.checked(original.name, provider, original.scope)


def plan(dependencies: Mapping[str, Dependency]) -> list[str]:
    """The order to make the dependencies in (each after what it needs).

    Raises:
        ValueError: a provider takes an unknown name, a worker-scoped provider needs a
            call-scoped one, or providers need each other in a cycle.
    """
    for dep in dependencies.values():
        for name in dep.required:
            if name not in dependencies and name not in INJECTABLE:
                raise ValueError(_unknown(f"dependency {dep.name!r}", name, dependencies))
        for name in dep.needs:
            other = dependencies.get(name)
            if other is not None and dep.scope == "worker" and other.scope == "call":
                raise ValueError(f"worker-scoped dependency {dep.name!r} needs call-scoped "
                                 f"{name!r}; make {dep.name!r} call-scoped or {name!r} "
                                 "worker-scoped")
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise ValueError(f"dependency cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for need in dependencies[name].needs:
            if need in dependencies:
                visit(need, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in dependencies:
        visit(name, [])
    return order


def check_consumer(what: str, func: Callable[..., Any], dependencies: Mapping[str, Dependency],
                   allowed: Collection[str]) -> None:
    """Check a start-up or shut-down hook's parameters: ``allowed`` injectables or worker
    dependencies.

    Raises:
        ValueError: naming the parameter the hook cannot be given.
    """
    for p in _params(func):
        dep = dependencies.get(p.name)
        if dep is not None and dep.scope == "worker" or p.name in allowed:
            continue
        if dep is not None:
            raise ValueError(f"{what} takes call-scoped dependency {p.name!r}, which only exists "
                             "during a call; give it scope='worker'")
        if p.default is _EMPTY:
            raise ValueError(_unknown(what, p.name, dependencies, allowed))


def _unknown(what: str, name: str, dependencies: Iterable[str],
             injectables: Collection[str] = INJECTABLE) -> str:
    known = ", ".join(sorted(dependencies)) or "none"
    return (f"{what} takes parameter {name!r}, which is neither injected by busapp "
            f"({', '.join(injectables)}) nor a registered dependency (known: {known}); "
            f"register it with @app.dependency({name!r}) or give the parameter a default")


def call_with(func: Callable[..., Any], values: Mapping[str, Any]) -> Any:
    """Call ``func`` with the values its parameters name (awaiting a coroutine)."""
    kwargs = {p.name: values[p.name] for p in _params(func) if p.name in values}
    result = func(**kwargs)
    if inspect.isawaitable(result):
        result = run_coroutine(result)
    return result


def enter(dep: Dependency, values: Mapping[str, Any], stack: contextlib.ExitStack) -> Any:
    """Make ``dep``'s value, pushing its teardown (if it yields) on ``stack``."""
    target = inspect.unwrap(dep.provider)
    kwargs = {name: values[name] for name in dep.needs if name in values}
    if inspect.isgeneratorfunction(target):
        gen = dep.provider(**kwargs)
        value = _first(dep, lambda: next(gen), StopIteration)
        stack.callback(_last, dep, lambda: next(gen), StopIteration)
        return value
    if inspect.isasyncgenfunction(target):
        agen = dep.provider(**kwargs)
        value = _first(dep, lambda: run_coroutine(agen.__anext__()), StopAsyncIteration)
        stack.callback(_last, dep, lambda: run_coroutine(agen.__anext__()), StopAsyncIteration)
        return value
    value = dep.provider(**kwargs)
    if inspect.isawaitable(value):
        value = run_coroutine(value)
    return value


def _first(dep: Dependency, step: Callable[[], Any], stop: type[BaseException]) -> Any:
    try:
        return step()
    except stop:
        raise RuntimeError(f"dependency {dep.name!r}: the provider returned without yielding "
                           "a value") from None


def _last(dep: Dependency, step: Callable[[], Any], stop: type[BaseException]) -> None:
    try:
        step()
    except stop:
        return
    raise RuntimeError(f"dependency {dep.name!r}: the provider yielded more than once; "
                       "yield exactly once")


class Resolver:
    """Makes dependency values: the worker-scoped ones once, the call-scoped ones per message."""

    def __init__(self, dependencies: Mapping[str, Dependency]) -> None:
        self.dependencies = dict(dependencies)
        self.order = plan(self.dependencies)
        #: Values of the worker-scoped dependencies, once :meth:`start` has run.
        self.worker_values: dict[str, Any] = {}

    def start(self, context: Mapping[str, Any], stack: contextlib.ExitStack) -> None:
        """Make every worker-scoped dependency, in order; teardowns go on ``stack``."""
        values = dict(context)
        for name in self.order:
            dep = self.dependencies[name]
            if dep.scope == "worker":
                values[name] = self.worker_values[name] = enter(dep, values, stack)

    def resolve(self, names: Iterable[str], context: Mapping[str, Any],
                stack: contextlib.ExitStack) -> dict[str, Any]:
        """``context`` plus the values of ``names`` (and what they need), made as needed."""
        values = {**context, **self.worker_values}
        for name in names:
            if name in self.dependencies:
                self._make(name, values, stack)
        return values

    def _make(self, name: str, values: dict[str, Any], stack: contextlib.ExitStack) -> Any:
        if name in values:
            return values[name]
        dep = self.dependencies[name]
        if dep.scope == "worker":
            raise RuntimeError(f"dependency {name!r} is used before the worker started "
                               "(its start-up hooks and worker-scoped dependencies run first)")
        for need in dep.needs:
            if need in self.dependencies:
                self._make(need, values, stack)
        values[name] = enter(dep, values, stack)
        return values[name]
