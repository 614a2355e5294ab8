"""Test services without a broker: :class:`TestClient` (see :mod:`busapp.testing.client`),
and the pytest plugin's fixtures (:mod:`busapp.testing.plugin`)."""

from __future__ import annotations

from busapp.testing.client import NoRouteError, TestClient
from busapp.testing.support import HandlerError, Published

__all__ = ["HandlerError", "NoRouteError", "Published", "TestClient"]
