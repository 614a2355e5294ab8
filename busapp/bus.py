"""Calling services (Commissaire's import path): :class:`Client` and :class:`BusMixin`.

The implementation lives in :mod:`busapp.client.sync`.
"""

from __future__ import annotations

from busapp.client.sync import (
    DEFAULT_TIMEOUT,
    REPLY_PREFIX,
    BusMixin,
    Client,
    default_exchange,
    default_queue,
)

__all__ = ["DEFAULT_TIMEOUT", "REPLY_PREFIX", "BusMixin", "Client", "default_exchange",
           "default_queue"]
