"""How often a captured signed request runs when an attacker re-publishes it, per broker.

Run by hand (never from the test suite)::

    .venv/bin/python benchmarks/replay.py                        # Redis and RabbitMQ
    .venv/bin/python benchmarks/replay.py --workers 3 --copies 10 --rounds 5

``busapp run --workers N --keyring FILE`` serves an App whose method records each run
(with the worker's pid). A keyed client calls it once; an attacker with a queue bound to
``#`` captures that request and publishes it again ``--copies`` times, headers intact
(its signed deadline 30 s away). Printed per broker: the runs of each round (1 is the
original alone), and the most runs one worker made (at most 1 means no worker ran the
request twice).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

SERVICE = '''
import os
from busapp import App

app = App({name!r})


@app.method()
def bump(tag: str) -> int:
    with open({ran!r}, "a") as f:
        f.write(f"{{tag}} {{os.getpid()}}\\n")
    return os.getpid()
'''


def one_round(url: str, workers: int, copies: int, tmp: Path) -> list[int]:
    """The pids of the runs of one captured request (original and copies)."""
    from kombu import Connection, Exchange, Producer, Queue

    from busapp import Client

    name = f"replay{uuid.uuid4().hex[:8]}"
    exchange = f"bench-{name}"
    ran = tmp / f"{name}.ran"
    module = tmp / f"{name}.py"
    module.write_text(SERVICE.format(name=name, ran=str(ran)))
    keys = tmp / "keys.txt"
    keys.write_text("ops:replay-secret\n")
    keys.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSAPP_")}
    log = open(tmp / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "busapp", "run", str(module), "--workers",
                             str(workers), "--keyring", str(keys), "--broker", url,
                             "--exchange", exchange, "--log-format", "json"], cwd=tmp, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(tmp / f"{name}.log", workers)
        with Connection(url) as conn:
            channel = conn.channel()  # one: each kombu Redis channel holds a connection pool
            capture = Queue(f"capture-{name}", Exchange(exchange, "topic", durable=True),
                            routing_key=f"{name}.bump", durable=False)(channel)
            capture.declare()
            with Client(url, exchange, timeout=30, key=("ops", "replay-secret")) as bus:
                bus.call(f"{name}.bump", "original")
            message = None
            while message is None:
                message = capture.get(no_ack=True)
            producer = Producer(channel)
            for _ in range(copies):
                producer.publish(message.body, exchange=exchange, routing_key=f"{name}.bump",
                                 headers=message.headers,
                                 reply_to=message.properties.get("reply_to"),
                                 correlation_id=message.properties.get("correlation_id"),
                                 content_type="application/json", content_encoding="utf-8")
            time.sleep(3.0)
            capture.delete()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        log.close()
        _clean(url, exchange, f"{exchange}.{name}")
    return [int(line.split()[1]) for line in ran.read_text().splitlines()]


def _clean(url: str, exchange: str, queue: str) -> None:
    """Delete the service's queue and exchange (on Redis, kombu's binding table too)."""
    from kombu import Connection, Exchange, Queue

    with Connection(url) as conn:
        channel = conn.channel()
        for entity in (Queue(queue), Exchange(exchange, "topic")):
            try:
                entity(channel).delete()
            except Exception:  # noqa: BLE001 - best effort
                channel = conn.channel()
        if url.startswith("redis"):
            channel.client.delete(f"_kombu.binding.{exchange}",
                                  f"_kombu.binding_permanent.{exchange}")


def _wait_ready(log: Path, workers: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready = set()
        for line in log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == "worker ready":
                ready.add(record.get("pid"))
        if len(ready) >= workers:
            time.sleep(0.5)
            return
        time.sleep(0.1)
    raise RuntimeError(f"workers not ready:\n{log.read_text()[-2000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", choices=("redis", "amqp", "all"), default="all")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--copies", type=int, default=10, help="re-publications per round (10)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    kinds = ["redis", "amqp"] if args.broker == "all" else [args.broker]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            url = args.redis_url if kind == "redis" else args.amqp_url
            rounds = [one_round(url, args.workers, args.copies, Path(tmp))
                      for _ in range(args.rounds)]
            rows.append((kind, rounds))
    print(f"one signed call, then {args.copies} re-publications of it, {args.workers} workers, "
          f"{args.rounds} rounds")
    print()
    print("| broker | runs per round (original included) | most runs by one worker |")
    print("|---|---|---:|")
    for kind, rounds in rows:
        most = max(max(pids.count(p) for p in pids) for pids in rounds)
        print(f"| {kind} | {', '.join(str(len(pids)) for pids in rounds)} | {most} |")


if __name__ == "__main__":
    main()
