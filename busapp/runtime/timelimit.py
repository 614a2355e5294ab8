"""Per-handler time limits: answer the caller at the limit, stop the handler, or the worker.

A request whose handler has a ``time_limit`` (``@app.method(time_limit=S)``, else the
worker's ``WorkerOptions.time_limit``) is watched by one thread per worker. At the limit:

1. the caller gets -32603 with ``data.exception == "TimeLimitExceeded"`` at once (the
   handler's own reply, if it ever comes, is dropped);
2. :class:`~busapp.errors.TimeLimitExceeded` is raised inside the handler's thread
   (CPython's ``PyThreadState_SetAsyncExc``: it lands at the next Python bytecode, so it
   stops Python code, but not a call blocked in C, such as a socket read);
3. a handler still running ``grace`` seconds later cannot be interrupted: the worker
   process exits (status :data:`EXIT_HUNG`) so that its manager replaces it, rather than
   keep a slot wedged for ever. Its unacked messages go back to the queue.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import structlog

from busapp.errors import InternalError, TimeLimitExceeded

log = structlog.get_logger("busapp.worker")

#: Exit status of a worker that ended itself because a handler would not stop.
EXIT_HUNG = 75


def _async_raise(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in thread ``thread_id`` at its next bytecode (None: cancel a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc else None)


@attrs.define(eq=False)
class Watched:
    """One request running under a time limit."""

    deadline: float
    limit: float
    method: str | None
    on_expiry: Callable[[InternalError], None]
    thread_id: int = attrs.field(factory=threading.get_ident)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    answered: bool = False  # the caller got its reply (from the handler or the watcher)
    done: bool = False
    interrupted: bool = False

    def claim_reply(self) -> bool:
        """True once: whoever claims first (the handler or the watcher) sends the reply."""
        with self.lock:
            if self.answered:
                return False
            self.answered = True
            return True

    def finish(self) -> None:
        """The handler's thread left the request: no interruption may land after this."""
        with self.lock:
            self.done = True
            if self.interrupted:
                _async_raise(self.thread_id, None)  # cancel it if it has not landed yet


class TimeLimits:
    """The watcher of one worker's time-limited requests."""

    def __init__(self, grace: float, on_hung: Callable[[Watched], None] | None = None) -> None:
        self.grace = grace
        self.on_hung = on_hung or _exit_hung
        self._watched: set[Watched] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, limit: float, method: str | None,
              on_expiry: Callable[[InternalError], None]) -> Watched:
        """Watch the request the calling thread is about to run."""
        watched = Watched(time.monotonic() + limit, limit, method, on_expiry)
        with self._lock:
            self._watched.add(watched)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="busapp-time-limits",
                                                daemon=True)
                self._thread.start()
        self._wake.set()
        return watched

    def stop_watching(self, watched: Watched) -> None:
        watched.finish()
        with self._lock:
            self._watched.discard(watched)

    def _run(self) -> None:
        while True:
            with self._lock:
                watched = list(self._watched)
            if not watched:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            now = time.monotonic()
            for item in watched:
                if now >= item.deadline + self.grace and not item.done:
                    self.on_hung(item)
                elif now >= item.deadline:
                    self._expire(item)
            time.sleep(min(0.05, max(0.0, min(i.deadline for i in watched) - now)) or 0.05)

    def _expire(self, item: Watched) -> None:
        if item.claim_reply():
            error = InternalError(
                f"{item.method!r} ran past its time limit of {item.limit:g}s",
                data={"exception": TimeLimitExceeded.__name__, "time_limit": item.limit})
            try:
                item.on_expiry(error)
            except Exception:  # noqa: BLE001 - the interruption below must still happen
                log.exception("could not send the time-limit error reply")
        with item.lock:
            if not item.done and not item.interrupted:
                item.interrupted = True
                log.warning("handler past its time limit; interrupting it", method=item.method,
                            time_limit=item.limit)
                _async_raise(item.thread_id, TimeLimitExceeded)


def _exit_hung(item: Watched) -> None:
    log.error("handler still running past its time limit and grace period; ending this "
              "worker so that it is replaced", method=item.method, time_limit=item.limit,
              pid=os.getpid())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_HUNG)


def any_limit(*limits: Any) -> float | None:
    """The first limit that is set (a handler's own, then the worker's)."""
    for limit in limits:
        if limit:
            return float(limit)
    return None
