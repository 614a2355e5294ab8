"""Calling services from asyncio: :class:`AsyncClient`, and the async ``bus`` of handlers.

An AsyncClient has the arguments, methods, errors, timeouts and wire of
:class:`~busapp.client.sync.Client`, as coroutines. The broker I/O is the same blocking
transport (:mod:`busapp.transport.base`), driven by two threads the client owns, so no
call of it holds the event loop for longer than it takes to queue a message:

- a *publisher* thread takes each message from a queue and publishes it (the
  publishing connection, its reconnection and the embedded broker's revival are
  :class:`~busapp.client.sync.Client`'s own);
- a *reply* thread drains the reply queue and hands each reply to the future of its
  call with ``loop.call_soon_threadsafe``.

Every call's future remembers its own loop, so one AsyncClient serves any number of
event loops (a worker's async handlers run on one loop per thread). On the in-memory
test transport, which delivers as it publishes, messages are published in the calling
thread instead, as the test client's :class:`~busapp.client.sync.Client` does: when the
awaited call returns, everything it caused has happened.

Why threads rather than ``redis.asyncio``/``aio-pika`` on kombu's wire: one code path
for Redis, RabbitMQ and the embedded broker, no second implementation of kombu's
envelope, bindings and acknowledgements to keep in step, and (``benchmarks/asyncclient.py``)
a loop lag p99 of a few milliseconds with 1,000 calls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any

import structlog

from busapp.client.replies import deadline_headers, reply_key
from busapp.client.sync import DEFAULT_TIMEOUT, WAIT_HOOK, Client
from busapp.core import events, tracing, wire
from busapp.errors import BrokerUnavailable, RequestTimeout
from busapp.transport import is_memory, mask_url, open_transport, revive_if_embedded
from busapp.transport.base import Delivery, QueueSpec, Transport

log = structlog.get_logger("busapp.aio")

__all__ = ["AsyncClient"]

_STOP = object()


class AsyncClient:
    """An asyncio connection to the bus: :class:`~busapp.client.sync.Client`'s API, awaitable.

    Args:
        broker_url: broker URL; None means ``$BUSAPP_BROKER_URL``, else the embedded broker.
        exchange: topic exchange name; None means ``$BUSAPP_EXCHANGE``, else ``commissaire``.
        timeout: default seconds to wait for a reply.

    Many calls may be in flight at once, from one loop or several. Example::

        async with AsyncClient() as bus:
            await bus.call("simple.add", 1, 2)
            await asyncio.gather(*(bus.call("simple.add", i, 1) for i in range(1000)))
    """

    def __init__(self, broker_url: str | None = None, exchange: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, key: Any = None) -> None:
        #: The blocking client whose publishing connection (and reply queue name) this one
        #: uses; it signs what is sent, and checks replies, with ``key`` (or ``$BUSAPP_KEY``).
        self._sync = Client(broker_url, exchange, timeout=timeout, key=key)
        self.broker_url = self._sync.broker_url
        self.exchange_name = self._sync.exchange_name
        self.timeout = timeout
        self.reply_queue = self._sync.reply_queue
        self._inline = is_memory(self.broker_url)
        self._pending: dict[str, asyncio.Future] = {}
        self._waits: dict[int, int] = {}       # id(worker hook) -> this handler's calls waiting
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()          # guards starting and stopping the threads
        self._replies: Transport | None = None
        self._reply_thread: threading.Thread | None = None
        self._publisher: threading.Thread | None = None
        self._closed = False

    # -- calls -------------------------------------------------------------------------

    async def call(self, routing_key: str, *args: Any, timeout: float | None = None,
                   **kwargs: Any) -> Any:
        """Call a method and return its result.

        Raises:
            RemoteProcedureCallError: (a subclass chosen by code) on an error reply.
            RequestTimeout: no reply within ``timeout`` seconds (default 10).
            BrokerUnavailable: the broker cannot be reached.
        """
        response = await self.request(routing_key, wire.params_from(args, kwargs), timeout=timeout)
        error = wire.error_from_response(response)
        if error is not None:
            raise error
        return response.get("result")

    async def request(self, routing_key: str, params: Any = None,
                      timeout: float | None = None) -> dict:
        """Send a request and return the whole JSON-RPC response dict."""
        method = wire.call_method(routing_key)
        timeout = self.timeout if timeout is None else float(timeout)
        self._check_open()
        loop = asyncio.get_running_loop()
        request_id = wire.new_id()
        future = self._pending[request_id] = loop.create_future()
        hook = self._enter_wait()
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                await self._ready(loop)
                body = wire.encode_request(method, params, request_id)
                headers = deadline_headers(timeout)
                await self._send(loop, future, body, routing_key, reply_to=self.reply_queue,
                                 correlation_id=request_id, expiration=timeout, headers=headers)
                return await future
        except TimeoutError:
            if not scope.expired():
                raise  # a RequestTimeout of its own (the test bus's NoRouteError)
            raise RequestTimeout(
                f"no reply to {routing_key!r} within {timeout:g}s; "
                f"is a service consuming it on exchange {self.exchange_name!r}?"
            ) from None
        finally:
            self._pending.pop(request_id, None)
            self._leave_wait(hook)

    async def notify(self, routing_key: str, *args: Any, **kwargs: Any) -> None:
        """Send a notification (no id, no reply); returns once it is published."""
        method = wire.call_method(routing_key)
        params = wire.params_from(args, kwargs, single_container=True)
        await self._publish(wire.encode_request(method, params), routing_key, **tracing.carried())

    async def publish(self, routing_key: str, body: Any, *, persistent: bool = False) -> None:
        """Publish a plain JSON body on the exchange (e.g. a storage event)."""
        await self._publish(body, routing_key, persistent=persistent, **tracing.carried())

    async def emit(self, name: str, /, **payload: Any) -> str:
        """Publish event ``name`` to every App subscribed to it; return its id (see
        :meth:`busapp.Client.emit`)."""
        routing_key, body, event_id = events.event_message(name, payload)
        headers: dict[str, Any] = {}
        with tracing.outgoing_event(routing_key, event_id, headers):
            await self._publish(body, routing_key, headers=headers, correlation_id=event_id,
                                persistent=True)
        return event_id

    async def _publish(self, body: Any, routing_key: str, **props: Any) -> None:
        self._check_open()
        loop = asyncio.get_running_loop()
        await self._ready(loop)
        done = loop.create_future()
        await self._send(loop, done, body, routing_key, **props)
        await done

    # -- the worker's wait hook: a handler awaiting a call gives its receiving role away --

    def _enter_wait(self) -> Any:
        hook = WAIT_HOOK.hook
        if hook is not None:
            key = id(hook)
            count = self._waits.get(key, 0)
            self._waits[key] = count + 1
            if count == 0:  # one handler counts once, however many calls it awaits
                hook.waiting()
        return hook

    def _leave_wait(self, hook: Any) -> None:
        if hook is not None:
            key = id(hook)
            count = self._waits.pop(key) - 1
            if count:
                self._waits[key] = count
            else:
                hook.done_waiting()

    # -- the I/O threads ---------------------------------------------------------------

    async def _send(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future, body: Any,
                    routing_key: str, **props: Any) -> None:
        if self._inline:
            # The in-memory broker delivers (and maybe answers) as it publishes, like Client.
            # Not through Client._publish: its lock would be held while the delivery runs,
            # and a nested async handler publishes from a thread of its own.
            assert self._replies is not None
            payload = wire.dumps(body).encode()
            self._sync.sign(payload, routing_key, props)
            self._replies.publish(payload, exchange=self.exchange_name, routing_key=routing_key,
                                  **props)
            if "reply_to" not in props:
                future.set_result(None)
            return
        self._jobs.put((loop, future, body, routing_key, props))

    async def _ready(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure the reply queue is consumed and the threads run."""
        if self._reply_thread is not None and self._reply_thread.is_alive() or \
                self._inline and self._replies is not None:
            return
        if self._inline:
            self._start()
        else:
            await loop.run_in_executor(None, self._start)

    def _start(self) -> None:
        with self._lock:
            self._check_open()
            if self._replies is None:
                self._replies = self._connect_replies()
            if self._inline:
                return
            if self._publisher is None or not self._publisher.is_alive():
                self._publisher = threading.Thread(target=self._publish_loop, daemon=True,
                                                   name="busapp-aio-publish")
                self._publisher.start()
            if self._reply_thread is None or not self._reply_thread.is_alive():
                self._reply_thread = threading.Thread(target=self._reply_loop, daemon=True,
                                                      name="busapp-aio-replies")
                self._reply_thread.start()

    def _connect_replies(self) -> Transport:
        transport = open_transport(self.broker_url)
        try:
            transport.connect()
            transport.declare_queue("", QueueSpec(self.reply_queue, durable=False,
                                                  auto_delete=True))
            transport.consume(self.reply_queue, self._deliver, no_ack=True)
        except BaseException:
            transport.close()
            raise
        return transport

    def _publish_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            loop, future, body, routing_key, props = job
            if future.done():  # timed out or cancelled while queued
                continue
            try:
                self._sync._publish(body, routing_key, exchange=self.exchange_name, **props)
            except BaseException as exc:  # noqa: BLE001 - the caller gets it, the thread goes on
                _resolve(loop, future, exc=exc)
            else:
                if "reply_to" not in props:
                    _resolve(loop, future, None)

    def _reply_loop(self) -> None:
        reconnected = False
        while not self._closed:
            transport = self._replies
            if transport is None:
                return
            try:
                transport.drain(0.25)
                reconnected = False
            except BrokerUnavailable as exc:
                if self._closed:
                    return
                if not self._reconnect_replies(exc, first=not reconnected):
                    return
                reconnected = True

    def _reconnect_replies(self, exc: BrokerUnavailable, *, first: bool) -> bool:
        """After a lost reply connection: reconnect once at once; else fail the calls waiting."""
        with self._lock:
            old, self._replies = self._replies, None
        if old is not None:
            old.close()
        if first:
            log.warning("reply connection lost; reconnecting", error=str(exc),
                        broker=mask_url(self.broker_url))
            revive_if_embedded(self.broker_url)
            with contextlib.suppress(BrokerUnavailable):
                with self._lock:
                    self._replies = self._connect_replies()
                return True
        for future in list(self._pending.values()):
            _resolve(future.get_loop(), future, exc=exc)
        return False  # the next call connects again

    def _deliver(self, delivery: Delivery) -> None:
        response = self._sync.accept_reply(delivery)
        if response is None:
            return
        key = reply_key(delivery, response)
        future = self._pending.get(key) if key is not None else None
        if future is None:
            log.debug("reply for no pending call dropped", correlation_id=key)
            return
        _resolve(future.get_loop(), future, response)

    # -- life cycle --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this AsyncClient is closed")

    def close_now(self) -> None:
        """Stop the threads, delete the reply queue and close the connections (blocks briefly)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            publisher, reply_thread = self._publisher, self._reply_thread
        if publisher is not None:
            self._jobs.put(_STOP)
            publisher.join(5)
        if reply_thread is not None:
            reply_thread.join(1)  # it drains in 0.25 s slices
        replies, self._replies = self._replies, None
        if replies is not None:
            replies.close(delete_queue=self.reply_queue)
        self._sync.close()
        for future in list(self._pending.values()):
            _resolve(future.get_loop(), future, exc=RuntimeError("this AsyncClient was closed"))

    async def close(self) -> None:
        """Close the client (in a thread: closing connections may wait on the broker)."""
        if self._inline:
            self.close_now()
        else:
            await asyncio.get_running_loop().run_in_executor(None, self.close_now)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncClient {mask_url(self.broker_url)} exchange={self.exchange_name!r}>"


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: Any = None, *,
             exc: BaseException | None = None) -> None:
    """Settle ``future`` from any thread (nothing happens if it is settled already)."""
    try:
        loop.call_soon_threadsafe(_settle, future, result, exc)
    except RuntimeError:  # its loop is closed: nobody waits any more
        pass


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


