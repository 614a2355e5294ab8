"""Fault injection on real brokers: broker loss, poison messages, lost consumers, worker kills."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from busapp import Client
from busapp.bus import default_queue
from busapp.errors import BrokerUnavailable, InternalError, RequestTimeout
from tests._services import delete_queues, wait_until_served

ROOT = Path(__file__).resolve().parent.parent


def _start_manager(url: str, exchange: str, name: str, workers: int, **env: str):
    code = (f"from tests.apps import make_app; make_app({name!r}).run({url!r}, "
            f"exchange={exchange!r}, workers={workers}, graceful_timeout=5)")
    import tempfile

    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the workers
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.log = log
    return proc


def _stop(proc) -> str:
    """SIGTERM the manager (its workers follow), return what it logged."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    proc.log.seek(0)
    return proc.log.read()


def _call_until(bus, routing_key, *args, deadline=30.0, timeout=1.0):
    """Retry a call through an outage; return (result, failures seen, seconds waited)."""
    failures: list[str] = []
    started = time.monotonic()
    while True:
        t0 = time.monotonic()
        try:
            result = bus.call(routing_key, *args, timeout=timeout)
            return result, failures, time.monotonic() - started
        except (RequestTimeout, BrokerUnavailable) as exc:
            assert time.monotonic() - t0 < timeout + 2.0, "a call hung past its timeout"
            failures.append(type(exc).__name__)
            if time.monotonic() - started > deadline:
                raise
            time.sleep(0.2)


# -- broker loss ------------------------------------------------------------------------------

def test_workers_and_client_survive_redis_restart(private_redis, unique):
    """Redis dies and comes back empty:
    both workers resume by themselves and the Client reconnects."""
    name, exchange = f"r{unique}", f"test-{unique}"
    proc = _start_manager(private_redis.url, exchange, name, 2)
    try:
        wait_until_served(private_redis.url, exchange, f"{name}.ping")
        with Client(private_redis.url, exchange) as bus:
            before: set[int] = set()
            end = time.monotonic() + 20
            while len(before) < 2 and time.monotonic() < end:  # both workers consume
                before.add(bus.call(f"{name}.pid"))
            private_redis.stop()  # private
            with pytest.raises((BrokerUnavailable, RequestTimeout)):
                bus.call(f"{name}.add", 1, 1, timeout=1)
            time.sleep(1)
            private_redis.start()  # private; no persistence: queues and bindings are gone
            result, failures, waited = _call_until(bus, f"{name}.add", 2, 3)
            assert result == 5
            print(f"\n[figure] redis restart: served again {waited:.1f}s after restart, "
                  f"{len(failures)} failed calls meanwhile")
            after: set[int] = set()
            end = time.monotonic() + 20
            while len(after) < 2 and time.monotonic() < end:
                after.add(bus.call(f"{name}.pid"))
            assert after == before, "workers were replaced instead of reconnecting"
    finally:
        log = _stop(proc)
    assert proc.returncode == 0, log
    assert "reconnecting" in log


def test_workers_survive_rabbitmq_dropping_connections(private_rabbitmq, unique):
    """RabbitMQ force-closes every connection: workers and the Client carry on by themselves."""
    url = private_rabbitmq.url
    print(f"\n[figure] private rabbitmq node started in {private_rabbitmq.started_in:.1f}s")
    name, exchange = f"r{unique}", f"test-{unique}"
    proc = _start_manager(url, exchange, name, 2)
    try:
        wait_until_served(url, exchange, f"{name}.ping")
        with Client(url, exchange) as bus:
            before: set[int] = set()
            end = time.monotonic() + 20
            while len(before) < 2 and time.monotonic() < end:  # both workers consume
                before.add(bus.call(f"{name}.pid"))
            closed = private_rabbitmq.ctl("close_all_connections", "busapp fault test")  # private
            assert "Closed 0 connections" not in closed.stdout
            result, failures, waited = _call_until(bus, f"{name}.add", 2, 3)
            assert result == 5
            print(f"[figure] rabbitmq connections closed: served again after {waited:.1f}s, "
                  f"{len(failures)} failed calls")
            after: set[int] = set()
            end = time.monotonic() + 20
            while len(after) < 2 and time.monotonic() < end:
                after.add(bus.call(f"{name}.pid"))
            assert after == before
    finally:
        log = _stop(proc)
    assert proc.returncode == 0, log


# -- lost consumers ---------------------------------------------------------------------------

@pytest.mark.slow  # > 5 s
def test_lost_binding_is_restored_by_the_watchdog(redis_url, unique):
    """Redis forgets the exchange's binding table: an idle worker re-declares it within seconds."""
    import redis

    name, exchange = f"w{unique}", f"test-{unique}"
    proc = _start_manager(redis_url, exchange, name, 1)
    try:
        wait_until_served(redis_url, exchange, f"{name}.ping")
        redis.Redis.from_url(redis_url).delete(f"_kombu.binding.{exchange}")
        with Client(redis_url, exchange) as bus:
            result, failures, waited = _call_until(bus, f"{name}.add", 1, 2, deadline=30)
        assert result == 3
        assert failures, "the deleted binding should have cost at least one call"
        print(f"\n[figure] lost redis binding restored after {waited:.1f}s")
    finally:
        log = _stop(proc)
        delete_queues(redis_url, exchange, default_queue(name, exchange))
    assert proc.returncode == 0, log


def test_deleted_queue_is_resubscribed(amqp_url, unique):
    """RabbitMQ cancels the consumer (queue deleted): the worker re-declares and consumes again."""
    name, exchange = f"w{unique}", f"test-{unique}"
    proc = _start_manager(amqp_url, exchange, name, 1)
    try:
        wait_until_served(amqp_url, exchange, f"{name}.ping")
        delete_queues(amqp_url, "", default_queue(name, exchange))
        with Client(amqp_url, exchange) as bus:
            result, _, _ = _call_until(bus, f"{name}.add", 1, 2, deadline=30)
        assert result == 3
    finally:
        _stop(proc)
        delete_queues(amqp_url, exchange, default_queue(name, exchange))


# -- worker faults ----------------------------------------------------------------------------

@pytest.mark.slow  # > 5 s
@pytest.mark.parametrize("broker", ["amqp", "redis"])
def test_poison_message_is_dead_lettered(broker, request, unique):
    """A request that kills its worker every time is dead-lettered after 3 deliveries;
    caller gets an error."""
    url = request.getfixturevalue(f"{broker}_url")
    name, exchange = f"p{unique}", f"test-{unique}"
    queue = default_queue(name, exchange)
    # On Redis a dead worker's message comes back after the visibility timeout: shorten it here.
    proc = _start_manager(url, exchange, name, 2, BUSAPP_VISIBILITY_TIMEOUT="1")
    try:
        wait_until_served(url, exchange, f"{name}.ping")
        with Client(url, exchange) as bus:
            started = time.monotonic()
            with pytest.raises(InternalError, match="died on each of 3 deliveries") as info:
                bus.call(f"{name}.die", timeout=60)
            print(f"\n[figure] poison on {broker}: error reply after "
                  f"{time.monotonic() - started:.1f}s")
            assert info.value.data["exception"] == "WorkerLost"
            assert _call_until(bus, f"{name}.add", 1, 1)[0] == 2
        from kombu import Connection, Queue

        with Connection(url) as conn:
            dead = Queue(f"{queue}.dead", durable=True, channel=conn.channel()).queue_declare()
        assert dead.message_count == 1
    finally:
        log = _stop(proc)
        delete_queues(url, exchange, queue, f"{queue}.dead")
    assert "dead-lettered" in log


@pytest.mark.slow  # > 5 s
def test_random_worker_kills_under_load(amqp_url, unique):
    """kill -9 of a random worker every 2 s under concurrent calls: no call outlives its timeout,
    every call ends in a result or a typed error, and the manager keeps 3 workers."""
    seconds = float(os.environ.get("BUSAPP_CHAOS_SECONDS", "10"))
    name, exchange = f"c{unique}", f"test-{unique}"
    proc = _start_manager(amqp_url, exchange, name, 3)
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    try:
        wait_until_served(amqp_url, exchange, f"{name}.ping")
        with Client(amqp_url, exchange) as bus:
            def load() -> None:
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        assert bus.call(f"{name}.slow", 0.05, timeout=3) == 0.05
                        key = "ok"
                    except (RequestTimeout, InternalError) as exc:
                        key = type(exc).__name__
                    assert time.monotonic() - t0 < 5, "a call outlived its timeout"
                    with lock:
                        outcomes[key] = outcomes.get(key, 0) + 1

            threads = [threading.Thread(target=load) for _ in range(6)]
            for t in threads:
                t.start()
            end = time.monotonic() + seconds
            rng = random.Random(unique)
            killed = 0
            while time.monotonic() < end:
                time.sleep(2)
                pids = _worker_pids(proc.pid)
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    killed += 1
            stop.set()
            for t in threads:
                t.join(10)
            end = time.monotonic() + 20
            while len(_worker_pids(proc.pid)) != 3 and time.monotonic() < end:
                time.sleep(0.2)
            assert len(_worker_pids(proc.pid)) == 3
            assert bus.call(f"{name}.add", 1, 1) == 2
    finally:
        _stop(proc)
        delete_queues(amqp_url, exchange, default_queue(name, exchange),
                      f"{default_queue(name, exchange)}.dead")
    print(f"\n[figure] chaos {seconds:.0f}s, {killed} kills: outcomes {outcomes}")
    assert killed >= seconds // 2 - 1
    assert outcomes.get("ok", 0) > 10 * killed, outcomes


def _worker_pids(manager_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(manager_pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_storage_event_subscription_survives_redis_restart(private_redis, unique, tmp_path):
    """After Redis restarts empty, a subscriber re-subscribes by itself and gets the next event."""
    from busapp import App
    from busapp.models import Host
    from busapp.storage.client import StorageClient
    from busapp.storage.service import make_app
    from tests._services import running

    url, exchange, seen = private_redis.url, f"test-{unique}", tmp_path / "seen"
    storage_app = make_app("memory://", queue=f"storage-{unique}")
    sub = App(f"sub{unique}")
    sub.add_method(lambda: "pong", "ping")

    @sub.on_storage_event(Host, "created")
    def host_created(event, model):
        with open(seen, "a") as fh:
            fh.write(model.address + "\n")

    def saw(address: str) -> bool:
        return seen.exists() and address in seen.read_text().split()

    with running(lambda: storage_app.run(url, exchange=exchange), url=url, exchange=exchange,
                 ready="storage.list_store_handlers"), \
         running(lambda: sub.run(url, exchange=exchange), url=url, exchange=exchange,
                 ready=f"{sub.name}.ping"), Client(url, exchange) as bus:
        storage = StorageClient(bus)
        storage.save(Host.new(address="before"))
        _wait(lambda: saw("before"))
        private_redis.stop()
        time.sleep(1)
        private_redis.start()
        _call_until(bus, f"{sub.name}.ping")  # both services are back on the bus
        _call_until(bus, "storage.list_store_handlers")
        storage.save(Host.new(address="after"))
        _wait(lambda: saw("after"))


def _wait(condition, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.05)
