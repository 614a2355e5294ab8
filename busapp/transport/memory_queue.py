"""The in-memory broker's queues: their waiting messages and their consumers in turn
(each with its prefetch window). See :mod:`busapp.transport.memory`."""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from busapp.transport.base import Delivery

if TYPE_CHECKING:
    from busapp.transport.memory import MemoryTransport


class _Queue:
    __slots__ = ("name", "consumers", "waiting", "turn")

    def __init__(self, name: str) -> None:
        self.name = name
        self.consumers: list[Callable[[Delivery], None]] = []
        self.waiting: collections.deque[_Waiting] = collections.deque()
        self.turn = itertools.count()

    def consumer(self) -> Callable[[Delivery], None] | None:
        """The next consumer in turn with room for a message (see :attr:`_Consumer.full`)."""
        consumers = self.consumers
        if len(consumers) < 2:
            first = consumers[0] if consumers else None
            return None if first is None or getattr(first, "full", False) else first
        for _ in range(len(consumers)):
            consumer = consumers[next(self.turn) % len(consumers)]
            if not getattr(consumer, "full", False):
                return consumer
        return None


class _Waiting:
    """A message in a queue's backlog, and whether its delivery is over."""

    __slots__ = ("delivery", "done", "event")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.done = False
        self.event: threading.Event | None = None

    def finish(self) -> None:
        """Its consumer has returned (and what that published has been delivered)."""
        self.done = True  # before reading the event: see wait_if_taken
        event = self.event
        if event is not None:
            event.set()

    def wait_if_taken(self, queue: _Queue) -> None:
        """Wait until the delivery is over if another thread took it from ``queue``.

        So a publish returns after its message was handled even when another thread's pump
        took it first. A message still in the backlog (no consumer yet) is not waited for.
        """
        if self.done:
            return
        waiting = queue.waiting
        try:  # still in the backlog: most often its last item (a scan of it is O(backlog))
            last = waiting[-1]
        except IndexError:
            last = None
        if last is self or self in waiting:
            return
        self.event = event = threading.Event()  # before reading done: see finish
        if not self.done:
            event.wait()


class _Consumer:
    """A transport's consumer of one queue: what it hands over stays unacked until settled."""

    __slots__ = ("transport", "callback", "no_ack")

    def __init__(self, transport: MemoryTransport, callback: Callable[[Delivery], None],
                 no_ack: bool) -> None:
        self.transport = transport
        self.callback = callback
        self.no_ack = no_ack

    @property
    def full(self) -> bool:
        """True while its transport's prefetch window is used up (no_ack: never)."""
        return not self.no_ack and self.transport._window_full()

    def __call__(self, delivery: Delivery) -> None:
        if not self.no_ack:
            self.transport._hold(delivery)
        self.callback(delivery)
