"""``postgresql://...``: PostgreSQL through psycopg 3.

Records live in one table (``busapp_records`` unless the URL says
``?table=NAME``), as canonical JSON text (``jsonb`` cannot hold ``\\u0000``,
which JSON and the other backends allow). A save is one
``INSERT ... ON CONFLICT DO UPDATE ... WHERE data IS DISTINCT FROM ...``
statement in autocommit mode: PostgreSQL decides created (a fresh row),
updated (a changed row) or unchanged (no row returned) atomically, and the
write is committed when the statement returns. A save with
``expect_version`` is one conditional statement too (``INSERT ... ON
CONFLICT DO NOTHING`` for version 0, ``UPDATE ... WHERE version = %s``
otherwise), so no other write can come between the check and the write.
"""

from __future__ import annotations

import json
import re
from typing import Any

from busapp import _extras
from busapp.storage.backends.base import (
    CREATED,
    UNCHANGED,
    UPDATED,
    Backend,
    check_expect_version,
    conflict,
    encode,
    pop_option,
)

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


class PostgresBackend(Backend):
    """One autocommit connection per process, shared by its threads under a lock."""

    handler_type = "PostgreSQLStoreHandler"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._dsn, table = pop_option(url, "table")
        self.table = table or "busapp_records"
        if not _TABLE_NAME.match(self.table):
            raise ValueError(f"table name {self.table!r} must be a plain SQL identifier "
                             f"(letters, digits, underscore)")
        self._conn: Any = None
        # Fail here, when the store is chosen, not in a worker at the first call.
        _extras.psycopg()

    def _connection(self) -> Any:
        psycopg = _extras.psycopg()
        if self._forked():
            # Keep the parent's connection referenced: finalising it here would close the
            # parent's session too.
            self._inherited, self._conn = self._conn, None
        if self._conn is None or self._conn.closed or self._conn.broken:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
            with conn.transaction():
                # The advisory lock serialises concurrent first uses: CREATE TABLE IF NOT
                # EXISTS alone can still fail when two processes race on it.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ("
                             "model_type text NOT NULL, key text NOT NULL, data text NOT NULL, "
                             "version bigint NOT NULL DEFAULT 1, PRIMARY KEY (model_type, key))")
                self._add_version_column(conn)
            self._conn = conn
        return self._conn

    def _add_version_column(self, conn: Any) -> None:
        """Give a table made before records had versions its column (existing records:
        version 1)."""
        # Checked first: ALTER TABLE takes an exclusive lock on the table even when it has
        # nothing to do.
        found = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = "
                             "current_schema() AND table_name = %s AND column_name = 'version'",
                             (self.table.lower(),)).fetchone()
        if found is None:
            conn.execute(f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS "
                         f"version bigint NOT NULL DEFAULT 1")

    def _run(self, sql: str, params: tuple) -> list[tuple]:
        """Execute with one retry on a fresh connection if the old one was dropped."""
        psycopg = _extras.psycopg()
        with self._lock:
            for attempt in (1, 2):
                try:
                    cur = self._connection().execute(sql, params)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError:
                    if attempt == 2 or self._conn is None or not self._conn.broken:
                        raise
                    self._conn = None
        raise AssertionError("unreachable")

    def save(self, type_name: str, key: str, data: dict[str, Any],
             expect_version: int | None = None) -> str:
        check_expect_version(expect_version)
        if expect_version is None:
            return self._upsert(type_name, key, encode(data))
        if expect_version == 0:
            rows = self._run(f"INSERT INTO {self.table} (model_type, key, data) "
                             "VALUES (%s, %s, %s) "
                             "ON CONFLICT (model_type, key) DO NOTHING RETURNING version",
                             (type_name, key, encode(data)))
            if not rows:
                raise conflict(type_name, key, 0, self._version(type_name, key))
            return CREATED
        return self._compare_and_set(type_name, key, encode(data), expect_version)

    def _upsert(self, type_name: str, key: str, text: str) -> str:
        # xmax = 0 marks a row version this statement inserted (not an update of an older one).
        rows = self._run(
            f"INSERT INTO {self.table} AS t (model_type, key, data) VALUES (%s, %s, %s) "
            f"ON CONFLICT (model_type, key) DO UPDATE SET data = EXCLUDED.data, "
            f"version = t.version + 1 "
            f"WHERE t.data IS DISTINCT FROM EXCLUDED.data RETURNING (t.xmax = 0)",
            (type_name, key, text))
        if not rows:
            return UNCHANGED
        return CREATED if rows[0][0] else UPDATED

    def _compare_and_set(self, type_name: str, key: str, text: str, expected: int) -> str:
        # The row is rewritten even when the data is the same, so that the returned version
        # tells updated (expected + 1) from unchanged (expected) from the same statement.
        rows = self._run(
            f"UPDATE {self.table} SET data = %s, version = CASE WHEN data IS DISTINCT FROM %s "
            f"THEN version + 1 ELSE version END "
            f"WHERE model_type = %s AND key = %s AND version = %s RETURNING version",
            (text, text, type_name, key, expected))
        if not rows:
            raise conflict(type_name, key, expected, self._version(type_name, key))
        return UNCHANGED if rows[0][0] == expected else UPDATED

    def _version(self, type_name: str, key: str) -> int:
        """The stored version (0: no record), for a Conflict's message only."""
        rows = self._run(f"SELECT version FROM {self.table} WHERE model_type = %s AND key = %s",
                         (type_name, key))
        return rows[0][0] if rows else 0

    def get_versioned(self, type_name: str, key: str) -> tuple[dict[str, Any], int] | None:
        rows = self._run(f"SELECT data, version FROM {self.table} "
                         f"WHERE model_type = %s AND key = %s", (type_name, key))
        return (json.loads(rows[0][0]), rows[0][1]) if rows else None

    def delete(self, type_name: str, key: str) -> dict[str, Any] | None:
        rows = self._run(f"DELETE FROM {self.table} WHERE model_type = %s AND key = %s "
                         f"RETURNING data", (type_name, key))
        return json.loads(rows[0][0]) if rows else None

    def list(self, type_name: str) -> list[dict[str, Any]]:
        rows = self._run(f'SELECT data FROM {self.table} WHERE model_type = %s '
                         f'ORDER BY key COLLATE "C"', (type_name,))
        return [json.loads(r[0]) for r in rows]

    def drop(self) -> None:
        """Drop the table (tests use a table per run)."""
        self._run(f"DROP TABLE IF EXISTS {self.table}", ())
        self.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "table": self.table}

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not self._forked():
                conn.close()
