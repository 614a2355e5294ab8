"""CPU cost of signing one call (busapp.security), without the broker; and the Redis claim.

Run by hand (never from the test suite)::

    .venv/bin/python benchmarks/signing.py                       # this tree
    .venv/bin/python benchmarks/signing.py --baseline main       # before/after, one run
    .venv/bin/python benchmarks/signing.py --redis-url redis://127.0.0.1:6379/0

One call = the client signs the request (it carries a deadline header), the worker
verifies it and checks its replay memory, the worker signs the reply, the client verifies
it. Each tree is measured in its own subprocess (``--baseline REF``: busapp as of git REF,
exported to a temporary directory), the passes alternating between the trees so drift on
a shared machine hits both alike; the figure is the median pass.

With a Redis URL, a last row gives what a keyed worker adds per request on Redis now that
the replay memory lives in the broker: one ``SET key owner NX PX ttl``, measured through
busapp's transport (wall time per claim, and this process's CPU per claim).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # rpc

import rpc  # noqa: E402

CALLS = 20000


def measure(calls: int) -> float:
    """CPU µs of one call's signing work, with the busapp this process imports."""
    try:
        from busapp.core import wire
        from busapp.runtime.gate import ReplayGuard
    except ImportError:  # a --baseline from before the package's re-lay
        from busapp import wire  # type: ignore[no-redef]
        from busapp.security import ReplayGuard  # type: ignore[no-redef]
    from busapp.security import Keyring, signer, verify

    keyring = Keyring({"bench": "bench-secret-0123456789abcdef"})
    key = keyring.key("bench")
    guard = ReplayGuard()
    body = wire.dumps(wire.encode_request("echo", {"data": {"n": 1, "s": "x" * 40}},
                                          "0123456789abcdef0123456789abcdef")).encode()
    reply = b'{"jsonrpc":"2.0","id":"0123456789abcdef0123456789abcdef","result":{"data":{"n":1}}}'
    deadline = time.time() + 10

    def one(i: int) -> None:
        h = signer(key, body, "bench.echo", "busapp.reply.abc", str(i),
                   {"x-busapp-deadline": deadline})
        verify(keyring, h, body, "bench.echo", "busapp.reply.abc", str(i))
        guard.first_time(h, queue="bench")
        r = signer(key, reply, "busapp.reply.abc", None, str(i), None)
        verify({"bench": key[1]}, r, reply, "busapp.reply.abc", None, str(i))

    for i in range(2000):
        one(i)
    started = time.process_time()
    for i in range(calls):
        one(10**6 + i)
    return (time.process_time() - started) / calls * 1e6


def one_pass(tree: Path, calls: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, __file__, "--measure", str(calls)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)["us"])


def claim_cost(url: str, count: int = 2000) -> tuple[float, float]:
    """(wall µs, CPU µs) of one replay claim on the Redis at ``url``, through busapp."""
    from busapp.transport.kombu_transport import KombuTransport

    transport = KombuTransport(url)
    transport.connect()
    try:
        prefix = f"busapp.replay.bench-{uuid.uuid4().hex[:8]}."
        for i in range(200):
            transport.claim(f"{prefix}warm{i}", 2.0)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(count):
            transport.claim(f"{prefix}{i}", 2.0)
        return ((time.perf_counter() - wall) / count * 1e6,
                (time.process_time() - cpu) / count * 1e6)
    finally:
        transport.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", metavar="REF", help="also measure busapp as of this git ref")
    p.add_argument("--repeat", type=int, default=5, help="passes per tree (5)")
    p.add_argument("--calls", type=int, default=CALLS, help=f"calls per pass ({CALLS})")
    p.add_argument("--redis-url", help="also measure one replay claim on this Redis")
    p.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps({"us": measure(args.measure)}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": HERE.parent}
        if args.baseline:
            baseline = rpc.export_baseline(args.baseline, Path(tmp))
            trees = {f"baseline ({args.baseline})": baseline, **trees}
        passes: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, tree in trees.items():
                passes[name].append(one_pass(tree, args.calls))
    print(f"signing work per call (2 signs, 2 verifies, 1 replay check), CPU µs, "
          f"median of {args.repeat} passes of {args.calls} calls")
    print()
    print("| busapp | µs per call | passes |")
    print("|---|---:|---|")
    for name, figures in passes.items():
        print(f"| {name} | {statistics.median(figures):.1f} | "
              f"{', '.join(f'{f:.1f}' for f in figures)} |")
    if args.redis_url:
        wall, cpu = claim_cost(args.redis_url)
        print(f"| + replay claim on Redis (SET NX PX), this tree | {wall:.0f} wall, {cpu:.0f} CPU "
              f"| one per signed request |")


if __name__ == "__main__":
    main()
