"""Redis: the queues each worker owns, alive while it beats, removed when it stops or dies.

A worker's own queues (its control queue, its queues of broadcast event handlers: any
queue only it consumes) must not outlive it: every binding left on an exchange slows
every publish on it and collects copies of what it matches. RabbitMQ deletes such a
queue itself (auto-delete, and ``x-expires`` for one never consumed). Redis keeps a
list and its bindings until someone deletes them, so each worker registers its own
queues under its owner name (:func:`busapp.names.queue_owner`) with a heartbeat::

    busapp.owners                 SET   every owner
    busapp.owned.<owner>          HASH  queue -> exchange
    busapp.alive.<owner>          key   expires ``ttl`` after the last beat

and they are removed, bindings and lists, by one Lua script each time:

- :meth:`OwnedQueues.drop` when the worker stops (and by its manager when it dies: every
  owner of that process, :meth:`OwnedQueues.drop_process`);
- :meth:`OwnedQueues.sweep` for every owner whose heartbeat expired (a worker killed with
  its manager, a lost host): run by each manager as it starts and by every worker now
  and then, so the queues go within about two ``ttl`` even if nothing starts again.

Only :mod:`busapp.transport.kombu_transport`'s connection is used (URL forms, TLS,
Sentinel); the key names are kombu's (``_kombu.binding.<exchange>``, priority lists).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis

from busapp import names
from busapp.errors import BrokerUnavailable
from busapp.transport.kombu_setup import _release, kombu_connection

#: Removes owners' queues: their bindings on each exchange and their lists, then the owner.
#: ARGV: mode (exact/process/sweep), owner or prefix, owners key, owned prefix, alive prefix,
#: binding prefix, permanent binding prefix ('' if none), sep, then the priority suffixes.
_DROP = """
local mode, who, owners, owned_p, alive_p, bind_p, perm_p, sep =
    ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local function drop(owner)
  local owned = redis.call('HGETALL', owned_p .. owner)
  for i = 1, #owned, 2 do
    local queue, exchange = owned[i], owned[i + 1]
    local tail = sep .. queue
    for _, prefix in ipairs({bind_p, perm_p}) do
      if prefix ~= '' then
        local key = prefix .. exchange
        for _, member in ipairs(redis.call('SMEMBERS', key)) do
          if string.sub(member, -#tail) == tail then redis.call('SREM', key, member) end
        end
      end
    end
    for j = 9, #ARGV do redis.call('DEL', queue .. ARGV[j]) end
  end
  redis.call('DEL', owned_p .. owner, alive_p .. owner)
  redis.call('SREM', owners, owner)
end
local dropped = {}
for _, owner in ipairs(redis.call('SMEMBERS', owners)) do
  local hit
  if mode == 'exact' then hit = owner == who
  elseif mode == 'process' then hit = string.sub(owner, 1, #who) == who
  else hit = redis.call('EXISTS', alive_p .. owner) == 0 end
  if hit then drop(owner); table.insert(dropped, owner) end
end
return dropped
"""


class OwnedQueues:
    """The registry of own queues on the Redis of ``url`` (one connection, made on first use).

    Raises BrokerUnavailable when Redis cannot be reached.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None
        self._client: Any = None
        self._script: Any = None
        self._layout: list[str] = []

    def _connect(self) -> Any:
        if self._client is None:
            conn = kombu_connection(self.url)
            try:
                conn.ensure_connection(max_retries=1)
                channel = conn.default_channel
                # A plain client on the channel's pool: the keys below carry any global
                # prefix themselves (kombu's prefixing client prefixes a script's first key).
                client = redis.Redis(connection_pool=channel.pool)
            except Exception:
                _release(conn)
                raise
            prefix = channel.global_keyprefix or ""
            permanent = getattr(channel, "keyprefix_binding_permanent", None)
            self._layout = [
                prefix + names.OWNERS_KEY, prefix + names.OWNED_PREFIX,
                prefix + names.ALIVE_PREFIX, prefix + channel.keyprefix_queue % "",
                prefix + permanent % "" if permanent else "", channel.sep,
                *(channel._q_for_pri("", p) for p in channel.priority_steps)]
            self._conn, self._client = conn, client
            self._script = client.register_script(_DROP)
        return self._client

    @contextlib.contextmanager
    def _guard(self) -> Iterator[Any]:
        """The client; any failure is BrokerUnavailable (and a new connection next time)."""
        try:
            yield self._connect()
        except Exception as exc:
            self.close()
            raise BrokerUnavailable(f"Redis unavailable for the own-queue registry: {exc}") \
                from exc

    def keep(self, owner: str, queues: dict[str, str], ttl: float) -> None:
        """Register ``queues`` (name -> exchange) as ``owner``'s and beat its heartbeat."""
        with self._guard() as client:
            owners, owned, alive = self._layout[:3]
            pipe = client.pipeline(transaction=False)
            if queues:
                pipe.hset(owned + owner, mapping=queues)
            pipe.sadd(owners, owner).set(alive + owner, "1", px=max(1, int(ttl * 1000)))
            pipe.execute()

    def drop(self, owner: str) -> list[str]:
        """Remove ``owner``'s queues (with their bindings) now: it stops."""
        return self._drop("exact", owner)

    def drop_process(self, host: str, pid: int) -> list[str]:
        """Remove the queues of every owner of process ``pid`` of ``host`` (it died)."""
        return self._drop("process", names.queue_owners_of(host, pid))

    def sweep(self) -> list[str]:
        """Remove the queues of every owner whose heartbeat expired; those owners."""
        return self._drop("sweep", "")

    def _drop(self, mode: str, who: str) -> list[str]:
        with self._guard() as client:
            dropped = self._script(keys=[], args=[mode, who, *self._layout], client=client)
        return [d.decode() if isinstance(d, bytes) else str(d) for d in dropped]

    def close(self) -> None:
        conn, self._conn, self._client, self._script = self._conn, None, None, None
        if conn is not None:
            _release(conn)
