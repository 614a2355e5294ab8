"""What busapp keeps on a kombu broker besides messages: delayed messages, leases, replay
claims (the part of :class:`~busapp.transport.kombu_transport.KombuTransport` that is not
publishing or consuming).
"""

from __future__ import annotations

from typing import Any

from busapp import config

from busapp.transport import amqp as _amqp
from busapp.transport import redis_state as _redis


class BrokerState:
    """Delayed messages, leases and claims, on Redis (Lua scripts) or RabbitMQ (queues).

    Mixed into :class:`~busapp.transport.kombu_transport.KombuTransport`, whose connection
    and guard it uses.
    """

    redis: bool
    channel: Any
    _guard: Any
    _conn: Any
    _leases: Any
    _delays: Any

    def publish_delayed(self, body: bytes, *, queue: str, delay: float,
                        headers: dict[str, Any] | None = None, correlation_id: str | None = None,
                        content_type: str = "application/json") -> None:
        properties: dict[str, Any] = {"delivery_mode": 2}
        if correlation_id is not None:
            properties["correlation_id"] = correlation_id
        delay_ms = max(1, int(delay * 1000))
        with self._guard():
            channel = self.channel
            message = channel.prepare_message(body, 0, content_type, "utf-8", headers or {},
                                              properties)
            if self.redis:
                _redis.publish_delayed(channel, message, queue, delay_ms)
            else:
                _amqp.publish_delayed(channel, self._delays, message, queue, delay_ms)

    def move_due(self, queues: list[str]) -> int:
        if not self.redis or not queues:
            return 0  # RabbitMQ moves them itself
        with self._guard():
            return _redis.move_due(self.channel, queues)

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        with self._guard():
            if self.redis:
                return _redis.acquire_lease(self.channel, name, owner, int(ttl * 1000))
            if self._leases is None:
                self.channel  # noqa: B018 - connects if not yet connected
                self._leases = _amqp.Leases(self._conn.connection)
            return self._leases.acquire(name, owner)

    def release_lease(self, name: str, owner: str) -> None:
        with self._guard():
            if self.redis:
                _redis.release_lease(self.channel, name, owner)
            elif self._leases is not None:
                self._leases.release(name, owner)

    def claim(self, key: str, ttl: float) -> bool | None:
        """``SET key <owner> NX PX ttl`` on Redis (the owner, ``<host>.<pid>`` of a managed
        worker, lets its manager release the claims of a worker that died mid-message: see
        :func:`busapp.transport.redis.release_claims`); None on RabbitMQ."""
        if not self.redis:
            return None
        owner = config.get("unacked_owner") or "-"
        with self._guard(), self.channel.conn_or_acquire() as client:
            return bool(client.set(key, owner, nx=True, px=max(1, int(ttl * 1000))))
