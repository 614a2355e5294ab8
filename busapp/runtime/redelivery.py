"""Counting redeliveries, and dead-lettering a message its workers keep dying on.

A message whose worker died comes back flagged as redelivered. Its delivery count
travels in a header: the worker re-publishes the message to its queue with the count
+ 1 and acks the old copy, so the count survives the next crash too. Past
``max_deliveries`` the message goes to ``<queue>.dead`` instead, and its caller gets
an error reply (see :func:`poison_error`).

A sender can put any header on a message, so the count is signed: a worker that
re-publishes a message adds ``x-busapp-deliveries-sig``, an HMAC-SHA256 of the count and
the message, keyed by :func:`delivery_key`. A count without a valid signature counts as
1: a forged ``x-busapp-deliveries: 99`` cannot dead-letter a message that never killed a
worker. Workers of one host share the key (a 0600 file in the user's private runtime
directory); workers on several hosts need the same ``$BUSAPP_DELIVERY_KEY``, else a
count made on another host starts again from 1 (a poison message is still dead-lettered
once it kills workers of one host ``max_deliveries`` times in a row).

A RabbitMQ quorum queue counts deliveries itself (``x-delivery-count``, see
:mod:`busapp.runtime.cluster`): there the broker's count is used instead, nothing is re-published,
and the queue's ``x-delivery-limit`` dead-letters the message should its last worker die too.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets

from busapp import config, names
from busapp.errors import InternalError
from busapp.runtime.cluster import dead_letter_name
from busapp.transport.base import Delivery, QueueSpec, Transport
from busapp.transport.embedded_state import _private_socket_dir

COUNT_HEADER = names.COUNT_HEADER
#: The count's signature (see the module docstring).
SIGNATURE_HEADER = names.COUNT_SIGNATURE_HEADER
ROUTING_KEY_HEADER = names.ROUTING_KEY_HEADER
RETRIES_HEADER = names.RETRIES_HEADER
RETRIES_SIGNATURE_HEADER = names.RETRIES_SIGNATURE_HEADER
#: The largest count a header may claim (a bigger or unparsable one counts as 1).
_MAX_COUNT = 1000


@functools.cache
def delivery_key() -> bytes:
    """The key signing delivery counts: ``$BUSAPP_DELIVERY_KEY``, else this user's own.

    The user's key is 32 random bytes in ``busapp-delivery.key`` (mode 0600) of the
    directory private to the user that the embedded broker's socket uses, made once.
    """
    env = config.get("delivery_key")
    if env:
        return env.encode()
    path = _private_socket_dir() / "busapp-delivery.key"
    if not path.exists():
        draft = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(draft, path)  # atomic: whoever links first wins, others read theirs
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    return path.read_bytes()


def sign_count(count: int, delivery: Delivery, routing_key: str | None, label: str = "") -> str:
    """The signature of ``count`` deliveries of this message (its body, key and ids);
    ``label`` tells counts of other things apart (``retries``)."""
    mac = hmac.new(delivery_key() or b"-", digestmod=hashlib.sha256)
    for part in (label + str(count), routing_key or "", delivery.queue or "",
                 delivery.reply_to or "", delivery.correlation_id or ""):
        mac.update(part.encode() + b"\0")
    mac.update(delivery.body)
    return mac.hexdigest()


def delivery_count(delivery: Delivery, routing_key: str | None = None) -> int:
    """Deliveries so far by the message's signed header; 1 if absent, unsigned or insane."""
    headers = delivery.headers
    value = headers.get(COUNT_HEADER, 1)
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        return 1
    try:
        count = int(value)
    except (TypeError, ValueError):
        return 1
    if not 2 <= count <= _MAX_COUNT:
        return 1
    signature = headers.get(SIGNATURE_HEADER)
    if not isinstance(signature, str) or not hmac.compare_digest(
            signature, sign_count(count, delivery, routing_key)):
        return 1  # forged, or made with another key
    return count


def retry_count(delivery: Delivery, routing_key: str | None) -> int:
    """Times this message's handler failed and a worker sent it again, by its signed header
    (``x-busapp-retries``); 0 if absent, unsigned or insane."""
    headers = delivery.headers
    value = headers.get(RETRIES_HEADER)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_COUNT:
        return 0
    signature = headers.get(RETRIES_SIGNATURE_HEADER)
    if not isinstance(signature, str) or not hmac.compare_digest(
            signature, sign_count(value, delivery, routing_key, "retries:")):
        return 0  # forged, or made with another key
    return value


def republished_key(delivery: Delivery) -> str | None:
    """The routing key ``delivery`` was first published with.

    A re-published message travels to its queue directly, so the broker delivers it with
    the queue's name; its ``x-busapp-routing-key`` header keeps the original key. The header
    is believed only when a worker wrote it: when the delivery count it came with is signed
    (:func:`delivery_count` of 2 or more), or its retry count is (:func:`retry_count` of 1
    or more). Anyone else's header is ignored, so a signature made for one service's
    routing key never passes for another's.
    """
    original = delivery.headers.get(ROUTING_KEY_HEADER)
    if isinstance(original, str) and original and (delivery_count(delivery, original) >= 2
                                                   or retry_count(delivery, original) >= 1):
        return original
    return delivery.routing_key


def count_redelivery(delivery: Delivery, transport: Transport, max_deliveries: int,
                     declared: set[str]) -> tuple[int, str | None]:
    """Re-publish ``delivery`` with its count + 1, or dead-letter it; ack the old copy.

    Returns the new count and the dead-letter queue's name (None if re-queued). A message
    the broker counts itself (:attr:`Delivery.deliveries`) is only dead-lettered, past the
    bound; under it, nothing is done (the caller serves that copy).
    """
    queue = delivery.queue or ""
    headers = {k: v for k, v in delivery.headers.items() if k != "redelivered"}
    routing_key = republished_key(delivery)
    counted = delivery.deliveries  # the broker's own count (quorum queue), if it keeps one
    count = counted if counted is not None else delivery_count(delivery, routing_key) + 1
    dead = dead_letter_name(queue) if count > max_deliveries else None
    if counted is not None and dead is None:
        return count, None  # the broker counts and bounds it: nothing to re-publish
    headers.update({COUNT_HEADER: count, ROUTING_KEY_HEADER: routing_key,
                    SIGNATURE_HEADER: sign_count(count, delivery, routing_key)})
    if dead is not None and dead not in declared:
        transport.declare_queue("", QueueSpec(dead))
        declared.add(dead)
    transport.publish(delivery.body, exchange="", routing_key=dead or queue, headers=headers,
                      reply_to=delivery.reply_to, correlation_id=delivery.correlation_id,
                      persistent=True)
    delivery.ack()
    return count, dead


def poison_error(routing_key: str | None, count: int, dead: str) -> InternalError:
    """The error a dead-lettered request's caller gets."""
    return InternalError(
        f"the worker handling {routing_key!r} died on each of {count - 1} deliveries; "
        f"the request was moved to queue {dead!r}",
        data={"exception": "WorkerLost", "deliveries": count - 1})
