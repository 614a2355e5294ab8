"""Timers, the registry's side: schedules and timer entries. No I/O.

A timer fires at the ticks of its :class:`Schedule`: every ``S`` seconds, at the multiples
of ``S`` since the Unix epoch (so every worker, on every host, agrees on when a tick is),
or at the times of a cron expression read in UTC (``busapp[cron]``: croniter). A tick is
known by its scheduled time; the worker that holds the App's timer lease runs it
(:mod:`busapp.runtime.timers`).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Collection
from typing import Any

import attrs

from busapp import _extras, names
from busapp.core.dispatch import INJECTABLE, Handler

#: Shortest interval of an ``every=`` timer, in seconds.
MIN_EVERY = 0.05


def _croniter() -> Any:
    return _extras.require("croniter", "cron", "@app.timer(cron=...) needs").croniter


def _utc(t: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, datetime.UTC)


@attrs.frozen
class Schedule:
    """When a timer fires: ``every`` seconds, or at the times of ``cron`` (UTC)."""

    every: float | None = None
    cron: str | None = None

    @classmethod
    def checked(cls, every: Any = None, cron: Any = None) -> Schedule:
        """A schedule from a timer's options.

        Raises:
            ValueError: neither or both given, a bad interval or cron expression.
            MissingExtra: ``cron`` given without croniter (``pip install 'busapp[cron]'``).
        """
        if (every is None) == (cron is None):
            raise ValueError("a timer needs one of every=SECONDS or cron='EXPRESSION'")
        if cron is not None:
            if not isinstance(cron, str) or not _croniter().is_valid(cron):
                raise ValueError(f"cron={cron!r} is not a cron expression "
                                 "(five fields, e.g. '*/5 * * * *'; a sixth for seconds)")
            return cls(cron=cron)
        if isinstance(every, datetime.timedelta):
            every = every.total_seconds()
        if isinstance(every, bool) or not isinstance(every, (int, float)) \
                or not math.isfinite(every) or every < MIN_EVERY:
            raise ValueError(f"every must be a number of seconds >= {MIN_EVERY}, got {every!r}")
        return cls(every=float(every))

    def next_after(self, t: float) -> float:
        """The first tick after time ``t`` (Unix seconds)."""
        if self.every is not None:
            return (math.floor(t / self.every) + 1) * self.every
        return float(_croniter()(self.cron, _utc(t)).get_next(float))

    def latest(self, t: float) -> float:
        """The last tick at or before time ``t``."""
        if self.every is not None:
            return math.floor(t / self.every) * self.every
        before = float(_croniter()(self.cron, _utc(t)).get_prev(float))
        at = self.next_after(before)
        return at if at <= t else before

    def interval(self, t: float) -> float:
        """Seconds between the ticks that follow ``t`` (a cron schedule's next gap)."""
        if self.every is not None:
            return self.every
        first = self.next_after(t)
        return self.next_after(first) - first

    def __str__(self) -> str:
        return f"every {self.every:g}s" if self.every is not None else f"cron {self.cron}"


@attrs.define
class Timer:
    """A function run at each tick of its schedule, once per App."""

    func: Callable[..., Any]
    schedule: Schedule
    handler: Handler
    #: Also run when a worker takes the App's timers over (at start-up, after a takeover).
    eager: bool = False

    @classmethod
    def build(cls, func: Callable[..., Any], every: Any = None, cron: Any = None,
              eager: bool = False, dependencies: Collection[str] = ()) -> Timer:
        """Check the options and inspect ``func`` once (ValueError on a bad option);
        ``dependencies``: the names registered dependencies fill."""
        if not callable(func):
            raise ValueError(f"a timer must be callable, got {func!r}")
        name = getattr(func, "__name__", "")
        if not names.NAME.match(name):
            raise ValueError(f"a timer needs a function name of [A-Za-z][A-Za-z0-9_]* "
                             f"(client.tick and busapp status name it), got {name!r}")
        schedule = Schedule.checked(every, cron)
        handler = Handler.from_function(func, name, injectables=(*INJECTABLE, *dependencies))
        return cls(func, schedule, handler, bool(eager))

    @property
    def name(self) -> str:
        return self.handler.name

    @property
    def key(self) -> tuple[str, ...]:
        """What picks the router middleware that wraps it."""
        return timer_key(self.name)

    @property
    def options(self) -> dict[str, Any]:
        """The keyword options it was registered with (to register it again elsewhere)."""
        return {"every": self.schedule.every, "cron": self.schedule.cron, "eager": self.eager}

    def unknown_params(self, dependencies: Any) -> list[str]:
        """Its parameters that nothing fills: not injectable, no dependency, no default."""
        return [p.name for p in self.handler.params
                if p.name not in dependencies and p.default is p.empty]


def timer_key(name: str) -> tuple[str, ...]:
    """The middleware key of timer ``name``."""
    return ("timer", name)
