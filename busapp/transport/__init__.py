"""Transports: broker URLs, and :func:`open_transport`, the one way to a broker connection.

The seam itself is :mod:`busapp.transport.base`; :mod:`~busapp.transport.kombu_transport`
(with :mod:`~busapp.transport.redis`) implements it for Redis, RabbitMQ and the
embedded broker, :mod:`~busapp.transport.memory` in-process for the test client.
Importing this package imports no kombu.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from busapp.transport.base import Transport

#: Environment variable naming the broker when none is passed.
BROKER_ENV = "BUSAPP_BROKER_URL"


def resolve_broker_url(url: str | None = None) -> str:
    """The broker to use: ``url``, else ``$BUSAPP_BROKER_URL``, else the embedded Redis."""
    if url:
        return url
    env = os.environ.get(BROKER_ENV)
    if env:
        return env
    from busapp.transport.embedded import ensure_embedded_broker

    return ensure_embedded_broker()


def mask_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (safe to log)."""
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def is_redis(url: str) -> bool:
    """True for redis://, rediss:// and redis+socket:// URLs."""
    return url.split(":", 1)[0].startswith("redis")


def is_memory(url: str) -> bool:
    """True for the in-process ``memory://`` broker of the test client."""
    return url.startswith("memory://")


def open_transport(url: str) -> Transport:
    """A new, not yet connected, transport for ``url`` (call its ``connect()``)."""
    if is_memory(url):
        from busapp.transport.memory import MemoryTransport

        return MemoryTransport(url)
    from busapp.transport.kombu_transport import KombuTransport

    return KombuTransport(url)
