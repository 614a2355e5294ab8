"""The one structlog configuration: formats, levels, context, and stdlib routing."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from busapp.log import choose_format, configure_logging


class Unrenderable:
    """A value whose rendering fails, to prove a filtered call never reaches the processors."""

    def __repr__(self) -> str:
        raise AssertionError("a filtered log call was rendered")

    __str__ = __repr__


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def out():
    """A stream to log into; structlog and the root logger are restored afterwards."""
    stream = io.StringIO()
    yield stream
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "busapp"]
    root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict]:
    """The JSON log lines written to ``stream``."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_event_level_logger_and_time(out: io.StringIO) -> None:
    """In json format each call is one JSON object with the standard keys and its own."""
    configure_logging("info", "json", file=out)
    structlog.get_logger("busapp.service").info("worker ready", pid=42, routing_keys=["a.*"])
    [line] = lines(out)
    assert line["event"] == "worker ready" and line["level"] == "info"
    assert line["logger"] == "busapp.service" and line["pid"] == 42 and line["routing_keys"] == ["a.*"]
    assert line["timestamp"].endswith("Z")


def test_console_format_is_plain_text(out: io.StringIO) -> None:
    """In console format the line is readable text, not JSON, and has no colour codes off a terminal."""
    configure_logging("info", "console", file=out)
    structlog.get_logger("busapp.x").info("worker ready", pid=42)
    text = out.getvalue()
    assert "worker ready" in text and "pid=42" in text and "\x1b[" not in text
    with pytest.raises(ValueError):
        json.loads(text)


def test_format_defaults_to_console_on_a_terminal_else_json() -> None:
    """No format given: console for a TTY, JSON lines for anything else."""
    assert choose_format(None, FakeTTY()) == "console"
    assert choose_format(None, io.StringIO()) == "json"
    assert choose_format("json", FakeTTY()) == "json"


def test_below_level_calls_are_dropped_unrendered(out: io.StringIO) -> None:
    """At info, a debug call writes nothing and never runs the processors."""
    configure_logging("info", "json", file=out)
    log = structlog.get_logger("busapp.service")
    log.debug("call", value=Unrenderable())
    log.info("kept")
    assert [line["event"] for line in lines(out)] == ["kept"]


def test_debug_level_shows_per_call_lines(out: io.StringIO) -> None:
    """At debug, the per-message line comes through with its fields."""
    configure_logging("debug", "json", file=out)
    structlog.get_logger("busapp.service").debug("call", routing_key="s.add", id="1",
                                                 duration_ms=1.5, outcome="ok")
    [line] = lines(out)
    assert line["level"] == "debug" and line["outcome"] == "ok" and line["duration_ms"] == 1.5


def test_contextvars_are_merged(out: io.StringIO) -> None:
    """Context bound with structlog.contextvars appears on every line until cleared."""
    configure_logging("info", "json", file=out)
    log = structlog.get_logger("busapp.service")
    structlog.contextvars.bind_contextvars(id="abc", routing_key="s.add")
    log.info("inside")
    structlog.contextvars.clear_contextvars()
    log.info("outside")
    inside, outside = lines(out)
    assert inside["id"] == "abc" and inside["routing_key"] == "s.add"
    assert "id" not in outside


def test_errors_carry_the_traceback(out: io.StringIO) -> None:
    """log.error(..., exc_info=exc) writes the traceback into the JSON line."""
    configure_logging("info", "json", file=out)
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError as exc:
        structlog.get_logger("busapp.service").error("handler raised", exc_info=exc)
    [line] = lines(out)
    assert "Traceback" in line["exception"] and "ZeroDivisionError: boom" in line["exception"]


def test_stdlib_warnings_use_the_same_format(out: io.StringIO) -> None:
    """Library logging (kombu's) comes out as the same JSON lines; its info chatter does not."""
    configure_logging("info", "json", file=out)
    logging.getLogger("kombu.test").info("chatter")
    logging.getLogger("kombu.test").warning("connection %s lost", "x")
    [line] = lines(out)
    assert line == {**line, "event": "connection x lost", "level": "warning", "logger": "kombu.test"}


def test_configuring_twice_keeps_one_stdlib_handler(out: io.StringIO) -> None:
    """Reconfiguring replaces busapp's stdlib handler instead of adding a second one."""
    configure_logging("info", "json", file=out)
    configure_logging("info", "json", file=out)
    logging.getLogger("kombu.test").warning("once")
    assert len(lines(out)) == 1


@pytest.mark.parametrize(("level", "fmt", "named"), [("loud", None, "debug, info"), ("info", "xml", "console, json")])
def test_unknown_level_or_format_names_the_choices(level: str, fmt: str | None, named: str) -> None:
    """A bad level or format raises ValueError listing what is accepted."""
    with pytest.raises(ValueError, match=named):
        configure_logging(level, fmt)


class CountingStream(io.StringIO):
    """Records every write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_line_is_one_write(out: io.StringIO) -> None:
    """A log line is written in one call, so workers sharing stderr never interleave their lines."""
    stream = CountingStream()
    configure_logging("info", "json", file=stream)
    structlog.get_logger("busapp.service").info("worker ready", pid=1)
    logging.getLogger("kombu.test").warning("lost")
    assert len(stream.writes) == 2 and all(w.endswith("}\n") for w in stream.writes)
