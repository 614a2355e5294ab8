"""`busapp status`, `busapp probe` and `busapp run --metrics-port`, driven as real subprocesses on
Redis and RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from busapp import Client
from busapp.errors import RemoteProcedureCallError
from tests import test_cli
from tests.test_cli import Project, clean_env
from tests.test_embedded import wait_until

project = test_cli.project  # the fixture: a temporary directory, its processes killed after

OPS_APP = '''
from __future__ import annotations

import os
import time

from busapp import App

app = App({name!r})


@app.method()
def work(ms: int) -> int:
    time.sleep(ms / 1000)
    return os.getpid()


@app.method()
def fail() -> None:
    raise ValueError("failed on purpose")
'''


@pytest.fixture(params=["redis", "amqp"])
def real(request: pytest.FixtureRequest, exchange: str) -> dict[str, Any]:
    """Each real broker, given to every command by --broker and --exchange."""
    url = request.getfixturevalue(f"{request.param}_url")
    return {"args": ["--broker", url, "--exchange", exchange], "url": url, "exchange": exchange}


def ops_module(project: Project) -> str:
    return str(project.write(f"ops_{project.name}.py", OPS_APP.format(name=project.name)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_json(project: Project, real: dict[str, Any], *args: str) -> list[dict[str, Any]]:
    out = project.cli("status", *args, "--json", *real["args"])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_status_lists_exactly_the_live_workers(project: Project, real: dict[str, Any]) -> None:
    """`status NAME --json` lists exactly the 3 pids of `busapp run --workers 3`,
    each with its figures."""
    running = project.run(ops_module(project), "--workers", "3", *real["args"])
    pids = running.wait_ready(3)
    with Client(real["url"], real["exchange"], timeout=20) as bus:
        bus.call(f"{project.name}.work", 1)
    workers = status_json(project, real, project.name)
    assert sorted(w["pid"] for w in workers) == sorted(pids)
    assert {w["service"] for w in workers} == {project.name}
    assert sum(w["handled"] for w in workers) == 1 and all(w["errors"] == 0 for w in workers)
    assert all(w["host"] == socket.gethostname() and w["in_flight"] == 0 for w in workers)
    assert sorted(w["pid"] for w in status_json(project, real)) == sorted(pids)  # no name: all
    text = project.cli("status", *real["args"])
    assert text.returncode == 0 and all(str(pid) in text.stdout for pid in pids)
    assert "SERVICE" in text.stdout.splitlines()[0]


def test_probe_exits_0_while_a_worker_answers_else_1(project: Project,
                                                     real: dict[str, Any]) -> None:
    """`probe NAME` exits 0 with workers up (also --local),
    1 for an unknown service and once they stop."""
    running = project.run(ops_module(project), "--workers", "2", *real["args"])
    running.wait_ready(2)
    up = project.cli("probe", project.name, *real["args"])
    assert up.returncode == 0, up.stderr
    local = project.cli("probe", project.name, "--local", "--timeout", "5", *real["args"])
    assert local.returncode == 0, local.stderr
    unknown = project.cli("probe", f"{project.name}x", "--timeout", "1", *real["args"])
    assert unknown.returncode == 1 and "no worker" in unknown.stderr
    assert running.stop() == 0
    gone = project.cli("probe", project.name, "--timeout", "1", *real["args"])
    assert gone.returncode == 1
    assert status_json(project, real, project.name) == []


def test_status_probe_and_call_of_a_keyed_service_need_a_key(project: Project,
                                                              real: dict[str, Any]) -> None:
    """Workers with a keyring answer `status`, `probe` and `call` signed with --key or
    $BUSAPP_KEY only."""
    keys = project.write("keys.txt", "ops:s3cret-ops\n")
    keys.chmod(0o600)
    running = project.run(ops_module(project), "--workers", "2", "--keyring", str(keys),
                          *real["args"])
    pids = running.wait_ready(2)
    assert status_json(project, real, project.name) == []
    signed = status_json(project, real, project.name, "--key", "ops:s3cret-ops")
    assert sorted(w["pid"] for w in signed) == sorted(pids)
    assert project.cli("probe", project.name, "--timeout", "1", *real["args"]).returncode == 1
    probe = project.cli("probe", project.name, *real["args"],
                        env=clean_env(BUSAPP_KEY="ops:s3cret-ops"))
    assert probe.returncode == 0, probe.stderr
    wrong = project.cli("probe", project.name, "--timeout", "1", "--key", "ops:guess",
                        *real["args"])
    assert wrong.returncode == 1 and "guess" not in wrong.stderr
    unsigned = project.cli("call", f"{project.name}.work", "1", *real["args"])
    assert unsigned.returncode == 1 and "-32001" in unsigned.stderr
    called = project.cli("call", f"{project.name}.work", "1", "--key", "ops:s3cret-ops",
                         *real["args"])
    assert called.returncode == 0 and int(called.stdout) in pids, called.stderr


def test_probe_without_a_broker_exits_1(project: Project) -> None:
    """A probe that cannot reach any broker fails the probe (exit 1), not a usage error."""
    out = project.cli("probe", "anything", "--timeout", "1", env=clean_env())
    assert out.returncode == 1 and "no broker" in out.stderr


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of the busapp_ metrics on the endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("busapp_")}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def test_metrics_count_every_call_across_workers(project: Project, real: dict[str, Any]) -> None:
    """After 21 calls over 2 workers, /metrics counts 21 (20 ok, 1 error),
    and keeps them when a worker is replaced."""
    port = free_port()
    running = project.run(ops_module(project), "-w", "2", "-c", "1", "--metrics-port", str(port),
                          *real["args"])
    pids = running.wait_ready(2)
    name = project.name

    def caller(count: int) -> None:
        with Client(real["url"], real["exchange"], timeout=20) as bus:
            for _ in range(count):
                bus.call(f"{name}.work", 30)

    threads = [threading.Thread(target=caller, args=(n,)) for n in (7, 7, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with Client(real["url"], real["exchange"], timeout=20) as bus, \
            pytest.raises(RemoteProcedureCallError):
        bus.call(f"{name}.fail")
    handled = {w["pid"]: w["handled"] for w in status_json(project, real, name)}
    assert set(handled) == set(pids) and all(handled.values()), handled  # both took a share
    samples = scrape(port)
    assert total(samples, "busapp_calls_total", service=name) == 21
    assert total(samples, "busapp_calls_total", method="work", outcome="ok") == 20
    assert total(samples, "busapp_calls_total", method="fail", outcome="error") == 1
    assert total(samples, "busapp_call_duration_seconds_count", service=name) == 21
    assert total(samples, "busapp_in_flight", service=name) == 0
    os.kill(pids[0], signal.SIGKILL)
    assert wait_until(lambda: total(scrape(port), "busapp_worker_restarts_total") == 1, 30)
    running.wait_ready(2)
    # the dead one's count stays
    assert total(scrape(port), "busapp_calls_total", service=name) == 21
    [served] = running.events("metrics served")
    assert running.stop() == 0
    assert not Path(served["dir"]).exists()  # the manager removed its directory


def test_killed_workers_control_queue_is_deleted_on_redis(project: Project, redis_url: str,
                                                          exchange: str) -> None:
    """After kill -9 of a worker, the manager deletes its control queue
    (Redis keeps it otherwise)."""
    import redis

    real = {"args": ["--broker", redis_url, "--exchange", exchange]}
    running = project.run(ops_module(project), "-w", "2", *real["args"])
    dead, alive = running.wait_ready(2)
    client = redis.Redis.from_url(redis_url)

    def control_bindings() -> list[str]:
        members = [m.decode() for m in client.smembers(f"_kombu.binding.{exchange}")]
        return [m for m in members if "busapp.control." in m]

    assert any(m.endswith(f".{dead}") for m in control_bindings())
    os.kill(dead, signal.SIGKILL)
    assert wait_until(lambda: len(running.wait_ready(2)) == 2
                      and dead not in running.wait_ready(2), 30)
    assert wait_until(lambda: not any(m.endswith(f".{dead}") for m in control_bindings()), 10)
    assert not client.exists(f"busapp.control.{project.name}.{socket.gethostname()}.{dead}")
    pids = sorted(w["pid"] for w in status_json(project, real, project.name))
    assert dead not in pids and alive in pids and len(pids) == 2
