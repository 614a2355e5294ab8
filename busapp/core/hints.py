"""A handler's annotations: resolved once, and checked when the function is registered.

A bus method whose parameter busapp could not convert, or whose name busapp fills
itself, fails at its first call otherwise, with an error that blames the caller. No I/O.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any

from busapp.core.convert import is_union, problem, type_name
from busapp.core.pipeline import IncomingMessage

#: What busapp puts in each injected parameter, and the name to suggest instead when a
#: function wants a wire parameter by that name.
_INJECTED = {"message": ("the incoming message", "busapp.Message", "text"),
             "bus": ("the bus", "busapp.Bus (busapp.AsyncBus in an async def)", "bus_name"),
             "storage": ("the storage client", "busapp.Storage", "store")}


def resolve_hints(func: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``func``'s resolved annotations, and ``{name: why}`` for those that do not resolve
    (a name imported only under TYPE_CHECKING, a typo)."""
    try:
        return typing.get_type_hints(func), {}
    except Exception:  # noqa: BLE001 - resolve them one by one to name the culprit
        pass
    hints: dict[str, Any] = {}
    unresolved: dict[str, str] = {}
    namespace = getattr(func, "__globals__", {})
    for name, annotation in getattr(func, "__annotations__", {}).items():
        try:
            hints[name] = typing.get_type_hints(_Annotated(name, annotation), namespace)[name]
        except Exception as exc:  # noqa: BLE001 - reported by check_annotations if it matters
            unresolved[name] = f"{annotation!r} ({type(exc).__name__}: {exc})"
    return hints, unresolved


class _Annotated:
    """One annotation alone, for :func:`typing.get_type_hints`."""

    def __init__(self, name: str, annotation: Any) -> None:
        self.__annotations__ = {name: annotation}


def check_annotations(name: str, params: list[inspect.Parameter], inject: Collection[str],
                      hints: Mapping[str, Any], unresolved: Mapping[str, str],
                      returns: Any = Any) -> None:
    """Refuse, at registration, the annotations a call of ``name`` could not honour.

    Raises:
        ValueError: a wire parameter (or the return value) whose annotation busapp cannot
            convert from (to) JSON or cannot resolve; an injected name (``message``,
            ``bus``, ``storage``) annotated with a type sent over the wire.
    """
    for p in params:
        if p.name in unresolved:
            raise ValueError(f"parameter {p.name!r} of {name}(): its annotation "
                             f"{unresolved[p.name]} cannot be resolved; import the type at "
                             "module level")
        found = problem(hints.get(p.name, Any))
        if found is not None:
            raise ValueError(f"parameter {p.name!r} of {name}() is annotated "
                             f"{type_name(hints[p.name])}, which busapp cannot convert from "
                             f"JSON: {found}. Use JSON types, attrs models, dates, UUID, "
                             "Decimal, enums; or, if it is a dependency, register it with "
                             f"@app.dependency({p.name!r}) before the function")
    for injected in inject:
        hint = hints.get(injected, Any)
        if injected in _INJECTED and _is_wire_type(hint):
            what, annotation, instead = _INJECTED[injected]
            raise ValueError(
                f"parameter {injected!r} of {name}() is annotated {type_name(hint)}, but "
                f"{injected!r} is a reserved name: busapp passes {what} there, never a value "
                f"from the wire. Rename the parameter (e.g. to {instead!r}), or annotate it "
                f"{annotation} to receive {what}")
    found = problem(returns)
    if found is not None:
        raise ValueError(f"the return annotation of {name}() is {type_name(returns)}, which "
                         f"busapp cannot convert to JSON: {found}")


def _is_wire_type(hint: Any) -> bool:
    """True if ``hint`` is a type busapp would take from the wire (not the injected object)."""
    if hint is Any or hint is object:
        return False
    members = typing.get_args(hint) if is_union(hint) else (hint,)
    if any(isinstance(m, type) and issubclass(m, IncomingMessage) for m in members):
        return False
    return problem(hint) is None
