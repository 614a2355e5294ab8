"""``redis://...``: Redis through redis-py.

Each model type is one hash, ``<prefix>:<TypeName>``, mapping primary keys
to canonical JSON (prefix ``busapp:storage`` unless the URL says
``?prefix=NAME``). Saves and deletes are Lua scripts, so reading the old
record and writing the new one is one atomic step on the server.

How durable a write is depends on the server's persistence settings
(``appendonly yes`` with ``appendfsync always`` or ``everysec``): busapp
publishes the event once Redis has applied the write.
"""

from __future__ import annotations

import json
from typing import Any

from busapp.storage.backends import CREATED, UNCHANGED, UPDATED, Backend, encode, pop_option

# Returns 0 unchanged, 1 created, 2 updated.
_SAVE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old then return 2 end
return 1
"""

_DELETE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('HDEL', KEYS[1], ARGV[1]) end
return old
"""


class RedisBackend(Backend):
    """A redis-py client (thread-safe, fork-aware connection pool)."""

    handler_type = "RedisStoreHandler"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._redis_url, prefix = pop_option(url, "prefix")
        self.prefix = prefix or "busapp:storage"
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None or self._forked():
            import redis

            client = redis.Redis.from_url(self._redis_url, socket_connect_timeout=10)
            self._save = client.register_script(_SAVE)
            self._delete = client.register_script(_DELETE)
            self._client = client
        return self._client

    def _key(self, type_name: str) -> str:
        return f"{self.prefix}:{type_name}"

    def save(self, type_name: str, key: str, data: dict[str, Any]) -> str:
        self._redis()
        outcome = self._save(keys=[self._key(type_name)], args=[key, encode(data)])
        return (UNCHANGED, CREATED, UPDATED)[int(outcome)]

    def get(self, type_name: str, key: str) -> dict[str, Any] | None:
        text = self._redis().hget(self._key(type_name), key)
        return None if text is None else json.loads(text)

    def delete(self, type_name: str, key: str) -> dict[str, Any] | None:
        self._redis()
        text = self._delete(keys=[self._key(type_name)], args=[key])
        return None if text is None else json.loads(text)

    def list(self, type_name: str) -> list[dict[str, Any]]:
        found = self._redis().hgetall(self._key(type_name))
        return [json.loads(found[k]) for k in sorted(found, key=lambda k: k.decode("utf-8"))]

    def drop(self) -> None:
        """Delete every key under the prefix (tests use a prefix per run)."""
        client = self._redis()
        keys = list(client.scan_iter(match=f"{self.prefix}:*", count=500))
        if keys:
            client.delete(*keys)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prefix": self.prefix}

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
