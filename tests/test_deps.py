"""Dependencies: scopes, teardown order, providers needing providers, graph errors, overrides."""

from __future__ import annotations

import itertools

import pytest

from busapp import App
from busapp.errors import InternalError, InvalidParams


def _scoped_app(events: list) -> App:
    app = App("deps")
    counter = itertools.count(1)

    @app.dependency("pool")
    def pool():
        events.append("pool made")
        yield f"pool{next(counter)}"
        events.append("pool closed")

    @app.dependency("conn", scope="call")
    def conn(pool, message):
        events.append(f"conn made from {pool} for {message.routing_key}")
        yield f"conn{next(counter)}"
        events.append("conn closed")

    @app.dependency("tx", scope="call")
    async def tx(conn):  # an async generator provider
        events.append(f"tx on {conn}")
        yield "tx"
        events.append("tx closed")

    @app.method()
    def use(x: int, tx, conn, pool) -> list:
        events.append("handler")
        if x < 0:
            raise ValueError("negative")
        return [x, tx, conn, pool]

    @app.method()
    def plain(x: int) -> int:
        return x

    return app


def test_worker_scope_made_once_call_scope_per_call_in_order():
    """Worker-scoped: once at start-up; call-scoped: per call,
    torn down after it in reverse order."""
    events: list = []
    with _scoped_app(events).test_client() as client:
        assert events == ["pool made"]
        assert client.call("use", 1) == [1, "tx", "conn2", "pool1"]
        assert client.call("use", 2) == [2, "tx", "conn3", "pool1"]
        assert client.call("plain", 5) == 5  # needs nothing: nothing made
        per_call = ["handler", "tx closed", "conn closed"]
        assert events[1:] == ["conn made from pool1 for deps.use", "tx on conn2", *per_call,
                              "conn made from pool1 for deps.use", "tx on conn3", *per_call]
    assert events[-1] == "pool closed"


def test_call_scope_teardown_runs_when_the_handler_raises():
    """A handler's exception still tears its call-scoped dependencies down;
    the caller gets -32603."""
    events: list = []
    with _scoped_app(events).test_client() as client:
        with pytest.raises(InternalError, match="negative"):
            client.call("use", -1)
        assert events[-3:] == ["handler", "tx closed", "conn closed"]


def test_dependency_params_cannot_come_from_the_wire():
    """A caller cannot send a dependency's value: -32602 naming it."""
    with _scoped_app([]).test_client() as client, \
            pytest.raises(InvalidParams, match="'pool' of use\\(\\) is filled by busapp"):
        client.call("use", x=1, pool="mine")


def test_overrides_replace_providers_keeping_scope():
    """test_client(dependencies=...) takes a provider or a plain value;
    the rest stay as registered."""
    events: list = []
    app = _scoped_app(events)
    with app.test_client(dependencies={"pool": "fake-pool",
                                       "conn": lambda pool: f"fake-conn({pool})"}) as client:
        assert client.call("use", 1) == [1, "tx", "fake-conn(fake-pool)", "fake-pool"]
    assert "pool made" not in events and "tx closed" in events


def test_override_with_a_callable_object_is_a_value():
    """Only functions are providers: a callable object
    (a mock, a connection, a class) is injected as is."""
    class Callable:
        def __call__(self):
            raise AssertionError("called as a provider")

    fake = Callable()
    app = App("callval")
    app.add_dependency(lambda: "real", "thing")
    app.add_method(lambda thing: type(thing).__name__, "kind")
    with app.test_client(dependencies={"thing": fake}) as client:
        assert client.call("kind") == "Callable"


def test_override_of_unknown_name_is_an_error():
    """Overriding a name that is no dependency raises ValueError listing the known ones."""
    with pytest.raises(ValueError, match="cannot override 'db'.*known: conn, pool, tx"):
        _scoped_app([]).test_client(dependencies={"db": object()})


def test_storage_handlers_and_hooks_get_dependencies():
    """Storage-event handlers and start-up hooks receive dependencies too."""
    from busapp.models import Host

    seen: list = []
    app = App("evdeps")

    @app.dependency("audit")
    def audit():
        return seen

    @app.on_startup
    def hello(audit):
        audit.append("started")

    @app.on_storage_event(Host, "created")
    def created(event, model, audit):
        audit.append((event, model.address))

    with app.test_client() as client:
        client.storage.save(Host(address="10.0.0.1"))
    assert seen == ["started", ("created", "10.0.0.1")]


def test_plain_and_async_returning_providers():
    """A provider may return its value, sync or async."""
    app = App("ret")

    @app.dependency("a")
    def a():
        return 1

    @app.dependency("b", scope="call")
    async def b(a):
        return a + 1

    @app.method()
    def get(a, b) -> list:
        return [a, b]

    with app.test_client() as client:
        assert client.call("get") == [1, 2]


@pytest.mark.parametrize(("register", "message"), [
    (lambda app: app.dependency("bus")(lambda: 1), "injected by busapp itself"),
    (lambda app: app.dependency("x", scope="process")(lambda: 1), "scope must be"),
    (lambda app: app.dependency("not a name")(lambda: 1), "must be a Python identifier"),
    (lambda app: app.dependency("x")(lambda message: 1), "only exists per call"),
    (lambda app: app.dependency("x")(lambda x: 1), "takes itself"),
])
def test_bad_dependencies_rejected_at_registration(register, message):
    """Names, scopes and per-message needs a dependency cannot have fail when it is registered."""
    with pytest.raises(ValueError, match=message):
        register(App("bad"))


def test_duplicate_dependency_rejected():
    """Registering a dependency name twice raises ValueError."""
    app = App("dup")
    app.add_dependency(lambda: 1, "x")
    with pytest.raises(ValueError, match="'x' is already registered"):
        app.add_dependency(lambda: 2, "x")


def _graph_error(build) -> str:
    app = App("graph")
    build(app)
    with pytest.raises(ValueError) as info:
        app.test_client()
    return str(info.value)


def test_cycle_is_an_error_before_the_first_call():
    """Providers needing each other in a cycle fail when the service is built, naming the cycle."""
    def build(app):
        app.add_dependency(lambda b: 1, "a")
        app.add_dependency(lambda c: 1, "b")
        app.add_dependency(lambda a: 1, "c")

    assert "dependency cycle: a -> b -> c -> a" in _graph_error(build)


def test_unknown_provider_parameter_is_an_error():
    """A provider parameter that is no dependency nor injectable fails at build, with a hint."""
    assert "dependency 'a' takes parameter 'config'" in _graph_error(
        lambda app: app.add_dependency(lambda config: 1, "a"))


def test_worker_scope_cannot_need_call_scope():
    """A worker-scoped provider needing a call-scoped one fails at build."""
    def build(app):
        app.add_dependency(lambda: 1, "per_call", scope="call")
        app.add_dependency(lambda per_call: 1, "per_worker")

    assert ("worker-scoped dependency 'per_worker' needs call-scoped 'per_call'"
            in _graph_error(build))


def test_hook_cannot_take_call_scope_or_unknown_names():
    """Start-up hooks may take worker-scoped dependencies, bus and storage only."""
    def call_scoped(app):
        app.add_dependency(lambda: 1, "per_call", scope="call")
        app.on_startup(lambda per_call: None)

    assert "call-scoped dependency 'per_call'" in _graph_error(call_scoped)

    def shut_down_hook_with_a_param(app):
        app.on_shutdown(lambda message: None)

    assert "takes parameter 'message'" in _graph_error(shut_down_hook_with_a_param)


def test_provider_that_does_not_yield_is_a_clear_error():
    """A generator provider that never yields fails the call with a message naming
    the dependency."""
    app = App("noyield")

    @app.dependency("x", scope="call")
    def x():
        if False:
            yield

    @app.method()
    def get(x):
        return x

    with (app.test_client() as client,
          pytest.raises(InternalError, match="'x': the provider returned")):
        client.call("get")
