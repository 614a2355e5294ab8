"""The one structlog configuration of busapp.

Modules log through ``structlog.get_logger("busapp.<module>")`` and bind
per-message context with :mod:`structlog.contextvars`; only
:func:`configure_logging` (called by the CLI, or by an application that
wants busapp's format) calls ``structlog.configure``. Log lines go to
stderr, so a command's stdout stays its result.

Two formats. ``json`` (the default off a terminal): one JSON object per line with every
field, for machines. ``console`` (on a terminal): :class:`ConsoleLines`, for people::

    12:30:05.123 info    call method=add outcome=ok duration_ms=0.41 pid=4242
                              routing_key=simple.add id=3f0c...    (one line)

Example::

    from busapp.log import configure_logging
    configure_logging("debug", fmt="json")
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

#: Names accepted for ``level``, lowest first.
LEVELS = ("debug", "info", "warning", "error", "critical")
#: Names accepted for ``fmt``.
FORMATS = ("console", "json")


class NamedLogger(structlog.WriteLogger):
    """A WriteLogger that remembers the name given to ``get_logger``.

    WriteLogger writes each line with one ``write`` call (PrintLogger's ``print``
    makes two), so the lines of worker processes sharing stderr never interleave.
    """

    def __init__(self, file: TextIO | None = None, name: str | None = None) -> None:
        super().__init__(file)
        self.name = name


class NamedLoggerFactory:
    """Builds a :class:`NamedLogger` per ``get_logger(name)``, writing to ``file`` (default:
    stderr at call time)."""

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file

    def __call__(self, *args: Any) -> NamedLogger:
        return NamedLogger(self.file or sys.stderr, args[0] if args else None)


def add_logger_name(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Processor: add ``logger`` (the name given to ``get_logger``) when there is one."""
    name = getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


def level_number(level: str | int) -> int:
    """``"info"`` -> ``logging.INFO``.

    Raises:
        ValueError: not one of :data:`LEVELS`.
    """
    if isinstance(level, int):
        return level
    name = str(level).lower()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of: {', '.join(LEVELS)}")
    return logging.getLevelName(name.upper())


def choose_format(fmt: str | None, stream: TextIO | None = None) -> str:
    """``fmt`` if given, else ``console`` when ``stream`` (stderr) is a terminal, else ``json``."""
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r}; use one of: {', '.join(FORMATS)}")
        return fmt
    return "console" if _isatty(stream) else "json"


def _isatty(stream: TextIO | None) -> bool:
    return bool(getattr(stream or sys.stderr, "isatty", lambda: False)())


def _renderer(fmt: str, file: TextIO | None) -> Any:
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    return ConsoleLines(colors=_isatty(file))


#: Fields a console line shows first, after the event, in this order.
FIRST = ("method", "outcome", "duration_ms", "code")
#: Fields a console line leaves out when they repeat ``id`` (a call's own ids).
SAME_AS_ID = ("correlation_id", "request_id")
#: The field a console line shows as a banner below it: ``{section: [entries]}``.
BANNER = "serves"
_STYLE = {"debug": "\x1b[2m", "info": "\x1b[32m", "warning": "\x1b[33m",
          "error": "\x1b[31;1m", "critical": "\x1b[31;1m"}
_DIM, _BRIGHT, _RESET = "\x1b[2m", "\x1b[1m", "\x1b[0m"


class ConsoleLines:
    """The console renderer: time, level, event, then ``method outcome duration_ms code``,
    then the other fields in the order they were bound; fields that are None, busapp's
    logger name and ids that repeat ``id`` are left out. A ``serves`` field (the start-up
    banner of a worker) is shown below the line, one entry per line, like Celery's
    ``[tasks]``; an exception's traceback too.
    """

    def __init__(self, colors: bool = False) -> None:
        self.colors = colors

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> str:
        fields = {k: v for k, v in event_dict.items() if v is not None and k[:1] != "_"}
        when = str(fields.pop("timestamp", ""))
        level = str(fields.pop("level", method_name))
        event = str(fields.pop("event", ""))
        banner = fields.pop(BANNER, None)
        trace = fields.pop("exception", None)
        if str(fields.get("logger", "")).startswith("busapp"):
            del fields["logger"]
        for key in SAME_AS_ID:
            if key in fields and fields[key] == fields.get("id"):
                del fields[key]
        ordered = [(k, fields.pop(k)) for k in FIRST if k in fields] + list(fields.items())
        if banner:
            ordered = [(k, v) for k, v in ordered if k != "routing_keys"]  # the banner says it
        line = " ".join(filter(None, (self._paint(when[11:23] or when, _DIM),
                                      self._paint(f"{level:<7}", _STYLE.get(level, "")),
                                      self._paint(event, _BRIGHT),
                                      " ".join(f"{k}={_text(v)}" for k, v in ordered))))
        if isinstance(banner, dict):
            for section, entries in banner.items():
                line += f"\n  [{section}]" + "".join(f"\n    . {e}" for e in entries)
        return line + (f"\n{trace}" if trace else "")

    def _paint(self, text: str, style: str) -> str:
        return f"{style}{text}{_RESET}" if self.colors and style else text


def _text(value: Any) -> str:
    """A field's value as a console line shows it: bare when it reads unambiguously."""
    if isinstance(value, str):
        return value if value and not any(c.isspace() or c in "\"='" for c in value) \
            else json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _processors(fmt: str, file: TextIO | None) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_logger_name,
        # The console shows the local time of day (the renderer cuts it from ISO text).
        structlog.processors.TimeStamper(fmt="iso", utc=fmt == "json"),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _renderer(fmt, file),
    ]


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is at the time."""

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class LibraryLogger:
    """``structlog.get_logger(name)``, quiet while nobody configured structlog.

    Unconfigured, structlog prints every line, debug included, to the program's stdout;
    a library must not. Until the program (or :func:`configure_logging`) configures
    structlog, this logger writes only warnings and errors, to stderr, as the standard
    library's ``logging`` does by default.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._configured = structlog.get_logger(name)
        self._fallback: Any = None

    def __getattr__(self, attr: str) -> Any:
        if structlog.is_configured():
            return getattr(self._configured, attr)
        if self._fallback is None:
            self._fallback = structlog.wrap_logger(
                _StderrLogger(self.name),
                processors=[structlog.contextvars.merge_contextvars,
                            structlog.processors.add_log_level, add_logger_name,
                            structlog.processors.TimeStamper(fmt="iso"),
                            structlog.dev.ConsoleRenderer(colors=False)],
                wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        return getattr(self._fallback, attr)


def get_logger(name: str) -> LibraryLogger:
    """The logger busapp's modules that run in a user's program (the Client, the storage
    client, the embedded broker) log through: see :class:`LibraryLogger`."""
    return LibraryLogger(name)


def quiet() -> bool:
    """True while nobody configured structlog: busapp, a library then, writes no per-call lines.

    (structlog's default would print every debug line to a program's stdout.)
    """
    return not structlog.is_configured()


def writes_info() -> bool:
    """False when an info line would be dropped: nobody configured structlog (see
    :func:`quiet`), or its wrapper class filters below warning (as ``configure_logging``'s
    does at ``warning``); then a per-message line is not worth building. A wrapper class
    that cannot say (no ``is_enabled_for``) counts as writing it."""
    if not structlog.is_configured():
        return False
    enabled = getattr(structlog.get_config()["wrapper_class"], "is_enabled_for", None)
    return enabled is None or bool(enabled(None, logging.INFO))


def configure_logging(level: str | int = "info", fmt: str | None = None, *,
                      file: TextIO | None = None, cache: bool = False) -> None:
    """Configure structlog (and route stdlib logging, e.g. kombu's, through it).

    Args:
        level: lowest level logged (``debug`` ... ``critical``); below it, a log call is a no-op.
        fmt: ``console`` or ``json``; None picks ``console`` on a terminal, ``json`` otherwise.
        file: where lines go; default stderr.
        cache: freeze each logger on first use (faster; for a process that configures once,
            like the CLI; leave False where tests reconfigure or use ``capture_logs``).

    Raises:
        ValueError: an unknown level or format.
    """
    number = level_number(level)
    fmt = choose_format(fmt, file)
    structlog.configure(
        processors=_processors(fmt, file),
        # The filtering logger turns calls below the level into no-op methods: cheap debug lines.
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=NamedLoggerFactory(file),
        cache_logger_on_first_use=cache,
    )
    _route_stdlib(number, fmt, file)


def _route_stdlib(level: int, fmt: str, file: TextIO | None) -> None:
    renderer = _renderer(fmt, file)
    formatter = structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=fmt == "json"),
            structlog.processors.format_exc_info,
        ],
    )
    handler = logging.StreamHandler(file or sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("busapp")
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "busapp"] + [handler]
    # Libraries are chatty at INFO/DEBUG; their warnings still show.
    root.setLevel(max(level, logging.WARNING))
