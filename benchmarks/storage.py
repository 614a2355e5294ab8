#!/usr/bin/env python
"""Saves per second through the bus: StorageClient -> broker -> storage service -> backend.

Starts the storage service (``make_app(store).run(broker, workers=W)``) in a forked
process for each backend, then times ``--saves`` StorageClient.save calls of distinct
Host records: once from one client (sequential: latency-bound) and once from
``--clients`` client processes at once. Each save is a full JSON-RPC round trip plus
the durable write and the publish of its ``created`` event.

    .venv/bin/python benchmarks/storage.py                      # Redis broker, local services
    .venv/bin/python benchmarks/storage.py --backends sqlite --workers 3 --clients 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import tempfile
import time
import uuid

from busapp import Client
from busapp.errors import RequestTimeout
from busapp.log import configure_logging
from busapp.models import Host
from busapp.storage.backends import open_backend
from busapp.storage.client import StorageClient
from busapp.storage.service import make_app

_ctx = multiprocessing.get_context("fork")


def store_url(kind: str, tmp: str, token: str) -> str:
    return {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp}/bench-{token}.sqlite3",
        "postgres": f"postgresql://postgres@127.0.0.1:5432/test?table=bench_{token}",
        "redis": f"redis://127.0.0.1:6379/0?prefix=bench-{token}",
    }[kind]


def _saver(broker: str, exchange: str, prefix: str, count: int, out) -> None:
    with Client(broker, exchange, timeout=60) as bus:
        storage = StorageClient(bus)
        storage.save(Host.new(address=f"{prefix}-warmup"))
        out.put("ready")
        start = time.perf_counter()
        for i in range(count):
            storage.save(Host.new(address=f"{prefix}-{i}", cpus=i))
        out.put(time.perf_counter() - start)


def _wait_ready(broker: str, exchange: str) -> None:
    end = time.monotonic() + 30
    with Client(broker, exchange, timeout=0.5) as bus:
        while True:
            try:
                bus.call("storage.list_store_handlers")
                return
            except RequestTimeout:
                if time.monotonic() > end:
                    raise


def run_one(kind: str, broker: str, saves: int, workers: int, clients: int) -> tuple[float, float]:
    token = uuid.uuid4().hex[:8]
    exchange = f"bench-{token}"
    with tempfile.TemporaryDirectory() as tmp:
        url = store_url(kind, tmp, token)
        app = make_app(url, queue=f"storage-bench-{token}")
        server = _ctx.Process(target=app.run, args=(broker,),
                              kwargs={"workers": workers, "exchange": exchange})
        server.start()
        try:
            _wait_ready(broker, exchange)
            rates = []
            for n in (1, clients):
                out = _ctx.Queue()
                procs = [_ctx.Process(target=_saver,
                                      args=(broker, exchange, f"{n}-{c}", saves // n, out))
                         for c in range(n)]
                for p in procs:
                    p.start()
                elapsed = [x for x in (out.get(timeout=120) for _ in range(2 * n)) if x != "ready"]
                for p in procs:
                    p.join(30)
                rates.append((saves // n) * n / max(elapsed))
            return rates[0], rates[1]
        finally:
            os.kill(server.pid, signal.SIGTERM)
            server.join(30)
            backend = open_backend(url)
            if hasattr(backend, "drop"):
                backend.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default=os.environ.get("BUSAPP_BROKER_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--backends", default="sqlite,postgres,redis,memory")
    parser.add_argument("--saves", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=1, help="storage service processes")
    parser.add_argument("--clients", type=int, default=3,
                        help="client processes in the concurrent run")
    args = parser.parse_args()
    configure_logging("warning")
    print(f"broker {args.broker.split('@')[-1]}, {args.saves} saves, "
          f"storage workers={args.workers}")
    print(f"{'backend':<10} {'1 client saves/s':>17} {f'{args.clients} clients saves/s':>18}")
    for kind in args.backends.split(","):
        seq, conc = run_one(kind, args.broker, args.saves, args.workers, args.clients)
        print(f"{kind:<10} {seq:>17.0f} {conc:>18.0f}", flush=True)


if __name__ == "__main__":
    main()
