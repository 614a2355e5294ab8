"""Middleware: order, what a Call carries, error answers, storage events."""

from __future__ import annotations

import attrs
import pytest

from busapp import App, Call
from busapp.errors import InternalError, RemoteProcedureCallError


def _app(events: list) -> App:
    app = App("mw")

    @app.middleware
    def outer(call, call_next):
        events.append(("outer in", call.kind, call.method, call.params, call.message.routing_key))
        try:
            return call_next(call)
        finally:
            events.append("outer out")

    @app.middleware
    def inner(call, call_next):
        events.append("inner in")
        if call.params == ["deny"]:
            raise RemoteProcedureCallError("not allowed", code=-32001, data={"policy": "deny"})
        if call.params == ["crash"]:
            raise KeyError("policy table")
        if call.params == ["double"]:
            return call_next(attrs.evolve(call, params=["double", "double"]))
        result = call_next(call)
        events.append("inner out")
        return result

    @app.method()
    def echo(*words) -> list:
        events.append("handler")
        return list(words)

    return app


def test_middleware_runs_outermost_first_around_the_handler():
    """The first registered middleware is outermost;
    each sees a Call with kind, method, params, message."""
    events: list = []
    with _app(events).test_client() as client:
        assert client.call("echo", "hi") == ["hi"]
    assert events == [("outer in", "call", "echo", ["hi"], "mw.echo"), "inner in", "handler",
                      "inner out", "outer out"]


def test_middleware_error_keeps_its_code():
    """A RemoteProcedureCallError raised by a middleware answers with its own code and data."""
    events: list = []
    with _app(events).test_client() as client, pytest.raises(RemoteProcedureCallError) as info:
        client.call("echo", "deny")
    assert (info.value.code, info.value.data) == (-32001, {"policy": "deny"})
    assert "handler" not in events and events[-1] == "outer out"


def test_middleware_crash_is_an_internal_error():
    """Any other exception in a middleware answers -32603, as in a handler."""
    with _app([]).test_client() as client, pytest.raises(InternalError, match="policy table"):
        client.call("echo", "crash")


def test_middleware_may_replace_the_call():
    """call_next(attrs.evolve(call, params=...)) reaches the handler with the new params."""
    with _app([]).test_client() as client:
        assert client.call("echo", "double") == ["double", "double"]


def test_middleware_may_answer_itself_and_its_result_is_unstructured():
    """What a middleware returns is the answer (attrs models become JSON objects)."""
    @attrs.define
    class Cached:
        value: int

    app = App("cache")
    app.add_middleware(
        lambda call, call_next: Cached(7) if call.method == "slow" else call_next(call))
    app.add_method(lambda: 1, "slow")
    with app.test_client() as client:
        assert client.call("slow") == {"value": 7}


def test_middleware_wraps_storage_events():
    """Storage events go through middleware as kind 'event', named by the handler function."""
    from busapp.models import Host

    seen: list = []
    app = App("mwev")
    app.add_middleware(
        lambda call, call_next: (seen.append((call.kind, call.method, call.params["event"]))
                                 or call_next(call)))

    @app.on_storage_event(Host, "created")
    def host_created(event, model):
        seen.append(model.address)

    with app.test_client() as client:
        client.storage.save(Host(address="10.0.0.2"))
    assert seen == [("event", "host_created", "created"), "10.0.0.2"]


def test_middleware_error_on_an_event_is_a_handler_error():
    """A middleware raising on a storage event fails the event like its handler would."""
    from busapp.models import Host

    app = App("mwevfail")

    @app.middleware
    def refuse(call, call_next):
        raise RuntimeError("refused event")

    app.add_storage_handler(lambda event, model: None, Host, "created")
    with app.test_client() as client:
        with pytest.raises(RuntimeError, match="refused event"):
            client.storage.save(Host(address="10.0.0.3"))


@pytest.mark.parametrize(("func", "message"), [
    (lambda call: None, "two arguments"),
    ("not callable", "must be callable"),
])
def test_bad_middleware_rejected(func, message):
    """A middleware that cannot take (call, call_next) fails at registration."""
    with pytest.raises(ValueError, match=message):
        App("bad").add_middleware(func)


def test_async_middleware_rejected():
    """An async middleware fails at registration, saying why."""
    async def timing(call, call_next):
        return call_next(call)

    with pytest.raises(ValueError, match="must be a plain def"):
        App("bad").middleware(timing)


def test_call_is_public():
    """busapp.Call is a frozen record of kind, method, params, message."""
    call = Call("call", "add", [1, 2])
    assert (call.kind, call.method, call.params, call.message) == ("call", "add", [1, 2], None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        call.method = "x"
