"""busapp: JSON-RPC services on a message bus, Flask-style, compatible with Commissaire."""

from __future__ import annotations

from busapp import errors
from busapp.aio import AsyncClient
from busapp.app import App
from busapp.bus import Client
from busapp.middleware import Call
from busapp.router import Router

__version__ = "0.1.0"

__all__ = ["App", "AsyncClient", "Call", "Client", "Router", "__version__", "errors"]
