"""examples/inventory: a router in its own module, a per-worker SQLite dependency,
a timing middleware."""

from __future__ import annotations

import sqlite3

import pytest
from structlog.testing import capture_logs

from busapp.errors import InternalError
from examples.inventory.app import app
from tests._services import run_app


def test_add_and_count_on_a_test_client(tmp_path, monkeypatch):
    """Items added through the router's method are counted, in the worker's own database."""
    monkeypatch.setenv("INVENTORY_DB", str(tmp_path / "inv.sqlite3"))
    with app.test_client() as client:
        assert client.call("add_item", "apple", 3) == 3
        assert client.call("add_item", sku="apple", quantity=2) == 5
        assert client.call("count", "pear") == 0
        with pytest.raises(InternalError, match="quantity must be positive"):
            client.call("add_item", "apple", 0)
    with sqlite3.connect(tmp_path / "inv.sqlite3") as conn:
        assert conn.execute("SELECT quantity FROM stock").fetchall() == [(5,)]


def test_the_connection_is_overridable():
    """A test swaps the database for an in-memory connection (a value, though callable);
    the provider is not run."""
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    with app.test_client(dependencies={"db": conn}) as client:
        client.call("add_item", "fig", 1)
    assert conn.execute("SELECT sku FROM stock").fetchall() == [("fig",)]


def test_timing_middleware_logs_each_call(tmp_path, monkeypatch):
    """The timing middleware logs one line per call with its method."""
    monkeypatch.setenv("INVENTORY_DB", str(tmp_path / "inv.sqlite3"))
    with app.test_client() as client, capture_logs() as logs:
        client.call("count", "apple")
    handled = [e for e in logs if e["event"] == "handled"]
    assert [(e["kind"], e["method"]) for e in handled] == [("call", "count")]
    assert handled[0]["ms"] >= 0


def test_inventory_on_a_broker(broker_url, exchange, tmp_path, monkeypatch):
    """On Redis and RabbitMQ with two workers, each with its own connection, the stock adds up."""
    monkeypatch.setenv("INVENTORY_DB", str(tmp_path / "inv.sqlite3"))
    from busapp import Client

    with run_app(app, broker_url, exchange, workers=2), Client(broker_url, exchange) as bus:
        for _ in range(10):
            bus.call("inventory.add_item", "nut", 1)
        assert bus.call("inventory.count", "nut") == 10
