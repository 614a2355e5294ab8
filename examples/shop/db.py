"""The shop's SQLite database: one connection per worker (``SHOP_DB``, default
``./.busapp/shop.sqlite3``), shared by the three Apps, one table each."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator


def connect() -> Iterator[sqlite3.Connection]:
    """A worker-scoped dependency: one connection per worker, closed when it stops."""
    path = os.environ.get("SHOP_DB", os.path.join(".busapp", "shop.sqlite3"))
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Autocommit: each statement is its own transaction, so a worker's concurrent
    # handlers can share the connection.
    conn = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
    yield conn
    conn.close()
