"""The kombu implementation of the transport seam: Redis, RabbitMQ and the embedded broker.

With :mod:`busapp.transport.redis` this is the only place busapp imports kombu. It
works on kombu's channel layer (``basic_publish``, ``basic_consume``, ``basic_ack``),
below kombu's ``Producer``/``Consumer``/``Message``: a message body reaches busapp as the
bytes that crossed the wire, never decompressed or deserialised by kombu, and a call
pays for no serializer registry, compression or entity bookkeeping it does not use.
The keys and properties on the wire are kombu's, so plain kombu and Commissaire
processes interoperate on the same broker.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
# kombu loads most of itself on first use (its package ``__getattr__``, transports by name),
# which is not thread-safe: threads making their first Clients at once in a fresh process got
# ``ImportError: cannot import name ... from 'kombu'``. So everything a transport uses is
# imported here, once, under this module's import lock (tests/test_client_leaks.py pins it).
import kombu
import kombu.connection
import kombu.entity
import kombu.exceptions
import kombu.messaging
import kombu.transport.pyamqp
from kombu import Connection, Exchange, Queue, binding  # resolves kombu's lazy names now

from busapp import config, names
from busapp.errors import AccessRefused, BrokerUnavailable, BusappError, NoRouteError
from busapp.transport import amqp as _amqp
from busapp.transport import is_redis, mask_url
from busapp.transport import redis as _redis
from busapp.transport.base import Delivery, QueueSpec


def transport_options(url: str) -> dict[str, Any]:
    """kombu transport options busapp uses for ``url``."""
    if is_redis(url):
        return {
            # Unacked messages of a dead worker come back after this long.
            "visibility_timeout": config.get("visibility_timeout"),
            "socket_connect_timeout": 5,
            "health_check_interval": 25,
            # kombu's restore scan takes a mutex that a worker killed mid-scan would leave
            # held for kombu's default 300 s, stalling every redelivery on that Redis.
            "unacked_mutex_expire": 10,
            # Scan for expired unacked messages every 2nd idle poll, not every 10th.
            "unacked_restore_throttle": 2,
            # Bindings are read again only when Redis says they changed (0: on every
            # publish): see busapp.transport.redis.Channel.binding_tracking.
            "binding_tracking": config.get("binding_tracking"),
            # Without tracking, off unless asked for: see Channel.binding_cache_ttl.
            "binding_cache_ttl": config.get("binding_cache_ttl"),
            # Set in worker processes by the manager (see busapp.transport.redis.QoS).
            "unacked_owner": config.get("unacked_owner"),
            # sentinel:// only: see busapp.transport.redis.SentinelChannel.replica_wait_ms.
            "replica_wait_ms": config.get("replica_wait_ms"),
        }
    return {"confirm_publish": confirm_publish(url)}


def confirm_publish(url: str) -> bool:
    """Whether publishes on ``url`` wait for the broker's confirm: ``$BUSAPP_CONFIRM_PUBLISH``,
    else yes when the URL lists several nodes (a cluster: a publish that returned is then on
    a quorum queue's majority, and one the failing node never took raises instead)."""
    setting = config.get("confirm_publish")
    if setting is not None:
        return bool(setting)
    return ";" in url


def requeue_dead_worker(url: str, pid: int) -> int:
    """Requeue at once what worker ``pid`` (dead) left unacked on Redis; how many (0 elsewhere:
    RabbitMQ requeues a dead connection's messages itself)."""
    if not is_redis(url):
        return 0
    conn = kombu_connection(url)
    try:
        conn.ensure_connection(max_retries=1)
        return _redis.requeue_owned(conn, names.unacked_owner(socket.gethostname(), pid))
    finally:
        _release(conn)


def kombu_connection(url: str, max_body: int | None = None, heartbeat: float | None = None) -> Any:
    """A new, not yet connected, kombu Connection for ``url``.

    ``max_body``: a Redis queue entry too big to hold a body of that size is moved aside
    unread (see :meth:`busapp.transport.redis.Channel._brpop_read`).

    Redis URLs (``redis://``, ``rediss://``, ``redis+socket://``) get busapp's transport
    (:mod:`busapp.transport.redis`: kombu's, without its per-command client and per-publish
    binding lookup); other URLs get kombu's own.
    """
    cls: type = _redis.Connection if is_redis(url) else Connection
    options = transport_options(url)
    url, query_options = split_query_options(url)
    options.update(query_options)
    if max_body is not None and is_redis(url):
        options["max_entry_bytes"] = max_body * 4 // 3 + _ENVELOPE_BYTES  # base64 + envelope
    extra = tls_defaults(url)
    if heartbeat and not is_redis(url):
        extra["heartbeat"] = heartbeat
    return cls(url, transport_options=options, connect_timeout=5, **extra)


#: Transport options a broker URL may carry in its query (``sentinel://...?master_name=NAME``).
QUERY_OPTIONS = ("master_name",)


def split_query_options(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without the :data:`QUERY_OPTIONS` of any of its ``;``-separated nodes, and them."""
    found: dict[str, str] = {}
    nodes = []
    for node in url.split(";"):
        parts = urlsplit(node)
        kept = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in QUERY_OPTIONS:
                found[key] = value
            else:
                kept.append((key, value))
        nodes.append(urlunsplit(parts._replace(query=urlencode(kept))) if parts.query else node)
    return ";".join(nodes), found


#: Room for a Redis entry's envelope (properties, headers) besides its base64 body.
_ENVELOPE_BYTES = 64 * 1024


def tls_defaults(url: str) -> dict[str, Any]:
    """Verify the server's certificate on ``rediss://`` unless the URL says otherwise.

    kombu turns certificate checks off (``CERT_NONE``) for a ``rediss://`` URL without ssl
    options. Here a bare ``rediss://`` verifies against the system CAs; the URL can name a
    CA (``?ssl_ca_certs=/path/ca.pem``) or, explicitly, turn checks off
    (``?ssl_cert_reqs=none``).
    """
    if not url.startswith("rediss://"):
        return {}
    query = parse_qs(urlsplit(url).query)
    if any(key.startswith("ssl_") for key in query):
        return {}  # kombu passes the URL's own ssl options (redis-py verifies by default)
    return {"ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}


def _base_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        OSError, ConnectionError, EOFError,
        kombu.exceptions.OperationalError, kombu.exceptions.ConnectionError,
        kombu.exceptions.ChannelError,
    ]
    try:
        import amqp.exceptions

        errors += [amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableConnectionError,
                   amqp.exceptions.ChannelError, amqp.exceptions.MessageNacked]
    except ImportError:  # pragma: no cover - amqp is a dependency
        pass
    try:
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                   redis.exceptions.BusyLoadingError, redis.exceptions.ResponseError]
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return tuple(errors)


_ERRORS = _base_errors()

try:
    from amqp.exceptions import PreconditionFailed as _PRECONDITION_FAILED
except ImportError:  # pragma: no cover - amqp is a dependency
    class _PRECONDITION_FAILED(Exception):  # type: ignore[no-redef]  # noqa: N801
        pass



def _refusal(exc: BaseException) -> bool:
    """True for a broker's 403 ACCESS_REFUSED (RabbitMQ) or NOPERM (Redis ACLs)."""
    code = getattr(exc, "code", None) or getattr(exc, "reply_code", None)
    if code == 403:
        return True
    text = str(exc)
    return "ACCESS_REFUSED" in text or text.startswith("NOPERM")


def _not_found(exc: BaseException) -> bool:
    code = getattr(exc, "code", None) or getattr(exc, "reply_code", None)
    return code == 404 or "NOT_FOUND" in str(exc)


class KombuTransport:
    """One kombu connection and channel (see :class:`busapp.transport.base.Transport`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = is_redis(url)
        # Redis acks go through the channel's thread-safe client pool; an AMQP channel's
        # socket belongs to the thread that drains it.
        self.concurrent_ack = self.redis
        self._conn: Any = None
        self._channel: Any = None
        self._errors = _ERRORS
        self._prefetch = 0
        self._tags: list[str] = []
        #: RabbitMQ: the confirm channel requests are checked on, what it returned, and until
        #: when each (exchange, routing key) is known to route (see _publish_request_amqp).
        self._checked: Any = None
        self._returned: list[str] = []
        self._routed: dict[tuple[str, str], float] = {}
        #: Queues declared here whose broker counts deliveries (RabbitMQ quorum queues).
        self._counted: set[str] = set()
        #: ``{queue: (consumer tag, callback, no_ack)}`` of the consumers on this channel.
        self._consumers: dict[str, tuple[str, Callable[[Any], None], bool]] = {}
        self._consumed_serial = 0
        #: Prefetch per consumer, not per channel (once a quorum queue is consumed).
        self._consumer_qos = False
        #: Largest body this connection will receive (set before connect; None: no limit).
        self.max_body: int | None = None
        #: RabbitMQ: seconds between heartbeats (set before connect; None: none).
        self.heartbeat: float | None = None
        #: RabbitMQ: when each delay queue is to be declared again; the leases held here.
        self._delays: dict[str, float] = {}
        self._leases: _amqp.Leases | None = None

    # -- errors ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except BusappError:
            raise
        except self._errors as exc:
            if _refusal(exc):
                hint = ("check the user name and password in the URL" if "login" in str(exc).lower()
                        else "grant this broker user the permission (the permissions each "
                             "needs: docs, 'Delivery guarantees')")
                raise AccessRefused(
                    f"broker at {mask_url(self.url)} refused access: {exc}; {hint}") from exc
            raise BrokerUnavailable(
                f"broker at {mask_url(self.url)} unavailable: {exc or type(exc).__name__}"
            ) from exc

    # -- connection ------------------------------------------------------------------------

    def connect(self) -> None:
        with self._guard():
            conn = kombu_connection(self.url, self.max_body, self.heartbeat)
            try:
                # One try at each node the URL lists (kombu moves on to the next on failure).
                conn.ensure_connection(max_retries=max(1, len(conn.alt)), interval_start=0,
                                       interval_step=0.2)
                self._errors = tuple(dict.fromkeys(
                    _ERRORS + tuple(conn.connection_errors) + tuple(conn.channel_errors)))
                self._channel = _raw_channel(conn)
            except BaseException:
                _release(conn)
                raise
            self._conn = conn

    @property
    def channel(self) -> Any:
        if self._channel is None:
            self.connect()
        return self._channel

    def declare_exchange(self, exchange: str, *, passive: bool = False) -> bool:
        if passive and not self.redis:  # a Redis exchange is local state: always declared
            return self._exchange_exists(exchange)
        with self._guard():
            Exchange(exchange, type="topic", durable=True)(self.channel).declare()
        return True

    def _exchange_exists(self, exchange: str) -> bool:
        try:
            with self._guard():
                self.channel.exchange_declare(exchange=exchange, type="topic", passive=True)
            return True
        except BrokerUnavailable as exc:
            if not _not_found(exc.__cause__ or exc):
                raise
        self._reopen_channel()
        return False

    def declare_queue(self, exchange: str, spec: QueueSpec) -> None:
        """Declare ``spec``.

        Raises:
            ValueError: the queue exists with other arguments (say classic, not quorum).
        """
        if spec.expires is not None and not self.redis and not self._takes_expiry(exchange, spec):
            # Declared without an expiry by an older busapp: keep it as it is (RabbitMQ
            # refuses to change a queue's arguments) rather than fail to start.
            spec = attrs.evolve(spec, expires=None)
        with self._guard():
            try:
                self._kombu_queue(exchange, spec)(self.channel).declare()
            except _PRECONDITION_FAILED as exc:
                self.close()  # RabbitMQ closed the channel
                msg = (f"queue {spec.name!r} already exists on the broker with other arguments "
                       f"({getattr(exc, 'reply_text', exc)}); delete it (rabbitmqctl delete_queue "
                       f"{spec.name}) or choose another queue type or name, then start again")
                raise ValueError(msg) from None
        if not self.redis and (spec.arguments or {}).get("x-queue-type") == "quorum":
            self._counted.add(spec.name)

    def _takes_expiry(self, exchange: str, spec: QueueSpec) -> bool:
        """Declare ``spec`` on a channel of its own: False if the queue exists without expiry
        (RabbitMQ closes a channel on such a refusal; the consumers on ours must live on)."""
        with self._guard():
            channel = self._conn.channel()
        try:
            with self._guard():
                self._kombu_queue(exchange, spec)(channel).declare()
            return True
        except BrokerUnavailable as exc:
            if "x-expires" not in str(exc.__cause__ or exc):
                raise
            return False
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def _reopen_channel(self) -> None:
        """A new channel after RabbitMQ closed this one over a refused operation."""
        with self._guard():
            self._channel = _raw_channel(self._conn)

    @staticmethod
    def _kombu_queue(exchange: str, spec: QueueSpec) -> Any:
        ex = Exchange(exchange, type="topic", durable=True) if exchange else None
        options: dict[str, Any] = {"durable": spec.durable, "auto_delete": spec.auto_delete}
        if spec.expires is not None:
            options["expires"] = spec.expires
        if spec.arguments:
            options["queue_arguments"] = dict(spec.arguments)
        keys = list(spec.binding_keys)
        if len(keys) > 1 and ex is not None:
            options["bindings"] = [binding(ex, routing_key=k) for k in keys]
            return Queue(spec.name, **options)
        return Queue(spec.name, ex, routing_key=keys[0] if keys else spec.name, **options)

    # -- publishing ------------------------------------------------------------------------

    def publish(self, body: bytes, *, exchange: str, routing_key: str,
                headers: dict[str, Any] | None = None, reply_to: str | None = None,
                correlation_id: str | None = None, expiration: float | None = None,
                persistent: bool = False, content_type: str = "application/json") -> None:
        properties: dict[str, Any] = {"delivery_mode": 2 if persistent else 1}
        if reply_to is not None:
            properties["reply_to"] = reply_to
        if correlation_id is not None:
            properties["correlation_id"] = correlation_id
        if expiration is not None:
            properties["expiration"] = str(max(1, int(expiration * 1000)))
        with self._guard():
            channel = self.channel
            if self.redis and exchange and reply_to is None:
                # Events and notifications fan out: read the bindings afresh, so a
                # subscriber bound a moment ago is not missed behind the binding cache.
                channel.forget_bindings(exchange)
            message = channel.prepare_message(body, 0, content_type, "utf-8",
                                              headers or {}, properties)
            if reply_to is None or not exchange:
                channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
            elif self.redis:
                channel.publish_request(message, exchange, routing_key)
            else:
                self._publish_request_amqp(message, exchange, routing_key)

    #: Seconds a routing key RabbitMQ routed a request for is trusted to route again.
    ROUTE_CHECK_TTL = 1.0

    def _publish_request_amqp(self, message: Any, exchange: str, routing_key: str) -> None:
        """Publish a request; raise NoRouteError if RabbitMQ has no queue bound to its key.

        Once a second per routing key the request goes out ``mandatory`` on a channel with
        publisher confirms: RabbitMQ sends an unroutable one back (``basic.return``) before
        its ``basic.ack``. The other requests go out plain, as they did: a confirm costs a
        round trip (~0.15 ms here, 10% of a call).
        """
        key = (exchange, routing_key)
        now = time.monotonic()
        if self._routed.get(key, 0.0) > now:
            self.channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
            return
        checked = self._checked_channel()
        self._returned.clear()
        checked.basic_publish_confirm(message, exchange=exchange, routing_key=routing_key,
                                      mandatory=True, confirm_timeout=5)
        if self._returned:
            self._routed.pop(key, None)
            raise NoRouteError(f"no queue is bound to {routing_key!r} on exchange {exchange!r}: "
                               f"no service consumes it")
        if len(self._routed) > 4096:
            self._routed.clear()
        self._routed[key] = now + self.ROUTE_CHECK_TTL

    def _checked_channel(self) -> Any:
        checked = self._checked
        if checked is None:
            checked = self._conn.channel()
            checked.confirm_select()
            checked._confirm_selected = True
            checked.events["basic_return"].add(
                lambda exc, exchange, routing_key, message: self._returned.append(routing_key))
            self._checked = checked
        return checked

    # -- delayed messages and leases (the broker's part: busapp.transport.redis, .amqp) -------

    def publish_delayed(self, body: bytes, *, queue: str, delay: float,
                        headers: dict[str, Any] | None = None, correlation_id: str | None = None,
                        content_type: str = "application/json") -> None:
        properties: dict[str, Any] = {"delivery_mode": 2}
        if correlation_id is not None:
            properties["correlation_id"] = correlation_id
        delay_ms = max(1, int(delay * 1000))
        with self._guard():
            channel = self.channel
            message = channel.prepare_message(body, 0, content_type, "utf-8", headers or {},
                                              properties)
            if self.redis:
                _redis.publish_delayed(channel, message, queue, delay_ms)
            else:
                _amqp.publish_delayed(channel, self._delays, message, queue, delay_ms)

    def move_due(self, queues: list[str]) -> int:
        if not self.redis or not queues:
            return 0  # RabbitMQ moves them itself
        with self._guard():
            return _redis.move_due(self.channel, queues)

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        with self._guard():
            if self.redis:
                return _redis.acquire_lease(self.channel, name, owner, int(ttl * 1000))
            if self._leases is None:
                self.channel  # noqa: B018 - connects if not yet connected
                self._leases = _amqp.Leases(self._conn.connection)
            return self._leases.acquire(name, owner)

    def release_lease(self, name: str, owner: str) -> None:
        with self._guard():
            if self.redis:
                _redis.release_lease(self.channel, name, owner)
            elif self._leases is not None:
                self._leases.release(name, owner)

    # -- consuming -------------------------------------------------------------------------

    def consume(self, queue: str, callback: Callable[[Delivery], None], *,
                no_ack: bool = False) -> None:
        convert = self._from_redis if self.redis else self._from_amqp

        def on_raw(raw: Any) -> None:
            callback(convert(raw, queue, no_ack))

        with self._guard():
            if queue in self._counted:
                self._use_consumer_qos()
            self._consume(queue, on_raw, no_ack)

    def _consume(self, queue: str, on_raw: Callable[[Any], None], no_ack: bool) -> None:
        self._consumed_serial += 1
        tag = f"busapp-{os.getpid()}-{self._consumed_serial}-{queue}"
        self.channel.basic_consume(queue, no_ack=no_ack, callback=on_raw, consumer_tag=tag)
        self._tags.append(tag)
        self._consumers[queue] = (tag, on_raw, no_ack)

    def _from_amqp(self, raw: Any, queue: str, no_ack: bool) -> Delivery:
        props = raw.properties
        info = raw.delivery_info
        headers = props.get("application_headers") or {}
        body = raw.body
        delivery = Delivery(
            body=body if isinstance(body, bytes) else str(body).encode(),
            content_type=props.get("content_type"), headers=headers,
            routing_key=info.get("routing_key"), reply_to=props.get("reply_to"),
            correlation_id=props.get("correlation_id"), redelivered=bool(info.get("redelivered")),
            compression=headers.get("compression"), queue=queue,
        )
        if queue in self._counted:
            delivery.deliveries = _broker_count(delivery)
        if not no_ack:
            tag = info["delivery_tag"]
            channel = self._channel
            delivery._ack = lambda: self._settle(channel.basic_ack, tag)
            delivery._requeue = lambda: self._settle(channel.basic_reject, tag, requeue=True)
        return delivery

    def _from_redis(self, message: Any, queue: str, no_ack: bool) -> Delivery:
        props = message.properties or {}
        info = message.delivery_info or {}
        headers = message.headers or {}
        body = message.body
        delivery = Delivery(
            body=body if isinstance(body, bytes) else str(body or "").encode(),
            content_type=message.content_type, headers=headers,
            routing_key=info.get("routing_key"), reply_to=props.get("reply_to"),
            correlation_id=props.get("correlation_id"),
            redelivered=bool(info.get("redelivered") or headers.get("redelivered")),
            compression=getattr(message, "compression", None), queue=queue,
        )
        if not no_ack:
            tag = message.delivery_tag
            channel = self._channel
            delivery._ack = lambda: self._settle(channel.basic_ack, tag)
            delivery._requeue = lambda: self._settle(channel.basic_reject, tag, requeue=True)
        return delivery

    def cancel(self) -> None:
        tags, self._tags = self._tags, []
        self._consumers.clear()
        with self._guard():
            for tag in tags:
                self.channel.basic_cancel(tag)

    def _settle(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        with self._guard():
            method(*args, **kwargs)

    def set_prefetch(self, count: int) -> None:
        if count == self._prefetch:
            return
        with self._guard():
            if self._consumer_qos:
                self.channel.basic_qos(0, count, False)
                if count > self._prefetch:
                    self._reconsume()
            else:
                # global: one limit for the channel, which RabbitMQ applies to running consumers.
                self.channel.basic_qos(0, count, True)
        self._prefetch = count

    def _use_consumer_qos(self) -> None:
        """Switch to per-consumer prefetch: quorum queues refuse a channel-wide (global) one."""
        if self._consumer_qos:
            return
        self._consumer_qos = True
        if self._prefetch:
            self.channel.basic_qos(0, 0, True)  # lift the global limit, then the same per consumer
            self.channel.basic_qos(0, self._prefetch, False)

    def _reconsume(self) -> None:
        """Consume the quorum queues again, so a larger per-consumer prefetch applies to them.

        RabbitMQ applies a per-consumer limit to consumers started after it only. The old
        consumer's unacked messages stay with the channel and are acked as usual. Other
        queues are left alone: cancelling the last consumer of an auto-delete queue (a
        worker's control queue) deletes it.
        """
        for queue, (tag, on_raw, no_ack) in list(self._consumers.items()):
            if queue not in self._counted:
                continue
            self.channel.basic_cancel(tag)
            self._tags.remove(tag)
            self._consume(queue, on_raw, no_ack)

    def drain(self, timeout: float) -> bool:
        if timeout <= 0:
            return self._drain_arrived()
        with self._guard():
            try:
                self._conn.drain_events(timeout=timeout)
            except TimeoutError:  # what socket.timeout is since Python 3.10
                return False
        return True

    def _drain_arrived(self) -> bool:
        """Handle what RabbitMQ already sent (a reply, or the news that the connection is
        closed: then BrokerUnavailable), without waiting; on Redis, nothing."""
        if self.redis or self._conn is None:
            return False
        # The py-amqp connection itself: kombu's would quietly open a new one if this one died.
        amqp_conn = getattr(self._channel, "connection", None)
        sock = getattr(getattr(amqp_conn, "transport", None), "sock", None)
        if amqp_conn is None or sock is None:
            raise BrokerUnavailable(
                f"broker at {mask_url(self.url)} unavailable: connection closed")
        with self._guard():
            if not select.select([sock], [], [], 0)[0]:
                return False
            try:
                amqp_conn.drain_events(timeout=0.05)
            except TimeoutError:  # what socket.timeout is since Python 3.10
                return False
        return True

    def queue_depth(self, queue: str) -> int:
        with self._guard():
            if self.redis:  # an empty Redis list does not exist: a passive declare would fail
                return int(self.channel._size(queue))
            return int(self.channel.queue_declare(queue=queue, passive=True).message_count)

    def bound_queues(self, exchange: str) -> set[str] | None:
        if not self.redis:
            return None
        with self._guard():
            return {q for _, _, q in self.channel.get_table(exchange)}

    def claim(self, key: str, ttl: float) -> bool | None:
        """``SET key <owner> NX PX ttl`` on Redis (the owner, ``<host>.<pid>`` of a managed
        worker, lets its manager release the claims of a worker that died mid-message: see
        :func:`busapp.transport.redis.release_claims`); None on RabbitMQ."""
        if not self.redis:
            return None
        owner = config.get("unacked_owner") or "-"
        with self._guard(), self.channel.conn_or_acquire() as client:
            return bool(client.set(key, owner, nx=True, px=max(1, int(ttl * 1000))))

    def close(self, *, delete_queue: str | None = None) -> None:
        conn, self._conn, channel, self._channel = self._conn, None, self._channel, None
        self._checked = None
        self._leases = None
        self._delays.clear()
        self._routed.clear()
        self._tags.clear()
        self._consumers.clear()
        if conn is None:
            return
        if delete_queue and channel is not None:
            with contextlib.suppress(Exception):
                channel.queue_delete(delete_queue)
        _release(conn)


def _raw_channel(conn: Any) -> Any:
    """A new channel of ``conn`` whose message bodies stay the bytes that crossed the wire.

    py-amqp decodes a body by its ``content_encoding`` by default: busapp then re-encoded it
    as UTF-8, changing the bytes of a body sent in any other encoding.
    """
    channel = conn.channel()
    if hasattr(channel, "auto_decode"):  # py-amqp's; Redis channels hand over bytes as they are
        channel.auto_decode = False
    return channel


def _broker_count(delivery: Delivery) -> int:
    """This delivery's number on a quorum queue: 1, or 1 + the broker's ``x-delivery-count``.

    The header is read only on a redelivery (the broker's flag): a first delivery carries
    whatever header its sender put there, a redelivered one the broker's own count.
    """
    count = delivery.headers.get("x-delivery-count") if delivery.redelivered else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return 2 if delivery.redelivered else 1
    return count + 1


def _release(conn: Any) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection
        conn.release()
