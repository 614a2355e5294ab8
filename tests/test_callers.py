"""What a caller relies on: the right service answers, only to reply queues, with typed errors.

Cross-talk between deployments, reply targets, odd request ids, a slow handler under the
test client, quiet logging; on the real brokers where the behaviour is the broker's.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid

import pytest
import structlog
from kombu import Connection, Consumer, Exchange, Producer, Queue

from busapp import App, Client
from busapp.errors import RequestTimeout
from busapp.core.pipeline import REPLY_TO_ENV, reply_target_allowed
from tests._services import run_app
from tests.apps import make_app


@pytest.fixture(scope="module", params=["redis", "amqp"])
def served(request):
    """A test App running with one worker on each real broker; yields (app, url, exchange)."""
    url = request.getfixturevalue(f"{request.param}_url")
    token = uuid.uuid4().hex[:10]
    app = make_app(f"c{token}")
    with run_app(app, url, f"test-{token}"):
        yield app, url, f"test-{token}"


def _publish_raw(url: str, exchange: str, routing_key: str, body: bytes | str, *,
                 reply_to: str | None, content_type: str = "application/json") -> None:
    with Connection(url) as conn:
        topic = Exchange(exchange, "topic", durable=True)
        Producer(conn.channel()).publish(
            body, exchange=topic, routing_key=routing_key, declare=[topic],
            content_type=content_type, content_encoding="utf-8", reply_to=reply_to,
            correlation_id="raw-1")


def _get_reply(url: str, queue: str, timeout: float = 5.0) -> dict | None:
    with Connection(url) as conn:
        q = Queue(queue, channel=conn.channel(), durable=False, auto_delete=False)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            message = q.get(no_ack=True)
            if message is not None:
                data = json.loads(message.body)
                return json.loads(data) if isinstance(data, str) else data
            time.sleep(0.02)
    return None


# -- reply targets --------------------------------------------------------------------------


def test_reply_targets_are_reply_queues_only(monkeypatch):
    """busapp's and Commissaire's reply queue names qualify;
    other names only by $BUSAPP_REPLY_TO."""
    monkeypatch.delenv(REPLY_TO_ENV, raising=False)
    assert reply_target_allowed("busapp.reply.0123abcd")
    assert reply_target_allowed(f"response-{uuid.uuid4()}")
    for name in ("celery", "simple", "response-x", "busapp.replyx", "amq.gen-1"):
        assert not reply_target_allowed(name), name
    monkeypatch.setenv(REPLY_TO_ENV, "my-replies.*, other")
    assert reply_target_allowed("my-replies.1") and reply_target_allowed("other")
    assert not reply_target_allowed("celery")


def test_reply_to_a_work_queue_is_dropped_unrun_with_a_warning(served, unique):
    """A request naming a queue that is not a reply queue is neither run nor answered there."""
    app, url, exchange = served
    victim = f"victim-{unique}"
    with Connection(url) as conn:
        Queue(victim, channel=conn.channel(), durable=False, auto_delete=False).declare()
    try:
        body = {"jsonrpc": "2.0", "id": "r1", "method": "add", "params": [1, 2]}
        _publish_raw(url, exchange, f"{app.name}.add", json.dumps(body), reply_to=victim)
        with Client(url, exchange) as bus:
            assert bus.call(f"{app.name}.add", 2, 2) == 4  # served after the refused one
        assert _get_reply(url, victim, timeout=0.5) is None
    finally:
        with Connection(url) as conn:
            Queue(victim, channel=conn.channel()).delete()


def test_reply_to_a_redis_key_of_another_type_is_left_alone(redis_url, unique):
    """On Redis, a reply_to naming a list or a string key gets nothing pushed (no WRONGTYPE)."""
    import redis

    app = make_app(f"r{unique}")
    exchange = f"test-{unique}"
    r = redis.Redis.from_url(redis_url)
    r.set(f"str-{unique}", "keep")
    try:
        with run_app(app, redis_url, exchange):
            body = json.dumps({"jsonrpc": "2.0", "id": "r1", "method": "add", "params": [1, 2]})
            for target in (f"celery-{unique}", f"str-{unique}"):
                _publish_raw(redis_url, exchange, f"{app.name}.add", body, reply_to=target)
            with Client(redis_url, exchange) as bus:
                assert bus.call(f"{app.name}.add", 2, 2) == 4
        assert r.get(f"str-{unique}") == b"keep"
        assert not r.exists(f"celery-{unique}")
    finally:
        r.delete(f"str-{unique}", f"celery-{unique}")


def test_refused_reply_to_is_logged_as_a_warning():
    """Under the test client too the request is dropped, and the warning names the reply_to."""
    app = make_app("warned")
    with app.test_client() as client, structlog.testing.capture_logs() as logs:
        client._raw_queue = "celery"
        body = '{"jsonrpc":"2.0","id":"1","method":"add","params":[1,2]}'
        assert client.request_raw("add", body) is None
    [line] = [e for e in logs if e.get("reply_to") == "celery"]
    assert line["log_level"] == "warning"


# -- odd request ids ------------------------------------------------------------------------


@pytest.mark.parametrize("raw_id", ["NaN", "Infinity", '"\\ud800"'])
def test_unanswerable_id_gets_invalid_request_with_null_id(served, raw_id):
    """An id no reply could carry (NaN, Infinity, a lone surrogate) gets -32600 with id null."""
    app, url, exchange = served
    reply_queue = f"busapp.reply.raw-{uuid.uuid4().hex}"
    with Connection(url) as conn:
        Queue(reply_queue, channel=conn.channel(), durable=False, auto_delete=False).declare()
    try:
        body = f'{{"jsonrpc":"2.0","id":{raw_id},"method":"add","params":[1,2]}}'
        _publish_raw(url, exchange, f"{app.name}.add", body, reply_to=reply_queue)
        reply = _get_reply(url, reply_queue)
    finally:
        with Connection(url) as conn:
            Queue(reply_queue, channel=conn.channel()).delete()
    assert reply is not None and reply["id"] is None
    assert reply["error"]["code"] == -32600


@pytest.mark.parametrize("content_type", ["application/x-python-serialize", "application/x-yaml",
                                          "application/x-msgpack"])
def test_foreign_content_type_with_reply_to_is_a_warning(content_type):
    """A pickle/yaml/msgpack request is refused with -32700 and logged at warning (SPEC §4)."""
    with make_app("ctype").test_client() as client, structlog.testing.capture_logs() as logs:
        reply = client.request_raw("add", b"\x80\x04K\x01.", content_type=content_type)
    assert reply is not None and reply["error"]["code"] == -32700
    assert any(e["log_level"] == "warning" and "refused" in e["event"] for e in logs), logs


# -- the test client ----------------------------------------------------------------------


def test_test_client_honours_timeout():
    """A handler slower than the call's timeout raises RequestTimeout under the test client."""
    app = App("slowpoke")

    @app.method()
    def slow() -> str:
        time.sleep(0.3)
        return "late"

    with app.test_client() as client:
        with pytest.raises(RequestTimeout):
            client.call("slow", timeout=0.1)
        assert client.call("slow", timeout=5) == "late"


# -- cross-talk between deployments -----------------------------------------------------------


def _tagged_app(name: str, tag: str) -> App:
    app = App(name)

    @app.method()
    def ping() -> str:
        return "pong"

    @app.method()
    def where() -> str:
        return tag

    return app


def test_same_app_on_two_exchanges_never_answers_the_other(broker_url, unique):
    """Two deployments of one App on two exchanges of one broker each answer only
    their own calls."""
    name = f"x{unique}"
    a, b = f"test-a-{unique}", f"test-b-{unique}"
    with (run_app(_tagged_app(name, "A"), broker_url, a),
          run_app(_tagged_app(name, "B"), broker_url, b)):
        with Client(broker_url, a) as bus_a, Client(broker_url, b) as bus_b:
            assert [bus_a.call(f"{name}.where") for _ in range(20)] == ["A"] * 20
            assert [bus_b.call(f"{name}.where") for _ in range(20)] == ["B"] * 20


def test_queue_names_carry_the_exchange_unless_named(monkeypatch):
    """Default queues are <exchange>.<name> off the commissaire exchange;
    named ones stay as given."""
    from busapp.service import CommissaireService
    from busapp.storage.service import make_app as storage_app

    monkeypatch.delenv("BUSAPP_EXCHANGE", raising=False)
    app = App("simple")
    assert app.qkwargs()[0]["name"] == "simple"  # Commissaire's name on its exchange
    assert app.qkwargs("prod")[0]["name"] == "prod.simple"
    assert App("simple", exchange="prod").queue == "prod.simple"
    assert App("simple", exchange="prod", queue="mine").queue == "mine"
    assert app.service_class("prod", "memory://").qkwargs[0]["name"] == "prod.simple"
    assert storage_app("memory://", exchange="prod").queue == "prod.storage"
    assert storage_app("memory://", exchange="prod", queue="store-1").queue == "store-1"

    class Watcher(CommissaireService):
        def on_ping(self, message):
            return "pong"

    assert Watcher("prod", "memory://").qkwargs[0]["name"] == "prod.watcher"
    explicit = [{"name": "watcher", "routing_key": "watcher.*"}]
    assert Watcher("prod", "memory://", explicit).qkwargs == explicit


def test_storage_command_takes_a_queue_name():
    """``busapp storage --queue NAME`` is accepted (the default follows the exchange rule)."""
    from click.testing import CliRunner

    from busapp.cli import cli

    result = CliRunner().invoke(cli, ["storage", "--help"])
    assert result.exit_code == 0 and "--queue" in result.output


# -- interop with Commissaire-style servers and callers -------------------------------------


@contextlib.contextmanager
def _commissaire_server(url: str, exchange: str, name: str):
    """A server as Commissaire wrote them (plain kombu): replies via ``SimpleQueue(reply_to)``."""
    stop = threading.Event()
    ready = threading.Event()

    def serve() -> None:
        with Connection(url) as conn:
            topic = Exchange(exchange, "topic", durable=True)
            queue = Queue(name, topic, routing_key=f"{name}.*", durable=False, auto_delete=True)

            def on_message(body, message):
                data = json.loads(body) if isinstance(body, str) else body
                reply = conn.SimpleQueue(message.properties["reply_to"])
                reply.put(json.dumps({"jsonrpc": "2.0", "id": data["id"],
                                      "result": sum(data["params"])}))
                reply.close()
                message.ack()

            with Consumer(conn.channel(), [queue], callbacks=[on_message], accept=["json"]):
                ready.set()
                while not stop.is_set():
                    with contextlib.suppress(socket.timeout):
                        conn.drain_events(timeout=0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def test_busapp_client_calls_a_commissaire_style_server(broker_url, exchange, unique):
    """A Commissaire server re-declaring the caller's reply queue (SimpleQueue) can answer it."""
    name = f"old{unique}"
    with _commissaire_server(broker_url, exchange, name), Client(broker_url, exchange) as bus:
        try:
            assert bus.call(f"{name}.add", 2, 3) == 5
            assert bus.call(f"{name}.add", 4, 5) == 9
        finally:
            with Connection(broker_url) as conn:  # SimpleQueue's direct exchange stays behind
                Exchange(bus.reply_queue, "direct", channel=conn.channel()).delete()


def test_late_reply_to_a_commissaire_caller_expires_on_redis(redis_url, unique):
    """A reply pushed to a gone ``response-<uuid>`` caller's list expires instead of
    staying forever."""
    import redis

    app = make_app(f"l{unique}")
    exchange = f"test-{unique}"
    reply_to = f"response-{uuid.uuid4()}"
    r = redis.Redis.from_url(redis_url)
    try:
        with run_app(app, redis_url, exchange):
            body = json.dumps({"jsonrpc": "2.0", "id": "r1", "method": "add", "params": [1, 2]})
            _publish_raw(redis_url, exchange, f"{app.name}.add", body, reply_to=reply_to)
            end = time.monotonic() + 10
            while not r.exists(reply_to) and time.monotonic() < end:
                time.sleep(0.05)
        assert r.exists(reply_to)
        assert 0 < r.pttl(reply_to) <= 60_000
    finally:
        r.delete(reply_to)


# -- secure defaults ----------------------------------------------------------------------


def test_event_queues_expire_on_rabbitmq(amqp_url, unique):
    """A storage-event queue carries an expiry, so one whose App is gone does not grow forever."""
    import amqp.exceptions

    from busapp.models import Host

    app = make_app(f"e{unique}")

    @app.on_storage_event(Host, "created")
    def seen(event, model):
        pass

    exchange = f"test-{unique}"
    queue = app.storage_handlers[0].queue_name(app.queue_for(exchange))
    with run_app(app, amqp_url, exchange), Connection(amqp_url) as conn:
        with pytest.raises(amqp.exceptions.PreconditionFailed) as info:
            Queue(queue, durable=True, expires=1, channel=conn.channel()).declare()
    assert "x-expires" in str(info.value) and "604800000" in str(info.value)


def test_event_queue_declared_without_expiry_is_kept(amqp_url, unique):
    """An event queue an older busapp declared without expiry is used as it is (no 406 at start)."""
    from busapp.models import Host

    app = make_app(f"k{unique}")

    @app.on_storage_event(Host, "created")
    def seen(event, model):
        pass

    exchange = f"test-{unique}"
    queue = app.storage_handlers[0].queue_name(app.queue_for(exchange))
    with Connection(amqp_url) as conn:
        Queue(queue, durable=True, channel=conn.channel()).declare()
    with run_app(app, amqp_url, exchange), Client(amqp_url, exchange) as bus:
        assert bus.call(f"{app.name}.add", 1, 1) == 2


@pytest.fixture
def tls_redis(tmp_path, redis_url):
    """A TLS front (self-signed certificate) to the shared Redis; yields (port, cert path)."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])

    def pipe(src, dst):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def accept():
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                tls = context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", redis_port))
            threading.Thread(target=pipe, args=(tls, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, tls), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield port, cert
    listener.close()


def test_rediss_verifies_certificates_by_default(tls_redis):
    """A bare rediss:// URL refuses an untrusted certificate; the URL can trust it or opt out."""
    from busapp.errors import BrokerUnavailable
    from busapp.transport.kombu_transport import KombuTransport

    port, cert = tls_redis
    bare = KombuTransport(f"rediss://127.0.0.1:{port}/0")
    with pytest.raises(BrokerUnavailable, match="(?i)certificate"):
        bare.connect()
        bare.queue_depth("busapp-tls-probe")
    for query in (f"ssl_ca_certs={cert}&ssl_cert_reqs=required", "ssl_cert_reqs=none"):
        transport = KombuTransport(f"rediss://127.0.0.1:{port}/0?{query}")
        transport.connect()
        try:
            assert transport.queue_depth("busapp-tls-probe") == 0
        finally:
            transport.close()


# -- a library stays quiet ------------------------------------------------------------------


def test_client_prints_nothing_to_stdout_when_logging_is_not_configured():
    """Without a structlog configuration, busapp's client-side lines go to stderr, warnings only."""
    import subprocess
    import sys

    code = ("from busapp.client import sync as bus\nfrom busapp.runtime import pipeline as serve\n"
            "from busapp.storage import client\n"
            "from busapp.transport import embedded\n"
            "for log in (bus.log, serve.log, client.log, embedded.log):\n"
            "    log.debug('debug-line'); log.info('info-line'); log.warning('warning-line')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout == ""
    assert result.stderr.count("warning-line") == 4
    assert "debug-line" not in result.stderr and "info-line" not in result.stderr
