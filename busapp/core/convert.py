"""The one cattrs converter busapp uses, for bus params, results and models.

It is stricter than cattrs' default about JSON scalars: an ``int`` parameter
takes a JSON integer, not ``"3"``, ``3.5`` or ``true``; a ``str`` takes a
string, not a number. That is what a JSON-RPC caller expects, and it keeps a
typo from turning into a silently wrong value.
"""

from __future__ import annotations

from typing import Any

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
