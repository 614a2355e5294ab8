"""busapp's kombu transport for Redis: kombu's own, minus its per-operation costs.

:class:`busapp.transport.kombu_transport.KombuTransport` uses :class:`Transport` for ``redis://``, ``rediss://``
and ``redis+socket://`` URLs. The wire format and the keys in Redis are exactly kombu's,
so busapp processes interoperate with plain kombu (and Commissaire) on the same broker.
What changes, measured with py-spy on an echo RPC (see BENCHMARKS.md):

- kombu builds a new ``redis.Redis`` object for almost every command
  (``Channel.conn_or_acquire()`` -> ``_create_client()``), which copies ~170 response
  callbacks each time. A channel here keeps one (it is thread-safe: every command takes a
  connection from the channel's pool) and makes a new one only when the pool is replaced.
- kombu reads the topic exchange's bindings (``SMEMBERS _kombu.binding.<exchange>``) on
  every publish, and matches every one with a regex: one extra round trip per request, and
  a cost that grows with the exchange (1,000 other bindings made a call 0.36x as fast). A
  channel here keeps each exchange's bindings indexed by the shape of their keys
  (:mod:`busapp.transport._bindings`: the same answer as kombu's, at the cost of the
  bindings that could match) and reads them again only when Redis says the set changed
  (:mod:`busapp.transport._tracking`: client-side caching in broadcast mode, one extra
  connection per publishing channel), whichever process changed it. A request sees the
  change as soon as its message has arrived (at once on loopback); an event publish
  (:meth:`Channel.forget_bindings`) waits for a ``PING``'s answer first, so a queue bound
  a moment ago anywhere gets it. A routing key that matches nothing makes a request read
  the bindings themselves before it is refused. On a server without client tracking
  every publish reads the bindings, as in kombu, unless ``binding_cache_ttl`` (transport
  option, default 0 = off) lets requests reuse them that long.
- kombu's ack emulation (``ZADD``+``HSET`` on delivery, ``ZREM``+``HDEL`` on ack) runs each
  pair in a ``MULTI``/``EXEC`` transaction. Here the pairs are sent as plain pipelines, one
  round trip each as before, without the transaction's two extra commands. Nothing reads
  the pair in between: unacked messages are only restored once older than the visibility
  timeout.

- kombu pushes a message bound for several queues (an event with many subscribers) with
  one round trip per queue; here they go in one pipeline (:class:`TopicExchange`).

Routing follows RabbitMQ, where kombu's own differs: ``#`` in a binding matches zero or more
words (kombu: one or more, so ``svc.#`` missed ``svc``), and an exchange this channel has not
declared routes as a topic exchange (kombu: as a direct one, dropping what a pattern binds).
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from time import monotonic
from typing import Any

import kombu
import structlog
from kombu.transport import redis as _kredis
from kombu.transport import virtual as _virtual
from kombu.utils import json as _kjson

from busapp import names
from busapp.transport._tracking import BindingWatcher
from busapp.transport import redis_entries as _entries
from busapp.transport import redis_state as _state
from busapp.transport.redis_routing import BindingRouting, TopicExchange
from busapp.transport.base import is_reply_queue

__all__ = ["Channel", "Connection", "QoS", "SentinelChannel", "SentinelTransport", "TopicExchange",
           "Transport"]

_log = structlog.get_logger("busapp.transport")




class QoS(_kredis.QoS):
    """kombu's Redis ack emulation, with non-transactional pipelines.

    With an ``unacked_owner`` (a worker's ``<host>.<pid>``), each unacked delivery tag is
    also kept in the set ``busapp.unacked.<owner>``, so that the manager can requeue the
    messages of a worker it saw die at once (:func:`requeue_owned`), instead of their
    waiting out the visibility timeout.
    """

    def append(self, message: Any, delivery_tag: str) -> None:
        owner = self.channel.owner_key
        if owner is None:
            return super().append(message, delivery_tag)
        info = message.delivery_info
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: _kredis.time()}) \
                .hset(self.unacked_key, delivery_tag,
                      _kjson.dumps([message._raw, info["exchange"], info["routing_key"]])) \
                .sadd(owner, delivery_tag).execute()
            _virtual.QoS.append(self, message, delivery_tag)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        owner = self.channel.owner_key
        return pipe if owner is None else pipe.srem(owner, delivery_tag)

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Any:
        if pipe:
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as client:
                yield client.pipeline(transaction=False)


class Message(_virtual.Message):
    """kombu's virtual message, minus decompression: the compression header is kept aside.

    kombu inflates a body whose ``compression`` header names a codec as soon as the
    message object is made, before busapp can check its size; busapp refuses such
    messages instead (see :attr:`busapp.transport.base.Delivery.compression`).
    """

    compression: str | None = None

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        headers = payload.get("headers") if isinstance(payload, dict) else None
        if not isinstance(headers, dict):
            headers = {}
        compression = headers.get("compression")
        if compression:
            payload = dict(payload, headers={k: v for k, v in headers.items()
                                             if k != "compression"})
        super().__init__(payload, channel, **kwargs)
        self.compression = compression


class Channel(BindingRouting):
    """kombu's Redis channel with one reused client and indexed, watched bindings."""

    QoS = QoS
    Message = Message
    exchange_types = dict(_kredis.Channel.exchange_types, topic=TopicExchange)

    def typeof(self, exchange: str, default: str = "topic") -> Any:
        """The type of ``exchange``; one this channel has not declared is a topic exchange
        (busapp declares no other kind; kombu's default, direct, ignores patterns)."""
        return super().typeof(exchange, default)

    #: Keep each exchange's bindings until Redis says they changed (transport option
    #: ``binding_tracking``; see :mod:`busapp.transport._tracking`). Off, or on a server
    #: without client tracking, every publish reads them (or see :attr:`binding_cache_ttl`).
    binding_tracking: bool = True

    #: Without the binding watch only: seconds a topic/direct exchange's bindings are reused
    #: (0, the default: read them on every publish). Opt in with the ``binding_cache_ttl``
    #: transport option or ``$BUSAPP_BINDING_CACHE_TTL``: it saves a round trip per request,
    #: but a queue bound elsewhere to keys that an older binding (even a stale one) already
    #: matches misses up to that long of requests.
    binding_cache_ttl: float = 0.0

    # kombu leaves it unannotated, so mypy takes the base's tuple for a fixed-length one
    from_transport_options = _kredis.Channel.from_transport_options + (  # type: ignore[assignment]
        "binding_cache_ttl", "binding_tracking", "max_entry_bytes", "unacked_owner")

    #: ``<host>.<pid>`` of the worker process consuming on this channel (see :class:`QoS`).
    unacked_owner: str | None = None

    @property
    def owner_key(self) -> str | None:
        owner = self.unacked_owner
        return None if owner is None else names.UNACKED_OWNER_PREFIX + owner

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sync_client: Any = None
        #: exchange -> its bindings as last read (see :meth:`_current_bindings`)
        self._tables: dict[str, Any] = {}
        #: exchanges whose next publish must see every binding change made before it
        self._fresh: set[str] = set()
        self._watcher: BindingWatcher | None = None
        self._watcher_retry = 0.0  # monotonic time before which no watcher is opened again
        super().__init__(*args, **kwargs)

    # -- one client per pool -------------------------------------------------------------

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        pool = self.pool  # a new pool after _disconnect_pools(): then a new client too
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()
        return client

    def _disconnect_pools(self) -> None:
        self._sync_client = None
        self._drop_watcher()
        super()._disconnect_pools()

    # -- entries that are not kombu messages ---------------------------------------------

    #: Largest queue entry (the JSON envelope, body base64-encoded) read as a message; a
    #: bigger one is moved aside unread. Set from the worker's ``max_body`` (transport
    #: option ``max_entry_bytes``); None: no limit.
    max_entry_bytes: int | None = None

    def _brpop_read(self, **options: Any) -> bool:
        """kombu's, but an entry that is too big or not a kombu message is moved aside.

        kombu ``json.loads`` each popped entry and builds its message before any consumer
        sees it: junk pushed straight onto the list would raise out of the consume loop on
        every poll. Such an entry goes to ``<queue>.dead`` with an error-level log line;
        the next one is served. One too big to read is not read at all (see
        :mod:`busapp.transport.redis_entries`): it is noted there, and its caller answered.
        """
        try:
            try:
                dest__item = _entries.read_bounded(self.client, self.max_entry_bytes)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next poll reconnects (as kombu does)
                raise
            if not dest__item:
                raise _virtual.Empty()
            key, item = dest__item
            dest = _kredis.bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            if isinstance(item, _entries.Unread):
                self._refuse_unread(dest, item)
                return True
            payload, problem = self._parse_entry(item)
            if problem is None:
                try:
                    self.connection._deliver(payload, dest)
                except self.connection_errors:
                    # Popped, but not recorded as unacked (kombu does that next, on the lost
                    # connection): nothing on the broker holds it any more. Push it back.
                    _orphan(_kredis.bytes_to_str(key), item)
                    raise
            else:
                self._move_aside(dest, item, problem)
            return True
        finally:
            # as kombu's own _brpop_read does; its class body types _in_poll as bool (False)
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.6
            if flush is not None:
                flush()

    def _brpop_start(self, timeout: Any = 1) -> Any:
        if _ORPHANS:
            self._return_orphans()
        return super()._brpop_start(timeout)

    def _return_orphans(self) -> None:
        """Push back, at the head of their queues, entries this process popped but lost hold of."""
        with self.conn_or_acquire() as client:
            while _ORPHANS:
                key, item = _ORPHANS[0]
                client.rpush(key, item)  # BRPOP takes from the right: it is served next
                with _ORPHANS_LOCK:
                    _ORPHANS.pop(0)
                _log.warning("a message taken just before the connection was lost was put "
                             "back on its queue", queue=key)

    def _parse_entry(self, item: bytes) -> tuple[Any, str | None]:
        limit = self.max_entry_bytes
        if limit is not None and len(item) > limit:
            return None, f"entry of {len(item)} bytes exceeds the limit of {limit} bytes"
        try:
            payload = json.loads(item)
        except ValueError as exc:
            return None, f"not JSON: {exc}"
        return payload, _state.entry_problem(payload)

    def _refuse_unread(self, queue: str, unread: _entries.Unread) -> None:
        """An entry too big to read: noted in ``<queue>.dead``, and its caller answered."""
        dead = f"{queue}.dead"
        with self.conn_or_acquire() as client:
            client.lpush(dead, _entries.unread_record(queue, unread, self.max_entry_bytes))
        _log.error("entry over the size limit dropped unread (noted in the dead-letter queue)",
                   queue=queue, dead_letter_queue=dead, size=unread.size,
                   limit=self.max_entry_bytes, reply_to=unread.field("reply_to"))
        message = _entries.unread_message(queue, unread)
        if message is not None:
            self.connection._deliver(message, queue)

    def _move_aside(self, queue: str, item: bytes, problem: str) -> None:
        dead = f"{queue}.dead"
        with self.conn_or_acquire() as client:
            client.lpush(dead, item)
        _log.error("bad entry in a Redis queue moved aside unread", queue=queue,
                   dead_letter_queue=dead, size=len(item), problem=problem)

    # -- replies to clients that went away ------------------------------------------------

    #: Milliseconds an unread reply list outlives its last push. A live client reads its
    #: replies at once (and Redis drops the emptied list); this only reaps the replies
    #: sent to a client that was killed or timed out and is gone.
    reply_expires_ms: int = 60_000

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        if not is_reply_queue(queue) or "_publish_batch" in kwargs:
            return super()._put(queue, message, **kwargs)
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            pipe.lpush(key, _kjson.dumps(message)).pexpire(key, self.reply_expires_ms).execute()


#: Entries this process popped from a queue and then could not hold on to (the connection
#: broke between kombu's BRPOP and its unacked record): ``(list key, raw entry)``. The next
#: channel of this process that polls pushes them back (:meth:`Channel._return_orphans`).
_ORPHANS: list[tuple[str, bytes]] = []
_ORPHANS_LOCK = threading.Lock()


def _orphan(key: str, item: bytes) -> None:
    with _ORPHANS_LOCK:
        _ORPHANS.append((key, item))


class Transport(_kredis.Transport):
    """kombu's Redis transport using busapp's :class:`Channel`."""

    Channel = Channel


class SentinelChannel(Channel, _kredis.SentinelChannel):
    """busapp's :class:`Channel` on a Redis master found through Sentinel.

    kombu's Sentinel channel gives the connection pool (it asks the Sentinels for the
    current master, and its connections find the new one after a failover); busapp's
    channel on top keeps its one client per pool, binding cache, pipelines, unacked
    owner sets and entry checks.
    """

    # see Channel.from_transport_options: kombu's base gives mypy a fixed-length tuple
    from_transport_options = tuple(dict.fromkeys(  # type: ignore[assignment]
        Channel.from_transport_options + _kredis.SentinelChannel.from_transport_options
        + ("replica_wait_ms",)))

    #: Milliseconds a publish waits for the master's replicas to have the message (Redis
    #: ``WAIT``; transport option ``replica_wait_ms``, 0: do not wait). Redis replicates
    #: asynchronously: without it, a message the master took just before it died may never
    #: reach the replica the Sentinels promote.
    replica_wait_ms: int = 500
    #: ``(monotonic time of the check, replicas connected to the master then)``.
    _replicas: tuple[float, int] = (-1e9, 0)

    def _put_many(self, queues: list[str], message: Any) -> None:
        for queue in queues:  # each publish waits for the replicas (see _put)
            self._put(queue, message)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        if (is_reply_queue(queue) or "_publish_batch" in kwargs or not self.replica_wait_ms
                or queue in self.queue_expiry):
            return super()._put(queue, message, **kwargs)
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client:
            replicas = self._replica_count(client)
            pipe = client.pipeline(transaction=False).lpush(key, _kjson.dumps(message))
            if replicas:  # on the LPUSH's own connection: WAIT covers that connection's writes
                pipe.execute_command("WAIT", replicas, self.replica_wait_ms)
            results = pipe.execute()
        acked = results[-1] if replicas else 0
        if replicas and acked < replicas:
            self._replicas = (-1e9, 0)  # a replica went away: count them again
            _log.warning("a message was published before every Redis replica had it",
                         queue=queue, replicas=replicas, confirmed=acked,
                         waited_ms=self.replica_wait_ms)

    def _replica_count(self, client: Any) -> int:
        """Replicas connected to the master now (checked at most once a second)."""
        checked, count = self._replicas
        now = monotonic()
        if now - checked > 1.0:
            count = int(client.info("replication").get("connected_slaves", 0))
            self._replicas = (now, count)
        return count


class SentinelTransport(_kredis.SentinelTransport):
    """kombu's Sentinel transport using busapp's :class:`SentinelChannel`."""

    Channel = SentinelChannel


class Connection(kombu.Connection):
    """A kombu Connection that uses :class:`Transport` where kombu would use its Redis transport.

    The URL is parsed by kombu as usual (so ``as_uri()``, ``clone()`` and ``redis+socket://``
    behave as in kombu); only the transport class is swapped (``sentinel://`` URLs get
    :class:`SentinelTransport`).
    """

    def get_transport_cls(self) -> type:
        cls = super().get_transport_cls()
        return _OURS.get(cls, cls)


#: kombu's Redis transports, and busapp's that replace them.
_OURS: dict[type, type] = {
    _kredis.Transport: Transport, _kredis.SentinelTransport: SentinelTransport}
