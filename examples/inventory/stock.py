"""Stock methods, kept on a Router that app.py includes."""

from __future__ import annotations

import sqlite3

from busapp import Router

router = Router()


@router.method()
def add_item(sku: str, quantity: int, db: sqlite3.Connection) -> int:
    """Add ``quantity`` of ``sku``; returns the new count."""
    if quantity <= 0:
        raise ValueError(f"quantity must be positive, got {quantity}")
    # One statement in autocommit mode: atomic, even with the worker's handlers
    # sharing its connection from several threads.
    db.execute("INSERT INTO stock (sku, quantity) VALUES (?, ?) "
               "ON CONFLICT(sku) DO UPDATE SET quantity = quantity + excluded.quantity",
               (sku, quantity))
    return count(sku, db)


@router.method()
def count(sku: str, db: sqlite3.Connection) -> int:
    """How many of ``sku`` are in stock (0 if none)."""
    row = db.execute("SELECT quantity FROM stock WHERE sku = ?", (sku,)).fetchone()
    return row[0] if row else 0
