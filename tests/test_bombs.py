"""Decompression bombs and huge bodies: refused without inflating or reading past the limit;
real compressed requests served."""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib

import pytest

from tests._services import run_app
from tests.apps import make_app

#: 1 GiB of zero bytes, bz2-compressed: 785 bytes (``bz2.compress(bytes(1 << 30), 9)``).
BZ2_BOMB = base64.b64decode(
    "QlpoOTFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1lIfF/JAIpSyADAAAAEAAggADDMBSmmkSJDYUSJDxdyRThQkPaI5AI=")


def _zlib_bomb(size: int = 256 << 20) -> bytes:
    """``size`` zero bytes, zlib-compressed (zlib cannot beat ~1:1000: 256 MiB -> ~260 KB)."""
    out = zlib.compressobj(9)
    chunk = bytes(16 << 20)
    return b"".join(out.compress(chunk) for _ in range(size // len(chunk))) + out.flush()


def _peak_rss_mb(pid: int) -> float:
    """The peak resident set size (VmHWM) of process ``pid``, in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _raw_request(url: str, exchange: str, routing_key: str, body: bytes,
                 headers: dict | None = None, timeout: float = 30.0,
                 compression: str | None = None) -> dict:
    """Publish ``body`` as a request straight through kombu, as any sender could (compressed
    by kombu with ``compression``); the reply."""
    from kombu import Connection, Exchange, Producer, Queue

    reply_to = f"busapp.reply.bomb-{uuid.uuid4().hex}"  # services answer reply queues only
    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        replies = Queue(reply_to, durable=False, auto_delete=True)(channel)
        replies.declare()
        topic = Exchange(exchange, "topic", durable=True)(channel)
        topic.declare()  # kombu's Redis transport takes an undeclared exchange for a direct one
        Producer(channel).publish(
            body, exchange=topic, routing_key=routing_key,
            content_type="application/json", content_encoding="binary", headers=headers or {},
            reply_to=reply_to, correlation_id="1", serializer=None, compression=compression)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            message = replies.get(no_ack=True)
            if message is not None:
                replies.delete()
                return json.loads(message.body)
            time.sleep(0.05)
    raise AssertionError("no reply")


def test_compression_bombs_are_refused_at_the_limit(broker_url, unique):
    """Three 785-byte bz2 bombs (1 GiB each) and a zlib one (256 MiB) get -32700 naming the
    limit, inflated no further than it; the worker's peak memory stays small (before any
    check: 3.2 GB after the three bz2 bombs)."""
    name, exchange = f"b{unique}", f"test-{unique}"
    from busapp import Client

    with run_app(make_app(name), broker_url, exchange), Client(broker_url, exchange) as bus:
        pid = bus.call(f"{name}.pid")
        before = _peak_rss_mb(pid)
        bombs = [("application/x-bz2", BZ2_BOMB)] * 3 + [("application/x-gzip", _zlib_bomb())]
        for codec, bomb in bombs:
            reply = _raw_request(broker_url, exchange, f"{name}.echo", bomb,
                                 headers={"compression": codec})
            assert reply["error"]["code"] == -32700
            assert "inflates to more than the limit of 1048576 bytes" in reply["error"]["message"]
        assert bus.call(f"{name}.echo", "still here") == "still here"
        assert bus.call(f"{name}.pid") == pid
        after = _peak_rss_mb(pid)
    print(f"\n[figure] compression bombs ({broker_url.split(':')[0]}): worker peak RSS "
          f"{before:.0f} MB before, {after:.0f} MB after 3 bz2 (3 GiB) + 1 zlib (256 MiB) bombs")
    assert after < before + 50


def test_kombu_compressed_requests_are_served(broker_url, unique):
    """Requests a kombu sender compressed (compression="bzip2", "zlib", "lzma", as Commissaire
    callers may) are inflated and served, answered with their own id."""
    name, exchange = f"z{unique}", f"test-{unique}"
    body = json.dumps({"jsonrpc": "2.0", "id": "z1", "method": "echo",
                       "params": ["x" * 100_000]}).encode()
    with run_app(make_app(name), broker_url, exchange):
        for codec in ("bzip2", "zlib", "lzma"):
            reply = _raw_request(broker_url, exchange, f"{name}.echo", body, compression=codec)
            assert reply == {"jsonrpc": "2.0", "id": "z1", "result": "x" * 100_000}, codec


def test_client_refuses_a_request_over_its_max_body(redis_url, unique):
    """A Client refuses a request over its max_body (16 MiB by default) before sending it,
    naming the limit and how to raise it; max_body=None lifts the check."""
    from busapp import Client
    from busapp.errors import NoRouteError, RequestTooLarge

    with Client(redis_url, f"test-{unique}") as bus:
        with pytest.raises(RequestTooLarge, match="limit of 16777216 bytes .max_body.*"
                                                  "Client.max_body=") as info:
            bus.call(f"n{unique}.echo", "x" * (17 << 20))
        assert info.value.limit == 16 << 20 and info.value.size > 17 << 20
    with Client(redis_url, f"test-{unique}", max_body=1000) as bus:
        with pytest.raises(RequestTooLarge):
            bus.notify(f"n{unique}.echo", "x" * 1000)
    with Client(redis_url, f"test-{unique}", max_body=None) as bus:
        with pytest.raises(NoRouteError):  # sent: nobody is bound to it
            bus.call(f"n{unique}.echo", "x" * (17 << 20))


def test_an_over_size_request_is_answered_on_redis(redis_url, unique):
    """A request too big for the service (2 MiB to a 1 MiB App), sent by any kombu caller, is
    answered with -32700 naming the limit instead of timing out; a note of it (not the
    entry) goes to <queue>.dead; the worker serves on."""
    import redis

    from busapp import Client

    name, exchange = f"o{unique}", f"test-{unique}"
    app = make_app(name)
    dead = f"{app.queue_for(exchange)}.dead"
    try:
        with run_app(app, redis_url, exchange), Client(redis_url, exchange) as bus:
            reply = _raw_request(redis_url, exchange, f"{name}.echo",
                                 b'"' + b"x" * (2 << 20) + b'"', timeout=20)
            assert reply["error"]["code"] == -32700
            assert "limit of 1048576 bytes for its body (the service's max_body)" \
                in reply["error"]["message"]
            assert bus.call(f"{name}.echo", "still here") == "still here"
        [note] = redis.Redis.from_url(redis_url).lrange(dead, 0, -1)
        assert json.loads(note)["routing_key"] == f"{name}.echo"
    finally:
        redis.Redis.from_url(redis_url).delete(dead)


@pytest.mark.slow  # ~10 s: 100 MB through a private Redis
def test_a_100mb_body_costs_a_redis_worker_no_memory(private_redis, unique):
    """A 100 MB body on Redis is answered with -32700 naming the limit, and is never read
    into the worker's memory (it is streamed off the socket, its last bytes kept to name
    the caller). Before: peak RSS 40 -> 452 MB and a RequestTimeout after 60 s."""
    from busapp import Client

    url, name, exchange = private_redis.url, f"b{unique}", f"test-{unique}"
    with run_app(make_app(name), url, exchange), Client(url, exchange) as bus:
        pid = bus.call(f"{name}.pid")
        before = _peak_rss_mb(pid)
        started = time.monotonic()
        reply = _raw_request(url, exchange, f"{name}.echo", b'"' + b"x" * (100 << 20) + b'"')
        took = time.monotonic() - started
        assert reply["error"]["code"] == -32700 and "max_body" in reply["error"]["message"]
        assert bus.call(f"{name}.echo", "still here") == "still here"
        after = _peak_rss_mb(pid)
    print(f"\n[figure] 100 MB body on Redis: answered -32700 after {took:.1f}s (sending it "
          f"included); worker peak RSS {before:.0f} MB before, {after:.0f} MB after")
    assert after < before + 20


@pytest.mark.slow  # 100 MB through a private RabbitMQ node, twice
@pytest.mark.parametrize("private_broker", ["rabbitmq"], indirect=True)
def test_a_100mb_body_on_rabbitmq(private_broker, unique):
    """A 100 MB body gets -32700 naming the limit, and the worker serves on. py-amqp reads a
    message whole before busapp sees it, so the worker's peak memory grows by about the
    body's size; with RabbitMQ's max_message_size set (here 2 MiB), the broker refuses the
    publish and the worker never sees it."""
    from busapp import Client

    node = private_broker
    url, name, exchange = node.url, f"b{unique}", f"test-{unique}"
    body = b'"' + b"x" * (100 << 20) + b'"'
    with run_app(make_app(name), url, exchange), Client(url, exchange) as bus:
        pid = bus.call(f"{name}.pid")
        before = _peak_rss_mb(pid)
        reply = _raw_request(url, exchange, f"{name}.echo", body)
        assert reply["error"]["code"] == -32700 and "limit" in reply["error"]["message"]
        assert bus.call(f"{name}.echo", "still here") == "still here"
        after = _peak_rss_mb(pid)
    print(f"\n[figure] 100 MB body on RabbitMQ: worker peak RSS {before:.0f} MB before, "
          f"{after:.0f} MB after")
    assert after < before + 300
    node.ctl("eval", "application:set_env(rabbit, max_message_size, 2097152).")  # private
    try:
        with run_app(make_app(name), url, exchange), Client(url, exchange) as bus:
            pid = bus.call(f"{name}.pid")
            before = _peak_rss_mb(pid)
            with pytest.raises(Exception, match="max size|PRECONDITION"):
                _raw_request(url, exchange, f"{name}.echo", body)
            assert bus.call(f"{name}.echo", "still here") == "still here"
            limited = _peak_rss_mb(pid)
    finally:
        node.ctl("eval", "application:set_env(rabbit, max_message_size, 134217728).")  # private
    print(f"[figure] with max_message_size = 2 MiB: the publish is refused by RabbitMQ; "
          f"worker peak RSS {before:.0f} MB before, {limited:.0f} MB after")
    assert limited < before + 20
