"""``redis://...``: Redis through redis-py.

Each model type is one hash, ``<prefix>:<TypeName>``, mapping primary keys
to canonical JSON (prefix ``busapp:storage`` unless the URL says
``?prefix=NAME``), and a second hash, ``<prefix>:<TypeName>:versions``,
mapping them to record versions (a record saved before versions existed, with
no entry there, is at version 1). Saves and deletes are Lua scripts, so
reading the old record and version, checking ``expect_version`` and writing
the new ones is one atomic step on the server.

``sentinel://S1:26379;sentinel://S2:26379/DB?master_name=NAME`` reaches the Redis master
the Sentinels name, and finds the new one after a failover (the URL form of busapp's
broker URLs, SPEC §11). A write Redis acknowledged just before the failover may be lost
with the old master if it had not reached a replica (Redis replicates asynchronously).

How durable a write is depends on the server's persistence settings
(``appendonly yes`` with ``appendfsync always`` or ``everysec``): busapp
publishes the event once Redis has applied the write.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from busapp.storage.backends.base import (
    CREATED,
    UNCHANGED,
    UPDATED,
    Backend,
    check_expect_version,
    conflict,
    encode,
    pop_option,
)

# KEYS: records hash, versions hash. ARGV: key, JSON, expected version ('' for any).
# Returns {outcome, version}: outcome -1 conflict, 0 unchanged, 1 created, 2 updated.
_SAVE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local version = 0
if old then version = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '1') end
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= version then return {-1, version} end
if old == ARGV[2] then return {0, version} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], version + 1)
if old then return {2, version + 1} end
return {1, 1}
"""

_DELETE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('HDEL', KEYS[2], ARGV[1])
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

            if self._redis_url.startswith("sentinel://"):
                client = sentinel_master(self._redis_url)
            else:
                client = redis.Redis.from_url(self._redis_url, socket_connect_timeout=10)
            self._save = client.register_script(_SAVE)
            self._delete = client.register_script(_DELETE)
            self._client = client
        return self._client

    def _key(self, type_name: str) -> str:
        return f"{self.prefix}:{type_name}"

    def _keys(self, type_name: str) -> list[str]:
        return [self._key(type_name), f"{self._key(type_name)}:versions"]

    def save(self, type_name: str, key: str, data: dict[str, Any],
             expect_version: int | None = None) -> str:
        check_expect_version(expect_version)
        self._redis()
        expected = "" if expect_version is None else str(expect_version)
        outcome, version = self._save(keys=self._keys(type_name),
                                      args=[key, encode(data), expected])
        if int(outcome) < 0:
            raise conflict(type_name, key, expect_version or 0, int(version))
        return (UNCHANGED, CREATED, UPDATED)[int(outcome)]

    def get_versioned(self, type_name: str, key: str) -> tuple[dict[str, Any], int] | None:
        records, versions = self._keys(type_name)
        with self._redis().pipeline(transaction=True) as pipe:  # MULTI: one consistent read
            text, version = pipe.hget(records, key).hget(versions, key).execute()
        return None if text is None else (json.loads(text), int(version or 1))

    def delete(self, type_name: str, key: str) -> dict[str, Any] | None:
        self._redis()
        text = self._delete(keys=self._keys(type_name), args=[key])
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


def sentinel_master(url: str) -> Any:
    """A redis-py client of the master the Sentinels of ``url`` name (``?master_name=``).

    Raises:
        ValueError: the URL names no master.
    """
    from redis.sentinel import Sentinel

    nodes = [urlsplit(node) for node in url.split(";")]
    query = dict(kv for node in nodes for kv in parse_qsl(node.query))
    master = query.get("master_name")
    if not master:
        raise ValueError("a sentinel:// store URL needs ?master_name=NAME (the Redis master "
                         "its Sentinels watch)")
    db = next((n.path.strip("/") for n in nodes if n.path.strip("/")), "0")
    password = next((n.password for n in nodes if n.password), None)
    sentinels = Sentinel([(n.hostname or "127.0.0.1", n.port or 26379) for n in nodes],
                         socket_connect_timeout=10)
    return sentinels.master_for(master, db=int(db), password=password, socket_connect_timeout=10)
