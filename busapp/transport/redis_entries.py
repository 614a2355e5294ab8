"""Redis: reading a queue entry no bigger than the worker takes, and answering the one it won't.

A worker's ``BRPOP`` takes an entry off its list whole: redis-py reads the reply into
memory before anyone can look at its size, so a 100 MB entry once cost a worker 400 MB
of memory to find out it would not read it. :func:`read_bounded` peeks at the reply's
header on the socket first (the length of the entry is there) and, for an entry over the
limit, streams it off the socket keeping only its size and its last bytes
(:class:`Unread`): kombu's envelope ends with the message's properties, so the caller
(``reply_to``, ``correlation_id``) can still be named, and answered
(:func:`unread_message`), at the cost of a few KiB. Over TLS (no peeking on an SSL
socket) the entry is read whole, as before, and only then refused.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
import uuid
from typing import Any

import attrs
import redis

from busapp import names

#: Bytes kept of an entry too big to read: its end, where kombu puts the properties.
TAIL = 4096
#: Bytes read off the socket at a time while an entry too big to read goes by.
CHUNK = 64 * 1024
_HEADER = re.compile(rb"\*2\r\n\$(\d+)\r\n")


@attrs.frozen
class Unread:
    """An entry taken off a list unread, for being over the limit: its size and last bytes."""

    size: int
    tail: bytes

    def field(self, name: str) -> str | None:
        """The last ``"name": "value"`` string of the envelope's tail (its properties)."""
        found = re.findall(rb'"' + name.encode() + rb'":\s*"((?:[^"\\]|\\.)*)"', self.tail)
        return json.loads(b'"' + found[-1] + b'"') if found else None


def read_bounded(client: Any, limit: int | None) -> Any:
    """The reply to the ``BRPOP`` just sent on ``client``'s connection, as redis-py parses it,
    except that an entry over ``limit`` bytes comes as ``[key, Unread]``, never in memory."""
    connection = client.connection
    sock = getattr(connection, "_sock", None)
    if limit is not None and sock is not None and not isinstance(sock, ssl.SSLSocket):
        try:
            header = _peek_header(sock, limit)
            if header is not None:
                return _stream(sock, *header)
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"reading a queue entry: {exc}") from exc
    return client.parse_response(connection, "BRPOP")


def _peek_header(sock: socket.socket, limit: int) -> tuple[int, bytes, int] | None:
    """``(header bytes, key, entry size)`` if the reply waiting on ``sock`` is an entry over
    ``limit`` bytes; None for any other reply (an entry within the limit, nil, an error)."""
    deadline = time.monotonic() + 1.0
    while True:
        seen = sock.recv(1024, socket.MSG_PEEK)
        if not seen or not seen.startswith(b"*2"):
            return None  # closed (the parser says so), nil, an error: redis-py reads it
        match = _HEADER.match(seen)
        if match is not None:
            start = match.end()
            key_end = start + int(match[1])
            size = re.match(rb"\r\n\$(\d+)\r\n", seen[key_end:])
            if size is not None:
                if int(size[1]) <= limit:
                    return None
                return key_end + size.end(), seen[start:key_end], int(size[1])
        if len(seen) >= 1024 or time.monotonic() > deadline:
            return None  # a header this long is no entry of ours: let redis-py read it
        time.sleep(0.001)  # the header is still on its way


def _stream(sock: socket.socket, header: int, key: bytes, size: int) -> list[Any]:
    """Take the reply (``header`` bytes, then ``size`` bytes of entry and CRLF) off ``sock``,
    keeping only the entry's last :data:`TAIL` bytes."""
    _discard(sock, header)
    tail = b""
    remaining = size
    while remaining:
        chunk = sock.recv(min(CHUNK, remaining))
        if not chunk:
            raise ConnectionError("connection closed in the middle of a queue entry")
        remaining -= len(chunk)
        tail = (tail + chunk)[-TAIL:]
    _discard(sock, 2)
    return [key, Unread(size, tail)]


def _discard(sock: socket.socket, count: int) -> None:
    while count:
        chunk = sock.recv(min(CHUNK, count))
        if not chunk:
            raise ConnectionError("connection closed in the middle of a reply")
        count -= len(chunk)


def unread_record(queue: str, unread: Unread, limit: int | None) -> str:
    """What goes to ``<queue>.dead`` in place of an entry too big to read (one JSON line)."""
    return json.dumps({"unread": unread.size, "limit": limit, "queue": queue,
                       "routing_key": unread.field("routing_key"),
                       "reply_to": unread.field("reply_to"),
                       "correlation_id": unread.field("correlation_id")})


def unread_message(queue: str, unread: Unread) -> dict[str, Any] | None:
    """A kombu message standing for an entry too big to read, so that the worker answers its
    caller (the pipeline refuses it naming the limit); None if it names no caller."""
    reply_to = unread.field("reply_to")
    if not reply_to:
        return None
    return {"body": "", "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {names.UNREAD_HEADER: unread.size},
            "properties": {"delivery_tag": uuid.uuid4().hex, "body_encoding": "base64",
                           "reply_to": reply_to, "correlation_id": unread.field("correlation_id"),
                           "delivery_info": {"exchange": unread.field("exchange") or "",
                                             "routing_key": unread.field("routing_key") or queue},
                           "priority": 0, "delivery_mode": 1}}
