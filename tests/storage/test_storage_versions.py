"""Record versions and compare-and-set saves, on every backend
(memory, SQLite, PostgreSQL, Redis)."""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest
import redis

from busapp.errors import Conflict
from busapp.storage.backends import CREATED, UNCHANGED, UPDATED, encode, open_backend


@pytest.fixture
def backend(store_url):
    """An opened backend on a fresh store."""
    b = open_backend(store_url)
    yield b
    b.close()


def test_new_record_is_version_1_and_each_change_adds_one(backend):
    """Created at version 1; every save that changes the record adds one;
    an unchanged save does not."""
    backend.save("Host", "a", {"address": "a", "cpus": 1})
    assert backend.get_versioned("Host", "a") == ({"address": "a", "cpus": 1}, 1)
    backend.save("Host", "a", {"address": "a", "cpus": 2})
    backend.save("Host", "a", {"address": "a", "cpus": 3})
    assert backend.save("Host", "a", {"address": "a", "cpus": 3}) == UNCHANGED
    assert backend.get_versioned("Host", "a") == ({"address": "a", "cpus": 3}, 3)
    assert backend.get_versioned("Host", "missing") is None


def test_save_with_the_stored_version_writes_and_moves_it_on(backend):
    """expect_version equal to the stored version: the save is made and the version goes up."""
    backend.save("Host", "a", {"address": "a", "cpus": 1})
    assert backend.save("Host", "a", {"address": "a", "cpus": 2}, expect_version=1) == UPDATED
    assert backend.get_versioned("Host", "a") == ({"address": "a", "cpus": 2}, 2)
    assert backend.save("Host", "a", {"address": "a", "cpus": 2}, expect_version=2) == UNCHANGED
    assert backend.get_versioned("Host", "a")[1] == 2


def test_stale_version_is_a_conflict_and_changes_nothing(backend):
    """expect_version older than the stored one raises Conflict naming both versions;
    the record stays."""
    backend.save("Host", "a", {"address": "a", "cpus": 1})
    backend.save("Host", "a", {"address": "a", "cpus": 2})
    with pytest.raises(Conflict) as info:
        backend.save("Host", "a", {"address": "a", "cpus": 99}, expect_version=1)
    assert info.value.code == -20002
    assert info.value.data == {"model_type_name": "Host", "key": "a",
                               "expected_version": 1, "version": 2}
    assert "version 2" in str(info.value) and "version 1" in str(info.value)
    assert backend.get_versioned("Host", "a") == ({"address": "a", "cpus": 2}, 2)


def test_same_data_with_a_stale_version_is_still_a_conflict(backend):
    """The version is checked before the data is compared: a stale save of equal data is refused."""
    backend.save("Host", "a", {"address": "a", "cpus": 1})
    backend.save("Host", "a", {"address": "a", "cpus": 2})
    with pytest.raises(Conflict):
        backend.save("Host", "a", {"address": "a", "cpus": 2}, expect_version=1)


def test_expect_version_0_creates_only_if_absent(backend):
    """expect_version=0 creates a missing record, and is a Conflict once it exists."""
    assert backend.save("Host", "a", {"address": "a"}, expect_version=0) == CREATED
    with pytest.raises(Conflict) as info:
        backend.save("Host", "a", {"address": "a", "os": "other"}, expect_version=0)
    assert info.value.data["version"] == 1
    assert backend.get("Host", "a") == {"address": "a"}


def test_expecting_a_version_of_a_missing_record_is_a_conflict(backend):
    """expect_version=3 on a key with no record: Conflict reporting version 0,
    and nothing is created."""
    with pytest.raises(Conflict) as info:
        backend.save("Host", "a", {"address": "a"}, expect_version=3)
    assert info.value.data["version"] == 0
    assert backend.get("Host", "a") is None


def test_plain_save_is_last_writer_wins(backend):
    """Without expect_version a save overwrites whatever is stored,
    and still moves the version on."""
    backend.save("Host", "a", {"address": "a", "cpus": 1}, expect_version=0)
    backend.save("Host", "a", {"address": "a", "cpus": 2}, expect_version=1)
    assert backend.save("Host", "a", {"address": "a", "cpus": 7}) == UPDATED
    assert backend.get_versioned("Host", "a") == ({"address": "a", "cpus": 7}, 3)


def test_a_deleted_and_recreated_record_starts_again_at_1(backend):
    """Deleting a record forgets its version: saved again, it is version 1."""
    backend.save("Host", "a", {"address": "a", "cpus": 1})
    backend.save("Host", "a", {"address": "a", "cpus": 2})
    backend.delete("Host", "a")
    backend.save("Host", "a", {"address": "a", "cpus": 3})
    assert backend.get_versioned("Host", "a")[1] == 1


@pytest.mark.parametrize("bad", [-1, True, "1", 1.0])
def test_expect_version_must_be_a_non_negative_integer(backend, bad):
    """A negative or non-integer expect_version is a ValueError, not a silent plain save."""
    with pytest.raises(ValueError, match="expect_version"):
        backend.save("Host", "a", {"address": "a"}, expect_version=bad)
    assert backend.get("Host", "a") is None


def test_threads_doing_read_modify_write_lose_nothing(store_url):
    """4 threads x 50 increments with compare-and-set and retry on Conflict end at exactly 200."""
    backend = open_backend(store_url)
    backend.save("Host", "n", {"address": "n", "cpus": 0})
    conflicts = []

    def increment() -> None:
        for _ in range(50):
            while True:
                data, version = backend.get_versioned("Host", "n")
                try:
                    backend.save("Host", "n", {**data, "cpus": data["cpus"] + 1},
                                 expect_version=version)
                    break
                except Conflict:
                    conflicts.append(1)

    threads = [threading.Thread(target=increment) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert backend.get_versioned("Host", "n") == ({"address": "n", "cpus": 200}, 201)
    finally:
        backend.close()


# -- tables and keys written before records had versions -------------------------------

def test_sqlite_table_without_version_column_is_migrated(make_store_url):
    """An old SQLite table gains the version column on open; its records are at version 1."""
    url = make_store_url("sqlite")
    path = url[len("sqlite:///"):]
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE busapp_records (model_type TEXT NOT NULL, key TEXT NOT NULL, "
                     "data TEXT NOT NULL, PRIMARY KEY (model_type, key))")
        conn.execute("INSERT INTO busapp_records VALUES ('Host', 'old', ?)",
                     (encode({"address": "old"}),))
    conn.close()
    backend = open_backend(url)
    try:
        assert backend.get_versioned("Host", "old") == ({"address": "old"}, 1)
        backend.save("Host", "old", {"address": "old", "cpus": 1}, expect_version=1)
        with pytest.raises(Conflict):
            backend.save("Host", "old", {"address": "old", "cpus": 9}, expect_version=1)
        assert backend.get_versioned("Host", "old") == ({"address": "old", "cpus": 1}, 2)
    finally:
        backend.close()


def test_postgres_table_without_version_column_is_migrated(make_store_url, pg_url, unique):
    """An old PostgreSQL table gains the version column on first use;
    its records are at version 1."""
    url = make_store_url("postgres")
    table = f"t_{unique}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (model_type text NOT NULL, key text NOT NULL, "
                     f"data text NOT NULL, PRIMARY KEY (model_type, key))")
        conn.execute(f"INSERT INTO {table} VALUES ('Host', 'old', %s)",
                     (encode({"address": "old"}),))
    backend = open_backend(url)
    try:
        assert backend.get_versioned("Host", "old") == ({"address": "old"}, 1)
        backend.save("Host", "old", {"address": "old", "cpus": 1}, expect_version=1)
        with pytest.raises(Conflict):
            backend.save("Host", "old", {"address": "old", "cpus": 9}, expect_version=1)
        assert backend.get_versioned("Host", "old") == ({"address": "old", "cpus": 1}, 2)
    finally:
        backend.close()


def test_redis_record_without_a_version_entry_is_version_1(make_store_url, redis_url, unique):
    """A record Redis held before versions existed (no entry in the versions hash) is version 1."""
    url = make_store_url("redis")
    redis.Redis.from_url(redis_url).hset(f"test-{unique}:Host", "old", encode({"address": "old"}))
    backend = open_backend(url)
    try:
        assert backend.get_versioned("Host", "old") == ({"address": "old"}, 1)
        backend.save("Host", "old", {"address": "old", "cpus": 1}, expect_version=1)
        with pytest.raises(Conflict):
            backend.save("Host", "old", {"address": "old", "cpus": 9}, expect_version=1)
        assert backend.get_versioned("Host", "old") == ({"address": "old", "cpus": 1}, 2)
    finally:
        backend.close()
