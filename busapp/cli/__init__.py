"""The ``busapp`` command (see :mod:`busapp.cli.main`)."""

from __future__ import annotations

from busapp.cli.main import cli, main, parse_params

__all__ = ["cli", "main", "parse_params"]
