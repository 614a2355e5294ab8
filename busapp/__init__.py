"""busapp: JSON-RPC services on a message bus, Flask-style, compatible with Commissaire."""

from __future__ import annotations

from busapp import errors
from busapp._version import __version__
from busapp.client.aio import AsyncClient
from busapp.app import App
from busapp.client.sync import Client
from busapp.core.middleware import Call
from busapp.core.router import Router


__all__ = ["App", "AsyncClient", "Call", "Client", "Router", "__version__", "errors"]
