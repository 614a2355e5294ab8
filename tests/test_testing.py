"""The in-memory test client (busapp.testing) and its pytest fixtures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import traceback

import attrs
import pytest

from busapp import App
from busapp.errors import (
    InternalError,
    InvalidParams,
    MethodNotFound,
    RemoteProcedureCallError,
    RequestTimeout,
    StorageLookupError,
)
from busapp.models import Cluster, Host
from busapp.service import CommissaireService
from busapp.storage.client import NOTIFY_EVENT_CREATED, NotifyCallback, StorageClient
from busapp.testing import NoRouteError, TestClient
from busapp.transport.memory import topic_matches


def make_app(name: str = "simple") -> App:
    """A small App with a handler for each behaviour under test."""
    app = App(name)
    app.seen = []  # type: ignore[attr-defined]

    @app.method("add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.method()
    def wordy_add(x: int, y: int, bus) -> str:
        return f"{x} plus {y} is {bus.call(f'{name}.add', x, y)}"

    @app.method()
    def fail():
        raise NotImplementedError("I was never created")

    @app.method()
    def teapot():
        raise RemoteProcedureCallError("teapot", code=-31999, data={"why": "short and stout"})

    @app.method()
    def where(message) -> str:
        return message.routing_key

    @app.method()
    def pair():
        return (1, 2)  # a tuple crosses the wire as a JSON array

    @app.method()
    def unserialisable():
        return object()

    @app.method()
    async def async_add(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    @app.method()
    def register_host(address: str, storage) -> str:
        return storage.save(Host.new(address=address)).status

    @app.method()
    def log(text: str, bus) -> None:
        app.seen.append(text)  # type: ignore[attr-defined]
        bus.notify(f"{name}.logged", text=text)

    @app.method()
    def logged(text: str) -> None:
        app.seen.append(f"logged {text}")  # type: ignore[attr-defined]

    @app.on_storage_event(Host, "created")
    def investigate(event, model, storage):
        app.seen.append((event, model.address))  # type: ignore[attr-defined]
        storage.save(attrs.evolve(model, status="investigating"))

    return app


@pytest.fixture
def app() -> App:
    """A fresh App per test."""
    return make_app()


@pytest.fixture
def client(app: App) -> TestClient:
    """A test client for ``app``."""
    return app.test_client()


# -- calls -------------------------------------------------------------------


def test_short_name_and_routing_key_reach_the_same_handler(client: TestClient) -> None:
    """'add' and 'simple.add' both call add(), by position or by keyword."""
    assert client.call("add", 1, 2) == 3
    assert client.call("simple.add", x=1, y=2) == 3


def test_bad_params_raise_invalid_params_naming_the_parameter(client: TestClient) -> None:
    """A param that does not convert is -32602, decoded to InvalidParams."""
    with pytest.raises(InvalidParams, match="'x'") as info:
        client.call("add", "abc", 2)
    assert info.value.code == -32602


def test_unknown_method_on_a_served_prefix_is_method_not_found(client: TestClient) -> None:
    """A method the service lacks is -32601, as on a broker."""
    with pytest.raises(MethodNotFound):
        client.call("nope")


def test_routing_key_nobody_serves_raises_at_once(client: TestClient) -> None:
    """A key no registered service consumes raises NoRouteError
    (a RequestTimeout) naming the bindings."""
    with pytest.raises(RequestTimeout, match=r"simple\.\*") as info:
        client.call("other.add", 1, 2)
    assert isinstance(info.value, NoRouteError)


def test_handler_exception_is_internal_error_caused_by_the_original(client: TestClient) -> None:
    """A handler's own exception becomes -32603 with the original as __cause__
    (for its traceback)."""
    with pytest.raises(InternalError, match="I was never created") as info:
        client.call("fail")
    assert isinstance(info.value.__cause__, NotImplementedError)
    frames = traceback.extract_tb(info.value.__cause__.__traceback__)
    assert frames[-1].name == "fail"


def test_custom_rpc_error_keeps_code_and_data(client: TestClient) -> None:
    """A RemoteProcedureCallError raised by a handler reaches the caller with its code and data."""
    with pytest.raises(RemoteProcedureCallError) as info:
        client.call("teapot")
    assert (info.value.code, info.value.data, info.value.message) == (
        -31999, {"why": "short and stout"}, "teapot")


def test_result_crosses_json(client: TestClient) -> None:
    """Results are JSON round-tripped: a tuple comes back a list."""
    assert client.call("pair") == [1, 2]


def test_unserialisable_result_is_internal_error(client: TestClient) -> None:
    """A result JSON cannot carry is -32603, as on a broker."""
    with pytest.raises(InternalError, match="not JSON serialisable"):
        client.call("unserialisable")


def test_request_returns_the_whole_response(client: TestClient) -> None:
    """request() gives Commissaire's whole JSON-RPC response dict."""
    response = client.request("simple.add", [1, 2])
    assert response["jsonrpc"] == "2.0"
    assert response["result"] == 3
    assert response["id"]


def test_message_is_injected_with_the_routing_key(client: TestClient) -> None:
    """The injected message carries the full routing key."""
    assert client.call("where") == "simple.where"


def test_handler_calls_its_own_app_over_the_bus(client: TestClient) -> None:
    """bus.call inside a handler reaches the same App in memory."""
    assert client.call("wordy_add", 1, 2) == "1 plus 2 is 3"


def test_async_handler(client: TestClient) -> None:
    """async def handlers are awaited."""
    assert client.call("async_add", 2, 3) == 5


def test_awaited_call_from_async_handler_to_async_handler() -> None:
    """An awaited bus.call from an async handler to another async handler returns (no deadlock)."""
    app = make_app()

    @app.method()
    async def outer(bus) -> int:
        return await bus.call("simple.async_add", 1, 2)

    assert app.test_client().call("outer") == 3


def test_several_threads_share_one_client(client: TestClient) -> None:
    """Calls from several threads at once all get their own answers."""
    results: dict[int, list[int]] = {}

    def work(n: int) -> None:
        results[n] = [client.call("add", n, i) for i in range(50)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: [n + i for i in range(50)] for n in range(8)}


def call_from_two_threads(client: TestClient, method: str) -> list[object]:
    """Call ``method`` from two threads at once; their results."""
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(client.call(method)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_calls_from_two_threads_are_handled_at_once() -> None:
    """Two threads' calls run their handlers side by side (neither waits for the other's call)."""
    app = App("meet")
    both = threading.Barrier(2, timeout=5)

    @app.method()
    def meet() -> bool:
        both.wait()  # returns only once the other thread's handler is here too
        return True

    assert call_from_two_threads(app.test_client(), "meet") == [True, True]


def test_nested_calls_from_two_threads_are_handled_at_once() -> None:
    """Handlers of two threads' calls each make a call through the service's bus, side by side."""
    app = App("nest")
    both = threading.Barrier(2, timeout=5)

    @app.method()
    def inner() -> bool:
        both.wait()
        return True

    @app.method()
    def outer(bus) -> bool:
        return bus.call("nest.inner")

    assert call_from_two_threads(app.test_client(), "outer") == [True, True]


def test_one_thread_calls_through_client_bus(client: TestClient) -> None:
    """Calls from one thread at a time all go through ``client.bus`` (no other Client is made)."""
    from busapp.transport.memory import MemoryBroker

    for i in range(3):
        assert client.call("add", i, 1) == i + 1
    replies = [q for q in MemoryBroker.named(client.url).queues if q.startswith("busapp.reply.")]
    assert replies == [client.bus.reply_queue]


def test_short_name_without_an_app_is_refused() -> None:
    """A client with no app asks for a full routing key."""
    with pytest.raises(ValueError, match="full routing key"):
        TestClient().call("add", 1, 2)


# -- more services -------------------------------------------------------------


def test_register_other_app(client: TestClient) -> None:
    """client.register(other_app) makes it reachable from the test and from handlers."""
    other = App("other")

    @other.method()
    def double(x: int, bus) -> int:
        return bus.call("simple.add", x, x)

    client.register(other)
    assert client.call("other.double", 4) == 8


def test_register_same_queue_twice_is_refused(client: TestClient, app: App) -> None:
    """Registering a service whose queue is already served is an error."""
    with pytest.raises(ValueError, match="already served"):
        client.register(app)


class ClassicService(CommissaireService):
    """The seed document's storage-aware service, with Commissaire's own __init__."""

    def __init__(self, exchange_name, connection_url, config_file=None):
        super().__init__(exchange_name, connection_url,
                         qkwargs=[{"name": "classic", "routing_key": "queues.classic.*"}],
                         config_file=config_file)
        self.created: list[str] = []
        self.storage = StorageClient(self)
        self.storage.register_callback(self.host_created_cb, Host, NOTIFY_EVENT_CREATED)

    @NotifyCallback
    def host_created_cb(self, event, model, message):
        self.created.append(model.address)

    def on_ping(self, message):
        return "pong"

    def on_cluster_status(self, message, name):
        return self.storage.get_cluster(name).status


def test_register_a_commissaire_service_class(client: TestClient) -> None:
    """A CommissaireService subclass with its own __init__ runs on the test bus."""
    service = client.register(ClassicService)
    assert client.call("queues.classic.ping") == "pong"
    client.storage.save(Cluster.new(name="c1", status="ok"))
    assert client.call("queues.classic.cluster_status", "c1") == "ok"
    client.storage.save(Host.new(address="10.0.0.7"))
    assert service.created == ["10.0.0.7"]


def test_short_names_follow_a_class_service_binding() -> None:
    """Short names of a class-based service use its binding's prefix."""
    client = TestClient(ClassicService)
    assert client.routing_key("ping") == "queues.classic.ping"
    assert client.call("ping") == "pong"


# -- storage and events ------------------------------------------------------


def test_storage_event_handler_ran_before_save_returns(client: TestClient, app: App) -> None:
    """on_storage_event handlers run (and their own writes land) before storage.save returns."""
    client.storage.save(Host.new(address="10.0.0.1"))
    assert app.seen == [("created", "10.0.0.1")]
    assert client.storage.get_host("10.0.0.1").status == "investigating"


def test_handler_storage_reaches_the_same_store(client: TestClient, app: App) -> None:
    """A handler's injected storage and client.storage share one in-memory store."""
    assert client.call("register_host", "10.0.0.2") == ""
    assert client.storage.get_host("10.0.0.2").status == "investigating"


def test_missing_record_is_storage_lookup_error(client: TestClient) -> None:
    """A missing record is -20000 StorageLookupError."""
    with pytest.raises(StorageLookupError):
        client.storage.get_host("10.9.9.9")


def test_each_client_has_its_own_store(app: App) -> None:
    """Two clients never share storage."""
    first, second = app.test_client(), app.test_client()
    first.storage.save(Host.new(address="10.0.0.3"))
    assert second.storage.list(Host) == []


def _failing_app() -> App:
    app = make_app()

    @app.on_storage_event(Cluster, "*")
    def explode(event, model):
        raise KeyError(f"no network for {model.name}")

    return app


def test_storage_event_handler_error_fails_the_storage_call() -> None:
    """An exception in an event handler is re-raised from the storage call, with its traceback."""
    client = _failing_app().test_client()
    with pytest.raises(KeyError, match="no network for c1") as info:
        client.storage.save(Cluster.new(name="c1"))
    assert "explode" in [frame.name for frame in traceback.extract_tb(info.tb)]
    assert client.storage.get_cluster("c1").name == "c1"  # the write itself stands


def test_storage_event_handler_errors_can_be_collected() -> None:
    """raise_handler_errors=False keeps them in client.handler_errors instead."""
    client = TestClient(_failing_app(), raise_handler_errors=False)
    client.storage.save(Cluster.new(name="c1"))
    [error] = client.handler_errors
    assert isinstance(error.exception, KeyError)
    assert error.routing_key == "notify.storage.Cluster.created"


def test_test_can_subscribe_to_storage_events(client: TestClient) -> None:
    """client.storage.register_callback delivers events to the test itself."""
    got = []
    client.storage.register_callback(lambda body, message: got.append(message.routing_key), Host)
    client.storage.save(Host.new(address="10.0.0.4"))
    assert got == ["notify.storage.Host.created", "notify.storage.Host.updated"]


def test_notifications_record_events_and_notifies(client: TestClient, app: App) -> None:
    """client.notifications records storage events and notifications, in order."""
    client.call("log", "hi")
    client.storage.save(Host.new(address="10.0.0.5"))
    assert [(n.routing_key, n.kind) for n in client.notifications] == [
        ("simple.logged", "notify"),
        ("notify.storage.Host.created", "publish"),
        ("notify.storage.Host.updated", "publish"),
    ]
    assert client.notifications[0].body["params"] == {"text": "hi"}
    assert app.seen[:2] == ["hi", "logged hi"]
    [created] = client.published("notify.storage.*.created")
    assert created["model"]["address"] == "10.0.0.5"


def test_notification_handler_error_fails_the_test() -> None:
    """An exception in a notification's handler (no caller to answer) is re-raised."""
    app = make_app()

    @app.method()
    def boom() -> None:
        raise ZeroDivisionError("from a notification")

    with pytest.raises(ZeroDivisionError):
        app.test_client().notify("boom")


def _blocking_app(release: threading.Event, finished: threading.Event) -> App:
    """An App whose ``wait`` blocks until ``release`` is set, then sets ``finished``; its
    ``notify_later`` does the same, then notifies ``boom``, whose handler raises."""
    app = App("blocking")

    @app.method()
    def wait() -> str:
        release.wait(10)
        finished.set()
        return "done"

    @app.method()
    def notify_later(bus) -> None:
        release.wait(10)
        bus.notify("blocking.boom")
        finished.set()

    @app.method()
    def boom() -> None:
        raise ZeroDivisionError("after the caller gave up")

    return app


def test_call_timeout_ends_the_wait_while_the_handler_runs() -> None:
    """call(..., timeout=0.3) raises RequestTimeout at the timeout, while its handler is still
    blocked (before, the test waited for the handler to return)."""
    release, finished = threading.Event(), threading.Event()
    client = _blocking_app(release, finished).test_client()
    try:
        with pytest.raises(RequestTimeout, match="within 0.3s"):
            client.call("wait", timeout=0.3)
        assert not finished.is_set()  # the handler had not returned when the call ended
    finally:
        release.set()
    assert finished.wait(5)
    assert client.call("wait", timeout=5) == "done"


def test_handler_error_after_a_call_timed_out_fails_the_next_call() -> None:
    """An exception a timed-out call's handler causes later (a notification's handler) is
    raised by the test's next call, not lost."""
    release, finished = threading.Event(), threading.Event()
    client = _blocking_app(release, finished).test_client()
    with pytest.raises(RequestTimeout):
        client.call("notify_later", timeout=0.2)
    release.set()
    assert finished.wait(5)
    with pytest.raises(ZeroDivisionError, match="after the caller gave up"):
        client.call("wait", timeout=5)


def test_call_with_timeout_keeps_the_handlers_exception_as_cause(client: TestClient) -> None:
    """A call given a timeout still raises the typed error caused by the handler's own one."""
    with pytest.raises(InternalError) as info:
        client.call("fail", timeout=5)
    assert isinstance(info.value.__cause__, NotImplementedError)


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    ("simple.*", "simple.add", True),
    ("simple.*", "simple.a.b", False),
    ("simple.*", "simple", False),
    ("notify.storage.*.*", "notify.storage.Host.created", True),
    ("notify.#", "notify", True),
    ("notify.#", "notify.storage.Host.created", True),
    ("#.created", "notify.storage.Host.created", True),
    ("#", "anything.at.all", True),
    ("a.#.z", "a.z", True),
    ("a.#.z", "a.b.c", False),
])
def test_topic_matching(pattern: str, key: str, expected: bool) -> None:
    """Bindings match like an AMQP topic exchange: '*' one word, '#' zero or more."""
    assert topic_matches(pattern, key) is expected


# -- pytest plugin -------------------------------------------------------------


@pytest.fixture
def busapp_app() -> App:
    """Overrides the plugin's busapp_app for the fixture tests below."""
    return make_app("plugged")


def test_plugin_client_fixture(busapp_client: TestClient) -> None:
    """busapp_client calls the App that busapp_app returns."""
    assert busapp_client.call("add", 2, 2) == 4
    assert busapp_client.routing_key("add") == "plugged.add"


def test_plugin_storage_fixture(busapp_storage: StorageClient, busapp_app: App) -> None:
    """busapp_storage is the client's storage; the App's event handlers run on it."""
    busapp_storage.save(Host.new(address="10.0.0.6"))
    assert busapp_app.seen == [("created", "10.0.0.6")]  # type: ignore[attr-defined]


def test_plugin_client_factory(busapp_client_factory) -> None:
    """busapp_client_factory builds clients with options."""
    client = busapp_client_factory(_failing_app(), raise_handler_errors=False)
    client.storage.save(Cluster.new(name="c2"))
    assert len(client.handler_errors) == 1


def test_plugin_is_loaded_by_entry_point(tmp_path) -> None:
    """In a fresh project the fixtures exist, and a missing busapp_app says what to do."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        import pytest
        from busapp import App

        app = App("calc")

        @app.method()
        def add(x: int, y: int) -> int:
            return x + y

        @pytest.fixture
        def busapp_app():
            return app

        def test_add(busapp_client):
            assert busapp_client.call("add", 1, 2) == 3
    """))
    (tmp_path / "test_forgot.py").write_text("def test_x(busapp_client):\n    pass\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert "1 passed" in run.stdout and "1 error" in run.stdout, run.stdout
    assert "define a 'busapp_app' fixture" in run.stdout


def test_event_handler_error_under_an_async_handler_fails_the_call() -> None:
    """An event handler failing under an async handler's storage write is still re-raised."""
    app = _failing_app()

    @app.method()
    async def make_cluster(name: str, storage) -> None:
        storage.save(Cluster.new(name=name))

    with pytest.raises(KeyError, match="no network for c3"):
        app.test_client().call("make_cluster", "c3")


def test_test_client_loads_no_broker_code() -> None:
    """A call and a storage write through the test client never import kombu or redis."""
    code = textwrap.dedent("""
        import sys
        from busapp import App
        from busapp.models import Host
        app = App("calc")
        app.add_method(lambda x, y: x + y, "add")
        client = app.test_client()
        assert client.call("add", 1, 2) == 3
        client.storage.save(Host.new(address="10.0.0.1"))
        print(sorted(m for m in ("kombu", "redis", "amqp") if m in sys.modules))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "[]", run.stderr
