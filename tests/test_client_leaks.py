"""Clients that are dropped unclosed, made by many threads at once, or inherited by a fork."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pytest

from busapp import Client
from busapp.errors import RequestTimeout
from tests._services import run_app
from tests.apps import make_app

ROOT = Path(__file__).resolve().parent.parent


def _call_and_drop(url: str, exchange: str, routing_key: str) -> weakref.ref:
    """Make a Client, call through it, and drop it without close(); a weak reference to it."""
    bus = Client(url, exchange)
    try:
        bus.call(routing_key, timeout=0.3)
    except RequestTimeout:
        pass  # nobody serves the key: the Client still opened both its connections
    return weakref.ref(bus)


def test_a_dropped_client_is_garbage_collected(broker_url, unique):
    """A Client dropped without close() is freed: no broker callback keeps it alive."""
    ref = _call_and_drop(broker_url, f"test-{unique}", f"n{unique}.nobody")
    gc.collect()
    assert ref() is None


@pytest.mark.slow  # ~15 s
def test_dropped_clients_release_their_connections(private_redis, unique):
    """1,000 Clients dropped without close() leave Redis's connection count near its baseline."""
    url, name, exchange = private_redis.url, f"l{unique}", f"test-{unique}"
    import redis

    server = redis.Redis(port=private_redis.port)  # private
    with run_app(make_app(name), url, exchange):
        baseline = server.info("clients")["connected_clients"]
        for _ in range(1000):
            _call_and_drop(url, exchange, f"{name}.ping")
        pending = server.info("clients")["connected_clients"]
        gc.collect()
        time.sleep(0.2)
        after = server.info("clients")["connected_clients"]
    print(f"\n[figure] 1,000 dropped Redis clients: {baseline} connections before, "
          f"{pending} after (before a full gc), {after} after gc.collect()")
    assert after <= baseline + 5  # before the fix: ~4,000 more


def test_a_forked_child_dropping_its_parents_client_leaves_it_working(broker_url, unique):
    """A forked child that drops an inherited Client does not close its parent's connections."""
    exchange = f"test-{unique}"
    with Client(broker_url, exchange) as bus:
        with pytest.raises(RequestTimeout):
            bus.call(f"n{unique}.nobody", timeout=0.2)
        pid = os.fork()
        if pid == 0:  # the child: drop its copy of the Client, collect it, exit at once
            del bus
            gc.collect()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        bus.notify(f"n{unique}.nobody")  # the publish connection still works
        with pytest.raises(RequestTimeout):  # and so does the reply connection
            bus.call(f"n{unique}.nobody", timeout=0.2)


# -- kombu's lazy imports ----------------------------------------------------------------------

_NO_LAZY_IMPORTS = textwrap.dedent("""
    import sys
    import busapp.transport.kombu_transport
    before = set(sys.modules)
    from busapp import Client
    from busapp.errors import RequestTimeout
    with Client(sys.argv[1], sys.argv[2]) as bus:
        try:
            bus.call(sys.argv[3], timeout=0.2)
        except RequestTimeout:
            pass
    print(sorted(m for m in set(sys.modules) - before
                 if m.split(".")[0] in ("kombu", "amqp", "redis", "vine")))
""")


def test_the_transport_imports_all_of_kombu_it_uses_up_front(broker_url, unique):
    """Once busapp's kombu transport is imported, a first call imports no more kombu/amqp/redis
    module (kombu's lazy imports race when several threads make their first Client at once)."""
    out = subprocess.run([sys.executable, "-c", _NO_LAZY_IMPORTS, broker_url, f"test-{unique}",
                          f"n{unique}.nobody"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


_THREADS = textwrap.dedent("""
    import sys, threading
    from busapp import Client
    from busapp.errors import RequestTimeout
    errors = []
    start = threading.Barrier(8)

    def first_client():
        start.wait()
        try:
            with Client(sys.argv[1], sys.argv[2]) as bus:
                bus.notify(sys.argv[3])
                try:
                    bus.call(sys.argv[3], timeout=0.2)
                except RequestTimeout:
                    pass
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=first_client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(errors)
""")


@pytest.mark.slow  # ~10 s
def test_eight_threads_make_their_first_clients_at_once(broker_url, unique):
    """In a fresh process, 8 threads making a Client at the same moment all succeed (5 runs)."""
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", _THREADS, broker_url, f"test-{unique}",
                              f"n{unique}.nobody"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]", out.stdout
