"""What a worker leaves on the broker: removed by itself when it stops, by its manager when
it dies.

RabbitMQ gives a dead connection's unacknowledged messages back, deletes its auto-delete
queues and ends its leases itself. Redis does none of it: a worker's unacked messages
wait for the visibility timeout, its own queues (control, broadcast event handlers) stay
with their bindings, its timer lease lasts until its TTL, and with a keyring the replay
claims it made on the messages it held (:mod:`busapp.runtime.gate`) would refuse their
redelivered copies, so they are released as those messages are requeued. A worker that
stops deletes its own queues (:func:`forget_own_queues`); the manager calls
:func:`release_dead_worker` when one of its workers dies. What a worker killed with no
manager left (or whose manager died too) stays: its own queues keep collecting what their
bindings match until deleted
(``busapp status`` no longer lists the worker); its unacked messages come back after the
visibility timeout and its lease after its TTL.
"""

from __future__ import annotations

import os
import socket

from busapp import config, names
from busapp.entrypoints.control import control_queue
from busapp.log import get_logger
from busapp.transport import is_redis, open_transport
from busapp.transport.base import QueueSpec

log = get_logger("busapp.manager")


def mark_worker_process() -> None:
    """In a new worker process: name it as the owner of the messages it will hold unacked,
    so its manager can give them back at once should it die (Redis)."""
    os.environ[config.env_name("unacked_owner")] = names.unacked_owner(socket.gethostname(),
                                                                       os.getpid())


def release_dead_worker(url: str, exchange: str, service: str, pid: int,
                        own_queues: list[QueueSpec] | None = None,
                        lease: str | None = None) -> None:
    """Give back what worker ``pid`` (dead, on this host) held unacked, delete its control
    queue and ``own_queues`` (its broadcast queues), and end its hold of ``lease`` (its App's
    timer lease); a failure is logged (what is left comes back on its own, later)."""
    try:
        count = _requeue_unacked(url, pid)
    except Exception as exc:  # noqa: BLE001 - they come back after the visibility timeout
        log.warning("could not requeue the dead worker's messages; they come back after "
                    "the visibility timeout", pid=pid, error=str(exc))
    else:
        if count:
            log.info("dead worker's unacked messages requeued", pid=pid, messages=count)
    try:
        forget_worker(url, exchange, service, pid, own_queues or [])
    except Exception as exc:  # noqa: BLE001 - a stale control queue only costs a little memory
        log.warning("could not delete the dead worker's own queues", pid=pid, error=str(exc))
    if lease is not None and is_redis(url):
        try:
            release_lease(url, lease, names.unacked_owner(socket.gethostname(), pid))
        except Exception as exc:  # noqa: BLE001 - it ends with its TTL
            log.warning("could not end the dead worker's timer lease", pid=pid, error=str(exc))


def _requeue_unacked(url: str, pid: int) -> int:
    if not is_redis(url):
        return 0  # RabbitMQ requeues a dead connection's messages itself
    # Imported here: kombu loads only in a manager that has a worker to clean up after.
    from busapp.transport.kombu_setup import requeue_dead_worker

    return requeue_dead_worker(url, pid)


def forget_worker(url: str, exchange: str, service: str, pid: int,
                  own_queues: list[QueueSpec] | None = None) -> None:
    """Delete the control queue and ``own_queues`` of worker ``pid`` (on this host), killed
    before it could.

    RabbitMQ deletes an auto-delete queue when its consumer's connection dies; Redis
    keeps the list and its bindings, and every later broadcast would add to it.
    """
    forget_own_queues(url, exchange, [control_queue(service, pid, number=0), *(own_queues or [])])


def forget_own_queues(url: str, exchange: str, specs: list[QueueSpec]) -> None:
    """Delete ``specs`` (a worker's own queues) with their bindings, on Redis; elsewhere the
    broker deletes auto-delete queues itself. Best effort: a failure is logged."""
    if not specs or not is_redis(url):
        return
    try:
        for spec in specs:
            transport = open_transport(url)
            transport.connect()
            try:
                transport.declare_queue(exchange, spec)  # kombu unbinds only what it declared
            finally:
                transport.close(delete_queue=spec.name)
    except Exception as exc:  # noqa: BLE001 - a stale queue only costs a little memory
        log.warning("could not delete a worker's own queues", queues=[s.name for s in specs],
                    error=str(exc))


def release_lease(url: str, lease: str, owner: str) -> None:
    """End ``owner``'s (or any ``owner.<more>``'s) hold of ``lease``."""
    transport = open_transport(url)
    transport.connect()
    try:
        transport.release_lease(lease, owner)
    finally:
        transport.close()
