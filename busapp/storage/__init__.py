"""Storage: models saved through the storage service, and events of their changes.

- :mod:`busapp.storage.client`: :class:`StorageClient`, :class:`NotifyCallback`.
- :mod:`busapp.storage.events`: event routing keys and bodies.
- :mod:`busapp.storage.service`: the storage service, an :class:`~busapp.App` named ``storage``.
- :mod:`busapp.storage.backends`: memory, SQLite, PostgreSQL and Redis, chosen by URL.
"""

from __future__ import annotations

from busapp.storage.client import (
    NOTIFY_EVENT_ANY,
    NOTIFY_EVENT_CREATED,
    NOTIFY_EVENT_DELETED,
    NOTIFY_EVENT_UPDATED,
    NotifyCallback,
    StorageClient,
)

__all__ = [
    "NOTIFY_EVENT_ANY",
    "NOTIFY_EVENT_CREATED",
    "NOTIFY_EVENT_DELETED",
    "NOTIFY_EVENT_UPDATED",
    "NotifyCallback",
    "StorageClient",
]
