"""ServiceManager: run N worker processes of a service and keep them alive.

Workers are forked (the service class and its arguments are never pickled),
share the service's named queue, and are replaced when they die: at once if it had
been ready (at most :attr:`ServiceManager.restarts_per_second` times a second per slot),
so no poison request or kill leaves the service short of workers; after a back-off that
doubles per death if it never was. SIGINT/SIGTERM stops them gracefully.

One manager may run several services (``busapp run`` of a module with several Apps):
:meth:`ServiceManager.add` hands it another manager's service, count and options, and
the workers of all of them are supervised alike, by one process.

Readiness crosses the fork through one shared double per started worker: the
manager sets ``service.ready_callback`` before ``service.run()``, and the
service calls it once, when it first consumes; the callback writes the
(system-wide) monotonic time into the shared double. It is a lock-free
``RawValue`` on purpose: a worker SIGKILLed inside a locked ``Event.set()``
would leave the lock held and hang the manager.

Only a worker that dies *before it was ever ready* counts toward a crash loop:
after ``max_fast_failures`` such deaths in a row the manager gives up with
:class:`CrashLoopError` instead of spinning on a start-up bug. A worker that
was ready and then died (OOM kill, segfault, kill -9, a poison request) is replaced
forever. A worker that gave up reaching the broker (``--startup-timeout``) exits with
:data:`EXIT_BROKER_UNREACHABLE`; the manager then stops at once with
:class:`~busapp.errors.BrokerUnavailable` rather than start it again.
"""

from __future__ import annotations

import inspect
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from typing import Any

import attrs
import structlog

from busapp.entrypoints import control
from busapp.errors import BrokerUnavailable, CrashLoopError
from busapp.runtime.cleanup import mark_worker_process, release_dead_worker, sweep
from busapp.transport import mask_url, preload, resolve_broker_url
from busapp.core.options import WorkerOptions

log = structlog.get_logger("busapp.manager")


@attrs.define
class _Slot:
    """One worker position: its current process and the history that sets its back-off."""

    index: int
    #: The manager whose service this slot runs (the supervising one, or one it was handed
    #: by :meth:`ServiceManager.add`).
    owner: Any = None
    process: Any = None
    started: float = 0.0
    #: Shared double: monotonic time the current worker became ready, 0.0 until then.
    ready_at: Any = None
    #: Consecutive deaths before ready (the crash-loop count, and what sets the back-off).
    fast_failures: int = 0
    restart_at: float | None = None


#: Exit status of a worker that gave up reaching the broker (``startup_timeout``).
EXIT_BROKER_UNREACHABLE = 3


def backoff_delay(deaths: int, cap: float) -> float:
    """Seconds to wait before restarting after ``deaths`` consecutive deaths before ready:
    0.5, 1, 2, ... cap."""
    return min(0.5 * 2 ** max(deaths - 1, 0), cap)


def restart_delay(slot: _Slot, now: float, was_ready: bool, cap: float,
                  restarts_per_second: float) -> float:
    """Seconds before ``slot``'s dead worker is started again.

    A worker that had become ready: none, except to keep the slot under
    ``restarts_per_second`` starts. One that never was: :func:`backoff_delay` of the
    slot's deaths before ready.
    """
    if not was_ready:
        return backoff_delay(slot.fast_failures, cap)
    return max(0.0, slot.started + 1.0 / restarts_per_second - now)


def _ready_setter(ready_at: Any) -> Any:
    """The worker's ``ready_callback``: stamp the shared double with the time it became ready."""

    def ready() -> None:
        if not ready_at.value:
            ready_at.value = time.monotonic()

    return ready


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the manager dies, even by kill -9 (Linux), so no worker is orphaned."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the getppid check below still helps
        pass
    if os.getppid() != parent_pid:  # the manager died before prctl took effect
        os._exit(0)


def _worker_main(service_class: type, kwargs: dict[str, Any], options: WorkerOptions,
                 parent_pid: int, ready_at: Any = None, metrics: Any = None,
                 banner: bool = True) -> None:
    """Entry point of a worker process; ``ready_at`` is its slot's shared readiness double;
    ``metrics``: the manager's metrics endpoint, if any (it gives each worker a recorder);
    ``banner``: list what it serves when ready (the first worker of each service does)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent(parent_pid)
    mark_worker_process()
    structlog.contextvars.clear_contextvars()
    try:
        service = service_class(**kwargs)
        service.options = options
        service.show_banner = banner
        if ready_at is not None:
            service.ready_callback = _ready_setter(ready_at)
        if metrics is not None:
            service.make_worker().metrics = metrics.recorder(control.service_name(service))
        service.run()
    except BaseException as exc:  # noqa: BLE001 - report why before the process dies
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        status = 1
        if isinstance(exc, BrokerUnavailable) and options.startup_timeout is not None:
            status = EXIT_BROKER_UNREACHABLE  # it gave up: the manager says so, once
        else:
            log.error("worker failed", pid=os.getpid(), exc_info=exc)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


class ServiceManager:
    """Run ``process_count`` processes of ``service_class`` on one shared queue.

    Args:
        service_class: a :class:`~busapp.runtime.service.CommissaireService` subclass.
        process_count: how many worker processes.
        exchange_name, connection_url, qkwargs: passed to each worker's constructor
            (``qkwargs`` only if its ``__init__`` takes it).
        **kwargs: further constructor arguments.

    Attributes set before :meth:`run` tune it: ``graceful_timeout``,
    ``concurrency`` (applied to each worker), ``max_backoff``, ``restarts_per_second``,
    ``max_fast_failures``.
    """

    #: Seconds workers get to finish in-flight messages on shutdown.
    graceful_timeout: float = 30.0
    #: Handler threads per worker (None: the service's own default).
    concurrency: int | None = None
    #: Longest wait before restarting a worker that died before it was ever ready.
    max_backoff: float = 30.0
    #: Most starts a second of one slot's workers (a worker that had been ready is
    #: otherwise replaced at once).
    restarts_per_second: float = 4.0
    #: Consecutive deaths before ready of one slot after which the manager gives up.
    max_fast_failures: int = 5
    #: Where the workers' metrics are served, summed (None: no metrics): an object with
    #: ``start()``, ``recorder(service)``, ``worker_died(pid, service)`` and ``close()``, e.g.
    #: :class:`busapp.ops.metrics.MetricsEndpoint`; started before the first worker.
    metrics: Any = None

    def __init__(self, service_class: type, process_count: int, exchange_name: str | None = None,
                 connection_url: str | None = None, qkwargs: list[dict] | None = None,
                 *, options: WorkerOptions | None = None, **kwargs: Any) -> None:
        if process_count < 1:
            raise ValueError(f"process_count must be at least 1, got {process_count}")
        self.service_class = service_class
        self.process_count = process_count
        self.exchange_name = exchange_name
        self.connection_url = connection_url
        self.qkwargs = qkwargs
        self.kwargs = kwargs
        #: The workers' options (default: the service class's ``worker_options``).
        self.options = options
        if options is not None:
            self.graceful_timeout = options.graceful_timeout
        self._stopping = threading.Event()
        self._slots: list[_Slot] = []
        self._ctx = multiprocessing.get_context("fork")
        #: Further services run by this manager (see :meth:`add`).
        self.others: list[ServiceManager] = []

    def add(self, other: ServiceManager) -> None:
        """Also run ``other``'s workers (its service class, process count, arguments and
        options) under this manager: one process supervises them all, with one signal
        handling and one metrics endpoint. ``other`` itself is never run."""
        if other is self or other in self.others:
            raise ValueError(f"{other._service_name()!r} is already run by this manager")
        self.others.append(other)

    @property
    def managed(self) -> list[ServiceManager]:
        """This manager and those :meth:`add` handed it: every service it runs."""
        return [self, *self.others]

    def _service_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.kwargs, exchange_name=self.exchange_name,
                      connection_url=self.connection_url)
        if self.qkwargs is not None:
            kwargs["qkwargs"] = self.qkwargs
        params = inspect.signature(self.service_class).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            dropped = [k for k in kwargs if k not in params]
            if "qkwargs" in dropped:
                log.warning("service __init__ takes no qkwargs; its own queues are used",
                            service=self.service_class.__name__)
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        return kwargs

    def _options(self) -> WorkerOptions:
        base = (self.options or getattr(self.service_class, "worker_options", None)
                or WorkerOptions())
        return base.evolve(concurrency=self.concurrency, graceful_timeout=self.graceful_timeout)

    @property
    def pids(self) -> list[int]:
        """Pids of the live workers."""
        return [s.process.pid for s in self._slots
                if s.process is not None and s.process.is_alive()]

    def run(self) -> None:
        """Start the workers, keep them alive, and return after a graceful stop.

        Raises:
            CrashLoopError: a worker died ``max_fast_failures`` times in a row before it was ready.
        """
        for spec in self.managed:
            spec.connection_url = resolve_broker_url(spec.connection_url)
            preload(spec.connection_url)  # once here, not in every worker it starts
        self._stopping.clear()
        self._install_signal_handlers()
        log.info("manager starting", pid=os.getpid(),
                 workers=sum(spec.process_count for spec in self.managed),
                 service=", ".join(spec.service_class.__name__ for spec in self.managed),
                 broker=mask_url(self.connection_url))
        self._slots = [_Slot(i, spec) for spec in self.managed
                       for i in range(spec.process_count)]
        try:
            if self.metrics is not None:  # before the first fork: the workers inherit it
                self.metrics.start()
            for slot in self._slots:
                self._start(slot)
            for url in dict.fromkeys(spec.connection_url for spec in self.managed):
                if url is not None:
                    sweep(url)  # what workers killed with their manager left (Redis)
            self._supervise()
        finally:
            self._stop_all()
            if self.metrics is not None:
                self.metrics.close()

    def _service_name(self) -> str:
        """The name the workers answer ``busapp status`` by (see
        :func:`busapp.entrypoints.control.service_name`): an App's name, else their first
        queue's name (as CommissaireService sets it)."""
        app = getattr(self.service_class, "app", None)
        if app is not None:
            return str(app.name)
        return str((self.qkwargs or [{}])[0].get("name") or self.service_class.__name__.lower())

    def _timer_lease(self) -> str | None:
        """The timer lease of this service's App (an App's service class says which; another
        service has none)."""
        timer_lease = getattr(self.service_class, "timer_lease", None)
        queue = (self.qkwargs or [{}])[0].get("name")
        if timer_lease is None or not queue:
            return None
        return timer_lease(str(queue))

    def stop(self) -> None:
        """Ask :meth:`run` to stop all workers gracefully and return."""
        self._stopping.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())

    def _start(self, slot: _Slot) -> None:
        spec = slot.owner
        banner = slot.index == 0 and slot.process is None  # once per service, not per restart
        slot.ready_at = self._ctx.RawValue("d", 0.0)
        process = self._ctx.Process(
            target=_worker_main, name=f"busapp-worker-{slot.index}",
            args=(spec.service_class, spec._service_kwargs(), spec._options(), os.getpid(),
                  slot.ready_at, self.metrics, banner),
        )
        process.start()
        slot.process, slot.started, slot.restart_at = process, time.monotonic(), None
        log.info("worker started", pid=process.pid, slot=slot.index, **self._named(slot))

    def _named(self, slot: _Slot) -> dict[str, str]:
        """``{"service": name}`` when this manager runs several services (else nothing)."""
        return {"service": slot.owner._service_name()} if self.others else {}

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            sentinels = [s.process.sentinel for s in self._slots if s.restart_at is None]
            multiprocessing.connection.wait(sentinels, timeout=0.25)
            now = time.monotonic()
            for slot in self._slots:
                if self._stopping.is_set():
                    return
                if slot.restart_at is None and not slot.process.is_alive():
                    self._on_death(slot, now)
                elif slot.restart_at is not None and now >= slot.restart_at:
                    self._start(slot)

    def _on_death(self, slot: _Slot, now: float) -> None:
        code = slot.process.exitcode
        ready_at = slot.ready_at.value
        if ready_at:
            slot.fast_failures = 0
        else:
            slot.fast_failures += 1
            self._check_unreachable(slot, code)
            self._check_crash_loop(slot, code)
        spec = slot.owner
        if spec.connection_url is not None:  # resolved by run() before any worker starts
            release_dead_worker(spec.connection_url, slot.process.pid, spec._timer_lease())
        if self.metrics is not None:
            self.metrics.worker_died(slot.process.pid, spec._service_name())
        delay = restart_delay(slot, now, bool(ready_at), self.max_backoff,
                              self.restarts_per_second)
        slot.restart_at = now + delay
        log.warning("worker died; restarting", pid=slot.process.pid, slot=slot.index,
                    reason=_exit_reason(code), was_ready=bool(ready_at),
                    uptime_s=round(now - slot.started, 2), restart_in_s=round(delay, 3),
                    **self._named(slot))

    def _check_unreachable(self, slot: _Slot, code: int | None) -> None:
        """Stop at once when a worker gave up reaching the broker (``startup_timeout``): a
        new worker would only wait as long again."""
        if code == EXIT_BROKER_UNREACHABLE:
            spec = slot.owner
            timeout = spec._options().startup_timeout
            raise BrokerUnavailable(
                f"no worker could reach the broker at {mask_url(spec.connection_url)} within "
                f"{timeout:g}s of starting; check the broker URL and that the broker runs")

    def _check_crash_loop(self, slot: _Slot, code: int | None) -> None:
        """Give up when the slot's workers died ``max_fast_failures`` times in a row before
        ready."""
        if slot.fast_failures >= self.max_fast_failures:
            of = f" of {slot.owner._service_name()!r}" if self.others else ""
            raise CrashLoopError(
                f"worker {slot.index}{of} failed {slot.fast_failures} times before it was ever "
                f"ready (last: {_exit_reason(code)}); see the log above for its error"
            )

    def _stop_all(self) -> None:
        live = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
        grace = max(spec.graceful_timeout for spec in self.managed)
        if live:
            log.info("stopping workers", workers=len(live), graceful_timeout=grace)
        for process in live:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace + 5
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker did not stop in time; killing", pid=process.pid)
                process.kill()
                process.join(5)
        log.info("manager stopped", pid=os.getpid())
