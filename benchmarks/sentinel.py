"""What waiting for Redis replicas costs a call on a ``sentinel://`` URL (prints figures).

Builds a private Redis primary + replica + 3 Sentinels (tests/_clusters.py), runs one
worker, and times 1,000 sequential calls from one thread with ``BUSAPP_REPLICA_WAIT_MS``
500 (busapp's default: each request publish waits for the replica) and 0 (no wait).

    .venv/bin/python benchmarks/sentinel.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from busapp import Client  # noqa: E402
from tests._clusters import RedisSentinels  # noqa: E402
from tests._services import running  # noqa: E402
from tests.test_cluster_brokers import make_app  # noqa: E402

CALLS = 1000


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="busapp-sentinel-bench-"))
    group = RedisSentinels(workdir)
    group.start()
    app = make_app("bench", workdir / "served")
    try:
        with running(lambda: app.run(group.url, exchange="bench-x"), ready="bench.ping",
                     url=group.url, exchange="bench-x"):
            for wait in ("500", "0"):
                os.environ["BUSAPP_REPLICA_WAIT_MS"] = wait  # read when a connection is made
                with Client(group.url, "bench-x") as bus:
                    for _ in range(50):
                        bus.call("bench.ping")
                    latencies = []
                    for _ in range(CALLS):
                        started = time.perf_counter()
                        bus.call("bench.ping")
                        latencies.append(time.perf_counter() - started)
                latencies.sort()
                print(f"BUSAPP_REPLICA_WAIT_MS={wait}: {CALLS} sequential calls, median "
                      f"{statistics.median(latencies) * 1000:.2f} ms, "
                      f"p99 {latencies[int(CALLS * 0.99)] * 1000:.2f} ms")
    finally:
        group.stop()


if __name__ == "__main__":
    main()
