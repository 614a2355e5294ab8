"""RPC methods: JSON-RPC requests on a service's shared queue, each answered to its caller.

The queue is bound with ``<service>.*`` (or the ``routing_key`` of each ``qkwargs``
entry); the last segment of a request's routing key names the method. Running one is
:func:`busapp.core.dispatch.process_encoded`: parse, bind and convert params, call the
handler (through the App's middleware and dependencies), encode the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from busapp import names
from busapp.core import dispatch, wire
from busapp.core.pipeline import IncomingMessage, Outcome
from busapp.entrypoints.base import ErrorHook
from busapp.errors import Forbidden, RemoteProcedureCallError
from busapp.transport.base import QueueSpec


class RpcEntrypoint:
    """A service's bus methods, served from its RPC queues.

    Args:
        handlers: ``{method name: Handler}`` (a handler's ``allow`` and ``time_limit`` apply).
        specs: the RPC queues and their bindings.
        max_body: largest body decoded, in bytes.
    """

    kind = "call"
    answers = True

    def __init__(self, handlers: Mapping[str, dispatch.Handler], specs: list[QueueSpec],
                 max_body: int | None) -> None:
        self.handlers = handlers
        self.specs = specs
        self.max_body = max_body

    def queue_specs(self) -> list[QueueSpec]:
        return list(self.specs)

    def describe(self) -> list[str]:
        """``service.method(params)`` for each method, as the start-up banner lists them."""
        binding = self.specs[0].binding_keys[0] if self.specs and self.specs[0].binding_keys \
            else ""
        prefix = binding[:-2] if binding.endswith(".*") else binding.rsplit(".", 1)[0]
        return [f"{prefix}.{name}({', '.join(handler.describe_params())})"
                for name, handler in sorted(self.handlers.items())]

    def admit(self, caller: str, routing_key: str | None) -> RemoteProcedureCallError | None:
        method = names.method_of(routing_key) or ""
        allow = getattr(self.handlers.get(method), "allow", None)
        if allow is not None and caller not in allow:
            return Forbidden(f"key {caller!r} may not call {method!r}",
                             data={"key": caller, "method": method})
        return None

    def time_limit(self, message: IncomingMessage) -> float | None:
        body = message.body
        if not isinstance(body, dict) or message.id is None:
            return None
        method = body.get("method")
        handler = self.handlers.get(method) if isinstance(method, str) else None
        return getattr(handler, "time_limit", None)

    def label(self, message: IncomingMessage) -> str | None:
        body = message.body
        method = body.get("method") if isinstance(body, dict) else None
        return method if isinstance(method, str) else None

    def run(self, message: IncomingMessage, context: Mapping[str, Any],
            on_error: ErrorHook) -> Outcome:
        delivery = message.raw
        if message.problem is not None:
            return Outcome(wire.error_response(None, message.problem))
        # A parsed object goes in as is; anything else is read again from the bytes, so a
        # double-encoded Commissaire body and a JSON scalar get their own exact error.
        body = message.body if isinstance(message.body, dict) else delivery.body
        failure: list[BaseException] = []

        def failed(request: wire.Request | None, exc: BaseException) -> None:
            failure.append(exc)
            on_error(self.kind, message, request, exc)

        def unanswered(exc: BaseException) -> None:  # a notification's: logged as its outcome
            if not failure:
                failure.append(exc)

        response, payload = dispatch.process_encoded(
            self.handlers, body, content_type=delivery.content_type,
            routing_key=message.routing_key, context=context, on_error=failed,
            max_body=self.max_body, on_unanswered=unanswered)
        return Outcome(response, payload, error=failure[0] if failure else None)
