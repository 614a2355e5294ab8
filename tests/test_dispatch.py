"""Parameter binding, conversion and injection on the no-I/O dispatch path."""

from __future__ import annotations

import json

import pytest

from busapp.core import dispatch
from busapp import App
from tests.apps import Point, make_app


def _call(app: App, method: str, params, context=None):
    body = json.dumps({"jsonrpc": "2.0", "id": "1", "method": method, "params": params})
    return dispatch.process(app.methods, body, content_type="application/json",
                            routing_key=f"{app.name}.{method}", context=context or {})


@pytest.fixture
def app():
    """The shared test App."""
    return make_app("unit")


def test_result(app):
    """A good call returns result."""
    assert _call(app, "add", [1, 2]) == {"jsonrpc": "2.0", "id": "1", "result": 3}


@pytest.mark.parametrize("params", [["3", 1], [True, 1], [1.5, 1], [None, 1]])
def test_int_param_is_strict(app, params):
    """An int param rejects strings, booleans, fractions and null, naming the param."""
    error = _call(app, "add", params)["error"]
    assert error["code"] == -32602 and "'x'" in error["message"]


def test_attrs_param_errors_name_the_field(app):
    """A bad field inside a model param is reported with its path."""
    error = _call(app, "shift", [{"x": "one"}])["error"]
    assert error["code"] == -32602 and "point" in error["message"] and "x" in error["message"]


def test_injected_names_cannot_be_sent(app):
    """'bus' sent over the wire is refused rather than overriding the injection."""
    error = _call(app, "wordy_add", {"x": 1, "y": 2, "bus": "evil"})["error"]
    assert error["code"] == -32602 and "'bus'" in error["message"]


def test_injection_by_name():
    """message, bus and storage are injected only when declared."""
    app = App("inj")

    @app.method()
    def who(message, storage, n: int = 0):
        return [message, storage, n]

    result = _call(app, "who", {"n": 2}, {"message": "m", "bus": "b", "storage": "s"})
    assert result["result"] == ["m", "s", 2]


def test_model_result_is_unstructured(app):
    """An attrs result becomes a JSON object."""
    assert _call(app, "shift", [{"x": 1}])["result"] == {"x": 2, "y": 0}


def test_model_instance_passes_through_in_process():
    """Calling a Handler in-process with an already-built model does not re-convert it."""
    handler = make_app("u2").methods["shift"]
    assert handler.call([Point(1, 1)], {}) == {"x": 2, "y": 1}


def test_async_handler(app):
    """async def handlers are awaited."""
    assert _call(app, "async_add", [1, 2])["result"] == 3


def test_notification_gets_no_response(app):
    """A request without id is handled and answered with nothing."""
    body = json.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 2]})
    assert dispatch.process(app.methods, body, content_type="application/json",
                            routing_key="unit.add", context={}) is None


def test_on_error_sees_handler_exceptions(app):
    """The on_error hook is told of exceptions raised by handlers (for logging)."""
    seen = []
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "fail"})
    dispatch.process(app.methods, body, content_type=None, routing_key="unit.fail", context={},
                     on_error=lambda req, exc: seen.append(type(exc)))
    assert seen == [NotImplementedError]


def test_describe_params(app):
    """describe_params shows names, types and defaults."""
    assert app.methods["shift"].describe_params() == ["point: Point", "dx: int = 1"]
