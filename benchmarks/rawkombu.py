"""The yardstick: a plain-kombu JSON-RPC echo server and client (no busapp code).

What a careful kombu user would write by hand, with stock kombu transports and
no busapp tuning:

- topic exchange, one durable queue bound to ``<name>.*``, JSON serializer,
  ``reply_to`` + ``correlation_id``, replies published on the default exchange;
- server: one thread per process, ``prefetch_count=8``, the reply published on the
  consuming channel with one Producer made once, ack after the reply;
- client: connection and producer made once (the faster variant the issue measured).
  With one call in flight it drains the reply queue in the calling thread (kombu's own
  RPC example does this); with several threads in flight it needs what busapp does: a
  reply-listener thread with its own connection, publishes under a lock.

Used only by ``benchmarks/rpc.py``.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from typing import Any

from kombu import Connection, Consumer, Exchange, Producer, Queue  # noqa: F401 - Connection swappable


def use_connection_class(cls: Any) -> None:
    """Run the yardstick over another kombu Connection class (rpc.py: busapp's Redis transport)."""
    global Connection
    Connection = cls


def _queue_kwargs(url: str) -> dict[str, Any]:
    return {"durable": False, "auto_delete": True, "exclusive": url.startswith("amqp")}


def serve(url: str, exchange: str, queue: str, routing_key: str, stop: threading.Event) -> None:
    """Echo every request's params back until ``stop`` is set."""
    conn = Connection(url)
    conn.ensure_connection(max_retries=3)
    channel = conn.channel()
    ex = Exchange(exchange, type="topic", durable=True)
    q = Queue(queue, ex, routing_key=routing_key, durable=True)
    producer = Producer(channel)

    def on_message(message: Any) -> None:
        request = message.decode()
        producer.publish(
            {"jsonrpc": "2.0", "id": request.get("id"), "result": request.get("params")},
            exchange="", routing_key=message.properties["reply_to"],
            correlation_id=message.properties.get("correlation_id"),
            serializer="json", retry=False,
        )
        message.ack()

    consumer = Consumer(channel, [q], on_message=on_message, prefetch_count=8)
    consumer.consume()
    try:
        while not stop.is_set():
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
    finally:
        try:
            consumer.cancel()
        finally:
            conn.release()


def serve_forever(url: str, exchange: str, queue: str, routing_key: str) -> None:
    """:func:`serve` until SIGTERM/SIGINT, reconnecting if the broker drops the connection."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    errors = Connection(url).connection_errors + Connection(url).channel_errors
    while not stop.is_set():
        try:
            serve(url, exchange, queue, routing_key, stop)
        except errors:
            stop.wait(0.5)


class RawClient:
    """A JSON-RPC client on plain kombu; ``threaded=True`` allows calls from many threads."""

    def __init__(self, url: str, exchange: str, *, threaded: bool) -> None:
        self.url = url
        self.threaded = threaded
        # Commissaire's name for a reply queue: a busapp service answers only reply queues.
        self.reply_queue = f"response-{uuid.uuid4()}"
        self.conn = Connection(url)
        self.conn.ensure_connection(max_retries=3)
        self.channel = self.conn.channel()
        self.exchange = Exchange(exchange, type="topic", durable=True)
        self.exchange(self.channel).declare()
        self.producer = Producer(self.channel, exchange=self.exchange, serializer="json")
        self.lock = threading.Lock()
        self.pending: dict[str, list] = {}
        self._stop = threading.Event()
        self._response: Any = None
        self._waiting_for: str | None = None
        if threaded:
            self._ready = threading.Event()
            self._listener = threading.Thread(target=self._listen, daemon=True)
            self._listener.start()
            if not self._ready.wait(10):
                raise RuntimeError("reply listener did not start")
        else:
            self.queue = Queue(self.reply_queue, **_queue_kwargs(url), channel=self.channel)
            self.consumer = Consumer(self.channel, [self.queue], on_message=self._on_inline,
                                     no_ack=True)
            self.consumer.consume()

    # -- one call in flight: drain in the calling thread ----------------------------

    def _on_inline(self, message: Any) -> None:
        if message.properties.get("correlation_id") == self._waiting_for:
            self._response = message.decode()

    # -- many calls in flight: a listener thread --------------------------------------

    def _listen(self) -> None:
        conn = Connection(self.url)
        conn.ensure_connection(max_retries=3)
        channel = conn.channel()
        queue = Queue(self.reply_queue, **_queue_kwargs(self.url), channel=channel)

        def on_message(message: Any) -> None:
            slot = self.pending.get(message.properties.get("correlation_id"))
            if slot is not None:
                slot[1] = message.decode()
                slot[0].set()

        consumer = Consumer(channel, [queue], on_message=on_message, no_ack=True)
        consumer.consume()
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
        finally:
            try:
                queue.delete()
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
            conn.release()

    def call(self, routing_key: str, method: str, params: Any, timeout: float = 10.0) -> Any:
        """Send a request and return the result."""
        cid = str(uuid.uuid4())
        body = {"jsonrpc": "2.0", "method": method, "params": params, "id": cid}
        if not self.threaded:
            self._waiting_for, self._response = cid, None
            self.producer.publish(body, routing_key=routing_key, reply_to=self.reply_queue,
                                  correlation_id=cid, retry=False)
            deadline = time.monotonic() + timeout
            while self._response is None:
                self.conn.drain_events(timeout=max(0.001, deadline - time.monotonic()))
            return self._response["result"]
        slot = [threading.Event(), None]
        self.pending[cid] = slot
        try:
            with self.lock:
                self.producer.publish(body, routing_key=routing_key, reply_to=self.reply_queue,
                                      correlation_id=cid, retry=False)
            if not slot[0].wait(timeout):
                raise TimeoutError(f"no reply within {timeout}s")
            return slot[1]["result"]
        finally:
            self.pending.pop(cid, None)

    def close(self) -> None:
        """Delete the reply queue and close the connections."""
        if self.threaded:
            self._stop.set()
            self._listener.join(3)
        else:
            try:
                self.consumer.cancel()
                self.queue.delete()
            except Exception:  # noqa: BLE001
                pass
        self.conn.release()
