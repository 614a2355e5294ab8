"""The verify stage: who signed a message, whether it was seen before, whether its key may.

A worker whose service has a keyring checks every message, of every entrypoint kind,
before its body is parsed (:class:`Gate`): the signature must be made by a key of the
keyring, over the routing key the broker delivered the message with (or the one a
worker's signed re-publish record names: :func:`busapp.runtime.redelivery.republished_key`),
inside the replay window, and not seen before; then the entrypoint's allow list decides.
A refusal is :class:`~busapp.errors.Refused`: the pipeline answers it (RPC: -32001 or
-32002) or drops it unanswered (a replay, a control request: nobody proved who asks).

"Not seen before" holds across the workers of a service where the broker can keep keys
(Redis, the embedded broker): after the worker's own memory (:class:`ReplayGuard`, the
cheap first check), the gate claims the message in the broker (``claim``, a
``SET busapp.replay.<queue>.<signature> <owner> NX PX <ttl>``), and a copy another
worker took is refused. On RabbitMQ, which keeps no such keys, each worker process
remembers alone. A worker's manager releases the claims of a worker that died before it
served them (:func:`busapp.transport.redis.release_claims`), so a request whose worker
was killed still runs again.

Refusals are logged at most once per :data:`REFUSAL_LOG_INTERVAL` (:class:`RefusalLog`):
a flood of forged messages costs no log line each.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from busapp import names
from busapp.errors import Refused, RemoteProcedureCallError, Unauthorized
from busapp.log import get_logger
from busapp.runtime.redelivery import retry_count
from busapp.security import (
    DEFAULT_REPLAY_MEMORY,
    DEFAULT_REPLAY_WINDOW,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Key,
    Keyring,
    signed_by,
    verify,
)

log = get_logger("busapp.security")

#: Seconds a broker-held claim outlives the message's own time (workers' clocks may differ
#: by that much).
CLAIM_MARGIN = 2.0
#: Seconds between two "message refused" lines of one worker.
REFUSAL_LOG_INTERVAL = 10.0

#: ``claim(key, ttl)``: set ``key`` on the broker for ``ttl`` seconds unless it is there; True
#: if this call set it, False if it was there, None if the broker keeps no such keys.
Claim = Callable[[str, float], "bool | None"]


class ReplayGuard:
    """The signatures one worker has accepted within the replay window, bounded in size.

    A replayed message has the very signature of the original (any change breaks it), so
    the signature is its identity. When more than ``capacity`` are remembered the oldest
    is forgotten and its timestamp becomes a floor: a message signed at or before it is
    refused as too old, so forgetting never lets a replay through.
    """

    def __init__(self, window: float = DEFAULT_REPLAY_WINDOW,
                 capacity: int = DEFAULT_REPLAY_MEMORY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.window = window
        self.capacity = capacity
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._floor = float("-inf")
        self._lock = threading.Lock()

    def first_time(self, headers: Mapping[str, Any], now: float | None = None, *,
                   queue: str | None = None) -> bool:
        """Remember a verified message taken from ``queue``; False if it was seen (or may
        have been) before. (One event reaches each subscribing queue: not a replay.)"""
        sig = f"{queue or ''}\0{headers[SIGNATURE_HEADER]}"
        ts = float(headers[TIMESTAMP_HEADER])
        now = time.time() if now is None else now
        with self._lock:
            seen = self._seen
            while seen:  # expired entries: the window check refuses their replays anyway
                oldest, stamp = next(iter(seen.items()))
                if stamp >= now - self.window:
                    break
                del seen[oldest]
            if ts <= self._floor or sig in seen:
                return False
            seen[sig] = ts
            if len(seen) > self.capacity:
                _, stamp = seen.popitem(last=False)
                self._floor = max(self._floor, stamp)
            return True

    def forget(self, headers: Mapping[str, Any], *, queue: str | None = None) -> None:
        """Forget a message :meth:`first_time` just took (it was not served after all)."""
        with self._lock:
            self._seen.pop(f"{queue or ''}\0{headers[SIGNATURE_HEADER]}", None)

    def __len__(self) -> int:
        return len(self._seen)


class RefusalLog:
    """A worker's warnings about messages it turns away, at most one per ``interval`` seconds.

    The first refusal of an interval is logged with its reason and key id; the others are
    counted, and the next line logged says how many went without one (``unlogged``).
    """

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL, logger: Any = None) -> None:
        self.interval = interval
        self.log = log if logger is None else logger
        self._next = float("-inf")
        self._unlogged = 0
        self._lock = threading.Lock()

    def __call__(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._unlogged += 1
                return
            unlogged, self._unlogged, self._next = self._unlogged, 0, now + self.interval
        if unlogged:
            fields["unlogged"] = unlogged
        self.log.warning(event, **fields)


class Gate:
    """One worker's check of each message against its service's keyring, before any parsing.

    Args:
        keyring: the service's keys.
        claim: the broker's set-if-absent (:meth:`busapp.transport.base.Transport.claim`),
            through which the workers of a service share their replay memory; None: each
            worker remembers alone.
    """

    def __init__(self, keyring: Keyring, *, claim: Claim | None = None) -> None:
        self.keyring = keyring
        self.claim = claim
        self.replays = ReplayGuard(keyring.replay_window, keyring.replay_memory)
        #: Logs refusals, one line per interval at most.
        self.refusals = RefusalLog()

    def admit(self, delivery: Any, routing_key: str | None, entrypoint: Any) -> str:
        """The key id that signed ``delivery`` for ``routing_key``.

        Raises:
            Refused: unsigned, unknown key, bad signature, stale, replayed, or a key the
                entrypoint's allow list leaves out. Logged at warning, with the key id
                (one line per interval, see :class:`RefusalLog`).
        """
        headers = delivery.headers
        answer = entrypoint.kind != "control"  # an unproven control request gets nothing
        try:
            key_id = verify(self.keyring, headers, delivery.body, routing_key, delivery.reply_to,
                            delivery.correlation_id, window=self.keyring.replay_window,
                            content_type=delivery.content_type)
        except Unauthorized as exc:
            raise self._refuse(exc, routing_key, signed_by(headers), answer=answer) from None
        # A retried event's copies share its body and ids: each retry (counted by a worker,
        # signed with the delivery key) is a message of its own, not a replay. A worker's own
        # control queue: its own memory is the whole memory.
        retried = retry_count(delivery, routing_key)
        scope = f"{delivery.queue}#{retried}" if retried else delivery.queue
        if not self._first_time(delivery, scope, shared=entrypoint.kind != "control"):
            raise self._refuse(Unauthorized("replayed: this signed message was already taken",
                                            data={"key": key_id}), routing_key, key_id,
                               answer=False)
        refusal = entrypoint.admit(key_id, routing_key)
        if refusal is not None:
            raise self._refuse(refusal, routing_key, key_id, sign_with=self.keyring.key(key_id))
        return key_id

    def _first_time(self, delivery: Any, queue: str | None, shared: bool) -> bool:
        """Remember a verified message taken from ``queue``: in this worker first (cheap),
        then in the broker."""
        headers = delivery.headers
        if not self.replays.first_time(headers, queue=queue):
            return False
        if not shared or self.claim is None:
            return True
        key = names.replay_claim(queue or "", headers[SIGNATURE_HEADER])
        try:
            return self.claim(key, self.claim_ttl(headers)) is not False
        except BaseException:
            self.replays.forget(headers, queue=queue)  # not served: it may come back to us
            raise

    def claim_ttl(self, headers: Mapping[str, Any], now: float | None = None) -> float:
        """Seconds a claim on a verified message must last: until it is outside the replay
        window, or past its (signed) deadline if that comes first, plus :data:`CLAIM_MARGIN`."""
        end = float(headers[TIMESTAMP_HEADER]) + self.keyring.replay_window
        deadline = headers.get(names.DEADLINE_HEADER)
        if isinstance(deadline, (int, float)) and not isinstance(deadline, bool):
            end = min(end, float(deadline))
        return max(end - (time.time() if now is None else now), 0.0) + CLAIM_MARGIN

    def own_key(self, service: str) -> Key:
        """The key what a worker makes itself (a timer's tick) is signed with: the keyring's
        own (or the one named like ``service``), else its first."""
        keyring = self.keyring
        return keyring.own_key(service) or keyring.key(keyring.ids[0])

    def reply_key(self, key_id: str | None) -> Key | None:
        """The key an answer to ``key_id``'s message is signed with (None: unsigned)."""
        if key_id is None or key_id not in self.keyring:
            return None
        return self.keyring.key(key_id)

    def _refuse(self, error: RemoteProcedureCallError, routing_key: str | None,
                key_id: str | None, **options: Any) -> Refused:
        self.refusals("message refused", reason=error.message, code=error.code, key=key_id,
                      routing_key=routing_key)
        return Refused(error, **options)

