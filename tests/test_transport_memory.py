"""The in-memory broker under threads: a publish returns once its message was handled."""

from __future__ import annotations

import threading

from busapp.transport.base import Delivery
from busapp.transport.memory import MemoryBroker


def _message(name: str) -> Delivery:
    return Delivery(name.encode(), "application/json", {}, "q", None, None, queue="q")


def test_a_publish_waits_for_its_message_taken_by_another_thread() -> None:
    """When another thread's pump delivers this thread's message, the publish still returns
    only after the message was handled."""
    broker = MemoryBroker()
    queue = broker.queue("q")
    gates = {name: threading.Event() for name in ("m0", "m1", "x")}
    started = {name: threading.Event() for name in gates}
    handled: list[str] = []

    def consumer(delivery: Delivery) -> None:
        name = delivery.body.decode()
        started[name].set()
        gates[name].wait(5)
        handled.append(name)

    broker.put(queue, _message("m0"))  # no consumer yet: both wait in the queue
    broker.put(queue, _message("m1"))
    first = threading.Thread(target=broker.consume, args=("q", consumer))
    first.start()  # takes m0, held at its gate
    seen_by_publisher: list[list[str]] = []

    def publish_x() -> None:  # takes m1 (held), so x is left for whoever pumps next
        broker.put(queue, _message("x"))
        seen_by_publisher.append(list(handled))

    publisher = threading.Thread(target=publish_x)
    publisher.start()
    assert started["m1"].wait(5)  # x is queued behind m1, which the publisher handles
    gates["m0"].set()  # the first thread finishes m0 and takes x (held at its gate)
    assert started["x"].wait(5)
    gates["m1"].set()  # the publisher finishes m1: x is out of the queue, not yet handled
    publisher.join(0.5)
    assert publisher.is_alive()  # still waiting for x
    gates["x"].set()
    publisher.join(5)
    first.join(5)
    assert seen_by_publisher == [["m0", "m1", "x"]]
