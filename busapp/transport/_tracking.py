"""Hear of every change to kombu's binding sets on Redis as it happens (Redis >= 6).

A publishing channel keeps each exchange's bindings indexed in memory instead of reading
them on every publish; this tells it when to read them again. It uses Redis' client-side
caching in broadcast mode: ``CLIENT TRACKING ON REDIRECT <own id> BCAST PREFIX
_kombu.binding.`` on a connection of its own, subscribed to ``__redis__:invalidate``,
makes Redis send that connection the name of every ``_kombu.binding.*`` key any client
changes (kombu's ``SADD``/``SREM``, its binding sweeps, expiry, ``FLUSHDB``), whoever
made the change: busapp, plain kombu, Commissaire.

- :meth:`BindingWatcher.poll` takes in what has arrived, without a round trip: a change
  is known as soon as its message is on this machine (at once on loopback).
- :meth:`BindingWatcher.sync` sends a ``PING`` and reads up to its answer. Redis queues
  the invalidations of a command before it writes that command's reply (see
  ``trackingBroadcastInvalidationMessages`` in its ``beforeSleep``), so every change
  whose command returned before the ``PING`` was sent has been taken in: a queue bound
  a moment ago, by any process, is seen.

The connection speaks RESP2 whatever the channel's pool does (push messages then arrive
as plain Pub/Sub messages). A server without client tracking (Redis < 6, a proxy, an
ACL refusing ``CLIENT``) makes :meth:`BindingWatcher.start` return None: the channel
then reads the bindings on every publish, as kombu does.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from time import monotonic
from typing import Any

__all__ = ["BindingWatcher", "CHANNEL", "PREFIX"]

#: Keys watched: kombu's binding sets, ``_kombu.binding.<exchange>``.
PREFIX = "_kombu.binding."
#: Where Redis sends the names of changed keys (RESP2).
CHANNEL = "__redis__:invalidate"
#: Keys whose changes are counted one by one (past it, all count as changed once).
MAX_KEYS = 10_000
#: Seconds between round trips that prove the connection alive (as redis-py's health check).
CHECK_INTERVAL = 25.0
#: Seconds a watcher's connection waits for the server before it counts as broken.
SOCKET_TIMEOUT = 5.0


class BindingWatcher:
    """One connection told of every change to a ``_kombu.binding.*`` key.

    :meth:`generation` of a key changes whenever a change to it is taken in; a table
    read after noting the generation is current while the generation is unchanged.
    Thread-safe. Any method may raise the connection's errors: the watcher is then
    useless, close it.
    """

    def __init__(self, connection: Any, client_id: int) -> None:
        self._conn = connection
        #: The connection's ``CLIENT ID`` on the server.
        self.client_id = client_id
        self._lock = threading.Lock()
        self._pid = os.getpid()
        #: bumped when every key must count as changed (FLUSHDB, a message not understood)
        self._epoch = 0
        self._changes: dict[str, int] = {}
        self._synced = monotonic()
        self._poller = select.poll()
        self._poller.register(connection._sock, select.POLLIN)

    @classmethod
    def start(cls, pool: Any) -> BindingWatcher | None:
        """A watcher on a new connection to ``pool``'s server; None if the server cannot.

        Raises:
            the pool's connection errors if the server cannot be reached.
        """
        conn = _connection(pool)
        try:
            conn.connect()
            conn.send_command("CLIENT", "ID")
            own = conn.read_response()
            conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", own, "BCAST",
                              "PREFIX", PREFIX)
            conn.read_response()
            conn.send_command("SUBSCRIBE", CHANNEL)
            conn.read_response()
            watcher = cls(conn, int(own))
            watcher._drain(conn)  # what came with the reply: poll() looks at the socket only
        except Exception as exc:
            conn.disconnect()
            if _refused(exc):
                return None
            raise
        return watcher

    def generation(self, key: str) -> tuple[int, int]:
        """A value that changes whenever a change to ``key`` is taken in."""
        return self._epoch, self._changes.get(key, 0)

    def poll(self) -> None:
        """Take in the change messages that have arrived (no round trip).

        Every :data:`CHECK_INTERVAL` seconds it is a :meth:`sync` instead, so a connection
        that died quietly (a firewall dropping idle ones) is found out.
        """
        if monotonic() - self._synced > CHECK_INTERVAL:
            return self.sync()
        with self._lock:
            conn = self._open()
            # Nothing is left in redis-py's buffer between calls (see _drain): the socket
            # says whether anything came, in a fifth of the time of conn.can_read().
            sock = conn._sock
            if self._poller.poll(0) or getattr(sock, "pending", _nothing)():
                self._drain(conn)

    def sync(self) -> None:
        """Take in every change made before this call (one round trip)."""
        with self._lock:
            conn = self._open()
            self._synced = monotonic()
            conn.send_command("PING")
            while True:
                message = conn.read_response()
                if _kind(message) == b"pong":
                    break
                self._take(message)
            self._drain(conn)

    def _drain(self, conn: Any) -> None:
        """Take in every message redis-py has buffered or the socket holds."""
        while conn.can_read(timeout=0):
            self._take(conn.read_response())

    def _open(self) -> Any:
        conn = self._conn
        if getattr(conn, "_sock", True) is None:  # redis-py would reconnect it, untracked
            raise ConnectionError("the binding watch connection is closed")
        return conn

    def _take(self, message: Any) -> None:
        if _kind(message) != b"message":
            return  # (un)subscribe confirmations
        keys = message[2]
        if not isinstance(keys, list):  # FLUSHDB/FLUSHALL: every key, or not understood
            self._epoch += 1
            return
        changes = self._changes
        if len(changes) > MAX_KEYS:  # exchanges come and go: start afresh, all keys changed
            changes.clear()
            self._epoch += 1
        for raw in keys:
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            changes[key] = changes.get(key, 0) + 1

    @property
    def usable(self) -> bool:
        """False in a forked child (the socket is the parent's)."""
        return self._pid == os.getpid()

    def close(self) -> None:
        """Close the connection (not in a forked child: the parent still uses it)."""
        if self.usable:
            with contextlib.suppress(Exception):  # closing a broken socket
                self._conn.disconnect()


def _nothing() -> int:
    return 0


def _kind(message: Any) -> bytes:
    if isinstance(message, list) and message:
        kind = message[0]
        return kind.lower() if isinstance(kind, bytes) else str(kind).lower().encode()
    return b""


def _refused(exc: BaseException) -> bool:
    """True for an error reply to CLIENT ID/TRACKING (unknown command, NOPERM, a proxy)."""
    import redis.exceptions

    return isinstance(exc, redis.exceptions.ResponseError)


def _connection(pool: Any) -> Any:
    """A new connection like ``pool``'s, in RESP2, with no health-check ``PING``s.

    (A Pub/Sub connection answers ``PING`` with ``["pong", ""]``, which redis-py's
    health check takes for a broken connection.)
    """
    kwargs = {key: value for key, value in pool.connection_kwargs.items()
              if not key.startswith("maint_notifications")}  # RESP3 only (redis-py >= 7)
    kwargs.pop("protocol", None)
    kwargs.update(health_check_interval=0, socket_timeout=SOCKET_TIMEOUT)
    try:
        return pool.connection_class(**kwargs, protocol=2)
    except TypeError:  # redis-py < 5 has no protocol option: it only speaks RESP2
        return pool.connection_class(**kwargs)
