"""Every name busapp puts on a broker: exchanges, queues, routing keys and headers. No I/O.

The wire format is made of these names; keeping them in one module keeps the service,
the clients, the CLI, the operations tools and the documentation in step.

Routing keys::

    <service>.<method>                      a JSON-RPC request (binding <service>.*)
    notify.storage.<Model>.<event>          a storage change (created, updated, deleted)
    busapp-control[.<service>]              a control request (busapp status, probe)
    busapp-event.<source>.<event>           an event between services (bus.emit)

Queues::

    <service> / <exchange>.<service>        a service's RPC queue (shared by its workers)
    <queue>.notify.<Model>.<event>.<func>   a storage-event subscription of an App
    <queue>.event.<pattern>.<func>          an event handler of an App (shared by its workers)
    <that>.<host>.<pid>                     a broadcast event handler's queue in one worker
    <queue>.dead                            messages dead-lettered from <queue>
    <queue>.delay.<ms>                      RabbitMQ: messages waiting <ms> to go back to <queue>
    <queue>.delayed                         Redis: a sorted set of messages due back on <queue>
    busapp.reply.<hex>                      a caller's reply queue (response-<uuid>: Commissaire's)
    busapp.control.<service>.<host>.<pid>   one worker's control queue
    busapp.timers.<queue>                   the timer lease of the App serving <queue>

Redis keys (besides kombu's)::

    busapp.unacked.<host>.<pid>             the messages one worker holds unacknowledged
    busapp.replay.<queue>.<signature>       a signed message a worker took (replay memory)
    busapp.owners                           workers owning queues of their own
    busapp.owned.<host>.<pid>.<n>           one worker's own queues (queue -> exchange)
    busapp.alive.<host>.<pid>.<n>           its heartbeat: expires unless it lives
"""

from __future__ import annotations

import re

from busapp import config

#: The exchange Commissaire used, and busapp's default.
DEFAULT_EXCHANGE = "commissaire"


def default_exchange(name: str | None = None) -> str:
    """``name``, else ``$BUSAPP_EXCHANGE``, else ``commissaire``."""
    return name or config.get("exchange")

#: A method, event or App name: what may stand in one routing-key segment.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

# -- RPC ---------------------------------------------------------------------------------


def default_queue(service: str, exchange: str) -> str:
    """The queue of ``service`` when its user names none: ``service`` on the ``commissaire``
    exchange (as Commissaire named it), ``<exchange>.<service>`` on any other, so two
    deployments of one service on two exchanges of one broker never share a queue."""
    return service if exchange == DEFAULT_EXCHANGE else f"{exchange}.{service}"


def rpc_binding(service: str) -> str:
    """The binding key of a service's RPC queue: ``<service>.*``."""
    return f"{service}.*"


def method_key(binding: str, method: str, service: str | None = None) -> str:
    """The routing key of ``method`` on a queue bound with ``binding`` (``<prefix>.<method>``;
    a binding that does not end in ``.*`` or ``.#`` falls back to ``service``)."""
    if binding.endswith((".*", ".#")):
        return f"{binding[:-2]}.{method}"
    return f"{service or binding}.{method}"


def method_of(routing_key: str | None) -> str | None:
    """The method a routing key calls: its last segment (None without a key)."""
    if not routing_key:
        return None
    return routing_key.rsplit(".", 1)[-1]


def dead_letter(queue: str) -> str:
    """Where messages of ``queue`` that can never be served go: ``<queue>.dead``."""
    return f"{queue}.dead"


# -- replies -----------------------------------------------------------------------------

#: Reply queues of busapp clients are named ``busapp.reply.<hex>``.
REPLY_PREFIX = "busapp.reply."

#: Reply queues of Commissaire's clients: ``response-<uuid>``.
COMMISSAIRE_REPLY = re.compile(r"response-[0-9A-Fa-f]{8}(-?[0-9A-Fa-f]{4}){3}-?[0-9A-Fa-f]{12}\Z")


def reply_queue(token: str) -> str:
    """A caller's reply queue: ``busapp.reply.<token>``."""
    return REPLY_PREFIX + token


def is_reply_queue(name: str | None) -> bool:
    """True if ``name`` is a caller's reply queue: busapp's ``busapp.reply.<hex>`` or
    Commissaire's ``response-<uuid>`` (the only queues a service answers to, besides
    ``$BUSAPP_REPLY_TO``'s patterns)."""
    if not name:
        return False
    return name.startswith(REPLY_PREFIX) or COMMISSAIRE_REPLY.match(name) is not None


# -- storage events ----------------------------------------------------------------------

#: The events the storage service publishes.
STORAGE_EVENTS = ("created", "updated", "deleted")

#: Routing-key prefix of every storage event.
STORAGE_PREFIX = "notify.storage"


def storage_key(model_name: str, event: str) -> str:
    """``notify.storage.<Model>.<event>``: the routing key of one storage change."""
    return f"{STORAGE_PREFIX}.{model_name}.{event}"


def storage_binding(model_name: str | None, event: str | None) -> str:
    """The binding for storage events of ``model_name`` and ``event`` (None or ``*``: any)."""
    return f"{STORAGE_PREFIX}.{model_name or '*'}.{event or '*'}"


def storage_queue(app_queue: str, model_name: str | None, event: str, func_name: str) -> str:
    """The queue of one storage-event subscription of an App (shared by its workers)."""
    event = event if event != "*" else "any"
    return f"{app_queue}.notify.{model_name or 'any'}.{event}.{func_name}"


# -- events between services --------------------------------------------------------------

#: Routing-key prefix of every event (``bus.emit``). No App can be named so (``-`` is not
#: in a name), so no RPC binding ``<service>.*`` matches an event, nor does a storage one.
EVENT_PREFIX = "busapp-event"
#: The word a topic pattern uses for one word (``*``) and for any number of them (``#``).
WILDCARDS = ("*", "#")


def event_key(name: str) -> str:
    """The routing key of event ``name`` (``<source>.<event>``): ``busapp-event.<name>``."""
    return f"{EVENT_PREFIX}.{name}"


def event_binding(pattern: str) -> str:
    """The binding key of an event handler of ``pattern`` (a name, ``orders.*``, ``#``)."""
    return f"{EVENT_PREFIX}.{pattern}"


def event_of(routing_key: str | None) -> str | None:
    """The event name a routing key carries (None: not an event's key)."""
    if not routing_key or not routing_key.startswith(EVENT_PREFIX + "."):
        return None
    return routing_key[len(EVENT_PREFIX) + 1:] or None


def event_queue(app_queue: str, pattern: str, func_name: str) -> str:
    """The queue of one event handler of an App, shared by its workers."""
    return f"{app_queue}.event.{pattern}.{func_name}"


def broadcast_queue(handler_queue: str, host: str, pid: int, number: int = 0) -> str:
    """One worker's own queue of a broadcast event handler (a number after the first one in
    a process, as :func:`control_queue`)."""
    name = f"{handler_queue}.{host}.{pid}"
    return f"{name}.{number}" if number else name


def delay_queue(queue: str, delay_ms: int) -> str:
    """RabbitMQ: where messages wait ``delay_ms`` before they go back to ``queue``."""
    return f"{queue}.delay.{delay_ms}"


def delayed_set(queue: str) -> str:
    """Redis: the sorted set of messages due back on ``queue`` (score: due time, ms)."""
    return f"{queue}.delayed"


# -- timers ------------------------------------------------------------------------------

#: Prefix of the timer leases: one per App, held by the worker that runs its ticks.
TIMER_LEASE_PREFIX = "busapp.timers."
#: Routing-key prefix of a timer tick (made in the worker that runs it; never published).
TIMER_PREFIX = "busapp-timer"


def timer_lease(app_queue: str) -> str:
    """The lease of the timers of the App serving ``app_queue`` (its queue names it, exchange
    included, so two deployments on one broker never share one)."""
    return TIMER_LEASE_PREFIX + app_queue


def timer_key(service: str, timer: str) -> str:
    """The routing key a tick of ``timer`` is made with: ``busapp-timer.<service>.<timer>``."""
    return f"{TIMER_PREFIX}.{service}.{timer}"


# -- control (busapp status, probe) ------------------------------------------------------

#: Routing key every worker's control queue is bound to; ``<it>.<service>`` reaches one service.
CONTROL_KEY = "busapp-control"
#: The one control method (``rpc.*`` names are reserved by JSON-RPC 2.0 for such extensions).
STATUS_METHOD = "rpc.status"
#: Prefix of the workers' own control queues.
CONTROL_PREFIX = "busapp.control."


def control_key(service: str | None = None) -> str:
    """The key that reaches every worker of ``service`` (None: every worker on the exchange)."""
    return f"{CONTROL_KEY}.{service}" if service else CONTROL_KEY


def control_queue(service: str, host: str, pid: int, number: int = 0) -> str:
    """A worker's own control queue (a number after the first one in a process)."""
    name = f"{CONTROL_PREFIX}{service}.{host}.{pid}"
    return f"{name}.{number}" if number else name


# -- Redis bookkeeping -------------------------------------------------------------------

#: Redis sets naming the unacknowledged messages of one worker process.
UNACKED_OWNER_PREFIX = "busapp.unacked."
#: Redis keys recording which signed messages a service's workers took (replay memory).
REPLAY_PREFIX = "busapp.replay."


def replay_claim(queue: str, signature: str) -> str:
    """The key claiming the signed message ``signature`` taken from ``queue``: one per queue,
    since one event signed once reaches every subscribing queue."""
    return f"{REPLAY_PREFIX}{queue}.{signature}"


def unacked_owner(host: str, pid: int) -> str:
    """What names worker process ``pid`` of ``host`` as the owner of its unacked messages."""
    return f"{host}.{pid}"


#: Redis: the set of every worker that owns queues of its own (control, broadcast events).
OWNERS_KEY = "busapp.owners"
#: Redis: ``<it><owner>``, a hash of the owner's own queues (queue -> exchange).
OWNED_PREFIX = "busapp.owned."
#: Redis: ``<it><owner>``, the owner's heartbeat (a key with an expiry, refreshed while it lives).
ALIVE_PREFIX = "busapp.alive."


def queue_owner(host: str, pid: int, number: int = 0) -> str:
    """What names one worker (``number`` of process ``pid`` of ``host``) as the owner of its
    own queues (``<host>.<pid>.<number>``: a process may run several workers)."""
    return f"{host}.{pid}.{number}"


def queue_owners_of(host: str, pid: int) -> str:
    """The prefix of the owner names of every worker of process ``pid`` of ``host``."""
    return f"{host}.{pid}."


# -- message headers ---------------------------------------------------------------------

#: Signed messages (busapp.security): the key id, the signing time, the HMAC.
KEY_HEADER = "x-busapp-key"
TIMESTAMP_HEADER = "x-busapp-ts"
SIGNATURE_HEADER = "x-busapp-sig"
#: When a request's caller stops waiting (Unix time, seconds).
DEADLINE_HEADER = "x-busapp-deadline"
#: The routing key a re-published (redelivered) message was first sent with.
ROUTING_KEY_HEADER = "x-busapp-routing-key"
#: Deliveries of a message so far, and that count's signature (busapp.runtime.redelivery).
COUNT_HEADER = "x-busapp-deliveries"
COUNT_SIGNATURE_HEADER = "x-busapp-deliveries-sig"
#: Set by a Redis worker on the stand-in of an entry too big to read: the entry's size.
UNREAD_HEADER = "x-busapp-unread"
#: The request id a call carries through every service it reaches (busapp.ops.tracing).
REQUEST_ID_HEADER = "x-busapp-request-id"
#: Times an event's handler failed and the event was sent again, and that count's signature
#: (busapp.runtime.retry).
RETRIES_HEADER = "x-busapp-retries"
RETRIES_SIGNATURE_HEADER = "x-busapp-retries-sig"
#: Why a message was dead-lettered (one line: the exception class and message).
ERROR_HEADER = "x-busapp-error"
