"""The pipeline driver: every message of every entrypoint kind, through the same stages.

::

    screen   (the receiving thread, before the handler's time starts)
             the caller's deadline passed -> dropped unrun;
             redelivered -> counted; past max_deliveries -> dead-lettered, caller told
    verify   a keyring: signed by one of its keys, for the routing key the broker
             delivered with, inside the window, not seen before, allowed by the
             entrypoint; a reply_to that is not a reply queue -> dropped unrun
    decode   the body's JSON, at most max_body bytes (an IncomingMessage)
    run      the entrypoint's step, under middleware and dependencies, observed
             (trace span, log context and line, counters, metrics), time-limited
    reply    the answer to reply_to, signed for the caller; then settle: ack, or (as
             the entrypoint's outcome says) a copy sent again later or dead-lettered
             first (busapp.runtime.retry)

The stages are in one method each, called in one place (:meth:`Pipeline.serve`), so an
entrypoint kind only says what it consumes and what running a message means
(:mod:`busapp.entrypoints.base`): it cannot skip a check, and a fix to a stage fixes
every kind. The worker (:mod:`busapp.runtime.worker`) owns the connection and the
threads; the pipeline asks it (its ``host``) to publish, settle and count.
"""

from __future__ import annotations

from typing import Any, Protocol

from busapp.core import wire
from busapp.core.options import WorkerOptions
from busapp.core.pipeline import (
    ACK,
    REQUEUE,
    IncomingMessage,
    Outcome,
    expired_by,
    reply_target_allowed,
)
from busapp.entrypoints.base import Entrypoint, ErrorHook
from busapp.log import get_logger
from busapp.errors import BrokerUnavailable, InvalidRequest, ParseError, Refused
from busapp.runtime.gate import RefusalLog
from busapp.runtime.observe import Observer
from busapp.runtime.redelivery import (
    count_redelivery,
    poison_error,
    republished_key,
    retry_count,
)
from busapp.runtime.retry import error_line
from busapp.runtime.timelimit import TimeLimits, Watched, any_limit
from busapp.transport.base import Delivery, Transport

log = get_logger("busapp.worker")

#: What the caller of a request past its time limit got, as far as counting goes.
_TIMED_OUT = Outcome({"error": {"code": -32603}})


class Host(Protocol):
    """What a pipeline needs of its worker."""

    options: WorkerOptions
    observer: Observer
    gate: Any
    time_limits: TimeLimits | None
    transport: Transport | None
    on_handler_error: ErrorHook

    def context(self, message: IncomingMessage) -> dict[str, Any]: ...

    def publish_reply(self, reply_to: str, response: dict | bytes, correlation_id: Any,
                      key: Any) -> None: ...

    def settle(self, delivery: Delivery, *, requeue: bool = False) -> None: ...

    def resend(self, message: IncomingMessage, outcome: Outcome) -> None: ...

    def declared_dead_letters(self) -> set[str]: ...


class Pipeline:
    """One entrypoint's messages, served (see the module docstring)."""

    def __init__(self, entrypoint: Entrypoint, host: Host) -> None:
        self.entrypoint = entrypoint
        self.host = host
        self.max_body = getattr(entrypoint, "max_body", None) or host.options.max_body
        #: Logs messages dropped for their reply_to, one line per interval in a flood.
        self._dropped = RefusalLog(logger=log)

    # -- screen ------------------------------------------------------------------------------

    def screen(self, delivery: Delivery) -> bool:
        """Deal with an expired or redelivered message before it is served; True if dealt with.

        This does broker I/O on the consuming connection (acks, re-publishing), so a lane
        runs it while it holds the receiving role, never while its handler could be
        handed over.
        """
        return self._expired(delivery) or (delivery.redelivered
                                           and self._count_redelivery(delivery))

    def _expired(self, delivery: Delivery) -> bool:
        late = expired_by(delivery)
        if late is None:
            return False
        log.warning("expired request dropped unrun: its caller stopped waiting",
                    routing_key=delivery.routing_key, correlation_id=delivery.correlation_id,
                    late_s=round(late, 3))
        self.host.settle(delivery)
        return True

    def _count_redelivery(self, delivery: Delivery) -> bool:
        host = self.host
        try:
            assert host.transport is not None
            count, dead = count_redelivery(delivery, host.transport, host.options.max_deliveries,
                                           host.declared_dead_letters())
        except BrokerUnavailable:
            raise
        except Exception:  # noqa: BLE001 - serve it as it is rather than lose it
            log.exception("could not count a redelivery; serving the message")
            return False
        host.observer.redelivered(dead is not None)
        if dead is not None:
            message = self._decode(delivery, republished_key(delivery), None)
            log.error("message dead-lettered: its worker died on every delivery",
                      routing_key=message.routing_key, deliveries=count - 1,
                      dead_letter_queue=dead, id=message.id)
            if message.reply_to and message.id is not None:
                self._reply(message, Outcome(wire.error_response(message.id, poison_error(
                    message.routing_key, count, dead))))
        # Counted by the broker (quorum queue) and under the bound: serve this very copy.
        return dead is not None or delivery.deliveries is None

    # -- serve: verify, decode, run, reply, settle -------------------------------------------

    def serve(self, delivery: Delivery, *, screened: bool = False) -> Outcome | None:
        """Serve one message: answer it if owed, then settle it; what running it came to
        (None: it was not run). Never raises (except BrokerUnavailable while counting a
        redelivery, or claiming it in the broker's replay memory: it stays unsettled and
        comes back).

        ``screened``: the receiving thread already ran :meth:`screen`.
        """
        if not screened and self.screen(delivery):
            return None
        routing_key = republished_key(delivery)
        try:
            caller = self._verify(delivery, routing_key)
        except Refused as refused:
            self._refuse(delivery, refused)
            return None
        message = self._decode(delivery, routing_key, caller)
        if not self._reply_target_ok(message):
            self.host.settle(delivery)
            return None
        outcome: Outcome | None = None
        observer = self.host.observer
        scope = observer.begin(self.entrypoint.kind, message, self.entrypoint.label(message))
        watched = self._watch(message)
        try:
            outcome = self.entrypoint.run(message, self.host.context(message),
                                          self.host.on_handler_error)
            if watched is not None:
                self._stop_watching(watched)
                if not watched.claim_reply():
                    outcome = _TIMED_OUT  # the caller already got the time-limit error
                    return outcome
            self._reply(message, outcome)
        except Exception:  # noqa: BLE001 - a reply that cannot be sent must not kill the worker
            log.exception("could not reply")
        finally:
            if watched is not None:
                self._stop_watching(watched)
            try:
                observer.end(scope, message, outcome, self._known(message))
            finally:
                self._settle(delivery, message, outcome)
        return outcome

    def _verify(self, delivery: Delivery, routing_key: str | None) -> str | None:
        """The key id that signed ``delivery`` for ``routing_key`` (None without a keyring).

        Raises:
            Refused: see :class:`busapp.runtime.gate.Gate`.
        """
        gate = self.host.gate
        if gate is None:
            return None
        return gate.admit(delivery, routing_key, self.entrypoint)

    def _decode(self, delivery: Delivery, routing_key: str | None,
                caller: str | None) -> IncomingMessage:
        return IncomingMessage.from_delivery(
            delivery, self.max_body, routing_key=routing_key, caller=caller,
            retries=retry_count(delivery, routing_key), answered=self.entrypoint.answers)

    def _settle(self, delivery: Delivery, message: IncomingMessage,
                outcome: Outcome | None) -> None:
        """Ack; or, as the outcome says, send a copy for later or to the dead letters first.

        A copy that cannot be sent leaves the original to go back to its queue.
        """
        if outcome is None or outcome.settle == ACK:
            return self.host.settle(delivery)
        if outcome.settle == REQUEUE:
            log.warning(f"{self.entrypoint.kind} handler failed; retrying",
                        routing_key=message.routing_key, queue=delivery.queue,
                        retry=message.retries + 1, retry_in_s=outcome.delay,
                        error=error_line(outcome.error))
        try:
            self.host.resend(message, outcome)
        except Exception:  # noqa: BLE001 - the message is kept: the broker gives it back
            log.exception("could not send the message again; it goes back to its queue",
                          routing_key=message.routing_key, queue=delivery.queue)
            return self.host.settle(delivery, requeue=True)
        self.host.settle(delivery)

    def _reply_target_ok(self, message: IncomingMessage) -> bool:
        """False (and a warning) for an answer owed to a queue that is not a reply queue."""
        reply_to = message.reply_to
        if not reply_to or not self.entrypoint.answers or reply_target_allowed(reply_to) \
                or not message.is_request:
            return True
        self._dropped("message dropped unrun: its reply_to is not a reply queue",
                      reply_to=reply_to, kind=self.entrypoint.kind,
                      hint="callers reply to busapp.reply.* or response-<uuid>; "
                           "$BUSAPP_REPLY_TO allows more")
        return False

    def _refuse(self, delivery: Delivery, refused: Refused) -> None:
        """Answer a message the gate turned away (when it is owed an answer), and settle it."""
        try:
            if refused.answer and self.entrypoint.answers and delivery.reply_to \
                    and delivery.correlation_id and reply_target_allowed(delivery.reply_to):
                self.host.publish_reply(
                    delivery.reply_to, wire.error_response(delivery.correlation_id, refused.error),
                    delivery.correlation_id, refused.sign_with)
        except Exception:  # noqa: BLE001 - a reply that cannot be sent must not kill the worker
            log.exception("could not reply")
        finally:
            self.host.settle(delivery)

    def _reply(self, message: IncomingMessage, outcome: Outcome) -> None:
        response = outcome.response
        if response is None or not self.entrypoint.answers:
            return
        reply_to = message.reply_to
        if not reply_to:
            if "error" in response:
                log.warning("bad message dropped (no reply_to to answer)",
                            error=response["error"].get("message"))
            return
        if not reply_target_allowed(reply_to):
            log.warning("reply dropped: reply_to is not a reply queue", reply_to=reply_to)
            return
        error = response.get("error")
        if error and error.get("code") in (ParseError.code, InvalidRequest.code):
            log.warning("bad message refused (error reply sent)", error=error.get("message"),
                        reply_to=reply_to)
        gate = self.host.gate
        key = None if gate is None else gate.reply_key(message.caller)
        self.host.publish_reply(reply_to, outcome.payload or response,
                                message.correlation_id or response.get("id"), key)

    def _known(self, message: IncomingMessage) -> bool:
        handlers = getattr(self.entrypoint, "handlers", None)
        return handlers is None or self.entrypoint.label(message) in handlers

    # -- time limits -------------------------------------------------------------------------

    def _watch(self, message: IncomingMessage) -> Watched | None:
        """Start the time limit of ``message``, if it has one (under ``run`` only)."""
        limits = self.host.time_limits
        if limits is None or message.id is None or not self.entrypoint.answers:
            return None
        limit = any_limit(self.entrypoint.time_limit(message), self.host.options.time_limit)
        if limit is None:
            return None
        return limits.start(limit, self.entrypoint.label(message), lambda error: self._reply(
            message, Outcome(wire.error_response(message.id, error))))

    def _stop_watching(self, watched: Watched) -> None:
        if self.host.time_limits is not None:
            self.host.time_limits.stop_watching(watched)

