"""Request -> handler call -> response, with parameter binding and conversion. No I/O.

:func:`process` is the one path every transport uses (kombu services and the
in-memory test client alike): raw body in, response dict (or None for a
notification) out. It never raises.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import attrs

from busapp.core import wire
from busapp.core.convert import describe_error, structure, type_name, unstructure
from busapp.core.hints import check_annotations, resolve_hints
from busapp.errors import InternalError, InvalidParams, MethodNotFound

#: Parameter names filled by busapp, never from the wire.
INJECTABLE = ("message", "bus", "storage")

_EMPTY = inspect.Parameter.empty
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@attrs.define
class Handler:
    """A callable exposed on the bus, with what it needs bound from a request.

    Args:
        func: the function (or bound method) to call.
        name: the method name (last routing-key segment).
        inject: parameter names to fill from the context instead of the wire.
        message_first: pass the message as the first positional argument
            (Commissaire's ``on_<name>(self, message, ...)`` convention).
    """

    func: Callable[..., Any]
    name: str
    inject: tuple[str, ...] = ()
    message_first: bool = False
    params: list[inspect.Parameter] = attrs.field(factory=list)
    hints: dict[str, Any] = attrs.field(factory=dict)
    var_positional: bool = False
    var_keyword: bool = False
    is_async: bool = False
    #: Seconds the handler may run before its caller gets TimeLimitExceeded (None: the
    #: worker's default, :attr:`busapp.runtime.worker.WorkerOptions.time_limit`).
    time_limit: float | None = None
    #: Key ids that may call it when its service has a keyring (None: any valid key);
    #: see :mod:`busapp.security`.
    allow: frozenset[str] | None = None
    # Derived from params once, so binding a call does no signature work.
    _positional: tuple[str, ...] = attrs.field(init=False, default=(), repr=False)
    _known: frozenset[str] = attrs.field(init=False, default=frozenset(), repr=False)
    _specs: tuple[tuple[str, bool, bool, bool], ...] = attrs.field(init=False, default=(),
                                                                   repr=False)

    def __attrs_post_init__(self) -> None:
        self._positional = tuple(p.name for p in self.params if p.kind in _POSITIONAL)
        self._known = frozenset(p.name for p in self.params)
        self._specs = tuple(
            (p.name, p.default is not _EMPTY, p.kind is inspect.Parameter.POSITIONAL_ONLY,
             p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for p in self.params
        )

    @classmethod
    def from_function(cls, func: Callable[..., Any], name: str, *, message_first: bool = False,
                      injectables: Collection[str] = INJECTABLE, checked: bool = False) -> Self:
        """Inspect ``func`` once and build its Handler (``injectables``: names never taken
        from the wire; ``checked``: its annotations were checked when it was registered)."""
        sig = inspect.signature(func)
        target = inspect.unwrap(func)
        hints, unresolved = resolve_hints(target)
        returns = hints.pop("return", Any)
        params = list(sig.parameters.values())
        if message_first:
            if not params or params[0].kind not in (
                inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
            ):
                raise TypeError(f"{name}: the first parameter must take the message")
            params = params[1:]
            inject: tuple[str, ...] = ()
        else:
            inject = tuple(p.name for p in params if p.name in injectables)
        wire_params = [
            p for p in params
            if p.name not in inject
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        kinds = {p.kind for p in params}
        if not checked:
            check_annotations(name, wire_params, inject, hints, unresolved, returns)
        return cls(
            func=func,
            name=name,
            inject=inject,
            message_first=message_first,
            params=wire_params,
            hints=hints,
            var_positional=inspect.Parameter.VAR_POSITIONAL in kinds,
            var_keyword=inspect.Parameter.VAR_KEYWORD in kinds,
            is_async=inspect.iscoroutinefunction(target),
        )

    def describe_params(self) -> list[str]:
        """Human-readable parameter list, e.g. ``['x: int', 'y: int = 0']``."""
        out = []
        for p in self.params:
            text = p.name
            if p.name in self.hints:
                text += f": {type_name(self.hints[p.name])}"
            if p.default is not _EMPTY:
                text += f" = {p.default!r}"
            out.append(text)
        return out

    def bind(self, params: list[Any] | dict[str, Any],
             context: Mapping[str, Any]) -> tuple[list, dict]:
        """Map wire params onto the function's arguments, converting annotated ones.

        Raises:
            InvalidParams: naming the missing, unexpected or unconvertible parameter.
        """
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        if self.message_first:
            args.append(context.get("message"))
        is_list = isinstance(params, list)
        if isinstance(params, list):
            positional = self._positional
            if len(params) > len(positional) and not self.var_positional:
                raise InvalidParams(
                    f"{self.name}() takes {len(positional)} positional params but "
                    f"{len(params)} were given",
                    data={"expected": list(positional)},
                )
            given = dict(zip(positional, params, strict=False))  # fewer params: checked below
            extra_positional = params[len(positional):]
        else:
            given = dict(params)
            extra_positional = []
            for key in given:
                if key in self.inject or self.message_first and key == "message":
                    raise InvalidParams(
                        f"parameter {key!r} of {self.name}() is filled by busapp and cannot "
                        "be sent",
                        data={"param": key},
                    )
        if not self.var_keyword:
            unexpected = [k for k in given if k not in self._known]
            if unexpected:
                raise InvalidParams(
                    f"{self.name}() got unexpected parameter {unexpected[0]!r}; "
                    f"it takes: {', '.join(self.describe_params()) or 'no params'}",
                    data={"param": unexpected[0]},
                )
        for name, has_default, positional_only, positional_or_keyword in self._specs:
            if name in given:
                value = self._convert(name, given.pop(name))
            elif has_default:
                continue
            else:
                raise InvalidParams(
                    f"{self.name}() missing required parameter {name!r}", data={"param": name}
                )
            if positional_only or (is_list and positional_or_keyword):
                args.append(value)
            else:
                kwargs[name] = value
        args.extend(extra_positional)
        kwargs.update(given)  # leftovers only reach here through **kwargs
        for name in self.inject:
            kwargs[name] = context.get(name)
        if self.is_async and "bus" in self.inject and "async_bus" in context:
            kwargs["bus"] = context["async_bus"]  # awaitable: an async handler must not block
        return args, kwargs

    def _convert(self, name: str, value: Any) -> Any:
        hint = self.hints.get(name, Any)
        if hint is Any or type(value) is hint:
            return value
        if isinstance(hint, type) and isinstance(value, hint) and not isinstance(value, bool):
            return value  # already built, e.g. a model instance passed in-process
        try:
            return structure(value, hint)
        except Exception as exc:
            raise InvalidParams(
                f"parameter {name!r} of {self.name}(): {describe_error(exc)}",
                data={"param": name, "expected": type_name(hint)},
            ) from None

    def call(self, params: list[Any] | dict[str, Any], context: Mapping[str, Any]) -> Any:
        """Bind, call (awaiting a coroutine), and unstructure the result."""
        args, kwargs = self.bind(params, context)
        result = self.func(*args, **kwargs)
        if inspect.isawaitable(result):
            result = run_coroutine(result)
        return unstructure(result)


_loops = threading.local()


def run_coroutine(coro: Any) -> Any:
    """Run ``coro`` to completion on this thread's own event loop.

    Each handler thread keeps one loop, so an ``async def`` handler that makes a
    blocking ``bus.call`` (even to another async handler of the same worker) only
    blocks its own thread; and the caller's contextvars (log context) carry over.
    """
    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
    if loop.is_running() or _loop_running():
        # Nested: a call from a loop running in this thread (an async handler's, or an
        # asyncio program's on the in-memory test bus) reached an async handler in this
        # same thread. Give it a thread of its own.
        context = contextvars.copy_context()
        with ThreadPoolExecutor(1, thread_name_prefix="busapp-nested-async") as pool:
            return pool.submit(context.run, run_coroutine, coro).result()
    return loop.run_until_complete(coro)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def process(
    handlers: Mapping[str, Handler],
    body: bytes | str | Any,
    *,
    content_type: str | None,
    routing_key: str | None,
    context: Mapping[str, Any],
    on_error: Callable[[Request | None, BaseException], None] | None = None,
    max_body: int | None = None,
) -> dict[str, Any] | None:
    """Serve one raw request. Returns the response, or None when none is owed.

    Never raises: every failure becomes an error response. ``on_error`` is told
    of exceptions raised by handlers (to log them with their traceback).
    """
    return process_encoded(handlers, body, content_type=content_type, routing_key=routing_key,
                           context=context, on_error=on_error, max_body=max_body)[0]


def process_encoded(
    handlers: Mapping[str, Handler],
    body: bytes | str | Any,
    *,
    content_type: str | None,
    routing_key: str | None,
    context: Mapping[str, Any],
    on_error: Callable[[Request | None, BaseException], None] | None = None,
    max_body: int | None = None,
    on_unanswered: Callable[[BaseException], None] | None = None,
) -> tuple[dict[str, Any] | None, bytes | None]:
    """:func:`process`, and the response's JSON encoding (encoded once: the check that a
    result is JSON serialisable is the encoding that goes on the wire).

    ``on_unanswered`` is told why a notification failed (no such method, bad params, the
    handler raised): it gets no response, so this is the only trace of the failure.
    """
    request: wire.Request | None = None
    request_id = None
    payload: bytes | None = None
    try:
        data = wire.loads_body(body, content_type, max_body)
        request_id = wire.request_id_of(data)
        request = wire.parse_request(data, routing_key)
        handler = handlers.get(request.method)
        if handler is None:
            known = ", ".join(sorted(handlers)) or "none"
            raise MethodNotFound(
                f"no method {request.method!r} on this service; known: {known}",
                data={"exception": "AttributeError", "method": request.method},
            )
        try:
            result = handler.call(request.params, context)
        except InvalidParams:
            raise
        except Exception as exc:
            if on_error is not None:
                on_error(request, exc)
            raise
        response = wire.result_response(request.id, result)
        if request.is_notification:
            return None, None
        try:
            payload = wire.dumps(response).encode()
        except (TypeError, ValueError) as exc:
            raise InternalError(
                f"result of {request.method}() is not JSON serialisable: {exc}",
                data={"exception": type(exc).__name__},
            ) from None
    except Exception as exc:  # noqa: BLE001 - the whole point is that nothing escapes
        if request is not None and request.is_notification:
            if on_unanswered is not None:
                on_unanswered(exc)
            return None, None
        response = wire.error_response(request_id if request is None else request.id, exc)
        payload = None
    return response, payload


Request = wire.Request
