"""Running an App's timers: one worker at a time, across every process and host.

Each worker of an App with timers runs a :class:`TimerScheduler`: a thread with a broker
connection of its own that tries to take the App's timer lease
(:meth:`~busapp.transport.base.Transport.acquire_lease`, named ``busapp.timers.<queue>``).
The worker that holds it runs every tick; the others only keep trying. So:

- **one run per tick per App**: only the holder runs ticks, and a tick is known by its
  scheduled time. A worker that takes the lease over plans from the first tick after that
  moment, so it never runs a tick the worker before it may have run, and a tick due while
  no worker held the lease is skipped, not run late. The holder renews the lease right
  before each run, so a holder that lost it (paused past its TTL) runs nothing more.
- **takeover**: the lease's TTL is 0.6 of the shortest timer interval (0.3 s to 6 s), and
  every worker tries every third of it. When the holder dies, its lease ends with its
  connection (RabbitMQ: its socket closes; a lost host: after the missed heartbeats) or
  its TTL (Redis; under ``busapp run`` the manager releases a dead worker's lease at once),
  and another worker runs the next tick: within one interval.
- **no overlap**: a timer's next tick is planned when its run ends; a run longer than the
  interval makes the next tick wait until it ends, and the ticks missed meanwhile run once.

A tick is a message made here and served by the timer's pipeline
(:mod:`busapp.entrypoints.timer`), in a thread of its own per run, so one slow timer does
not delay another. Clocks: ticks are planned on this host's clock (Unix time), so the hosts
of a deployment need it in step (NTP), as they do for request deadlines.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
import time
import uuid
from typing import Any

import attrs

from busapp.errors import BrokerUnavailable
from busapp.log import get_logger
from busapp.transport import open_transport
from busapp.transport.base import Transport

log = get_logger("busapp.timers")

#: Seconds between RabbitMQ heartbeats on the lease connection (a vanished host's lease
#: ends after two missed ones).
HEARTBEAT = 10.0
#: Longest wait between two looks at the lease (and at the timers).
MAX_WAIT = 2.0


def lease_ttl(interval: float) -> float:
    """Seconds a lease lasts without renewal, for timers whose shortest interval is
    ``interval``: 0.6 of it, at least 0.3 s, at most 6 s."""
    return min(max(0.6 * interval, 0.3), 6.0)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds")


@attrs.define
class TimerState:
    """One timer's runs, as this worker knows them."""

    pipeline: Any
    #: Scheduled time of the next tick to run (None: not planned, or running).
    next_at: float | None = None
    #: An eager run is owed (the lease was just taken).
    eager_owed: bool = False
    running: bool = False
    #: When the last run this worker made started, and how it ended (``ok``/``error``).
    last_at: float | None = None
    last_outcome: str | None = None

    @property
    def timer(self) -> Any:
        return self.pipeline.entrypoint.timer


class TimerScheduler:
    """Holds (or waits for) an App's timer lease and runs its ticks (see the module docstring).

    Args:
        url: the broker.
        lease: the lease's name (:func:`busapp.names.timer_lease`).
        pipelines: ``{timer name: its Pipeline}``.
        key: the key ticks are signed with (the service's keyring has one), or None.
    """

    def __init__(self, url: str, lease: str, pipelines: dict[str, Any], key: Any = None) -> None:
        self.url = url
        self.lease = lease
        self.key = key
        self.owner = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.states = {name: TimerState(p) for name, p in pipelines.items()}
        now = time.time()
        self.ttl = lease_ttl(min(s.timer.schedule.interval(now) for s in self.states.values()))
        self.holding = False
        self._renewed = 0.0
        self._transport: Transport | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._runs: set[threading.Thread] = set()
        self._said_unavailable = False

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start trying for the lease (in a thread of its own)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="busapp-timers", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Start no more runs, wait up to ``timeout`` for those running, give the lease up."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for run in list(self._runs):
            run.join(max(0.0, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 5)

    # -- the lease ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                held = self._acquire()
            except BrokerUnavailable as exc:
                self._broker_lost(exc)
                self._stop.wait(min(1.0, self.ttl))
                continue
            now = time.time()
            if held and not self.holding:
                self._took_over(now)
            elif not held and self.holding:
                self._lost("another worker holds it")
            if held:
                self._start_due(now)
            self._wake.wait(self._pause(time.time()))
        self._release()

    def _acquire(self) -> bool:
        transport = self._transport
        if transport is None:
            transport = open_transport(self.url)
            transport.heartbeat = HEARTBEAT
            try:
                transport.connect()
            except BaseException:
                transport.close()
                raise
            self._transport = transport
        held = transport.acquire_lease(self.lease, self.owner, self.ttl)
        if held:
            self._renewed = time.monotonic()
        self._said_unavailable = False
        return held

    def _broker_lost(self, exc: BrokerUnavailable) -> None:
        if not self._said_unavailable:
            self._said_unavailable = True
            log.warning("timer lease unreachable; retrying", lease=self.lease, error=str(exc))
        self._lost("its broker connection was lost")
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def _release(self) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            return
        try:
            if self.holding:
                transport.release_lease(self.lease, self.owner)
        except BrokerUnavailable:
            pass  # it ends with the connection (RabbitMQ) or its TTL (Redis)
        finally:
            self.holding = False
            transport.close()

    def _took_over(self, now: float) -> None:
        self.holding = True
        for state in self.states.values():
            state.next_at = state.timer.schedule.next_after(now)
            state.eager_owed = state.timer.eager
        log.info("timers taken over: this worker runs them", lease=self.lease,
                 timers=sorted(self.states), pid=os.getpid())

    def _lost(self, why: str) -> None:
        if not self.holding:
            return
        self.holding = False
        for state in self.states.values():
            state.next_at, state.eager_owed = None, False
        log.warning("timer lease lost: another worker runs the timers", lease=self.lease,
                    reason=why, pid=os.getpid())

    def _pause(self, now: float) -> float:
        wait = min(self.ttl / 3, MAX_WAIT)
        if self.holding:
            for state in self.states.values():
                if state.eager_owed and not state.running:
                    return 0.0
                if state.next_at is not None and not state.running:
                    wait = min(wait, state.next_at - now)
        return max(wait, 0.0)

    # -- runs --------------------------------------------------------------------------------

    def _start_due(self, now: float) -> None:
        for state in self.states.values():
            if state.running or self._stop.is_set():
                continue
            eager = state.eager_owed
            if not eager and (state.next_at is None or state.next_at > now):
                continue
            if not self._still_held():
                return
            tick = now if eager else state.next_at
            if eager:
                state.eager_owed = False
            else:
                state.next_at = None  # planned again when this run ends
            state.running = True
            run = threading.Thread(target=self._run, args=(state, tick, eager),
                                   name=f"busapp-timer-{state.timer.name}", daemon=True)
            self._runs.add(run)
            run.start()

    def _still_held(self) -> bool:
        """Renew the lease right before a run: a holder that lost it runs nothing."""
        try:
            if self._acquire():
                return True
        except BrokerUnavailable as exc:
            self._broker_lost(exc)
            return False
        self._lost("another worker holds it")
        return False

    def _run(self, state: TimerState, tick: float, eager: bool) -> None:
        state.last_at = time.time()
        outcome = None
        try:
            entrypoint = state.pipeline.entrypoint
            outcome = state.pipeline.serve(entrypoint.tick(tick, eager=eager, key=self.key))
        except Exception:  # noqa: BLE001 - the pipeline logs what a timer raised; this is a bug
            log.exception("timer tick could not be served", timer=state.timer.name)
        finally:
            state.last_outcome = "ok" if outcome is not None and not outcome.failed else "error"
            if not eager and self.holding:
                now = time.time()
                schedule = state.timer.schedule
                following = schedule.next_after(tick)
                # Ticks missed while it ran: one run, at once (no overlap, no burst).
                state.next_at = following if following > now else schedule.latest(now)
            state.running = False
            self._runs.discard(threading.current_thread())
            self._wake.set()

    # -- busapp status -----------------------------------------------------------------------

    def report(self) -> dict[str, dict[str, Any]]:
        """``{timer: {schedule, holder, running, last, outcome, next}}`` as this worker sees
        it (``next``: when the holder runs it next)."""
        now = time.time()
        report = {}
        for name, state in sorted(self.states.items()):
            schedule = state.timer.schedule
            planned = state.next_at if self.holding and state.next_at is not None \
                else schedule.next_after(now)
            report[name] = {"schedule": str(schedule), "holder": self.holding,
                            "running": state.running, "last": _iso(state.last_at),
                            "outcome": state.last_outcome, "next": _iso(planned)}
        return report
