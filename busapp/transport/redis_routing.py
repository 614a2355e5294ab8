"""How busapp's Redis channel routes a publish: by an index of the exchange's bindings,
read again only when Redis says they changed (see :mod:`busapp.transport._bindings` and
:mod:`busapp.transport._tracking`). Mixed into :class:`busapp.transport.redis.Channel`.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

import structlog
from kombu.transport import redis as _kredis
from kombu.transport.virtual import exchange as _vexchange
from kombu.utils import json as _kjson

from busapp.errors import NoRouteError
from busapp.transport._bindings import BindingIndex
from busapp.transport._tracking import BindingWatcher
from busapp.transport.base import is_reply_queue, topic_matches

_log = structlog.get_logger("busapp.transport")


class _Table:
    """An exchange's bindings as a channel read them, and what says they are still current."""

    __slots__ = ("index", "members", "watcher", "generation", "expires", "just_read")

    def __init__(self, index: BindingIndex, members: frozenset[bytes],
                 watcher: BindingWatcher | None, generation: Any, expires: float) -> None:
        self.index = index  # its topic says how the table was read (topic or direct)
        self.members = members  # as SMEMBERS returned them
        self.watcher = watcher        # current while its generation of the key is unchanged
        self.generation = generation
        self.expires = expires        # without a watcher: current until then (the TTL, or 0)
        self.just_read = True


class TopicExchange(_vexchange.TopicExchange):
    """kombu's topic exchange, matching as RabbitMQ does: ``#`` is zero or more words.

    Matched on each binding's key, not on the regex the binding process stored with it, so
    a binding routes the same whichever kombu made it. A message for several queues (an
    event, a storage event) is pushed to all of them in one pipeline (one round trip), not
    with a round trip per queue as kombu does; what each queue gets is the same.
    """

    def lookup(self, table: Any, exchange: str, routing_key: str, default: Any) -> set[str]:
        return {queue for key, _, queue in table if topic_matches(key, routing_key)}

    def deliver(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> None:
        channel = self.channel
        queues = [q for q in channel._lookup(exchange, routing_key)
                  if q and q != channel.deadletter_queue]
        if len(queues) > 1 and "_publish_batch" not in kwargs \
                and not any(is_reply_queue(q) for q in queues):
            channel._put_many(queues, message)
            return
        for queue in queues:
            channel._put(queue, message, **kwargs)


class BindingRouting(_kredis.Channel):
    """The routing half of :class:`busapp.transport.redis.Channel` (kombu's ``_lookup``,
    ``_queue_bind`` and ``_delete``, indexed and watched)."""

    #: Seconds before a lost binding watch connection is opened again.
    WATCHER_RETRY = 1.0

    _must_route = False
    # Set by the channel (kombu's Channel and busapp's options).
    _fresh: set[str]
    _tables: dict[str, Any]
    _watcher: Any
    _watcher_retry: float
    binding_tracking: bool
    binding_cache_ttl: float

    def _route(self, exchange: str, routing_key: str, topic: bool) -> frozenset[str]:
        """The queues bound to ``routing_key`` on ``exchange`` (a topic or direct one)."""
        fresh = exchange in self._fresh
        self._fresh.discard(exchange)
        table = self._current_bindings(exchange, topic, fresh)
        found = table.index.lookup(routing_key)
        if not found and not fresh and not table.just_read:
            # A request for a service that just started: read the bindings themselves
            # before calling it unroutable (its invalidation may still be on the way).
            table = self._read_bindings(exchange, topic, self._watcher)
            found = table.index.lookup(routing_key)
        return found

    def _current_bindings(self, exchange: str, topic: bool, fresh: bool) -> _Table:
        """``exchange``'s bindings, read again only if they may have changed since.

        ``fresh``: every change made before this call must be seen (an event publish).
        """
        watcher = self._binding_watcher()
        if watcher is not None:
            try:
                watcher.sync() if fresh else watcher.poll()
            except Exception as exc:  # noqa: BLE001 - read the table itself from now on
                self._drop_watcher(exc)
                watcher = None
        table = self._tables.get(exchange)
        if table is not None and table.index.topic == topic:
            if watcher is not None and table.watcher is watcher:
                if table.generation == watcher.generation(self.keyprefix_queue % exchange):
                    table.just_read = False
                    return table
            elif watcher is None and not fresh and table.expires > monotonic():
                table.just_read = False
                return table
        return self._read_bindings(exchange, topic, watcher)

    def _read_bindings(self, exchange: str, topic: bool, watcher: Any) -> _Table:
        key = self.keyprefix_queue % exchange
        generation = watcher.generation(key) if watcher is not None else None
        with self.conn_or_acquire() as client:  # after noting the generation
            members = frozenset(client.smembers(key))
        old = self._tables.get(exchange)
        if old is not None and old.members == members and old.index.topic == topic:
            index = old.index  # unchanged (a publish without the watch reads every time)
        else:  # the rows kombu's get_table makes of them
            rows = [tuple(_kredis.bytes_to_str(m).split(self.sep)) for m in members]
            index = BindingIndex(rows, topic)
        table = _Table(index, members, watcher, generation,
                       monotonic() + self.binding_cache_ttl)
        self._tables[exchange] = table
        return table

    def _binding_watcher(self) -> BindingWatcher | None:
        watcher = self._watcher
        if watcher is not None:
            if watcher.usable:
                return watcher
            self._watcher = None  # a forked child: the socket is the parent's
        if not self.binding_tracking or monotonic() < self._watcher_retry:
            return None
        try:
            watcher = BindingWatcher.start(self.pool)
        except Exception as exc:  # noqa: BLE001 - try again later; read tables meanwhile
            self._watcher_retry = monotonic() + self.WATCHER_RETRY
            _log.debug("could not open the binding watch connection", error=str(exc))
            return None
        if watcher is None:  # the server cannot track keys: never ask again
            self.binding_tracking = False
            _log.info("Redis has no client tracking (CLIENT TRACKING, Redis >= 6): each "
                      "publish reads its exchange's bindings")
        self._watcher = watcher
        return watcher

    def _drop_watcher(self, exc: BaseException | None = None) -> None:
        watcher, self._watcher = self._watcher, None
        self._tables.clear()
        if watcher is not None:
            watcher.close()
        if exc is not None:
            self._watcher_retry = monotonic() + self.WATCHER_RETRY
            _log.warning("binding watch connection failed; reading bindings on each publish "
                         "until it is open again", error=str(exc) or type(exc).__name__)

    def publish_request(self, message: Any, exchange: str, routing_key: str) -> None:
        """Publish a request; raise :class:`~busapp.errors.NoRouteError` if no queue is bound
        to ``routing_key`` (kombu would drop it silently, and its caller would time out)."""
        self._must_route = True
        try:
            self.basic_publish(message, exchange=exchange, routing_key=routing_key)
        finally:
            self._must_route = False

    def _lookup(self, exchange: str, routing_key: str, default: Any = None) -> Any:
        kind = self.typeof(exchange).type if exchange else None
        if kind not in ("topic", "direct"):  # the anonymous exchange, fanout: kombu's way
            return super()._lookup(exchange, routing_key, default)
        found = self._route(exchange, routing_key, kind == "topic")
        if not found and self._must_route:
            raise NoRouteError(f"no queue is bound to {routing_key!r} on exchange {exchange!r}: "
                               f"no service consumes it")
        if not found and (default if default is not None else self.deadletter_queue):
            return super()._lookup(exchange, routing_key, default)  # kombu's dead-letter path
        return found

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        self._tables.pop(exchange, None)
        super()._queue_bind(exchange, routing_key, pattern, queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self._tables.clear()
        super()._delete(queue, *args, **kwargs)

    @property
    def queue_expiry(self) -> dict[str, int]:
        """The expiry (ms) of each queue declared with one (kombu 5.3 keeps none)."""
        return getattr(self, "_expires", None) or {}

    def _put_many(self, queues: list[str], message: Any) -> None:
        """What kombu's ``_put`` does for each of ``queues`` (``LPUSH``, and ``PEXPIRE`` for a
        queue with an expiry), in one pipeline."""
        payload = _kjson.dumps(message)
        priority = self._get_message_priority(message, reverse=False)
        expires = self.queue_expiry
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.lpush(self._q_for_pri(queue, priority), payload)
                if queue in expires:
                    for step in self.priority_steps:
                        pipe.pexpire(self._q_for_pri(queue, step), expires[queue])
            pipe.execute()

    def forget_bindings(self, exchange: str) -> None:
        """Have the next publish on ``exchange`` see every binding change made before it.

        For fan-out publishes (storage events): a subscriber that bound its queue a
        moment ago, in any process, must get the next event. With the binding watch on,
        this costs the next publish one ``PING`` (:meth:`BindingWatcher.sync`), not a
        read of the whole table.
        """
        self._fresh.add(exchange)
