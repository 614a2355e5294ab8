"""kombu connections for busapp's broker URLs, and the broker errors they raise.

:func:`kombu_connection` turns a busapp broker URL (Redis, Sentinel, RabbitMQ, a list of
nodes, TLS) into a kombu Connection with busapp's transport options; :data:`_ERRORS` are
the exceptions that mean "the broker is not reachable" (translated into
:class:`~busapp.errors.BrokerUnavailable` at the transport boundary, once).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import kombu
import kombu.connection
import kombu.exceptions
import kombu.transport.pyamqp
from kombu import Connection, Exchange, Queue, binding

from busapp import config, names
from busapp.transport import is_redis
from busapp.transport import redis as _redis_channel
from busapp.transport import redis_state as _redis
from busapp.transport.base import QueueSpec

def transport_options(url: str) -> dict[str, Any]:
    """kombu transport options busapp uses for ``url``."""
    if is_redis(url):
        return {
            # Unacked messages of a dead worker come back after this long.
            "visibility_timeout": config.get("visibility_timeout"),
            "socket_connect_timeout": 5,
            "health_check_interval": 25,
            # kombu's restore scan takes a mutex that a worker killed mid-scan would leave
            # held for kombu's default 300 s, stalling every redelivery on that Redis.
            "unacked_mutex_expire": 10,
            # Scan for expired unacked messages every 2nd idle poll, not every 10th.
            "unacked_restore_throttle": 2,
            # Bindings are read again only when Redis says they changed (0: on every
            # publish): see busapp.transport.redis.Channel.binding_tracking.
            "binding_tracking": config.get("binding_tracking"),
            # Without tracking, off unless asked for: see Channel.binding_cache_ttl.
            "binding_cache_ttl": config.get("binding_cache_ttl"),
            # Set in worker processes by the manager (see busapp.transport.redis.QoS).
            "unacked_owner": config.get("unacked_owner"),
            # sentinel:// only: see busapp.transport.redis.SentinelChannel.replica_wait_ms.
            "replica_wait_ms": config.get("replica_wait_ms"),
        }
    return {"confirm_publish": confirm_publish(url)}


def confirm_publish(url: str) -> bool:
    """Whether publishes on ``url`` wait for the broker's confirm: ``$BUSAPP_CONFIRM_PUBLISH``,
    else yes when the URL lists several nodes (a cluster: a publish that returned is then on
    a quorum queue's majority, and one the failing node never took raises instead)."""
    setting = config.get("confirm_publish")
    if setting is not None:
        return bool(setting)
    return ";" in url


def requeue_dead_worker(url: str, pid: int) -> int:
    """Requeue at once what worker ``pid`` (dead) left unacked on Redis; how many (0 elsewhere:
    RabbitMQ requeues a dead connection's messages itself)."""
    if not is_redis(url):
        return 0
    conn = kombu_connection(url)
    try:
        conn.ensure_connection(max_retries=1)
        return _redis.requeue_owned(conn, names.unacked_owner(socket.gethostname(), pid))
    finally:
        _release(conn)


def kombu_connection(url: str, max_body: int | None = None, heartbeat: float | None = None) -> Any:
    """A new, not yet connected, kombu Connection for ``url``.

    ``max_body``: a Redis queue entry too big to hold a body of that size is moved aside
    unread (see :meth:`busapp.transport.redis.Channel._brpop_read`).

    Redis URLs (``redis://``, ``rediss://``, ``redis+socket://``) get busapp's transport
    (:mod:`busapp.transport.redis`: kombu's, without its per-command client and per-publish
    binding lookup); other URLs get kombu's own.
    """
    cls: type = _redis_channel.Connection if is_redis(url) else Connection
    options = transport_options(url)
    url, query_options = split_query_options(url)
    options.update(query_options)
    if max_body is not None and is_redis(url):
        options["max_entry_bytes"] = max_body * 4 // 3 + _ENVELOPE_BYTES  # base64 + envelope
    extra = tls_defaults(url)
    if heartbeat and not is_redis(url):
        extra["heartbeat"] = heartbeat
    return cls(url, transport_options=options, connect_timeout=5, **extra)


#: Transport options a broker URL may carry in its query (``sentinel://...?master_name=NAME``).
QUERY_OPTIONS = ("master_name",)


def split_query_options(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without the :data:`QUERY_OPTIONS` of any of its ``;``-separated nodes, and them."""
    found: dict[str, str] = {}
    nodes = []
    for node in url.split(";"):
        parts = urlsplit(node)
        kept = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in QUERY_OPTIONS:
                found[key] = value
            else:
                kept.append((key, value))
        nodes.append(urlunsplit(parts._replace(query=urlencode(kept))) if parts.query else node)
    return ";".join(nodes), found


#: Room for a Redis entry's envelope (properties, headers) besides its base64 body.
_ENVELOPE_BYTES = 64 * 1024


def tls_defaults(url: str) -> dict[str, Any]:
    """Verify the server's certificate on ``rediss://`` unless the URL says otherwise.

    kombu turns certificate checks off (``CERT_NONE``) for a ``rediss://`` URL without ssl
    options. Here a bare ``rediss://`` verifies against the system CAs; the URL can name a
    CA (``?ssl_ca_certs=/path/ca.pem``) or, explicitly, turn checks off
    (``?ssl_cert_reqs=none``).
    """
    if not url.startswith("rediss://"):
        return {}
    query = parse_qs(urlsplit(url).query)
    if any(key.startswith("ssl_") for key in query):
        return {}  # kombu passes the URL's own ssl options (redis-py verifies by default)
    return {"ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}


def _base_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        OSError, ConnectionError, EOFError,
        kombu.exceptions.OperationalError, kombu.exceptions.ConnectionError,
        kombu.exceptions.ChannelError,
    ]
    try:
        import amqp.exceptions

        errors += [amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableConnectionError,
                   amqp.exceptions.ChannelError, amqp.exceptions.MessageNacked]
    except ImportError:  # pragma: no cover - amqp is a dependency
        pass
    try:
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                   redis.exceptions.BusyLoadingError, redis.exceptions.ResponseError]
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return tuple(errors)


_ERRORS = _base_errors()


def _refusal(exc: BaseException) -> bool:
    """True for a broker's 403 ACCESS_REFUSED (RabbitMQ) or NOPERM (Redis ACLs)."""
    code = getattr(exc, "code", None) or getattr(exc, "reply_code", None)
    if code == 403:
        return True
    text = str(exc)
    return "ACCESS_REFUSED" in text or text.startswith("NOPERM")


def _not_found(exc: BaseException) -> bool:
    code = getattr(exc, "code", None) or getattr(exc, "reply_code", None)
    return code == 404 or "NOT_FOUND" in str(exc)


def _raw_channel(conn: Any) -> Any:
    """A new channel of ``conn`` whose message bodies stay the bytes that crossed the wire.

    py-amqp decodes a body by its ``content_encoding`` by default: busapp then re-encoded it
    as UTF-8, changing the bytes of a body sent in any other encoding.
    """
    channel = conn.channel()
    if hasattr(channel, "auto_decode"):  # py-amqp's; Redis channels hand over bytes as they are
        channel.auto_decode = False
    return channel


def _release(conn: Any) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection
        conn.release()


def kombu_queue(exchange: str, spec: QueueSpec) -> Any:
    """The kombu Queue (with its bindings to the topic ``exchange``) that declares ``spec``."""
    ex = Exchange(exchange, type="topic", durable=True) if exchange else None
    options: dict[str, Any] = {"durable": spec.durable, "auto_delete": spec.auto_delete}
    if spec.expires is not None:
        options["expires"] = spec.expires
    if spec.arguments:
        options["queue_arguments"] = dict(spec.arguments)
    keys = list(spec.binding_keys)
    if len(keys) > 1 and ex is not None:
        options["bindings"] = [binding(ex, routing_key=k) for k in keys]
        return Queue(spec.name, **options)
    return Queue(spec.name, ex, routing_key=keys[0] if keys else spec.name, **options)
