"""Transports: broker URLs, and :func:`open_transport`, the one way to a broker connection.

The seam itself is :mod:`busapp.transport.base`; :mod:`~busapp.transport.kombu_transport`
(with :mod:`~busapp.transport.redis`) implements it for Redis, RabbitMQ and the
embedded broker, :mod:`~busapp.transport.memory` in-process for the test client.
Importing this package imports no kombu.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from busapp import config
from busapp.transport.embedded import ensure_embedded_broker, revive_embedded
from busapp.transport.memory import MemoryTransport

if TYPE_CHECKING:
    from busapp.transport.base import Transport

def resolve_broker_url(url: str | None = None) -> str:
    """The broker to use: ``url``, else ``$BUSAPP_BROKER_URL``, else the embedded Redis."""
    if url:
        return url
    env = config.get("broker_url")
    if env:
        return env
    return ensure_embedded_broker()


def mask_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (safe to log), in each of its nodes."""
    if not url:
        return str(url)
    if ";" in url:
        return ";".join(mask_url(node) for node in url.split(";"))
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
    """True for redis://, rediss://, redis+socket:// and sentinel:// URLs."""
    scheme = url.split(":", 1)[0]
    return scheme.startswith("redis") or scheme == "sentinel"


#: Broker URL schemes busapp serves on: the kombu transport aliases (kombu.transport.
#: TRANSPORT_ALIASES) of Redis and RabbitMQ, and busapp's in-process ``memory://``.
#: Hard-coded so checking a URL imports no kombu; tests/test_cli.py checks it against kombu's.
#: kombu reads ``TRANSPORT+URL`` (e.g. ``redis+socket://``) as TRANSPORT.
BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "librabbitmq", "memory")


def check_broker_url(url: str) -> str | None:
    """Why ``url`` is not a broker URL busapp can use, or None when its scheme is known."""
    if "://" not in url:
        # Not echoed: without a scheme, mask_url cannot tell a password from a host.
        return ("the broker URL has no scheme; "
                "use e.g. redis://HOST:6379/0 or amqp://USER:PASSWORD@HOST//")
    schemes = [node.split("://", 1)[0].lower() for node in url.split(";")]
    for scheme in schemes:
        if scheme.split("+", 1)[0] not in BROKER_SCHEMES:
            return (f"unknown broker URL scheme {scheme!r}; use one of "
                    + ", ".join(f"{s}://" for s in BROKER_SCHEMES))
    if len(set(schemes)) > 1:
        return (f"the nodes of a broker URL must share one scheme, not {sorted(set(schemes))}; "
                "list the nodes of one cluster, e.g. amqp://h1:5672//;amqp://h2:5672//")
    if schemes[0] == "sentinel" and "master_name=" not in url:
        return ("a sentinel:// URL needs the name of the Redis master its Sentinels watch: "
                "add ?master_name=NAME, e.g. sentinel://127.0.0.1:26379/0?master_name=mymaster")
    return None


def revive_if_embedded(url: str) -> bool:
    """If ``url`` is the embedded broker's and it is gone, start it again (see
    :func:`busapp.transport.embedded.revive_embedded`). False for any other URL."""
    if not url.startswith("redis+socket://"):
        return False
    return revive_embedded(url)


def is_memory(url: str) -> bool:
    """True for the in-process ``memory://`` broker of the test client."""
    return url.startswith("memory://")


def open_transport(url: str) -> Transport:
    """A new, not yet connected, transport for ``url`` (call its ``connect()``).

    Raises:
        ValueError: ``url`` has no scheme, or one busapp does not serve on.
    """
    problem = check_broker_url(url)
    if problem:
        raise ValueError(problem)
    if is_memory(url):
        return MemoryTransport(url)
    return _kombu_transport().KombuTransport(url)


def preload(url: str) -> None:
    """Import now what a connection to ``url`` will need. A process manager does, before it
    forks: each worker it starts (or restarts after a crash) then begins with kombu loaded,
    instead of spending ~0.5 s importing it first."""
    if not is_memory(url):
        _kombu_transport()


def _kombu_transport() -> Any:
    # Imported here: kombu loads only when a broker connection is made (or prepared for).
    from busapp.transport import kombu_transport

    return kombu_transport
