"""JSON-RPC parsing and encoding (no broker)."""

from __future__ import annotations

import json

import pytest

from busapp.core import wire
from busapp.errors import (
    InternalError,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RemoteProcedureCallError,
    StorageLookupError,
    error_class_for,
)


def test_method_from_routing_key():
    """The method is the last dot-segment; an empty one is None."""
    assert wire.method_from_routing_key("simple.add") == "add"
    assert wire.method_from_routing_key("a.b.c") == "c"
    assert wire.method_from_routing_key("simple.") is None
    assert wire.method_from_routing_key("") is None


@pytest.mark.parametrize("ctype", ["application/x-python-serialize", "application/x-yaml",
                                   "application/x-msgpack", "application/data"])
def test_loads_body_refuses_other_content_types(ctype):
    """Only JSON content types are parsed."""
    with pytest.raises(ParseError, match="not accepted"):
        wire.loads_body(b"\x80\x04K\x01.", ctype)


def test_loads_body_accepts_text_plain_json():
    """text/plain holding JSON is accepted (Commissaire sent it)."""
    assert wire.loads_body('{"a": 1}', "text/plain") == {"a": 1}


def test_loads_body_size_limit():
    """A body over the limit is refused with a clear message."""
    with pytest.raises(ParseError, match="exceeds the limit"):
        wire.loads_body(b"[" + b"1," * 100 + b"1]", "application/json", max_body=50)


def test_parse_request_double_encoded():
    """A JSON string holding the request object is accepted."""
    body = json.dumps(json.dumps({"jsonrpc": "2.0", "id": "1", "method": "add", "params": [1]}))
    req = wire.parse_request(wire.loads_body(body, "application/json"), "s.add")
    assert req.params == [1] and req.id == "1"


@pytest.mark.parametrize("data", [[1], 3, None, {"id": 1}, {"method": ""},
                                  {"method": "add", "params": "x"}, {"method": "other"}])
def test_parse_request_rejects(data):
    """Non-objects, missing method, wrong params and method != routing key are -32600."""
    with pytest.raises(InvalidRequest):
        wire.parse_request(data, "s.add")


def test_notification_has_no_id():
    """A request without id is a notification."""
    assert wire.parse_request({"method": "add"}, "s.add").is_notification


def test_error_response_shape():
    """Error responses carry code, message and data.exception as a bare class name."""
    resp = wire.error_response("i", KeyError("k"))
    assert resp == {"jsonrpc": "2.0", "id": "i",
                    "error": {"code": -32603, "message": "'k'", "data": {"exception": "KeyError"}}}


def test_error_response_unserialisable_data():
    """Unserialisable error data is replaced rather than breaking the reply."""
    resp = wire.error_response(1, RemoteProcedureCallError("m", -1, data={"o": object()}))
    json.dumps(resp)


@pytest.mark.parametrize(("code", "cls"), [(-32601, MethodNotFound),
                                           (-20000, StorageLookupError),
                                           (-32603, InternalError),
                                           (-1234, RemoteProcedureCallError),
                                           ("junk", RemoteProcedureCallError)])
def test_error_classes_by_code(code, cls):
    """Codes decode to classes through the registry; unknown ones to the base class."""
    assert error_class_for(code) is cls


def test_parse_response_accepts_json_string():
    """A reply that is a JSON string holding the object is accepted."""
    body = json.dumps(json.dumps({"jsonrpc": "2.0", "id": 1, "result": 3}))
    assert wire.parse_response(body.encode())["result"] == 3


def test_error_from_response_keeps_unknown_code():
    """An unknown error code is kept on the base class."""
    exc = wire.error_from_response({"id": 1, "error": {"code": -31000, "message": "m"}})
    assert type(exc) is RemoteProcedureCallError and exc.code == -31000


def test_response_without_result_or_error_is_an_error():
    """Commissaire's empty reply ({id: -1}) raises instead of a KeyError later."""
    assert isinstance(wire.error_from_response({"jsonrpc": "2.0", "id": -1}), InvalidRequest)
