"""The worker: consume a service's queues and serve each message, without deadlock.

Concurrency model (leader/follower). One thread at a time holds the *receiving role*:
it waits on the broker, takes the next message and runs its handler itself, in the
same thread, then acks it and takes the next. No hand-off, no queue, no thread
switch per message. The role passes to a standby thread only when the handler in
hand would hold up the others:

- the handler makes a bus call (it is about to wait for a reply, maybe from this very
  worker): :data:`busapp.client.sync.WAIT_HOOK` tells the worker before the request is sent;
- the handler has run longer than ``handoff_after`` (a few ms): a monitor thread
  that ticks only while handlers run inline notices.

A handler waiting on a bus call does not count against ``concurrency`` (the number of
handlers *running* at once), so nested self-calls and fan-out always make progress:
there is no fixed pool to exhaust. Standby threads are made when a hand-off finds
none, and retire when more than one is idle. The prefetch window grows with the
handlers waiting on calls, so their nested requests can still be delivered.

A message is acked after its reply is sent. The thread holding the role acks itself;
a handler that gave the role away acks from its own thread where the transport allows
it (Redis), else hands the ack to the role holder (RabbitMQ: the channel's socket
belongs to the thread that drains it).

Under the in-memory test transport nothing waits on a broker: :meth:`Worker.attach`
consumes with :meth:`Worker.serve` itself as the callback, so a test runs exactly the
serve path (redelivery counting, decoding, dispatch, reply, ack) of a broker worker.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import structlog

from busapp.entrypoints import control
from busapp.core import tracing, wire
from busapp.client.sync import WAIT_HOOK
from busapp.core.options import WorkerOptions
from busapp.runtime.cluster import (
    dead_letter_spec,
    declared_as,
    resolve_queue_type,
)
from busapp.errors import (
    BrokerUnavailable,
    InvalidRequest,
    ParseError,
    RemoteProcedureCallError,
    Resubscribe,
)
from busapp.log import quiet
from busapp.runtime.redelivery import count_redelivery, poison_error
from busapp.security import Gate, Refused
from busapp.core.pipeline import (
    IncomingMessage,
    Subscription,
    expired_by,
    reply_target_allowed,
    serve_event,
    serve_request,
)
from busapp.runtime.timelimit import TimeLimits, Watched, any_limit
from busapp.transport import mask_url, open_transport, revive_if_embedded
from busapp.transport.base import Delivery, QueueSpec, Transport

log = structlog.get_logger("busapp.worker")

#: This process's pid, for the per-call log line (kept up to date across forks: no syscall
#: per call).
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
#: What the caller of a request past its time limit got, as far as counting goes.
_TIMED_OUT = {"error": {"code": -32603}}


@attrs.define(eq=False)
class _Running:
    """A handler running in a lane thread."""

    worker: Worker
    started: float
    generation: int = 0
    handed_over: bool = False
    finished: bool = False

    # The bus.WAIT_HOOK protocol: a call of this handler is about to wait for its reply.
    def waiting(self) -> None:
        self.worker._call_waiting(self, +1)

    def done_waiting(self) -> None:
        self.worker._call_waiting(self, -1)


class Worker:
    """Serves one service's queues on one broker connection (see the module docstring).

    ``service`` provides ``service_name``, ``exchange_name``, ``connection_url``,
    ``handlers``, ``subscriptions``, ``queue_specs()``, ``_context(info)`` and
    ``_bus_client()`` (a :class:`~busapp.client.sync.Client` for replies).
    """

    def __init__(self, service: Any, options: WorkerOptions | None = None) -> None:
        self.service = service
        self.options = options or WorkerOptions()
        #: Told of a handler's exception: ``(kind, routing_key, consumer, request, exc)``.
        self.on_handler_error: Callable[..., None] | None = None
        #: Called once, when the worker first consumes (the manager's readiness signal).
        self.ready_callback: Callable[[], None] | None = None
        self.stopping = threading.Event()
        self.transport: Transport | None = None
        self._role = threading.Lock()          # the receiving role
        self._state = threading.Condition()    # guards the counters below
        self._inbox: collections.deque[Delivery] = collections.deque()
        self._acks: collections.deque[tuple[int, Delivery]] = collections.deque()
        self._generation = 0                   # bumps on reconnect: older acks are void
        self._in_flight = 0                    # messages taken and not yet settled
        self._detached = 0                     # handlers that gave the role away, running
        self._waiting = 0                      # handlers waiting on a bus call
        self._idle_lanes = 0
        self._lanes: set[threading.Thread] = set()
        self._inline: _Running | None = None   # the handler the role holder runs now
        self._monitor_wake = threading.Event()
        self._last_receive = 0.0
        self._stalled_checks = 0
        self._dead_declared: set[str] = set()
        self._ever_ready = False
        self._fatal: BaseException | None = None
        self._prefetch_now = 0
        self._handlers_by_queue: dict[str, Callable[[Delivery], None]] = {}
        #: Watches time-limited handlers (only under :meth:`run`: the test client runs
        #: handlers in the caller's thread, which must never be interrupted).
        self.time_limits: TimeLimits | None = None
        keyring = getattr(service, "keyring", None)
        #: Checks signatures and allow lists when the service has a keyring (busapp.security).
        self.gate: Gate | None = Gate(keyring, service.handlers) if keyring is not None else None
        # What `busapp status` reports (see busapp.entrypoints.control). Each is changed by one
        # statement, which the GIL does not split, and read without a lock.
        self.started_at = time.time()
        self.handled = 0          # requests served (answered or not)
        self.errors = 0           # of them, answered with an error
        self.calls_in_flight = 0  # requests being served now
        #: Records calls for Prometheus when ``busapp run --metrics-port`` is on
        #: (a :class:`busapp.ops.metrics.WorkerMetrics`), else None.
        self.metrics: Any = None
        self._control = control.control_queue(control.service_name(service))

    # -- queues ------------------------------------------------------------------------------

    def _consumers(self) -> list[tuple[QueueSpec, Callable[[Delivery], None]]]:
        queue_type = resolve_queue_type(self.options.queue_type)
        specs: list[tuple[QueueSpec, Callable[[Delivery], None]]] = [
            (spec, self.serve) for spec in self.service.queue_specs()]
        for sub in self.service.subscriptions:
            spec = QueueSpec(sub.queue_name, (sub.binding_key,), expires=sub.expires)
            specs.append((spec, self._event_server(sub)))
        specs.append((self._control, self._serve_control))
        return [(declared_as(spec, queue_type, self.options.max_deliveries), serve)
                if serve != self._serve_control else (spec, serve) for spec, serve in specs]

    def _subscribe(self, transport: Transport,
                   on_delivery: Callable[[Delivery], None] | None) -> None:
        """Declare the exchange and queues on ``transport`` and consume them."""
        exchange = self.service.exchange_name
        transport.declare_exchange(exchange)
        for spec, serve in self._consumers():
            dead = dead_letter_spec(spec)
            if dead is not None:  # before its queue: the broker dead-letters into it
                transport.declare_queue("", dead)
                self._dead_declared.add(dead.name)
            transport.declare_queue(exchange, spec)
            self._handlers_by_queue[spec.name] = serve
            transport.consume(spec.name, on_delivery or serve)

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
        self._lifespan("stop")

    def _lifespan(self, phase: str) -> None:
        """Run the service's start-up or shut-down hooks (``_lifespan_start``/``_stop``), if any."""
        hook = getattr(self.service, f"_lifespan_{phase}", None)
        if hook is not None:
            hook()

    # -- serving one message (every transport) -----------------------------------------------

    def serve(self, delivery: Delivery, *, screened: bool = False) -> None:
        """Serve one request message: answer it if owed, then settle it. Never raises
        (except BrokerUnavailable while counting a redelivery).

        ``screened``: the receiving thread already dropped it if expired and counted it if
        redelivered (:meth:`screen`), before the handler's time started.
        """
        if not screened and self.screen(delivery):
            return
        caller = None
        if self.gate is not None:  # before the body is parsed: a refused one never is
            try:
                caller = self.gate.admit(delivery)
            except Refused as refused:
                return self._refuse(delivery, refused)
        service = self.service
        max_body = self.options.max_body
        info = IncomingMessage.from_delivery(delivery, max_body)
        info.caller = caller
        scope = tracing.incoming(delivery.headers, info.routing_key, info.correlation_id, info.id)
        bound = structlog.contextvars.bind_contextvars(routing_key=info.routing_key, id=info.id,
                                                       request_id=scope.request_id)
        started = time.perf_counter()
        self.calls_in_flight += 1
        if self.metrics is not None:
            self.metrics.call_started()
        outcome = None  # the response the caller gets, for the counters and the log line
        watched = self._watch(info)
        try:
            response, payload = serve_request(
                service.handlers, info, service._context(info), max_body=max_body,
                on_error=lambda request, exc: self._handler_failed("call", info, request, exc))
            outcome = response
            if watched is not None:
                self._stop_watching(watched)
                if not watched.claim_reply():
                    response = None  # the caller already got the time-limit error
                    outcome = _TIMED_OUT
            self._reply(info, response, payload)
        except Exception:  # noqa: BLE001 - a reply that cannot be sent must not kill the worker
            log.exception("could not reply")
        finally:
            if watched is not None:
                self._stop_watching(watched)
            self.calls_in_flight -= 1
            try:
                self._served(info, outcome, started, scope)
            finally:
                structlog.contextvars.reset_contextvars(**bound)
                self._settle(delivery)

    def _served(self, info: IncomingMessage, response: dict | None, started: float,
                scope: tracing.Incoming) -> None:
        """Count, time and log one served request, and end its trace span."""
        seconds = time.perf_counter() - started
        error = response.get("error") if response is not None else None
        self.handled += 1
        if error is not None:
            self.errors += 1
        scope.close(response)
        body = info.body
        method = body.get("method") if isinstance(body, dict) else None
        if self.metrics is not None:  # an unknown method is not a label of its own
            known = isinstance(method, str) and method in self.service.handlers
            self.metrics.call_finished(method if known else None, error is None, seconds)
        if not quiet():
            log.info("call", method=method,
                     outcome="error" if error is not None else "ok" if response else "notification",
                     code=error.get("code") if isinstance(error, dict) else None,
                     duration_ms=round(seconds * 1000, 3), pid=_PID[0],
                     correlation_id=info.correlation_id)

    def _serve_control(self, delivery: Delivery) -> None:
        """Answer a message of this worker's own control queue (``busapp status``)."""
        try:
            control.answer(self, delivery)
        except Exception:  # noqa: BLE001 - the worker goes on serving
            log.exception("could not answer a control message")
        finally:
            self._settle(delivery)

    def _stop_watching(self, watched: Watched) -> None:
        if self.time_limits is not None:
            self.time_limits.stop_watching(watched)

    def _watch(self, info: IncomingMessage) -> Watched | None:
        """Start the time limit of the request in ``info``, if it has one."""
        limits = self.time_limits
        body = info.body
        if limits is None or not isinstance(body, dict) or info.id is None:
            return None
        handler = self.service.handlers.get(body.get("method"))
        limit = any_limit(getattr(handler, "time_limit", None), self.options.time_limit)
        if limit is None:
            return None
        return limits.start(limit, body.get("method"), lambda error: self._reply(
            info, wire.error_response(info.id, error)))

    def screen(self, delivery: Delivery) -> bool:
        """Deal with an expired or redelivered request before it is served; True if dealt with.

        This does broker I/O on the consuming connection (acks, re-publishing), so a lane
        runs it while it holds the receiving role, never while its handler could be
        handed over.
        """
        return self._expired(delivery) or (delivery.redelivered
                                           and self._count_redelivery(delivery))

    def _expired(self, delivery: Delivery) -> bool:
        """Drop (ack, unanswered) a request whose caller has given up waiting."""
        late = expired_by(delivery, time.time())
        if late is None:
            return False
        log.warning("expired request dropped unrun: its caller stopped waiting",
                    routing_key=delivery.routing_key, correlation_id=delivery.correlation_id,
                    late_s=round(late, 3))
        self._settle(delivery)
        return True

    def _refuse(self, delivery: Delivery, refused: Refused) -> None:
        """Answer a request the gate turned away (unless it is a replay), and settle it."""
        try:
            if refused.answer and delivery.reply_to and delivery.correlation_id:
                self.service._bus_client().publish_reply(
                    delivery.reply_to, wire.error_response(delivery.correlation_id, refused.error),
                    delivery.correlation_id, key=refused.sign_with)
        except Exception:  # noqa: BLE001 - a reply that cannot be sent must not kill the worker
            log.exception("could not reply")
        finally:
            self._settle(delivery)

    def _event_server(self, sub: Subscription) -> Callable[[Delivery], None]:
        def serve(delivery: Delivery) -> None:
            if self.gate is not None:
                try:
                    self.gate.admit(delivery, request=False)
                except Refused:
                    return self._settle(delivery)  # logged by the gate; nothing runs
            info = IncomingMessage.from_delivery(delivery, self.options.max_body)
            try:
                serve_event(sub, info, self.options.max_body)
            except Exception as exc:  # noqa: BLE001 - one bad event must not stop the others
                self._handler_failed("event", info, None, exc, consumer=sub.queue_name)
            finally:
                self._settle(delivery)

        return serve

    def _reply(self, info: IncomingMessage, response: dict | None,
               payload: bytes | None = None) -> None:
        if response is None:
            return
        if not info.reply_to:
            if "error" in response:
                log.warning("bad message dropped (no reply_to to answer)",
                            error=response["error"].get("message"))
            return
        if not reply_target_allowed(info.reply_to):
            log.warning("reply dropped: reply_to is not a reply queue", reply_to=info.reply_to)
            return
        error = response.get("error")
        if error and error.get("code") in (ParseError.code, InvalidRequest.code):
            log.warning("bad message refused (error reply sent)", error=error.get("message"),
                        reply_to=info.reply_to)
        correlation_id = info.correlation_id or response.get("id")
        signing = {} if self.gate is None else {"key": self.gate.reply_key(info.caller)}
        self.service._bus_client().publish_reply(info.reply_to, payload or response, correlation_id,
                                                 **signing)

    def _handler_failed(self, kind: str, info: IncomingMessage, request: wire.Request | None,
                        exc: BaseException, consumer: str | None = None) -> None:
        hook = self.on_handler_error
        if hook is not None:
            hook(kind, info, request, exc, consumer or self.service.service_name)
        elif kind == "event":
            log.error("event handler failed; event dropped", routing_key=info.routing_key,
                      queue=consumer, exc_info=exc)
        elif isinstance(exc, RemoteProcedureCallError):
            log.info("handler returned an error", method=request.method if request else None,
                     code=exc.code, error=exc.message)
        else:
            log.error("handler raised", method=request.method if request else None, exc_info=exc)

    def _count_redelivery(self, delivery: Delivery) -> bool:
        """Re-publish or dead-letter a redelivered message (True: it is dealt with)."""
        try:
            assert self.transport is not None
            count, dead = count_redelivery(delivery, self.transport, self.options.max_deliveries,
                                           self._dead_declared)
        except BrokerUnavailable:
            raise
        except Exception:  # noqa: BLE001 - serve it as it is rather than lose it
            log.exception("could not count a redelivery; serving the message")
            return False
        if self.metrics is not None:
            self.metrics.redelivered(dead is not None)
        if dead is not None:
            info = IncomingMessage.from_delivery(delivery, self.options.max_body)
            log.error("message dead-lettered: its worker died on every delivery",
                      routing_key=info.routing_key, deliveries=count - 1, dead_letter_queue=dead,
                      id=info.id)
            if info.reply_to and info.id is not None:
                self._reply(info, wire.error_response(info.id, poison_error(
                    info.routing_key, count, dead)))
        # Counted by the broker (quorum queue) and under the bound: serve this very copy.
        return dead is not None or delivery.deliveries is None

    def _settle(self, delivery: Delivery) -> None:
        running = _LANE.running
        if running is not None:
            with self._state:
                # Still holding the role: from here on the monitor leaves this handler alone,
                # so nobody else drains the connection while this thread acks on it.
                running.finished = running.finished or not running.handed_over
                queue_it = running.handed_over and not self._can_ack_anywhere()
                if queue_it:
                    self._acks.append((running.generation, delivery))
            if queue_it:
                return
        try:
            delivery.ack()
        except BrokerUnavailable as exc:
            log.warning("could not ack (connection lost); the message will be redelivered",
                        error=str(exc))

    def _can_ack_anywhere(self) -> bool:
        transport = self.transport
        return transport is None or transport.concurrent_ack

    # -- running ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking messages; :meth:`run` finishes the ones in hand and returns."""
        self.stopping.set()
        self._monitor_wake.set()
        with self._state:
            self._state.notify_all()

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
        threading.Thread(target=self._monitor, name="busapp-monitor", daemon=True).start()
        backoff = 0.5
        started = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    self._connect_and_serve()
                except Resubscribe:
                    continue
                except BrokerUnavailable as exc:
                    if self.stopping.is_set():
                        break
                    timeout = self.options.startup_timeout
                    if not self._ever_ready and timeout is not None \
                            and time.monotonic() - started > timeout:
                        raise
                    if self._consuming:
                        backoff = 0.5  # it was up and consuming: the next fault starts afresh
                    if not self._ever_ready and not self._said_retrying:
                        self._said_retrying = True
                        log.warning("cannot reach the broker; retrying "
                                    + ("forever" if timeout is None else f"for {timeout:g}s")
                                    + " (busapp run --startup-timeout S sets how long)",
                                    broker=mask_url(self.service.connection_url))
                    log.warning("broker connection lost; reconnecting",
                                error=str(exc), retry_in=backoff,
                                broker=mask_url(self.service.connection_url))
                    if revive_if_embedded(self.service.connection_url):
                        continue  # the embedded broker was gone and is back: at once
                    self.stopping.wait(backoff)
                    # At most 2 s: a broker back after a restart (RabbitMQ takes 5-7 s to start)
                    # is served within 2 s, not after a back-off grown to 10 s.
                    backoff = min(backoff * 2, 2.0)
        finally:
            self.stop()
            try:
                self._lifespan("stop")  # after the last in-flight message
            except Exception:  # noqa: BLE001 - the worker still stops
                log.exception("shut-down failed", pid=os.getpid(),
                              service=self.service.service_name)
            log.info("worker stopped", pid=os.getpid(), service=self.service.service_name)

    def _connect_and_serve(self) -> None:
        self._consuming = False
        transport = open_transport(self.service.connection_url)
        transport.max_body = self.options.max_body
        try:
            transport.connect()
            with self._state:  # what an old connection left is void (its broker requeues it)
                self._generation += 1
                self._acks.clear()
                self._inbox.clear()
            self.transport = transport
            self._prefetch_now = 0
            self._prefetch()  # before consuming: the broker must not push more than the window
            # Messages may arrive while the later queues are still being consumed (each
            # consume waits for the broker's answer): they wait in the inbox, kept.
            self._subscribe(transport, self._inbox.append)
            self.service._bus_client()
            with self._state:
                self._in_flight = self._detached
                self._fatal = None
                self._receiving = True
                self._last_receive = time.monotonic()
                self._stalled_checks = 0
                self._consuming = True
                if not any(lane.is_alive() for lane in self._lanes):
                    self._start_lane()
                self._state.notify_all()
            self._announce_ready()
            with self._state:
                while self._receiving:
                    self._state.wait(0.5)
            if self._fatal is not None:
                raise self._fatal
            self._drain_in_flight()
        finally:
            with self._state:
                self._receiving = False
            transport.close()

    def _announce_ready(self) -> None:
        if not self._ever_ready:
            self._ever_ready = True
            if self.ready_callback is not None:
                self.ready_callback()
        log.info("worker ready", pid=os.getpid(), service=self.service.service_name,
                 routing_keys=self.service.routing_keys
                 + [s.binding_key for s in self.service.subscriptions],
                 exchange=self.service.exchange_name,
                 broker=mask_url(self.service.connection_url),
                 concurrency=self.options.concurrency)

    # -- lanes: the threads that take turns at receiving ---------------------------------------

    _receiving = False
    _consuming = False
    _said_retrying = False

    def _start_lane(self) -> None:
        lane = threading.Thread(target=self._lane, name="busapp-lane", daemon=True)
        self._lanes = {t for t in self._lanes if t.is_alive()} | {lane}
        lane.start()

    def _lane(self) -> None:
        """Take the receiving role, serve inline, repeat; park while there is no connection."""
        while True:
            with self._state:
                while not self._receiving:
                    if self.stopping.is_set():
                        return
                    self._state.wait()
                self._idle_lanes += 1
            self._role.acquire()
            with self._state:
                self._idle_lanes -= 1
                self._role_holder = threading.get_ident()
            held = True
            try:
                while held and self._receiving:
                    delivery = self._receive()
                    if delivery is None:
                        continue
                    serve = self._handlers_by_queue.get(delivery.queue or "", self.serve)
                    if serve == self.serve and self.screen(delivery):
                        self._untake()
                        continue
                    held = self._run_inline(delivery, serve)
            except (BrokerUnavailable, Resubscribe) as exc:
                self._fail(exc)
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the worker deaf
                log.exception("unexpected error while receiving; reconnecting")
                self._fail(BrokerUnavailable(f"receiving failed: {exc!r}"))
            finally:
                self._release_role_if_held()
            with self._state:
                if self._idle_lanes >= 2:
                    return  # enough standby lanes: retire

    _role_holder: int | None = None

    def _release_role_if_held(self) -> None:
        """Release the receiving role if this thread holds it (a hand-over may have released it)."""
        with self._state:
            if self._role_holder == threading.get_ident():
                self._role_holder = None
                self._role.release()

    def _fail(self, exc: BaseException) -> None:
        """End this connection: the supervising thread reconnects (or raises ``exc``)."""
        with self._state:
            self._fatal = exc
            self._receiving = False
            self._state.notify_all()

    def _receive(self) -> Delivery | None:
        """The next message to serve, or None (time to look at the state again)."""
        if self.stopping.is_set():
            with self._state:
                self._receiving = False
                self._state.notify_all()
            return None
        if self._inbox:
            return self._take(self._inbox.popleft())
        self._flush_acks()
        with self._state:
            while self._detached - self._waiting >= self.options.concurrency:
                self._state.wait(0.05)  # every slot is busy: let the broker hold the rest
                if self.stopping.is_set():
                    return None
        self._prefetch()
        if self._inbox:  # a synchronous broker call (qos, ack) may have brought a message
            return self._take(self._inbox.popleft())
        transport = self.transport
        assert transport is not None
        busy = self._detached > 0 and not transport.concurrent_ack
        if transport.drain(0.004 if busy else 1.0):
            self._last_receive = time.monotonic()
            if self._inbox:
                return self._take(self._inbox.popleft())
            return None
        self._watchdog()
        return None

    def _take(self, delivery: Delivery) -> Delivery:
        with self._state:
            self._in_flight += 1
        return delivery

    def _untake(self) -> None:
        with self._state:
            self._in_flight -= 1

    def _prefetch(self) -> None:
        base = self.options.concurrency * 2
        waiting = self._waiting
        # Grow at once for handlers waiting on calls (their nested requests must get
        # through); shrink back only when none waits, not on every reply.
        current = self._prefetch_now
        wanted = base + waiting if waiting else base
        if wanted > current or (not waiting and wanted != current):
            assert self.transport is not None
            self.transport.set_prefetch(wanted)
            self._prefetch_now = wanted

    def _run_inline(self, delivery: Delivery, serve: Callable[..., None]) -> bool:
        """Serve ``delivery`` in this thread; True if this thread still holds the role after."""
        running = _Running(self, time.monotonic(), generation=self._generation)
        _LANE.running = running
        WAIT_HOOK.hook = running
        self._inline = running
        if self._monitor_idle:
            self._monitor_wake.set()
        try:
            if serve == self.serve:
                self.serve(delivery, screened=True)
            else:
                serve(delivery)
        finally:
            WAIT_HOOK.hook = None
            _LANE.running = None
            with self._state:
                running.finished = True
                if self._inline is running:
                    self._inline = None
                self._in_flight -= 1
                if running.handed_over:
                    self._detached -= 1
                    self._state.notify_all()
                held = self._role_holder == threading.get_ident()
        return held

    def _hand_over(self, running: _Running) -> None:
        """Give the receiving role away on behalf of ``running`` (caller holds ``_state``)."""
        if running.handed_over or running.finished:
            return
        running.handed_over = True
        self._detached += 1
        if self._inline is running:
            self._inline = None
        if self._idle_lanes == 0 and self._receiving:
            self._start_lane()
        self._role_holder = None
        self._role.release()

    def _call_waiting(self, running: _Running, delta: int) -> None:
        with self._state:
            self._waiting += delta
            if delta > 0:
                self._hand_over(running)
            self._state.notify_all()

    # -- the monitor: hands the role over when an inline handler runs long ----------------------

    _monitor_idle = True

    def _monitor(self) -> None:
        tick = self.options.handoff_after
        quiet_since = time.monotonic()
        while not (self.stopping.is_set() and self._in_flight == 0):
            if self._monitor_idle:
                self._monitor_wake.wait()
                self._monitor_wake.clear()
                self._monitor_idle = False
                quiet_since = time.monotonic()
                continue
            time.sleep(tick)
            now = time.monotonic()
            running = self._inline
            if running is None:
                if now - quiet_since > 1.0:
                    self._monitor_idle = True  # nothing ran inline for a second: park
                continue
            quiet_since = now
            if now - running.started >= tick:
                with self._state:
                    if self._inline is running:
                        self._hand_over(running)

    # -- acks, watchdog, shutdown ----------------------------------------------------------------

    def _flush_acks(self) -> None:
        while self._acks:
            with self._state:
                generation, delivery = self._acks.popleft()
            if generation == self._generation:
                delivery.ack()

    def _watchdog(self) -> None:
        """Re-subscribe if this worker is idle while its queues are unbound or hold messages."""
        now = time.monotonic()
        if self._in_flight or now - self._last_receive < self.options.watchdog_interval:
            return
        self._last_receive = now
        transport = self.transport
        assert transport is not None
        names = [spec.name for spec, _ in self._consumers()]
        bound = transport.bound_queues(self.service.exchange_name)
        if bound is not None:
            missing = [n for n in names if n not in bound]
            if missing:
                log.warning("queue binding lost on the broker; re-subscribing", queues=missing)
                raise Resubscribe(f"bindings of {missing} are gone")
        waiting = sum(transport.queue_depth(n) for n in names)
        self._stalled_checks = self._stalled_checks + 1 if waiting else 0
        if self._stalled_checks >= 2:
            log.warning("consumer stalled: messages wait but none arrive; re-subscribing",
                        waiting=waiting, service=self.service.service_name)
            raise Resubscribe(f"{waiting} messages waiting on an idle worker")

    def _drain_in_flight(self) -> None:
        """Stop consuming, requeue what was received but not started, and wait for the rest.

        Runs in the supervising thread once no lane receives; waits up to the grace period.
        """
        transport = self.transport
        assert transport is not None
        try:
            transport.cancel()
            deadline = time.monotonic() + self.options.graceful_timeout
            while True:
                while self._inbox:
                    self._inbox.popleft().requeue()
                self._flush_acks()
                if self._in_flight <= 0 or time.monotonic() >= deadline:
                    break
                transport.drain(0.02)  # acks only travel while someone reads the connection
        except BrokerUnavailable as exc:
            log.warning("connection lost while stopping; unfinished messages will be redelivered",
                        error=str(exc))
            return
        if self._in_flight > 0:
            log.warning("grace period over; unfinished messages go back to the queue",
                        unfinished=self._in_flight, graceful_timeout=self.options.graceful_timeout)


class _LaneLocal(threading.local):
    running: _Running | None = None


_LANE = _LaneLocal()
