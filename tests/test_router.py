"""Routers: include, scoped middleware, clashes."""

from __future__ import annotations

import pytest

import busapp
from busapp import App, Router
from busapp.models import Host


def _router(events: list) -> Router:
    router = Router()

    @router.dependency("greeting")
    def greeting():
        return "hello"

    @router.middleware
    def tag(call, call_next):
        events.append(f"router mw {call.method}")
        return call_next(call)

    @router.on_startup
    def started():
        events.append("router startup")

    @router.on_shutdown
    def stopped():
        events.append("router shutdown")

    @router.method()
    def greet(name: str, greeting) -> str:
        return f"{greeting} {name}"

    @router.method("hosts_seen")
    def seen() -> int:
        return len([e for e in events if e.startswith("host ")])

    @router.on_storage_event(Host, "created")
    def host_created(event, model):
        events.append(f"host {model.address}")

    return router


def _app(events: list) -> App:
    app = App("routed")

    @app.middleware
    def outer(call, call_next):
        events.append(f"app mw {call.method}")
        return call_next(call)

    @app.method()
    def ping() -> str:
        return "pong"

    app.include(_router(events))
    return app


def test_include_serves_the_routers_methods_events_dependencies_and_hooks():
    """After include, the App serves the router's methods and events with its
    dependencies and hooks."""
    events: list = []
    app = _app(events)
    assert set(app.methods) == {"ping", "greet", "hosts_seen"}
    with app.test_client() as client:
        assert client.call("greet", "ann") == "hello ann"
        client.storage.save(Host(address="10.0.0.9"))
        assert client.call("hosts_seen") == 1
    assert events[0] == "router startup" and events[-1] == "router shutdown"


def test_router_middleware_wraps_only_its_own_handlers_inside_the_apps():
    """A router's middleware runs inside the App's,
    and only around the router's methods and events."""
    events: list = []
    with _app(events).test_client() as client:
        client.call("ping")
        client.call("greet", "bo")
        client.storage.save(Host(address="10.0.0.8"))
    calls = [e for e in events if "mw" in e]
    assert calls == ["app mw ping", "app mw greet", "router mw greet",
                     "app mw host_created", "router mw host_created"]


@pytest.mark.parametrize("clash", ["method", "dependency", "event"])
def test_clash_raises_and_adds_nothing(clash):
    """A method, dependency or storage subscription already on the App makes include
    raise ValueError."""
    app = App("clash")
    app.add_method(lambda: "mine", "greet" if clash == "method" else "other")
    if clash == "dependency":
        app.add_dependency(lambda: "hi", "greeting")
    if clash == "event":
        def host_created(event, model):
            pass
        app.add_storage_handler(host_created, Host, "created")
    before = (dict(app.methods), dict(app.dependencies), list(app.storage_handlers))
    named = clash if clash != "event" else "storage handler"
    with pytest.raises(ValueError, match=f"cannot include .*{named}"):
        app.include(_router([]))
    assert (app.methods, app.dependencies, app.storage_handlers) == before
    assert app.startup_hooks == [] and app.scoped_middleware == {}


def test_router_checks_what_it_can_at_registration():
    """Bad method names, duplicates and bad events fail on the router itself."""
    router = Router()
    router.add_method(lambda: 1, "one")
    with pytest.raises(ValueError, match="already registered on this router"):
        router.add_method(lambda: 2, "one")
    with pytest.raises(ValueError, match="must match"):
        router.add_method(lambda: 1, "no-dash")
    with pytest.raises(ValueError, match="event must be one of"):
        router.add_storage_handler(lambda event, model: None, Host, "exploded")


def test_nested_routers_keep_their_middleware_order():
    """A router included in a router keeps its middleware, inside its parent's."""
    order: list = []
    inner, outer = Router(), Router()
    inner.add_middleware(lambda call, nxt: order.append("inner") or nxt(call))
    outer.add_middleware(lambda call, nxt: order.append("outer") or nxt(call))
    inner.add_method(lambda: "deep", "deep")
    outer.include(inner)
    app = App("nested")
    app.add_middleware(lambda call, nxt: order.append("app") or nxt(call))
    app.include(outer)
    with app.test_client() as client:
        assert client.call("deep") == "deep"
    assert order == ["app", "outer", "inner"]


def test_public_surface_has_router_and_call():
    """busapp exports Router and Call."""
    assert {"Router", "Call"} <= set(busapp.__all__)
