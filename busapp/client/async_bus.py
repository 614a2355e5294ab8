"""The ``bus`` of ``async def`` handlers: an :class:`~busapp.client.aio.AsyncClient` per
service, made on first use."""

from __future__ import annotations

import threading
from typing import Any

from busapp.client.aio import DEFAULT_TIMEOUT, AsyncClient

class AsyncBus:
    """The ``bus`` an ``async def`` handler receives: ``await bus.call(...)``.

    It calls through one :class:`AsyncClient` per service, made on first use on the
    service's broker and exchange, and closed when the service stops.
    """

    def __init__(self, service: Any) -> None:
        self._service = service
        self._client: AsyncClient | None = None
        self._lock = threading.Lock()

    def client(self) -> AsyncClient:
        """The service's AsyncClient (made on first use)."""
        with self._lock:
            if self._client is None:
                service = self._service
                sync = service._bus_client()  # signs with the service's own key, if any
                self._client = AsyncClient(service.connection_url or sync.broker_url,
                                           service.exchange_name, key=getattr(sync, "key", None))
            return self._client

    async def call(self, routing_key: str, *args: Any, timeout: float | None = None,
                   **kwargs: Any) -> Any:
        """:meth:`AsyncClient.call`."""
        return await self.client().call(routing_key, *args, timeout=timeout, **kwargs)

    async def request(self, routing_key: str, params: Any = None,
                      timeout: float = DEFAULT_TIMEOUT) -> dict:
        """:meth:`AsyncClient.request`: the whole response dict."""
        return await self.client().request(routing_key, params, timeout=timeout)

    async def notify(self, routing_key: str, *args: Any, **kwargs: Any) -> None:
        """:meth:`AsyncClient.notify`."""
        await self.client().notify(routing_key, *args, **kwargs)

    async def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """:meth:`AsyncClient.publish`."""
        await self.client().publish(routing_key, body, persistent=persistent)

    async def emit(self, name: str, /, **payload: Any) -> str:
        """:meth:`AsyncClient.emit`."""
        return await self.client().emit(name, **payload)

    def close(self) -> None:
        """Close the AsyncClient, if one was made."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close_now()
