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
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
# kombu loads most of itself on first use (its package ``__getattr__``, transports by name),
# which is not thread-safe: threads making their first Clients at once in a fresh process got
# ``ImportError: cannot import name ... from 'kombu'``. So everything a transport uses is
# imported here, once, under this module's import lock (tests/test_client_leaks.py pins it).
import kombu  # noqa: F401
import kombu.connection  # noqa: F401
import kombu.entity  # noqa: F401
import kombu.exceptions  # noqa: F401
import kombu.messaging  # noqa: F401
import kombu.transport.pyamqp  # noqa: F401
from kombu import Connection, Exchange, Queue, binding  # noqa: F401 - kombu's lazy names, now

from busapp.errors import AccessRefused, BrokerUnavailable, BusappError, NoRouteError
from busapp.transport import amqp as _amqp
from busapp.transport import is_redis, mask_url
from busapp.transport.base import Delivery, QueueSpec
from busapp.transport.kombu_deliveries import from_amqp, from_redis
from busapp.transport.kombu_setup import (
    kombu_queue,
    _ERRORS,
    _not_found,
    _raw_channel,
    _refusal,
    _release,
    kombu_connection,
)
from busapp.transport.kombu_state import BrokerState


try:
    from amqp.exceptions import PreconditionFailed as _PRECONDITION_FAILED
except ImportError:  # pragma: no cover - amqp is a dependency
    class _PRECONDITION_FAILED(Exception):  # type: ignore[no-redef]  # noqa: N801
        pass


class KombuTransport(BrokerState):
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
                kombu_queue(exchange, spec)(self.channel).declare()
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
                kombu_queue(exchange, spec)(channel).declare()
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

    # -- consuming -------------------------------------------------------------------------

    def consume(self, queue: str, callback: Callable[[Delivery], None], *,
                no_ack: bool = False) -> None:
        convert = from_redis if self.redis else from_amqp
        counted = queue in self._counted

        def on_raw(raw: Any) -> None:
            callback(convert(raw, queue, None if no_ack else self._settler(), counted))

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

    def cancel(self) -> None:
        tags, self._tags = self._tags, []
        self._consumers.clear()
        with self._guard():
            for tag in tags:
                self.channel.basic_cancel(tag)

    def _settler(self) -> Callable[..., None]:
        """Settles a delivery of this connection's current channel (see :meth:`_settle`)."""
        channel = self._channel

        def settle(verb: str, tag: Any) -> None:
            if verb == "ack":
                self._settle(channel.basic_ack, tag)
            else:
                self._settle(channel.basic_reject, tag, requeue=True)

        return settle

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
