"""Who may call what: keyrings, HMAC-SHA256 message signing, replay memory.

Broker credentials decide who may reach the broker; a keyring decides who may call which
method. Off unless a keyring (service side) or a key (caller side) is given.

:class:`Keyring` is the keys a service accepts; signing and verifying are
:mod:`busapp.core.signing`'s (re-exported here), which says what a signature covers and
what signs what. Replay memory and the gate a worker checks each message with are
:mod:`busapp.runtime.gate`'s.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from busapp import config
from busapp.core.signing import (
    CONTENT_TYPE,
    COVERED_HEADERS,
    DEFAULT_REPLAY_MEMORY,
    DEFAULT_REPLAY_WINDOW,
    HEADERS,
    KEY_ENV,
    KEY_HEADER,
    KEYRING_ENV,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Key,
    KeyLike,
    _check_id,
    _secret_bytes,
    covered,
    key_from_env,
    parse_key,
    sign,
    signed_by,
    signer,
    unsigned_refusal,
    verify,
)
from busapp.errors import Refused

__all__ = [
    "CONTENT_TYPE", "COVERED_HEADERS", "DEFAULT_REPLAY_MEMORY", "DEFAULT_REPLAY_WINDOW", "HEADERS",
    "KEY_ENV", "KEY_HEADER", "KEYRING_ENV", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Key",
    "KeyLike", "Keyring", "Refused", "covered", "key_from_env", "parse_key", "sign",
    "signed_by", "signer", "unsigned_refusal", "verify",
]

log = structlog.get_logger("busapp.security")


class Keyring:
    """The keys a service accepts: ``{key id: secret}``.

    Args:
        keys: key ids and their secrets (text or bytes).
        own: the id this service signs its own calls and events with (default: the
            App's name when the keyring has a key of that name).
        replay_window: seconds a signed request stays acceptable.
        replay_memory: signatures each worker remembers at most.

    Example::

        keys = Keyring({"frontend": "s3cret-1", "ops": "s3cret-2"})
        app = App("billing", keyring=keys)
    """

    def __init__(self, keys: Mapping[str, str | bytes], *, own: str | None = None,
                 replay_window: float = DEFAULT_REPLAY_WINDOW,
                 replay_memory: int = DEFAULT_REPLAY_MEMORY) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise ValueError("a keyring needs at least one key: {key_id: secret}")
        #: ``{key id: secret bytes}``.
        self.secrets: dict[str, bytes] = {
            _check_id(k): _secret_bytes(k, v) for k, v in keys.items()}
        if own is not None and own not in self.secrets:
            raise ValueError(f"own key {own!r} is not in the keyring; "
                             f"known: {sorted(self.secrets)}")
        if not replay_window > 0:
            raise ValueError(f"replay_window must be > 0 seconds, got {replay_window!r}")
        self.own = own
        self.replay_window = float(replay_window)
        self.replay_memory = replay_memory

    def __contains__(self, key_id: object) -> bool:
        return key_id in self.secrets

    def __repr__(self) -> str:  # ids only: a secret is never shown
        return f"<Keyring keys={sorted(self.secrets)} own={self.own!r}>"

    @property
    def ids(self) -> list[str]:
        """The key ids, sorted."""
        return sorted(self.secrets)

    def key(self, key_id: str) -> Key:
        """``(key_id, secret)``, to sign with (KeyError if unknown)."""
        return key_id, self.secrets[key_id]

    def own_key(self, default: str | None = None) -> Key | None:
        """The key this service signs with: :attr:`own`, else ``default`` if in the keyring."""
        key_id = self.own or (default if default in self.secrets else None)
        return None if key_id is None else self.key(key_id)

    def check_allow(self, allow: Iterable[str], where: str) -> frozenset[str]:
        """``allow`` as a frozenset, after checking each id is a key of this keyring."""
        allowed = frozenset(allow)
        unknown = sorted(allowed - self.secrets.keys())
        if unknown:
            raise ValueError(f"{where}: allow names keys {unknown} that the keyring does not "
                             f"hold; known: {self.ids}")
        return allowed

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **options: Any) -> Keyring:
        """Load a keyring file: JSON ``{"keys": {id: secret}, "own": id}`` or ``{id: secret}``,
        or text lines ``id:secret`` (``own=id`` names the own key).

        In the text form, ``#`` at the start of a line, or after a space or tab, starts a
        comment that runs to the end of the line: ``ops: 9a1e...   # operators' tooling``
        holds the secret ``9a1e...``. A ``#`` inside a secret (``ops:a#b``) is part of it;
        a secret cannot hold whitespace followed by ``#``.

        A file that others than its owner may read is loaded with a warning.

        Raises:
            ValueError: the file cannot be read or holds no keys (naming the line).
        """
        path = Path(path)
        try:
            text = path.read_text()
            mode = path.stat().st_mode
        except OSError as exc:
            raise ValueError(f"cannot read keyring {str(path)!r}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("keyring file is readable by others; chmod 600 it", path=str(path))
        keys, own = _parse_keyring(text, str(path))
        options.setdefault("own", own)
        return cls(keys, **options)

    @classmethod
    def from_env(cls, **options: Any) -> Keyring | None:
        """The keyring in the file ``$BUSAPP_KEYRING`` names, or None when it is unset."""
        path = config.get("keyring")
        return cls.from_file(path, **options) if path else None


#: Where a comment starts on a keyring line: whitespace, then ``#``.
_INLINE_COMMENT = re.compile(r"\s#")


def _parse_keyring(text: str, where: str) -> tuple[dict[str, str], str | None]:
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"keyring {where!r} is not valid JSON: {exc}") from None
        found = data.get("keys", data) if isinstance(data, dict) else None
        own = data.get("own") if isinstance(data, dict) and "keys" in data else None
        if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
            raise ValueError(f"keyring {where!r}: want {{\"keys\": {{id: secret}}}} "
                             "or {id: secret}")
        return found, own
    keys: dict[str, str] = {}
    own = None
    for number, line in enumerate(text.splitlines(), 1):
        line = _INLINE_COMMENT.split(line, 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("own="):
            own = line[4:].strip()
            continue
        key_id, sep, secret = line.partition(":")
        if not sep or not key_id.strip() or not secret.strip():
            raise ValueError(f"keyring {where!r} line {number}: want id:secret")
        keys[key_id.strip()] = secret.strip()
    if not keys:
        raise ValueError(f"keyring {where!r} holds no keys (lines of id:secret)")
    return keys, own
