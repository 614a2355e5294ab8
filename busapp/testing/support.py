"""What the test client serves with: a consumer with subscriptions only (for
:meth:`busapp.testing.TestClient.subscribe`), a service's Client per thread, and the records
of what was published and of what failed."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import attrs

from busapp.client.sync import Client
from busapp.core.pipeline import IncomingMessage
from busapp.entrypoints.storage_event import Subscription
from busapp.runtime.worker import rpc_entrypoints


@attrs.frozen
class Published:
    """One message published on the test bus: a notification or a plain message.

    ``kind`` is ``"notify"`` (JSON-RPC notification) or ``"publish"`` (plain
    JSON such as a storage event); ``body`` is the decoded JSON body.
    """

    routing_key: str
    body: Any
    kind: str


@attrs.frozen
class HandlerError:
    """An exception raised by a handler that had no caller to answer (event or notification)."""

    routing_key: str
    consumer: str
    exception: BaseException


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


class ClientPerThread:
    """A service's bus Client on the test bus: a real :class:`~busapp.bus.Client` per thread.

    The worker replies through its service's Client, and handlers call through it, each
    publish under that Client's lock; on the in-memory transport a call publishes from
    the caller's thread, so threads calling one service at once would all queue for that
    lock (and a nested call holds it for the whole call). With a Client per thread they
    do not. A thread's Client is closed when the thread ends (its garbage) or by
    :meth:`close`.
    """

    def __init__(self, service: Any) -> None:
        self._service = service
        self._local = threading.local()
        self._all: weakref.WeakSet[Client] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            service = self._service
            keyring = service.keyring  # the key CommissaireService._bus_client signs with
            own = keyring.own_key(service.key_name()) if keyring is not None else None
            client = self._local.client = Client(service.connection_url, service.exchange_name,
                                                 key=own)
            with self._lock:
                self._all.add(client)
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client(), name)

    def close(self) -> None:
        """Close every thread's Client."""
        with self._lock:
            clients = list(self._all)
        for client in clients:
            client.close()
