"""The floor for anything on Redis: a redis-py LPUSH/BRPOP ping-pong, no framework, no kombu.

The server BRPOPs the request list and LPUSHes the same bytes to the reply list the request
names; the client LPUSHes and BRPOPs its own reply list. Four Redis commands per round trip,
against kombu's ~13. Used only by ``benchmarks/rpc.py`` (sequential calls on Redis and the
embedded broker).
"""

from __future__ import annotations

import signal
import threading
import uuid
from typing import Any
from urllib.parse import urlsplit

import redis


def connect(url: str) -> redis.Redis:
    """A redis-py client for a ``redis://`` or ``redis+socket://`` URL."""
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=urlsplit(url).path)
    return redis.Redis.from_url(url)


def serve_forever(url: str, name: str) -> None:
    """Echo requests on list ``name`` until SIGTERM: a request is ``<reply list>|<payload>``."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    r = connect(url)
    while not stop.is_set():
        item = r.brpop([name], timeout=1)
        if item is None:
            continue
        reply_to, _, payload = item[1].partition(b"|")
        r.lpush(reply_to, payload)
    r.delete(name)


class FloorClient:
    """One call in flight: LPUSH the request, BRPOP the reply."""

    def __init__(self, url: str, name: str) -> None:
        self.r = connect(url)
        self.name = name
        self.reply = f"floor.reply.{uuid.uuid4().hex}".encode()

    def call(self, payload: bytes, timeout: float = 30.0) -> Any:
        self.r.lpush(self.name, self.reply + b"|" + payload)
        item = self.r.brpop([self.reply], timeout=timeout)
        if item is None:
            raise TimeoutError("floor: no reply")
        return item[1]

    def close(self) -> None:
        self.r.delete(self.reply)
        self.r.close()
