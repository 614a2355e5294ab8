"""How a worker runs: :class:`WorkerOptions`, shared by ``App.run``, the CLI and
``ServiceManager``, and the queue types busapp declares. No I/O."""

from __future__ import annotations

from typing import Any

import attrs

from busapp.core import wire

#: Queue types busapp declares (RabbitMQ's names; Redis has one kind of queue and ignores it).
QUEUE_TYPES = ("classic", "quorum")


def check_queue_type(value: str | None) -> str | None:
    """``value`` if it is None or a known queue type.

    Raises:
        ValueError: an unknown queue type.
    """
    if value is not None and value not in QUEUE_TYPES:
        msg = f"unknown queue type {value!r}; use one of {', '.join(QUEUE_TYPES)}"
        raise ValueError(msg)
    return value


@attrs.define
class WorkerOptions:
    """How a worker runs; shared by ``App.run``, the CLI and ``ServiceManager``."""

    #: Handlers running at once (a handler waiting on a bus call does not count).
    concurrency: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    #: Seconds a stopping worker waits for its in-flight messages.
    graceful_timeout: float = 30.0
    #: Largest message body accepted, in bytes.
    max_body: int = wire.DEFAULT_MAX_BODY
    #: Deliveries of one message without an answer before it is dead-lettered.
    max_deliveries: int = 3
    #: Seconds between checks that an idle worker still receives.
    watchdog_interval: float = 5.0
    #: Seconds a handler runs in the receiving thread before a standby thread takes over.
    handoff_after: float = 0.005
    #: Seconds to keep trying to reach the broker at start-up (None: forever).
    startup_timeout: float | None = None
    #: Seconds a request's handler may run (None: no limit), unless its method sets its own
    #: (``@app.method(time_limit=S)``); see :mod:`busapp.runtime.timelimit`.
    time_limit: float | None = None
    #: Seconds a handler past its time limit may take to stop before its worker exits.
    time_limit_grace: float = 10.0
    #: ``classic`` or ``quorum`` (RabbitMQ clusters, see :mod:`busapp.runtime.cluster`); None:
    #: ``$BUSAPP_QUEUE_TYPE``, else classic.
    queue_type: str | None = attrs.field(
        default=None, validator=lambda _, __, value: check_queue_type(value))

    def evolve(self, **changes: Any) -> WorkerOptions:
        """A copy with the given (non-None) fields changed."""
        return attrs.evolve(self, **{k: v for k, v in changes.items() if v is not None})
