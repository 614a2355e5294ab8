"""Shipping: ships paid orders; every worker keeps a cache of quotes it drops on any change.

``forget`` is a broadcast handler: each worker of the App gets every ``orders.*`` event,
so no worker keeps a stale quote, whatever ``--workers`` says.
"""

from __future__ import annotations

import sqlite3

from busapp import App

from . import db

app = App("shipping")
app.add_dependency(db.connect, "db")

#: This worker's quotes: ``{order_id: price}``.
quotes: dict[str, int] = {}


@app.on_startup
def create_table(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY)")


@app.on_event("billing.paid")
def ship(order_id: str, db: sqlite3.Connection) -> None:
    """Ship a paid order (once, even if the event comes twice)."""
    db.execute("INSERT OR IGNORE INTO shipments VALUES (?)", (order_id,))


@app.on_event("orders.*", broadcast=True)
def forget(event: str, order_id: str) -> None:
    """Drop this worker's quote of an order that changed."""
    quotes.pop(order_id, None)


@app.method()
def quote(order_id: str) -> int:
    """A shipping price, cached by the worker that made it."""
    return quotes.setdefault(order_id, 5)


@app.method()
def shipped(order_id: str, db: sqlite3.Connection) -> bool:
    """Whether the order was shipped."""
    return db.execute("SELECT 1 FROM shipments WHERE order_id = ?", (order_id,)).fetchone() \
        is not None
