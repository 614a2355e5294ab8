"""busapp: JSON-RPC services on a message bus, Flask-style, compatible with Commissaire."""

from __future__ import annotations

from busapp import errors
from busapp._version import __version__
from busapp.client.aio import AsyncClient
from busapp.app import App
from busapp.client.sync import Client
from busapp.core.injectables import AsyncBus, Bus, Message
from busapp.core.middleware import Call
from busapp.core.router import Router
from busapp.storage.client import StorageClient as Storage


__all__ = ["App", "AsyncBus", "AsyncClient", "Bus", "Call", "Client", "Message", "Router",
           "Storage", "__version__", "errors"]
