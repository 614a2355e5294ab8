"""What a worker leaves on the broker: removed by itself when it stops, by its manager when
it dies, and by anyone once it is gone unnoticed.

A worker's *own queues* are the queues only it consumes (its control queue, its queues of
broadcast event handlers): every queue it consumes that is declared ``auto_delete``. None
may outlive it: a binding left on an exchange slows every publish there and collects
copies of what it matches.

- RabbitMQ deletes them itself: auto-delete when the worker's connection goes, and an
  ``x-expires`` of :func:`own_queue_ttl` (:func:`as_own_queue`) for one never consumed.
  It also gives a dead connection's unacknowledged messages back and ends its leases.
- Redis does none of it. Each worker registers its own queues with a heartbeat
  (:class:`Keeper`, :mod:`busapp.transport.owned`) and removes them when it stops; its
  manager removes them when it sees it die (:func:`release_dead_worker`), with what it
  held unacked (requeued at once, and with a keyring the replay claims it made on them:
  :mod:`busapp.runtime.gate`) and its hold of its App's timer lease; what a worker killed
  with its manager (or on a lost host) leaves is swept by the next manager that starts
  (:func:`sweep`) and by every live worker now and then, once its heartbeat has expired
  (its unacked messages come back after the visibility timeout, its lease after its TTL).
"""
from __future__ import annotations

import itertools
import os
import random
import socket
import threading
from typing import Any

import attrs

from busapp import config, names
from busapp.log import get_logger
from busapp.transport import is_memory, is_redis, open_transport
from busapp.transport.base import QueueSpec

log = get_logger("busapp.manager")

_numbers = itertools.count()


def _restart_numbers() -> None:
    global _numbers
    _numbers = itertools.count()


os.register_at_fork(after_in_child=_restart_numbers)


def mark_worker_process() -> None:
    """In a new worker process: name it as the owner of the messages it will hold unacked,
    so its manager can give them back at once should it die (Redis)."""
    os.environ[config.env_name("unacked_owner")] = names.unacked_owner(socket.gethostname(),
                                                                       os.getpid())


def own_queue_ttl() -> float:
    """Seconds a worker's own queues outlive it when it could not remove them (at least 1)."""
    return max(1.0, float(config.get("own_queue_ttl")))


def is_own_queue(spec: QueueSpec) -> bool:
    """True for a queue only one worker consumes (see the module docstring)."""
    return spec.auto_delete


def as_own_queue(spec: QueueSpec, url: str) -> QueueSpec:
    """``spec`` as a worker declares its own queue on ``url``: with an ``x-expires`` on
    RabbitMQ (Redis has no such thing: the :class:`Keeper` stands in for it)."""
    if spec.expires is not None or is_redis(url) or is_memory(url):
        return spec
    return attrs.evolve(spec, expires=own_queue_ttl())


def release_dead_worker(url: str, pid: int, lease: str | None = None) -> None:
    """Give back what worker ``pid`` (dead, on this host) held unacked, delete its own
    queues, and end its hold of ``lease`` (its App's timer lease); a failure is logged (what
    is left comes back, or is swept, later)."""
    try:
        count = _requeue_unacked(url, pid)
    except Exception as exc:  # noqa: BLE001 - they come back after the visibility timeout
        log.warning("could not requeue the dead worker's messages; they come back after "
                    "the visibility timeout", pid=pid, error=str(exc))
    else:
        if count:
            log.info("dead worker's unacked messages requeued", pid=pid, messages=count)
    try:
        forget_worker(url, pid)
    except Exception as exc:  # noqa: BLE001 - swept once its heartbeat expires
        log.warning("could not delete the dead worker's own queues; they are removed once "
                    "its heartbeat expires", pid=pid, error=str(exc))
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


def forget_worker(url: str, pid: int) -> None:
    """Delete the own queues (with their bindings) of worker process ``pid`` of this host,
    killed before it could (Redis; RabbitMQ deletes them itself)."""
    if is_redis(url):
        registry = _registry(url)
        try:
            registry.drop_process(socket.gethostname(), pid)
        finally:
            registry.close()


def release_lease(url: str, lease: str, owner: str) -> None:
    """End ``owner``'s (or any ``owner.<more>``'s) hold of ``lease``."""
    transport = open_transport(url)
    transport.connect()
    try:
        transport.release_lease(lease, owner)
    finally:
        transport.close()


def sweep(url: str) -> list[str]:
    """Delete the own queues of every worker whose heartbeat expired (Redis); their owners.
    Best effort: a failure is logged."""
    if not is_redis(url):
        return []
    registry = _registry(url)
    try:
        swept = registry.sweep()
    except Exception as exc:  # noqa: BLE001 - the next sweep will do
        log.warning("could not sweep the queues of workers gone without a trace", error=str(exc))
        return []
    finally:
        registry.close()
    if swept:
        log.info("queues of workers gone without a trace removed", owners=swept)
    return swept


def _registry(url: str) -> Any:
    # Imported here: kombu loads only where a Redis registry is used.
    from busapp.transport.owned import OwnedQueues

    return OwnedQueues(url)


class Keeper:
    """A worker's own queues on Redis: registered and kept beating while it runs, swept for
    others now and then, removed when it stops (:meth:`stop`). A no-op on other brokers.

    Args:
        url: the broker.
        queues: the worker's own queues, ``{name: exchange}``.
    """

    def __init__(self, url: str, queues: dict[str, str]) -> None:
        self.url = url
        self.queues = queues
        self.ttl = own_queue_ttl()
        #: This worker's owner name (:func:`busapp.names.queue_owner`).
        self.owner = names.queue_owner(socket.gethostname(), os.getpid(), next(_numbers))
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry: Any = _registry(url) if is_redis(url) and queues else None

    def start(self) -> None:
        """Register the queues (now, before they are declared) and keep them beating."""
        if self._registry is None:
            return
        self._beat()
        self._thread = threading.Thread(target=self._run, name="busapp-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_sweep = 0.0
        while not self._stopping.wait(self.ttl / 3):
            self._beat()
            next_sweep -= self.ttl / 3
            if next_sweep <= 0:  # every ttl or so; spread, so workers do not sweep at once
                next_sweep = self.ttl * random.uniform(0.75, 1.25)
                self._sweep()

    def _sweep(self) -> None:
        try:
            swept = self._registry.sweep()
        except Exception as exc:  # noqa: BLE001 - the next sweep will do
            log.debug("could not sweep the queues of workers gone without a trace",
                      error=str(exc))
            return
        if swept:
            log.info("queues of workers gone without a trace removed", owners=swept)

    def _beat(self) -> None:
        try:
            self._registry.keep(self.owner, self.queues, self.ttl)
        except Exception as exc:  # noqa: BLE001 - the next beat tries again
            log.warning("could not renew this worker's heartbeat", error=str(exc),
                        owner=self.owner)

    def stop(self) -> None:
        """Stop beating and delete the queues with their bindings (best effort)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        registry, self._registry = self._registry, None
        if registry is None:
            return
        try:
            registry.drop(self.owner)
        except Exception as exc:  # noqa: BLE001 - swept once its heartbeat expires
            log.warning("could not delete this worker's own queues; they are removed once "
                        "its heartbeat expires", error=str(exc), owner=self.owner)
        finally:
            registry.close()
