"""Apps with event handlers and timers, run by the broker tests with ``busapp run``.

Each handler appends a line to ``<$EVENT_TEST_DIR>/<file>.log`` (``<pid> <what>``): a
write of one short line to a file opened for appending is atomic, so workers in several
processes can record side by side, and the test counts what each App handled.
"""

from __future__ import annotations

import os
import time

from busapp import App


def record(file: str, what: object) -> None:
    """Append ``<pid> <what>`` to ``<file>.log`` in the test's directory."""
    path = os.path.join(os.environ.get("EVENT_TEST_DIR", "."), f"{file}.log")
    with open(path, "a") as log:
        log.write(f"{os.getpid()} {what}\n")


def tries(key: str) -> int:
    """How many times ``key`` was tried before, across processes (counted in a file)."""
    return len(read(f"tries-{key}"))


def read(file: str) -> list[tuple[int, str]]:
    """The ``(pid, what)`` lines of ``<file>.log`` (none yet: [])."""
    path = os.path.join(os.environ.get("EVENT_TEST_DIR", "."), f"{file}.log")
    try:
        with open(path) as log:
            lines = log.read().splitlines()
    except FileNotFoundError:
        return []
    return [(int(pid), what) for pid, _, what in (line.partition(" ") for line in lines)]


billing = App("billing")


@billing.method()
def ping() -> str:
    return "pong"


@billing.on_event("orders.placed")
def bill(order_id: int) -> None:
    record("billing", order_id)


shipping = App("shipping")
shipping.add_method(ping)


@shipping.on_event("orders.placed")
def ship(order_id: int) -> None:
    record("shipping", order_id)


@shipping.on_event("orders.placed", broadcast=True)
def forget(order_id: int) -> None:
    record("shipping-broadcast", order_id)


flaky = App("flaky")
flaky.add_method(ping)


@flaky.on_event("jobs.flaky")
def twice(job: str) -> None:
    """Fails the first two tries of each job, then records it."""
    record(f"tries-{job}", time.time())
    if tries(job) <= 2:
        raise RuntimeError(f"try {tries(job)} of {job} fails")
    record("flaky", job)


@flaky.on_event("jobs.broken", retries=2)
def broken(job: str) -> None:
    record("broken", time.time())
    raise RuntimeError(f"{job} always fails")


@flaky.on_event("jobs.fine")
def fine(job: str) -> None:
    record("fine", job)


clock = App("clock")
clock.add_method(ping)


@clock.timer(every=1)
def beat() -> None:
    record("beat", f"{time.time():.3f}")


bench = App("bench")
bench.add_method(ping)


@bench.method()
def echo(data: str) -> str:
    return data


@bench.method()
def sink(n: int, last: int) -> None:
    """A notification's handler: records when the last one of a run arrives."""
    if n == last:
        record("sink", f"{time.time():.6f}")


@bench.on_event("bench.tick")
def sink_event(n: int, last: int) -> None:
    """An event's handler: records when the last one of a run arrives."""
    if n == last:
        record("sink-event", f"{time.time():.6f}")
