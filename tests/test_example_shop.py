"""examples/shop: orders emit, billing and shipping handle (one broadcast), a timer sweeps."""

from __future__ import annotations

import pytest

from busapp.testing import TestClient
from examples.shop import billing, orders, shipping


@pytest.fixture
def shop(tmp_path, monkeypatch):
    """The three Apps on one test client, on a database of the test's own."""
    monkeypatch.setenv("SHOP_DB", str(tmp_path / "shop.sqlite3"))
    with TestClient(orders.app) as client:
        client.register(billing.app)
        client.register(shipping.app)
        yield client


def test_placed_order_is_billed_paid_and_shipped(shop: TestClient) -> None:
    """One call: billing charges, orders marks it paid, shipping ships it, all before it returns."""
    order_id = shop.call("place", "apple", 2)
    assert shop.call("billing.invoice", order_id) == 6
    assert shop.call("status", order_id) == "paid"
    assert shop.call("shipping.shipped", order_id) is True


def test_every_shipping_worker_forgets_its_quote(shop: TestClient) -> None:
    """The broadcast handler drops the cached quote when the order changes."""
    shipping.quotes["o-1"] = 99
    shop.emit("orders.cancelled", order_id="o-1")
    assert "o-1" not in shipping.quotes


def test_sweep_cancels_unpaid_orders(shop: TestClient, monkeypatch) -> None:
    """An order over billing's limit stays unpaid; the sweep tick cancels it and says so."""
    monkeypatch.setattr(orders, "HOLD", 0.0)
    order_id = shop.call("place", "piano", 50)
    assert shop.call("status", order_id) == "placed"
    shop.tick("sweep")
    assert shop.call("status", order_id) == "cancelled"
    assert {"order_id": order_id} in shop.published("busapp-event.orders.cancelled")


def test_a_duplicate_event_bills_once(shop: TestClient) -> None:
    """At least once delivery: billing the same order twice charges it once."""
    order_id = shop.call("place", "pear", 1)
    shop.emit("orders.placed", order_id=order_id, item="pear", quantity=1)
    assert shop.call("billing.invoice", order_id) == 3
