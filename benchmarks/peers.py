#!/usr/bin/env python
"""Peers on the same echo RPC as ``benchmarks/rpc.py``: FastStream and Nameko, measured alike.

Echo RPC with a 64-byte JSON payload (``{"data": "a" * 53}`` in, the same back), for each peer on
the brokers it supports:

- FastStream (``faststream[redis,rabbit]``) request/reply: ``await broker.request(...)`` against a
  ``@broker.subscriber`` that returns the body. Redis: a list subscriber (competing consumers,
  so a second worker shares the load; each request waits for its reply on a Pub/Sub channel of
  its own). RabbitMQ: a queue subscriber, replies by Direct Reply-To.
- Nameko (RabbitMQ RPC): an ``@rpc`` service run by ``ServiceRunner`` (eventlet), called from a
  ``nameko.standalone.rpc.ClusterRpcProxy`` (``call_async`` keeps several calls in flight).

Scenarios, as in rpc.py: ``sequential w1`` (one client process, one call in flight: calls/s and
latency p50/p99), ``4x8 w1`` and ``4x8 w2`` (4 client processes x 8 calls in flight each, against a
server of 1 and of 2 worker processes). CPU ms per call is read from ``/proc/<pid>/stat``
(utime + stime) for the server's process tree, the client processes and the broker (the broker is
shared with whatever else runs on the machine; its figure is only a hint). Figures are medians
over ``--repeat`` passes (3; ``--quick``: 1 pass, 1.5 s windows).

FastStream's servers run with its per-message access log off (``logger=None``), since busapp logs
nothing per call at its default level; ``BENCH_PEERS_FS_LOG=1`` keeps FastStream's default (two
INFO lines per message, here written to a file), which costs it roughly 0.2-0.3 ms of server CPU
per call. Nameko logs nothing per call by default.

The peers are never dependencies of busapp: they live in a venv of their own, by default
``.venv-peers/`` in the repository (git ignores it; ``$BUSAPP_PEERS_VENV`` or ``--venv``
name another place), built from ``benchmarks/requirements-peers.txt`` on first use and
rebuilt when that file changes (:func:`ensure_venv`; pip needs to reach PyPI once)::

    .venv/bin/python benchmarks/peers.py [--broker redis|amqp|all] [--quick]  # makes the venv
    .venv/bin/python benchmarks/rpc.py --peers       # busapp, raw kombu and the peers alternating
    python benchmarks/peers.py --python /path/to/venv/bin/python               # a venv of your own

This file's orchestration uses the standard library only, so any Python can run it (busapp's venv
included) and import :func:`run_peers`; the servers and clients run as subprocesses under
``--python`` (the peers' venv). Every run uses fresh queue/exchange names and deletes them after.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: The peers' requirements and, unless $BUSAPP_PEERS_VENV says otherwise, their venv.
REQUIREMENTS = HERE / "requirements-peers.txt"
DEFAULT_VENV = HERE.parent / ".venv-peers"
VENV_ENV = "BUSAPP_PEERS_VENV"
PAYLOAD = {"data": "a" * 53}
assert len(json.dumps(PAYLOAD, separators=(",", ":"))) == 64

DEFAULT_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "amqp": "amqp://guest:guest@127.0.0.1:5672//",
}
#: (peer, broker) pairs measured, in table order.
PEERS = (("faststream", "redis"), ("faststream", "amqp"), ("nameko", "amqp"))
CLIENTS, INFLIGHT = 4, 8
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Set to 1 to keep FastStream's per-message access log on the server (off by default).
FS_LOG_ENV = "BENCH_PEERS_FS_LOG"
#: What a server worker prints once it consumes.
READY = "PEERS-READY"


# ---------------------------------------------------------------------------------------------
# the peers' venv


def ensure_venv(venv: str | Path | None = None) -> str:
    """The python of the peers' venv at ``venv`` (default ``$BUSAPP_PEERS_VENV``, else
    ``.venv-peers/`` in the repository), made with pip from :data:`REQUIREMENTS` if it is
    missing or was made from another version of that file."""
    import hashlib

    path = Path(venv or os.environ.get(VENV_ENV) or DEFAULT_VENV)
    python = path / "bin" / "python"
    stamp = path / ".requirements-sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return str(python)
    print(f"# peers: building {path} from {REQUIREMENTS.name} (pip, a minute or two)",
          file=sys.stderr, flush=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", "--clear", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                   check=True)
    stamp.write_text(wanted + "\n")
    return str(python)


# ---------------------------------------------------------------------------------------------
# /proc (same reading as rpc.py)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def broker_pids(kind: str, url: str) -> list[int]:
    """Pids whose CPU counts as the broker's (may be empty)."""
    from urllib.parse import urlsplit

    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    if kind == "amqp":
        return [p for p in pids if _read(f"/proc/{p}/comm") == "beam.smp"]
    port = urlsplit(url).port or 6379
    return [p for p in pids if _read(f"/proc/{p}/comm") == "redis-server"
            and f":{port}" in _read(f"/proc/{p}/cmdline")]


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


# ---------------------------------------------------------------------------------------------
# child processes (these run under the peers' python)


def _faststream_broker(kind: str, url: str, **kwargs: Any) -> Any:
    if kind == "redis":
        from faststream.redis import RedisBroker

        return RedisBroker(url, **kwargs)
    from faststream.rabbit import RabbitBroker

    return RabbitBroker(url, **kwargs)


def _serve_faststream(kind: str, url: str, name: str) -> None:
    import asyncio

    from faststream import FastStream

    # FastStream logs two lines per message (received, processed) at INFO to stdout by default;
    # busapp logs nothing per call at its default level, so the access log is off here, as its
    # docs show (``logger=None``). BENCH_PEERS_FS_LOG=1 keeps it (written to the server's log file).
    kwargs = {} if os.environ.get(FS_LOG_ENV) == "1" else {"logger": None}
    broker = _faststream_broker(kind, url, **kwargs)
    if kind == "redis":
        subscriber = broker.subscriber(list=name)
    else:
        from faststream.rabbit import RabbitQueue

        subscriber = broker.subscriber(RabbitQueue(name, auto_delete=True))

    @subscriber
    async def echo(body: dict) -> dict:
        return {"data": body["data"]}

    app = FastStream(broker)

    @app.after_startup
    def ready() -> None:
        print(READY, flush=True)

    asyncio.run(app.run())


def _serve_nameko(url: str, name: str, exchange: str) -> None:
    import eventlet

    eventlet.monkey_patch()
    from nameko.rpc import rpc
    from nameko.runners import ServiceRunner

    def echo(self: Any, data: Any) -> Any:
        return {"data": data}

    service = type("Echo", (), {"name": name, "echo": rpc(echo)})
    runner = ServiceRunner(config={"AMQP_URI": url, "rpc_exchange": exchange})
    runner.add_service(service)
    runner.start()
    print(READY, flush=True)
    # As `nameko run` does: a signal makes the runner stop gracefully.
    signal.signal(signal.SIGTERM, lambda *_: eventlet.spawn_n(runner.stop))
    signal.signal(signal.SIGINT, lambda *_: eventlet.spawn_n(runner.stop))
    runner.wait()


def _serve_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="peers.py _serve")
    p.add_argument("--peer", required=True)
    p.add_argument("--broker", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    if a.workers > 1:  # a process tree: one worker process per worker, each READY on our stdout
        argv1 = [sys.executable, __file__, "_serve", "--peer", a.peer, "--broker", a.broker,
                 "--url", a.url, "--name", a.name, "--exchange", a.exchange, "--workers", "1"]
        children = [subprocess.Popen(argv1, stdin=subprocess.DEVNULL) for _ in range(a.workers)]
        stopping = []

        def stop(*_: Any) -> None:
            stopping.append(1)
            for c in children:
                if c.poll() is None:
                    c.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        stop()
        for c in children:
            try:
                c.wait(15)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        return
    if a.peer == "faststream":
        _serve_faststream(a.broker, a.url, a.name)
    else:
        _serve_nameko(a.url, a.name, a.exchange)


def _timed_window() -> tuple[float, float]:
    t0, t1 = map(float, sys.stdin.readline().split())
    return t0, t1


def _client_faststream(a: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    async def main() -> dict[str, Any]:
        broker = _faststream_broker(a.broker, a.url)
        async with broker:
            await broker.start()
            if a.broker == "redis":
                async def call() -> Any:
                    msg = await broker.request(PAYLOAD, list=a.name, timeout=30)
                    return await msg.decode()
            else:
                async def call() -> Any:
                    msg = await broker.request(PAYLOAD, queue=a.name, timeout=30)
                    return await msg.decode()

            for _ in range(a.warmup):
                got = await call()
                assert got == PAYLOAD, got
            print("READY", flush=True)
            t0, t1 = await asyncio.get_running_loop().run_in_executor(None, _timed_window)
            errors = [0]

            async def loop(out: list[float]) -> None:
                delay = t0 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                while True:
                    start = time.monotonic()
                    if start >= t1:
                        return
                    try:
                        await call()
                    except Exception as exc:  # noqa: BLE001 - counted, not fatal
                        errors[0] += 1
                        if errors[0] <= 3:
                            print(f"call failed: {exc!r}", file=sys.stderr, flush=True)
                        continue
                    end = time.monotonic()
                    if t0 <= start and end <= t1:
                        out.append(end - start)

            lats: list[list[float]] = [[] for _ in range(a.inflight)]
            await asyncio.gather(*(loop(lat) for lat in lats))
            return {"lat": [x for lat in lats for x in lat], "errors": errors[0]}

    return asyncio.run(main())


def _client_nameko(a: argparse.Namespace) -> dict[str, Any]:
    from collections import deque

    from nameko.standalone.rpc import ClusterRpcProxy

    config = {"AMQP_URI": a.url, "rpc_exchange": a.exchange}
    proxy = ClusterRpcProxy(config, timeout=30)
    cluster = proxy.start()
    method = cluster[a.name].echo
    try:
        for _ in range(a.warmup):
            got = method(**PAYLOAD)
            assert got == PAYLOAD, got
        print("READY", flush=True)
        t0, t1 = _timed_window()
        delay = t0 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        lat: list[float] = []
        errors = 0
        # `inflight` calls kept in flight with call_async; replies are taken in the order sent
        # (the proxy buffers replies that arrive out of order).
        pending: deque = deque()
        while True:
            now = time.monotonic()
            while now < t1 and len(pending) < a.inflight:
                pending.append((now, method.call_async(**PAYLOAD)))
            if not pending:
                break
            start, reply = pending.popleft()
            try:
                reply.result()
            except Exception as exc:  # noqa: BLE001 - counted, not fatal
                errors += 1
                if errors <= 3:
                    print(f"call failed: {exc!r}", file=sys.stderr, flush=True)
                continue
            end = time.monotonic()
            if t0 <= start and end <= t1:
                lat.append(end - start)
        return {"lat": lat, "errors": errors}
    finally:
        queue = proxy._reply_listener.queue.name
        proxy.stop()
        try:  # the reply queue would expire by itself (x-expires); do not leave it meanwhile
            from kombu import Connection

            with Connection(a.url) as conn:
                conn.default_channel.queue_delete(queue)
        except Exception:  # noqa: BLE001
            pass


def _client_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="peers.py _client")
    p.add_argument("--peer", required=True)
    p.add_argument("--broker", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    a = p.parse_args(argv)
    out = _client_faststream(a) if a.peer == "faststream" else _client_nameko(a)
    print(json.dumps({"count": len(out["lat"]), **out}), flush=True)


def _cleanup_main(argv: list[str]) -> None:
    """Delete a run's queues/keys and exchange (run under the peers' python)."""
    p = argparse.ArgumentParser(prog="peers.py _cleanup")
    p.add_argument("--broker", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", default="")
    p.add_argument("queues", nargs="*")
    a = p.parse_args(argv)
    if a.broker == "redis":
        import redis

        client = redis.Redis.from_url(a.url)
        if a.queues:
            client.delete(*a.queues)
        client.close()
        return
    from kombu import Connection

    with Connection(a.url) as conn:
        for q in a.queues:
            try:
                conn.default_channel.queue_delete(q)
            except Exception:  # noqa: BLE001 - not there (auto-deleted)
                conn.close()
                conn.connect()
        if a.exchange:
            try:
                conn.default_channel.exchange_delete(a.exchange)
            except Exception:  # noqa: BLE001
                pass


# ---------------------------------------------------------------------------------------------
# the parent: orchestration (standard library only)


class Server:
    """One peer's echo server: a process, or a tree of ``workers`` processes."""

    def __init__(self, python: str, peer: str, kind: str, url: str, name: str, exchange: str,
                 workers: int, logdir: Path) -> None:
        self.python, self.peer, self.kind, self.url = python, peer, kind, url
        self.name, self.exchange, self.workers = name, exchange, workers
        self.logpath = logdir / f"{name}_w{workers}.log"
        self.log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "_serve", "--peer", peer, "--broker", kind,
             "--url", url, "--name", name, "--exchange", exchange, "--workers", str(workers)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for a READY line in the log from each worker (printed once it consumes)."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(READY) < self.workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer} {self.kind} server not ready: {self.log_tail()}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def log_text(self) -> str:
        self.log.flush()
        return self.logpath.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log_text()[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(5)
        self.log.close()


def measure(server: Server, clients: int, inflight: int, duration: float, broker: list[int],
            warmup: int) -> dict[str, float]:
    """One timed window: calls/s, latency percentiles, CPU ms per call by party."""
    errlog = tempfile.TemporaryFile("w+")
    procs = [
        subprocess.Popen(
            [server.python, str(Path(__file__).resolve()), "_client", "--peer", server.peer,
             "--broker", server.kind, "--url", server.url, "--name", server.name,
             "--exchange", server.exchange, "--inflight", str(inflight), "--warmup", str(warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, text=True,
        )
        for _ in range(clients)
    ]

    def stderr_tail() -> str:
        errlog.flush()
        errlog.seek(0)
        return "".join(line for line in errlog if "eventlet" not in line.lower())[-2000:]

    def next_line(proc: subprocess.Popen, want: str) -> str:
        """The next stdout line of ``proc`` that starts with ``want`` (other output skipped)."""
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{server.peer} {server.kind} client failed: {stderr_tail()}"
                                   f"\nserver log ends:\n{server.log_tail()}")
            if line.startswith(want):
                return line

    failed = True
    try:
        for proc in procs:
            next_line(proc, "READY")
        t0 = time.monotonic() + 0.25
        t1 = t0 + duration
        for proc in procs:
            proc.stdin.write(f"{t0} {t1}\n")
            proc.stdin.flush()
        client_pids = [p.pid for p in procs]
        server_pids = server.pids()
        time.sleep(max(0.0, t0 - time.monotonic()))
        before = (_cpu(client_pids), _cpu(server_pids), _cpu(broker))
        time.sleep(max(0.0, t1 - time.monotonic()))
        after = (_cpu(client_pids), _cpu(server_pids), _cpu(broker))
        results = [json.loads(next_line(proc, "{")) for proc in procs]
        failed = False
    finally:
        for proc in procs:
            if failed and proc.poll() is None:
                proc.kill()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except Exception:  # noqa: BLE001
                    pass
    errors = stderr_tail() if any(r["errors"] for r in results) else ""
    errlog.close()
    if errors:
        print(f"# {server.peer} {server.kind} client errors:\n{errors}", file=sys.stderr)
    count = sum(r["count"] for r in results)
    lat = sorted(x for r in results for x in r["lat"])
    per_call = [(b - a) * 1000 / max(count, 1) for a, b in zip(before, after, strict=True)]
    return {
        "calls_s": count / duration,
        "p50_ms": lat[len(lat) // 2] * 1000 if lat else float("nan"),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan"),
        "cpu_ms_client": per_call[0],
        "cpu_ms_server": per_call[1],
        "cpu_ms_broker": per_call[2],
        "errors": sum(r["errors"] for r in results),
    }


def _cleanup(python: str, kind: str, url: str, exchange: str, queues: list[str]) -> None:
    args = [python, str(Path(__file__).resolve()), "_cleanup", "--broker", kind, "--url", url]
    if exchange:
        args += ["--exchange", exchange]
    r = subprocess.run(args + queues, capture_output=True, text=True, timeout=60)
    if r.returncode:
        print(f"# peers: cleanup on {kind} failed: {r.stderr[-500:]}", file=sys.stderr)


def bench_peer(python: str, peer: str, kind: str, url: str, *, repeat: int, duration: float,
               seq_duration: float, warmup: int, logdir: Path,
               verbose: bool = False) -> list[dict[str, Any]]:
    """All scenarios of one peer on one broker; a dict per scenario (medians over ``repeat``)."""
    broker = broker_pids(kind, url)
    tag = uuid.uuid4().hex[:8]
    name = f"peers_{peer}_{tag}"
    exchange = f"peers.{peer}.{tag}" if peer == "nameko" else ""
    # What each run declares on the broker, deleted afterwards (FastStream's Rabbit queue is
    # also auto-delete; Redis reply channels are Pub/Sub and leave nothing behind).
    queues = [f"rpc-{name}"] if peer == "nameko" else [name]
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for workers in (1, 2):
            server = Server(python, peer, kind, url, name, exchange or "-", workers, logdir)
            try:
                server.wait_ready()
                scenarios = [(f"{CLIENTS}x{INFLIGHT} w{workers}", CLIENTS, INFLIGHT, duration)]
                if workers == 1:
                    scenarios.insert(0, ("sequential w1", 1, 1, seq_duration))
                for rep in range(repeat):
                    for label, clients, inflight, dur in scenarios:
                        fig = measure(server, clients, inflight, dur, broker, warmup)
                        runs.setdefault(label, []).append(fig)
                        if verbose:
                            print(f"# {peer} {kind} {label} pass {rep + 1}: "
                                  + ", ".join(f"{k}={v:.3g}" for k, v in fig.items()),
                                  file=sys.stderr, flush=True)
            finally:
                server.stop()
    finally:
        _cleanup(python, kind, url, exchange, queues)
    out = []
    for label, figs in runs.items():
        row: dict[str, Any] = {"peer": peer, "broker": kind, "scenario": label}
        row.update({k: statistics.median(f[k] for f in figs) for k in figs[0]})
        out.append(row)
    return out


def run_peers(python: str, brokers: list[str], quick: bool, *, urls: dict[str, str] | None = None,
              repeat: int | None = None, duration: float | None = None,
              verbose: bool = False) -> list[dict[str, Any]]:
    """Measure every peer on ``brokers`` ("redis", "amqp") with servers/clients run by ``python``.

    Returns one dict per (peer, broker, scenario): peer, broker, scenario ("sequential w1",
    "4x8 w1", "4x8 w2"), calls_s, p50_ms, p99_ms, cpu_ms_server, and also cpu_ms_client,
    cpu_ms_broker and errors. A peer that fails gets a row with an "error" key instead (scenario
    "-"), so one failure does not lose the others.
    """
    urls = {**DEFAULT_URLS, **(urls or {})}
    repeat = repeat or (1 if quick else 3)
    duration = duration or (1.5 if quick else 3.0)
    warmup = 5 if quick else 20
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="busapp-peers-") as tmp:
        for peer, kind in PEERS:
            if kind not in brokers:
                continue
            try:
                rows += bench_peer(python, peer, kind, urls[kind], repeat=repeat,
                                   duration=duration, seq_duration=duration, warmup=warmup,
                                   logdir=Path(tmp), verbose=verbose)
            except Exception as exc:  # noqa: BLE001 - one peer down must not lose the others
                rows.append({"peer": peer, "broker": kind, "scenario": "-",
                             "error": f"{type(exc).__name__}: {exc}"})
    return rows


def peer_versions(python: str) -> str:
    """"faststream X, nameko Y, eventlet Z" as installed for ``python``."""
    code = ("import importlib.metadata as m\n"
            "out=[]\n"
            "for p in ('faststream','nameko','eventlet','redis','aio-pika','kombu'):\n"
            "    try: out.append(f'{p} {m.version(p)}')\n"
            "    except Exception: out.append(f'{p} missing')\n"
            "print(', '.join(out))")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return r.stdout.strip() or r.stderr.strip()[-300:]


def render(rows: list[dict[str, Any]]) -> str:
    lines = ["| peer | broker | scenario | calls/s | p50 ms | p99 ms | server CPU ms/call "
             "| client CPU ms/call | broker CPU ms/call |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['peer']} | {r['broker']} | failed: {r['error'][:300]} "
                         "| | | | | | |")
            continue
        err = f" ({r['errors']:.0f} errors)" if r.get("errors") else ""
        lines.append(f"| {r['peer']} | {r['broker']} | {r['scenario']}{err} | "
                     f"{r['calls_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['cpu_ms_server']:.2f} | {r['cpu_ms_client']:.2f} | "
                     f"{r['cpu_ms_broker']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sub = {"_serve": _serve_main, "_client": _client_main, "_cleanup": _cleanup_main}
    if argv[:1] and argv[0] in sub:
        sub[argv[0]](argv[1:])
        return 0
    p = argparse.ArgumentParser(
        prog="benchmarks/peers.py",
        description="FastStream and Nameko on the echo RPC of rpc.py: latency, throughput, CPU.",
    )
    p.add_argument("--python", default=None,
                   help="python of a venv with the peers (default: build or find --venv)")
    p.add_argument("--venv", default=None,
                   help=f"the peers' venv to build or find (default ${VENV_ENV}, else "
                        f"{DEFAULT_VENV.name}/ in the repository)")
    p.add_argument("--broker", choices=("redis", "amqp", "all"), default="all")
    p.add_argument("--quick", action="store_true", help="1 pass, 1.5 s windows")
    p.add_argument("--repeat", type=int, default=None, help="passes per figure (3)")
    p.add_argument("--duration", type=float, default=None, help="seconds per window (3)")
    p.add_argument("--redis-url", default=DEFAULT_URLS["redis"])
    p.add_argument("--amqp-url", default=DEFAULT_URLS["amqp"])
    p.add_argument("-v", "--verbose", action="store_true", help="print every pass on stderr")
    a = p.parse_args(argv)
    a.python = a.python or ensure_venv(a.venv)
    brokers = ["redis", "amqp"] if a.broker == "all" else [a.broker]
    started = time.monotonic()
    rows = run_peers(a.python, brokers, a.quick, urls={"redis": a.redis_url, "amqp": a.amqp_url},
                     repeat=a.repeat, duration=a.duration, verbose=a.verbose)
    repeat = a.repeat or (1 if a.quick else 3)
    window = a.duration or (1.5 if a.quick else 3.0)
    print(f"Peers, echo RPC, 64-byte JSON payload; {os.cpu_count()} CPUs; "
          f"{peer_versions(a.python)}; "
          f"medians of {repeat} pass(es), {window:g}s windows; FastStream access log "
          f"{'on' if os.environ.get(FS_LOG_ENV) == '1' else f'off ({FS_LOG_ENV}=1 keeps it)'}; "
          f"{time.monotonic() - started:.0f}s in all")
    print()
    print(render(rows))
    return 0 if rows and not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
