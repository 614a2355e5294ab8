"""RabbitMQ quorum-leader failover, several times in a row (prints each run's figures).

Builds a private 3-node RabbitMQ cluster (tests/_clusters.py) and runs the failover of
tests/test_cluster_brokers.py ``--runs`` times (default 5): 4 threads call a 2-worker
quorum-queue service through one Client while the node leading its queue is killed with
kill -9; every thread's first call served after the kill, and what the others got before
it, are printed, so the slowest thread's time can be read off. The killed node is started
again (it rejoins the cluster) before the next run.

    .venv/bin/python benchmarks/failover.py [--runs N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests._clusters import RabbitCluster  # noqa: E402
from tests._services import running  # noqa: E402
from tests.test_cluster_brokers import (  # noqa: E402
    Load,
    TallyingClient,
    make_app,
    run_through_fault,
)


def timeline(load: Load, t_fault: float) -> list[str]:
    """Per thread: what its calls that ended after the fault got until its first success."""
    lines = []
    for thread in range(len(load.threads)):
        seen = []
        for o in sorted((o for o in load.outcomes if o.thread == thread), key=lambda o: o.ended):
            if o.ended < t_fault:
                continue
            span = f"{o.started - t_fault:+.1f}..{o.ended - t_fault:+.1f}s"
            seen.append(f"{o.error or o.kind} {span}")
            if o.kind == "ok" and o.started >= t_fault:
                break
        lines.append(f"    thread {thread}: " + ", ".join(seen))
    return lines


def one_run(cluster: RabbitCluster, workdir: Path, run: int) -> None:
    served = workdir / f"served-{run}"
    name = f"f{uuid.uuid4().hex[:8]}"
    exchange = f"x-{name}"
    app = make_app(name, served, queue_type="quorum")
    url = cluster.url
    with running(lambda: app.run(url, exchange=exchange, workers=2), ready=f"{name}.ping",
                 url=url, exchange=exchange), TallyingClient(url, exchange) as bus:
        leader = cluster.leader_of(app.queue_for(exchange))
        listed = cluster.nodes.index(leader) + 1
        load = Load(bus, f"{name}.echo").start()
        killed_at: list[float] = []

        def fault() -> None:
            killed_at.append(time.monotonic())
            cluster.kill(leader)

        run_through_fault(load, fault, served,
                          f"run {run}: the quorum queue's leader (node {listed} of the URL) killed")
        print("\n".join(timeline(load, killed_at[0])))
    leader.log.close()
    leader.start(timeout=120)  # rejoins the cluster with its data
    time.sleep(5)  # and its quorum queue members catch up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="busapp-failover-"))
    cluster = RabbitCluster(workdir)
    try:
        cluster.start()
        print(f"3-node cluster built in {cluster.built_in:.0f} s")
        for run in range(1, args.runs + 1):
            one_run(cluster, workdir, run)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
