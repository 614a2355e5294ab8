#!/usr/bin/env python
"""Profile one side of the echo RPC with py-spy (profiling only: ``pip install py-spy``).

Starts an echo server (busapp or raw kombu, from ``benchmarks/rpc.py``), runs a client for
``--seconds`` with ``--threads`` calls in flight, records both processes with
``py-spy record --format raw`` (collapsed stacks, idle threads excluded), and prints the
functions with the most samples, inclusive and self, for the server and the client.

    .venv/bin/python benchmarks/profile_rpc.py --broker redis --impl busapp
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rpc  # noqa: E402


def summarize(path: Path, top: int, match: str | None) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        for frame in dict.fromkeys(frames):
            inclusive[frame] += n
        self_[frames[-1]] += n
    out = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", self_)):
        out.append(f"-- top {top} {title}")
        rows = [(f, n) for f, n in counter.most_common() if not match or match in f]
        for frame, n in rows[:top]:
            out.append(f"{100 * n / max(total, 1):5.1f}%  {frame}")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", choices=("redis", "amqp"), default="redis")
    p.add_argument("--url", default=None)
    p.add_argument("--impl", choices=rpc.IMPLS, default="busapp")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--rate", type=int, default=500, help="py-spy samples/s")
    p.add_argument("--gil", action="store_true",
                   help="only sample the thread holding the GIL (Python CPU)")
    a = p.parse_args()
    url = a.url or rpc.DEFAULT_URLS[a.broker]
    tmp = Path(tempfile.mkdtemp(prefix="busapp-prof-"))
    exchange = f"bench.{uuid.uuid4().hex[:8]}"
    server = rpc.Server(a.impl, url, exchange, 1, tmp)
    spies = []
    try:
        server.wait_ready()
        client = subprocess.Popen(
            [sys.executable, rpc.__file__, "_client", "--impl", a.impl, "--url", url,
             "--exchange", exchange, "--name", server.name, "--threads", str(a.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert client.stdout.readline().strip() == "READY"
        for who, pid in (("server", server.proc.pid), ("client", client.pid)):
            out = tmp / f"{who}.txt"
            spies.append((who, out, subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
                 "--rate", str(a.rate), "--duration", str(int(a.seconds) + 1), "--nonblocking"]
                + (["--gil"] if a.gil else []),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
            )))
        time.sleep(0.5)
        t0 = time.monotonic() + 0.1
        client.stdin.write(f"{t0} {t0 + a.seconds}\n")
        client.stdin.flush()
        result = client.stdout.readline()
        client.wait(20)
        rate = len(result) and __import__('json').loads(result)['count'] / a.seconds
        print(f"{a.impl} on {a.broker}: {rate:.0f} calls/s"
              " (under py-spy)")
        for who, out, spy in spies:
            spy.wait(30)
            print(f"\n=== {who}")
            print(summarize(out, a.top, None))
    finally:
        for _, _, spy in spies:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
                spy.wait(10)
        server.stop()
        rpc.cleanup(a.broker, url, exchange, [server.name])
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
