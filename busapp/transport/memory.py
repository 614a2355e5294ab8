"""An in-process broker for the test client: topic routing, queues, synchronous delivery.

:class:`MemoryTransport` is a :class:`~busapp.transport.base.Transport` over a
:class:`MemoryBroker` shared by every transport opened on the same ``memory://NAME``
URL. Nothing here knows about JSON-RPC: the Client and the worker above the seam are
the production ones, so the test client runs the real serve path (acks, redelivery
counting, dead-lettering, reply publishing, log context).

Delivery is synchronous, in the publishing thread, so a test sees every effect of a
call when the call returns:

- a message goes to its queue's consumer at once; a message published by a consumer
  while it handles another one is delivered right after that one is handled, in the
  order published (as from a broker queue, and deterministic);
- a queue without a consumer keeps its messages until one consumes it.

Settling follows the brokers: a delivery is unacknowledged until ``ack()``; ``requeue()``,
or closing its transport, gives it back to its queue flagged ``redelivered``; and
``set_prefetch(n)`` holds messages back while ``n`` are unacknowledged on the transport.
A delayed message waits in the broker until ``move_due`` finds it due (as on Redis), or
goes at once where the test client says so (``instant_delays``); a lease ends when its
holder's transport closes (as on RabbitMQ) or its time runs out (as on Redis).
An exchange exists once declared or bound to (a passive declare of another is False).

As on a broker, a request (a message with ``reply_to``) that no queue is bound to raises
:class:`~busapp.errors.NoRouteError` at once. Topic patterns follow AMQP: ``*`` is one word,
``#`` zero or more.
"""

from __future__ import annotations

import collections
import functools
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from busapp.errors import NoRouteError
from busapp.transport.base import Delivery, QueueSpec, topic_matches
from busapp.transport.memory_queue import _Consumer, _Queue, _Waiting
from busapp.transport.memory_time import Delays, Leases


#: NoRouteError is re-exported: it was defined here before the brokers raised it too.
__all__ = ["MemoryBroker", "MemoryTransport", "NoRouteError", "topic_matches"]


class MemoryBroker:
    """Exchanges, bindings and queues of one ``memory://NAME`` URL."""

    _registry: dict[str, MemoryBroker] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def named(cls, url: str) -> MemoryBroker:
        """The broker of ``url`` (made on first use)."""
        with cls._registry_lock:
            broker = cls._registry.get(url)
            if broker is None:
                broker = cls._registry[url] = cls()
            return broker

    @classmethod
    def forget(cls, url: str) -> None:
        """Drop the broker of ``url`` (its queues and bindings)."""
        with cls._registry_lock:
            cls._registry.pop(url, None)

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.queues: dict[str, _Queue] = {}
        self.bindings: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        self.exchanges: set[str] = set()
        self._routes: dict[tuple[str, str], list[_Queue]] = {}
        self._local = threading.local()  # .frames: deliveries held back per message in hand
        #: Told of every publish: ``tap(exchange, routing_key, body, reply_to)`` (the test
        #: client records notifications and events with one).
        self.taps: list[Callable[[str, str, bytes, str | None], None]] = []
        #: ``{key: monotonic expiry}``: the keys :meth:`claim` set (a Redis broker's SET NX PX).
        self.claims: dict[str, float] = {}
        #: Delayed messages (``instant``: delivered at once; the test client runs no clock).
        self.delays = Delays(self)
        #: Leases, ended by their TTL or their holder's closing.
        self.leases = Leases()

    def claim(self, key: str, ttl: float) -> bool:
        """Set ``key`` for ``ttl`` seconds unless it is set (True if this call set it)."""
        now = time.monotonic()
        with self.lock:
            claims = self.claims
            if len(claims) > 4096:  # forget the expired ones now and then
                for old in [k for k, until in claims.items() if until <= now]:
                    del claims[old]
            if claims.get(key, 0.0) > now:
                return False
            claims[key] = now + ttl
            return True

    def queue(self, name: str) -> _Queue:
        with self.lock:
            q = self.queues.get(name)
            if q is None:
                q = self.queues[name] = _Queue(name)
            return q

    def bind(self, exchange: str, pattern: str, queue: str) -> None:
        with self.lock:
            self.queue(queue)
            self.exchanges.add(exchange)
            if (pattern, queue) not in self.bindings[exchange]:
                self.bindings[exchange].append((pattern, queue))
                self._routes.clear()

    def delete(self, queue: str) -> None:
        with self.lock:
            self.queues.pop(queue, None)
            for table in self.bindings.values():
                table[:] = [b for b in table if b[1] != queue]
            self._routes.clear()

    def route(self, exchange: str, routing_key: str) -> list[_Queue]:
        if not exchange:
            q = self.queues.get(routing_key)
            return [q if q is not None else self.queue(routing_key)]
        key = (exchange, routing_key)
        route = self._routes.get(key)
        if route is None:
            with self.lock:
                names = dict.fromkeys(q for p, q in self.bindings.get(exchange, ())
                                      if topic_matches(p, routing_key))
                route = self._routes[key] = [self.queue(n) for n in names]
        return route

    def put(self, queue: _Queue, delivery: Delivery) -> None:
        """Queue ``delivery``: delivered now, or after the message this thread is handling.

        Delivered now, it has been handled when this returns, whichever thread handled it.
        """
        frames = getattr(self._local, "frames", None)
        if frames and delivery.reply_to is None:
            frames[-1].append((queue, delivery))  # handled after the message in hand
            return
        if not queue.waiting:
            consumer = queue.consumer()
            if consumer is not None:  # nothing older waits: no need to queue it
                self._deliver(consumer, delivery)
                return
        item = _Waiting(delivery)
        queue.waiting.append(item)
        self._pump(queue)
        item.wait_if_taken(queue)

    def give_back(self, deliveries: list[Delivery]) -> None:
        """Put unacknowledged ``deliveries`` back at the head of their queues, in this order,
        flagged redelivered (as a broker does on a requeue or a closed connection)."""
        touched: dict[str, _Queue] = {}
        for delivery in reversed(deliveries):
            queue = self.queues.get(delivery.queue or "")
            if queue is None:  # deleted since: the message went with it
                continue
            queue.waiting.appendleft(
                _Waiting(attrs.evolve(delivery, redelivered=True, ack=None, requeue=None)))
            touched[queue.name] = queue
        for queue in touched.values():
            self.pump_soon(queue)

    def pump_soon(self, queue: _Queue) -> None:
        """Deliver ``queue``'s waiting messages: now, or after the message this thread handles."""
        frames = getattr(self._local, "frames", None)
        if frames:
            frames[-1].append((queue, None))
        else:
            self._pump(queue)

    def _pump(self, queue: _Queue) -> None:
        """Deliver ``queue``'s waiting messages, oldest first, while it has a consumer.

        Threads may pump one queue at once: a message goes to whichever takes it first.
        """
        while queue.waiting:
            consumer = queue.consumer()
            if consumer is None:
                return
            try:
                item = queue.waiting.popleft()
            except IndexError:  # another thread took it
                return
            try:
                self._deliver(consumer, item.delivery)
            finally:
                item.finish()

    def _deliver(self, consumer: Callable[[Delivery], None], delivery: Delivery) -> None:
        frames = getattr(self._local, "frames", None)
        if frames is None:
            frames = self._local.frames = []
        held: list[tuple[_Queue, Delivery]] = []
        frames.append(held)
        try:
            consumer(delivery)
        finally:
            frames.pop()
        if not held:
            return
        # Everything the consumer published joins its queues first, then each is pumped:
        # so every queue sees its messages in the order they were published.
        # None: only pump (a message was given back, or acked).
        items = [(queue, _Waiting(later)) for queue, later in held if later is not None]
        for queue, item in items:
            queue.waiting.append(item)
        for queue in dict.fromkeys(q for q, _ in held):
            self._pump(queue)
        for queue, item in items:
            item.wait_if_taken(queue)

    def consume(self, queue: str, callback: Callable[[Delivery], None]) -> None:
        q = self.queue(queue)
        q.consumers.append(callback)
        self._pump(q)


class MemoryTransport:
    """A :class:`~busapp.transport.base.Transport` on the in-process broker of ``url``."""

    concurrent_ack = True
    max_body: int | None = None  # the worker checks sizes: nothing is read twice here
    heartbeat: float | None = None  # nothing to watch in process

    def __init__(self, url: str) -> None:
        self.url = url
        self.broker = MemoryBroker.named(url)
        self._consumed: list[tuple[str, _Consumer]] = []
        #: Deliveries handed over and not yet settled, by tag, oldest first.
        self._unacked: dict[int, Delivery] = {}
        self._tags = itertools.count()
        self._prefetch = 0

    def connect(self) -> None:
        """Nothing to open."""

    def declare_exchange(self, exchange: str, *, passive: bool = False) -> bool:
        """Declare ``exchange``; passively, True only if it was declared or bound to before."""
        if passive:
            return exchange in self.broker.exchanges
        self.broker.exchanges.add(exchange)
        return True

    def declare_queue(self, exchange: str, spec: QueueSpec) -> None:
        self.broker.queue(spec.name)
        for key in spec.binding_keys:
            self.broker.bind(exchange, key, spec.name)

    def publish(self, body: bytes, *, exchange: str, routing_key: str,
                headers: dict[str, Any] | None = None, reply_to: str | None = None,
                correlation_id: str | None = None, expiration: float | None = None,
                persistent: bool = False, content_type: str = "application/json") -> None:
        broker = self.broker
        for tap in broker.taps:
            tap(exchange, routing_key, body, reply_to)
        queues = broker.route(exchange, routing_key)
        if not queues and reply_to is not None:
            raise NoRouteError(self._no_route(exchange, routing_key))
        for queue in queues:
            delivery = Delivery(body, content_type, dict(headers) if headers else {}, routing_key,
                                reply_to, correlation_id, queue=queue.name)
            self.broker.put(queue, delivery)

    def _no_route(self, exchange: str, routing_key: str) -> str:
        bound = sorted({p for p, _ in self.broker.bindings.get(exchange, ())
                        if not p.startswith(("notify.", "busapp-control", "busapp-event."))})
        return (f"no service on the test bus consumes {routing_key!r}; "
                f"bindings: {', '.join(bound) or 'none'}; "
                f"register the service with client.register(...)")

    def publish_delayed(self, body: bytes, *, queue: str, delay: float,
                        headers: dict[str, Any] | None = None, correlation_id: str | None = None,
                        content_type: str = "application/json") -> None:
        delivery = Delivery(body, content_type, dict(headers) if headers else {}, queue, None,
                            correlation_id, queue=queue)
        self.broker.delays.add(delivery, delay)

    def move_due(self, queues: list[str]) -> int:
        return self.broker.delays.move_due(queues)

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return self.broker.leases.acquire(name, owner, ttl, self)

    def release_lease(self, name: str, owner: str) -> None:
        self.broker.leases.release(name, owner)

    def consume(self, queue: str, callback: Callable[[Delivery], None], *,
                no_ack: bool = False) -> None:
        consumer = _Consumer(self, callback, no_ack)
        self._consumed.append((queue, consumer))
        self.broker.consume(queue, consumer)

    def cancel(self) -> None:
        for queue, consumer in self._consumed:
            q = self.broker.queues.get(queue)
            if q is not None and consumer in q.consumers:
                q.consumers.remove(consumer)
        self._consumed.clear()

    def set_prefetch(self, count: int) -> None:
        """Hold messages back while ``count`` are unacknowledged here (0: no limit)."""
        self._prefetch = count
        self._pump_consumed()

    def _window_full(self) -> bool:
        return 0 < self._prefetch <= len(self._unacked)

    def _hold(self, delivery: Delivery) -> None:
        """Track ``delivery`` as unacked here until its ``ack()`` or ``requeue()``."""
        # No lock: next() on a count and a dict's item set and pop are each atomic, and
        # threads calling at once (the test client's) would queue on one here.
        tag = next(self._tags)
        self._unacked[tag] = delivery
        delivery._ack = functools.partial(self._settle, tag, False)
        delivery._requeue = functools.partial(self._settle, tag, True)

    def _settle(self, tag: int, requeue: bool) -> None:
        delivery = self._unacked.pop(tag, None)
        if delivery is None:
            return  # settled before, or given back when this transport closed
        if requeue:
            self.broker.give_back([delivery])
        elif self._prefetch:
            self._pump_consumed()  # the window has room again

    def _pump_consumed(self) -> None:
        for name in dict.fromkeys(name for name, _ in self._consumed):
            queue = self.broker.queues.get(name)
            if queue is not None and queue.waiting:
                self.broker.pump_soon(queue)

    def drain(self, timeout: float) -> bool:
        """Everything was delivered when it was published: just let the time pass (briefly)."""
        if timeout > 0:
            time.sleep(min(timeout, 0.001))
        return False

    def queue_depth(self, queue: str) -> int:
        q = self.broker.queues.get(queue)
        return len(q.waiting) if q is not None else 0

    def bound_queues(self, exchange: str) -> set[str] | None:
        return {q for _, q in self.broker.bindings.get(exchange, ())}

    def claim(self, key: str, ttl: float) -> bool:
        """Kept by the broker of this URL, as a Redis broker keeps it."""
        return self.broker.claim(key, ttl)

    def close(self, *, delete_queue: str | None = None) -> None:
        """Stop consuming and give back what was not acked (as a closed connection does)."""
        self.cancel()
        unacked = []
        while self._unacked:  # item by item: a delivery held meanwhile is not lost
            try:
                unacked.append(self._unacked.pop(next(iter(self._unacked))))
            except (KeyError, StopIteration, RuntimeError):  # settled or held meanwhile
                continue
        self.broker.give_back(unacked)
        self.broker.leases.drop(self)  # as a broker does a closed connection's
        if delete_queue:
            self.broker.delete(delete_queue)
