"""Middleware: wrap-style functions around every call, event and timer tick. No I/O.

A middleware is ``middleware(call, call_next)``: it gets a :class:`Call`, may look at
or replace it (``attrs.evolve(call, params=...)``), and returns ``call_next(call)``'s
result (or its own). Middleware registered first is outermost. A middleware that
raises answers the call with an error exactly as a handler would: a
:class:`~busapp.errors.RemoteProcedureCallError` keeps its code, anything else is
-32603; for a storage event the event counts as failed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import attrs

#: ``middleware(call, call_next) -> result``.
Middleware = Callable[["Call", Callable[["Call"], Any]], Any]


@attrs.frozen
class Call:
    """What a middleware sees of one message.

    Attributes:
        kind: ``"call"`` (a request; a notification when ``message.id`` is None),
            ``"event"`` (a storage event), ``"bus_event"`` (an event between services,
            ``bus.emit``) or ``"timer"`` (a timer's tick).
        method: the bus method's name, or the handler's or timer's function name.
        params: the wire params (list or dict); for a storage event ``{"event": ...,
            "model": ...}``; for a bus event the payload keys the handler declares; for a
            tick ``{}``.
        message: the :class:`~busapp.core.pipeline.IncomingMessage` (routing key, headers, id...).
    """

    kind: str
    method: str
    params: Any
    message: Any = None


def check(func: Any) -> None:
    """Raise ValueError unless ``func`` can be a middleware (a plain callable of two arguments)."""
    if not callable(func):
        raise ValueError(f"middleware must be callable, got {func!r}")
    if inspect.iscoroutinefunction(inspect.unwrap(func)):
        raise ValueError(f"middleware {getattr(func, '__name__', func)!r} is async; middleware "
                         "runs around sync and async handlers alike, so it must be a plain def")
    try:
        inspect.signature(func).bind(None, None)
    except TypeError:
        raise ValueError(f"middleware {getattr(func, '__name__', func)!r} must take two arguments: "
                         "(call, call_next)") from None
    except ValueError:  # no signature to read (a builtin): let the first call tell
        pass


def run(middlewares: Sequence[Middleware], call: Call, innermost: Callable[[Call], Any]) -> Any:
    """Run ``innermost(call)`` inside ``middlewares`` (the first is outermost)."""
    def step(index: int) -> Callable[[Call], Any]:
        if index == len(middlewares):
            return innermost
        middleware, call_next = middlewares[index], step(index + 1)
        return lambda c: middleware(c, call_next)

    return step(0)(call)
