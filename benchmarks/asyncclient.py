#!/usr/bin/env python
"""AsyncClient against the blocking Client and FastStream's client: 1,000 concurrent calls.

For each broker, a server process answers ``add(x, y)`` (busapp: one worker, concurrency 8;
FastStream: one process, its own ``@broker.subscriber``). One asyncio program then sends
``--calls`` calls at once, while a 1 ms ticker task records how late the event loop wakes it
(the *loop lag*: what every other request of a web app would wait). Printed per client:
calls/s over the whole batch, loop lag p50/p99/max, as medians over ``--repeat`` passes.

- ``AsyncClient``: ``await asyncio.gather(*(bus.call(...) for _ in range(N)))``;
- ``Client, N threads``: the blocking Client through ``loop.run_in_executor`` on a pool
  of ``--threads`` threads (how an asyncio app uses a blocking client without stalling);
- ``Client in the loop``: the blocking Client called straight from a coroutine (what not
  to do: the loop stops for the whole batch);
- ``FastStream``: ``await broker.request(...)`` (FastStream 0.7, from ``--peers-python``, a
  venv with ``faststream[redis,rabbit]``; skipped, and said so, when it is missing). On Redis
  at most :data:`FS_REDIS_INFLIGHT` requests are in flight: each holds a pooled connection
  until its reply, and 1,000 at once fail with ``MaxConnectionsError``.

Run by hand (never from the test suite)::

    .venv/bin/python benchmarks/asyncclient.py                       # Redis and RabbitMQ
    .venv/bin/python benchmarks/asyncclient.py --broker redis --repeat 5
    .venv/bin/python benchmarks/asyncclient.py --peers-python /work/peers-venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
DEFAULT_URLS = {"redis": "redis://127.0.0.1:6379/0", "amqp": "amqp://guest:guest@127.0.0.1:5672//"}
DEFAULT_PEERS = "/work/peers-venv/bin/python"
READY = "READY"
#: FastStream requests in flight at once on Redis (see bench_faststream).
FS_REDIS_INFLIGHT = 50


# -- measuring ------------------------------------------------------------------------------


async def with_lag(make_batch: Any) -> dict[str, float]:
    """Run ``make_batch()`` (a coroutine) beside a 1 ms ticker; calls/s comes from the caller."""
    lags: list[float] = []
    done = False

    async def tick() -> None:
        while not done:
            expected = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            lags.append(max(0.0, time.perf_counter() - expected))

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    try:
        await make_batch()
    finally:
        elapsed = time.perf_counter() - started
        done = True
        await ticker
    lags = lags or [elapsed]
    q = statistics.quantiles(lags, n=100, method="inclusive") if len(lags) > 1 else [lags[0]] * 99
    return {"seconds": elapsed, "lag_p50": q[49], "lag_p99": q[98], "lag_max": max(lags)}


def summarise(passes: list[dict[str, float]], calls: int) -> dict[str, float]:
    row = {k: statistics.median(p[k] for p in passes) for k in passes[0]}
    row["calls_s"] = calls / row["seconds"]
    return row


# -- busapp -----------------------------------------------------------------------------------


def serve_busapp(url: str, exchange: str, name: str) -> None:
    from busapp import App

    app = App(name)

    @app.method()
    def add(x: int, y: int) -> int:
        return x + y

    app.run(url, exchange=exchange)


def bench_busapp(url: str, exchange: str, name: str, calls: int, repeat: int,
                 threads: int) -> dict[str, dict[str, float]]:
    from concurrent.futures import ThreadPoolExecutor

    from busapp import AsyncClient, Client

    key = f"{name}.add"

    async def run() -> dict[str, dict[str, float]]:
        rows: dict[str, list[dict[str, float]]] = {}
        loop = asyncio.get_running_loop()
        async with AsyncClient(url, exchange, timeout=120) as abus:
            with Client(url, exchange, timeout=120) as bus, ThreadPoolExecutor(threads) as pool:
                await abus.call(key, 0, 0)
                bus.call(key, 0, 0)

                async def async_batch() -> None:
                    got = await asyncio.gather(*(abus.call(key, i, 1) for i in range(calls)))
                    assert got == [i + 1 for i in range(calls)]

                async def threaded_batch() -> None:
                    got = await asyncio.gather(*(loop.run_in_executor(pool, bus.call, key, i, 1)
                                                 for i in range(calls)))
                    assert got == [i + 1 for i in range(calls)]

                async def blocking_batch() -> None:
                    for i in range(calls):
                        assert bus.call(key, i, 1) == i + 1

                batches = {"AsyncClient": async_batch, f"Client, {threads} threads": threaded_batch,
                           "Client in the loop": blocking_batch}
                for _ in range(repeat):  # alternate, so drift on a shared machine hits all alike
                    for label, batch in batches.items():
                        rows.setdefault(label, []).append(await with_lag(batch))
        return {label: summarise(p, calls) for label, p in rows.items()}

    return asyncio.run(run())


def with_busapp_server(url: str, exchange: str, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE), "--serve-busapp", url, exchange, name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "BUSAPP_LOG_LEVEL": "warning"})


def wait_served(url: str, exchange: str, name: str) -> None:
    from busapp import Client
    from busapp.errors import BrokerUnavailable, RequestTimeout

    end = time.monotonic() + 60
    with Client(url, exchange, timeout=0.5) as bus:
        while True:
            try:
                bus.call(f"{name}.add", 0, 0)
                return
            except (RequestTimeout, BrokerUnavailable):
                if time.monotonic() > end:
                    raise


# -- FastStream (runs under --peers-python) ----------------------------------------------------


def _fs_broker(kind: str, url: str, **kwargs: Any) -> Any:
    if kind == "redis":
        from faststream.redis import RedisBroker

        return RedisBroker(url, **kwargs)
    from faststream.rabbit import RabbitBroker

    return RabbitBroker(url, **kwargs)


def serve_faststream(kind: str, url: str, name: str) -> None:
    from faststream import FastStream

    broker = _fs_broker(kind, url, logger=None)  # no per-message access log, like busapp
    if kind == "redis":
        subscriber = broker.subscriber(list=name)
    else:
        from faststream.rabbit import RabbitQueue

        subscriber = broker.subscriber(RabbitQueue(name, auto_delete=True))

    @subscriber
    async def add(body: dict) -> int:
        return body["x"] + body["y"]

    app = FastStream(broker, logger=None)

    @app.after_startup
    def ready() -> None:
        print(READY, flush=True)

    asyncio.run(app.run())


def bench_faststream(kind: str, url: str, name: str, calls: int, repeat: int) -> None:
    async def run() -> dict[str, float]:
        broker = _fs_broker(kind, url, logger=None)
        target = {"list": name} if kind == "redis" else {"queue": name}
        async with broker:
            await broker.start()

            # On Redis each request in flight holds a connection of redis-py's pool until its
            # reply comes, and 1,000 at once fail with MaxConnectionsError ("Too many
            # connections"): cap what is in flight there rather than open 1,000 connections.
            gate = asyncio.Semaphore(FS_REDIS_INFLIGHT if kind == "redis" else calls)

            async def call(i: int) -> int:
                async with gate:
                    msg = await broker.request({"x": i, "y": 1}, timeout=120, **target)
                    return await msg.decode()

            await call(0)

            async def batch() -> None:
                got = await asyncio.gather(*(call(i) for i in range(calls)))
                assert got == [i + 1 for i in range(calls)], got[:5]

            return summarise([await with_lag(batch) for _ in range(repeat)], calls)

    print(json.dumps(asyncio.run(run())), flush=True)


def run_faststream(python: str, kind: str, url: str, calls: int, repeat: int) -> dict[str, float]:
    name = f"bench_fs_{uuid.uuid4().hex[:8]}"
    server = subprocess.Popen([python, str(HERE), "--serve-faststream", kind, url, name],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if READY not in line:
            raise RuntimeError(f"FastStream server did not start: {line!r}")
        out = subprocess.run([python, str(HERE), "--client-faststream", kind, url, name,
                              str(calls), str(repeat)], capture_output=True, text=True,
                             timeout=600, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        if kind == "redis":
            import redis

            redis.Redis.from_url(url).delete(name)


# -- main -------------------------------------------------------------------------------------


def render(kind: str, rows: dict[str, dict[str, float]], calls: int) -> str:
    lines = [f"\n{kind}: {calls} concurrent calls of add(x, y), one server process",
             f"  {'client':<24} {'calls/s':>9} {'lag p50 ms':>11} {'lag p99 ms':>11} "
             f"{'lag max ms':>11}"]
    for label, r in rows.items():
        if "skipped" in r:
            lines.append(f"  {label:<24} {r['skipped']}")
            continue
        lines.append(f"  {label:<24} {r['calls_s']:>9.0f} {r['lag_p50'] * 1e3:>11.2f} "
                     f"{r['lag_p99'] * 1e3:>11.2f} {r['lag_max'] * 1e3:>11.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve-busapp":
        serve_busapp(*argv[1:4])
        return 0
    if argv and argv[0] == "--serve-faststream":
        serve_faststream(*argv[1:4])
        return 0
    if argv and argv[0] == "--client-faststream":
        kind, url, name, calls, repeat = argv[1:6]
        bench_faststream(kind, url, name, int(calls), int(repeat))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", nargs="*", choices=sorted(DEFAULT_URLS), default=["redis", "amqp"])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=64)
    p.add_argument("--peers-python", default=DEFAULT_PEERS,
                   help="python of a venv with faststream[redis,rabbit] (skipped if absent)")
    a = p.parse_args(argv)
    for kind in a.broker:
        url = DEFAULT_URLS[kind]
        exchange, name = f"bench-{uuid.uuid4().hex[:8]}", f"benchasync{uuid.uuid4().hex[:8]}"
        server = with_busapp_server(url, exchange, name)
        try:
            wait_served(url, exchange, name)
            rows = bench_busapp(url, exchange, name, a.calls, a.repeat, a.threads)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            from busapp.transport import open_transport

            transport = open_transport(url)
            transport.connect()
            transport.close(delete_queue=name)
        if Path(a.peers_python).exists():
            try:
                label = (f"FastStream (<={FS_REDIS_INFLIGHT} fly)" if kind == "redis"
                         else "FastStream")
                rows[label] = run_faststream(a.peers_python, kind, url, a.calls, a.repeat)
            except Exception as exc:  # noqa: BLE001 - report, and keep busapp's figures
                rows["FastStream"] = {"skipped": f"failed: {exc}"}
        else:
            rows["FastStream"] = {"skipped": f"skipped: no {a.peers_python}"}
        print(render(kind, rows, a.calls), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
