"""Signed messages, allow lists, replay memory and storage access, on the test client (SPEC §12).

The same checks on Redis and RabbitMQ (and over TLS) are in tests/test_security_brokers.py.
"""

from __future__ import annotations

import json
import os

import pytest
from structlog.testing import capture_logs

from busapp import App
from busapp.bus import Client
from busapp.errors import Forbidden, RequestTimeout, Unauthorized
from busapp.models import Host, HostCreds
from busapp.security import (
    KEY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Keyring,
    parse_key,
    sign,
    verify,
)
from busapp.runtime.gate import ReplayGuard
from busapp.service import CommissaireService
from busapp.transport.memory import MemoryTransport

SECRETS = {"frontend": "s3cret-1", "ops": "s3cret-2", "billing": "b-secret", "storage": "st-1",
           "investigator": "inv-1"}


def make_app(keyring: Keyring | None = None) -> tuple[App, list]:
    """A billing App: quote (any key), refund (ops only); ``ran`` lists what ran."""
    app = App("billing", keyring=keyring)
    ran: list = []

    @app.middleware
    def record(call, call_next):
        ran.append(("middleware", call.method))
        return call_next(call)

    @app.method(allow={"ops"} if keyring else None)
    def refund(order: str, message) -> str:
        ran.append(("refund", order))
        return message.caller

    @app.method()
    def quote(order: str) -> int:
        ran.append(("quote", order))
        return 42

    return app, ran


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(SECRETS)


def test_valid_key_calls_and_the_handler_sees_who_called(keyring):
    """A request signed with a key of the keyring runs; ``message.caller`` is the verified key id."""
    app, ran = make_app(keyring)
    with app.test_client(key="ops") as client:
        assert client.call("quote", "o-1") == 42
        assert client.call("refund", "o-1") == "ops"
    assert ("refund", "o-1") in ran


def test_unsigned_request_is_unauthorized_and_nothing_runs(keyring):
    """No key: -32001, and neither the handler nor any middleware ran."""
    app, ran = make_app(keyring)
    with app.test_client() as client, pytest.raises(Unauthorized) as info:
        client.call("quote", "o-1")
    assert info.value.code == -32001
    assert ran == []


def test_wrong_secret_and_unknown_key_are_unauthorized(keyring):
    """A known id with a wrong secret, or an id the keyring lacks: -32001, nothing runs."""
    app, ran = make_app(keyring)
    for key in (("ops", "guess"), ("mallory", "whatever")):
        with app.test_client(key=key) as client, pytest.raises(Unauthorized):
            client.call("quote", "o-1")
    assert ran == []


def test_valid_key_outside_allow_is_forbidden(keyring):
    """frontend is a valid key but refund allows only ops: -32002, the handler does not run."""
    app, ran = make_app(keyring)
    with app.test_client(key="frontend") as client:
        with pytest.raises(Forbidden) as info:
            client.call("refund", "o-1")
        assert client.call("quote", "o-2") == 42
    assert info.value.code == -32002
    assert info.value.data == {"key": "frontend", "method": "refund"}
    assert ("refund", "o-1") not in ran


def test_refused_before_parsing(keyring):
    """An unsigned body that is not even JSON gets -32001, not -32700: it was never parsed."""
    app, ran = make_app(keyring)
    with app.test_client() as client:
        response = client.request_raw("billing.quote", b"\xff not json")
    assert response["error"]["code"] == -32001
    assert ran == []


def test_refusal_logged_with_key_id_never_secret(keyring):
    """A refused message is logged at warning with the key id; the secret appears nowhere."""
    app, _ = make_app(keyring)
    with app.test_client(key=("ops", "guess")) as client, capture_logs() as logs:
        with pytest.raises(Unauthorized):
            client.call("quote", "o-1")
    refused = [e for e in logs if e["event"] == "message refused"]
    assert refused and refused[0]["log_level"] == "warning" and refused[0]["key"] == "ops"
    text = json.dumps(logs, default=str)
    assert "s3cret-2" not in text and "guess" not in text


def test_keyless_app_still_serves_keyless_callers():
    """Without a keyring nothing changes: an unsigned Commissaire-style caller is served."""
    app, ran = make_app(None)
    with app.test_client() as client:
        assert client.request("billing.quote", ["o-1"])["result"] == 42


def test_commissaire_service_with_keyring_refuses_unsigned_caller(keyring):
    """The Commissaire layer: a keyless BusMixin ``request`` gets a -32001 response dict."""

    class Billing(CommissaireService):
        def on_quote(self, message, order):
            return 1

    from busapp.testing import TestClient

    with TestClient(storage=False) as client:
        client.register(Billing, "commissaire", client.url, keyring=keyring)
        response = client.request("billing.quote", ["o-1"])
        assert response["error"]["code"] == -32001
        signed = Client(client.url, "commissaire", key=keyring.key("frontend"))
        assert signed.request("billing.quote", ["o-1"])["result"] == 1
        signed.close()


def test_allow_must_name_keys_of_the_keyring(keyring):
    """@app.method(allow=...) naming a key the keyring lacks is an error at registration."""
    app = App("billing", keyring=keyring)
    with pytest.raises(ValueError, match="nobody"):
        app.method("refund", allow={"nobody"})(lambda: 1)


def test_service_calling_another_signs_with_its_own_key(keyring):
    """The injected bus signs with the service's own key (named like the App)."""
    app = App("caller", keyring=Keyring({**SECRETS, "caller": "c-1"}))
    other = App("billing", keyring=Keyring({**SECRETS, "caller": "c-1"}))

    @app.method()
    def ask(bus) -> str:
        return bus.call("billing.who")

    @other.method()
    def who(message) -> str:
        return message.caller

    with app.test_client(key="ops") as client:
        client.register(other)
        assert client.call("ask") == "caller"


def test_forged_reply_never_reaches_a_keyed_caller(keyring):
    """A reply pushed into the caller's reply queue unsigned (or signed with another key) is
    dropped; the genuine signed reply is what the call returns."""
    app = App("billing", keyring=keyring)
    forger = {}

    @app.method()
    def slow(message) -> str:
        cid, reply_to = message.correlation_id, message.reply_to  # what a sniffer sees
        for key in (None, keyring.key("frontend")):  # unsigned, then signed with another key
            body = json.dumps({"jsonrpc": "2.0", "id": cid, "result": "forged"}).encode()
            headers = sign(key, body, reply_to, None, cid) if key else {}
            forger["raw"].publish(body, exchange="", routing_key=reply_to, correlation_id=cid,
                                  headers=headers)
        return "genuine"

    with app.test_client(key="ops") as client:
        forger["raw"] = MemoryTransport(client.url)
        with capture_logs() as logs:
            assert client.call("slow") == "genuine"
    assert sum(e["event"] == "reply dropped: not signed with this client's key" for e in logs) == 2


def test_unanswered_keyed_call_says_why(keyring):
    """A keyed client calling a keyless service drops its unsigned reply; the timeout says so."""
    app, _ = make_app(None)
    with app.test_client(key=keyring.key("ops")) as client, pytest.raises(RequestTimeout) as info:
        client.call("quote", "o-1", timeout=0.5)
    assert "not signed" in str(info.value) and "'ops'" in str(info.value)


def test_storage_allow_keeps_ssh_keys_to_named_keys(keyring):
    """With allow={"HostCreds": {"investigator"}} only investigator reads or writes HostCreds."""
    from busapp.storage.service import make_app as make_storage
    from busapp.testing import TestClient

    storage = make_storage("memory://", keyring=keyring, allow={"HostCreds": {"investigator"}})
    creds = HostCreds.new(address="10.0.0.1", ssh_priv_key="PRIVATE", remote_user="root")
    with TestClient(storage=False) as tc:
        tc.register(storage)
        investigator = Client(tc.url, "commissaire", key=keyring.key("investigator"))
        frontend = Client(tc.url, "commissaire", key=keyring.key("frontend"))
        from busapp.storage.client import StorageClient

        StorageClient(investigator).save(creds)
        assert StorageClient(investigator).list(HostCreds)[0].ssh_priv_key == "PRIVATE"
        for attempt in (lambda s: s.list(HostCreds), lambda s: s.get(creds),
                        lambda s: s.save(creds), lambda s: s.delete(creds)):
            with pytest.raises(Forbidden, match="frontend"):
                attempt(StorageClient(frontend))
        StorageClient(frontend).save(Host.new(address="10.0.0.1"))  # other types stay open
        investigator.close()
        frontend.close()


def test_unsigned_storage_event_is_dropped_by_a_keyed_subscriber(keyring):
    """A forged (unsigned) storage event never reaches the handler; a signed one does."""
    app = App("watcher", keyring=keyring)
    seen = []

    @app.on_storage_event(Host, "created")
    def created(event, model):
        seen.append(model.address)

    with app.test_client(key="ops") as client:
        event = {"event": "created", "class": "Host", "model": {"address": "6.6.6.6"}}
        MemoryTransport(client.url).publish(json.dumps(event).encode(), exchange=client.exchange,
                                            routing_key="notify.storage.Host.created")
        assert seen == []
        client.storage.save(Host.new(address="10.0.0.9"))  # the storage service signs ("storage")
        assert seen == ["10.0.0.9"]


def test_replay_guard_refuses_a_seen_signature_and_stays_bounded():
    """A signature is taken once; past capacity the oldest becomes a floor, never a hole."""
    guard = ReplayGuard(window=60, capacity=3)
    now = 1000.0
    headers = [sign(("k", b"s"), b"%d" % i, "a.b", ts=now + i) for i in range(5)]
    assert guard.first_time(headers[0], now) and not guard.first_time(headers[0], now)
    for h in headers[1:]:
        assert guard.first_time(h, now + 5)
    assert len(guard) == 3
    assert not guard.first_time(headers[0], now + 5)  # forgotten, but under the floor
    assert not guard.first_time(headers[1], now + 5)
    assert guard.first_time(headers[4], now + 5, queue="other")  # one event, another queue


def test_verify_refuses_stale_and_tampered_messages():
    """A timestamp outside the window, or any signed field changed, is Unauthorized."""
    key = ("k", b"secret")
    headers = sign(key, b"{}", "a.b", "reply", "cid", ts=1000.0)
    assert verify({"k": b"secret"}, headers, b"{}", "a.b", "reply", "cid", now=1030.0) == "k"
    with pytest.raises(Unauthorized, match="replay window"):
        verify({"k": b"secret"}, headers, b"{}", "a.b", "reply", "cid", now=1061.0)
    for args in ((b"{ }", "a.b", "reply", "cid"), (b"{}", "a.c", "reply", "cid"),
                 (b"{}", "a.b", "other", "cid"), (b"{}", "a.b", "reply", "cid2")):
        with pytest.raises(Unauthorized, match="bad signature"):
            verify({"k": b"secret"}, headers, *args, now=1000.0)
    assert set(headers) == {KEY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER}


def test_keyring_file_and_env_key(tmp_path, monkeypatch):
    """Keyring.from_file reads id:secret lines (secrets may hold '#'); $BUSAPP_KEY is id:secret."""
    path = tmp_path / "keys"
    path.write_text("# the ops team\nops: a#b:c\nown=ops\nfrontend:xyz\n")
    os.chmod(path, 0o600)
    keys = Keyring.from_file(path)
    assert keys.secrets == {"ops": b"a#b:c", "frontend": b"xyz"} and keys.own == "ops"
    assert "a#b" not in repr(keys)
    (tmp_path / "bad").write_text("ops\n")
    with pytest.raises(ValueError, match="line 1"):
        Keyring.from_file(tmp_path / "bad")
    monkeypatch.setenv("BUSAPP_KEY", "frontend:xyz")
    assert Client("memory://x").key == ("frontend", b"xyz")
    with pytest.raises(ValueError, match="ID:SECRET"):
        parse_key("no-secret")


def test_cli_keyring_and_allow_errors_are_usage_errors(tmp_path):
    """--keyring FILE that is missing, --allow without a keyring or naming unknown keys: exit 2, one line."""
    from click.testing import CliRunner

    from busapp.cli import cli

    runner = CliRunner(env={"BUSAPP_KEYRING": None})  # restored after each run (--keyring exports it)
    missing = runner.invoke(cli, ["storage", "--keyring", str(tmp_path / "nope"),
                                  "--store", "memory://"])
    assert missing.exit_code == 2 and "cannot read keyring" in missing.output
    no_keyring = runner.invoke(cli, ["storage", "--allow", "HostCreds=ops", "--store", "memory://"])
    assert no_keyring.exit_code == 2 and "needs a keyring" in no_keyring.output
    keys = tmp_path / "keys"
    keys.write_text("ops:x\n")
    keys.chmod(0o600)
    unknown = runner.invoke(cli, ["storage", "--keyring", str(keys), "--allow", "HostCreds=eve",
                                  "--store", "memory://"])
    assert unknown.exit_code == 2 and "'eve'" in unknown.output
    bad = runner.invoke(cli, ["storage", "--keyring", str(keys), "--allow", "HostCreds",
                              "--store", "memory://"])
    assert bad.exit_code == 2 and "TYPE=ID" in bad.output
    assert "BUSAPP_KEYRING" not in os.environ


def test_async_client_signs_and_drops_forged_replies() -> None:
    """AsyncClient(key=...) is refused without the right key and served with it, like Client."""
    import asyncio

    from busapp import AsyncClient

    app = App("asec", keyring=Keyring({"ops": "s3cret-ops"}))

    @app.method()
    def ping() -> str:
        return "pong"

    client = app.test_client()

    async def go(key):
        async with AsyncClient(client.url, client.exchange, key=key) as bus:
            return await bus.call("asec.ping")

    assert asyncio.run(go(("ops", "s3cret-ops"))) == "pong"
    with pytest.raises(Unauthorized):
        asyncio.run(go(("ops", "wrong")))
