"""``sqlite:///PATH``: one SQLite file, shared safely by every worker process.

The file is in WAL mode with ``synchronous=FULL``, so a save is on disk when
it returns. A save runs in a ``BEGIN IMMEDIATE`` transaction: it holds the
database's write lock from the read of the old record to the commit, which
is what makes created-vs-updated exact across processes, and what makes a
save with ``expect_version`` a compare-and-set: the version read is the
version replaced.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from busapp.storage.backends.base import (
    CREATED,
    UNCHANGED,
    UPDATED,
    Backend,
    check_expect_version,
    conflict,
    encode,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS busapp_records (
    model_type TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (model_type, key)
)
"""

#: Seconds a writer waits for another process's write lock before failing.
BUSY_TIMEOUT = 30.0


def path_from_url(url: str) -> str:
    """``sqlite:///rel/x.db`` -> ``rel/x.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"SQLite store URL must look like sqlite:///PATH, got {url!r}")
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path:
        raise ValueError("SQLite store URL has no file path: use sqlite:///./.busapp/storage.sqlite3")
    return path


def _add_version_column(conn: sqlite3.Connection) -> None:
    """Give a table made before records had versions its column (existing records: version 1)."""
    def has_version() -> bool:
        return any(col[1] == "version" for col in conn.execute("PRAGMA table_info(busapp_records)"))

    if has_version():
        return
    conn.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
    try:
        if not has_version():
            conn.execute("ALTER TABLE busapp_records ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SQLiteBackend(Backend):
    """A SQLite file; one connection per process, used under a lock by its threads."""

    handler_type = "SQLiteStoreHandler"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = path_from_url(url)
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._forked():
            # Keep the parent's handle referenced: closing it here would drop its locks.
            self._inherited, self._conn = self._conn, None
        if self._conn is None:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
            _add_version_column(conn)
            self._conn = conn
        return self._conn

    def save(self, type_name: str, key: str, data: dict[str, Any],
             expect_version: int | None = None) -> str:
        check_expect_version(expect_version)
        text = encode(data)
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT data, version FROM busapp_records "
                                   "WHERE model_type=? AND key=?", (type_name, key)).fetchone()
                version = 0 if row is None else row[1]
                if expect_version is not None and expect_version != version:
                    raise conflict(type_name, key, expect_version, version)
                if row is not None and row[0] == text:
                    conn.execute("ROLLBACK")
                    return UNCHANGED
                conn.execute("INSERT OR REPLACE INTO busapp_records "
                             "(model_type, key, data, version) VALUES (?, ?, ?, ?)",
                             (type_name, key, text, version + 1))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return CREATED if row is None else UPDATED

    def get_versioned(self, type_name: str, key: str) -> tuple[dict[str, Any], int] | None:
        with self._lock:
            row = self._connection().execute(
                "SELECT data, version FROM busapp_records WHERE model_type=? AND key=?",
                (type_name, key)).fetchone()
        return None if row is None else (json.loads(row[0]), row[1])

    def delete(self, type_name: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            # fetchall: a RETURNING statement commits only once its rows are all read
            rows = self._connection().execute(
                "DELETE FROM busapp_records WHERE model_type=? AND key=? RETURNING data",
                (type_name, key)).fetchall()
        return json.loads(rows[0][0]) if rows else None

    def list(self, type_name: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._connection().execute(
                "SELECT data FROM busapp_records WHERE model_type=? ORDER BY key",
                (type_name,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not self._forked():
                conn.close()
