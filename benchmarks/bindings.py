#!/usr/bin/env python
"""A call's cost with 0 and with 1,000 other bindings on the service's exchange (Redis).

kombu routes a publish on a Redis topic exchange by reading the exchange's whole binding
set and matching each member's regex, so every other service, event subscription and
worker control queue on the exchange made each call dearer. busapp's Redis channel keeps
the bindings indexed and reads them only after Redis says they changed
(``busapp/transport/_bindings.py``, ``_tracking.py``). This measures it: one busapp echo
server (``benchmarks/rpc.py``'s) on a fresh exchange, sequential 64-byte echo calls from
a client process, with the exchange holding only the server's own bindings and then 1,000
more (passes alternate: the other bindings are added and removed between them, by plain
kombu, as other processes would). Columns:

- ``busapp``: busapp's client as it is (binding watch on);
- ``busapp, watch off``: ``BUSAPP_BINDING_TRACKING=0`` (the index, but the bindings read
  on every publish: what a server without client tracking gets);
- ``raw kombu, stock``: ``benchmarks/rawkombu.py``'s client on kombu's own Redis transport
  (regex scan of the whole table on every publish), calling its own raw server;
- ``--baseline REF``: busapp's client as of git ``REF`` too, calling the same server;

and, measured in this process after each pass (no broker round trip, so no noise from
other load on the machine), the CPU a routing lookup costs (``Channel._lookup``: what a
publish does to find its queues) with busapp's channel, watch on and off, and kombu's.

The 1,000 other bindings are a mix like a busy exchange's: 400 other services
(``svcN.*``), 300 event subscriptions (``notify.storage.KindN.created``-like and
``notify.#``), 300 worker control queues (``busapp-control`` and ``busapp-control.svcN``).
Target: calls/s with 1,000 others >= 0.8x of none. Run by hand::

    .venv/bin/python benchmarks/bindings.py [--repeat 3] [--seconds 3] [--baseline main]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rpc  # noqa: E402

OTHERS = 1000
TRACKING_ENV = "BUSAPP_BINDING_TRACKING"


def other_keys(count: int = OTHERS) -> list[str]:
    """``count`` binding keys like those of a busy exchange's other queues."""
    keys = []
    for i in range(count):
        kind = i % 10
        if kind < 4:
            keys.append(f"svc{i}.*")
        elif kind < 7:
            keys.append("notify.#" if i % 50 == 4 else
                        f"notify.storage.Kind{i % 13}.{('created', 'deleted', '*')[i % 3]}")
        else:
            keys.append("busapp-control" if kind == 7 else f"busapp-control.svc{i}")
    return keys


class Others:
    """The 1,000 other queues' bindings, bound and unbound by plain kombu."""

    def __init__(self, url: str, exchange: str) -> None:
        from kombu import Connection, Exchange, Queue

        self.conn = Connection(url)
        self.channel = self.conn.channel()
        ex = Exchange(exchange, type="topic", durable=True)
        self.queues = [Queue(f"{exchange}.other{i}", ex, routing_key=key, durable=True)
                       for i, key in enumerate(other_keys())]
        self.bound = False

    def bind(self) -> None:
        for q in self.queues:
            q(self.channel).declare()
        self.bound = True

    def unbind(self) -> None:
        for q in self.queues:  # kombu unbinds what this channel declared, deletes the lists
            self.channel.queue_delete(q.name)
        self.bound = False

    def close(self) -> None:
        if self.bound:
            self.unbind()
        self.conn.release()


@contextlib.contextmanager
def environment(changes: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``changes``, restored afterwards."""
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class As:
    """``server`` called by clients of another implementation (same wire, same queue)."""

    def __init__(self, server: rpc.Server, impl: str) -> None:
        self._server, self.impl = server, impl

    def impl_args(self) -> list[str]:
        return ["--impl", self.impl]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def lookup_cost(url: str, exchange: str, routing_key: str, seconds: float = 0.5
                ) -> dict[str, float]:
    """CPU µs of one routing lookup (what a publish does to find its queues), in this process:
    busapp's Redis channel with the watch on and off, and kombu's stock channel."""
    from kombu import Connection, Exchange

    from busapp.transport.kombu_setup import kombu_connection

    out = {}
    for name, conn in (
            ("busapp", kombu_connection(url)),
            ("busapp, watch off", Connection(url, transport_options={"binding_tracking": False},
                                             transport=_busapp_transport())),
            ("raw kombu, stock", Connection(url))):
        with conn:
            channel = conn.default_channel
            Exchange(exchange, type="topic", durable=True)(channel).declare()
            channel._lookup(exchange, routing_key)
            count, started = 0, time.process_time()
            while time.process_time() - started < seconds:
                for _ in range(100):
                    channel._lookup(exchange, routing_key)
                count += 100
            out[name] = (time.process_time() - started) / count * 1e6
    return out


def _busapp_transport() -> Any:
    from busapp.transport.redis import Transport

    return Transport


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", default=rpc.DEFAULT_URLS["redis"])
    p.add_argument("--repeat", type=int, default=3, help="passes per figure; medians (3)")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per window (3)")
    p.add_argument("--warmup", type=int, default=50, help="untimed calls first (50)")
    p.add_argument("--baseline", metavar="REF", help="also busapp's client as of git REF")
    a = p.parse_args()
    from busapp.log import configure_logging

    configure_logging("warning", fmt="console")
    tmp = Path(tempfile.mkdtemp(prefix="busapp-bench-bindings-"))
    if a.baseline:
        os.environ[rpc.BASE_ENV] = str(rpc.export_baseline(a.baseline, tmp))
    url = a.redis_url
    exchange = f"bench.{uuid.uuid4().hex[:8]}"
    broker = rpc.broker_pids("redis", url)
    servers = {impl: rpc.Server(impl, url, exchange, 1, tmp) for impl in ("busapp", "raw")}
    others = Others(url, exchange)
    clients: dict[str, tuple[Any, dict[str, str]]] = {
        "busapp": (servers["busapp"], {}),
        "busapp, watch off": (servers["busapp"], {TRACKING_ENV: "0"}),
        "raw kombu, stock": (_StockRaw(servers["raw"]), {}),
    }
    if a.baseline:
        clients[f"busapp {a.baseline}"] = (As(servers["busapp"], "base"), {})
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    lookups: dict[tuple[str, int], list[float]] = {}
    started = time.monotonic()
    try:
        for server in servers.values():
            server.wait_ready()
        for rep in range(a.repeat):
            for count in ((0, OTHERS) if rep % 2 == 0 else (OTHERS, 0)):
                if count and not others.bound:
                    others.bind()
                elif not count and others.bound:
                    others.unbind()
                for name, (server, env) in clients.items():
                    with environment(env):  # the client processes inherit it
                        fig = rpc.measure(server, 1, 1, a.seconds, broker, a.warmup)
                    runs.setdefault((name, count), []).append(fig)
                for name, cost in lookup_cost(url, exchange, f"{servers['busapp'].name}.echo"
                                              ).items():
                    lookups.setdefault((name, count), []).append(cost)
    finally:
        others.close()
        for server in servers.values():
            server.stop()
        rpc.cleanup("redis", url, exchange, [s.name for s in servers.values()])
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: {m: statistics.median(f[m] for f in v) for m in v[0]} for k, v in runs.items()}
    print(f"Sequential 64-byte echo calls on Redis, 1 busapp worker; {os.cpu_count()} CPUs; "
          f"medians of {a.repeat} passes of {a.seconds:g}s, alternating; "
          f"{time.monotonic() - started:.0f}s in all")
    print()
    print("| client | other bindings | calls/s | client CPU µs/call | server CPU µs/call "
          "| calls/s 1,000 / 0 | routing lookup CPU µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in clients:
        for count in (0, OTHERS):
            f = med[(name, count)]
            ratio = f["calls_s"] / med[(name, 0)]["calls_s"] if count else None
            lookup = lookups.get((name, count))
            print(f"| {name} | {count:,} | {f['calls_s']:,.0f} | {f['cpu_client'] * 1000:,.0f} "
                  f"| {f['cpu_server'] * 1000:,.0f} | {'' if ratio is None else f'{ratio:.2f}'} "
                  f"| {'' if not lookup else f'{statistics.median(lookup):,.1f}'} |")
    ratio = med[("busapp", OTHERS)]["calls_s"] / med[("busapp", 0)]["calls_s"]
    print()
    print(f"- busapp with {OTHERS:,} other bindings: {ratio:.2f}x the calls/s of none "
          f"(target >= 0.8) {'met' if ratio >= 0.8 else 'MISSED'}")
    return 0


class _StockRaw(As):
    """The raw kombu client on kombu's stock Redis transport (``rpc.py --raw-stock``)."""

    def __init__(self, server: rpc.Server) -> None:
        super().__init__(server, "raw")

    def impl_args(self) -> list[str]:
        return ["--impl", "raw", "--raw-stock"]


if __name__ == "__main__":
    sys.exit(main())
