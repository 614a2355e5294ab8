"""busapp: JSON-RPC services on a message bus, Flask-style, compatible with Commissaire."""

from __future__ import annotations

__version__ = "0.1.0"
