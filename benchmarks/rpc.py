#!/usr/bin/env python
"""busapp RPC round trips against a plain-kombu yardstick, measured side by side.

Echo RPC with a 64-byte JSON payload (params ``{"data": "a" * 53}``), for each broker:

(a) sequential: one client process, one call in flight: calls/s, latency p50/p99;
(b) throughput: ``--clients`` client processes x ``--inflight`` threads sharing one client each,
    against a server with ``--workers 1`` and ``--workers 2``;
(c) CPU time per call (from ``/proc/<pid>/stat``) of the client processes, the server's process
    tree and the broker (``redis-server`` on the URL's port, RabbitMQ's ``beam.smp``, or the
    embedded broker's ``redis-server``).

Every busapp figure is printed next to the same measurement of a raw-kombu echo server and
client (``benchmarks/rawkombu.py``) taken in the same run, with the ratio busapp/raw. On Redis
and the embedded broker the raw yardstick runs over busapp's own Redis transport
(:mod:`busapp.transport.redis`), so the ratio isolates the framework (``--raw-stock``: kombu's
stock Redis transport instead). ``--baseline REF`` adds busapp as of git ``REF`` (e.g. the
commit before a hot-path change) as a third column, so before and after are measured side by
side in one run. On Redis and embedded, the redis-py LPUSH/BRPOP floor (``benchmarks/floor.py``)
is measured sequentially too. ``--peers`` adds FastStream (Redis and RabbitMQ) and Nameko
(RabbitMQ) servers and clients (``benchmarks/peers.py``), run under the python of the
peers' venv, which it builds from ``benchmarks/requirements-peers.txt`` on first use (in
``.venv-peers/``, ignored by git, or ``$BUSAPP_PEERS_VENV``; ``--peers-python PY`` names a
venv of your own instead). All servers of a broker run at once (on their own queues) and
the measurements alternate, peers included, so drift on a shared machine hits all alike
and every ratio comes from one run; a ratio table (busapp / raw kombu, / FastStream, /
Nameko, / redis-py floor) follows the main one. Figures are medians over ``--repeat``
passes.

Run by hand (never from the test suite)::

    .venv/bin/python benchmarks/rpc.py                 # all brokers, ~5 minutes
    .venv/bin/python benchmarks/rpc.py --quick         # smoke check, < 1 minute
    .venv/bin/python benchmarks/rpc.py --broker redis --repeat 5
    .venv/bin/python benchmarks/rpc.py --peers         # + FastStream, Nameko (~10 minutes)
    .venv/bin/python benchmarks/rpc.py --baseline 6fe9985 --peers-python /path/to/venv/bin/python

Other sections (storage saves/s, storage-event latency, test-client calls/s) live in
``benchmarks/storage.py`` and ``benchmarks/testclient.py``; :data:`EXTRA_SECTIONS` names them
and ``--with-extra`` runs those that exist after the RPC table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # rawkombu

PAYLOAD = {"data": "a" * 53}
assert len(json.dumps(PAYLOAD, separators=(",", ":"))) == 64

DEFAULT_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "amqp": "amqp://guest:guest@127.0.0.1:5672//",
}
BROKERS = ("redis", "amqp", "embedded")
IMPLS = ("busapp", "raw")
#: Environment variable naming the exported baseline tree a "base" server/client imports
#: busapp from.
BASE_ENV = "BUSAPP_BENCH_BASE"
#: Sibling benchmark scripts owned by others, run with --with-extra when present.
EXTRA_SECTIONS = ("storage.py", "testclient.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _ppids() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    out[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppids().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def broker_pids(kind: str, url: str, embedded_state: dict[str, Any] | None = None) -> list[int]:
    """Pids whose CPU counts as the broker's (may be empty if they cannot be found)."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    if kind == "embedded":
        pid = (embedded_state or {}).get("redis_pid")
        return [int(pid)] if pid else []
    if kind == "amqp":
        return [p for p in pids if _comm(p) == "beam.smp"]
    from urllib.parse import urlsplit

    port = urlsplit(url).port or 6379
    return [p for p in pids if _comm(p) == "redis-server" and f":{port}" in _cmdline(p)]


# ---------------------------------------------------------------------------------------------
# child processes: servers and clients

#: Comma-separated busapp Redis-transport changes to undo in the child processes, to measure
#: each one's effect: ``stock`` (kombu's transport), ``client`` (a redis client per command),
#: ``bindings`` (SMEMBERS per publish), ``multi`` (MULTI/EXEC in ack emulation); ``handoff``
#: (experiment: no hand-over by the worker's monitor).
ABLATE_ENV = "BUSAPP_BENCH_ABLATE"


def _ablate() -> None:
    undo = {x for x in os.environ.get(ABLATE_ENV, "").split(",") if x}
    if not undo:
        return
    from kombu.transport import redis as kredis

    from busapp.transport import redis as ours

    if "stock" in undo:
        ours.Connection.get_transport_cls = lambda self: kredis.Transport
    if "client" in undo:
        ours.Channel._create_client = kredis.Channel._create_client
    if "bindings" in undo:
        ours.Channel.binding_cache_ttl = 0
    if "handoff" in undo:  # experiment: no hand-over by the monitor (handlers never run long here)
        from busapp.runtime.worker import WorkerOptions

        WorkerOptions.__attrs_attrs__.handoff_after.default  # noqa: B018 - exists
        import busapp.service as service

        service.CommissaireService.worker_options = WorkerOptions(handoff_after=3600.0)
    if "multi" in undo:
        ours.QoS.pipe_or_acquire = kredis.QoS.pipe_or_acquire


def _raw_transport(url: str, stock: bool) -> None:
    """The raw yardstick on Redis runs over busapp's Redis transport unless ``stock``."""
    if url.startswith("redis") and not stock:
        import rawkombu

        from busapp.transport.redis import Connection

        rawkombu.use_connection_class(Connection)


#: Set by ``--sign``: busapp's server and clients use a keyring (every call signed, verified).
SIGN_ENV = "BUSAPP_BENCH_SIGN"
#: Set by ``--sign-baseline``: the baseline signs too (its busapp must have busapp.security).
SIGN_BASE_ENV = "BUSAPP_BENCH_SIGN_BASELINE"
SIGN_KEYS = {"bench": "bench-secret-0123456789abcdef"}


def _signing(impl: str) -> bool:
    """Whether this busapp server or client signs (the baseline only with --sign-baseline:
    it may predate keys)."""
    if os.environ.get(SIGN_ENV) != "1":
        return False
    return impl == "busapp" or (impl == "base" and os.environ.get(SIGN_BASE_ENV) == "1")


def _serve_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="rpc.py _serve")
    p.add_argument("--impl", choices=(*IMPLS, "base", "floor"), required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--raw-stock", action="store_true")
    a = p.parse_args(argv)
    _ablate()
    if a.impl == "floor":
        import floor

        floor.serve_forever(a.url, a.name)
        return
    if a.impl in ("busapp", "base"):
        import busapp

        print(f"busapp from {busapp.__file__}", flush=True)
        from busapp import App
        from busapp.log import configure_logging

        # Warning: raw kombu writes nothing per call, and neither does busapp at warning
        # (at its default, info, the per-call line costs ~23 µs of a ~1 ms call).
        configure_logging("warning", fmt="json", cache=True)
        keyring = None
        if _signing(a.impl):
            from busapp.security import Keyring

            keyring = Keyring(SIGN_KEYS)
        # (no keyring argument unless signing: the baseline's App may predate it)
        app = App(a.name, exchange=a.exchange, **({"keyring": keyring} if keyring else {}))

        @app.method()
        def echo(data: Any) -> Any:
            return {"data": data}

        app.run(a.url, workers=a.workers)
        return
    import rawkombu

    _raw_transport(a.url, a.raw_stock)
    routing_key = f"{a.name}.*"
    if a.workers <= 1:
        rawkombu.serve_forever(a.url, a.exchange, a.name, routing_key)
        return
    children = []
    for _ in range(a.workers):
        pid = os.fork()
        if pid == 0:
            try:
                rawkombu.serve_forever(a.url, a.exchange, a.name, routing_key)
            finally:
                os._exit(0)
        children.append(pid)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)


def _client_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="rpc.py _client")
    p.add_argument("--impl", choices=(*IMPLS, "base", "floor"), required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--raw-stock", action="store_true")
    a = p.parse_args(argv)
    _ablate()
    routing_key = f"{a.name}.echo"
    if a.impl == "floor":
        import floor

        client: Any = floor.FloorClient(a.url, a.name)
        payload = json.dumps({"jsonrpc": "2.0", "id": "x", "method": "echo",
                              "params": PAYLOAD}).encode()

        def call() -> Any:
            return client.call(payload)

        expected = payload
    elif a.impl in ("busapp", "base"):
        from busapp.bus import Client

        signing = {"key": ("bench", SIGN_KEYS["bench"])} if _signing(a.impl) else {}
        client = Client(a.url, a.exchange, timeout=30, **signing)  # the baseline has no key=

        def call() -> Any:
            return client.call(routing_key, **PAYLOAD)

        expected = PAYLOAD
    else:
        import rawkombu

        _raw_transport(a.url, a.raw_stock)
        client = rawkombu.RawClient(a.url, a.exchange, threaded=a.threads > 1)

        def call() -> Any:
            return client.call(routing_key, "echo", PAYLOAD, timeout=30)

        expected = PAYLOAD
    try:
        for _ in range(a.warmup):
            assert call() == expected
        print("READY", flush=True)
        t0, t1 = map(float, sys.stdin.readline().split())
        latencies: list[list[float]] = [[] for _ in range(a.threads)]
        errors = [0]

        def loop(out: list[float]) -> None:
            delay = t0 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            while True:
                start = time.monotonic()
                if start >= t1:
                    return
                try:
                    call()
                except Exception:  # noqa: BLE001 - counted, not fatal
                    errors[0] += 1
                    continue
                end = time.monotonic()
                if t0 <= start and end <= t1:
                    out.append(end - start)

        threads = [threading.Thread(target=loop, args=(lat,)) for lat in latencies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        merged = [x for lat in latencies for x in lat]
        print(json.dumps({"count": len(merged), "lat": merged, "errors": errors[0]}), flush=True)
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# the parent: orchestration


class Server:
    """A busapp or raw-kombu echo server in a child process (a process tree with --workers > 1)."""

    def __init__(self, impl: str, url: str, exchange: str, workers: int, logdir: Path,
                 raw_stock: bool = False) -> None:
        self.impl, self.url, self.exchange, self.workers = impl, url, exchange, workers
        self.raw_stock = raw_stock
        self.name = f"bench_{impl}_{uuid.uuid4().hex[:8]}"
        self.log = open(logdir / f"{self.name}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "_serve", *self.impl_args(), "--url", url,
             "--exchange", exchange, "--name", self.name, "--workers", str(workers)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=impl_env(impl),
        )

    def impl_args(self) -> list[str]:
        return ["--impl", self.impl] + (["--raw-stock"] if self.raw_stock else [])

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Call the server until it answers (a request sent before its queue is bound is lost)."""
        if self.impl == "floor":
            return  # a list needs no binding
        import rawkombu

        deadline = time.monotonic() + timeout
        client = rawkombu.RawClient(self.url, self.exchange, threaded=False)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.impl} server exited: {self.log_tail()}")
                try:
                    client.call(f"{self.name}.echo", "echo", PAYLOAD, timeout=0.5)
                    return
                except KeyError:  # an error reply (--sign: the unsigned probe is refused)
                    return
                except OSError:  # socket.timeout: not consuming yet
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.impl} server not answering: {self.log_tail()}") from None
        finally:
            client.close()

    def log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                for pid in reversed(self.pids()):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(5)
        self.log.close()


class PeerServer:
    """A FastStream or Nameko echo server (``benchmarks/peers.py``), measured in the same
    windows as ours: its clients run under the peers' python too."""

    def __init__(self, python: str, peer: str, kind: str, url: str, workers: int,
                 logdir: Path) -> None:
        import peers

        self.python, self.impl, self.kind, self.url = python, peer, kind, url
        tag = uuid.uuid4().hex[:8]
        self.name = f"peers_{peer}_{tag}"
        self.exchange = f"peers.{peer}.{tag}" if peer == "nameko" else ""
        self.server = peers.Server(python, peer, kind, url, self.name, self.exchange or "-",
                                   workers, logdir)

    def wait_ready(self) -> None:
        self.server.wait_ready()

    def measure(self, clients: int, threads: int, duration: float, broker: list[int],
                warmup: int) -> dict[str, float]:
        import peers

        fig = peers.measure(self.server, clients, threads, duration, broker, warmup)
        out = {"calls_s": fig["calls_s"], "p50_ms": fig["p50_ms"], "p99_ms": fig["p99_ms"],
               "cpu_client": fig["cpu_ms_client"], "cpu_server": fig["cpu_ms_server"],
               "cpu_broker": fig["cpu_ms_broker"], "errors": fig["errors"]}
        out["cpu_total"] = out["cpu_client"] + out["cpu_server"] + out["cpu_broker"]
        return out

    def stop(self) -> None:
        import peers

        self.server.stop()
        queues = [f"rpc-{self.name}"] if self.impl == "nameko" else [self.name]
        peers._cleanup(self.python, self.kind, self.url, self.exchange, queues)


def impl_env(impl: str) -> dict[str, str] | None:
    """The environment of a server or client: the baseline's imports busapp from its tree."""
    if impl != "base":
        return None
    return dict(os.environ, PYTHONPATH=os.environ[BASE_ENV])


def export_baseline(ref: str, tmp: Path) -> Path:
    """``busapp/`` as of git ``ref``, exported into ``tmp`` (for the "base" column)."""
    root = HERE.parent
    dest = tmp / "baseline"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", ref, "busapp"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def measure(server: Server, clients: int, threads: int, duration: float,
            broker: list[int], warmup: int) -> dict[str, float]:
    """One timed window: calls/s, latency percentiles, CPU ms per call by party."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "_client", *server.impl_args(), "--url", server.url,
             "--exchange", server.exchange, "--name", server.name, "--threads", str(threads),
             "--warmup", str(warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=impl_env(server.impl),
        )
        for _ in range(clients)
    ]
    try:
        for proc in procs:
            line = proc.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"{server.impl} client did not get ready; server log ends:\n"
                                   f"{server.log_tail()}")
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
        results = [json.loads(proc.stdout.readline()) for proc in procs]
    finally:
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    count = sum(r["count"] for r in results)
    lat = sorted(x for r in results for x in r["lat"])
    per_call = [(b - a) * 1000 / max(count, 1) for a, b in zip(before, after, strict=True)]
    return {
        "calls_s": count / duration,
        "p50_ms": lat[len(lat) // 2] * 1000 if lat else float("nan"),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan"),
        "cpu_client": per_call[0], "cpu_server": per_call[1], "cpu_broker": per_call[2],
        "cpu_total": sum(per_call),
        "errors": sum(r["errors"] for r in results),
    }


def _median_dicts(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def cleanup(kind: str, url: str, exchange: str, queues: list[str]) -> None:
    """Delete the benchmark's queues and exchange (and kombu's binding keys on Redis)."""
    from kombu import Connection, Exchange, Queue

    try:
        with Connection(url) as conn:
            channel = conn.channel()
            for q in queues:
                try:
                    Queue(q, channel=channel).delete()
                except Exception:  # noqa: BLE001
                    pass
            try:
                Exchange(exchange, type="topic", channel=channel).delete()
            except Exception:  # noqa: BLE001
                pass
            if kind != "amqp":
                client = channel.client
                client.delete(f"_kombu.binding.{exchange}", f"_kombu.binding_permanent.{exchange}")
                client.zrem("_kombu.binding_deadlines", exchange)
    except Exception as exc:  # noqa: BLE001 - report, do not hide the table
        print(f"# cleanup on {kind} failed: {exc}", file=sys.stderr)


def bench_broker(kind: str, url: str, args: argparse.Namespace, logdir: Path,
                 embedded_state: dict | None) -> dict[tuple[str, str], dict[str, float]]:
    """All measurements of one broker: {(scenario, impl): figures}."""
    broker = broker_pids(kind, url, embedded_state)
    if not broker:
        print(f"# {kind}: broker process not found; broker CPU reads 0", file=sys.stderr)
    exchange = f"bench.{uuid.uuid4().hex[:8]}"
    out: dict[tuple[str, str], list[dict[str, float]]] = {}
    queues: list[str] = []
    impls = list(IMPLS) + (["base"] if args.baseline else [])
    for workers in args.workers:
        servers: dict[str, Any] = {impl: Server(impl, url, exchange, workers, logdir,
                                                args.raw_stock) for impl in impls}
        if kind != "amqp" and workers == args.workers[0]:
            servers["floor"] = Server("floor", url, exchange, 1, logdir)
        queues += [s.name for s in servers.values() if s.impl not in ("floor", *PEERS)]
        if args.peers_python:
            for peer in PEERS:
                if kind in PEERS[peer]:
                    servers[peer] = PeerServer(args.peers_python, peer, kind, url, workers, logdir)
        try:
            for impl, server in list(servers.items()):
                try:
                    server.wait_ready()
                except Exception as exc:  # noqa: BLE001 - a peer down must not lose the rest
                    if impl not in PEERS:
                        raise
                    _peer_failed(kind, impl, exc, servers)
            scenarios = [(f"{args.clients}x{args.inflight} w{workers}", args.clients, args.inflight,
                          args.duration)]
            if workers == args.workers[0]:
                scenarios.insert(0, (f"sequential w{workers}", 1, 1, args.seq_duration))
            for rep in range(args.repeat):
                for label, clients, threads, duration in scenarios:
                    order = [i for i in servers if i != "floor" or label.startswith("sequential")]
                    order = order if rep % 2 == 0 else order[::-1]
                    for impl in order:
                        server = servers.get(impl)
                        if server is None:  # a peer that failed
                            continue
                        try:
                            fig = (server.measure(clients, threads, duration, broker, args.warmup)
                                   if isinstance(server, PeerServer) else
                                   measure(server, clients, threads, duration, broker,
                                           args.warmup))
                        except Exception as exc:  # noqa: BLE001 - as above
                            if impl not in PEERS:
                                raise
                            _peer_failed(kind, impl, exc, servers)
                            continue
                        out.setdefault((label, impl), []).append(fig)
                        if args.verbose:
                            print(f"# {kind} {label} {impl} pass {rep + 1}: "
                                  + ", ".join(f"{k}={v:.3g}" for k, v in fig.items()),
                                  file=sys.stderr)
        except BaseException:
            for server in servers.values():
                server.stop()
            cleanup(kind, url, exchange, queues)
            raise
        for server in servers.values():
            server.stop()
    cleanup(kind, url, exchange, queues)
    return {key: _median_dicts(runs) for key, runs in out.items()}


def _peer_failed(kind: str, peer: str, exc: Exception, servers: dict[str, Any]) -> None:
    """Report a peer that failed and leave it out of the passes still to come."""
    print(f"# {kind}: {peer} failed, left out: {type(exc).__name__}: {exc}", file=sys.stderr)
    server = servers.pop(peer)
    try:
        server.stop()
    except Exception as stop_exc:  # noqa: BLE001 - report, carry on
        print(f"# {kind}: stopping {peer} failed: {stop_exc}", file=sys.stderr)


ROWS = [
    # (label, key, format, higher is better)
    ("calls/s", "calls_s", "{:,.0f}", True),
    ("p50 ms", "p50_ms", "{:.2f}", False),
    ("p99 ms", "p99_ms", "{:.2f}", False),
    ("CPU ms/call client", "cpu_client", "{:.2f}", False),
    ("CPU ms/call server", "cpu_server", "{:.2f}", False),
    ("CPU ms/call broker", "cpu_broker", "{:.2f}", False),
    ("CPU ms/call total", "cpu_total", "{:.2f}", False),
]


COLUMNS = {"busapp": "busapp", "raw": "raw kombu", "base": "busapp (baseline)",
           "floor": "redis-py floor", "faststream": "FastStream", "nameko": "Nameko"}
#: The peers (``--peers``) and the brokers each is measured on.
PEERS = {"faststream": ("redis", "amqp"), "nameko": ("amqp",)}


def render(results: dict[str, dict[tuple[str, str], dict[str, float]]]) -> str:
    impls = [i for i in COLUMNS if any(i == impl for f in results.values() for _, impl in f)]
    head = "| broker | scenario | measure | " + " | ".join(COLUMNS[i] for i in impls)
    head += " | busapp/raw |" + (" busapp/baseline |" if "base" in impls else "")
    lines = [head, "|---|---|---|" + "---:|" * (len(impls) + 1 + ("base" in impls))]
    for kind, figures in results.items():
        scenarios = list(dict.fromkeys(label for label, _ in figures))
        for label in scenarios:
            b, r = figures[(label, "busapp")], figures[(label, "raw")]
            for name, key, fmt, _ in ROWS:
                cells = [fmt.format(figures[(label, i)][key]) if (label, i) in figures else ""
                         for i in impls]
                row = f"| {kind} | {label} | {name} | " + " | ".join(cells)
                row += f" | {_ratio(b[key], r[key])} |"
                if "base" in impls:
                    base = figures.get((label, "base"))
                    row += f" {_ratio(b[key], base[key]) if base else ''} |"
                lines.append(row)
            errors = [figures[(label, i)]["errors"] if (label, i) in figures else 0 for i in impls]
            if any(errors):
                lines.append(f"| {kind} | {label} | errors | "
                             + " | ".join(f"{e:.0f}" for e in errors)
                             + " | |" + (" |" if "base" in impls else ""))
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def targets(results: dict[str, dict[tuple[str, str], dict[str, float]]],
            args: argparse.Namespace) -> str:
    """The performance targets, each marked met or MISSED."""
    lines = []

    def check(text: str, ok: bool) -> None:
        lines.append(f"- {text} {'met' if ok else 'MISSED'}")

    for kind, figures in results.items():
        for label in dict.fromkeys(k for k, _ in figures):
            if not (label.startswith("sequential") or label.endswith(" w2")):
                continue
            b, r = figures[(label, "busapp")], figures[(label, "raw")]
            ratio = b["calls_s"] / r["calls_s"]
            check(f"{kind} {label}: calls/s busapp/raw {ratio:.2f} (target >= 1.0)", ratio >= 1.0)
            cpu = b["cpu_server"] / r["cpu_server"] if r["cpu_server"] else float("nan")
            check(f"{kind} {label}: server CPU/call busapp/raw {cpu:.2f} (target <= 1.0)",
                  cpu <= 1.0)
            floor = figures.get((label, "floor"))
            if floor:
                share = b["calls_s"] / floor["calls_s"]
                check(f"{kind} {label}: busapp {b['calls_s']:,.0f} calls/s = {share:.2f} of the "
                      f"redis-py floor {floor['calls_s']:,.0f} (target >= 0.33)", share >= 1 / 3)
            for peer, want in (("faststream", 2.0), ("nameko", 3.0)):
                theirs = figures.get((label, peer))
                if theirs and theirs["calls_s"]:
                    ratio = b["calls_s"] / theirs["calls_s"]
                    check(f"{kind} {label}: busapp/{COLUMNS[peer]} {ratio:.2f} "
                          f"({b['calls_s']:,.0f} vs {theirs['calls_s']:,.0f} calls/s; "
                          f"target >= {want:g})", ratio >= want)
    return "\n".join(lines)


def render_ratios(results: dict[str, dict[tuple[str, str], dict[str, float]]]) -> str:
    """busapp's calls/s over each other column's, per broker and scenario (one run)."""
    others = [i for i in ("raw", "faststream", "nameko", "floor", "base")
              if any(i == impl for f in results.values() for _, impl in f)]
    lines = ["| broker | scenario | busapp calls/s | "
             + " | ".join(f"busapp / {COLUMNS[i]}" for i in others)
             + " | server CPU busapp / raw kombu |",
             "|---|---|---:|" + "---:|" * (len(others) + 1)]
    for kind, figures in results.items():
        for label in dict.fromkeys(k for k, _ in figures):
            b = figures[(label, "busapp")]
            cells = [_ratio(b["calls_s"], figures[(label, i)]["calls_s"])
                     if (label, i) in figures else "" for i in others]
            raw = figures.get((label, "raw"))
            cpu = _ratio(b["cpu_server"], raw["cpu_server"]) if raw else ""
            lines.append(f"| {kind} | {label} | {b['calls_s']:,.0f} | " + " | ".join(cells)
                         + f" | {cpu} |")
    return "\n".join(lines)


def _start_embedded(tmp: Path) -> tuple[str, dict]:
    from busapp.transport.embedded import broker_state, ensure_embedded_broker

    url = ensure_embedded_broker(str(tmp / "embedded"))
    return url, broker_state(str(tmp / "embedded"))


def _stop_embedded(tmp: Path) -> None:
    from busapp.transport.embedded import stop_embedded_broker

    stop_embedded_broker(str(tmp / "embedded"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        _serve_main(argv[1:])
        return 0
    if argv[:1] == ["_client"]:
        _client_main(argv[1:])
        return 0
    p = argparse.ArgumentParser(
        prog="benchmarks/rpc.py",
        description="busapp echo RPC vs raw kombu on each broker: latency, throughput, "
                    "CPU per call.",
    )
    p.add_argument("--broker", choices=(*BROKERS, "all"), default="all",
                   help="which broker(s) to measure (default all; embedded is skipped if "
                        "unavailable)")
    p.add_argument("--quick", action="store_true",
                   help="smoke check: one short pass per figure (< 1 minute in all)")
    p.add_argument("--redis-url", default=DEFAULT_URLS["redis"])
    p.add_argument("--amqp-url", default=DEFAULT_URLS["amqp"])
    p.add_argument("--workers", default="1,2", help="server worker counts to measure (default 1,2)")
    p.add_argument("--clients", type=int, default=4,
                   help="client processes for throughput (default 4)")
    p.add_argument("--inflight", type=int, default=8,
                   help="calls in flight per client process, one thread each (default 8)")
    p.add_argument("--duration", type=float, default=None, help="seconds per throughput window (3)")
    p.add_argument("--seq-duration", type=float, default=None,
                   help="seconds per sequential window (3)")
    p.add_argument("--repeat", type=int, default=None,
                   help="passes per figure; medians are shown (3)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per client first (20)")
    p.add_argument("--with-extra", action="store_true",
                   help=f"also run {', '.join(EXTRA_SECTIONS)} from benchmarks/ if present")
    p.add_argument("--baseline", metavar="REF",
                   help="also measure busapp as of this git ref (before/after in one run)")
    p.add_argument("--raw-stock", action="store_true",
                   help="raw kombu on kombu's stock Redis transport (default: busapp's)")
    p.add_argument("--peers", action="store_true",
                   help="also FastStream and Nameko, alternating with the others (their venv is "
                        "built from benchmarks/requirements-peers.txt on first use)")
    p.add_argument("--peers-python", metavar="PY",
                   help="as --peers, with the python of a venv of your own that has them")
    p.add_argument("--sign", action="store_true",
                   help="busapp server and clients use a keyring: every request and reply "
                        "signed and verified (HMAC-SHA256, busapp.security)")
    p.add_argument("--sign-baseline", action="store_true",
                   help="with --sign and --baseline: the baseline signs too (signing cost "
                        "before and after a change, in one run)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every pass on stderr")
    args = p.parse_args(argv)
    if args.sign:
        os.environ[SIGN_ENV] = "1"  # the server and client processes inherit it
    if args.sign_baseline:
        os.environ[SIGN_BASE_ENV] = "1"
    args.workers = [int(w) for w in args.workers.split(",")]
    quick = args.quick
    args.duration = args.duration or (0.5 if quick else 3.0)
    args.seq_duration = args.seq_duration or (0.5 if quick else 3.0)
    args.repeat = args.repeat or (1 if quick else 3)
    if quick:
        args.warmup = min(args.warmup, 3)
    kinds = BROKERS if args.broker == "all" else (args.broker,)
    from busapp.log import configure_logging

    configure_logging("warning", fmt="console")  # stdout stays the table

    tmp = Path(tempfile.mkdtemp(prefix="busapp-bench-"))
    if args.baseline:
        os.environ[BASE_ENV] = str(export_baseline(args.baseline, tmp))
    if args.peers and not args.peers_python:
        import peers

        args.peers_python = peers.ensure_venv()
    results: dict[str, dict] = {}
    notes: list[str] = []
    started = time.monotonic()
    try:
        for kind in kinds:
            state = None
            if kind == "embedded":
                try:
                    url, state = _start_embedded(tmp)
                except Exception as exc:  # noqa: BLE001 - not there yet, or cannot run here
                    notes.append(f"embedded broker skipped: {type(exc).__name__}: {exc}")
                    continue
            else:
                url = args.redis_url if kind == "redis" else args.amqp_url
            try:
                results[kind] = bench_broker(kind, url, args, tmp, state)
            except Exception as exc:  # noqa: BLE001 - one broker down must not lose the others
                notes.append(f"{kind} failed: {type(exc).__name__}: {exc}")
            finally:
                if kind == "embedded":
                    _stop_embedded(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    if args.baseline:
        print(f"baseline: busapp as of {args.baseline}")
    if args.peers_python:
        import peers

        print(f"peers: {peers.peer_versions(args.peers_python)} (FastStream's access log off)")
    if args.sign:
        print("busapp calls signed and verified (--sign)"
              + ("; the baseline's too" if args.sign_baseline and args.baseline else ""))
    print(f"busapp vs raw kombu, echo RPC, 64-byte JSON payload; {os.cpu_count()} CPUs; "
          f"medians of {args.repeat} pass(es); windows {args.seq_duration:g}s sequential, "
          f"{args.duration:g}s throughput; {elapsed:.0f}s in all")
    print()
    print(render(results))
    print()
    print("Ratios of calls/s (and of server CPU per call), all from this run:")
    print()
    print(render_ratios(results))
    print()
    print(targets(results, args))
    for note in notes:
        print(f"- note: {note}")
    if args.with_extra:
        for name in EXTRA_SECTIONS:
            script = HERE / name
            if script.exists():
                print(f"\n## {name}\n", flush=True)
                subprocess.run([sys.executable, str(script)] + (["--quick"] if quick else []),
                               check=False)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
