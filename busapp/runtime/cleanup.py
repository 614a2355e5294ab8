"""What a dead worker leaves on the broker, removed by the manager that outlived it.

RabbitMQ gives a dead connection's unacknowledged messages back and deletes its
auto-delete queues itself. Redis does neither: a worker's unacked messages wait for the
visibility timeout, and its control queue (with its bindings) stays; with a keyring, the
replay claims it made on the messages it held (:mod:`busapp.runtime.gate`) would also
refuse their redelivered copies, so they are released as those messages are requeued.
The manager calls :func:`release_dead_worker` when one of its workers dies.
"""

from __future__ import annotations

import os
import socket

from busapp import config, names
from busapp.entrypoints.control import control_queue
from busapp.log import get_logger
from busapp.transport import is_redis, open_transport

log = get_logger("busapp.manager")


def mark_worker_process() -> None:
    """In a new worker process: name it as the owner of the messages it will hold unacked,
    so its manager can give them back at once should it die (Redis)."""
    os.environ[config.env_name("unacked_owner")] = names.unacked_owner(socket.gethostname(),
                                                                       os.getpid())


def release_dead_worker(url: str, exchange: str, service: str, pid: int) -> None:
    """Give back what worker ``pid`` (dead, on this host) held unacked, and delete its
    control queue; a failure is logged (what is left comes back on its own, later)."""
    try:
        count = _requeue_unacked(url, pid)
    except Exception as exc:  # noqa: BLE001 - they come back after the visibility timeout
        log.warning("could not requeue the dead worker's messages; they come back after "
                    "the visibility timeout", pid=pid, error=str(exc))
    else:
        if count:
            log.info("dead worker's unacked messages requeued", pid=pid, messages=count)
    try:
        forget_worker(url, exchange, service, pid)
    except Exception as exc:  # noqa: BLE001 - a stale control queue only costs a little memory
        log.warning("could not delete the dead worker's control queue", pid=pid, error=str(exc))


def _requeue_unacked(url: str, pid: int) -> int:
    if not is_redis(url):
        return 0  # RabbitMQ requeues a dead connection's messages itself
    # Imported here: kombu loads only in a manager that has a worker to clean up after.
    from busapp.transport.kombu_transport import requeue_dead_worker

    return requeue_dead_worker(url, pid)


def forget_worker(url: str, exchange: str, service: str, pid: int) -> None:
    """Delete the control queue of worker ``pid`` (on this host), killed before it could.

    RabbitMQ deletes an auto-delete queue when its consumer's connection dies; Redis
    keeps the list and its bindings, and every later status broadcast would add to it.
    """
    if not is_redis(url):
        return
    spec = control_queue(service, pid, number=0)
    transport = open_transport(url)
    transport.connect()
    try:
        transport.declare_queue(exchange, spec)  # kombu unbinds only the bindings it declared
    finally:
        transport.close(delete_queue=spec.name)
