"""The worker: one service's queues on one broker connection, served until stopped.

A worker consumes the queues of its service's entrypoints (RPC methods, storage-event
subscriptions, and its own control queue: :mod:`busapp.entrypoints`), each through a
:class:`~busapp.runtime.pipeline.Pipeline` (screen, verify, decode, run, reply/settle).
Its threads take turns at receiving (:mod:`busapp.runtime.lanes`); the thread that
calls :meth:`Worker.run` supervises: it connects, subscribes, and reconnects after any
broker fault, then drains the messages in hand when the worker stops.

Under the in-memory test transport nothing waits on a broker: :meth:`Worker.attach`
consumes with each pipeline's ``serve`` as the callback, so a test runs exactly the
serve path (redelivery counting, decoding, dispatch, reply, ack) of a broker worker.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from busapp.core.options import WorkerOptions
from busapp.core.pipeline import REQUEUE, IncomingMessage, Outcome
from busapp.entrypoints import control
from busapp.entrypoints.base import Entrypoint
from busapp.entrypoints.control import ControlEntrypoint
from busapp.entrypoints.rpc import RpcEntrypoint
from busapp.entrypoints.storage_event import SubscriptionEntrypoint
from busapp.log import get_logger
from busapp.runtime.cleanup import Keeper, as_own_queue, is_own_queue
from busapp.runtime.cluster import (
    dead_letter_name,
    dead_letter_queue,
    dead_letter_spec,
    declared_as,
    resolve_queue_type,
)
from busapp.runtime.gate import Gate
from busapp.runtime.lanes import Lanes
from busapp.runtime.observe import Observer, log_handler_error
from busapp.runtime.pipeline import Pipeline
from busapp.runtime.retry import Resender
from busapp.runtime.supervisor import Supervisor
from busapp.runtime.timelimit import TimeLimits
from busapp.runtime.timers import TimerScheduler
from busapp.transport import open_transport
from busapp.transport.base import Delivery, QueueSpec, Transport

log = get_logger("busapp.worker")

__all__ = ["Worker", "WorkerOptions"]


#: Seconds between two moves of due delayed messages back onto their queues (Redis).
SWEEP_EVERY = 0.5


class Worker:
    """Serves one service's queues on one broker connection (see the module docstring).

    ``service`` provides ``service_name``, ``exchange_name``, ``connection_url``,
    ``entrypoints(options)``, ``_context(message)`` and ``_bus_client()`` (a
    :class:`~busapp.client.sync.Client` for replies); ``keyring``, ``routing_keys`` and
    ``_lifespan_start``/``_lifespan_stop`` if it has them.
    """

    def __init__(self, service: Any, options: WorkerOptions | None = None) -> None:
        self.service = service
        self.options = options or WorkerOptions()
        #: Told of a handler's exception: ``(kind, message, request or None, exception)``.
        self.on_handler_error: Callable[..., None] = log_handler_error
        #: Called once, when the worker first consumes (the manager's readiness signal).
        self.ready_callback: Callable[[], None] | None = None
        #: List what it serves when it is first ready (the manager asks one worker of each
        #: service to; see :meth:`banner`).
        self.show_banner = bool(getattr(service, "show_banner", True))
        self.stopping = threading.Event()
        self.transport: Transport | None = None
        #: Watches time-limited handlers (only under :meth:`run`: the test client runs
        #: handlers in the caller's thread, which must never be interrupted).
        self.time_limits: TimeLimits | None = None
        keyring = getattr(service, "keyring", None)
        #: Checks signatures and allow lists when the service has a keyring; its replay
        #: memory is shared through the broker where the broker can keep it.
        self.gate: Gate | None = None if keyring is None else Gate(keyring, claim=self._claim)
        #: Counters for ``busapp status``, trace spans, log lines, metrics.
        self.observer = Observer()
        self.lanes = Lanes(self)
        self._control = control.control_queue(control.service_name(service))
        self._dead_declared: set[str] = set()
        #: Connects, subscribes and reconnects (under :meth:`run`).
        self.supervisor = Supervisor(self)
        #: Pipelines of the entrypoints whose messages are made here: ``{timer name: Pipeline}``.
        self.timer_pipelines: dict[str, Pipeline] = {}
        self._pipelines = self._make_pipelines()
        #: Publishes the copies of messages to be sent again later or dead-lettered.
        self.resender = Resender(service.connection_url,
                                 self.gate.reply_key if self.gate is not None else None)
        #: Runs the service's timers when this worker holds their lease (under :meth:`run`).
        self.timers: TimerScheduler | None = None
        self._delayed_queues = [spec.name for spec, pipeline in self._consumers()
                                if getattr(pipeline.entrypoint, "requeues_later", False)]
        self._next_sweep = 0.0

    # -- entrypoints and their queues ---------------------------------------------------------

    def _entrypoints(self) -> list[Entrypoint]:
        entrypoints = list(self.service.entrypoints(self.options))
        entrypoints.append(ControlEntrypoint(self._control, self._status))
        return entrypoints

    def _make_pipelines(self) -> dict[str, Pipeline]:
        pipelines = {}
        for entrypoint in self._entrypoints():
            pipeline = Pipeline(entrypoint, self)
            specs = entrypoint.queue_specs()
            if not specs and entrypoint.kind == "timer":
                self.timer_pipelines[str(getattr(entrypoint, "name", ""))] = pipeline
            for spec in specs:
                pipelines[spec.name] = pipeline
        return pipelines

    def _consumers(self) -> list[tuple[QueueSpec, Pipeline]]:
        """Every queue to consume, declared as the options say, with its pipeline."""
        queue_type = resolve_queue_type(self.options.queue_type)
        consumers = []
        for pipeline in dict.fromkeys(self._pipelines.values()):
            for spec in pipeline.entrypoint.queue_specs():
                if is_own_queue(spec):  # this worker's alone: classic, gone with it
                    spec = as_own_queue(spec, self.service.connection_url)
                else:
                    spec = declared_as(spec, queue_type, self.options.max_deliveries)
                consumers.append((spec, pipeline))
        return consumers

    def pipeline_for(self, delivery: Delivery) -> Pipeline:
        """The pipeline serving the queue ``delivery`` came from."""
        pipeline = self._pipelines.get(delivery.queue or "")
        if pipeline is None:  # a transport that does not say: the RPC queue's
            pipeline = next(iter(self._pipelines.values()))
        return pipeline

    def serve(self, delivery: Delivery, *, screened: bool = False) -> None:
        """Serve one message through its queue's pipeline (see :meth:`Pipeline.serve`)."""
        self.pipeline_for(delivery).serve(delivery, screened=screened)

    def _subscribe(self, transport: Transport,
                   on_delivery: Callable[[Delivery], None] | None) -> None:
        """Declare the exchange and queues on ``transport`` and consume them."""
        exchange = self.service.exchange_name
        transport.declare_exchange(exchange)
        for spec, pipeline in self._consumers():
            dead = dead_letter_spec(spec)
            if dead is not None:  # before its queue: the broker dead-letters into it
                transport.declare_queue("", dead)
                self._dead_declared.add(dead.name)
            dead_queue = getattr(pipeline.entrypoint, "dead_letter_queue", None)
            if dead_queue is not None and dead_queue not in self._dead_declared:
                # The pipeline publishes to it (a publish to a missing queue is dropped).
                transport.declare_queue("", dead_letter_queue(dead_queue, self.options.queue_type))
                self._dead_declared.add(dead_queue)
            transport.declare_queue(exchange, spec)
            callback: Callable[[Delivery], Any] = on_delivery or pipeline.serve
            transport.consume(spec.name, callback)

    # -- what the pipelines ask of their worker ------------------------------------------------

    def context(self, message: IncomingMessage) -> dict[str, Any]:
        return self.service._context(message)

    def publish_reply(self, reply_to: str, response: dict | bytes, correlation_id: Any,
                      key: Any) -> None:
        # Signed with ``key`` (the verified caller's) or not at all, never with the service's
        # own key: an answer signed with it would pass for the answer to one of its own calls.
        self.service._bus_client().publish_reply(reply_to, response, correlation_id, key=key)

    def _claim(self, key: str, ttl: float) -> bool | None:
        """The gate's broker-held replay memory: set ``key`` unless set (None: cannot)."""
        transport = self.transport
        return None if transport is None else transport.claim(key, ttl)

    def settle(self, delivery: Delivery, *, requeue: bool = False) -> None:
        self.lanes.settle(delivery, requeue=requeue)

    def resend(self, message: IncomingMessage, outcome: Outcome) -> None:
        if outcome.settle == REQUEUE:
            self.resender.later(message, outcome.delay)
        else:
            queue = outcome.dead_letter_queue or dead_letter_name(message.raw.queue or "")
            self.resender.dead(message, queue, outcome.error)

    def sweep_due(self) -> None:
        """Put the due delayed messages of this worker's queues back (Redis; twice a second
        at most, from the thread holding the receiving role)."""
        if not self._delayed_queues:
            return
        now = time.monotonic()
        if now >= self._next_sweep and self.transport is not None:
            self._next_sweep = now + SWEEP_EVERY
            self.transport.move_due(self._delayed_queues)

    def declared_dead_letters(self) -> set[str]:
        return self._dead_declared

    def _status(self) -> dict[str, Any]:
        observer = self.observer
        status = control.status(control.service_name(self.service), observer.started_at,
                                observer.handled, observer.errors, observer.in_flight)
        if self.timers is not None:
            status["timers"] = self.timers.report()
        return status

    # -- the in-memory transport ---------------------------------------------------------------

    def attach(self) -> None:
        """Consume on the in-memory transport: each message is served as it is published."""
        transport = open_transport(self.service.connection_url)
        transport.connect()
        self.transport = transport
        self._lifespan("start")
        self._subscribe(transport, None)

    def detach(self) -> None:
        """Undo :meth:`attach`: stop consuming, then run the service's shut-down hooks (errors
        raise)."""
        if self.transport is not None:
            self.transport.cancel()
        self.resender.close()
        self._lifespan("stop")

    def tick(self, name: str) -> Outcome | None:
        """Run one tick of timer ``name`` now, through its pipeline (``client.tick``); what it
        came to (KeyError: the service has no timer ``name``)."""
        pipeline = self.timer_pipelines.get(name)
        if pipeline is None:
            known = ", ".join(sorted(self.timer_pipelines)) or "none"
            raise KeyError(f"no timer {name!r} on {self.service.service_name!r}; known: {known}")
        entrypoint: Any = pipeline.entrypoint
        return pipeline.serve(entrypoint.tick(time.time(), key=self._tick_key()))

    def _tick_key(self) -> Any:
        return None if self.gate is None else self.gate.own_key(self.service.key_name())

    def _lifespan(self, phase: str) -> None:
        """Run the service's start-up or shut-down hooks (``_lifespan_start``/``_stop``), if any."""
        hook = getattr(self.service, f"_lifespan_{phase}", None)
        if hook is not None:
            hook()

    # -- running on a broker -------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking messages; :meth:`run` finishes the ones in hand and returns."""
        self.stopping.set()
        self.lanes.wake()

    def run(self) -> None:
        """Consume until :meth:`stop`, reconnecting after any broker fault, then drain.

        The calling thread supervises: it connects, starts a lane, and sleeps until the
        worker stops or the connection fails; the lanes do all the receiving.
        """
        self.stopping.clear()
        if self.time_limits is None:
            self.time_limits = TimeLimits(self.options.time_limit_grace)
        try:
            self._lifespan("start")  # after the fork, before consuming
        except Exception:
            log.exception("start-up failed; the worker stops", pid=os.getpid(),
                          service=self.service.service_name)
            raise
        self.lanes.start_monitor()
        # This worker's own queues (see busapp.runtime.cleanup), registered before they are
        # declared: so they cannot be left behind.
        keeper = Keeper(self.service.connection_url, {
            spec.name: self.service.exchange_name for spec, _ in self._consumers()
            if is_own_queue(spec)})
        keeper.start()
        self.supervisor.start_timers()
        try:
            self.supervisor.supervise()
        finally:
            self.stop()
            if self.timers is not None:
                self.timers.stop(self.options.graceful_timeout)
            self.resender.close()
            keeper.stop()  # deletes them, with their bindings
            try:
                self._lifespan("stop")  # after the last in-flight message
            except Exception:  # noqa: BLE001 - the worker still stops
                log.exception("shut-down failed", pid=os.getpid(),
                              service=self.service.service_name)
            log.info("worker stopped", pid=os.getpid(), service=self.service.service_name)

    def watchdog(self, in_flight: int) -> None:
        """See :meth:`busapp.runtime.supervisor.Supervisor.watchdog` (the lanes call it)."""
        self.supervisor.watchdog(in_flight)

    # -- figures of ``busapp status`` ------------------------------------------------------------

    @property
    def metrics(self) -> Any:
        """Records calls for Prometheus (``busapp run --metrics-port``), else None."""
        return self.observer.metrics

    @metrics.setter
    def metrics(self, recorder: Any) -> None:
        self.observer.metrics = recorder


def rpc_entrypoints(service: Any, options: WorkerOptions) -> list[Entrypoint]:
    """A service's RPC methods and subscriptions as entrypoints (what most services have)."""
    entrypoints: list[Entrypoint] = []
    specs = service.queue_specs()
    if specs:
        entrypoints.append(RpcEntrypoint(service.handlers, specs, options.max_body))
    entrypoints += [SubscriptionEntrypoint(sub) for sub in service.subscriptions]
    return entrypoints
