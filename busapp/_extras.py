"""Imports of optional dependencies, each installed by a ``busapp[...]`` extra.

A missing one raises :class:`MissingExtra`, whose message is the one line to
act on, e.g. ``postgresql:// stores need psycopg: pip install 'busapp[postgres]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from busapp.errors import MissingExtra

__all__ = ["MissingExtra", "psycopg", "require", "watchfiles"]


def require(module: str, extra: str, who_needs: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra`: ``who_needs`` it, install
    ``busapp[extra]``.

    Example::

        psycopg = require("psycopg", "postgres", "postgresql:// stores need")
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{who_needs} {module}: pip install 'busapp[{extra}]'"
        if not (isinstance(exc, ModuleNotFoundError) and exc.name == module):
            message += f" (importing it failed: {exc})"  # installed but broken, e.g. no libpq
        raise MissingExtra(message) from exc


def psycopg() -> ModuleType:
    """psycopg 3, for ``postgresql://`` stores (extra ``postgres``)."""
    return require("psycopg", "postgres", "postgresql:// stores need")


def watchfiles() -> ModuleType:
    """watchfiles, for ``busapp run --reload`` (extra ``reload``)."""
    return require("watchfiles", "reload", "busapp run --reload needs")
