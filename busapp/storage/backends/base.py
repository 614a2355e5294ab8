"""What every storage backend shares: the :class:`Backend` base, record encoding, options.

See :mod:`busapp.storage.backends` for the backends and how a URL picks one.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from busapp import config
from busapp.errors import Conflict
from busapp.transport import mask_url

#: What :meth:`Backend.save` reports.
CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"

#: The store used when neither an argument nor ``$BUSAPP_STORE_URL`` names one.
DEFAULT_STORE_URL: str = config.default("store_url")


def resolve_store_url(url: str | None = None) -> str:
    """``url``, else ``$BUSAPP_STORE_URL``, else :data:`DEFAULT_STORE_URL`."""
    return url or config.get("store_url")


def encode(data: Any) -> str:
    """Canonical JSON text of a record: equal records give equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pop_option(url: str, name: str) -> tuple[str, str | None]:
    """Take busapp's own ``?name=value`` option out of ``url`` (drivers reject unknown ones)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    value = next((v for k, v in query if k == name), None)
    rest = urlencode([(k, v) for k, v in query if k != name])
    return urlunsplit(parts._replace(query=rest)), value


def conflict(type_name: str, key: str, expected: int, actual: int | None) -> Conflict:
    """The :class:`~busapp.errors.Conflict` for a compare-and-set that found ``actual``."""
    if actual is None or actual == expected:  # read after the failed write: it moved again
        found = "changed while being saved"
    elif actual == 0:
        found = "has no stored record"
    else:
        found = f"is at version {actual}"
    return Conflict(
        f"{type_name} {key!r} {found}, not version {expected}: someone else wrote it first; "
        f"get it again, reapply your change and save with the version you read",
        data={"model_type_name": type_name, "key": key, "expected_version": expected,
              "version": actual})


def check_expect_version(expect_version: int | None) -> None:
    """ValueError unless ``expect_version`` is None or an integer >= 0."""
    if expect_version is None:
        return
    if (isinstance(expect_version, bool) or not isinstance(expect_version, int)
            or expect_version < 0):
        raise ValueError(f"expect_version must be an integer >= 0 (0: the record must not exist "
                         f"yet), got {expect_version!r}")


class Backend:
    """The interface every backend implements (records are JSON-shaped dicts)."""

    #: ``handler_type`` reported by ``storage.list_store_handlers``.
    handler_type = "Backend"

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._pid = os.getpid()

    def save(self, type_name: str, key: str, data: dict[str, Any],
             expect_version: int | None = None) -> str:
        """Write the record; return CREATED, UPDATED or UNCHANGED (decided atomically).

        With ``expect_version``, write only if the stored version is that one
        (0: no record yet); otherwise raise :class:`~busapp.errors.Conflict`.
        """
        raise NotImplementedError

    def get_versioned(self, type_name: str, key: str) -> tuple[dict[str, Any], int] | None:
        """``(record, version)`` read in one atomic step, or None."""
        raise NotImplementedError

    def get(self, type_name: str, key: str) -> dict[str, Any] | None:
        """The stored record, or None."""
        found = self.get_versioned(type_name, key)
        return None if found is None else found[0]

    def delete(self, type_name: str, key: str) -> dict[str, Any] | None:
        """Remove the record; return what was stored (None if there was nothing)."""
        raise NotImplementedError

    def list(self, type_name: str) -> list[dict[str, Any]]:
        """Every record of ``type_name``, ordered by key (``[]`` if none)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the backend reopens them if used again)."""

    def describe(self) -> dict[str, Any]:
        """``config`` for ``list_store_handlers`` (secrets masked)."""
        return {"name": f"busapp.storage.{type(self).__module__.rsplit('.', 1)[-1]}",
                "url": mask_url(self.url)}

    def _forked(self) -> bool:
        """True (once) when this process is a fork of the one that opened the backend."""
        if self._pid == os.getpid():
            return False
        self._pid = os.getpid()
        self._lock = threading.RLock()
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.url)}>"
