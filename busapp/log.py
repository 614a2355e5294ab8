"""The one structlog configuration of busapp.

Modules log through ``structlog.get_logger("busapp.<module>")`` and bind
per-message context with :mod:`structlog.contextvars`; only
:func:`configure_logging` (called by the CLI, or by an application that
wants busapp's format) calls ``structlog.configure``. Log lines go to
stderr, so a command's stdout stays its result.

Example::

    from busapp.log import configure_logging
    configure_logging("debug", fmt="json")
"""

from __future__ import annotations

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
    return structlog.dev.ConsoleRenderer(colors=_isatty(file))


def _processors(fmt: str, file: TextIO | None) -> list[Any]:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=fmt == "json"),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        shared.append(structlog.processors.format_exc_info)
    return shared + [_renderer(fmt, file)]


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
            (structlog.processors.format_exc_info if fmt == "json"
             else structlog.processors.StackInfoRenderer()),
        ],
    )
    handler = logging.StreamHandler(file or sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("busapp")
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "busapp"] + [handler]
    # Libraries are chatty at INFO/DEBUG; their warnings still show.
    root.setLevel(max(level, logging.WARNING))
