"""Concurrent read-modify-write through the storage service: versions, expect_version, Conflict."""

from __future__ import annotations

import threading

import pytest

from busapp import Client
from busapp.errors import Conflict, InvalidParams, StorageLookupError
from busapp.models import Host
from busapp.storage.client import StorageClient
from tests.storage.conftest import storage_running


def _increment(redis_url: str, exchange: str, address: str, times: int, conflicts: list) -> None:
    """``times`` read-modify-write increments of a Host's cpus, retrying each on Conflict."""
    with Client(redis_url, exchange, timeout=30) as bus:
        storage = StorageClient(bus)
        for _ in range(times):
            while True:
                host, version = storage.get_versioned(Host.new(address=address))
                host.cpus += 1
                try:
                    storage.save(host, expect_version=version)
                    break
                except Conflict:
                    conflicts.append(1)


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
def test_three_clients_incrementing_one_record_lose_no_update(kind, make_store_url, redis_url,
                                                              exchange, unique):
    """3 clients x 100 increments of one record, over 3 storage workers: exactly 300 at the end."""
    conflicts: list = []
    with storage_running(make_store_url(kind), redis_url, exchange, unique, workers=3), \
            Client(redis_url, exchange, timeout=30) as bus:
        storage = StorageClient(bus)
        storage.save(Host.new(address="counter", cpus=0), expect_version=0)
        threads = [threading.Thread(target=_increment,
                                    args=(redis_url, exchange, "counter", 100, conflicts))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads)
        host, version = storage.get_versioned(Host.new(address="counter"))
    assert host.cpus == 300
    assert version == 301


def test_stale_version_raises_conflict_on_the_client(bus):
    """A save with a version someone else already moved past raises Conflict,
    and keeps their write."""
    storage = StorageClient(bus)
    storage.save(Host.new(address="10.9.0.1", cpus=1))
    mine, version = storage.get_versioned(Host.new(address="10.9.0.1"))
    storage.save(Host.new(address="10.9.0.1", cpus=5))  # someone else, in between
    mine.cpus += 1
    with pytest.raises(Conflict) as info:
        storage.save(mine, expect_version=version)
    assert info.value.code == -20002
    assert info.value.data["expected_version"] == version
    assert info.value.data["version"] == version + 1
    assert storage.get_host("10.9.0.1").cpus == 5


def test_expect_version_0_refuses_to_overwrite(bus):
    """expect_version=0 creates a record, and raises Conflict when one is already stored."""
    storage = StorageClient(bus)
    storage.save(Host.new(address="10.9.0.2", os="first"), expect_version=0)
    with pytest.raises(Conflict):
        storage.save(Host.new(address="10.9.0.2", os="second"), expect_version=0)
    assert storage.get_host("10.9.0.2").os == "first"


def test_plain_save_keeps_commissaires_params_and_last_writer_wins(bus):
    """A save with only model_type_name/model_json_data overwrites,
    and returns the record as before."""
    result = bus.call("storage.save", model_type_name="Host",
                      model_json_data={"address": "10.9.0.3", "cpus": 1})
    assert result["cpus"] == 1
    result = bus.call("storage.save", model_type_name="Host",
                      model_json_data={"address": "10.9.0.3", "cpus": 2})
    assert result == Host.new(address="10.9.0.3", cpus=2).to_dict()
    assert bus.call("storage.get", model_type_name="Host",
                    model_json_data={"address": "10.9.0.3"})["cpus"] == 2


def test_get_versioned_on_the_wire(bus):
    """storage.get_versioned answers {"model": ..., "version": N}, for one model or a list."""
    storage = StorageClient(bus)
    storage.save(Host.new(address="10.9.0.4"))
    storage.save(Host.new(address="10.9.0.4", cpus=3))
    one = bus.call("storage.get_versioned", model_type_name="Host",
                   model_json_data={"address": "10.9.0.4"})
    assert one == {"model": Host.new(address="10.9.0.4", cpus=3).to_dict(), "version": 2}
    many = bus.call("storage.get_versioned", model_type_name="Host",
                    model_json_data=[{"address": "10.9.0.4"}])
    assert many == [one]


@pytest.mark.parametrize("data, expect, problem", [
    ([{"address": "10.9.0.5"}], 1, "one model"),
    ({"address": "10.9.0.5"}, -1, ">= 0"),
    ({"address": "10.9.0.5"}, True, "expect_version"),
])
def test_bad_expect_version_is_invalid_params(bus, data, expect, problem):
    """expect_version with a list, negative or not an integer: InvalidParams,
    and nothing is saved."""
    with pytest.raises(InvalidParams, match=problem):
        bus.call("storage.save", model_type_name="Host", model_json_data=data,
                 expect_version=expect)
    with pytest.raises(StorageLookupError):
        bus.call("storage.get", model_type_name="Host", model_json_data={"address": "10.9.0.5"})


def test_update_retries_until_the_change_is_saved(bus):
    """StorageClient.update applies a change with compare-and-set and returns the
    record as saved."""
    storage = StorageClient(bus)
    storage.save(Host.new(address="10.9.0.6", cpus=1))
    calls = []

    def change(host: Host) -> None:
        calls.append(host.cpus)
        if len(calls) == 1:  # another writer gets in between our read and our save, once
            storage.save(Host.new(address="10.9.0.6", cpus=10))
        host.cpus += 1

    saved = storage.update(Host.new(address="10.9.0.6"), change)
    assert calls == [1, 10]
    assert saved.cpus == 11
    assert storage.get_versioned(Host.new(address="10.9.0.6")) == (saved, 3)


def test_huge_integer_from_the_wire_is_refused_naming_the_field(bus):
    """cpus = 10**4000 is InvalidParams naming Host.cpus, and nothing is stored."""
    with pytest.raises(InvalidParams) as info:
        bus.call("storage.save", model_type_name="Host",
                 model_json_data={"address": "10.9.0.7", "cpus": 10**4000})
    assert info.value.data["field"] == "cpus"
    assert "64-bit" in str(info.value)
    with pytest.raises(StorageLookupError):
        StorageClient(bus).get_host("10.9.0.7")
