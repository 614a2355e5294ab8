"""``memory://``: records in a dict of this process (for tests; nothing survives a restart)."""

from __future__ import annotations

import json
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


class MemoryBackend(Backend):
    """Records kept as ``(canonical JSON text, version)``, so callers never share mutable state."""

    handler_type = "MemoryStoreHandler"

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self._records: dict[tuple[str, str], tuple[str, int]] = {}

    def save(self, type_name: str, key: str, data: dict[str, Any],
             expect_version: int | None = None) -> str:
        check_expect_version(expect_version)
        text = encode(data)
        with self._lock:
            old_text, version = self._records.get((type_name, key), (None, 0))
            if expect_version is not None and expect_version != version:
                raise conflict(type_name, key, expect_version, version)
            if old_text == text:
                return UNCHANGED
            self._records[(type_name, key)] = (text, version + 1)
            return CREATED if old_text is None else UPDATED

    def get_versioned(self, type_name: str, key: str) -> tuple[dict[str, Any], int] | None:
        found = self._records.get((type_name, key))
        return None if found is None else (json.loads(found[0]), found[1])

    def delete(self, type_name: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._records.pop((type_name, key), None)
        return None if found is None else json.loads(found[0])

    def list(self, type_name: str) -> list[dict[str, Any]]:
        with self._lock:
            found = sorted((k, v[0]) for (t, k), v in self._records.items() if t == type_name)
        return [json.loads(v) for _, v in found]
