"""busapp: JSON-RPC services on a message bus, Flask-style, compatible with Commissaire."""

from __future__ import annotations

from busapp import errors
from busapp.aio import AsyncClient
from busapp.app import App
from busapp.bus import Client

__version__ = "0.1.0"

__all__ = ["App", "AsyncClient", "Client", "__version__", "errors"]
