"""Storage backends, chosen by URL.

===========================  =====================================================
URL                          backend
===========================  =====================================================
``memory://``                a dict in this process (tests; lost on exit)
``sqlite:///PATH``           a SQLite file (``sqlite:///./x.db`` is relative)
``postgresql://...``         PostgreSQL through psycopg 3 (``?table=NAME`` option)
``redis://...``              Redis through redis-py (``?prefix=NAME`` option)
``sentinel://...``           the Redis master its Sentinels name (``?master_name=``)
===========================  =====================================================

Every backend stores JSON records by ``(model type name, primary key)``.
:meth:`Backend.save` is atomic and reports, from the same atomic step, whether
the record was created, updated or left unchanged, so the storage service
emits exactly one ``created`` event per key however many workers race.

Each record has a version kept by the backend: 1 when it is created, one more
on every save that changes it (a save that changes nothing leaves it). A save
with ``expect_version`` is a compare-and-set: it writes only if the stored
version is still that one (0: only if there is no record) and raises
:class:`~busapp.errors.Conflict` otherwise, in the same atomic step. Tables
made before versions existed gain the column on first use (their records
start at version 1).
Tables and keys are created on first use. Backends open their connections
lazily and reopen them after a fork.
"""

from __future__ import annotations

from busapp.storage.backends.base import (
    CREATED,
    DEFAULT_STORE_URL,
    UNCHANGED,
    UPDATED,
    Backend,
    check_expect_version,
    conflict,
    encode,
    pop_option,
    resolve_store_url,
)
from busapp.storage.backends.memory import MemoryBackend
from busapp.storage.backends.postgres import PostgresBackend
from busapp.storage.backends.redis import RedisBackend
from busapp.storage.backends.sqlite import SQLiteBackend
from busapp.transport import mask_url

__all__ = ["CREATED", "DEFAULT_STORE_URL", "UNCHANGED", "UPDATED", "Backend",
           "MemoryBackend", "PostgresBackend", "RedisBackend", "SQLiteBackend",
           "check_expect_version", "conflict", "encode", "open_backend", "pop_option",
           "resolve_store_url"]

#: Backends by URL scheme.
BACKENDS: dict[str, type[Backend]] = {
    "memory": MemoryBackend, "sqlite": SQLiteBackend, "postgresql": PostgresBackend,
    "postgres": PostgresBackend, "redis": RedisBackend, "rediss": RedisBackend,
    "unix": RedisBackend, "sentinel": RedisBackend,
}


def open_backend(url: str | None = None) -> Backend:
    """The backend for ``url`` (see :func:`resolve_store_url`); opens nothing yet."""
    url = resolve_store_url(url)
    cls = BACKENDS.get(url.split(":", 1)[0].lower())
    if cls is None:
        raise ValueError(f"unknown store URL {mask_url(url)!r}; use memory://, sqlite:///PATH, "
                         f"postgresql://..., redis://... or sentinel://...")
    return cls(url)
