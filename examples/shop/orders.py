"""Orders: takes orders, tells the others (``orders.placed``), and cancels the unpaid ones.

An order waits for ``billing.paid``; the ``sweep`` timer cancels orders still unpaid after
``SHOP_HOLD_SECONDS`` (default 60) and emits ``orders.cancelled``. It runs once per tick
for the whole App, whatever ``--workers`` says.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid

from busapp import App

from . import db

app = App("orders")
app.add_dependency(db.connect, "db")

#: Seconds an order may stay unpaid.
HOLD = float(os.environ.get("SHOP_HOLD_SECONDS", "60"))


@app.on_startup
def create_table(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, item TEXT, "
               "quantity INTEGER, placed REAL, status TEXT)")


@app.method()
def place(item: str, quantity: int, db: sqlite3.Connection, bus) -> str:
    """Take an order; returns its id. Billing and shipping hear of it."""
    order_id = uuid.uuid4().hex[:8]
    db.execute("INSERT INTO orders VALUES (?, ?, ?, ?, 'placed')",
               (order_id, item, quantity, time.time()))
    bus.emit("orders.placed", order_id=order_id, item=item, quantity=quantity)
    return order_id


@app.method()
def status(order_id: str, db: sqlite3.Connection) -> str:
    """``placed``, ``paid``, ``cancelled``, or ``unknown``."""
    row = db.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone()
    return row[0] if row else "unknown"


@app.on_event("billing.paid")
def paid(order_id: str, db: sqlite3.Connection) -> None:
    """Billing took the money."""
    db.execute("UPDATE orders SET status = 'paid' WHERE id = ? AND status = 'placed'",
               (order_id,))


@app.timer(every=30)
def sweep(db: sqlite3.Connection, bus) -> None:
    """Cancel the orders still unpaid after HOLD seconds."""
    expired = db.execute("SELECT id FROM orders WHERE status = 'placed' AND placed <= ?",
                         (time.time() - HOLD,)).fetchall()
    for (order_id,) in expired:
        db.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (order_id,))
        bus.emit("orders.cancelled", order_id=order_id)
