"""The ``busapp`` command (see :mod:`busapp.cli.main`); one module per command."""

from __future__ import annotations

from busapp.cli.main import cli, main

__all__ = ["cli", "main"]
