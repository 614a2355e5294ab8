"""Events between services on the test client: registration, binding, retries, dead letters."""

from __future__ import annotations

import asyncio
import time
import uuid

import attrs
import pytest
from structlog.testing import capture_logs

from busapp import App, AsyncClient, Client, Router
from busapp.core import events
from busapp.security import Keyring
from busapp.runtime.worker import Worker
from busapp.testing import TestClient


def recorder(name: str = "billing") -> App:
    """An App whose handlers append what they got to ``app.seen``."""
    app = App(name)
    app.seen = []  # type: ignore[attr-defined]

    @app.on_event("orders.placed")
    def bill(order_id: str, qty: int = 1) -> None:
        app.seen.append(("bill", order_id, qty))  # type: ignore[attr-defined]

    @app.on_event("orders.*")
    def audit(event: str) -> None:
        app.seen.append(("audit", event))  # type: ignore[attr-defined]

    return app


# -- registration ----------------------------------------------------------------------------


def test_on_event_returns_the_function_unchanged() -> None:
    """@app.on_event hands back the very function it decorates."""
    app = App("reg")

    def bill(order_id: str) -> None: ...

    assert app.on_event("orders.placed")(bill) is bill


@pytest.mark.parametrize("pattern", ["", "orders..placed", "orders.pla-ced", "orders.*x", 3])
def test_bad_pattern_is_refused_at_registration(pattern) -> None:
    """A pattern that is not words, '*' or '#' separated by dots raises ValueError."""
    def bill() -> None: ...

    with pytest.raises(ValueError, match="event pattern"):
        App("reg").add_event_handler(bill, pattern)


def test_same_handler_twice_is_refused() -> None:
    """Subscribing one function twice to one pattern raises ValueError."""
    app = App("reg")

    def bill() -> None: ...

    app.add_event_handler(bill, "orders.placed")
    with pytest.raises(ValueError, match="already subscribed"):
        app.add_event_handler(bill, "orders.placed")


def test_negative_retries_are_refused() -> None:
    """retries must be a whole number from 0."""
    def bill() -> None: ...

    with pytest.raises(ValueError, match="retries"):
        App("reg").on_event("orders.placed", retries=-1)(bill)


@pytest.mark.parametrize("name", ["orders", "orders.", "orders.*", "orders.pla ced", ""])
def test_emit_of_a_bad_name_raises(name) -> None:
    """Emitting anything but '<source>.<event>' raises ValueError before publishing."""
    with recorder().test_client() as client, pytest.raises(ValueError, match="event name"):
        client.emit(name)


def test_app_names_cannot_take_busapp_keys() -> None:
    """An App named busapp-... could bind <name>.* to busapp's own keys: refused."""
    with pytest.raises(ValueError, match="busapp-"):
        App("busapp-event")


def test_router_event_handlers_join_the_app() -> None:
    """A router's event handler is served once the App includes it."""
    app, router, seen = App("withrouter"), Router(), []

    @router.on_event("orders.placed")
    def bill(order_id: str) -> None:
        seen.append(order_id)

    app.include(router)
    with app.test_client() as client:
        client.emit("orders.placed", order_id="o-1")
    assert seen == ["o-1"]


def test_router_clash_with_the_app_is_refused() -> None:
    """Including a router subscribing a function the App already subscribes raises ValueError."""
    app, router = App("clash"), Router()

    def bill() -> None: ...

    app.add_event_handler(bill, "orders.placed")
    router.add_event_handler(bill, "orders.placed")
    with pytest.raises(ValueError, match="event handler 'bill'"):
        app.include(router)


def test_retry_delays_double_up_to_a_minute() -> None:
    """Retry delays: 1 s, then twice the one before, never more than 60 s."""
    assert [events.retry_delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


# -- delivery --------------------------------------------------------------------------------


def test_each_matching_handler_runs_before_emit_returns() -> None:
    """client.emit returns after every handler whose pattern matches has run."""
    app = recorder()
    with app.test_client() as client:
        client.emit("orders.placed", order_id="o-1", qty=2)
        client.emit("orders.refunded", order_id="o-1")
        client.emit("users.placed", order_id="o-2")
    assert app.seen == [("bill", "o-1", 2), ("audit", "orders.placed"),
                        ("audit", "orders.refunded")]


def test_payload_keys_the_handler_does_not_declare_are_ignored() -> None:
    """An emitter may add fields: keys the handler does not take are left out."""
    app = recorder()
    with app.test_client() as client:
        client.emit("orders.placed", order_id="o-1", coupon="NEW")
    assert app.seen[0] == ("bill", "o-1", 1)


@attrs.define
class Line:
    """An order line, emitted as a JSON object."""

    item: str
    qty: int


def test_payload_converts_to_typed_parameters() -> None:
    """Payload values convert as method params do (an attrs model from a JSON object)."""
    app, seen = App("typed"), []

    @app.on_event("orders.placed")
    def bill(line: Line) -> None:
        seen.append(line)

    with app.test_client() as client:
        client.emit("orders.placed", line=Line("apple", 2))
    assert seen == [Line("apple", 2)]


def test_emit_with_no_subscriber_is_dropped_without_error() -> None:
    """An event no App subscribes to is dropped; emit still returns its id."""
    with App("nobody").test_client() as client:
        assert client.emit("orders.placed", order_id="o-1")


def test_a_handlers_emit_is_handled_before_the_call_returns() -> None:
    """A method that emits: the other App's handler has run when the call returns."""
    orders, billing = App("orders"), recorder("billing")

    @orders.method()
    def place(order_id: str, bus) -> str:
        bus.emit("orders.placed", order_id=order_id)
        return order_id

    with orders.test_client() as client:
        client.register(billing)
        assert client.call("place", "o-7") == "o-7"
    assert ("bill", "o-7", 1) in billing.seen


def test_async_handler_is_awaited() -> None:
    """An async def handler runs to completion before emit returns."""
    app, seen = App("asyncev"), []

    @app.on_event("orders.placed")
    async def bill(order_id: str) -> None:
        await asyncio.sleep(0)
        seen.append(order_id)

    with app.test_client() as client:
        client.emit("orders.placed", order_id="o-1")
    assert seen == ["o-1"]


def test_async_client_emit_reaches_the_handler() -> None:
    """AsyncClient.emit (awaited) publishes an event the test bus's handlers get."""
    app = recorder()
    with app.test_client() as client:
        async def main() -> None:
            async with AsyncClient(client.url, client.exchange) as bus:
                await bus.emit("orders.placed", order_id="o-9")

        asyncio.run(main())
    assert ("bill", "o-9", 1) in app.seen


# -- failures --------------------------------------------------------------------------------


def test_handler_failing_twice_succeeds_on_its_third_try() -> None:
    """A handler that raises twice is retried and succeeds: emit raises nothing."""
    app, tries = App("flaky"), []

    @app.on_event("jobs.flaky")
    def twice(job: str) -> None:
        tries.append(job)
        if len(tries) <= 2:
            raise RuntimeError("not yet")

    with app.test_client() as client:
        client.emit("jobs.flaky", job="a")
        assert client.dead_letters() == []
    assert tries == ["a", "a", "a"]


def test_handler_failing_every_try_is_dead_lettered() -> None:
    """After its retries, the event goes to the handler's .dead queue and emit raises."""
    app, tries = App("broken"), []

    @app.on_event("jobs.broken", retries=2)
    def broken(job: str) -> None:
        tries.append(job)
        raise RuntimeError("always")

    with app.test_client() as client:
        with pytest.raises(RuntimeError, match="always"):
            client.emit("jobs.broken", job="b")
        assert client.dead_letters("broken.event.jobs.broken.broken.dead") == [{"job": "b"}]
    assert tries == ["b", "b", "b"]


def test_other_handlers_of_the_event_still_run_when_one_fails() -> None:
    """One handler that always fails does not keep another handler of the event from it."""
    app = recorder()

    @app.on_event("orders.placed", retries=0)
    def broken() -> None:
        raise RuntimeError("always")

    with TestClient(app, raise_handler_errors=False) as client:
        client.emit("orders.placed", order_id="o-1")
        assert len(client.handler_errors) == 1
    assert ("bill", "o-1", 1) in app.seen


def test_unconvertible_payload_is_dead_lettered_at_once() -> None:
    """A payload that never converts is not retried: one error, straight to .dead."""
    app = recorder()
    with TestClient(app, raise_handler_errors=False) as client, capture_logs() as logs:
        client.emit("orders.placed", order_id=5)
        assert client.dead_letters("billing.event.orders.placed.bill.dead") == [{"order_id": 5}]
        [error] = client.handler_errors
    assert not [e for e in logs if e["event"] == "event handler failed; retrying"]
    assert "parameter 'order_id' of bill()" in str(error.exception)


def on_a_worker(app: App) -> tuple[Client, Worker]:
    """``app`` served by a plain worker on a memory broker (its own error log, no test
    client hook), and a client there."""
    url = f"memory://events-{uuid.uuid4().hex}"
    worker = Worker(app.service_class(app.exchange, url, app.qkwargs()))
    worker.attach()
    return Client(url, app.exchange), worker


def test_retry_and_dead_letter_are_logged() -> None:
    """Each retry logs a warning with its delay; the dead-letter one error line."""
    app = App("logged")

    @app.on_event("jobs.broken", retries=2)
    def broken() -> None:
        raise RuntimeError("always")

    bus, worker = on_a_worker(app)
    with capture_logs() as logs:
        bus.emit("jobs.broken")
        deadline = time.monotonic() + 10
        while not any("dead-lettered" in e["event"] for e in logs):
            assert time.monotonic() < deadline, "never dead-lettered"
            worker.transport.move_due(worker._delayed_queues)
            time.sleep(0.05)
    worker.detach()
    retries = [(e["retry"], e["retry_in_s"]) for e in logs
               if e["event"] == "event handler failed; retrying"]
    assert retries == [(1, 1.0), (2, 2.0)]
    [dead] = [e for e in logs if "dead-lettered" in e["event"]]
    assert (dead["log_level"], dead["retries"], str(dead["exc_info"])) == ("error", 2, "always")


def test_per_event_log_line_says_how_it_ended() -> None:
    """The per-message log line of an event names its handler and its outcome."""
    app = App("lines")

    @app.on_event("jobs.broken", retries=1)
    def broken() -> None:
        raise RuntimeError("always")

    with TestClient(app, raise_handler_errors=False) as client, capture_logs() as logs:
        client.emit("jobs.broken")
    lines = [(e["method"], e["outcome"]) for e in logs if e["event"] == "event"]
    assert lines == [("broken", "retried"), ("broken", "dead_lettered")]


# -- the pipeline's stages apply -------------------------------------------------------------


def test_middleware_wraps_event_handlers() -> None:
    """Middleware sees a bus event as kind 'bus_event' with the handler's params."""
    app, calls = recorder(), []

    @app.middleware
    def spy(call, call_next):
        calls.append((call.kind, call.method, call.params))
        return call_next(call)

    with app.test_client() as client:
        client.emit("orders.placed", order_id="o-1")
    assert ("bus_event", "bill", {"order_id": "o-1"}) in calls


def test_dependencies_are_injected_into_event_handlers() -> None:
    """A handler declaring a dependency gets it."""
    app, seen = App("withdeps"), []

    @app.dependency("ledger")
    def ledger():
        return ["opened"]

    @app.on_event("orders.placed")
    def bill(order_id: str, ledger) -> None:
        seen.append((order_id, ledger))

    with app.test_client() as client:
        client.emit("orders.placed", order_id="o-1")
    assert seen == [("o-1", ["opened"])]


def test_allow_list_keeps_other_keys_from_a_handler() -> None:
    """With a keyring, an event signed by a key not in the handler's allow list is not run."""
    keys = Keyring({"orders": "s-1", "other": "s-2"})
    app, seen = App("guarded", keyring=keys), []

    @app.on_event("orders.refunded", allow={"orders"})
    def refund(order_id: str) -> None:
        seen.append(order_id)

    with app.test_client(key="other") as client:
        client.emit("orders.refunded", order_id="forged")
    with app.test_client(key="orders") as client:
        client.emit("orders.refunded", order_id="real")
    assert seen == ["real"]


def test_unsigned_event_is_refused_by_an_app_with_a_keyring() -> None:
    """An App with a keyring runs no handler for an unsigned event."""
    app, seen = App("signed", keyring=Keyring({"orders": "s-1"})), []

    @app.on_event("orders.placed")
    def bill(order_id: str) -> None:
        seen.append(order_id)

    with app.test_client() as client:
        client.emit("orders.placed", order_id="o-1")
    assert seen == []


def test_retried_event_passes_the_signature_checks_again() -> None:
    """With a keyring, a retried copy (re-signed) is not refused as a replay."""
    app, tries = App("signedretry", keyring=Keyring({"orders": "s-1"})), []

    @app.on_event("jobs.flaky")
    def twice() -> None:
        tries.append(1)
        if len(tries) <= 2:
            raise RuntimeError("not yet")

    with app.test_client(key="orders") as client:
        client.emit("jobs.flaky")
    assert len(tries) == 3
