"""Lanes: the threads of one worker that take turns at receiving, and never deadlock.

Concurrency model (leader/follower). One thread at a time holds the *receiving role*:
it waits on the broker, takes the next message and runs its handler itself, in the
same thread, then acks it and takes the next. No hand-off, no queue, no thread
switch per message. The role passes to a standby thread only when the handler in
hand would hold up the others:

- the handler makes a bus call (it is about to wait for a reply, maybe from this very
  worker): :data:`busapp.client.sync.WAIT_HOOK` tells the lanes before the request is sent;
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
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Protocol

import attrs
from busapp.client.sync import WAIT_HOOK
from busapp.core.options import WorkerOptions
from busapp.log import get_logger
from busapp.errors import BrokerUnavailable, Resubscribe
from busapp.transport.base import Delivery, Transport

log = get_logger("busapp.worker")


class Owner(Protocol):
    """What the lanes need of their worker."""

    options: WorkerOptions
    stopping: threading.Event
    transport: Transport | None

    def pipeline_for(self, delivery: Delivery) -> Any: ...

    def watchdog(self, in_flight: int) -> None: ...

    def sweep_due(self) -> None: ...


@attrs.define(eq=False)
class _Running:
    """A handler running in a lane thread."""

    lanes: Lanes
    started: float
    generation: int = 0
    handed_over: bool = False
    finished: bool = False

    # The WAIT_HOOK protocol: a call of this handler is about to wait for its reply.
    def waiting(self) -> None:
        self.lanes.call_waiting(self, +1)

    def done_waiting(self) -> None:
        self.lanes.call_waiting(self, -1)


class _LaneLocal(threading.local):
    running: _Running | None = None


_LANE = _LaneLocal()


class Lanes:
    """One worker's receiving role, its lane threads, monitor, acks and prefetch window."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self._role = threading.Lock()          # the receiving role
        self._state = threading.Condition()    # guards the counters below
        self.inbox: collections.deque[Delivery] = collections.deque()
        self._acks: collections.deque[tuple[int, Delivery, bool]] = collections.deque()
        self.generation = 0                    # bumps on reconnect: older acks are void
        self.in_flight = 0                     # messages taken and not yet settled
        self._detached = 0                     # handlers that gave the role away, running
        self._waiting = 0                      # handlers waiting on a bus call
        self._idle_lanes = 0
        self._threads: set[threading.Thread] = set()
        self._inline: _Running | None = None   # the handler the role holder runs now
        self._monitor_wake = threading.Event()
        self._monitor_idle = True
        self._role_holder: int | None = None
        self._prefetch_now = 0
        self.receiving = False
        self.fatal: BaseException | None = None
        self.last_receive = 0.0

    # -- a connection's life ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget what an old connection left (its broker requeues it); before consuming."""
        with self._state:
            self.generation += 1
            self._acks.clear()
            self.inbox.clear()
        self._prefetch_now = 0
        self.prefetch()  # before consuming: the broker must not push more than the window

    def open(self) -> None:
        """Start receiving on the connection just subscribed."""
        with self._state:
            self.in_flight = self._detached
            self.fatal = None
            self.receiving = True
            self.last_receive = time.monotonic()
            if not any(lane.is_alive() for lane in self._threads):
                self._start_lane()
            self._state.notify_all()

    def wait_closed(self) -> BaseException | None:
        """Block until no lane receives any more; the fault that ended it, if any."""
        with self._state:
            while self.receiving:
                self._state.wait(0.5)
        return self.fatal

    def close(self) -> None:
        with self._state:
            self.receiving = False

    def wake(self) -> None:
        """Make every lane look at the state again (the worker is stopping)."""
        self._monitor_wake.set()
        with self._state:
            self._state.notify_all()

    def fail(self, exc: BaseException) -> None:
        """End this connection: the supervising thread reconnects (or raises ``exc``)."""
        with self._state:
            self.fatal = exc
            self.receiving = False
            self._state.notify_all()

    # -- lanes --------------------------------------------------------------------------------

    def _start_lane(self) -> None:
        lane = threading.Thread(target=self._lane, name="busapp-lane", daemon=True)
        self._threads = {t for t in self._threads if t.is_alive()} | {lane}
        lane.start()

    def _lane(self) -> None:
        """Take the receiving role, serve inline, repeat; park while there is no connection."""
        while True:
            with self._state:
                while not self.receiving:
                    if self.owner.stopping.is_set():
                        return
                    self._state.wait()
                self._idle_lanes += 1
            self._role.acquire()
            with self._state:
                self._idle_lanes -= 1
                self._role_holder = threading.get_ident()
            held = True
            try:
                while held and self.receiving:
                    delivery = self._receive()
                    if delivery is None:
                        continue
                    pipeline = self.owner.pipeline_for(delivery)
                    if pipeline.screen(delivery):
                        self._untake()
                        continue
                    held = self._run_inline(delivery, pipeline)
            except (BrokerUnavailable, Resubscribe) as exc:
                self.fail(exc)
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the worker deaf
                log.exception("unexpected error while receiving; reconnecting")
                self.fail(BrokerUnavailable(f"receiving failed: {exc!r}"))
            finally:
                self._release_role_if_held()
            with self._state:
                if self._idle_lanes >= 2:
                    return  # enough standby lanes: retire

    def _release_role_if_held(self) -> None:
        """Release the receiving role if this thread holds it (a hand-over may have released it)."""
        with self._state:
            if self._role_holder == threading.get_ident():
                self._role_holder = None
                self._role.release()

    def _receive(self) -> Delivery | None:
        """The next message to serve, or None (time to look at the state again)."""
        owner = self.owner
        if owner.stopping.is_set():
            with self._state:
                self.receiving = False
                self._state.notify_all()
            return None
        if self.inbox:
            return self._take(self.inbox.popleft())
        self.flush_acks()
        with self._state:
            while self._detached - self._waiting >= owner.options.concurrency:
                self._state.wait(0.05)  # every slot is busy: let the broker hold the rest
                if owner.stopping.is_set():
                    return None
        self.prefetch()
        if self.inbox:  # a synchronous broker call (qos, ack) may have brought a message
            return self._take(self.inbox.popleft())
        owner.sweep_due()  # delayed messages now due go back on their queues (Redis)
        transport = owner.transport
        assert transport is not None
        busy = self._detached > 0 and not transport.concurrent_ack
        if transport.drain(0.004 if busy else 1.0):
            self.last_receive = time.monotonic()
            if self.inbox:
                return self._take(self.inbox.popleft())
            return None
        owner.watchdog(self.in_flight)
        return None

    def _take(self, delivery: Delivery) -> Delivery:
        with self._state:
            self.in_flight += 1
        return delivery

    def _untake(self) -> None:
        with self._state:
            self.in_flight -= 1

    def prefetch(self) -> None:
        base = self.owner.options.concurrency * 2
        waiting = self._waiting
        # Grow at once for handlers waiting on calls (their nested requests must get
        # through); shrink back only when none waits, not on every reply.
        current = self._prefetch_now
        wanted = base + waiting if waiting else base
        if wanted > current or (not waiting and wanted != current):
            transport = self.owner.transport
            assert transport is not None
            transport.set_prefetch(wanted)
            self._prefetch_now = wanted

    # -- running a handler inline, and handing the role over -----------------------------------

    def _run_inline(self, delivery: Delivery, pipeline: Any) -> bool:
        """Serve ``delivery`` in this thread; True if this thread still holds the role after."""
        running = _Running(self, time.monotonic(), generation=self.generation)
        _LANE.running = running
        WAIT_HOOK.hook = running
        self._inline = running
        if self._monitor_idle:
            self._monitor_wake.set()
        try:
            pipeline.serve(delivery, screened=True)
        finally:
            WAIT_HOOK.hook = None
            _LANE.running = None
            with self._state:
                running.finished = True
                if self._inline is running:
                    self._inline = None
                self.in_flight -= 1
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
        if self._idle_lanes == 0 and self.receiving:
            self._start_lane()
        self._role_holder = None
        self._role.release()

    def call_waiting(self, running: _Running, delta: int) -> None:
        with self._state:
            self._waiting += delta
            if delta > 0:
                self._hand_over(running)
            self._state.notify_all()

    # -- the monitor: hands the role over when an inline handler runs long ----------------------

    def start_monitor(self) -> None:
        threading.Thread(target=self._monitor, name="busapp-monitor", daemon=True).start()

    def _monitor(self) -> None:
        tick = self.owner.options.handoff_after
        quiet_since = time.monotonic()
        while not (self.owner.stopping.is_set() and self.in_flight == 0):
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

    # -- acks ------------------------------------------------------------------------------------

    def settle(self, delivery: Delivery, *, requeue: bool = False) -> None:
        """Ack (or requeue) ``delivery``: now, or through the role holder when this thread
        may not."""
        running = _LANE.running
        if running is not None:
            with self._state:
                # Still holding the role: from here on the monitor leaves this handler alone,
                # so nobody else drains the connection while this thread acks on it.
                running.finished = running.finished or not running.handed_over
                queue_it = running.handed_over and not self._can_ack_anywhere()
                if queue_it:
                    self._acks.append((running.generation, delivery, requeue))
            if queue_it:
                return
        try:
            delivery.requeue() if requeue else delivery.ack()
        except BrokerUnavailable as exc:
            log.warning("could not ack (connection lost); the message will be redelivered",
                        error=str(exc))

    def _can_ack_anywhere(self) -> bool:
        transport = self.owner.transport
        return transport is None or transport.concurrent_ack

    def flush_acks(self) -> None:
        while self._acks:
            with self._state:
                generation, delivery, requeue = self._acks.popleft()
            if generation == self.generation:
                delivery.requeue() if requeue else delivery.ack()

    def drain(self, graceful_timeout: float) -> None:
        """Stop consuming, requeue what was received but not started, and wait for the rest.

        Runs in the supervising thread once no lane receives; waits up to the grace period.
        """
        transport = self.owner.transport
        assert transport is not None
        try:
            transport.cancel()
            deadline = time.monotonic() + graceful_timeout
            if self.in_flight > 0:  # say why stopping takes a while
                log.info(f"waiting for {self.in_flight} in-flight message"
                         f"{'s' if self.in_flight > 1 else ''} (up to {graceful_timeout:g} s)",
                         in_flight=self.in_flight, graceful_timeout=graceful_timeout)
            while True:
                while self.inbox:
                    self.inbox.popleft().requeue()
                self.flush_acks()
                if self.in_flight <= 0 or time.monotonic() >= deadline:
                    break
                transport.drain(0.02)  # acks only travel while someone reads the connection
        except BrokerUnavailable as exc:
            log.warning("connection lost while stopping; unfinished messages will be redelivered",
                        error=str(exc))
            return
        if self.in_flight > 0:
            log.warning("grace period over; unfinished messages go back to the queue",
                        unfinished=self.in_flight, graceful_timeout=graceful_timeout)
