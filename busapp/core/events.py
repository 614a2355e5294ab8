"""Events between services, the registry's side: names, patterns, handlers, retry delays.

An event is named ``"<source>.<event>"`` (``orders.placed``): words of letters, digits and
``_``, separated by dots. It travels as a plain JSON object (its payload) with the routing
key ``busapp-event.<name>`` (:func:`busapp.names.event_key`); a handler subscribes to a
name or a topic pattern (``orders.*``, ``*.placed``, ``orders.#``). No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

from busapp import names
from busapp.core import wire
from busapp.core.convert import unstructure
from busapp.core.dispatch import INJECTABLE, Handler

#: What an event handler may declare besides payload keys and dependencies (``event``: the
#: event's name).
EVENT_INJECTABLES = (*INJECTABLE, "event")
#: Retries of a failing handler before its event is dead-lettered, unless it says otherwise.
DEFAULT_RETRIES = 3
#: Seconds before the first retry; each retry waits twice as long as the one before, at
#: most :data:`MAX_DELAY`.
FIRST_DELAY = 1.0
MAX_DELAY = 60.0


def _words(text: Any) -> list[str]:
    return text.split(".") if isinstance(text, str) and text else []


def check_event_name(name: Any) -> str:
    """``name`` if it can name an event (``<source>.<event>``), else ValueError."""
    words = _words(name)
    if len(words) < 2 or not all(names.NAME.match(w) for w in words):
        raise ValueError(f"event name {name!r} must be '<source>.<event>': two or more words "
                         "of [A-Za-z][A-Za-z0-9_]* separated by dots, e.g. 'orders.placed'")
    return name


def check_pattern(pattern: Any) -> str:
    """``pattern`` if a handler can subscribe to it (a name, or words and ``*``/``#``)."""
    words = _words(pattern)
    if not words or not all(w in names.WILDCARDS or names.NAME.match(w) for w in words):
        raise ValueError(f"event pattern {pattern!r} must be an event name or a topic pattern: "
                         "words of [A-Za-z][A-Za-z0-9_]*, '*' (one word) or '#' (any number), "
                         "separated by dots, e.g. 'orders.placed', 'orders.*', '*.placed'")
    return pattern


def check_retries(retries: Any) -> int:
    """``retries`` if it is a whole number from 0, else ValueError."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
    return retries


def check_allow(allow: Any, where: str) -> frozenset[str] | None:
    """``allow`` as a frozenset of key ids (None stays None), else ValueError."""
    if allow is None:
        return None
    if isinstance(allow, str) or not all(isinstance(k, str) for k in allow):
        raise ValueError(f"allow of {where} must be a set of key ids, got {allow!r}")
    return frozenset(allow)


def retry_delay(retried: int) -> float:
    """Seconds before the retry that follows ``retried`` earlier ones: 1, 2, 4, ... 60."""
    return min(FIRST_DELAY * 2 ** max(retried, 0), MAX_DELAY)


def event_message(name: str, payload: Mapping[str, Any]) -> tuple[str, dict[str, Any], str]:
    """What emitting ``name`` with ``payload`` publishes: its routing key, its body (the
    payload as a JSON object, attrs models as objects) and a new event id (sent as the
    message's correlation id).

    Raises:
        ValueError: ``name`` is not an event name.
    """
    check_event_name(name)
    body = {str(key): unstructure(value) for key, value in payload.items()}
    return names.event_key(name), body, wire.new_id()


@attrs.define
class EventHandler:
    """A function subscribed to events matching ``pattern``."""

    func: Callable[..., Any]
    pattern: str
    handler: Handler
    #: True: every worker of the App handles each event (its own queue); False: one of them.
    broadcast: bool = False
    #: Retries after the handler raised, before the event is dead-lettered.
    retries: int = DEFAULT_RETRIES
    #: Key ids that may emit to it when its App has a keyring (None: any key).
    allow: frozenset[str] | None = None

    @classmethod
    def build(cls, func: Callable[..., Any], pattern: str, *, broadcast: bool = False,
              retries: int = DEFAULT_RETRIES, allow: Collection[str] | None = None,
              dependencies: Collection[str] = ()) -> EventHandler:
        """Check the options and inspect ``func`` once (ValueError on a bad option);
        ``dependencies``: the names registered dependencies fill."""
        if not callable(func):
            raise ValueError(f"an event handler must be callable, got {func!r}")
        name = getattr(func, "__name__", "")
        if not names.NAME.match(name):
            raise ValueError(f"an event handler needs a function name of [A-Za-z][A-Za-z0-9_]* "
                             f"(its queue is named after it), got {name!r}")
        pattern = check_pattern(pattern)
        handler = Handler.from_function(func, name,
                                        injectables=(*EVENT_INJECTABLES, *dependencies))
        handler.allow = check_allow(allow, f"event handler {name!r}")
        return cls(func, pattern, handler, bool(broadcast), check_retries(retries),
                   handler.allow)

    @property
    def name(self) -> str:
        """The function's name (its queue's last word, and its label in logs and metrics)."""
        return self.handler.name

    @property
    def binding_key(self) -> str:
        return names.event_binding(self.pattern)

    def queue_name(self, app_queue: str) -> str:
        """Its queue (shared by the App's workers; a broadcast handler's workers add to it)."""
        return names.event_queue(app_queue, self.pattern, self.name)

    @property
    def key(self) -> tuple[str, ...]:
        """What picks the router middleware that wraps it."""
        return event_handler_key(self.pattern, self.name)

    @property
    def options(self) -> dict[str, Any]:
        """The keyword options it was registered with (to register it again elsewhere)."""
        return {"broadcast": self.broadcast, "retries": self.retries, "allow": self.allow}


def event_handler_key(pattern: str, func_name: str) -> tuple[str, ...]:
    """The middleware key of the handler ``func_name`` of ``pattern``."""
    return ("bus_event", pattern, func_name)
