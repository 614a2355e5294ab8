#!/usr/bin/env python
"""What RabbitMQ's publisher confirms cost a caller: sequential echo calls, confirmed or not.

busapp waits for RabbitMQ's confirm of each request (so a refused or lost publish raises at
once instead of timing out). This prints calls/s and latency p50/p99 of one client making
sequential calls to a one-worker App, with the confirm (as shipped) and without it (the
client's publish swapped for a plain one, in this process only), alternating passes so
drift on a shared machine hits both alike.

Run by hand (never from the test suite)::

    .venv/bin/python benchmarks/confirms.py
    .venv/bin/python benchmarks/confirms.py --url amqp://guest:guest@127.0.0.1:5672// --calls 2000
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
import uuid

from busapp import App, Client
from busapp.errors import RequestTimeout
from busapp.transport import kombu_transport

KombuTransport = kombu_transport.KombuTransport


def _serve(url: str, exchange: str, name: str) -> None:
    app = App(name)

    @app.method()
    def echo(data: str) -> str:
        return data

    app.run(url, exchange=exchange)


def _unconfirmed(self, channel, message, exchange, routing_key):  # noqa: ANN001
    channel.basic_publish(message, exchange=exchange, routing_key=routing_key)


def _pass(bus: Client, name: str, calls: int) -> list[float]:
    latencies = []
    for _ in range(calls):
        t0 = time.perf_counter()
        bus.call(f"{name}.echo", data="a" * 53)
        latencies.append(time.perf_counter() - t0)
    return latencies


def _wait_for_server(bus: Client, name: str) -> None:
    end = time.monotonic() + 30
    while True:
        try:
            bus.call(f"{name}.echo", data="", timeout=0.5)
            return
        except RequestTimeout:
            if time.monotonic() > end:
                raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    name, exchange = f"conf{uuid.uuid4().hex[:6]}", f"bench-{uuid.uuid4().hex[:6]}"
    server = multiprocessing.get_context("fork").Process(target=_serve,
                                                         args=(args.url, exchange, name))
    server.start()
    confirmed_publish = KombuTransport._publish_confirmed
    results: dict[str, list[float]] = {"confirmed": [], "unconfirmed": []}
    try:
        with Client(args.url, exchange, timeout=30) as bus:
            _wait_for_server(bus, name)
            _pass(bus, name, 50)  # warm up
            for _ in range(args.repeat):
                for mode in results:
                    KombuTransport._publish_confirmed = (  # type: ignore[method-assign]
                        confirmed_publish if mode == "confirmed" else _unconfirmed)
                    results[mode] += _pass(bus, name, args.calls)
    finally:
        KombuTransport._publish_confirmed = confirmed_publish  # type: ignore[method-assign]
        server.terminate()
        server.join(30)
    print(f"sequential echo calls on {args.url.split('@')[-1]}, "
          f"{args.repeat} x {args.calls} calls per mode")
    for mode, lat in results.items():
        lat.sort()
        p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99)]
        print(f"  {mode:12s} {len(lat) / sum(lat):8.0f} calls/s   "
              f"p50 {p50 * 1000:6.3f} ms   p99 {p99 * 1000:6.3f} ms")


if __name__ == "__main__":
    main()
