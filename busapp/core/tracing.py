"""Following one user action across services: request ids and OpenTelemetry spans.

Request ids. Every request a worker serves gets a *request id*: the
``x-busapp-request-id`` header it came with, else its own correlation id (so the
first call of a chain names it). While the handler runs, the id is bound to the log
context (``request_id`` on every line) and each call the handler makes carries it on
in the same header, so the lines of one action can be found across services.

Tracing. When OpenTelemetry is installed (``pip install 'busapp[otel]'``) and a
tracer provider is configured, :meth:`busapp.client.sync.Client.request` makes a CLIENT span
and puts its W3C ``traceparent`` (and ``tracestate``) in the request's headers; the
worker makes a SERVER span that continues it and is current while the handler runs,
so calls the handler makes are its children. Without OpenTelemetry, or with no
provider configured, no span is made and nothing is imported per call.

The two hooks are :func:`outgoing` (in ``Client.request``) and :func:`incoming`
(in ``Worker.serve``); both are cheap when tracing is off.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Header carrying the request id of the user action a call belongs to.
REQUEST_ID_HEADER = "x-busapp-request-id"

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "busapp_request_id", default=None)

#: The ``opentelemetry`` API modules once imported, False if it is not installed,
#: None before the first look.
_otel: Any = None
#: The tracer provider set by :func:`use_tracer_provider` (None: OpenTelemetry's global one).
_provider: Any = None
#: ``(provider, tracer)``: busapp's tracer from the provider last used.
_tracer: tuple[Any, Any] = (None, None)


def current_request_id() -> str | None:
    """The request id of the message being served in this context, if any."""
    return _request_id.get()


def carried() -> dict[str, Any]:
    """The properties a notification or plain message sent while serving a request carries:
    the request id header (so the lines of what it causes, a storage event say, name the
    action too); none outside a request."""
    current = _request_id.get()
    return {} if current is None else {"headers": {REQUEST_ID_HEADER: current}}


def use_tracer_provider(provider: Any) -> None:
    """Make busapp's spans with ``provider`` instead of OpenTelemetry's global one (None: the
    global).

    Example::

        from opentelemetry.sdk.trace import TracerProvider
        busapp.core.tracing.use_tracer_provider(TracerProvider())
    """
    global _provider
    _provider = provider


def _api() -> tuple[Any, Any]:
    """The OpenTelemetry API and busapp's tracer, or ``(None, None)`` if it is not installed
    or no tracer provider is configured."""
    global _otel, _tracer
    otel = _otel
    if otel is None:
        otel = _otel = _import_otel()
    if otel is False:
        return None, None
    provider = _provider
    if provider is None:
        if otel.fast:  # a module attribute, not get_tracer_provider()'s look into os.environ
            provider = otel.trace._TRACER_PROVIDER
            if provider is None:
                return None, None  # installed but not configured: spans would be no-ops
        else:
            provider = otel.trace.get_tracer_provider()
            if isinstance(provider, otel.trace.ProxyTracerProvider):
                return None, None
    cached, tracer = _tracer
    if cached is not provider:
        tracer = provider.get_tracer("busapp")
        _tracer = (provider, tracer)
    return otel, tracer


def _import_otel() -> Any:
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:
        return False

    class Otel:
        """The three API modules busapp uses."""

    Otel.context, Otel.propagate, Otel.trace = context, propagate, trace  # type: ignore[attr-defined]
    # The global provider is read from trace's module attribute when that is all there
    # is to it (no provider named in the environment, which get_tracer_provider() would load).
    Otel.fast = (hasattr(trace, "_TRACER_PROVIDER")  # type: ignore[attr-defined]
                 and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ)
    return Otel


def _attributes(routing_key: str | None, request_id: Any) -> dict[str, Any]:
    service, _, method = (routing_key or "").rpartition(".")
    return {"rpc.system": "jsonrpc", "rpc.service": service, "rpc.method": method,
            "rpc.jsonrpc.version": "2.0", "rpc.jsonrpc.request_id": str(request_id),
            "messaging.destination.name": routing_key or ""}


def outgoing(routing_key: str, request_id: str, headers: dict[str, Any]) -> Any:
    """Prepare a request's ``headers``: the request id, and a trace context when tracing is on.

    Returns:
        The CLIENT span to end with :func:`end_outgoing`, or None (no tracing).
    """
    current = _request_id.get()
    if current is not None:
        headers[REQUEST_ID_HEADER] = current
    otel, tracer = _api()
    if otel is None:
        return None
    span = tracer.start_span(routing_key, kind=otel.trace.SpanKind.CLIENT,
                             attributes=_attributes(routing_key, request_id))
    otel.propagate.inject(headers, context=otel.trace.set_span_in_context(span))
    return span


def end_outgoing(span: Any, response: dict | None, exc: BaseException | None) -> None:
    """End the CLIENT span of a call with its outcome (an error reply or an exception)."""
    _end(span, response, exc)


@contextmanager
def outgoing_event(routing_key: str, event_id: str, headers: dict[str, Any]) -> Iterator[None]:
    """Around an event's publish: :func:`outgoing` before, its span ended after (with the
    exception, if the publish raised)."""
    span = outgoing(routing_key, event_id, headers)
    try:
        yield
    except BaseException as exc:
        if span is not None:
            _end(span, None, exc)
        raise
    if span is not None:
        _end(span, None, None)


def _end(span: Any, response: dict | None, exc: BaseException | None) -> None:
    otel = _otel
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        span.set_attribute("rpc.jsonrpc.error_code", error.get("code"))
        span.set_attribute("rpc.jsonrpc.error_message", str(error.get("message")))
        span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, str(error.get("message"))))
    elif exc is not None:
        span.record_exception(exc)
        span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, type(exc).__name__))
    span.end()


class Incoming:
    """What :func:`incoming` set up for one served message; undone by :meth:`close`."""

    __slots__ = ("_attached", "_span", "_token", "request_id")

    def __init__(self, request_id: str | None, token: Any, span: Any = None,
                 attached: Any = None) -> None:
        self.request_id = request_id
        self._token = token
        self._span = span
        self._attached = attached

    def close(self, response: dict | None) -> None:
        """End the SERVER span (if any) with the response's outcome; restore the context."""
        _request_id.reset(self._token)
        span = self._span
        if span is not None:
            _otel.context.detach(self._attached)
            _end(span, response, None)


def incoming(headers: dict[str, Any], routing_key: str | None, correlation_id: str | None,
             request_id: Any) -> Incoming:
    """Enter the context of a request being served: its request id, and its SERVER span.

    Args:
        headers: the message's headers (``x-busapp-request-id``, ``traceparent``).
        routing_key: its routing key (the span's name).
        correlation_id, request_id: the message's correlation id and JSON-RPC id; the
            first one given names the action when no request id header came.
    """
    action = headers.get(REQUEST_ID_HEADER) if headers else None
    if not isinstance(action, str):
        action = correlation_id or (None if request_id is None else str(request_id))
    token = _request_id.set(action)
    otel, tracer = _api()
    if otel is None:
        return Incoming(action, token)
    parent = otel.propagate.extract(headers or {})
    span = tracer.start_span(
        routing_key or "?", context=parent, kind=otel.trace.SpanKind.SERVER,
        attributes=_attributes(routing_key, request_id))
    attached = otel.context.attach(otel.trace.set_span_in_context(span, parent))
    return Incoming(action, token, span, attached)
