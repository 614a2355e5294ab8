"""CommissaireService and App over real brokers: results, every error code, bad input."""

from __future__ import annotations

import json
import pickle
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer, Queue

from busapp import Client
from busapp.errors import (
    InternalError,
    InvalidParams,
    MethodNotFound,
    RemoteProcedureCallError,
    RequestTimeout,
    StorageLookupError,
)
from tests._services import run_app
from tests.apps import add_touch, make_app


@pytest.fixture(scope="module", params=["redis", "amqp"])
def served(request):
    """A test App running with one worker on each real broker; yields (app, url, exchange)."""
    url = request.getfixturevalue(f"{request.param}_url")
    token = uuid.uuid4().hex[:10]
    app = add_touch(make_app(f"t{token}"))
    with run_app(app, url, f"test-{token}"):
        yield app, url, f"test-{token}"


@pytest.fixture
def bus(served):
    """A Client on the served App's broker and exchange."""
    _, url, exchange = served
    with Client(url, exchange) as client:
        yield client


def raw_call(url: str, exchange: str, routing_key: str, body, *, content_type="application/json",
             content_encoding="utf-8", timeout: float = 5.0, reply: bool = True):
    """Publish ``body`` as-is with kombu; return the decoded reply (None when none came)."""
    reply_name = f"busapp.reply.raw-{uuid.uuid4().hex}"  # a reply queue name a service answers
    with Connection(url) as conn:
        channel = conn.channel()
        reply_queue = Queue(reply_name, channel=channel, durable=False, auto_delete=False)
        reply_queue.declare()
        try:
            topic = Exchange(exchange, "topic", durable=True)
            Producer(channel).publish(
                body, exchange=topic, routing_key=routing_key, declare=[topic] if exchange else [],
                content_type=content_type, content_encoding=content_encoding,
                reply_to=reply_name if reply else None, correlation_id="raw-1",
            )
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                message = reply_queue.get(no_ack=True)
                if message is not None:
                    data = json.loads(message.body)
                    return json.loads(data) if isinstance(data, str) else data
                time.sleep(0.02)
            return None
        finally:
            reply_queue.delete()


def test_positional_and_keyword_params(bus, served):
    """A method takes params by position (JSON array) and by keyword (JSON object)."""
    name = served[0].name
    assert bus.call(f"{name}.add", 1, 2) == 3
    assert bus.call(f"{name}.add", x=1, y=2) == 3


def test_handler_calls_other_method_over_bus(bus, served):
    """The injected bus reaches the same service (wordy_add calls add)."""
    assert bus.call(f"{served[0].name}.wordy_add", 1, 2) == "1 plus 2 is 3"


def test_self_call_with_single_worker_does_not_deadlock(bus, served):
    """A one-worker service whose handler calls itself, nested three deep, returns."""
    assert bus.call(f"{served[0].name}.nested", 3, timeout=5) == 3


def test_attrs_params_and_results_are_converted(bus, served):
    """An attrs-annotated param is built from a JSON object and the result unstructured."""
    assert bus.call(f"{served[0].name}.shift", {"x": 1, "y": 5}, 2) == {"x": 3, "y": 5}


def test_async_handler(bus, served):
    """An async def handler is awaited."""
    assert bus.call(f"{served[0].name}.async_add", 2, 3) == 5


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "error", "code"),
    [
        ("nope", (), {}, MethodNotFound, -32601),
        ("add", ("abc", 2), {}, InvalidParams, -32602),
        ("add", (1,), {}, InvalidParams, -32602),
        ("add", (1, 2, 3), {}, InvalidParams, -32602),
        ("add", (), {"x": 1, "y": 2, "z": 3}, InvalidParams, -32602),
        ("fail", (), {}, InternalError, -32603),
        ("attr_error", (), {}, InternalError, -32603),
        ("unserialisable", (), {}, InternalError, -32603),
        ("lookup_error", ("k1",), {}, StorageLookupError, -20000),
        ("custom_error", (), {}, RemoteProcedureCallError, -31999),
    ],
)
def test_error_replies_decode_to_typed_errors(bus, served, method, args, kwargs, error, code):
    """Each error row of SPEC §4, produced by a real service, raises its class on the client."""
    with pytest.raises(error) as info:
        bus.call(f"{served[0].name}.{method}", *args, **kwargs)
    assert type(info.value) is error
    assert info.value.code == code
    assert not info.value.message.startswith("(")  # no Commissaire "(code)" prefix


def test_invalid_params_names_the_parameter(bus, served):
    """-32602 says which parameter was wrong."""
    with pytest.raises(InvalidParams, match="'x'") as info:
        bus.call(f"{served[0].name}.add", "abc", 2)
    assert info.value.data["param"] == "x"


def test_internal_error_carries_exception_name(bus, served):
    """-32603 data names the exception class as a bare name, and no traceback is sent."""
    with pytest.raises(InternalError) as info:
        bus.call(f"{served[0].name}.fail")
    assert info.value.data == {"exception": "NotImplementedError"}
    assert "Traceback" not in info.value.message


def test_custom_error_keeps_code_and_data(bus, served):
    """A RemoteProcedureCallError raised by a handler keeps its code and data."""
    with pytest.raises(RemoteProcedureCallError) as info:
        bus.call(f"{served[0].name}.custom_error")
    assert info.value.data == {"why": "short and stout"}


def test_timeout_raises_quickly_and_next_call_works(bus, served):
    """A 3 s handler called with timeout=0.5 raises RequestTimeout in under 1 s; then calls work."""
    name = served[0].name
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        bus.call(f"{name}.slow", 3, timeout=0.5)
    assert time.monotonic() - started < 1.0
    assert bus.call(f"{name}.add", 2, 2) == 4


def test_late_reply_is_dropped_not_delivered_to_next_call(bus, served):
    """The reply to a timed-out call arrives later and is not taken as another call's answer."""
    name = served[0].name
    with pytest.raises(RequestTimeout):
        bus.call(f"{name}.slow", 0.6, timeout=0.2)
    time.sleep(0.8)  # the late reply lands on our reply queue meanwhile
    assert bus.call(f"{name}.echo", "fresh") == "fresh"
    assert not bus._pending


def test_notification_is_handled_without_reply(bus, served, tmp_path):
    """notify() runs the handler (its side effect shows) and no reply is sent."""
    target = tmp_path / "touched"
    bus.notify(f"{served[0].name}.touch", path=str(target))
    end = time.monotonic() + 5
    while not target.exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert target.read_text() == "x"


def _assert_still_serving(bus, name):
    assert bus.call(f"{name}.add", 20, 22) == 42


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("this is not json", -32700),
        ("[1, 2, 3]", -32600),
        (json.dumps({"jsonrpc": "2.0", "id": "a1", "method": "echo"}), -32600),  # method != key
        (json.dumps({"jsonrpc": "2.0", "id": "a2", "method": "add", "params": "1,2"}), -32600),
        (json.dumps({"jsonrpc": "2.0", "id": "a3", "method": "add",
                     "params": {"x": 1, "y": 2, "q": 9}}), -32602),
        (json.dumps({"jsonrpc": "2.0", "id": "a4"}), -32600),
        (b"\xff\xfe not utf-8", -32700),
    ],
)
def test_bad_body_gets_error_reply_and_service_goes_on(served, bus, body, code):
    """Each malformed request published raw gets an error reply; the next call succeeds."""
    app, url, exchange = served
    content_encoding = "binary" if isinstance(body, bytes) else "utf-8"
    reply = raw_call(url, exchange, f"{app.name}.add", body, content_encoding=content_encoding)
    assert reply is not None, "no error reply"
    assert reply["error"]["code"] == code
    assert reply["jsonrpc"] == "2.0"
    _assert_still_serving(bus, app.name)


class _Evil:
    """Unpickling this creates a file: proof that a payload was deserialised."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("content_type", [
    "application/x-python-serialize", "application/x-yaml", "application/x-msgpack",
])
def test_non_json_payload_is_never_deserialised(served, bus, tmp_path, content_type):
    """A pickle (or yaml/msgpack) request is refused unread: -32700, no side effect,
    service lives."""
    app, url, exchange = served
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(str(marker)))
    reply = raw_call(url, exchange, f"{app.name}.add", payload, content_type=content_type,
                     content_encoding="binary")
    assert reply is not None and reply["error"]["code"] == -32700
    assert not marker.exists()
    _assert_still_serving(bus, app.name)


def test_bad_message_without_reply_to_is_dropped(served, bus):
    """Garbage with no reply_to is logged and dropped; the service goes on."""
    app, url, exchange = served
    assert raw_call(url, exchange, f"{app.name}.add", "garbage", reply=False, timeout=0.3) is None
    _assert_still_serving(bus, app.name)


def test_routing_key_without_method_segment(served, bus):
    """A request put straight on the queue (routing key = queue name, no '.method') gets -32600."""
    app, url, exchange = served
    body = json.dumps({"jsonrpc": "2.0", "id": "x", "method": "add", "params": [1, 2]})
    reply = raw_call(url, "", app.queue_for(exchange), body)
    assert reply is not None and reply["error"]["code"] == -32600
    _assert_still_serving(bus, app.name)


def test_hooks_and_private_names_are_not_callable(served, bus):
    """kombu/framework on_* hooks and non-method attributes are -32601 from the bus."""
    name = served[0].name
    for method in ("message", "connection_revived", "consume_ready", "decode_error", "_serve"):
        with pytest.raises(MethodNotFound):
            bus.call(f"{name}.{method}")


def test_commissaire_style_caller(served):
    """A caller like Commissaire's BusMixin (dict body, response-<uuid> SimpleQueue) is answered."""
    app, url, exchange = served
    request_id = str(uuid.uuid4())
    queue_name = f"response-{request_id}"
    with Connection(url) as conn:
        response_queue = conn.SimpleQueue(queue_name)
        try:
            topic = Exchange(exchange, "topic", durable=True)
            Producer(conn.channel()).publish(
                {"jsonrpc": "2.0", "id": request_id, "method": "add", "params": {"x": 4, "y": 5}},
                exchange=topic, declare=[topic],
                routing_key=f"{app.name}.add", reply_to=queue_name, serializer="json",
            )
            message = response_queue.get(block=True, timeout=5)
            data = message.payload
            message.ack()
        finally:
            response_queue.close()
            channel = conn.channel()
            Queue(queue_name, channel=channel).delete()
            Exchange(queue_name, "direct", channel=channel).delete()
    if isinstance(data, str):
        data = json.loads(data)
    assert data == {"jsonrpc": "2.0", "id": request_id, "result": 9}
