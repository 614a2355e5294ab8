"""AsyncClient and the awaitable bus of async handlers (SPEC section 9): on the test bus,
Redis and RabbitMQ, with Client's results, errors and timeouts, and a loop that keeps ticking."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import pytest

import busapp
from busapp import App, AsyncClient, Client
from busapp.client.async_bus import AsyncBus
from busapp.errors import (
    BrokerUnavailable,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    RemoteProcedureCallError,
    RequestTimeout,
    StorageLookupError,
)
from busapp.transport.memory import NoRouteError
from tests._services import run_app


def _app(name: str) -> App:
    app = App(name)
    notes: list[Any] = []

    @app.method()
    def ping() -> str:
        return "pong"

    @app.method()
    def add(x: int, y: int) -> int:
        return x + y

    @app.method()
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.method()
    def boom() -> None:
        raise ValueError("boom")

    @app.method()
    def coded() -> None:
        raise RemoteProcedureCallError("teapot", code=418, data={"why": "tea"})

    @app.method()
    def missing() -> None:
        raise StorageLookupError("no such host")

    @app.method()
    def note(text: str) -> None:
        notes.append(text)

    @app.method()
    def notes_so_far() -> list:
        return list(notes)

    @app.method()
    async def nest(depth: int, bus) -> int:
        """Awaits itself ``depth - 1`` times deep; returns the depth reached."""
        if depth <= 1:
            return 1
        return 1 + await bus.call(f"{name}.nest", depth - 1, timeout=30)

    @app.method()
    async def fan(width: int, bus) -> list:
        """Awaits ``width`` nested-2 self-calls at once."""
        return await asyncio.gather(*(bus.call(f"{name}.nest", 2, timeout=30)
                                      for _ in range(width)))

    @app.method()
    async def bus_kind(bus) -> str:
        return type(bus).__name__

    @app.method()
    def sync_bus_kind(bus) -> str:
        return "blocking" if bus.call(f"{name}.ping") == "pong" else "?"

    return app


async def _with_lag(coro: Any) -> tuple[Any, list[float]]:
    """Run ``coro`` while a 1 ms ticker records how late the loop wakes it (seconds)."""
    lags: list[float] = []
    done = False

    async def tick() -> None:
        while not done:
            expected = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            lags.append(max(0.0, time.perf_counter() - expected))

    ticker = asyncio.create_task(tick())
    try:
        return await coro, lags
    finally:
        done = True
        await ticker


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


# -- the test bus -------------------------------------------------------------------------


def test_public_name() -> None:
    """AsyncClient is exported from the package."""
    assert busapp.AsyncClient is AsyncClient and "AsyncClient" in busapp.__all__


def test_call_request_and_notify_on_the_test_bus(unique: str) -> None:
    """call, request and notify behave as Client's on the in-memory bus."""
    app = _app(f"a{unique}")
    client = app.test_client()

    async def main() -> tuple:
        async with AsyncClient(client.url, client.exchange) as bus:
            result = await bus.call(f"{app.name}.add", 1, 2)
            by_name = await bus.call(f"{app.name}.add", x=4, y=5)
            response = await bus.request(f"{app.name}.add", [2, 2])
            await bus.notify(f"{app.name}.note", text="hi")
            return result, by_name, response, await bus.call(f"{app.name}.notes_so_far")

    result, by_name, response, notes = asyncio.run(main())
    assert (result, by_name, notes) == (3, 9, ["hi"])
    assert response["result"] == 4 and response["jsonrpc"] == "2.0"


def test_async_handler_gets_the_async_bus_and_plain_one_the_blocking_bus(unique: str) -> None:
    """An async def handler's bus is awaitable; a plain def handler's stays blocking."""
    client = _app(f"a{unique}").test_client()
    assert client.call("bus_kind") == AsyncBus.__name__
    assert client.call("sync_bus_kind") == "blocking"


def test_async_handler_nests_awaited_self_calls_on_the_test_bus(unique: str) -> None:
    """An async handler awaiting itself 6 deep, and 20 such fan-outs at once, completes."""
    app = _app(f"a{unique}")
    client = app.test_client()
    assert client.call("nest", 6) == 6
    assert client.call("fan", 20) == [2] * 20

    async def main() -> list:
        async with AsyncClient(client.url, client.exchange) as bus:
            return await asyncio.gather(*(bus.call(f"{app.name}.nest", 4) for _ in range(20)))

    assert asyncio.run(main()) == [4] * 20


def test_no_route_on_the_test_bus_is_a_request_timeout(unique: str) -> None:
    """A call nobody consumes fails at once with NoRouteError, a RequestTimeout, as Client's."""
    client = _app(f"a{unique}").test_client()

    async def main() -> None:
        async with AsyncClient(client.url, client.exchange) as bus:
            await bus.call("nobody.home", timeout=5)

    with pytest.raises(NoRouteError) as caught:
        asyncio.run(main())
    assert isinstance(caught.value, RequestTimeout)


def test_a_closed_client_refuses_calls(unique: str) -> None:
    """Calling a closed AsyncClient raises RuntimeError."""
    client = _app(f"a{unique}").test_client()

    async def main() -> None:
        bus = AsyncClient(client.url, client.exchange)
        await bus.close()
        await bus.call(f"a{unique}.ping")

    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(main())


def test_bad_calls_raise_before_sending(unique: str) -> None:
    """A routing key without a method segment is refused as Client refuses it."""
    client = _app(f"a{unique}").test_client()
    with Client(client.url, client.exchange) as sync:
        with pytest.raises(ValueError) as expected:
            sync.call("nodot")

    async def run() -> None:
        async with AsyncClient(client.url, client.exchange) as bus:
            await bus.call("nodot")

    with pytest.raises(ValueError) as got:
        asyncio.run(run())
    assert str(got.value) == str(expected.value)


# -- real brokers -------------------------------------------------------------------------

ERROR_CALLS = [
    ("boom", InternalError),
    ("coded", RemoteProcedureCallError),
    ("missing", StorageLookupError),
    ("add", InvalidParams),       # called with a string below
    ("nothing_here", MethodNotFound),
]


def _error_of(call: Any) -> BaseException:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("no error raised")


def test_1000_concurrent_calls_keep_the_loop_ticking(broker_url: str, exchange: str,
                                                     unique: str) -> None:
    """1,000 concurrent awaited calls all get their own result; loop lag p99 stays under 50 ms."""
    app = _app(f"a{unique}")
    with run_app(app, broker_url, exchange, concurrency=8):

        async def main() -> tuple[list, list[float]]:
            async with AsyncClient(broker_url, exchange, timeout=60) as bus:
                await bus.call(f"{app.name}.ping")  # connected before measuring
                return await _with_lag(asyncio.gather(
                    *(bus.call(f"{app.name}.add", i, 1) for i in range(1000))))

        results, lags = asyncio.run(main())
    assert results == [i + 1 for i in range(1000)]
    print(f"\nloop lag over 1,000 calls: p99 {_p99(lags) * 1e3:.2f} ms, "
          f"max {max(lags) * 1e3:.2f} ms ({len(lags)} ticks)")
    assert _p99(lags) < 0.050


def test_errors_and_timeouts_arrive_as_with_client(broker_url: str, exchange: str,
                                                   unique: str) -> None:
    """Each error reply raises the class, code, message and data Client raises;
    so does a timeout."""
    app = _app(f"a{unique}")
    name = app.name

    async def async_errors() -> list[BaseException]:
        async with AsyncClient(broker_url, exchange) as bus:
            out = []
            for method, _ in ERROR_CALLS:
                args = ("x", 1) if method == "add" else ()
                try:
                    await bus.call(f"{name}.{method}", *args)
                except BaseException as exc:  # noqa: BLE001
                    out.append(exc)
            try:
                await bus.call(f"{name}.sleep", 1.0, timeout=0.3)
            except BaseException as exc:  # noqa: BLE001
                out.append(exc)
            # The late reply of the timed-out call is dropped; the next call is answered.
            await asyncio.sleep(1.0)
            assert await bus.call(f"{name}.add", 2, 3) == 5
            return out

    with run_app(app, broker_url, exchange), Client(broker_url, exchange) as sync:
        expected = [
            _error_of(lambda m=m: sync.call(f"{name}.{m}", *(("x", 1) if m == "add" else ())))
            for m, _ in ERROR_CALLS
        ]
        expected.append(_error_of(lambda: sync.call(f"{name}.sleep", 1.0, timeout=0.3)))
        got = asyncio.run(async_errors())
    assert [type(e) for e in got] == [type(e) for e in expected]
    assert [type(e) for e in got[:-1]] == [cls for _, cls in ERROR_CALLS]
    for mine, theirs in zip(got[:-1], expected[:-1], strict=True):
        assert (mine.code, mine.message, mine.data) == (theirs.code, theirs.message, theirs.data)
    assert isinstance(got[-1], RequestTimeout) and isinstance(got[-1], TimeoutError)
    assert str(got[-1]) == str(expected[-1])


def test_notify_and_request_on_a_broker(broker_url: str, exchange: str, unique: str) -> None:
    """notify reaches the service; request returns the whole response dict."""
    app = _app(f"a{unique}")

    async def main() -> tuple[dict, list]:
        async with AsyncClient(broker_url, exchange) as bus:
            response = await bus.request(f"{app.name}.add", {"x": 1, "y": 1})
            await bus.notify(f"{app.name}.note", text="hello")
            for _ in range(100):
                notes = await bus.call(f"{app.name}.notes_so_far")
                if notes:
                    break
                await asyncio.sleep(0.05)
            return response, notes

    with run_app(app, broker_url, exchange):
        response, notes = asyncio.run(main())
    assert response["result"] == 2 and "id" in response
    assert notes == ["hello"]


def test_async_handler_nests_awaited_self_calls_on_one_worker(broker_url: str, exchange: str,
                                                              unique: str) -> None:
    """On one worker (concurrency 2), 30 parallel nested-5 awaited self-calls and a handler
    awaiting 20 nested calls at once all complete (the worker hands its role over)."""
    app = _app(f"a{unique}")

    async def main() -> tuple[list, list]:
        async with AsyncClient(broker_url, exchange, timeout=60) as bus:
            deep = await asyncio.gather(*(bus.call(f"{app.name}.nest", 5) for _ in range(30)))
            return deep, await bus.call(f"{app.name}.fan", 20)

    with run_app(app, broker_url, exchange, concurrency=2):
        deep, fan = asyncio.run(main())
    assert deep == [5] * 30
    assert fan == [2] * 20


def test_one_client_serves_several_loops(redis_url: str, exchange: str, unique: str) -> None:
    """One AsyncClient used from event loops in two threads answers each loop's calls."""
    app = _app(f"a{unique}")
    bus = AsyncClient(redis_url, exchange)
    results: dict[int, list] = {}

    def in_thread(n: int) -> None:
        async def main() -> list:
            return await asyncio.gather(*(bus.call(f"{app.name}.add", n, i) for i in range(50)))

        results[n] = asyncio.run(main())

    with run_app(app, redis_url, exchange):
        threads = [threading.Thread(target=in_thread, args=(n,)) for n in (100, 200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        bus.close_now()
    assert results == {n: [n + i for i in range(50)] for n in (100, 200)}


def test_unreachable_broker_raises_broker_unavailable() -> None:
    """A call to a broker nobody listens on raises BrokerUnavailable, as Client's does."""
    async def main() -> None:
        async with AsyncClient("redis://127.0.0.1:1/0", "x") as bus:
            await bus.call("simple.add", 1, 2, timeout=30)

    with pytest.raises(BrokerUnavailable):
        asyncio.run(main())


def test_invalid_request_shape_is_refused_like_client(unique: str) -> None:
    """A JSON-RPC request the service cannot parse gets InvalidRequest through AsyncClient too."""
    app = _app(f"a{unique}")
    client = app.test_client()

    async def main() -> dict:
        async with AsyncClient(client.url, client.exchange) as bus:
            return await bus.request(f"{app.name}.add", "not a container")

    response = asyncio.run(main())
    assert response["error"]["code"] == InvalidRequest.code
