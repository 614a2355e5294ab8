"""Run real services in forked processes for integration tests, and clean up after them."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

from busapp import Client
from busapp.errors import BrokerUnavailable, RequestTimeout

_ctx = multiprocessing.get_context("fork")


def wait_until_served(url: str, exchange: str, routing_key: str, *args: Any,
                      deadline: float = 20.0) -> Any:
    """Call ``routing_key`` until a reply comes (the service's queue is bound), return it."""
    end = time.monotonic() + deadline
    with Client(url, exchange, timeout=0.5) as bus:
        while True:
            try:
                return bus.call(routing_key, *args)
            except (RequestTimeout, BrokerUnavailable):
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)  # NoRouteError comes at once while the queue is not bound yet


def delete_queues(url: str, exchange: str, *queues: str) -> None:
    """Best-effort removal of named queues and the exchange a test created."""
    from kombu import Exchange, Queue

    from busapp.transport.kombu_setup import kombu_connection

    with kombu_connection(url) as conn:  # busapp's: it reads sentinel:// URLs' ?master_name=
        channel = conn.channel()
        for name in queues:
            with contextlib.suppress(Exception):
                Queue(name, channel=channel).delete()
                channel = conn.channel()
        with contextlib.suppress(Exception):
            Exchange(exchange, "topic", channel=channel).delete()


@contextlib.contextmanager
def running(target: Any, *, ready: str | None = None, ready_args: tuple = (),
            url: str, exchange: str, cleanup_queues: tuple[str, ...] = ()) -> Iterator[Any]:
    """Run ``target()`` in a forked process; yield the process; SIGTERM it and clean up."""
    process = _ctx.Process(target=target, daemon=False)
    process.start()
    try:
        if ready:
            wait_until_served(url, exchange, ready, *ready_args)
        yield process
    finally:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
            process.join(30)
        if process.is_alive():
            process.kill()
            process.join(5)
        delete_queues(url, exchange, *cleanup_queues)


def run_app(app: Any, url: str, exchange: str, **kwargs: Any):
    """A context manager running ``app`` on a real broker until the block ends."""
    queue = app.queue_for(exchange)
    return running(
        lambda: app.run(url, exchange=exchange, **kwargs),
        ready=f"{app.name}.ping", url=url, exchange=exchange,
        cleanup_queues=(queue, *(h.queue_name(queue) for h in app.storage_handlers)),
    )
