"""Start-up and shut-down hooks: on the test client, on CommissaireService,
and on a broker worker."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from busapp import App
from busapp.errors import MethodNotFound
from busapp.runtime.manager import CrashLoopError, ServiceManager
from busapp.service import CommissaireService
from busapp.testing import TestClient


def _app(events: list) -> App:
    app = App("life")

    @app.on_startup
    def first():
        events.append("startup 1")

    @app.on_startup
    async def second(bus, storage):  # async, with injectables
        events.append(f"startup 2 {type(bus).__name__} {type(storage).__name__}")

    @app.on_shutdown
    def down():
        events.append("shutdown")

    @app.method()
    def ping() -> str:
        events.append("ping")
        return "pong"

    return app


def test_test_client_runs_startup_when_made_and_shutdown_when_closed():
    """Start-up hooks (sync and async, in order) have run when the client exists;
    shut-down on close."""
    events: list = []
    client = _app(events).test_client()
    assert events == ["startup 1", "startup 2 LifeService StorageClient"]
    assert client.call("ping") == "pong"
    client.close()
    assert events[-2:] == ["ping", "shutdown"]
    client.close()  # a second close runs nothing twice
    assert events.count("shutdown") == 1


def test_context_manager_runs_shutdown_on_exit():
    """`with app.test_client()` runs start-up before the block and shut-down after it."""
    events: list = []
    with _app(events).test_client() as client:
        assert events[:1] == ["startup 1"]
        client.call("ping")
    assert events[-1] == "shutdown"


def test_failing_startup_raises_from_test_client_and_tears_down():
    """A start-up hook that raises makes test_client() raise it;
    worker dependencies made are torn down."""
    events: list = []
    app = App("bad_start")

    @app.dependency("db")
    def db():
        events.append("db made")
        yield "db"
        events.append("db closed")

    @app.on_startup
    def explode(db):
        raise RuntimeError("config missing")

    @app.on_shutdown
    def never():
        events.append("shutdown")

    with pytest.raises(RuntimeError, match="config missing"):
        app.test_client()
    assert events == ["db made", "db closed"]  # no shut-down hook for a worker that never started


def test_failing_shutdown_hook_raises_after_the_others_ran():
    """A shut-down hook that raises does not stop the others or the teardown; close() raises it."""
    events: list = []
    app = App("bad_stop")

    @app.dependency("db")
    def db():
        yield "db"
        events.append("db closed")

    @app.on_shutdown
    def explode():
        raise RuntimeError("flush failed")

    @app.on_shutdown
    def after():
        events.append("second hook")

    client = app.test_client()
    with pytest.raises(RuntimeError, match="flush failed"):
        client.close()
    assert events == ["second hook", "db closed"]


class Classic(CommissaireService):
    """A Commissaire-style service with lifespan hooks."""

    events: list = []

    def on_startup(self):
        self.events.append("startup")

    async def on_shutdown(self):
        self.events.append("shutdown")

    def on_ping(self, message):
        return "pong"


def test_commissaire_service_hooks_run_and_are_not_bus_methods():
    """on_startup/on_shutdown of a CommissaireService run as hooks and are never
    callable on the bus."""
    Classic.events = []
    client = TestClient(Classic)
    assert Classic.events == ["startup"]
    assert client.call("classic.ping") == "pong"
    with pytest.raises(MethodNotFound):
        client.call("classic.startup")
    assert set(client.service.handlers) == {"ping"}
    client.close()
    assert Classic.events == ["startup", "shutdown"]


def test_app_method_named_startup_is_a_method_not_a_hook():
    """An App method called `startup` is served on the bus and never run as a hook."""
    events: list = []
    app = App("named")

    @app.method()
    def startup() -> str:
        events.append("called")
        return "started"

    with app.test_client() as client:
        assert events == []
        assert client.call("startup") == "started"
    assert events == ["called"]


def test_startup_failure_on_a_broker_is_logged_and_a_crash_loop(redis_url, exchange, unique):
    """On a broker, a failing start-up hook stops the worker with the error logged;
    the manager gives up."""
    app = App(f"crash{unique}")

    @app.on_startup
    def explode():
        raise RuntimeError("no database")

    @app.method()
    def ping() -> str:
        return "pong"

    manager = ServiceManager(app.service_class, 1, exchange, redis_url, app.qkwargs())
    manager.max_fast_failures = 2
    with pytest.raises(CrashLoopError, match="failed 2 times"):
        manager.run()


def test_startup_failure_in_process_raises_and_is_logged(redis_url, exchange, unique):
    """app.run() (one worker, in this process) raises the hook's error after logging it."""
    app = App(f"crash{unique}")

    @app.on_startup
    def explode():
        raise RuntimeError("no database")

    with capture_logs() as logs, pytest.raises(RuntimeError, match="no database"):
        app.service_class(exchange, redis_url).run()
    assert any(e["event"] == "start-up failed; the worker stops" for e in logs)
