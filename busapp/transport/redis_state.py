"""What busapp keeps in Redis besides kombu's messages: which worker holds which unacked
message, replay claims, delayed messages and leases (Lua scripts, atomic on the server)."""

from __future__ import annotations

import binascii
from typing import Any

import kombu

from kombu.transport import redis as _kredis
from kombu.utils import json as _kjson

from busapp import names
from busapp.names import delayed_set

#: The scripts below as redis-py ``Script`` objects (EVALSHA; loaded again where missing).
_SCRIPTS: dict[str, Any] = {}

def requeue_owned(connection: Any, owner: str) -> int:
    """Requeue every message the (dead) worker ``owner`` left unacked; how many.

    Each goes back to its queue flagged redelivered, as after the visibility timeout (so
    poison messages are still counted), after the replay claims the worker made on it are
    released (so a signed request it died on runs again). Call it only once the worker is
    gone.
    """
    channel = connection.default_channel
    key = names.UNACKED_OWNER_PREFIX + owner
    tags = [_kredis.bytes_to_str(tag) for tag in channel.client.smembers(key)]
    for tag in tags:
        record = channel.client.hget(channel.unacked_key, tag)
        entry = _kjson.loads(_kredis.bytes_to_str(record)) if record else None
        exchange = entry[1] if entry else ""
        if exchange and exchange not in channel.state.exchanges:
            # kombu routes through an exchange it has not seen declared as "direct", which
            # would match none of a topic exchange's bindings and drop the message.
            kombu.Exchange(exchange, type="topic", durable=True)(channel).declare()
        if entry:
            release_claims(channel, owner, *entry)
        channel.qos.restore_by_tag(tag, leftmost=True)
    channel.client.delete(key)
    return len(tags)


def release_claims(channel: Any, owner: str, payload: Any, exchange: str,
                   routing_key: str) -> None:
    """Delete the replay claims (:meth:`busapp.transport.kombu_transport.KombuTransport.claim`)
    worker ``owner`` made on the message ``payload``, published to ``exchange`` with
    ``routing_key``: it died before serving it, and its copy must be served once more.

    Only claims holding ``owner`` go: one event reaches several queues, and the claims of
    the other queues' workers stand.
    """
    headers = payload.get("headers") if isinstance(payload, dict) else None
    signature = headers.get(names.SIGNATURE_HEADER) if isinstance(headers, dict) else None
    if not isinstance(signature, str):
        return
    if exchange:
        try:
            queues = channel.typeof(exchange).lookup(channel.get_table(exchange), exchange,
                                                     routing_key, None) or []
        except KeyError:
            queues = []
    else:
        queues = [routing_key]
    keys = [names.replay_claim(queue, signature) for queue in queues]
    if not keys:
        return
    held = channel.client.mget(keys)
    mine = [k for k, value in zip(keys, held, strict=True) if value == owner.encode()]
    if mine:
        channel.client.delete(*mine)


#: Adds ARGV[1] (a kombu message) to the sorted set KEYS[1], due ARGV[2] ms from now by the
#: server's clock (so the hosts' clocks do not matter).
_DELAY = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
"""


#: Moves the due members of the sorted set KEYS[1] (at most ARGV[1]) onto the list KEYS[2],
#: the tail of the queue; their number. Atomic: a message is never on both, nor lost between.
_MOVE_DUE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, message in ipairs(due) do
    redis.call('LPUSH', KEYS[2], message)
    redis.call('ZREM', KEYS[1], message)
end
return #due
"""


#: Takes the lease KEYS[1] for ARGV[1] for ARGV[2] ms, or extends it if ARGV[1] holds it.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
elseif holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""


#: Deletes the lease KEYS[1] if ARGV[1] holds it, or an owner ``ARGV[1].<more>`` does.
_RELEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and (holder == ARGV[1] or string.sub(holder, 1, #ARGV[1] + 1) == ARGV[1] .. '.') then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def _run(channel: Any, source: str, keys: list[str], args: list[Any]) -> Any:
    # A client of the pool, not ``channel.client``: its connection may be waiting in BRPOP.
    with channel.conn_or_acquire() as client:
        script = _SCRIPTS.get(source)
        if script is None:
            script = _SCRIPTS[source] = client.register_script(source)
        return script(keys=keys, args=args, client=client)


def publish_delayed(channel: Any, message: Any, queue: str, delay_ms: int) -> None:
    """Hold ``message`` (from ``channel.prepare_message``) for ``delay_ms``, then put it on
    ``queue`` (by :func:`move_due`), as a publish to the default exchange would."""
    channel._inplace_augment_message(message, "", queue)
    _run(channel, _DELAY, [delayed_set(queue)], [_kjson.dumps(message), delay_ms])


def move_due(channel: Any, queues: list[str], limit: int = 100) -> int:
    """Move the due delayed messages of ``queues`` onto them; how many."""
    return sum(int(_run(channel, _MOVE_DUE, [delayed_set(q), channel._q_for_pri(q, 0)], [limit]))
               for q in queues)


def acquire_lease(channel: Any, name: str, owner: str, ttl_ms: int) -> bool:
    """See :meth:`busapp.transport.base.Transport.acquire_lease`."""
    return bool(_run(channel, _ACQUIRE, [name], [owner, max(1, ttl_ms)]))


def release_lease(channel: Any, name: str, owner: str) -> None:
    """See :meth:`busapp.transport.base.Transport.release_lease`."""
    _run(channel, _RELEASE, [name], [owner])


def entry_problem(payload: Any) -> str | None:
    """Why ``payload`` (a decoded Redis queue entry) is not a message kombu can take, or None.

    Checks what kombu's message and ack emulation index without a guard: the envelope's
    types, the delivery tag and info, and that a base64 body decodes.
    """
    if not isinstance(payload, dict):
        return "not a kombu message envelope (a JSON object)"
    props = payload.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("delivery_tag"), str):
        return "no properties.delivery_tag"
    info = props.get("delivery_info")
    if not isinstance(info, dict) or not all(
            isinstance(info.get(k), str) for k in ("exchange", "routing_key")):
        return "no properties.delivery_info with exchange and routing_key"
    if not isinstance(payload.get("headers") or {}, dict):
        return "headers is not an object"
    for key in ("content-type", "content-encoding"):
        if not isinstance(payload.get(key) or "", str):
            return f"{key} is not a string"
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        return "body is not a string"
    if body and props.get("body_encoding") == "base64":
        try:
            binascii.a2b_base64(body.encode("ascii"))  # as kombu will decode it
        except (binascii.Error, UnicodeEncodeError) as exc:
            return f"body is not base64: {exc}"
    return None
