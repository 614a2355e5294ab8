"""What the in-process broker keeps time for: delayed messages and leases.

:class:`Delays` holds delayed messages until a consumer's ``move_due`` finds them due, as
busapp's Redis transport does (or delivers them at once, ``instant``, for the test client,
which runs no clock). :class:`Leases` end when their TTL runs out without a renewal, as on
Redis, or when their holder's transport closes, as on RabbitMQ.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any

from busapp.transport.base import Delivery


class Delays:
    """The delayed messages of one in-process broker."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        #: True: a delayed message goes to its queue at once.
        self.instant = False
        self._heap: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def add(self, delivery: Delivery, seconds: float) -> None:
        """Put ``delivery`` on its queue ``seconds`` from now."""
        if self.instant or seconds <= 0:
            self.broker.put(self.broker.queue(delivery.queue or ""), delivery)
            return
        with self._lock:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), delivery))

    def move_due(self, queues: list[str]) -> int:
        """Put the due delayed messages of ``queues`` on them, in order; how many."""
        now = time.monotonic()
        with self._lock:
            due = [item for item in self._heap if item[0] <= now and item[2].queue in queues]
            if due:
                self._heap = [item for item in self._heap if item not in due]
                heapq.heapify(self._heap)
        for _, _, delivery in sorted(due, key=lambda item: item[:2]):
            self.broker.put(self.broker.queue(delivery.queue or ""), delivery)
        return len(due)


class Leases:
    """``{lease name: (owner, expires at (monotonic time), holding transport)}``."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float, Any]] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str, owner: str, ttl: float, holder: Any) -> bool:
        """Take or keep lease ``name`` for ``owner`` (see ``Transport.acquire_lease``)."""
        now = time.monotonic()
        with self._lock:
            current = self._held.get(name)
            if current is not None and current[0] != owner and current[1] > now:
                return False
            self._held[name] = (owner, now + ttl, holder)
            return True

    def release(self, name: str, owner: str) -> None:
        """Drop lease ``name`` if ``owner`` (or ``owner.<more>``) holds it."""
        with self._lock:
            current = self._held.get(name)
            if current is not None and (current[0] == owner
                                        or current[0].startswith(owner + ".")):
                del self._held[name]

    def drop(self, holder: Any) -> None:
        """Drop every lease ``holder`` (a transport that closed) held."""
        with self._lock:
            for name, (_, _, held_by) in list(self._held.items()):
                if held_by is holder:
                    del self._held[name]
