"""Every setting busapp reads from the environment, in one place.

:class:`Settings` lists them: each field is one ``BUSAPP_*`` variable with its default,
its type and a one-line description (the documentation's environment table is made
from it). Nothing else in busapp reads a ``BUSAPP_*`` variable.

Settings are read when they are used, not at import: a worker forked after the CLI
set ``$BUSAPP_KEYRING`` sees it, and so does a test that sets a variable with
``monkeypatch.setenv``. :func:`get` reads one setting (cheap: the hot path calls it);
:meth:`Settings.from_env` reads them all::

    from busapp import config

    config.get("exchange")            # "commissaire" unless $BUSAPP_EXCHANGE says otherwise
    config.Settings.from_env()        # every setting, as one frozen object
    config.env_name("broker_url")     # "BUSAPP_BROKER_URL"

A value that cannot be parsed raises :class:`~busapp.errors.ConfigError` naming the
variable and what it wants.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from busapp.errors import ConfigError

PREFIX = "BUSAPP_"


def _text(raw: str) -> str:
    return raw


def _seconds(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _whole(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _flag(raw: str) -> bool | None:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0 (true/false, yes/no, on/off)")


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


#: What each parser wants, for error messages and the documentation.
_KINDS: dict[Callable[[str], Any], str] = {
    _text: "text", _seconds: "seconds", _whole: "integer", _flag: "flag",
    _names: "comma-separated list",
}


def setting(default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    """One environment setting: a field of :class:`Settings` (its variable is
    ``BUSAPP_<FIELD NAME IN CAPITALS>``)."""
    return attrs.field(default=default, metadata={"parse": parse, "doc": doc})


@attrs.frozen
class Settings:
    """Every ``BUSAPP_*`` environment variable busapp reads (see the module docstring)."""

    broker_url: str | None = setting(
        None, _text, "Broker URL when none is passed (redis://, amqp://, sentinel://, ...); "
        "unset: the embedded broker under ./.busapp/.")
    exchange: str = setting(
        "commissaire", _text, "The topic exchange services and callers use when none is "
        "passed.")
    store_url: str = setting(
        "sqlite:///./.busapp/storage.sqlite3", _text,
        "The storage service's backend (sqlite:///, postgresql://, redis://, memory://).")
    storage_models: tuple[str, ...] = setting(
        (), _names, "Modules declaring your own models, imported by the storage service.")
    key: str | None = setting(
        None, _text, "ID:SECRET: the key clients and the CLI sign their messages with.")
    keyring: str | None = setting(
        None, _text, "Path of the keyring file `busapp run` and `busapp storage` load when "
        "no --keyring is given.")
    delivery_key: str | None = setting(
        None, _text, "Key signing delivery counts (any text); give every host of a "
        "deployment the same one. Unset: a per-user key file.")
    queue_type: str = setting(
        "classic", _text, "classic, or quorum to declare RabbitMQ quorum queues (clusters).")
    reply_to: tuple[str, ...] = setting(
        (), _names, "Glob patterns of further queues a service may reply to (besides "
        "busapp.reply.* and response-<uuid>).")
    event_queue_expires: float = setting(
        7 * 24 * 3600.0, _seconds, "Seconds an event queue outlives its last consumer on "
        "RabbitMQ (0: forever).")
    visibility_timeout: float = setting(
        60.0, _seconds, "Redis: seconds before an unacknowledged message of a vanished "
        "consumer is delivered again.")
    binding_tracking: bool = setting(
        True, _flag, "Redis: 0 to read an exchange's bindings on every publish instead of "
        "keeping them until Redis reports a change (client tracking, Redis 6 or later).")
    binding_cache_ttl: float = setting(
        0.0, _seconds, "Redis, with binding_tracking off or unavailable: seconds a publisher "
        "may reuse an exchange's bindings without reading them again (0: every publish).")
    replica_wait_ms: int = setting(
        500, _whole, "sentinel:// only: milliseconds a publish waits for a replica to have it.")
    confirm_publish: bool | None = setting(
        None, _flag, "RabbitMQ: 1 to have the broker confirm every publish, 0 never; unset: "
        "only when the URL lists several nodes.")
    embedded_idle: float = setting(
        30.0, _seconds, "Seconds the embedded broker stays up with no client before it stops.")
    unacked_owner: str | None = setting(
        None, _text, "Set by `busapp run` in each worker: names the owner of its unacknowledged "
        "messages (do not set it yourself).")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every setting, read from ``environ`` (default ``os.environ``).

        Raises:
            ConfigError: a variable holds a value of the wrong kind.
        """
        environ = os.environ if environ is None else environ
        return cls(**{f.name: _read(f.name, environ.get(env_name(f.name)))
                      for f in attrs.fields(cls)})


@functools.cache
def _field(name: str) -> attrs.Attribute:
    try:
        return getattr(attrs.fields(Settings), name)
    except AttributeError:
        known = ", ".join(f.name for f in attrs.fields(Settings))
        raise KeyError(f"no setting {name!r}; known: {known}") from None


def env_name(name: str) -> str:
    """The environment variable of setting ``name``: ``BUSAPP_<NAME>``."""
    _field(name)
    return PREFIX + name.upper()


@functools.lru_cache(maxsize=256)
def _read(name: str, raw: str | None) -> Any:
    field = _field(name)
    if raw is None or raw == "":
        return field.default
    parse = field.metadata["parse"]
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"${env_name(name)}={raw!r} is not a valid {_KINDS[parse]}: {exc}",
                          setting=env_name(name)) from None


def default(name: str) -> Any:
    """The default of setting ``name`` (what it is when its variable is unset)."""
    return _field(name).default


def get(name: str) -> Any:
    """The current value of setting ``name`` (its variable, else its default).

    Raises:
        ConfigError: the variable holds a value of the wrong kind.
        KeyError: no such setting.
    """
    return _read(name, os.environ.get(PREFIX + name.upper()))


def describe() -> list[dict[str, str]]:
    """One row per setting: variable, kind, default and description (for the docs)."""
    rows = []
    for field in attrs.fields(Settings):
        default = field.default
        shown = "unset" if default is None or default == () else str(default)
        rows.append({"variable": env_name(field.name), "kind": _KINDS[field.metadata["parse"]],
                     "default": shown, "description": field.metadata["doc"]})
    return rows
