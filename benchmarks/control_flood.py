"""A flood of unsigned control requests against one worker of an App with a keyring.

Run by hand (never from the test suite)::

    .venv/bin/python benchmarks/control_flood.py                     # Redis and RabbitMQ
    .venv/bin/python benchmarks/control_flood.py --baseline main     # and busapp as of main
    .venv/bin/python benchmarks/control_flood.py --broker redis --count 5000

What an attacker with a broker account but no key can send: ``--count`` unsigned
``rpc.status`` requests with routing key ``busapp-control.<service>``, their ``reply_to``
spread over 10 plain queues of its own. For each server, one process serving one queue:

- busapp (this tree, and ``--baseline REF`` if given): ``App(..., keyring=...)``, one worker;
- raw kombu: a consumer that acks each message and does nothing else (the floor of
  taking that many messages off the broker at all).

Printed per server: the worker's CPU seconds spent on the flood (``/proc/<pid>/stat``, from
before the first request until its control queue is empty and its CPU stands still), µs
per request, its RSS before and after, the answers that landed in the attacker's 10
queues, and the lines the worker logged meanwhile.
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
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # rpc

import rpc  # noqa: E402
KEYS = {"ops": "flood-secret-0123456789"}

BUSAPP_WORKER = """
import os, sys
import busapp
print('{"event": "busapp from", "path": "%s"}' % busapp.__file__, flush=True)
from busapp import App
from busapp.log import configure_logging
from busapp.security import Keyring

configure_logging("info", fmt="json")
app = App(os.environ["FLOOD_NAME"], keyring=Keyring({"ops": os.environ["FLOOD_SECRET"]}))

@app.method()
def ping() -> str:
    return "pong"

app.run(os.environ["FLOOD_URL"], exchange=os.environ["FLOOD_EXCHANGE"])
"""

RAW_WORKER = """
import os, sys
from kombu import Connection, Exchange, Queue
url, exchange = os.environ["FLOOD_URL"], os.environ["FLOOD_EXCHANGE"]
name = os.environ["FLOOD_NAME"]
with Connection(url) as conn:
    queue = Queue("raw." + name, Exchange(exchange, "topic", durable=True),
                  routing_key="busapp-control." + name, durable=False, auto_delete=True)
    def on_message(body, message):
        message.ack()
    with conn.Consumer(queue, callbacks=[on_message], accept=["json", "application/json"]):
        print('{"event": "worker ready"}', flush=True)
        while True:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """One worker process (busapp or raw kombu), logging to a file."""

    def __init__(self, code: str, url: str, exchange: str, name: str, log: Path,
                 pythonpath: Path | None) -> None:
        env = dict(os.environ, FLOOD_URL=url, FLOOD_EXCHANGE=exchange, FLOOD_NAME=name,
                   FLOOD_SECRET=KEYS["ops"], PYTHONUNBUFFERED="1")
        env = {k: v for k, v in env.items() if not k.startswith("BUSAPP_")}
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        self.log = log
        with open(log, "wb") as out:  # run from the log's directory: "-c" puts the current
            # directory first on sys.path, and the project's would shadow the baseline's busapp
            self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=log.parent)

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                found.append(record)
        return found

    def wait_ready(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while not any(r.get("event") == "worker ready" for r in self.lines()):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"server not ready:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.5)  # its other start-up work settles

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def depth(conn: Any, queue: str, redis: bool) -> int:
    """Messages waiting in ``queue`` (a channel of its own: a failed passive declare closes it;
    each kombu Redis channel holds a connection pool, so it is closed after)."""
    channel = conn.channel()
    try:
        if redis:
            return int(channel.client.llen(queue))
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception:  # noqa: BLE001 - gone (auto-deleted) counts as empty
        return 0
    finally:
        channel.close()


def flood(url: str, kind: str, server_kind: str, count: int, tmp: Path,
          baseline: Path | None) -> dict[str, Any]:
    from kombu import Connection, Producer, Queue

    name = f"flood{uuid.uuid4().hex[:8]}"
    exchange = f"bench-{name}"
    code = RAW_WORKER if server_kind == "raw" else BUSAPP_WORKER
    tree = baseline if server_kind == "base" else HERE.parent
    server = Server(code, url, exchange, name, tmp / f"{kind}-{server_kind}.log",
                    None if server_kind == "raw" else tree)
    redis = kind == "redis"
    with Connection(url) as conn:
        channel = conn.channel()  # one: every kombu Redis channel holds a connection pool
        loot = [Queue(f"loot-{name}-{i}", durable=False) for i in range(10)]
        for queue in loot:
            queue(channel).declare()
        try:
            server.wait_ready()
            imported = [r["path"] for r in server.lines() if r.get("event") == "busapp from"]
            if server_kind != "raw" and not imported[0].startswith(str(tree)):
                raise RuntimeError(f"{server_kind} worker imported busapp from {imported[0]}")
            pid = server.proc.pid
            logged_before = len(server.lines())
            queue_name = _control_queue(server_kind, name, pid)
            cpu0, rss0 = cpu_seconds(pid), rss_mb(pid)
            producer = Producer(channel)
            for i in range(count):
                body = json.dumps({"jsonrpc": "2.0", "id": f"f{i}", "method": "rpc.status"})
                producer.publish(body.encode(), exchange=exchange,
                                 routing_key=f"busapp-control.{name}",
                                 reply_to=loot[i % 10].name, correlation_id=f"f{i}",
                                 content_type="application/json", content_encoding="utf-8")
            last, still = cpu_seconds(pid), 0
            while still < 3:  # drained, and the CPU stood still for three looks
                time.sleep(0.3)
                now = cpu_seconds(pid)
                waiting = depth(conn, queue_name, redis)
                still = still + 1 if now == last and waiting == 0 else 0
                last = now
            cpu, rss1 = cpu_seconds(pid) - cpu0, rss_mb(pid)
            pushed = sum(_drain(channel, queue) for queue in loot)
            logged = len(server.lines()) - logged_before
        finally:
            server.stop()
            for queue in loot:
                try:
                    queue(channel).delete()
                except Exception:  # noqa: BLE001 - best effort
                    pass
            if redis:
                channel.client.delete(f"_kombu.binding.{exchange}",
                                      f"_kombu.binding_permanent.{exchange}")
    return {"cpu": cpu, "per": cpu / count * 1e6, "rss0": rss0, "rss1": rss1,
            "pushed": pushed, "logged": logged}


def _control_queue(server_kind: str, name: str, pid: int) -> str:
    """The queue the flood lands in: the worker's own control queue, or raw kombu's."""
    import socket

    return f"raw.{name}" if server_kind == "raw" else \
        f"busapp.control.{name}.{socket.gethostname()}.{pid}"


def _drain(channel: Any, queue: Any) -> int:
    found = 0
    bound = queue(channel)
    while bound.get(no_ack=True) is not None:
        found += 1
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", choices=("redis", "amqp", "all"), default="all")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--count", type=int, default=5000, help="unsigned requests (5000)")
    p.add_argument("--baseline", metavar="REF", help="also flood busapp as of this git ref")
    args = p.parse_args()
    kinds = ["redis", "amqp"] if args.broker == "all" else [args.broker]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        baseline = rpc.export_baseline(args.baseline, tmp) if args.baseline else None
        servers = ["busapp"] + (["base"] if baseline else []) + ["raw"]
        for kind in kinds:
            url = args.redis_url if kind == "redis" else args.amqp_url
            for server in servers:
                rows.append((kind, server, flood(url, kind, server, args.count, tmp, baseline)))
    label = {"busapp": "busapp, this tree", "base": f"busapp as of {args.baseline}",
             "raw": "raw kombu (ack only)"}
    print(f"{args.count} unsigned rpc.status requests, reply_to over 10 plain queues, "
          f"one worker of an App with a keyring")
    print()
    print("| broker | server | worker CPU s | µs per request | RSS before -> after (MB) "
          "| answers in the 10 queues | log lines |")
    print("|---|---|---:|---:|---|---:|---:|")
    for kind, server, r in rows:
        print(f"| {kind} | {label[server]} | {r['cpu']:.2f} | {r['per']:.0f} | "
              f"{r['rss0']:.1f} -> {r['rss1']:.1f} | {r['pushed']} | {r['logged']} |")


if __name__ == "__main__":
    main()
