"""The one cattrs converter busapp uses, for bus params, results and models.

It is stricter than cattrs' default about JSON scalars: an ``int`` parameter
takes a JSON integer, not ``"3"``, ``3.5`` or ``true``; a ``str`` takes a
string, not a number. That is what a JSON-RPC caller expects, and it keeps a
typo from turning into a silently wrong value.

Besides JSON's own types it converts, both ways (what the OpenRPC document of
:mod:`busapp.ops.openrpc` promises for each)::

    datetime.datetime  "2024-05-01T12:30:00+02:00"   ISO 8601, the time zone kept
    datetime.date      "2024-05-01"
    datetime.time      "12:30:00" or "12:30:00+02:00"
    uuid.UUID          "6f1c..."                     its hyphenated text
    decimal.Decimal    "12.50"                       a string, so no digit is lost
    bytes              "aGk="                        base64
    pathlib.Path       "/srv/data"
    enum.Enum          the member's value
    set, frozenset     a JSON array (sorted when the items sort)
    tuple              a JSON array (of its fixed length, for tuple[int, str])
    X | Y              the first member the value converts to, the more specific first

:func:`problem` says up front why a type cannot be converted, so an App refuses such
an annotation when the function is registered instead of failing its first call.
"""

from __future__ import annotations

import base64
import binascii
import collections.abc
import datetime
import decimal
import enum
import inspect
import pathlib
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import cattrs

#: The converter. Models register their hooks on it (see :mod:`busapp.models`).
converter = cattrs.Converter(forbid_extra_keys=True)


def _strict_int(value: Any, _type: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")
    return value


def _strict_float(value: Any, _type: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def _strict_str(value: Any, _type: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def _strict_bool(value: Any, _type: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__} {value!r}")
    return value


converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(bool, _strict_bool)


# -- types carried as JSON text ------------------------------------------------------------

def _text_type(cls: type, parse: Callable[[str], Any], expected: str,
               render: Callable[[Any], str]) -> None:
    """Convert ``cls`` from a JSON string with ``parse`` and back with ``render``."""
    def structure(value: Any, _type: type) -> Any:
        if isinstance(value, cls):  # already built (a call made in-process)
            return value
        if not isinstance(value, str):
            raise TypeError(f"expected {expected}, got {type(value).__name__} {value!r}")
        try:
            return parse(value)
        except (ValueError, ArithmeticError, binascii.Error):
            raise ValueError(f"expected {expected}, got {value!r}") from None

    converter.register_structure_hook(cls, structure)
    converter.register_unstructure_hook(cls, render)


def _decimal(text: str) -> decimal.Decimal:
    value = decimal.Decimal(text.strip())
    if not value.is_finite():
        raise ValueError(text)
    return value


def _date(text: str) -> datetime.date:
    if "T" in text or " " in text.strip():  # a date-time is not a date: say so, do not cut it
        raise ValueError(text)
    return datetime.date.fromisoformat(text)


_text_type(datetime.datetime, datetime.datetime.fromisoformat,
           'an ISO 8601 date-time such as "2024-05-01T12:30:00+02:00"',
           datetime.datetime.isoformat)
_text_type(datetime.date, _date, 'an ISO 8601 date such as "2024-05-01"',
           datetime.date.isoformat)
_text_type(datetime.time, datetime.time.fromisoformat,
           'an ISO 8601 time such as "12:30:00"', datetime.time.isoformat)
_text_type(uuid.UUID, uuid.UUID, "a UUID", str)
_text_type(decimal.Decimal, _decimal, 'a decimal number as a string, such as "12.50"', str)
_text_type(bytes, lambda text: base64.b64decode(text, validate=True), "base64 text",
           lambda data: base64.b64encode(data).decode("ascii"))
_text_type(pathlib.Path, pathlib.Path, "a path as a string", str)
converter.register_unstructure_hook(pathlib.PurePath, str)

#: Types carried as a JSON string, for :func:`problem` and for union order.
TEXT_TYPES: tuple[type, ...] = (datetime.date, datetime.time, datetime.datetime, uuid.UUID,
                                decimal.Decimal, pathlib.Path, bytes)


# -- sets and unions ---------------------------------------------------------------------

_SETS = (set, frozenset, collections.abc.Set, collections.abc.MutableSet)


def _is_set(tp: Any) -> bool:
    return tp in _SETS or typing.get_origin(tp) in _SETS


def _unstructure_set(value: Any) -> list[Any]:
    items = [converter.unstructure(item) for item in value]
    try:
        return sorted(items)
    except TypeError:  # items that do not sort (mixed types, objects): as they came
        return items


converter.register_unstructure_hook_func(_is_set, _unstructure_set)


def is_union(tp: Any) -> bool:
    """True for ``X | Y`` and ``typing.Union[X, Y]``."""
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _is_wide_union(tp: Any) -> bool:
    """A union that is more than ``X | None`` (which cattrs already handles)."""
    return is_union(tp) and len([a for a in typing.get_args(tp) if a is not type(None)]) > 1


def _rank(tp: Any) -> int:
    """Where a union member is tried: the ones that accept the least first, ``str`` last."""
    origin = typing.get_origin(tp) or tp
    order: list[Any] = [type(None), bool, int, float, typing.Literal]
    if origin in order:
        return order.index(origin)
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return len(order)
    if origin in TEXT_TYPES:
        return len(order) + 1 + TEXT_TYPES.index(origin)
    if origin is str:
        return 100
    return 50  # models, containers, the rest


def _union_hook(tp: Any) -> Callable[[Any, Any], Any]:
    members = sorted(typing.get_args(tp), key=_rank)
    shown = " | ".join(type_name(m) for m in members)

    def structure(value: Any, _type: Any) -> Any:
        failures: list[tuple[Any, Exception]] = []
        for member in members:
            if member is type(None):
                if value is None:
                    return None
                continue
            try:
                return converter.structure(value, member)
            except Exception as exc:  # noqa: BLE001 - try the next member
                failures.append((member, exc))  # described only if no member takes it
        raise TypeError(f"expected {shown}, got {value!r}: " + "; ".join(
            f"not {type_name(member)} ({describe_error(exc)})" for member, exc in failures))

    return structure


converter.register_structure_hook_factory(_is_wide_union, _union_hook)


# -- what can be converted ---------------------------------------------------------------

_SCALARS: tuple[type, ...] = (bool, int, float, str, type(None))
_BARE = (list, dict, tuple, set, frozenset, object)
_ARRAYS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set,
           collections.abc.MutableSequence, collections.abc.MutableSet,
           collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def problem(hint: Any, _seen: frozenset[type] = frozenset()) -> str | None:
    """Why busapp cannot convert values of ``hint`` to and from JSON (None: it can).

    Follows unions, containers, tuples and the fields of attrs classes; a class it does
    not know passes only if a structure hook was registered for it on :data:`converter`.
    """
    if hint is Any or hint is inspect.Parameter.empty or hint is None or hint in _BARE:
        return None
    supertype = getattr(hint, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return problem(supertype, _seen)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return problem(args[0], _seen)
    if origin is typing.Literal:
        wrong = [a for a in args if not isinstance(a, (*_SCALARS, enum.Enum))]
        return f"Literal value {wrong[0]!r} is not a JSON value" if wrong else None
    if is_union(hint) or origin is tuple or origin in _ARRAYS:
        return _first(problem(a, _seen) for a in args if a is not Ellipsis)
    if origin in _MAPPINGS:
        if args and problem(args[0], _seen) is None and _json_text(args[0]):
            return problem(args[1], _seen)
        return (f"{type_name(hint)}: JSON object keys are strings; use dict[str, ...]"
                if args else None)
    if origin is not None or not isinstance(hint, type):
        return f"{type_name(hint)} is not a type busapp can convert from JSON"
    return _class_problem(hint, _seen)


def _class_problem(cls: type, seen: frozenset[type]) -> str | None:
    if cls in _SCALARS or cls in TEXT_TYPES or issubclass(cls, pathlib.PurePath):
        return None
    if issubclass(cls, enum.Enum):
        wrong = [m for m in cls if not isinstance(m.value, _SCALARS)]
        return (f"{cls.__name__}.{wrong[0].name} = {wrong[0].value!r} is not a JSON value"
                if wrong else None)
    if attrs.has(cls):
        if cls in seen:
            return None
        hints = _field_hints(cls)
        for field in attrs.fields(cls):
            if field.init:
                found = problem(hints.get(field.name, Any), seen | {cls})
                if found is not None:
                    return f"field {field.name!r} of {cls.__name__}: {found}"
        return None
    if _has_hook(cls):
        return None
    return (f"busapp cannot convert {cls.__name__} from JSON (no structure hook is "
            "registered for it)")


def _json_text(key: Any) -> bool:
    """True if mapping keys of type ``key`` are strings in JSON."""
    if key is Any or key is str or key in TEXT_TYPES:
        return True
    if typing.get_origin(key) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(key))
    return isinstance(key, type) and issubclass(key, enum.Enum) \
        and all(isinstance(m.value, str) for m in key)


def _field_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable: fall back to what attrs recorded
        return {f.name: f.type if f.type is not None else Any for f in attrs.fields(cls)}


def _has_hook(cls: type) -> bool:
    """True if a structure hook other than cattrs' "unsupported" one is registered for
    ``cls``."""
    # cattrs 23.2 has no get_structure_hook: ask its dispatch (the same lookup) instead.
    get: Any = getattr(converter, "get_structure_hook", None) or converter._structure_func.dispatch
    try:
        hook = get(cls)
    except cattrs.errors.StructureHandlerNotFoundError:
        return False
    return getattr(hook, "__name__", "") not in ("raise_error", "_structure_error")


def _first(found: typing.Iterable[str | None]) -> str | None:
    return next((p for p in found if p is not None), None)


# -- the functions the rest of busapp calls ------------------------------------------------

def type_name(hint: Any) -> str:
    """``hint`` as a reader writes it: ``int``, ``list[Host]``, ``datetime | None``."""
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("datetime.", "").replace("NoneType", "None")


def describe_error(exc: BaseException) -> str:
    """Turn a cattrs structuring error into one readable line."""
    if isinstance(exc, (cattrs.ClassValidationError, cattrs.IterableValidationError)):
        return "; ".join(cattrs.transform_error(exc, path="value"))
    return str(exc) or type(exc).__name__


def structure(value: Any, type_: Any) -> Any:
    """Build a ``type_`` from JSON-shaped ``value`` (raises on a mismatch)."""
    return converter.structure(value, type_)


def unstructure(value: Any) -> Any:
    """Turn ``value`` (attrs instances, lists, dicts...) into JSON-shaped data."""
    return converter.unstructure(value)
