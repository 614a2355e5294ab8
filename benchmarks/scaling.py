#!/usr/bin/env python
"""How busapp's costs grow: payload size, methods per App, workers per host, event fan-out.

Four sections, each printing one table (stdlib, busapp and kombu only):

- ``payload``: sequential echo calls (one in flight) with a JSON payload of 64 B, 64 KiB and
  1 MB (10**6 bytes: a worker's default ``max_body`` is 1 MiB, envelope included), busapp
  against the raw-kombu yardstick of ``benchmarks/rawkombu.py`` (on Redis and embedded over
  busapp's own Redis transport, as ``rpc.py`` does): calls/s, server and broker CPU per call
  (``/proc/<pid>/stat``). Both servers run at once; the passes alternate.
- ``methods``: one App with 1 registered method (echo) and one with 1,000 (echo and 999
  others), side by side: sequential calls/s and 4 client processes x 8 threads.
- ``workers``: one App run with ``workers=N`` (a ServiceManager forking N workers, as
  ``busapp run module:app --workers N`` does), N = 1, 8, 64 on this host: calls/s from 4
  client processes x 8 threads, server CPU per call, the idle CPU of the process tree, RSS
  and PSS per worker (``/proc/<pid>/status``, ``smaps_rollup``; forked workers share pages,
  so PSS is what each one adds), and broker connections per worker (TCP sockets of the
  worker's open files connected to the broker's port, from ``/proc/<pid>/fd`` and
  ``/proc/net/tcp``; on Redis checked against ``CLIENT LIST``; the embedded broker is a unix
  socket and is not counted).
- ``fanout``: subscriber Apps (1, 10, 100; each one App with one worker and a handler of
  ``scal.tick``, up to 10 Apps per process, each served in a thread) and one ``Client.emit``
  per event: the time until every subscriber has handled one event (events emitted 0.3 s
  apart; median and worst), then a burst of events emitted back to back: emits/s and events
  delivered per second until the last subscriber has the last one.

Run by hand (never from the test suite); a few minutes in all, under one with ``--quick``::

    .venv/bin/python benchmarks/scaling.py                     # Redis, all sections
    .venv/bin/python benchmarks/scaling.py --quick
    .venv/bin/python benchmarks/scaling.py --broker amqp --section workers,fanout
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
sys.path.insert(0, str(HERE))  # rpc, rawkombu

import rpc  # noqa: E402

SECTIONS = ("payload", "methods", "workers", "fanout")
PORTS = {"redis": 6379, "amqp": 5672}
#: 1 MB is 10**6 bytes: a worker refuses a body over 1 MiB by default (``max_body``), and the
#: JSON-RPC envelope comes on top of the payload.
SIZES = {"64 B": 64, "64 KB": 64 * 1024, "1 MB": 1_000_000}
EVENT = "scal.tick"


def payload(size: int) -> dict[str, str]:
    """``{"data": "aaa..."}`` whose compact JSON is ``size`` bytes."""
    body = {"data": "a" * (size - len('{"data":""}'))}
    assert len(json.dumps(body, separators=(",", ":"))) == size
    return body


# ---------------------------------------------------------------------------------------------
# child processes


def _serve_main(argv: list[str]) -> None:
    """An echo App with ``--methods`` methods in all, run with ``--workers``."""
    p = argparse.ArgumentParser(prog="scaling.py _serve")
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--methods", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    from busapp import App
    from busapp.log import configure_logging

    configure_logging("warning", fmt="json", cache=True)
    app = App(a.name, exchange=a.exchange)

    @app.method()
    def echo(data: Any) -> Any:
        return {"data": data}

    for i in range(a.methods - 1):
        def other(x: int = 0, _i: int = i) -> int:
            return x + _i

        app.add_method(other, name=f"other_{i}")
    app.run(a.url, workers=a.workers)


def _subscribers_main(argv: list[str]) -> None:
    """``--apps`` subscriber Apps, each served in a thread; stdin: count, dump, quit."""
    p = argparse.ArgumentParser(prog="scaling.py _subscribers")
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--names", required=True, help="comma-separated App names")
    a = p.parse_args(argv)
    from busapp.log import configure_logging

    configure_logging("warning", fmt="json", cache=True)
    seen: dict[str, list[tuple[int, float]]] = {}
    services = []
    for name in a.names.split(","):
        app = subscriber_app(name, a.exchange, seen.setdefault(name, []))
        service = app.service_class(a.exchange, a.url, app.qkwargs(a.exchange),
                                    options=app.service_class.worker_options)
        services.append(service)
        threading.Thread(target=service.run, daemon=True).start()
    print("STARTED", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "count":
            print(json.dumps({n: len(v) for n, v in seen.items()}), flush=True)
        elif command == "dump":
            print(json.dumps(seen), flush=True)
        elif command == "clear":
            for got in seen.values():
                got.clear()
            print("{}", flush=True)
        else:
            break
    for service in services:
        service.stop()


def subscriber_app(name: str, exchange: str, got: list) -> Any:
    """A subscriber App: ``ping`` and a handler of :data:`EVENT` appending ``(seq, time)``."""
    from busapp import App

    app = App(name, exchange=exchange)

    @app.method()
    def ping() -> str:
        return "pong"

    @app.on_event(EVENT)
    def tick(seq: int) -> None:
        got.append((seq, time.time()))

    return app


class Echo(rpc.Server):
    """An echo App of :func:`_serve_main` in a child process (``rpc.measure`` drives it)."""

    def __init__(self, url: str, exchange: str, logdir: Path, *, methods: int = 1,
                 workers: int = 1) -> None:
        self.impl, self.url, self.exchange, self.workers = "busapp", url, exchange, workers
        self.raw_stock = False
        self.name = f"scal_{methods}m_{uuid.uuid4().hex[:8]}"
        self.log = open(logdir / f"{self.name}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "_serve", "--url", url, "--exchange", exchange,
             "--name", self.name, "--methods", str(methods), "--workers", str(workers)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def worker_pids(self) -> list[int]:
        """The worker processes (``workers=1`` serves in the process itself, no manager)."""
        if self.workers <= 1:
            return [self.proc.pid]
        return [p for p in self.pids() if p != self.proc.pid]

    def manager_pid(self) -> int | None:
        return self.proc.pid if self.workers > 1 else None


# ---------------------------------------------------------------------------------------------
# /proc: memory and broker connections


def _status_kb(pid: int, field: str, path: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def _broker_sockets(port: int) -> dict[str, int]:
    """{socket inode: local port} of established TCP connections to ``port`` on this host."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                out[inode] = int(local.rsplit(":", 1)[1], 16)
    return out


def connections(pids: list[int], port: int) -> dict[int, list[int]]:
    """{pid: local ports of its TCP connections to the broker's ``port``}."""
    sockets = _broker_sockets(port)
    return {pid: sorted(sockets[i] for i in _socket_inodes(pid) if i in sockets) for pid in pids}


def redis_client_ports(url: str) -> set[int]:
    """Local ports of every client Redis lists (``CLIENT LIST``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return {int(c["addr"].rsplit(":", 1)[1]) for c in client.client_list()
                if ":" in c.get("addr", "")}
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# sections


def _sequential(call: Any, seconds: float, pids: list[int], broker: list[int],
                max_calls: int) -> dict[str, float]:
    before = (rpc._cpu(pids), rpc._cpu(broker))
    count, start = 0, time.monotonic()
    end = start + seconds
    while time.monotonic() < end and count < max_calls:
        call()
        count += 1
    elapsed = time.monotonic() - start
    after = (rpc._cpu(pids), rpc._cpu(broker))
    return {"calls_s": count / elapsed, "cpu_server": (after[0] - before[0]) * 1000 / count,
            "cpu_broker": (after[1] - before[1]) * 1000 / count, "calls": count}


def section_payload(kind: str, url: str, broker: list[int], args: argparse.Namespace,
                    logdir: Path) -> str:
    import rawkombu

    from busapp import Client

    rpc._raw_transport(url, stock=False)
    exchange = f"scal.{uuid.uuid4().hex[:8]}"
    servers = {impl: rpc.Server(impl, url, exchange, 1, logdir) for impl in ("busapp", "raw")}
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for server in servers.values():
            server.wait_ready()
        bus = Client(url, exchange, timeout=30)
        raw = rawkombu.RawClient(url, exchange, threaded=False)
        key = {impl: f"{s.name}.echo" for impl, s in servers.items()}
        try:
            for rep in range(args.repeat):
                for label, size in SIZES.items():
                    body = payload(size)
                    calls = {"busapp": lambda b=body: bus.call(key["busapp"], **b),
                             "raw": lambda b=body: raw.call(key["raw"], "echo", b, timeout=30)}
                    order = ["busapp", "raw"] if rep % 2 == 0 else ["raw", "busapp"]
                    for impl in order:
                        for _ in range(3):
                            assert calls[impl]() == body
                        fig = _sequential(calls[impl], args.seconds, servers[impl].pids(),
                                          broker, 10_000)
                        figures.setdefault((label, impl), []).append(fig)
        finally:
            bus.close()
            raw.close()
    finally:
        for server in servers.values():
            server.stop()
        rpc.cleanup(kind, url, exchange, [s.name for s in servers.values()])
    med = {k: rpc._median_dicts(v) for k, v in figures.items()}
    lines = ["| payload | busapp calls/s | raw kombu calls/s | busapp / raw | server CPU ms/call "
             "busapp | raw kombu | busapp / raw | broker CPU ms/call busapp | raw kombu |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label in SIZES:
        b, r = med[(label, "busapp")], med[(label, "raw")]
        lines.append(f"| {label} | {b['calls_s']:,.0f} | {r['calls_s']:,.0f} | "
                     f"{rpc._ratio(b['calls_s'], r['calls_s'])} | {b['cpu_server']:.2f} | "
                     f"{r['cpu_server']:.2f} | {rpc._ratio(b['cpu_server'], r['cpu_server'])} | "
                     f"{b['cpu_broker']:.2f} | {r['cpu_broker']:.2f} |")
    return "\n".join(lines)


def section_methods(kind: str, url: str, broker: list[int], args: argparse.Namespace,
                    logdir: Path) -> str:
    exchange = f"scal.{uuid.uuid4().hex[:8]}"
    servers = {n: Echo(url, exchange, logdir, methods=n) for n in (1, 1000)}
    scenarios = [("sequential", 1, 1, args.seconds), ("4x8", 4, 8, args.seconds)]
    figures: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for server in servers.values():
            server.wait_ready()
        for rep in range(args.repeat):
            for label, clients, threads, seconds in scenarios:
                order = [1, 1000] if rep % 2 == 0 else [1000, 1]
                for n in order:
                    fig = rpc.measure(servers[n], clients, threads, seconds, broker, args.warmup)
                    figures.setdefault((label, n), []).append(fig)
    finally:
        for server in servers.values():
            server.stop()
        rpc.cleanup(kind, url, exchange, [s.name for s in servers.values()])
    med = {k: rpc._median_dicts(v) for k, v in figures.items()}
    lines = ["| scenario | calls/s, 1 method | calls/s, 1,000 methods | 1,000 / 1 | server CPU "
             "ms/call, 1 method | 1,000 methods |", "|---|---:|---:|---:|---:|---:|"]
    for label, *_ in scenarios:
        a, b = med[(label, 1)], med[(label, 1000)]
        lines.append(f"| {label} | {a['calls_s']:,.0f} | {b['calls_s']:,.0f} | "
                     f"{rpc._ratio(b['calls_s'], a['calls_s'])} | {a['cpu_server']:.2f} | "
                     f"{b['cpu_server']:.2f} |")
    return "\n".join(lines)


def _wait_workers(server: Echo, count: int, port: int | None, timeout: float) -> float:
    """Wait until ``count`` workers run and their broker connections stop changing."""
    start = time.monotonic()
    server.wait_ready(timeout)
    last, stable_since = None, time.monotonic()
    while time.monotonic() - start < timeout:
        workers = server.worker_pids()
        now = (len(workers), sum(len(v) for v in connections(workers, port).values())
               if port else 0)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif len(workers) >= count and time.monotonic() - stable_since >= 2.0:
            break
        time.sleep(0.25)
    return time.monotonic() - start


def section_workers(kind: str, url: str, broker: list[int], args: argparse.Namespace,
                    logdir: Path) -> str:
    port = PORTS.get(kind)
    rows = []
    for count in args.worker_counts:
        exchange = f"scal.{uuid.uuid4().hex[:8]}"
        server = Echo(url, exchange, logdir, workers=count)
        try:
            ready_s = _wait_workers(server, count, port, 60 + 2 * count)
            workers = server.worker_pids()
            tree = server.pids()
            t0 = rpc._cpu(tree)
            time.sleep(1.0)
            idle = (rpc._cpu(tree) - t0) * 100
            figs = [rpc.measure(server, 4, 8, args.seconds, broker, args.warmup)
                    for _ in range(args.repeat)]
            fig = rpc._median_dicts(figs)
            rss = [_status_kb(p, "VmRSS") for p in workers]
            pss = [_status_kb(p, "Pss", "smaps_rollup") for p in workers]
            manager = server.manager_pid()
            manager_rss = f"{_status_kb(manager, 'VmRSS') / 1024:.1f}" if manager else "none"
            if port:
                conns = connections(workers, port)
                per = [len(v) for v in conns.values()]
                held = len(connections([manager], port)[manager]) if manager else 0
                conn_cell = f"{statistics.median(per):g} (min {min(per)}, max {max(per)})"
                if kind == "redis":
                    listed = redis_client_ports(url)
                    ours = {p for v in conns.values() for p in v}
                    conn_cell += f"; CLIENT LIST has {len(ours & listed)} of {len(ours)}"
                conn_cell += f"; manager {held}" if manager else ""
            else:
                conn_cell = "n/a (unix socket)"
            rows.append(
                f"| {count} | {len(workers)} | {ready_s:.0f} | {fig['calls_s']:,.0f} | "
                f"{fig['p50_ms']:.1f} | {fig['cpu_server']:.2f} | {idle:.0f} % | "
                f"{statistics.median(rss) / 1024:.1f} | {statistics.median(pss) / 1024:.1f} | "
                f"{manager_rss} | {conn_cell} |")
        finally:
            server.stop()
            rpc.cleanup(kind, url, exchange, [server.name])
    head = ("| workers | running | ready after s | calls/s (4x8) | p50 ms | server CPU ms/call | "
            "idle CPU of the tree | RSS MB per worker | PSS MB per worker | manager RSS MB | "
            "broker connections per worker |")
    return "\n".join([head, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", *rows])


class Subscribers:
    """Subscriber Apps, up to ``per_process`` in each child process."""

    def __init__(self, url: str, exchange: str, count: int, logdir: Path,
                 per_process: int = 10) -> None:
        tag = uuid.uuid4().hex[:6]
        self.names = [f"fan{tag}_{i}" for i in range(count)]
        self.exchange, self.url = exchange, url
        self.log = open(logdir / f"fan{tag}.log", "wb")
        self.procs = []
        for i in range(0, count, per_process):
            proc = subprocess.Popen(
                [sys.executable, __file__, "_subscribers", "--url", url, "--exchange", exchange,
                 "--names", ",".join(self.names[i:i + per_process])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
            self.procs.append(proc)
        for proc in self.procs:
            if proc.stdout.readline().strip() != "STARTED":
                raise RuntimeError("subscriber process did not start")

    def ask(self, command: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for proc in self.procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        for proc in self.procs:
            out.update(json.loads(proc.stdout.readline()))
        return out

    def wait_count(self, want: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n >= want for n in self.ask("count").values()):
                return True
            time.sleep(0.05)
        return False

    def queues(self) -> list[str]:
        """Every queue the subscriber Apps made (their own, their handlers', dead letters)."""
        out = []
        for name in self.names:
            app = subscriber_app(name, self.exchange, [])
            queue = app.queue_for(self.exchange)
            handlers = [h.queue_name(queue) for h in app.event_handlers]
            out += [queue, *handlers, *(f"{h}.dead" for h in handlers)]
        return out

    def stop(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


def _wait_served(url: str, exchange: str, routing_key: str, timeout: float) -> None:
    from busapp import Client
    from busapp.errors import BrokerUnavailable, RequestTimeout

    deadline = time.monotonic() + timeout
    with Client(url, exchange, timeout=0.5) as bus:
        while True:
            try:
                bus.call(routing_key)
                return
            except (RequestTimeout, BrokerUnavailable):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # no route yet: the queue is not bound


def section_fanout(kind: str, url: str, broker: list[int], args: argparse.Namespace,
                   logdir: Path) -> str:
    from busapp import Client

    rows = []
    for count in args.fanout:
        exchange = f"scal.{uuid.uuid4().hex[:8]}"
        subs = Subscribers(url, exchange, count, logdir)
        bus = Client(url, exchange, timeout=30)
        try:
            for name in subs.names:
                _wait_served(url, exchange, f"{name}.ping", 120)
            seq = -1  # warm-up: until every subscriber has had one (its event queue is bound)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                bus.emit(EVENT, seq=seq)
                if subs.wait_count(1, 1.0):
                    break
            subs.ask("clear")
            sent: dict[int, float] = {}
            for i in range(args.latency_events):
                sent[i] = time.time()
                bus.emit(EVENT, seq=i)
                time.sleep(0.3)
            ok = subs.wait_count(args.latency_events, 30)
            got = subs.ask("dump")
            latency = [max(t for app in got.values() for s, t in app if s == i) - sent[i]
                       for i in range(args.latency_events)
                       if all(any(s == i for s, _ in app) for app in got.values())]
            subs.ask("clear")
            burst = max(args.burst * 10 // count, 10) if count > 10 else args.burst
            tree = [p.pid for p in subs.procs]
            cpu0, broker0 = rpc._cpu(tree), rpc._cpu(broker)
            t0 = time.time()
            for i in range(burst):
                bus.emit(EVENT, seq=i)
            emit_s = time.time() - t0
            ok = subs.wait_count(burst, 120) and ok
            got = subs.ask("dump")
            last = max(t for app in got.values() for _, t in app)
            delivered = sum(len(app) for app in got.values())
            cpu = (rpc._cpu(tree) - cpu0) * 1000 / max(delivered, 1)
            cpu_broker = (rpc._cpu(broker) - broker0) * 1000 / max(burst, 1)
            rows.append(
                f"| {count} | {len(subs.procs)} | {statistics.median(latency) * 1000:.1f} | "
                f"{max(latency) * 1000:.1f} | {burst} | {burst / emit_s:,.0f} | "
                f"{delivered / (last - t0):,.0f} | {cpu:.2f} | {cpu_broker:.2f} |"
                + ("" if ok else " (some never arrived)"))
        finally:
            bus.close()
            queues = subs.queues()
            subs.stop()
            rpc.cleanup(kind, url, exchange, queues)
    head = ("| subscriber Apps | processes | all have it, median ms | worst ms | burst of events | "
            "emits/s | deliveries/s until the last | subscriber CPU ms per delivery | "
            "broker CPU ms per emitted event |")
    return "\n".join([head, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows])


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve"]:
        _serve_main(argv[1:])
        return 0
    if argv[:1] == ["_subscribers"]:
        _subscribers_main(argv[1:])
        return 0
    p = argparse.ArgumentParser(prog="benchmarks/scaling.py", description=__doc__.split("\n")[0])
    p.add_argument("--broker", choices=rpc.BROKERS, default="redis")
    p.add_argument("--section", default=",".join(SECTIONS),
                   help=f"comma-separated, of {', '.join(SECTIONS)} (default all)")
    p.add_argument("--quick", action="store_true", help="short windows, one pass (< 1 minute)")
    p.add_argument("--repeat", type=int, default=None, help="passes per figure, medians (3)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per window (2)")
    p.add_argument("--workers", default="1,8,64", help="worker counts (default 1,8,64)")
    p.add_argument("--fanout", default="1,10,100", help="subscriber App counts (1,10,100)")
    p.add_argument("--redis-url", default=rpc.DEFAULT_URLS["redis"])
    p.add_argument("--amqp-url", default=rpc.DEFAULT_URLS["amqp"])
    args = p.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.seconds = args.seconds or (0.5 if args.quick else 2.0)
    args.warmup = 3 if args.quick else 20
    args.latency_events = 5 if args.quick else 10
    args.burst = 50 if args.quick else 300
    args.worker_counts = [int(x) for x in args.workers.split(",")]
    args.fanout = [int(x) for x in args.fanout.split(",")]
    sections = [s for s in args.section.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    from busapp.log import configure_logging

    configure_logging("warning", fmt="console")
    tmp = Path(tempfile.mkdtemp(prefix="busapp-scaling-"))
    started = time.monotonic()
    try:
        state = None
        if args.broker == "embedded":
            url, state = rpc._start_embedded(tmp)
        else:
            url = args.redis_url if args.broker == "redis" else args.amqp_url
        broker = rpc.broker_pids(args.broker, url, state)
        print(f"busapp scaling on {args.broker}; {os.cpu_count()} CPUs; medians of {args.repeat} "
              f"pass(es) of {args.seconds:g}s", flush=True)
        for name in sections:
            t = time.monotonic()
            table = globals()[f"section_{name}"](args.broker, url, broker, args, tmp)
            print(f"\n## {name} ({time.monotonic() - t:.0f}s)\n\n{table}", flush=True)
    finally:
        if args.broker == "embedded":
            rpc._stop_embedded(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{time.monotonic() - started:.0f}s in all")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
