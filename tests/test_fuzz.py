"""Property-based fuzzing of the message path (in memory): nothing escapes,
errors are well formed."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busapp.core import dispatch
from busapp.service import CommissaireService
from tests.apps import make_app

APP = make_app("fuzz")
SERVICE = APP.service_class("fz", "memory://", client=object())
HANDLERS = SERVICE.handlers

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                      max_size=4),
    max_leaves=12,
)
methods = st.sampled_from(sorted(HANDLERS) + ["nope", "", "_serve", "message", "add.x"])
requests = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": methods},
    optional={"id": st.one_of(st.text(max_size=8), st.integers(), st.none()),
              "params": st.one_of(st.lists(json_values, max_size=4),
                                  st.dictionaries(st.sampled_from(["x", "y", "words", "point",
                                                                   "bus", "message", "z"]),
                                                  json_values, max_size=4),
                                  json_values)},
)
bodies = st.one_of(
    requests.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
content_types = st.sampled_from(["application/json", "text/plain", "", None,
                                 "application/x-python-serialize", "application/x-yaml",
                                 "application/x-msgpack", "application/json; charset=utf-8"])
routing_keys = st.one_of(st.none(), st.text(max_size=30),
                         methods.map(lambda m: f"fuzz.{m}"))

# Methods that would sleep, kill the process or recurse over a bus are not fuzzed.
SAFE = {k: v for k, v in HANDLERS.items() if k not in {"slow", "die", "nested", "wordy_add"}}


def _well_formed(response: dict) -> None:
    assert response["jsonrpc"] == "2.0"
    assert "id" in response
    assert ("result" in response) != ("error" in response)
    if "error" in response:
        error = response["error"]
        assert isinstance(error["code"], int) and isinstance(error["message"], str)
        assert not error["message"].startswith("(")
    json.dumps(response)  # always serialisable


@pytest.mark.slow  # > 5 s
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, content_type=content_types, routing_key=routing_keys)
def test_any_message_gets_a_well_formed_answer_or_none(body, content_type, routing_key):
    """Random bodies, content types and routing keys: no exception, a valid JSON-RPC response."""
    response = dispatch.process(SAFE, body, content_type=content_type, routing_key=routing_key,
                                context={"message": None, "bus": None, "storage": None})
    if response is not None:
        _well_formed(response)
    # and the next normal request is still served
    ok = dispatch.process(SAFE, b'{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}',
                          content_type="application/json", routing_key="fuzz.add", context={})
    assert ok == {"jsonrpc": "2.0", "id": 1, "result": 3}


@settings(max_examples=150, deadline=None)
@given(body=bodies, content_type=content_types)
def test_test_client_raw_path_never_raises(body, content_type):
    """The same fuzz through the in-memory test client: answers are well formed, calls go on."""
    client = APP.test_client()
    response = client.request_raw("fuzz.echo", body,
                                  content_type=content_type or "application/json")
    if response is not None:
        _well_formed(response)
    assert client.call("add", 2, 2) == 4


def test_oversized_body_is_refused_with_clear_error():
    """A body over the limit (1 MiB by default) is refused unread with -32700 naming the limit."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo",
                       "params": ["x" * (1024 * 1024 + 1)]}).encode()
    response = dispatch.process(SAFE, body, content_type="application/json",
                                routing_key="fuzz.echo", context={})
    assert response["error"]["code"] == -32700
    assert "exceeds the limit of 1048576 bytes" in response["error"]["message"]


def test_body_limit_is_configurable():
    """The max_body= keyword sets the worker option the limit comes from."""
    service = APP.service_class("fz", "memory://", client=object(), max_body=10)
    assert service.options.max_body == 10
    response = dispatch.process(service.handlers, b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
                                content_type="application/json", routing_key="fuzz.ping",
                                context={}, max_body=service.options.max_body)
    assert response["error"]["code"] == -32700
    assert isinstance(SERVICE, CommissaireService)
