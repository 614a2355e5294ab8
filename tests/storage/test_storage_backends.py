"""The backend contract: memory, SQLite, PostgreSQL and Redis behave the same."""

from __future__ import annotations

import multiprocessing

import pytest

from busapp.storage.backends import (
    CREATED,
    UNCHANGED,
    UPDATED,
    DEFAULT_STORE_URL,
    open_backend,
    resolve_store_url,
)


@pytest.fixture
def backend(store_url):
    """An opened backend on a fresh store."""
    b = open_backend(store_url)
    yield b
    b.close()


def test_save_then_get(backend):
    """A saved record comes back from get as saved."""
    assert backend.save("Host", "10.0.0.1", {"address": "10.0.0.1", "cpus": 2}) == CREATED
    assert backend.get("Host", "10.0.0.1") == {"address": "10.0.0.1", "cpus": 2}


def test_save_reports_updated_and_unchanged(backend):
    """A second save is 'updated' if the data differs and 'unchanged' if it is the same."""
    backend.save("Host", "a", {"address": "a", "cpus": 1})
    assert backend.save("Host", "a", {"cpus": 1, "address": "a"}) == UNCHANGED
    assert backend.save("Host", "a", {"address": "a", "cpus": 2}) == UPDATED
    assert backend.get("Host", "a")["cpus"] == 2


def test_get_missing_is_none(backend):
    """get of a key never saved returns None."""
    assert backend.get("Host", "nowhere") is None


def test_types_are_separate(backend):
    """The same key under two model types is two records."""
    backend.save("Host", "x", {"address": "x"})
    assert backend.save("HostCreds", "x", {"address": "x", "remote_user": "me"}) == CREATED
    assert backend.get("Host", "x") == {"address": "x"}


def test_list_of_a_type_with_no_records_is_empty(backend):
    """list of a type never saved is []."""
    assert backend.list("Network") == []


def test_list_is_ordered_by_key(backend):
    """list returns every record of the type, ordered by key."""
    for key in ("b", "c", "a"):
        backend.save("Host", key, {"address": key})
    backend.save("Cluster", "z", {"name": "z"})
    assert [r["address"] for r in backend.list("Host")] == ["a", "b", "c"]


def test_delete_returns_the_record_once(backend):
    """delete returns the stored record, then None; the record is gone."""
    backend.save("Host", "a", {"address": "a", "os": "fedora"})
    assert backend.delete("Host", "a") == {"address": "a", "os": "fedora"}
    assert backend.delete("Host", "a") is None
    assert backend.get("Host", "a") is None
    assert backend.save("Host", "a", {"address": "a"}) == CREATED


def test_unicode_keys_and_values(backend):
    """Non-ASCII keys and values round-trip exactly."""
    key = "réseau-网络-🚀"
    data = {"name": key, "options": {"note": "naïve ☃ \u0000 end", "emoji": "🙂"}}
    backend.save("Network", key, data)
    assert backend.get("Network", key) == data
    assert backend.list("Network") == [data]


def test_one_megabyte_record(backend):
    """A 1 MB record is stored and read back whole."""
    data = {"name": "big", "options": {"blob": "x" * (1024 * 1024)}}
    assert backend.save("Network", "big", data) == CREATED
    assert backend.get("Network", "big") == data


def test_data_survives_reopening(persistent_store_url):
    """A record saved through one backend object is read by a new one (a restart)."""
    first = open_backend(persistent_store_url)
    first.save("Host", "kept", {"address": "kept"})
    first.close()
    second = open_backend(persistent_store_url)
    try:
        assert second.get("Host", "kept") == {"address": "kept"}
    finally:
        second.close()


def _save_many(url: str, writer: int, keys: int, saves: int, out) -> None:
    backend = open_backend(url)
    outcomes = [
        backend.save("Host", f"k{i % keys}", {"address": f"k{i % keys}", "by": writer, "n": i})
        for i in range(saves)
    ]
    out.put(outcomes)


def test_concurrent_processes_create_each_key_once(persistent_store_url):
    """Three processes saving overlapping keys: each key is 'created' exactly once."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_save_many, args=(persistent_store_url, w, 20, 60, out))
             for w in range(3)]
    for p in procs:
        p.start()
    outcomes = [o for _ in procs for o in out.get(timeout=60)]
    for p in procs:
        p.join(10)
    assert outcomes.count(CREATED) == 20
    assert outcomes.count(UPDATED) == 180 - 20
    assert len(open_backend(persistent_store_url).list("Host")) == 20


def test_backend_is_chosen_by_url():
    """Each URL scheme picks its backend; an unknown one says which are known."""
    assert type(open_backend("memory://")).__name__ == "MemoryBackend"
    assert type(open_backend("sqlite:///x.db")).__name__ == "SQLiteBackend"
    assert type(open_backend("postgresql://u@h/db")).__name__ == "PostgresBackend"
    assert type(open_backend("redis://h:6379/0")).__name__ == "RedisBackend"
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        open_backend("mongodb://h/db")


def test_default_store_url(monkeypatch):
    """With nothing given, the store is $BUSAPP_STORE_URL, else ./.busapp/storage.sqlite3."""
    monkeypatch.delenv("BUSAPP_STORE_URL", raising=False)
    assert resolve_store_url() == DEFAULT_STORE_URL == "sqlite:///./.busapp/storage.sqlite3"
    monkeypatch.setenv("BUSAPP_STORE_URL", "memory://")
    assert resolve_store_url() == "memory://"


def test_secrets_are_masked_in_description():
    """list_store_handlers' config never shows a password."""
    config = open_backend("postgresql://user:hunter2@db.example/app").describe()
    assert "hunter2" not in str(config)
