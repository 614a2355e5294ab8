"""Signed messages, allow lists, replay memory and storage access, on the test client (SPEC §12).

The same checks on Redis and RabbitMQ (and over TLS) are in tests/test_security_brokers.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

import pytest
from structlog.testing import capture_logs

from busapp import App
from busapp.bus import Client
from busapp.errors import Forbidden, Refused, RequestTimeout, Unauthorized
from busapp.models import Host, HostCreds
from busapp.security import (
    KEY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Keyring,
    parse_key,
    sign,
    signer,
    verify,
)
from busapp.runtime.gate import CLAIM_MARGIN, Gate, RefusalLog, ReplayGuard
from busapp.service import CommissaireService
from busapp.transport.base import QueueSpec
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


class _AnyKey:
    """An entrypoint whose allow list admits every key of the keyring."""

    kind = "call"

    def admit(self, caller, routing_key):
        return None


ANY_KEY = _AnyKey()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(SECRETS)


def test_valid_key_calls_and_the_handler_sees_who_called(keyring):
    """A request signed with a key of the keyring runs;
    ``message.caller`` is the verified key id."""
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


def test_service_on_another_exchange_signs_with_the_key_named_like_its_app(keyring):
    """On a non-default exchange the service's queue is ``<exchange>.<app>``; its calls are
    still signed with the key named like the App, under the test client as in a worker."""
    app = App("caller", exchange="prod", keyring=Keyring({**SECRETS, "caller": "c-1"}))
    other = App("billing", exchange="prod", keyring=Keyring({**SECRETS, "caller": "c-1"}))

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
    """--keyring FILE that is missing, --allow without a keyring or naming unknown keys:
    exit 2, one line."""
    from click.testing import CliRunner

    from busapp.cli import cli

    # BUSAPP_KEYRING is restored after each run (--keyring exports it)
    runner = CliRunner(env={"BUSAPP_KEYRING": None})
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


# -- signature v2: covered headers ------------------------------------------------------------


def test_signature_covers_deadline_trace_headers_and_content_type():
    """Removing, moving or adding a covered header, or changing the content type, breaks it."""
    key = ("k", b"secret")
    headers = {"x-busapp-deadline": 1010.5, "x-busapp-request-id": "r-1"}
    signed = signer(key, b"{}", "a.b", "reply", "cid", headers)
    assert verify({"k": b"secret"}, signed, b"{}", "a.b", "reply", "cid", now=time.time())
    changes = [{"x-busapp-deadline": None}, {"x-busapp-deadline": 4000.0},
               {"x-busapp-request-id": "r-2"}, {"compression": "zlib"},
               {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}]
    for change in changes:
        tampered = {k: v for k, v in {**signed, **change}.items() if v is not None}
        with pytest.raises(Unauthorized, match="bad signature"):
            verify({"k": b"secret"}, tampered, b"{}", "a.b", "reply", "cid")
    with pytest.raises(Unauthorized, match="bad signature"):
        verify({"k": b"secret"}, signed, b"{}", "a.b", "reply", "cid", content_type="text/plain")


def test_v1_signature_is_refused_with_an_upgrade_hint():
    """A signature in the older v1 format (which left the deadline out) is refused, saying so."""
    ts = f"{time.time():.3f}"
    head = b"\0".join((b"busapp-v1", b"k", ts.encode(), b"a.b", b"reply", b"cid"))
    sig = hmac.digest(b"secret", head + b"\0" + b"{}", hashlib.sha256).hex()
    headers = {KEY_HEADER: "k", TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sig}
    with pytest.raises(Unauthorized, match="busapp-v1 format"):
        verify({"k": b"secret"}, headers, b"{}", "a.b", "reply", "cid")


def test_keyring_line_comment_after_whitespace_is_not_part_of_the_secret(tmp_path):
    """`ops: s3cret   # operators' tooling` holds s3cret; a '#' inside a secret stays in it."""
    path = tmp_path / "keys"
    path.write_text("ops: s3cret   # operators' tooling\nfront:a#b\t# the web tier\n"
                    "own=ops  # signs our calls\n")
    os.chmod(path, 0o600)
    keys = Keyring.from_file(path)
    assert keys.secrets == {"ops": b"s3cret", "front": b"a#b"} and keys.own == "ops"


# -- the gate: routing keys, refusals, shared replay memory -------------------------------


def test_routing_key_header_without_a_worker_record_is_not_believed(keyring):
    """A request signed for other.quote, published to billing.quote with x-busapp-routing-key:
    other.quote, is refused: nothing runs."""
    app, ran = make_app(keyring)
    with app.test_client() as client:
        body = json.dumps({"jsonrpc": "2.0", "id": "c1", "method": "quote",
                           "params": ["o-1"]}).encode()
        headers = signer(keyring.key("ops"), body, "other.quote", "busapp.reply.x", "c1",
                         {"x-busapp-routing-key": "other.quote"})
        MemoryTransport(client.url).publish(body, exchange=client.exchange,
                                            routing_key="billing.quote", headers=headers,
                                            reply_to="busapp.reply.x", correlation_id="c1")
    assert ran == []


def test_original_routing_key_needs_the_signed_count():
    """The header is believed with a count signed over it, never on its own."""
    from busapp.runtime.redelivery import COUNT_HEADER, SIGNATURE_HEADER as COUNT_SIG
    from busapp.runtime.redelivery import republished_key, sign_count
    from busapp.transport.base import Delivery

    def delivery(headers):
        return Delivery(b"{}", "application/json", headers, "billing", queue="billing")

    claimed = {"x-busapp-routing-key": "billing.quote", COUNT_HEADER: 2}
    record = sign_count(2, delivery(claimed), "billing.quote")
    assert republished_key(delivery({**claimed, COUNT_SIG: record})) == "billing.quote"
    assert republished_key(delivery(claimed)) == "billing"


def request_with_a_plain_reply_to(client, routing_key: str, method: str,
                                  request_id: str) -> list:
    """Publish an unsigned request for ``method`` whose reply_to is a plain queue ("loot"),
    not a reply queue; the list of what reaches that queue (filled as it arrives)."""
    raw = MemoryTransport(client.url)
    loot: list = []
    raw.declare_queue("", QueueSpec("loot"))
    raw.consume("loot", loot.append, no_ack=True)
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method}).encode()
    raw.publish(body, exchange=client.exchange, routing_key=routing_key,
                reply_to="loot", correlation_id=request_id)
    return loot


def test_refused_request_is_never_answered_outside_reply_queues(keyring):
    """An unsigned request naming a plain queue as reply_to gets its refusal nowhere."""
    app, _ = make_app(keyring)
    with app.test_client() as client:
        loot = request_with_a_plain_reply_to(client, "billing.quote", "quote", "c1")
    assert loot == []


def test_worker_never_signs_an_answer_with_its_own_key(monkeypatch):
    """A service without a keyring whose bus has a key ($BUSAPP_KEY) answers unsigned: it
    cannot be made to sign what an unverified asker chose."""
    monkeypatch.setenv("BUSAPP_KEY", "billing:b-secret")
    app, _ = make_app(None)
    with app.test_client() as client:
        raw = MemoryTransport(client.url)
        replies: list = []
        raw.declare_queue("", QueueSpec("busapp.reply.r"))
        raw.consume("busapp.reply.r", replies.append, no_ack=True)
        body = json.dumps({"jsonrpc": "2.0", "id": "c1", "method": "quote",
                           "params": ["o-1"]}).encode()
        raw.publish(body, exchange=client.exchange, routing_key="billing.quote",
                    reply_to="busapp.reply.r", correlation_id="c1")
    [reply] = replies
    assert json.loads(reply.body)["result"] == 42 and KEY_HEADER not in reply.headers


def test_refusals_are_logged_once_per_interval():
    """A flood of refusals logs one line per interval; the next says how many went unlogged."""
    refusals = RefusalLog(interval=0.2)
    with capture_logs() as logs:
        for _ in range(50):
            refusals("message refused", reason="unsigned")
        time.sleep(0.25)
        refusals("message refused", reason="unsigned")
    assert [e.get("unlogged") for e in logs] == [None, 49]


def test_unsigned_flood_logs_one_refusal_line(keyring):
    """100 unsigned calls to a keyed App: 100 refusals, one log line."""
    app, ran = make_app(keyring)
    with app.test_client() as client, capture_logs() as logs:
        for _ in range(100):
            with pytest.raises(Unauthorized):
                client.call("quote", "o-1")
    assert sum(e["event"] == "message refused" for e in logs) == 1 and ran == []


def test_workers_sharing_a_broker_claim_take_a_message_once(keyring):
    """Two workers' gates with one broker's claims: the second refuses the copy (unanswered)."""
    from busapp.transport.base import Delivery
    from busapp.transport.memory import MemoryBroker

    broker = MemoryBroker()
    gates = [Gate(keyring, claim=broker.claim) for _ in range(2)]
    body = b'{"jsonrpc": "2.0", "id": "c1", "method": "quote"}'
    headers = signer(keyring.key("ops"), body, "billing.quote", "busapp.reply.x", "c1",
                     {"x-busapp-deadline": time.time() + 10})
    copy = Delivery(body, "application/json", headers, "billing.quote", "busapp.reply.x", "c1",
                    queue="billing")
    assert gates[0].admit(copy, "billing.quote", ANY_KEY) == "ops"
    with pytest.raises(Refused) as refused:
        gates[1].admit(copy, "billing.quote", ANY_KEY)
    assert "replayed" in refused.value.error.message and not refused.value.answer
    [claim] = broker.claims
    assert claim == f"busapp.replay.billing.{headers[SIGNATURE_HEADER]}"


def test_claim_lasts_until_the_deadline_or_the_window_ends(keyring):
    """A claim outlives the signed deadline (or the replay window, if sooner) by the margin."""
    gate = Gate(keyring)
    now = 1000.0
    assert gate.claim_ttl({TIMESTAMP_HEADER: "1000.000", "x-busapp-deadline": 1010.0}, now) \
        == pytest.approx(10.0 + CLAIM_MARGIN)
    assert gate.claim_ttl({TIMESTAMP_HEADER: "1000.000"}, now) == pytest.approx(60.0 + CLAIM_MARGIN)


def test_memory_broker_claim_is_set_if_absent_with_expiry():
    """claim() sets a key once; once its time is up it can be set again."""
    transport = MemoryTransport(f"memory://claims-{time.monotonic_ns()}")
    assert transport.claim("k", 0.05) is True and transport.claim("k", 0.05) is False
    time.sleep(0.06)
    assert transport.claim("k", 0.05) is True


# -- control requests on a keyed App ---------------------------------------------------------


def test_control_request_is_answered_only_when_signed(keyring):
    """status to a keyed App: unsigned or wrongly signed, no answer; signed with a key of its
    keyring, the answer comes, signed with that key."""
    from busapp.ops.status import gather

    app, _ = make_app(keyring)
    with app.test_client() as client:
        assert gather(client.url, client.exchange, app.name) == []
        assert gather(client.url, client.exchange, app.name, key=("ops", "guess")) == []
        [worker] = gather(client.url, client.exchange, app.name, key=keyring.key("frontend"))
    assert worker["service"] == "billing"


def test_control_answer_goes_only_to_a_reply_queue():
    """A status request naming a plain queue as reply_to is answered by nobody."""
    app, _ = make_app(None)
    with app.test_client() as client:
        loot = request_with_a_plain_reply_to(client, "busapp-control", "rpc.status", "s1")
    assert loot == []


# -- what the keys cannot protect against (the limits the threat table states) --------------


def reply_to(client: Client, response: dict, headers: dict | None = None):
    """A reply as ``client``'s reply queue would deliver it."""
    from busapp.transport.base import Delivery

    body = json.dumps(response).encode()
    return Delivery(body, "application/json", headers or {}, client.reply_queue,
                    correlation_id=str(response["id"]))


def test_unsigned_refusal_from_anyone_reaches_a_keyed_caller(keyring):
    """Anyone who can push to a keyed caller's reply queue can fail its call with -32001 (a
    refusal needs no signature), never give it a result."""
    client = Client("memory://limits", key=keyring.key("ops"))
    refusal = {"jsonrpc": "2.0", "id": "c1", "error": {"code": -32001, "message": "forged"}}
    assert client.accept_reply(reply_to(client, refusal)) == refusal
    assert client.accept_reply(reply_to(client, {"jsonrpc": "2.0", "id": "c1",
                                                 "result": "forged"})) is None


def test_holder_of_a_key_can_answer_for_its_other_holders(keyring):
    """A reply signed with key X is taken by any client signing with X: X's holders (callers,
    and services whose keyring holds X) can answer one another's calls."""
    client = Client("memory://limits", key=keyring.key("ops"))
    response = {"jsonrpc": "2.0", "id": "c1", "result": "from another holder of ops"}
    body = json.dumps(response).encode()
    headers = sign(keyring.key("ops"), body, client.reply_queue, None, "c1")
    assert client.accept_reply(reply_to(client, response, headers)) == response
    other = sign(keyring.key("frontend"), body, client.reply_queue, None, "c1")
    assert client.accept_reply(reply_to(client, response, other)) is None
