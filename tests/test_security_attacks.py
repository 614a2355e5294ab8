"""The attacks of a broker user without a busapp key, on Redis and RabbitMQ: each refused.

The services run as ``busapp run --keyring FILE`` subprocesses. The attacker uses raw kombu
only: it binds a queue to ``#`` on the exchange (so it sees every request published there),
re-publishes what it captured, and publishes messages of its own. What must hold each time:
nothing runs that the key holder did not ask for, nothing lands in the attacker's queues,
and a caller's ``bus.call`` gets its real result (or a timeout), never a forged one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue

from busapp import AsyncClient, Client
from busapp.ops.status import gather
from tests import test_cli
from tests.test_cli import Project
from tests.test_embedded import wait_until

project = test_cli.project  # the fixture: a temporary directory, its processes killed after

KEYS = {"front": "s3cret-front", "ops": "s3cret-ops"}

SERVICE = '''
from __future__ import annotations

import os
import time

from busapp import App

app = App({name!r})
RAN = {ran!r}


def record(tag: str) -> int:
    with open(RAN, "a") as f:
        f.write(f"{{tag}} {{os.getpid()}}\\n")
    return os.getpid()


@app.method()
def bump(tag: str) -> int:
    return record(tag)


@app.method()
def slow(ms: int) -> dict:
    time.sleep(ms / 1000)
    return {{"pid": os.getpid(), "slept": ms}}


@app.method()
def relay(ms: int, bus) -> dict:
    return bus.call({name!r} + ".slow", ms, timeout=20)


@app.method()
async def arelay(ms: int, bus) -> dict:
    return await bus.call({name!r} + ".slow", ms, timeout=20)


@app.method()
def die_once(marker: str) -> int:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return record("after-crash")
'''


@contextlib.contextmanager
def on_broker(url: str, exchange: str) -> Iterator[dict[str, Any]]:
    """How ``busapp run`` and the clients reach ``url``; the exchange is deleted after (on
    Redis, kombu's binding tables too)."""
    yield {"args": ["--broker", url, "--exchange", exchange], "url": url, "exchange": exchange}
    with Connection(url) as conn:
        channel = conn.channel()
        with contextlib.suppress(Exception):
            Exchange(exchange, "topic")(channel).delete()
        if url.startswith("redis"):
            channel.client.delete(f"_kombu.binding.{exchange}",
                                  f"_kombu.binding_permanent.{exchange}")


@pytest.fixture(params=["redis", "amqp"])
def real(request: pytest.FixtureRequest, exchange: str) -> Iterator[dict[str, Any]]:
    """Each real broker, given to ``busapp run`` by --broker and --exchange."""
    with on_broker(request.getfixturevalue(f"{request.param}_url"), exchange) as made:
        yield made


def keyring_file(project: Project, *names: str) -> Path:
    """A keyring holding front, ops and one key per service name (its own key)."""
    lines = [f"{k}:{v}" for k, v in KEYS.items()] + [f"{n}:self-{n}" for n in names]
    path = project.root / "keys.txt"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def start(project: Project, real: dict[str, Any], name: str, workers: int = 1,
          keyring: Path | None = None) -> tuple[Any, Path]:
    """``busapp run`` the attack SERVICE as App ``name``; returns (Running, its file of runs)."""
    ran = project.root / f"ran-{name}"
    module = project.write(f"svc_{name}.py", SERVICE.format(name=name, ran=str(ran)))
    keys = keyring or keyring_file(project, name)
    running = project.run(str(module), "--workers", str(workers), "--keyring", str(keys),
                          *real["args"])
    running.wait_ready(workers)
    return running, ran


def runs(path: Path) -> list[tuple[str, int]]:
    """(tag, pid) of each run the service recorded."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(tag, int(pid)) for tag, pid in (line.split() for line in lines)]


class Attacker:
    """A broker user with no busapp key: raw kombu on the service's exchange.

    One channel for everything: each kombu Redis channel holds a connection pool of its own.
    """

    def __init__(self, url: str, exchange: str) -> None:
        self.conn = Connection(url)
        self.exchange = exchange
        self.channel = self.conn.channel()
        self.capture = Queue(f"capture-{uuid.uuid4().hex[:10]}",
                             Exchange(exchange, "topic", durable=True), routing_key="#",
                             durable=False)(self.channel)
        self.capture.declare()
        self.producer = Producer(self.channel)
        self.loot_queues: list[Queue] = []

    def captured(self, routing_key: str, deadline: float = 15.0) -> Any:
        """The next message seen on the exchange with ``routing_key``."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            message = self.capture.get(no_ack=True)
            if message is None:
                time.sleep(0.01)
            elif message.delivery_info["routing_key"] == routing_key:
                return message
        raise AssertionError(f"the attacker saw no {routing_key!r}")

    def publish(self, body: bytes, routing_key: str, *, exchange: str | None = None,
                headers: dict | None = None, reply_to: str | None = None,
                correlation_id: str | None = None) -> None:
        self.producer.publish(body, exchange=self.exchange if exchange is None else exchange,
                              routing_key=routing_key, headers=headers or {}, reply_to=reply_to,
                              correlation_id=correlation_id, content_type="application/json",
                              content_encoding="utf-8")

    def republish(self, message: Any, routing_key: str | None = None, **headers: Any) -> None:
        """Publish a captured message again, to ``routing_key`` (default its own), with
        ``headers`` added to its own (a value of None removes that header)."""
        merged = {**message.headers, **headers}
        self.publish(message.body, routing_key or message.delivery_info["routing_key"],
                     headers={k: v for k, v in merged.items() if v is not None},
                     reply_to=message.properties.get("reply_to"),
                     correlation_id=message.properties.get("correlation_id"))

    def loot(self, name: str) -> Queue:
        """A queue of the attacker's own (a plain Redis list, a RabbitMQ queue)."""
        queue = Queue(name, durable=False)(self.channel)
        queue.declare()
        self.loot_queues.append(queue)
        return queue

    def count(self, queue: Queue) -> int:
        """Messages that landed in ``queue`` (taken off it)."""
        found = 0
        while queue.get(no_ack=True) is not None:
            found += 1
        return found

    def close(self) -> None:
        for queue in (self.capture, *self.loot_queues):
            try:
                queue.delete()
            except Exception:  # noqa: BLE001 - best effort
                pass
        self.conn.release()


@pytest.fixture
def attacker(real: dict[str, Any]):
    made = Attacker(real["url"], real["exchange"])
    yield made
    made.close()


def status_request(request_id: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "rpc.status"}).encode()


def client(real: dict[str, Any], key: str = "ops", timeout: float = 30.0) -> Client:
    return Client(real["url"], real["exchange"], timeout=timeout, key=(key, KEYS[key]))


def call_in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target()`` in a thread; its result (or exception) lands in the returned dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = target()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


# -- 1. control requests ---------------------------------------------------------------------


def test_unsigned_status_request_answers_nobody(real: dict[str, Any], project: Project,
                                                attacker: Attacker) -> None:
    """Unsigned status broadcasts with reply_to a plain queue or a reply queue: nothing is pushed
    to either, and the workers still answer a signed status request."""
    name = project.name
    start(project, real, name, workers=2)
    plain, reply = attacker.loot(f"loot-{name}"), attacker.loot(f"busapp.reply.{uuid.uuid4().hex}")
    for i in range(20):
        for queue in (plain, reply):
            attacker.publish(status_request(f"r{i}"), "busapp-control", reply_to=queue.name,
                             correlation_id=f"r{i}")
    workers = gather(real["url"], real["exchange"], name, timeout=2.0, key=("ops", KEYS["ops"]))
    assert len(workers) == 2
    assert attacker.count(plain) == 0 and attacker.count(reply) == 0


@pytest.mark.parametrize("method", ["relay", "arelay"])
def test_status_request_cannot_answer_a_nested_call(real: dict[str, Any], project: Project,
                                                    attacker: Attacker, method: str) -> None:
    """Aimed at the reply queue and correlation id of a handler's own nested call (blocking bus,
    then async bus), a status request does not become that call's result."""
    name = project.name
    start(project, real, name, workers=2)
    with client(real) as bus:
        thread, out = call_in_thread(lambda: bus.call(f"{name}.{method}", 1500))
        nested = attacker.captured(f"{name}.slow")
        reply_to = nested.properties["reply_to"]
        cid = nested.properties["correlation_id"]
        attacker.publish(status_request(cid), f"busapp-control.{name}", reply_to=reply_to,
                         correlation_id=cid)
        thread.join(30)
    assert out.get("result", out).get("slept") == 1500, out


# -- 2. borrowed signatures ------------------------------------------------------------------


def test_request_signed_for_one_service_never_runs_on_another(real: dict[str, Any],
                                                              project: Project,
                                                              attacker: Attacker) -> None:
    """A request signed for b.bump, re-published to a.bump bare, with the routing-key header,
    and with that header and a redelivered flag, never runs on a."""
    a, b = f"{project.name}a", f"{project.name}b"
    keys = keyring_file(project, a, b)
    _, ran_a = start(project, real, a, keyring=keys)
    _, ran_b = start(project, real, b, keyring=keys)
    with client(real, "front") as bus:
        assert bus.call(f"{b}.bump", "for-b") > 0
        message = attacker.captured(f"{b}.bump")
        attacker.republish(message, f"{a}.bump")
        attacker.republish(message, f"{a}.bump", **{"x-busapp-routing-key": f"{b}.bump"})
        attacker.republish(message, f"{a}.bump", **{"x-busapp-routing-key": f"{b}.bump",
                                                     "redelivered": True})
        time.sleep(1.5)
        assert bus.call(f"{a}.bump", "for-a") > 0  # a still serves its own callers
    assert [tag for tag, _ in runs(ran_a)] == ["for-a"]
    assert [tag for tag, _ in runs(ran_b)] == ["for-b"]


# -- 3. forged replies to an AsyncClient ----------------------------------------------------


def test_async_client_drops_forged_replies(real: dict[str, Any], project: Project,
                                           attacker: Attacker) -> None:
    """While an AsyncClient(key=...) awaits a slow call, unsigned and unknown-key replies pushed
    into its reply queue are dropped: it gets the service's own reply."""
    name = project.name
    start(project, real, name)

    async def go() -> Any:
        async with AsyncClient(real["url"], real["exchange"], timeout=30,
                               key=("front", KEYS["front"])) as bus:
            task = asyncio.ensure_future(bus.call(f"{name}.slow", 1500))
            request = await asyncio.get_running_loop().run_in_executor(
                None, attacker.captured, f"{name}.slow")
            reply_to = request.properties["reply_to"]
            cid = request.properties["correlation_id"]
            forged = json.dumps({"jsonrpc": "2.0", "id": cid,
                                 "result": {"pid": -1, "slept": -1}}).encode()
            for headers in ({}, {"x-busapp-key": "mallory", "x-busapp-ts": f"{time.time():.3f}",
                                 "x-busapp-sig": "0" * 64}):
                attacker.publish(forged, reply_to, exchange="", headers=headers,
                                 correlation_id=cid)
            return await task

    assert asyncio.run(go())["slept"] == 1500


# -- 4. replays ------------------------------------------------------------------------------


def replay_ten_times(real: dict[str, Any], attacker: Attacker, name: str, **headers: Any) -> None:
    """Call bump("original") once with a key, then re-publish the captured request 10 times."""
    with client(real) as bus:
        assert bus.call(f"{name}.bump", "original") > 0
        message = attacker.captured(f"{name}.bump")
        for _ in range(10):
            attacker.republish(message, **headers)
        time.sleep(2.0)


def test_replay_runs_once_across_three_workers_on_redis(project: Project, redis_url: str,
                                                         exchange: str) -> None:
    """Redis: 10 re-publications of a captured signed request to 3 workers: it ran once."""
    with on_broker(redis_url, exchange) as real:
        running, _ = start(project, real, project.name, workers=3)
        attacker = Attacker(redis_url, exchange)
        try:
            replay_ten_times(real, attacker, project.name)
        finally:
            attacker.close()
            running.stop()
    assert [tag for tag, _ in runs(project.root / f"ran-{project.name}")] == ["original"]


def test_replay_runs_at_most_once_per_worker_on_rabbitmq(project: Project, amqp_url: str,
                                                         exchange: str) -> None:
    """RabbitMQ: 10 re-publications to 3 workers: no worker ran it twice (at most 3 runs)."""
    with on_broker(amqp_url, exchange) as real:
        running, _ = start(project, real, project.name, workers=3)
        attacker = Attacker(amqp_url, exchange)
        try:
            replay_ten_times(real, attacker, project.name)
        finally:
            attacker.close()
            running.stop()
    pids = [pid for tag, pid in runs(project.root / f"ran-{project.name}")]
    assert 1 <= len(pids) <= 3 and len(set(pids)) == len(pids)


def test_replay_with_its_deadline_stripped_or_moved_never_runs(real: dict[str, Any],
                                                               project: Project,
                                                               attacker: Attacker) -> None:
    """A captured request re-published without its deadline, or with a later one, never runs:
    the deadline is signed."""
    name = project.name
    running, ran = start(project, real, name)
    with client(real) as bus:
        assert bus.call(f"{name}.bump", "original") > 0
        message = attacker.captured(f"{name}.bump")
        attacker.republish(message, **{"x-busapp-deadline": None})
        attacker.republish(message, **{"x-busapp-deadline": time.time() + 3600})
        assert wait_until(lambda: len(running.events("message refused")) >= 1, 10)
    assert [tag for tag, _ in runs(ran)] == ["original"]
    refusals = running.events("message refused")
    assert refusals and "bad signature" in refusals[0]["reason"]


def test_worker_killed_mid_call_is_still_rerun_with_a_keyring(real: dict[str, Any],
                                                              project: Project) -> None:
    """At least once is kept: a signed call whose worker dies mid-call runs again on another
    worker (the dead worker's claim on it is released), and the caller gets that result."""
    name = project.name
    start(project, real, name, workers=2)
    with client(real) as bus:
        assert bus.call(f"{name}.die_once", str(project.root / "marker")) > 0
    assert [tag for tag, _ in runs(project.root / f"ran-{name}")] == ["after-crash"]
