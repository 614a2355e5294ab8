"""Request ids and OpenTelemetry spans across nested calls (busapp.core.tracing), in the test client
and on Redis and RabbitMQ."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from busapp import App, Client
from busapp.core import tracing
from busapp.errors import InternalError
from busapp.core.tracing import REQUEST_ID_HEADER
from tests._services import delete_queues


def chain_app(name: str) -> App:
    """``outer`` calls ``middle``, which calls ``inner``;
    ``inner`` reports what its message carried."""
    app = App(name)

    @app.method()
    def outer(bus: Any) -> dict:
        return bus.call(f"{name}.middle")

    @app.method()
    def middle(bus: Any) -> dict:
        return bus.call(f"{name}.inner")

    @app.method()
    def inner(message: Any) -> dict:
        return {"request_id": message.headers.get(REQUEST_ID_HEADER),
                "traceparent": message.headers.get("traceparent")}

    @app.method()
    def fails(bus: Any) -> None:
        bus.call(f"{name}.boom")

    @app.method()
    def boom() -> None:
        raise ValueError("boom")

    @app.method()
    def ping() -> str:
        return "pong"

    return app


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """Log entries as dicts, with the per-message context (ids) merged in;
    structlog is reset after."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield capture.entries
    finally:
        structlog.reset_defaults()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """busapp's spans go to an in-memory exporter for the test
    (the global provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def test_nested_calls_carry_the_first_calls_request_id(unique: str) -> None:
    """A call made inside a handler carries the request id of the call that started the chain."""
    app = chain_app(f"tr{unique}")
    with app.test_client() as client, captured_logs() as logs:
        seen = client.call("outer")
    lines = [e for e in logs if e["event"] == "call" and e["routing_key"].startswith(app.name)]
    assert [e["method"] for e in lines] == ["inner", "middle", "outer"]
    outer_id = lines[-1]["id"]
    assert seen["request_id"] == outer_id
    assert {e["request_id"] for e in lines} == {outer_id}


def test_request_id_header_of_the_caller_is_kept(unique: str) -> None:
    """A request arriving with a request id keeps it, instead of starting a new one."""
    app = chain_app(f"tr{unique}")
    with app.test_client() as client, captured_logs() as logs:
        token = tracing._request_id.set("action-42")
        try:
            seen = client.call("middle")
        finally:
            tracing._request_id.reset(token)
    assert seen["request_id"] == "action-42"
    assert {e["request_id"] for e in logs if e["event"] == "call"} == {"action-42"}


def _check_chain(finished: list[Any], name: str) -> None:
    """The spans of outer -> middle -> inner: one trace,
    each server span the child of its client span."""
    chain = {f"{name}.{m}" for m in ("outer", "middle", "inner")}
    ours = [s for s in finished if s.name in chain]
    assert len({s.context.trace_id for s in ours}) == 1
    kinds = {(s.name, s.kind) for s in ours}
    for method in ("outer", "middle", "inner"):
        assert (f"{name}.{method}", trace.SpanKind.SERVER) in kinds
    by_id = {s.context.span_id: s for s in ours}
    for method in ("middle", "inner"):
        [server] = [s for s in ours
                    if s.name == f"{name}.{method}" and s.kind == trace.SpanKind.SERVER]
        client_span = by_id[server.parent.span_id]
        assert client_span.kind == trace.SpanKind.CLIENT and client_span.name == server.name
        caller = by_id[client_span.parent.span_id]
        assert caller.kind == trace.SpanKind.SERVER
    assert all(s.attributes["rpc.system"] == "jsonrpc" for s in ours)


def test_nested_call_chain_shares_one_trace(spans: InMemorySpanExporter, unique: str) -> None:
    """With OpenTelemetry configured, outer -> middle -> inner make one trace of linked spans."""
    app = chain_app(f"tr{unique}")
    with app.test_client() as client:
        seen = client.call(f"{app.name}.outer")
    finished = spans.get_finished_spans()
    _check_chain(finished, app.name)
    [inner] = [s for s in finished
               if s.name == f"{app.name}.inner" and s.kind == trace.SpanKind.SERVER]
    assert seen["traceparent"].split("-")[1] == format(inner.context.trace_id, "032x")


def test_error_reply_marks_the_spans_as_errors(spans: InMemorySpanExporter, unique: str) -> None:
    """A call answered with an error ends its client and server spans with an error
    status and code."""
    app = chain_app(f"tr{unique}")
    with app.test_client() as client, pytest.raises(InternalError):
        client.call(f"{app.name}.fails")
    boom = [s for s in spans.get_finished_spans() if s.name == f"{app.name}.boom"]
    assert {s.kind for s in boom} == {trace.SpanKind.CLIENT, trace.SpanKind.SERVER}
    for span in boom:
        assert span.status.status_code == trace.StatusCode.ERROR
        assert span.attributes["rpc.jsonrpc.error_code"] == -32603


def test_nested_call_chain_shares_one_trace_on_a_broker(spans: InMemorySpanExporter,
                                                        broker_url: str, exchange: str,
                                                        unique: str) -> None:
    """On Redis and RabbitMQ too, the spans of a nested chain share one trace id."""
    app = chain_app(f"tr{unique}")
    service = app.service_class(exchange, broker_url, app.qkwargs())
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        with Client(broker_url, exchange, timeout=10) as bus:
            deadline = time.monotonic() + 20
            while True:
                try:
                    bus.call(f"{app.name}.ping", timeout=0.5)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
            seen = bus.call(f"{app.name}.outer")
        # A worker ends its server span just after it sent the reply: wait for the outer one.
        deadline = time.monotonic() + 10
        while not any(s.name == f"{app.name}.outer" and s.kind == trace.SpanKind.SERVER
                      for s in spans.get_finished_spans()) and time.monotonic() < deadline:
            time.sleep(0.01)
        finished = spans.get_finished_spans()
        _check_chain(finished, app.name)
        [outer_client] = [s for s in finished if s.name == f"{app.name}.outer"
                          and s.kind == trace.SpanKind.CLIENT]
        assert outer_client.parent is None
        assert seen["traceparent"].split("-")[1] == format(outer_client.context.trace_id, "032x")
    finally:
        service.stop()
        thread.join(30)
        delete_queues(broker_url, exchange, app.queue)


def test_no_trace_headers_without_a_configured_provider() -> None:
    """With OpenTelemetry installed but not configured, requests carry no traceparent."""
    code = textwrap.dedent('''
        import sys
        from busapp import App
        app = App("plain")

        @app.method()
        def headers(message) -> list:
            return sorted(message.headers)

        with app.test_client() as client:
            print(client.call("headers"))
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "traceparent" not in out.stdout and "x-busapp-deadline" in out.stdout


def test_an_emitted_event_has_a_client_span_and_its_handler_a_server_span_in_one_trace(
        spans: InMemorySpanExporter, unique: str) -> None:
    """``bus.emit`` opens a CLIENT span named by the event's routing key around its publish; the
    handler's span is its child, in the same trace."""
    app = App(f"tr{unique}")
    seen: list[int] = []

    @app.on_event(f"tr{unique}.placed")
    def placed(n: int) -> None:
        seen.append(n)

    with app.test_client() as client:
        client.emit(f"tr{unique}.placed", n=7)
    assert seen == [7]
    finished = spans.get_finished_spans()
    [client_span] = [s for s in finished if s.kind == trace.SpanKind.CLIENT]
    assert client_span.name.endswith(f"tr{unique}.placed")
    assert client_span.status.status_code != trace.StatusCode.ERROR
    children = [s for s in finished if s.parent is not None
                and s.parent.span_id == client_span.context.span_id]
    assert children and all(s.context.trace_id == client_span.context.trace_id for s in children)


def test_an_event_publish_that_raises_ends_its_span_as_an_error(
        spans: InMemorySpanExporter) -> None:
    """The publish failing (the broker down, say) ends the event's CLIENT span with the error."""
    headers: dict[str, Any] = {}
    with pytest.raises(ConnectionError), tracing.outgoing_event("events.tr.placed", "e-1", headers):
        raise ConnectionError("broker down")
    [span] = spans.get_finished_spans()
    assert span.kind == trace.SpanKind.CLIENT
    assert span.status.status_code == trace.StatusCode.ERROR
    assert "traceparent" in headers
