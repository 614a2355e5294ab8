"""The worker's connection to its broker: connect, subscribe, serve until a fault or a stop,
then again (with a short back-off), and watch that an idle subscription still receives.

The lanes (:mod:`busapp.runtime.lanes`) do the receiving; the supervisor is the thread
that called :meth:`busapp.runtime.worker.Worker.run`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from busapp import names
from busapp.errors import BrokerUnavailable, Resubscribe
from busapp.log import get_logger
from busapp.runtime.timers import TimerScheduler
from busapp.transport import mask_url, open_transport, revive_if_embedded

log = get_logger("busapp.worker")

#: The banner's section for each entrypoint kind (others: the kind, plural).
_SECTIONS = {"call": "methods", "storage_event": "storage events", "event": "events",
             "timer": "timers"}


class Supervisor:
    """A worker's connection: made, consumed, watched, made again after a fault.

    Args:
        worker: the worker whose queues and lanes it serves.
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self._ever_ready = False
        self._said_unreachable = False
        self._stalled_checks = 0

    def start_timers(self) -> None:
        """Start taking turns at the worker's timers (if it has any), with the other workers
        of its App (see :mod:`busapp.runtime.timers`)."""
        worker = self.worker
        if worker.timer_pipelines and worker.timers is None:
            lease = names.timer_lease(worker.service.service_name)
            worker.timers = TimerScheduler(worker.service.connection_url, lease,
                                           worker.timer_pipelines, worker._tick_key())
        if worker.timers is not None:
            worker.timers.start()

    def supervise(self) -> None:
        """Connect and serve; after a broker fault, reconnect with a short back-off.

        Before the worker was ever ready, ``startup_timeout`` bounds the tries: the
        BrokerUnavailable of the last one is raised once it has passed.
        """
        backoff = 0.5
        timeout = self.worker.options.startup_timeout
        give_up_at = None if timeout is None else time.monotonic() + timeout
        while not self.worker.stopping.is_set():
            consuming = [False]
            try:
                self._connect_and_serve(consuming)
            except Resubscribe:
                continue
            except BrokerUnavailable as exc:
                if self.worker.stopping.is_set():
                    break
                if consuming[0]:
                    backoff = 0.5  # it was up and consuming: the next fault starts afresh
                wait = self._retry_in(exc, backoff, None if self._ever_ready else give_up_at)
                if revive_if_embedded(self.worker.service.connection_url):
                    continue  # the embedded broker was gone and is back: at once
                self.worker.stopping.wait(wait)
                # At most 2 s: a broker back after a restart (RabbitMQ takes 5-7 s to start)
                # is served within 2 s, not after a back-off grown to 10 s.
                backoff = min(backoff * 2, 2.0)

    def _retry_in(self, exc: BrokerUnavailable, backoff: float, give_up_at: float | None) -> float:
        """Seconds before the next try after ``exc`` (logged); raises it past ``give_up_at``."""
        url = mask_url(self.worker.service.connection_url)
        if self._ever_ready:
            log.warning("broker connection lost; reconnecting", error=str(exc),
                        retry_in=backoff, broker=url)
            return backoff
        if give_up_at is not None and time.monotonic() >= give_up_at:
            raise exc
        if not self._said_unreachable:  # once: the broker was never reached, nothing was lost
            self._said_unreachable = True
            timeout = self.worker.options.startup_timeout
            log.warning("cannot reach the broker; retrying "
                        + ("forever" if timeout is None else f"for {timeout:g}s")
                        + " (busapp run --startup-timeout S sets how long)", error=str(exc),
                        broker=url)
        if give_up_at is None:
            return backoff
        return max(0.0, min(backoff, give_up_at - time.monotonic()))

    def _connect_and_serve(self, consuming: list[bool]) -> None:
        transport = open_transport(self.worker.service.connection_url)
        transport.max_body = self.worker.options.max_body
        lanes = self.worker.lanes
        try:
            transport.connect()
            self.worker.transport = transport
            lanes.reset()
            # Messages may arrive while the later queues are still being consumed (each
            # consume waits for the broker's answer): they wait in the inbox, kept.
            self.worker._subscribe(transport, lanes.inbox.append)
            self.worker.service._bus_client()
            self._stalled_checks = 0
            consuming[0] = True
            self._announce_ready()  # before the first message: one could kill the worker
            lanes.open()
            fatal = lanes.wait_closed()
            if fatal is not None:
                raise fatal
            lanes.drain(self.worker.options.graceful_timeout)
        finally:
            lanes.close()
            transport.close()

    def _announce_ready(self) -> None:
        if not self._ever_ready:
            self._ever_ready = True
            if self.worker.ready_callback is not None:
                self.worker.ready_callback()
        service = self.worker.service
        keys = [binding for spec, pipeline in self.worker._consumers()
                if pipeline.entrypoint.kind != "control" for binding in spec.binding_keys]
        banner = {"serves": self.banner()} if self.worker.show_banner else {}
        self.worker.show_banner = False  # once: not again after a reconnection
        log.info("worker ready", pid=os.getpid(), service=service.service_name,
                 routing_keys=keys, exchange=service.exchange_name,
                 broker=mask_url(service.connection_url),
                 concurrency=self.worker.options.concurrency, **banner)

    def banner(self) -> dict[str, list[str]]:
        """What this worker serves, by kind: ``{"methods": [...], "storage events": [...]}``.

        Read from its entrypoints (each one's ``describe()``, else its binding keys), so a
        new kind of entrypoint is listed with no change here.
        """
        sections: dict[str, list[str]] = {}
        for pipeline in dict.fromkeys(self.worker._pipelines.values()):
            entrypoint = pipeline.entrypoint
            if entrypoint.kind == "control":
                continue
            describe = getattr(entrypoint, "describe", None)
            lines = describe() if describe is not None else [
                key for spec in entrypoint.queue_specs() for key in spec.binding_keys]
            title = _SECTIONS.get(entrypoint.kind, entrypoint.kind.replace("_", " ") + "s")
            sections.setdefault(title, []).extend(lines)
        return sections

    def watchdog(self, in_flight: int) -> None:
        """Re-subscribe if this worker is idle while its queues are unbound or hold messages."""
        now = time.monotonic()
        lanes = self.worker.lanes
        if in_flight or now - lanes.last_receive < self.worker.options.watchdog_interval:
            return
        lanes.last_receive = now
        transport = self.worker.transport
        assert transport is not None
        names = [spec.name for spec, _ in self.worker._consumers()]
        bound = transport.bound_queues(self.worker.service.exchange_name)
        if bound is not None:
            missing = [n for n in names if n not in bound]
            if missing:
                log.warning("queue binding lost on the broker; re-subscribing", queues=missing)
                raise Resubscribe(f"bindings of {missing} are gone")
        waiting = sum(transport.queue_depth(n) for n in names)
        self._stalled_checks = self._stalled_checks + 1 if waiting else 0
        if self._stalled_checks >= 2:
            log.warning("consumer stalled: messages wait but none arrive; re-subscribing",
                        waiting=waiting, service=self.worker.service.service_name)
            raise Resubscribe(f"{waiting} messages waiting on an idle worker")
