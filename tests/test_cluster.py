"""Cluster settings (SPEC §11): queue types, multi-node and sentinel:// URLs,
quorum queues on RabbitMQ.

The clusters themselves (3 RabbitMQ nodes, Redis with Sentinels) are built by
tests/test_cluster_brokers.py; here a quorum queue runs on the shared single node.
"""

from __future__ import annotations

import time

import amqp.exceptions
import pytest
from kombu import Connection, Queue

from busapp import App, Client
from busapp.runtime.cluster import dead_letter_spec, declared_as, resolve_queue_type
from busapp.errors import InternalError
from busapp.transport import check_broker_url, mask_url
from busapp.transport.base import QueueSpec
from busapp.transport.kombu_setup import confirm_publish, kombu_connection, split_query_options
from busapp.transport.kombu_transport import KombuTransport
from busapp.runtime.worker import WorkerOptions
from tests._services import delete_queues, wait_until_served
from tests.test_reliability import _start_manager, _stop

# -- queue types (no broker) ------------------------------------------------------------------


def test_quorum_spec_carries_the_delivery_limit_and_dead_letter_queue():
    """A quorum queue is durable, bounded by max_deliveries and dead-letters to <queue>.dead."""
    spec = declared_as(QueueSpec("svc", ("svc.*",), durable=False, auto_delete=True), "quorum", 3)
    assert spec.durable and not spec.auto_delete
    assert spec.arguments == {"x-queue-type": "quorum", "x-delivery-limit": 3,
                              "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "svc.dead"}
    assert dead_letter_spec(spec) == QueueSpec("svc.dead", arguments={"x-queue-type": "quorum"})


def test_classic_spec_is_left_as_it_is():
    """The classic queue type changes nothing and needs no dead-letter queue declared."""
    spec = QueueSpec("svc", ("svc.*",))
    assert declared_as(spec, "classic", 3) is spec
    assert dead_letter_spec(spec) is None


def test_unknown_queue_type_is_refused_with_the_known_ones():
    """App, WorkerOptions and $BUSAPP_QUEUE_TYPE refuse a type busapp does not know."""
    with pytest.raises(ValueError, match="unknown queue type 'qorum'; use one of classic, quorum"):
        App("svc", queue_type="qorum")
    with pytest.raises(ValueError, match="unknown queue type"):
        WorkerOptions(queue_type="stream")


def test_queue_type_comes_from_the_environment(monkeypatch):
    """With none given, $BUSAPP_QUEUE_TYPE decides; an unknown value names the variable."""
    monkeypatch.setenv("BUSAPP_QUEUE_TYPE", "quorum")
    assert resolve_queue_type() == "quorum"
    assert resolve_queue_type("classic") == "classic"
    monkeypatch.setenv("BUSAPP_QUEUE_TYPE", "lazy")
    with pytest.raises(ValueError, match=r"\$BUSAPP_QUEUE_TYPE: unknown queue type 'lazy'"):
        resolve_queue_type()


def test_app_queue_type_reaches_its_workers():
    """App(queue_type="quorum") is in the worker options of its generated service class."""
    assert App("svc", queue_type="quorum").service_class.worker_options.queue_type == "quorum"


# -- URLs (no broker) ---------------------------------------------------------------------------


def test_multi_node_url_is_masked_node_by_node():
    """Every node's password is masked in a ;-separated URL."""
    url = "amqp://u:secret1@h1:5672//;amqp://u:secret2@h2:5672//"
    assert mask_url(url) == "amqp://u:***@h1:5672//;amqp://u:***@h2:5672//"


def test_broker_url_checks_every_node():
    """Each node's scheme is checked, mixed schemes are refused, sentinel:// needs a master name."""
    assert check_broker_url("amqp://h1:5672//;amqp://h2:5672//") is None
    assert "unknown broker URL scheme 'http'" in check_broker_url("amqp://h1//;http://h2/")
    assert "must share one scheme" in check_broker_url("amqp://h1//;redis://h2/")
    assert "?master_name=NAME" in check_broker_url("sentinel://127.0.0.1:26379")
    assert check_broker_url("sentinel://h1:26379;sentinel://h2:26379/0?master_name=m") is None


def test_sentinel_url_gets_busapps_channel_and_its_master_name():
    """sentinel:// uses busapp's Sentinel transport; ?master_name= becomes the transport option."""
    from busapp.transport.redis import SentinelTransport

    conn = kombu_connection("sentinel://127.0.0.1:1;sentinel://127.0.0.1:2/0?master_name=mymaster")
    assert conn.transport_cls is SentinelTransport or conn.get_transport_cls() is SentinelTransport
    assert conn.transport_options["master_name"] == "mymaster"
    assert "master_name" not in ";".join(conn.alt)
    assert split_query_options("redis://h/0?x=1") == ("redis://h/0?x=1", {})


def test_publishes_are_confirmed_on_multi_node_urls(monkeypatch):
    """A URL listing several nodes has publishes confirmed; $BUSAPP_CONFIRM_PUBLISH overrides."""
    monkeypatch.delenv("BUSAPP_CONFIRM_PUBLISH", raising=False)
    assert confirm_publish("amqp://h1//;amqp://h2//") and not confirm_publish("amqp://h1//")
    monkeypatch.setenv("BUSAPP_CONFIRM_PUBLISH", "1")
    assert confirm_publish("amqp://h1//")
    monkeypatch.setenv("BUSAPP_CONFIRM_PUBLISH", "0")
    assert not confirm_publish("amqp://h1//;amqp://h2//")


def test_failover_url_skips_a_dead_node(amqp_url, unique):
    """A connection tries each listed node: a dead first node is passed over to a live one."""
    from tests._private_brokers import free_port

    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    transport = KombuTransport(f"{dead};{amqp_url}")
    transport.connect()
    try:
        transport.declare_queue("", QueueSpec(f"q{unique}", durable=False, auto_delete=True))
    finally:
        transport.close(delete_queue=f"q{unique}")


# -- quorum queues on the shared RabbitMQ node ----------------------------------------------


def test_quorum_app_declares_quorum_queues_and_serves(amqp_url, unique):
    """App(queue_type="quorum") serves calls from a quorum queue,
    with its quorum dead-letter queue."""
    from tests._services import run_app

    app = App(f"q{unique}", queue_type="quorum")

    @app.method()
    def ping() -> str:
        return "pong"

    exchange = f"test-{unique}"
    try:
        with run_app(app, amqp_url, exchange):
            with Client(amqp_url, exchange) as bus:
                assert bus.call(f"{app.name}.ping") == "pong"
            queue = app.queue_for(exchange)
            quorum = declared_as(QueueSpec(queue), "quorum", 3).arguments
            for name, arguments in ((queue, quorum), (f"{queue}.dead", {})):
                classic = {k: v for k, v in arguments.items() if k != "x-queue-type"}
                with Connection(amqp_url) as conn, pytest.raises(
                        amqp.exceptions.PreconditionFailed, match="'x-queue-type'"):
                    # Declaring it classic fails only because it is a quorum queue.
                    Queue(name, durable=True, channel=conn.channel(),
                          queue_arguments=classic).queue_declare()
    finally:
        delete_queues(amqp_url, exchange, f"{app.queue_for(exchange)}.dead")


def test_forged_delivery_count_on_a_first_delivery_is_ignored():
    """x-delivery-count counts only on a redelivery (RabbitMQ sets it on every delivery anyway)."""
    from busapp.transport.kombu_deliveries import _broker_count
    from busapp.transport.base import Delivery

    first = Delivery(b"{}", "application/json", {"x-delivery-count": 99}, "k")
    again = Delivery(b"{}", "application/json", {"x-delivery-count": 2}, "k", redelivered=True)
    assert _broker_count(first) == 1
    assert _broker_count(again) == 3


class _Recorder:
    """Just enough of a transport to see what redelivery counting publishes."""

    def __init__(self) -> None:
        self.published: list[str] = []

    def declare_queue(self, exchange, spec) -> None:
        pass

    def publish(self, body, *, routing_key, **kwargs) -> None:
        self.published.append(routing_key)


def test_broker_counted_redelivery_is_served_as_is_then_dead_lettered():
    """With the broker's count nothing is re-published under the bound; past it, <queue>.dead."""
    from busapp.runtime.redelivery import count_redelivery
    from busapp.transport.base import Delivery

    def delivery(deliveries):
        acked = []
        return Delivery(b"{}", "application/json", {}, "svc.x", redelivered=True, queue="svc",
                        deliveries=deliveries, ack=lambda: acked.append(1)), acked

    recorder = _Recorder()
    again, acked = delivery(3)
    assert count_redelivery(again, recorder, 3, set()) == (3, None)
    assert recorder.published == [] and acked == []
    last, acked = delivery(4)
    assert count_redelivery(last, recorder, 3, set()) == (4, "svc.dead")
    assert recorder.published == ["svc.dead"] and acked == [1]


@pytest.mark.slow  # > 5 s
def test_poison_message_on_a_quorum_queue(amqp_url, unique):
    """On a quorum queue (BUSAPP_QUEUE_TYPE) the broker's count dead-letters a killer request;
    caller gets an error."""
    name, exchange = f"p{unique}", f"test-{unique}"
    proc = _start_manager(amqp_url, exchange, name, 2, BUSAPP_QUEUE_TYPE="quorum")
    try:
        wait_until_served(amqp_url, exchange, f"{name}.ping")
        with Client(amqp_url, exchange) as bus:
            started = time.monotonic()
            with pytest.raises(InternalError, match="died on each of 3 deliveries") as info:
                bus.call(f"{name}.die", timeout=60)
            print(f"\n[figure] poison on a quorum queue: error reply after "
                  f"{time.monotonic() - started:.1f}s")
            assert info.value.data["exception"] == "WorkerLost"
            assert bus.call(f"{name}.add", 1, 1, timeout=30) == 2
        with Connection(amqp_url) as conn:
            dead = Queue(f"{exchange}.{name}.dead", durable=True, channel=conn.channel(),
                         queue_arguments={"x-queue-type": "quorum"})
            assert dead.queue_declare().message_count == 1
    finally:
        log = _stop(proc)
        delete_queues(amqp_url, exchange, f"{exchange}.{name}", f"{exchange}.{name}.dead")
    assert "dead-lettered" in log


@pytest.mark.slow  # > 5 s
def test_nested_calls_past_the_prefetch_window_on_a_quorum_queue(amqp_url, unique, monkeypatch):
    """Quorum queues take no channel-wide prefetch:
    a per-consumer one still grows for nested calls."""
    from tests._services import run_app
    from tests.apps import make_app

    monkeypatch.setenv("BUSAPP_QUEUE_TYPE", "quorum")
    app = make_app(f"n{unique}")
    exchange = f"test-{unique}"
    try:
        with run_app(app, amqp_url, exchange, concurrency=1), Client(amqp_url, exchange) as bus:
            # Six handlers wait at once on one worker whose window starts at 2 messages.
            assert bus.call(f"{app.name}.nested", 5, timeout=30) == 5
    finally:
        delete_queues(amqp_url, exchange, f"{app.queue_for(exchange)}.dead")


def test_storage_and_event_queues_follow_the_queue_type(monkeypatch):
    """$BUSAPP_QUEUE_TYPE=quorum makes `busapp storage`'s queue and an App's event
    queues quorum too."""
    from busapp.storage.service import make_app
    from busapp.runtime.worker import Worker

    monkeypatch.setenv("BUSAPP_QUEUE_TYPE", "quorum")
    app = App("watcher")

    @app.on_storage_event()
    def changed(event, model) -> None:
        pass

    for service_app in (make_app("memory://"), app):
        service = service_app.service_class("ex", "memory://cluster-test")
        specs = [spec for spec, _ in Worker(service, service.options)._consumers()
                 if not spec.name.startswith("busapp.control.")]  # a worker's own: classic
        assert len(specs) >= (2 if service_app is app else 1)
        assert all(spec.arguments["x-queue-type"] == "quorum" for spec in specs), specs


def test_test_client_serves_a_quorum_app():
    """The in-memory test client ignores the queue type: a quorum App is tested as any other."""
    app = App("qt", queue_type="quorum")

    @app.method()
    def add(x: int, y: int) -> int:
        return x + y

    with app.test_client() as client:
        assert client.call("qt.add", 1, 2) == 3


def test_redis_entry_popped_as_the_connection_breaks_is_pushed_back(redis_url, unique):
    """An entry taken from a Redis queue when the connection fails is back on the queue at
    the next poll."""
    import redis

    from busapp.errors import BrokerUnavailable

    queue = f"orphan-{unique}"
    first = KombuTransport(redis_url)
    first.connect()
    first.declare_queue("", QueueSpec(queue))
    first.publish(b'{"n": 1}', exchange="", routing_key=queue)

    def cut(delivery) -> None:  # as if the connection broke while the entry was taken
        raise redis.ConnectionError("cut")

    first.consume(queue, cut)
    with pytest.raises(BrokerUnavailable):
        first.drain(2)
    # The first connection is left as it is (a dead one could not give anything back on close).
    second = KombuTransport(redis_url)
    second.connect()
    try:
        got = []
        second.consume(queue, got.append)
        second.drain(2)  # not after the 60 s visibility timeout: now
        assert [d.body for d in got] == [b'{"n": 1}']
        got[0].ack()
    finally:
        second.close(delete_queue=queue)
        first.close()


def test_classic_queue_redeclared_as_quorum_is_a_clear_error(amqp_url, unique):
    """A queue that exists as classic cannot become quorum: ValueError saying what to do,
    not a retry loop."""
    name = f"cq{unique}"
    transport = KombuTransport(amqp_url)
    transport.connect()
    try:
        transport.declare_queue("", QueueSpec(name))
        with pytest.raises(ValueError, match=rf"queue .{name}. already exists .*inequivalent arg.*"
                                             rf"rabbitmqctl delete_queue {name}"):
            transport.declare_queue("", declared_as(QueueSpec(name), "quorum", 3))
    finally:
        transport.close()
        delete_queues(amqp_url, f"test-{unique}", name)
