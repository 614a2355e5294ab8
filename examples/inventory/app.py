"""Inventory: an App over two modules, a per-worker SQLite connection, a timing middleware.

    busapp run examples/inventory/app.py --workers 2
    busapp call inventory.add_item sku=apple quantity=3
    busapp call inventory.count sku=apple

Each worker opens its own connection after the fork (``db`` is a worker-scoped
dependency), so no connection is shared between processes. ``INVENTORY_DB`` sets the
database file (default ``./.busapp/inventory.sqlite3``).
"""

from __future__ import annotations

import os
import sqlite3
import time

import structlog

from busapp import App

from . import stock

log = structlog.get_logger("inventory")
app = App("inventory")


@app.dependency("db")
def db():
    """One SQLite connection per worker, closed when the worker stops."""
    path = os.environ.get("INVENTORY_DB", os.path.join(".busapp", "inventory.sqlite3"))
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Autocommit (isolation_level=None): every statement is its own transaction, so the
    # worker's concurrent handlers can share the connection.
    conn = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
    yield conn
    conn.close()


@app.on_startup
def create_table(db):
    """Make the table before the worker takes its first message."""
    db.execute("CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, quantity INTEGER NOT NULL)")


@app.middleware
def timing(call, call_next):
    """Log every call's duration."""
    started = time.perf_counter()
    try:
        return call_next(call)
    finally:
        log.info("handled", kind=call.kind, method=call.method,
                 ms=round((time.perf_counter() - started) * 1e3, 3))


@app.method()
def ping() -> str:
    return "pong"


app.include(stock.router)
