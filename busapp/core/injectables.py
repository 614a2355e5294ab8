"""The types of what busapp injects into a handler, for its annotations. No I/O.

A handler that declares ``message``, ``bus`` or ``storage`` gets them from busapp, never
from the wire. Annotate them with these (re-exported as ``busapp.Message``,
``busapp.Bus``, ``busapp.AsyncBus``; ``busapp.Storage`` is the storage client) so a type
checker knows what they offer::

    from busapp import App, Bus, Message, Storage

    @app.method()
    def place(item: str, message: Message, bus: Bus, storage: Storage) -> str:
        bus.notify("audit.placed", item=item, by=message.caller)
        ...

Annotating one of these names with a type sent over the wire (``message: str``) is refused
when the function is registered: the name is reserved (:mod:`busapp.core.hints`).
"""

from __future__ import annotations

from typing import Any, Protocol

from busapp.core.pipeline import IncomingMessage

#: What ``message`` receives: the incoming message (body, routing key, headers, reply_to,
#: id, correlation id, the verified caller's key id).
Message = IncomingMessage


class Bus(Protocol):
    """What ``bus`` offers a plain ``def`` handler: the blocking calls of :class:`busapp.Client`."""

    def call(self, routing_key: str, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        """Call a method and return its result (raises its error)."""
        ...

    def request(self, routing_key: str, params: Any = None,
                timeout: float = ...) -> dict[str, Any]:
        """Send a request and return the whole JSON-RPC response."""
        ...

    def notify(self, routing_key: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification (no reply)."""
        ...

    def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON message on the exchange."""
        ...

    def emit(self, name: str, /, **payload: Any) -> str:
        """Publish the event ``name`` (``"<source>.<event>"``) to its subscribers."""
        ...


class AsyncBus(Protocol):
    """What ``bus`` offers an ``async def`` handler: :class:`Bus`'s calls, awaited."""

    async def call(self, routing_key: str, *args: Any, timeout: float | None = None,
                   **kwargs: Any) -> Any:
        """Call a method and return its result (raises its error)."""
        ...

    async def request(self, routing_key: str, params: Any = None,
                      timeout: float = ...) -> dict[str, Any]:
        """Send a request and return the whole JSON-RPC response."""
        ...

    async def notify(self, routing_key: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification (no reply)."""
        ...

    async def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON message on the exchange."""
        ...

    async def emit(self, name: str, /, **payload: Any) -> str:
        """Publish the event ``name`` (``"<source>.<event>"``) to its subscribers."""
        ...
