"""The storage service on a real broker: calls, errors, events, restarts, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest
import redis

from busapp import App, Client
from busapp.errors import InvalidParams, StorageLookupError
from busapp.models import Cluster, ContainerManagerConfig, Host, Hosts, Network
from busapp.storage.client import StorageClient
from tests._services import run_app
from tests.storage.conftest import storage_running


@pytest.fixture
def events_key(redis_url, unique):
    """A Redis list that subscriber processes append events to; deleted after the test."""
    key = f"test-events-{unique}"
    yield key
    redis.Redis.from_url(redis_url).delete(key)


def recorder(redis_url: str, key: str):
    """An on_storage_event handler appending ``[event, class, primary key, model]`` to ``key``."""
    def record(event, model):
        entry = [event, type(model).__name__, model.primary_key, model.to_dict(secure=False)]
        redis.Redis.from_url(redis_url).rpush(key, json.dumps(entry))
    return record


def wait_for_events(redis_url: str, key: str, count: int, deadline: float = 30.0) -> list:
    """The first ``count`` recorded events, waiting for them to arrive."""
    r = redis.Redis.from_url(redis_url)
    end = time.monotonic() + deadline
    while r.llen(key) < count:
        assert time.monotonic() < end, f"only {r.llen(key)} of {count} events arrived"
        time.sleep(0.02)
    return [json.loads(x) for x in r.lrange(key, 0, -1)]


def subscriber_app(unique: str, redis_url: str, key: str, model=None, event="*") -> App:
    """An App recording storage events, with a ping for readiness."""
    app = App(f"sub{unique}")
    app.add_storage_handler(recorder(redis_url, key), model, event)
    app.add_method(lambda: "pong", "ping")
    return app


def test_save_get_list_delete(bus):
    """StorageClient saves, gets, lists and deletes models through the service."""
    storage = StorageClient(bus)
    saved = storage.save(Host.new(address="10.1.0.1", cpus=2))
    assert saved == Host.new(address="10.1.0.1", cpus=2)
    assert storage.get_host("10.1.0.1").cpus == 2
    storage.save(Host.new(address="10.1.0.2"))
    assert {"10.1.0.1", "10.1.0.2"} <= {h.address for h in storage.list(Host)}
    hosts = storage.list(Hosts)
    assert isinstance(hosts, Hosts) and "10.1.0.2" in [h.address for h in hosts.hosts]
    storage.delete(Host.new(address="10.1.0.1"))
    assert "10.1.0.1" not in {h.address for h in storage.list(Host)}
    with pytest.raises(StorageLookupError):
        storage.get_host("10.1.0.1")


def test_missing_record_and_empty_list(bus):
    """A missing record is StorageLookupError (-20000); a type with no records lists as []."""
    storage = StorageClient(bus)
    with pytest.raises(StorageLookupError, match="10.9.9.9") as info:
        storage.get_host("10.9.9.9")
    assert info.value.code == -20000
    assert info.value.data["model_type_name"] == "Host"
    with pytest.raises(StorageLookupError):
        storage.delete(Host.new(address="10.9.9.9"))
    assert bus.call("storage.list", model_type_name="ContainerManagerConfigs") == []
    assert StorageClient(bus).list(ContainerManagerConfig) == []


def test_save_and_get_many(bus):
    """A list saved in one call is stored whole and comes back from get in order."""
    storage = StorageClient(bus)
    clusters = [Cluster.new(name="many1", hostset=["a"]), Cluster.new(name="many2")]
    assert storage.save_many(clusters) == clusters
    wanted = [Cluster.new(name="many2"), Cluster.new(name="many1")]
    assert storage.get_many(wanted) == clusters[::-1]
    assert storage.get_cluster("many1").hostset == ["a"]  # hidden, yet stored
    with pytest.raises(StorageLookupError, match="'nope'"):
        storage.get_many([Cluster.new(name="many1"), Cluster.new(name="nope")])


def test_invalid_data_from_the_wire(bus):
    """Wrong types, an unknown type name, a missing primary key: -32602 naming the field."""
    def save(type_name, data):
        with pytest.raises(InvalidParams) as info:
            bus.call("storage.save", model_type_name=type_name, model_json_data=data)
        return info.value

    error = save("Host", {"address": "bad", "cpus": "two"})
    assert error.data["field"] == "cpus" and "Host.cpus" in error.message
    assert save("Host", {"cpus": 1}).data["field"] == "address"
    assert save("Host", {"address": ""}).data["field"] == "address"
    assert save("Network", {"name": "bad", "type": "calico"}).data["field"] == "type"
    error = save("Host", [{"address": "bad-ok"}, {"address": "bad2", "memory": []}])
    assert error.data["index"] == 1 and error.data["field"] == "memory"
    error = save("Hostz", {"address": "bad"})
    assert error.data["param"] == "model_type_name" and "Host" in error.data["known"]
    assert save("Host", "10.0.0.1").data["param"] == "model_json_data"
    with pytest.raises(InvalidParams, match="model_type_name"):
        bus.call("storage.save", model_type_name=3, model_json_data={"address": "bad"})
    with pytest.raises(StorageLookupError):  # nothing of a rejected list was written
        StorageClient(bus).get_host("bad-ok")


def test_list_store_handlers(bus):
    """list_store_handlers describes the backend and the storable model types,
    as Commissaire did."""
    [handler] = bus.call("storage.list_store_handlers")
    assert handler["handler_type"] == "SQLiteStoreHandler"
    assert {"Host", "Cluster", "Network", "HostCreds"} <= set(handler["model_types"])
    assert "Hosts" not in handler["model_types"]


def test_restart_keeps_data(tmp_path, redis_url, exchange, unique):
    """A record saved before the storage service restarts is there after it (default SQLite)."""
    url = f"sqlite:///{tmp_path}/s.db"
    with storage_running(url, redis_url, exchange, unique), Client(redis_url, exchange) as bus:
        StorageClient(bus).save(Host.new(address="kept", os="fedora"))
    with storage_running(url, redis_url, exchange, unique), Client(redis_url, exchange) as bus:
        assert StorageClient(bus).get_host("kept").os == "fedora"


def test_events_once_per_app_with_three_workers(shared, bus, unique, events_key):
    """With --workers 3, each created/updated/deleted event is handled once;
    unchanged saves send none."""
    url, exchange = shared
    sub = subscriber_app(unique, url, events_key)
    with run_app(sub, url, exchange, workers=3):
        storage = StorageClient(bus)
        for i in range(10):
            storage.save(Host.new(address=f"h{i}"))
        storage.save(Host.new(address="h0"))                   # unchanged: no event
        storage.save(Host.new(address="h1", status="active"))  # updated
        storage.save(Cluster.new(name="c", hostset=["h1"]))    # created, hostset hidden
        storage.delete(Host.new(address="h2"))                 # deleted
        events = wait_for_events(url, events_key, 13)
    assert sorted(e[2] for e in events if e[0] == "created") == sorted(
        [f"h{i}" for i in range(10)] + ["c"])
    # handlers run concurrently, so events may be recorded out of order
    assert sorted((e[0], e[2]) for e in events if e[0] != "created") == [
        ("deleted", "h2"), ("updated", "h1")]
    assert len(events) == 13  # the service stopped after draining: no duplicate came late
    [cluster] = [e for e in events if e[1] == "Cluster"]
    assert "hostset" not in cluster[3]


def test_raising_handler_is_logged_and_later_events_arrive(shared, bus, unique, events_key, capfd):
    """A handler that raises is logged; the events after it are still handled."""
    url, exchange = shared
    record = recorder(url, events_key)

    def fussy(event, model):
        if model.address == "boom":
            raise RuntimeError("handler exploded on purpose")
        record(event, model)

    sub = App(f"sub{unique}")
    sub.add_storage_handler(fussy, Host, "created")
    sub.add_method(lambda: "pong", "ping")
    with run_app(sub, url, exchange):
        storage = StorageClient(bus)
        for address in ("boom", "ok1", "ok2"):
            storage.save(Host.new(address=address))
        events = wait_for_events(url, events_key, 2)
    assert sorted(e[2] for e in events) == ["ok1", "ok2"]
    assert "handler exploded on purpose" in "".join(capfd.readouterr())


def _client_saves(url: str, exchange: str, writer: int, out) -> None:
    with Client(url, exchange, timeout=30) as bus:
        storage = StorageClient(bus)
        for i in range(100):
            key = f"k{(i * 7 + writer * 13) % 40}"  # overlapping keys across writers
            storage.save(Host.new(address=key, os=f"w{writer}-{i}"))  # every save changes data
    out.put(writer)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_concurrent_saves_from_three_clients(kind, make_store_url, redis_url, exchange, unique,
                                             events_key):
    """3 storage workers, 3 clients, 300 saves on 40 keys: all kept, one 'created' per key."""
    sub = subscriber_app(unique, redis_url, events_key, Host)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    with storage_running(make_store_url(kind), redis_url, exchange, unique, workers=3), \
            run_app(sub, redis_url, exchange), Client(redis_url, exchange) as bus:
        clients = [ctx.Process(target=_client_saves, args=(redis_url, exchange, w, out))
                   for w in range(3)]
        for p in clients:
            p.start()
        assert sorted(out.get(timeout=120) for _ in clients) == [0, 1, 2]
        for p in clients:
            p.join(10)
        stored = StorageClient(bus).list(Host)
        events = wait_for_events(redis_url, events_key, 300)
    assert sorted(h.address for h in stored) == sorted(f"k{i}" for i in range(40))
    created = [e[2] for e in events if e[0] == "created"]
    assert sorted(created) == sorted(f"k{i}" for i in range(40))
    assert sum(e[0] == "updated" for e in events) == 300 - 40
    assert len(events) == 300


def test_round_trip_and_event_on_rabbitmq(tmp_path, amqp_url, redis_url, exchange, unique,
                                          events_key):
    """On RabbitMQ too, a save is stored and its event reaches a subscriber."""
    sub = subscriber_app(unique, redis_url, events_key)
    with storage_running(f"sqlite:///{tmp_path}/s.db", amqp_url, exchange, unique), \
            run_app(sub, amqp_url, exchange), Client(amqp_url, exchange) as bus:
        storage = StorageClient(bus)
        storage.save(Network.new(name="n1", type="flannel_server"))
        assert storage.get_network("n1").type == "flannel_server"
        [event] = wait_for_events(redis_url, events_key, 1)
    assert event[:3] == ["created", "Network", "n1"]
