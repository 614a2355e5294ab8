"""The one structlog configuration: formats, levels, context, and stdlib routing."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from busapp import App, Client
from busapp.errors import InternalError, RequestTimeout
from busapp.log import choose_format, configure_logging, writes_info
from busapp.models import Host
from busapp.testing import TestClient
from tests.test_embedded import wait_until


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


@contextlib.contextmanager
def serving() -> Iterator[tuple[App, Callable[..., Any]]]:
    """A worker of a small App in a thread of this process, on kombu's in-memory transport, so its
    log lines go through this process's logging configuration; yields (app, call)."""
    with serving_service() as (app, _, call):
        yield app, call


@contextlib.contextmanager
def serving_service() -> Iterator[tuple[App, Any, Callable[..., Any]]]:
    """:func:`serving`, yielding the service too (to stop it): (app, service, call)."""
    app = App(f"t{uuid.uuid4().hex[:10]}")

    @app.method()
    def ping() -> str:
        return "pong"

    @app.method()
    def add(x: int, y: int) -> int:
        return x + y

    @app.method()
    def boom() -> None:
        raise ZeroDivisionError("boom")

    @app.method()
    def nap(seconds: float) -> None:
        structlog.get_logger("test").info("napping")
        time.sleep(seconds)

    @app.on_storage_event(Host, "created")
    def host_added(event: str, model: Host) -> None:
        pass

    exchange = f"test-{app.name}"
    service = app.service_class(exchange, "memory://", app.qkwargs())
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        with Client("memory://", exchange, timeout=10) as bus:
            deadline = time.monotonic() + 20
            while True:  # until the worker's queue is bound
                try:
                    bus.call(f"{app.name}.ping", timeout=0.5)
                    break
                except RequestTimeout:
                    if time.monotonic() > deadline:
                        raise
            yield app, service, bus.call
    finally:
        service.stop()
        thread.join(30)


def lines(stream: io.StringIO) -> list[dict]:
    """The JSON log lines written to ``stream``."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_event_level_logger_and_time(out: io.StringIO) -> None:
    """In json format each call is one JSON object with the standard keys and its own."""
    configure_logging("info", "json", file=out)
    structlog.get_logger("busapp.service").info("worker ready", pid=42, routing_keys=["a.*"])
    [line] = lines(out)
    assert line["event"] == "worker ready" and line["level"] == "info"
    assert line["logger"] == "busapp.service" and line["pid"] == 42
    assert line["routing_keys"] == ["a.*"]
    assert line["timestamp"].endswith("Z")


def test_console_format_is_plain_text(out: io.StringIO) -> None:
    """In console format the line is readable text, not JSON,
    and has no colour codes off a terminal."""
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


def test_worker_logs_each_call_at_info_level(out: io.StringIO) -> None:
    """At info, a worker writes one "call" line per message:
    method, outcome, code, time, pid, ids."""
    configure_logging("info", "json", file=out)
    with serving() as (app, call):
        assert call(f"{app.name}.add", 1, 2) == 3
    [line] = [line for line in lines(out)
              if line["event"] == "call" and line["routing_key"] == f"{app.name}.add"]
    assert line["level"] == "info" and line["logger"] == "busapp.worker" and line["outcome"] == "ok"
    assert line["method"] == "add" and line["code"] is None and line["pid"] > 0
    assert line["id"] and line["correlation_id"] == line["id"] and line["duration_ms"] >= 0


def test_worker_call_line_of_an_error_has_its_code(out: io.StringIO) -> None:
    """A call answered with an error is logged with outcome "error" and the JSON-RPC code."""
    configure_logging("info", "json", file=out)
    with serving() as (app, call):
        with pytest.raises(InternalError):
            call(f"{app.name}.boom")
    [line] = [line for line in lines(out) if line["event"] == "call" and line["method"] == "boom"]
    assert line["outcome"] == "error" and line["code"] == -32603


def test_worker_at_warning_level_writes_no_call_lines(out: io.StringIO) -> None:
    """At warning, the per-call lines are left out."""
    configure_logging("warning", "json", file=out)
    with serving() as (app, call):
        assert call(f"{app.name}.add", 1, 2) == 3
    events = [line["event"] for line in lines(out)]
    assert "call" not in events


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


def test_handler_errors_carry_the_traceback(out: io.StringIO) -> None:
    """A handler that raises is logged by the worker as one JSON line holding the traceback
    and the call."""
    configure_logging("info", "json", file=out)
    with serving() as (app, call):
        with pytest.raises(InternalError):
            call(f"{app.name}.boom")
    [line] = [line for line in lines(out) if line["event"] == "handler raised"]
    assert line["level"] == "error" and line["method"] == "boom"
    assert line["routing_key"] == f"{app.name}.boom"
    assert "Traceback" in line["exception"] and "ZeroDivisionError: boom" in line["exception"]


def test_stdlib_warnings_use_the_same_format(out: io.StringIO) -> None:
    """Library logging (kombu's) comes out as the same JSON lines; its info chatter does not."""
    configure_logging("info", "json", file=out)
    logging.getLogger("kombu.test").info("chatter")
    logging.getLogger("kombu.test").warning("connection %s lost", "x")
    [line] = lines(out)
    assert line == {**line, "event": "connection x lost", "level": "warning",
                    "logger": "kombu.test"}


def test_configuring_twice_keeps_one_stdlib_handler(out: io.StringIO) -> None:
    """Reconfiguring replaces busapp's stdlib handler instead of adding a second one."""
    configure_logging("info", "json", file=out)
    configure_logging("info", "json", file=out)
    logging.getLogger("kombu.test").warning("once")
    assert len(lines(out)) == 1


@pytest.mark.parametrize(("level", "fmt", "named"), [("loud", None, "debug, info"),
                                                     ("info", "xml", "console, json")])
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


def _call_lines(logs: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [(line["log_level"], line["outcome"], line["code"]) for line in logs
            if line["event"] == "call"]


@pytest.mark.parametrize("method, params, code", [
    ("nope", {}, -32601), ("add", {"x": "a"}, -32602), ("boom", {}, -32603)])
def test_a_failed_notification_is_a_warning_with_its_code(method: str, params: dict,
                                                          code: int) -> None:
    """A notification to an unknown method, with bad params, or whose handler raised is logged at
    warning with outcome "error" and its code: nobody else hears of the failure."""
    app = App(f"n{uuid.uuid4().hex[:8]}")

    @app.method()
    def add(x: int) -> int:
        return x

    @app.method()
    def boom() -> None:
        raise ZeroDivisionError("boom")

    client = TestClient(app, raise_handler_errors=False)
    with structlog.testing.capture_logs() as logs:
        client.bus.notify(f"{app.name}.{method}", **params)
    assert _call_lines(logs) == [("warning", "error", code)]


def test_a_notification_that_succeeds_stays_an_info_line() -> None:
    """A notification served without error is logged at info with outcome "notification"."""
    app = App(f"n{uuid.uuid4().hex[:8]}")

    @app.method()
    def add(x: int) -> int:
        return x

    client = app.test_client()
    with structlog.testing.capture_logs() as logs:
        client.bus.notify(f"{app.name}.add", x=1)
    assert _call_lines(logs) == [("info", "notification", None)]


def test_a_failed_storage_event_is_a_warning_with_its_code() -> None:
    """A storage-event handler that raises is logged at warning with code -32603, not as a
    success."""
    app = App(f"n{uuid.uuid4().hex[:8]}")

    @app.on_storage_event(Host, "created")
    def created(event: str, model: Host) -> None:
        raise RuntimeError("no")

    client = TestClient(app, raise_handler_errors=False)
    with structlog.testing.capture_logs() as logs:
        client.storage.save(Host.new(address="10.1.1.1"))
    [line] = [line for line in logs if line["event"] == "storage event"]
    assert (line["log_level"], line["outcome"], line["code"]) == ("warning", "error", -32603)


# -- the console format ------------------------------------------------------------------

def test_console_call_line_starts_with_method_outcome_duration(out: io.StringIO) -> None:
    """A console call line reads: time, level, event, then method, outcome, duration_ms, then
    the rest."""
    configure_logging("info", "console", file=out)
    structlog.get_logger("busapp.worker").info("call", pid=7, method="add", code=None,
                                               outcome="ok", duration_ms=0.5, routing_key="s.add")
    words = out.getvalue().split()
    assert words[1:6] == ["info", "call", "method=add", "outcome=ok", "duration_ms=0.5"]
    assert len(words[0]) == len("12:30:05.123") and words[0][2] == ":"
    assert words[6:] == ["pid=7", "routing_key=s.add"]  # code=None and the logger left out


def test_console_line_shows_one_id_when_the_ids_are_the_same(out: io.StringIO) -> None:
    """id, correlation_id and request_id that are one UUID appear once; a different one stays."""
    configure_logging("info", "console", file=out)
    log = structlog.get_logger("busapp.worker")
    log.info("call", id="u-1", correlation_id="u-1", request_id="u-1")
    log.info("call", id="u-2", correlation_id="u-2", request_id="u-1")
    first, second = out.getvalue().splitlines()
    assert first.count("u-1") == 1 and "correlation_id" not in first
    assert "id=u-2" in second and "request_id=u-1" in second and "correlation_id" not in second


def test_json_keeps_every_field_of_the_call_line(out: io.StringIO) -> None:
    """Off a terminal the call line keeps every field, the repeated ids and a null code too."""
    configure_logging("info", "json", file=out)
    with serving() as (app, call):
        call(f"{app.name}.add", 1, 2)
    [line] = [line for line in lines(out) if line["event"] == "call" and line["method"] == "add"]
    assert {"id", "correlation_id", "request_id", "code", "outcome", "duration_ms", "pid",
            "routing_key", "logger", "timestamp", "level"} <= line.keys()
    assert line["id"] == line["correlation_id"] == line["request_id"] and line["code"] is None


def test_worker_ready_lists_methods_and_storage_events(out: io.StringIO) -> None:
    """The first "worker ready" line carries what the worker serves: methods with their params,
    and storage subscriptions with their handler."""
    configure_logging("info", "json", file=out)
    with serving() as (app, _):
        pass
    [ready] = [line for line in lines(out) if line["event"] == "worker ready"]
    assert f"{app.name}.add(x: int, y: int)" in ready["serves"]["methods"]
    assert ready["serves"]["storage events"] == ["notify.storage.Host.created -> host_added"]


def test_console_banner_lists_each_entry_on_its_own_line(out: io.StringIO) -> None:
    """On the console the banner follows the ready line, a section per kind, an entry per line."""
    configure_logging("info", "console", file=out)
    structlog.get_logger("busapp.worker").info(
        "worker ready", pid=1, routing_keys=["s.*"],
        serves={"methods": ["s.add(x: int, y: int)", "s.ping()"], "timers": ["sweep"]})
    assert out.getvalue().splitlines()[1:] == [
        "  [methods]", "    . s.add(x: int, y: int)", "    . s.ping()", "  [timers]", "    . sweep"]
    assert "routing_keys" not in out.getvalue()


def test_stopping_with_a_call_in_flight_says_it_waits(out: io.StringIO) -> None:
    """Stopped while a call runs, the worker logs "waiting for 1 in-flight message (up to S s)"."""
    configure_logging("info", "json", file=out)
    with serving_service() as (app, service, call):
        caller = threading.Thread(target=call, args=(f"{app.name}.nap", 1.0))
        caller.start()
        assert wait_until(lambda: any(line.get("event") == "napping" for line in lines(out)))
        service.stop()
        caller.join(30)
    [waiting] = [line for line in lines(out) if line["event"].startswith("waiting for")]
    assert waiting["event"] == "waiting for 1 in-flight message (up to 30 s)"
    assert waiting["in_flight"] == 1


def test_a_storage_event_line_carries_the_request_id_of_the_call_that_caused_it(
        out: io.StringIO) -> None:
    """The save made while serving a call publishes the event with that call's request id,
    and the event's log line shows it."""
    app = App(f"n{uuid.uuid4().hex[:8]}")

    @app.method()
    def add_host(address: str, storage: Any) -> None:
        storage.save(Host.new(address=address))

    @app.on_storage_event(Host, "created")
    def host_added(event: str, model: Host) -> None:
        pass

    configure_logging("info", "json", file=out)
    app.test_client().call("add_host", "10.2.2.2")
    [call] = [line for line in lines(out)
              if line["event"] == "call" and line["method"] == "add_host"]
    [event] = [line for line in lines(out) if line["event"] == "storage event"]
    assert event["method"] == "host_added" and event["request_id"] == call["id"]


def test_at_warning_a_failed_notification_is_still_written(out: io.StringIO) -> None:
    """At warning the per-message info lines are not even built, but a failed notification's
    warning line, the only trace of its failure, is still written."""
    configure_logging("warning", "json", file=out)
    assert writes_info() is not LEVELS_KNOWN
    app = App(f"n{uuid.uuid4().hex[:8]}")

    @app.method()
    def add(x: int) -> int:
        return x

    client = TestClient(app, raise_handler_errors=False)
    client.bus.notify(f"{app.name}.add", x=1)
    client.bus.notify(f"{app.name}.add", x="a")
    assert client.call("add", 2) == 2
    calls = [(line["level"], line["outcome"], line["code"]) for line in lines(out)
             if line["event"] == "call"]
    assert calls == [("warning", "error", -32602)]


#: structlog's filtering loggers tell their level in newer releases (``is_enabled_for``; 23.1
#: has none): there busapp cannot tell, and builds every line as it always did.
LEVELS_KNOWN = hasattr(structlog.make_filtering_bound_logger(logging.WARNING), "is_enabled_for")


def test_writes_info_follows_the_configured_level(out: io.StringIO) -> None:
    """Unconfigured (a library): no; configured at info: yes; at warning: no (when structlog
    can say)."""
    structlog.reset_defaults()
    assert not writes_info()
    configure_logging("info", "json", file=out)
    assert writes_info()
    configure_logging("warning", "json", file=out)
    assert writes_info() is not LEVELS_KNOWN
