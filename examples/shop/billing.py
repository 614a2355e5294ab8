"""Billing: charges each order it hears of, up to a limit per order (``billing.paid``)."""

from __future__ import annotations

import sqlite3

from busapp import App

from . import db

app = App("billing")
app.add_dependency(db.connect, "db")

#: Largest quantity charged without a human looking at it.
LIMIT = 10


@app.on_startup
def create_table(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS invoices (order_id TEXT PRIMARY KEY, amount INTEGER)")


@app.on_event("orders.placed")
def bill(order_id: str, quantity: int, db: sqlite3.Connection, bus) -> None:
    """Charge the order (once, even if the event comes twice) and say so."""
    if quantity > LIMIT:
        return  # left unpaid: the orders sweep cancels it
    db.execute("INSERT OR IGNORE INTO invoices VALUES (?, ?)", (order_id, quantity * 3))
    bus.emit("billing.paid", order_id=order_id)


@app.method()
def invoice(order_id: str, db: sqlite3.Connection) -> int | None:
    """The amount charged for an order (None: not charged)."""
    row = db.execute("SELECT amount FROM invoices WHERE order_id = ?", (order_id,)).fetchone()
    return row[0] if row else None
