"""What the test client does with a handler's exception: keep it as the cause of the error
reply its caller gets, or raise it in the test whose call caused it (and a call given a
timeout, which ends its wait at the timeout)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

from busapp.core.pipeline import IncomingMessage
from busapp.errors import RequestTimeout
from busapp.testing.support import HandlerError

#: Handler errors raised under the test's current top-level call (None outside one).
_COLLECTOR: contextvars.ContextVar[list[HandlerError] | None] = contextvars.ContextVar(
    "busapp_testing_collector", default=None)


class HandlerErrors:
    """The handler errors of one test client.

    Args:
        raising: whether a handler error is raised in the test (read at each call:
            ``TestClient.raise_handler_errors`` may change).
    """

    def __init__(self, raising: Callable[[], bool]) -> None:
        self._raising = raising
        #: Every exception raised by a handler that had no caller to answer.
        self.errors: list[HandlerError] = []
        #: ``{request id: exception}``: the cause of an error reply, for the caller's error.
        self.causes: dict[str, BaseException] = {}
        self._unclaimed: list[HandlerError] = []
        self._lock = threading.Lock()

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)``, then raise what handlers without a caller raised meanwhile."""
        token = _COLLECTOR.set([])
        try:
            result = func(*args, **kwargs)
        finally:
            errors = _COLLECTOR.get()
            _COLLECTOR.reset(token)
        if errors or self._unclaimed:
            self._raise(errors)
        return result

    def request(self, calling: Callable[[], Any], routing_key: str, params: Any,
                timeout: float | None) -> dict:
        """One request through a Client ``calling()`` lends, served in memory (see :meth:`run`);
        given up at ``timeout`` if one is given (:meth:`run_within`)."""
        def send() -> dict:
            with calling() as bus:
                return bus.request(routing_key, params, timeout)

        if timeout is None:
            return self.run(send)
        return self.run_within(float(timeout), routing_key, send)

    def run_within(self, timeout: float, what: str, func: Callable[..., Any],
                   *args: Any) -> Any:
        """As :meth:`run`, in a thread of its own, given up after ``timeout`` seconds.

        The in-memory broker runs a handler in the publishing thread, which nothing may
        interrupt: so the caller stops waiting at its timeout (RequestTimeout naming
        ``what``) and the handler goes on; what it raises later fails the next call.
        """
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def serve() -> None:
            token = _COLLECTOR.set([])
            try:
                outcome["result"] = func(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, if it waits
                outcome["error"] = exc
            finally:
                errors = _COLLECTOR.get() or []
                _COLLECTOR.reset(token)
                with self._lock:
                    (self._unclaimed if outcome.get("abandoned") else
                     outcome.setdefault("errors", [])).extend(errors)
                    done.set()

        threading.Thread(target=contextvars.copy_context().run, args=(serve,),
                         name=f"busapp-test-call-{what}", daemon=True).start()
        done.wait(timeout)
        with self._lock:
            outcome["abandoned"] = not done.is_set()
        if outcome["abandoned"]:
            raise RequestTimeout(f"no reply to {what!r} within {timeout:g}s; its handler is "
                                 f"still running (in a thread of its own)")
        if outcome.get("errors") or self._unclaimed:
            self._raise(outcome.get("errors"))
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def hook(self, kind: str, info: IncomingMessage, request: Any, exc: BaseException) -> None:
        """The workers' error hook: causes for error replies, HandlerErrors for the rest."""
        consumer = getattr(info.raw, "queue", None) or "?"
        if kind == "call" and request is not None and not request.is_notification:
            with self._lock:
                if len(self.causes) > 1000:  # causes nobody asked for (nested calls)
                    self.causes.clear()
                self.causes[str(request.id)] = exc
            return
        error = HandlerError(info.routing_key or "", consumer, exc)
        with self._lock:
            self.errors.append(error)
            collector = _COLLECTOR.get()
            # Outside a test's call (e.g. in the asyncio thread): raise at the next call.
            (collector if collector is not None else self._unclaimed).append(error)

    def _raise(self, errors: list[HandlerError] | None) -> None:
        with self._lock:
            errors = [*(errors or ()), *self._unclaimed]
            self._unclaimed.clear()
        if not errors or not self._raising():
            return
        first = errors[0]
        first.exception.add_note(
            f"raised by the handler on {first.consumer!r} for {first.routing_key!r} "
            "(TestClient(..., raise_handler_errors=False) collects these in "
            "client.handler_errors)")
        for other in errors[1:]:
            first.exception.add_note(f"also failed: {other.consumer!r} for {other.routing_key!r}: "
                                     f"{type(other.exception).__name__}: {other.exception}")
        raise first.exception
