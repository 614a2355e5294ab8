"""``memory://``: records in a dict of this process (for tests; nothing survives a restart)."""

from __future__ import annotations

import json
from typing import Any

from busapp.storage.backends import CREATED, UNCHANGED, UPDATED, Backend, encode


class MemoryBackend(Backend):
    """Records kept as canonical JSON text, so callers never share mutable state with the store."""

    handler_type = "MemoryStoreHandler"

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self._records: dict[tuple[str, str], str] = {}

    def save(self, type_name: str, key: str, data: dict[str, Any]) -> str:
        text = encode(data)
        with self._lock:
            old = self._records.get((type_name, key))
            if old == text:
                return UNCHANGED
            self._records[(type_name, key)] = text
            return CREATED if old is None else UPDATED

    def get(self, type_name: str, key: str) -> dict[str, Any] | None:
        text = self._records.get((type_name, key))
        return None if text is None else json.loads(text)

    def delete(self, type_name: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            text = self._records.pop((type_name, key), None)
        return None if text is None else json.loads(text)

    def list(self, type_name: str) -> list[dict[str, Any]]:
        with self._lock:
            found = sorted((k, v) for (t, k), v in self._records.items() if t == type_name)
        return [json.loads(v) for _, v in found]
