"""A consumer with subscriptions only, for :meth:`busapp.testing.TestClient.subscribe`."""

from __future__ import annotations

from typing import Any

from busapp.client.sync import Client
from busapp.core.pipeline import IncomingMessage
from busapp.entrypoints.storage_event import Subscription
from busapp.runtime.worker import rpc_entrypoints


class Listener:
    """A consumer with subscriptions only: what :meth:`TestClient.subscribe` registers."""

    qkwargs: list[dict[str, Any]] = []
    routing_keys: list[str] = []
    handlers: dict[str, Any] = {}

    def __init__(self, name: str, url: str, exchange: str, bus: Client) -> None:
        self.service_name = name
        self.connection_url = url
        self.exchange_name = exchange
        self.subscriptions: list[Subscription] = []
        self._bus = bus

    def queue_specs(self) -> list[Any]:
        return []

    def entrypoints(self, options: Any) -> list[Any]:
        return rpc_entrypoints(self, options)

    def _bus_client(self) -> Client:
        return self._bus

    def _context(self, info: IncomingMessage) -> dict[str, Any]:
        return {"message": info, "bus": self._bus, "storage": None}
