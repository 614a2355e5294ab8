"""Message signing: HMAC-SHA256 over a message and what changes how it is served. No I/O.

The public face is :mod:`busapp.security` (which adds :class:`~busapp.security.Keyring`).

A signed message carries three headers::

    x-busapp-key   the key id (never the secret)
    x-busapp-ts    Unix time of signing, as text ("1712345678.123")
    x-busapp-sig   hex HMAC-SHA256, keyed by the secret, over
                   "busapp-v2", key id, ts, routing key, reply_to, correlation id,
                   the covered headers (NUL-separated) and then the body bytes

The covered headers (:data:`COVERED_HEADERS`) are those that change what the receiver
does with a message: its deadline (``x-busapp-deadline``, after which a worker drops it),
``compression``, the request id and the trace context; with them, the content type.
They are encoded canonically: the content type, then ``name=value`` for each covered
header present, in the order of :data:`COVERED_HEADERS`, values as JSON (a float as its
``repr``), joined by newlines. So a captured request cannot be re-published with its
deadline stripped or moved. Headers written on the way are not covered: a worker's
re-publish record (``x-busapp-routing-key`` with the delivery count signed by the
delivery key, :mod:`busapp.runtime.redelivery`) is checked on its own, and broker headers
(``redelivered``, ``x-delivery-count``, ``x-death``) change nothing a gate relies on.
A signature of the earlier ``busapp-v1`` format (no covered headers) is refused, with
a message saying to upgrade the sender.

What signs what:

- a :class:`~busapp.client.sync.Client` with ``key=(id, secret)`` signs its requests and
  notifications with it, and drops any reply not signed with that same key (so a reply
  forged into its reply queue never reaches the caller). The one exception is an
  unsigned -32001 (Unauthorized) reply: a service that cannot verify the caller cannot
  sign for it either; such a reply can only refuse, never carry a result;
- a service with a keyring verifies every message before parsing it, control requests
  (``busapp status``) included; it answers with the key the request was signed with and
  no other (an unsigned request gets an unsigned -32001, an unsigned control request
  nothing), and signs its own calls and the storage events it publishes with its own key
  (:attr:`Keyring.own`). A worker never signs an answer with its own key: that key would
  make it an oracle for forged replies to its own calls;
- a subscriber with a keyring drops storage events not signed by a key of its keyring.

Secrets are compared with :func:`hmac.compare_digest`, never logged, never sent.

The helpers here are pure functions (no I/O), for every client (the blocking
:class:`~busapp.client.sync.Client`, an asyncio one) and the worker alike::

    headers = sign(("frontend", b"s3cret"), body, "billing.quote", reply_to, cid)
    key_id = verify(keyring, headers, body, "billing.quote", reply_to, cid)  # or Unauthorized

A client (blocking or asyncio) does what :class:`~busapp.client.sync.Client` does: pass every
outgoing message through :func:`signer`; check each reply with ``verify({id: secret},
headers, body, <its reply queue>, None, correlation_id)`` before parsing it, and drop it
on :class:`~busapp.errors.Unauthorized` unless :func:`unsigned_refusal` says it is an
unsigned -32001.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from busapp import config, names
from busapp.errors import Unauthorized

KEY_HEADER = names.KEY_HEADER
TIMESTAMP_HEADER = names.TIMESTAMP_HEADER
SIGNATURE_HEADER = names.SIGNATURE_HEADER
#: Every header signing adds (a re-signed message drops the old ones first).
HEADERS = (KEY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
#: ``id:secret``: the key a :class:`~busapp.client.sync.Client` signs with when none is passed.
KEY_ENV = config.env_name("key")
#: Path of the keyring file ``busapp run`` and ``busapp storage`` load when no --keyring is given.
KEYRING_ENV = config.env_name("keyring")
#: Seconds a signed message stays acceptable (clocks are assumed in step, as NTP keeps them).
DEFAULT_REPLAY_WINDOW = 60.0
#: Signatures a worker remembers at most (see :class:`ReplayGuard`).
DEFAULT_REPLAY_MEMORY = 100_000

_VERSION = b"busapp-v2"
_VERSION_1 = b"busapp-v1"

#: Headers a signature covers besides its own (see the module docstring), in MAC order.
COVERED_HEADERS = (names.DEADLINE_HEADER, "compression", names.REQUEST_ID_HEADER,
                   "traceparent", "tracestate", "baggage")
#: The content type busapp publishes with (and signs, unless told otherwise).
CONTENT_TYPE = "application/json"

_quote = json.encoder.encode_basestring_ascii

#: A signing key: ``(key id, secret)``.
Key = tuple[str, bytes]
KeyLike = tuple[str, str | bytes] | str


def _secret_bytes(key_id: str, secret: str | bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes) or not secret:
        raise ValueError(f"the secret of key {key_id!r} must be a non-empty string")
    return secret


def _check_id(key_id: Any) -> str:
    if not isinstance(key_id, str) or not key_id or any(c in key_id for c in "\0:\n"):
        raise ValueError(f"a key id must be a non-empty string without ':' or newlines, "
                         f"got {key_id!r}")
    return key_id


def parse_key(key: KeyLike) -> Key:
    """``(id, secret)`` from a tuple or from ``"id:secret"`` text (as in ``$BUSAPP_KEY``).

    Raises:
        ValueError: not a key (the message never contains the secret).
    """
    if isinstance(key, str):
        key_id, sep, secret = key.partition(":")
        if not sep:
            raise ValueError("a key is written ID:SECRET (e.g. BUSAPP_KEY=frontend:s3cret)")
        key = (key_id, secret)
    if not isinstance(key, tuple) or len(key) != 2:
        raise ValueError("key must be (key_id, secret) or 'key_id:secret'")
    key_id = _check_id(key[0])
    return key_id, _secret_bytes(key_id, key[1])


def key_from_env() -> Key | None:
    """The key in ``$BUSAPP_KEY`` (``id:secret``), or None when it is unset."""
    value = config.get("key")
    if not value:
        return None
    try:
        return parse_key(value)
    except ValueError as exc:
        raise ValueError(f"${KEY_ENV}: {exc}") from None


def _canonical(value: Any) -> str:
    """One covered header's value, encoded so that no two values share an encoding."""
    kind = type(value)
    if kind is str:
        return _quote(value)
    if kind is float:
        return repr(value)
    if kind is int:
        return str(value)
    return "~" + json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


@functools.lru_cache(maxsize=32)
def _content_type_part(content_type: str | None) -> bytes:
    return _quote(content_type or "").encode()


_COVERED_PREFIXES = tuple((name, f"{name}=".encode()) for name in COVERED_HEADERS)


def covered(headers: Mapping[str, Any] | None, content_type: str | None) -> bytes:
    """The canonical encoding of what a signature covers besides the message's fields."""
    head = _content_type_part(content_type)
    if not headers:
        return head
    parts = [head]
    for name, prefix in _COVERED_PREFIXES:
        if name in headers:
            parts.append(prefix + _canonical(headers[name]).encode())
    return b"\n".join(parts)


def _mac(secret: bytes, key_id: str, ts: str, body: bytes, routing_key: str | None,
         reply_to: str | None, correlation_id: str | None, extra: bytes | None) -> str:
    """The v2 MAC (``extra``: :func:`covered`), or v1's when ``extra`` is None."""
    fields = [_VERSION if extra is not None else _VERSION_1, key_id.encode(), ts.encode(),
              (routing_key or "").encode(), (reply_to or "").encode(),
              (correlation_id or "").encode()]
    if extra is not None:
        fields.append(extra)
    return hmac.digest(secret, b"\0".join(fields) + b"\0" + body, hashlib.sha256).hex()


def sign(key: Key, body: bytes, routing_key: str | None, reply_to: str | None = None,
         correlation_id: str | None = None, ts: float | None = None, *,
         headers: Mapping[str, Any] | None = None,
         content_type: str | None = CONTENT_TYPE) -> dict[str, str]:
    """The headers that sign one message with ``key`` (add them to the message's own).

    ``routing_key`` is the key the message is published with (for a reply: the reply
    queue's name); ``headers`` are the message's other headers (the covered ones are
    signed) and ``content_type`` its content type. ``ts`` defaults to now.
    """
    key_id, secret = key
    stamp = f"{time.time() if ts is None else ts:.3f}"
    return {KEY_HEADER: key_id, TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: _mac(secret, key_id, stamp, body, routing_key, reply_to,
                                   correlation_id, covered(headers, content_type))}


def signer(key: Key | None, body: bytes, routing_key: str | None, reply_to: str | None,
           correlation_id: str | None, headers: dict[str, Any] | None,
           content_type: str | None = CONTENT_TYPE) -> dict[str, Any] | None:
    """``headers`` with the signature of ``key`` added (as is when ``key`` is None)."""
    if key is None:
        return headers
    signed = {k: v for k, v in (headers or {}).items() if k not in HEADERS}
    signed.update(sign(key, body, routing_key, reply_to, correlation_id, headers=signed,
                       content_type=content_type))
    return signed


def signed_by(headers: Mapping[str, Any]) -> str | None:
    """The key id a message claims (unverified: for logs and error text only)."""
    key_id = headers.get(KEY_HEADER)
    return key_id if isinstance(key_id, str) else None


def verify(secrets: Mapping[str, bytes] | Any, headers: Mapping[str, Any], body: bytes,
           routing_key: str | None, reply_to: str | None = None,
           correlation_id: str | None = None, *, now: float | None = None,
           window: float = DEFAULT_REPLAY_WINDOW,
           content_type: str | None = CONTENT_TYPE) -> str:
    """Check a message's signature (over its covered headers and ``content_type`` too);
    return its key id.

    Raises:
        Unauthorized: unsigned, an unknown key id, a wrong signature (or one in the older
            v1 format), or a timestamp outside ``window`` seconds of ``now`` (the reason
            is in the message).
    """
    key_id, stamp, sig = (headers.get(h) for h in HEADERS)
    if key_id is None and sig is None:
        raise Unauthorized("the message is not signed; this service needs a key "
                           f"(Client(key=(id, secret)) or ${KEY_ENV}=id:secret)")
    if not (isinstance(key_id, str) and isinstance(stamp, str) and isinstance(sig, str)):
        raise Unauthorized("malformed signature headers")
    table = getattr(secrets, "secrets", secrets)  # a Keyring, or {key id: secret}
    secret = table.get(key_id)
    if secret is None:
        raise Unauthorized(f"unknown key {key_id!r}", data={"key": key_id})
    if not hmac.compare_digest(sig, _mac(secret, key_id, stamp, body, routing_key, reply_to,
                                         correlation_id, covered(headers, content_type))):
        if hmac.compare_digest(sig, _mac(secret, key_id, stamp, body, routing_key, reply_to,
                                          correlation_id, None)):
            raise Unauthorized(f"key {key_id!r} signed in the busapp-v1 format, which leaves "
                               "the deadline unsigned and is refused; upgrade busapp where "
                               "this message comes from", data={"key": key_id})
        raise Unauthorized(f"bad signature for key {key_id!r}", data={"key": key_id})
    try:
        age = (time.time() if now is None else now) - float(stamp)
    except ValueError:
        raise Unauthorized("malformed signature timestamp", data={"key": key_id}) from None
    if not -window <= age <= window:
        raise Unauthorized(f"the message was signed {age:.0f}s from now, outside the "
                           f"{window:g}s replay window (are the clocks in step?)",
                           data={"key": key_id})
    return key_id


def unsigned_refusal(headers: Mapping[str, Any], response: Mapping[str, Any]) -> bool:
    """True for an unsigned -32001 reply, the one unsigned reply a keyed client takes: a
    service that could not verify the caller cannot sign for it, and such a reply only
    refuses (it carries no result)."""
    error = response.get("error")
    return (KEY_HEADER not in headers and isinstance(error, dict)
            and error.get("code") == Unauthorized.code and "result" not in response)


