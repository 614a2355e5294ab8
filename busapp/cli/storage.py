"""``busapp storage``: run the storage service."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import structlog

from busapp import config
from busapp.cli.locate import Target, import_module
from busapp.cli.options import (
    STORE_ENV,
    Unusable,
    broker_option,
    exchange_option,
    keyring_option,
    load_keyring,
    log_options,
    resolve_broker,
    usable,
)
from busapp.cli.run import serve
from busapp.log import configure_logging
from busapp.storage.backends import open_backend
from busapp.storage.service import make_app
from busapp.transport import mask_url

log = structlog.get_logger("busapp.cli")

MODELS_ENV = config.env_name("storage_models")


# -- storage -------------------------------------------------------------------


@click.command()
@click.option("--store", metavar="URL", envvar=STORE_ENV, show_envvar=True,
              help="Storage backend: sqlite:///PATH (default ./.busapp/storage.sqlite3), "
                   "memory://, postgresql://..., redis://...")
@click.option("-w", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes.")
@broker_option
@exchange_option
@click.option("--queue", metavar="NAME",
              help="Queue name. Default: storage on the commissaire exchange, "
                   "<exchange>.storage on another.")
@keyring_option
@click.option("--allow", "allow", multiple=True, metavar="TYPE=IDS",
              help="Only these key ids may read and write model TYPE, e.g. "
                   "HostCreds=investigator,ops (repeatable; needs --keyring).")
@click.option("--allow-read", "allow_read", multiple=True, metavar="TYPE=IDS",
              help="These key ids may also read model TYPE (repeatable; needs --keyring).")
@log_options
def storage(store: str | None, workers: int, broker: str | None, exchange: str | None,
            queue: str | None, keyring: str | None, allow: tuple[str, ...],
            allow_read: tuple[str, ...], log_format: str | None, log_level: str) -> None:
    """Run the storage service (routing keys storage.*) until SIGTERM or SIGINT.

    \b
      busapp storage --keyring keys.txt --allow HostCreds=investigator,ops
    """
    # Not cache=True: a frozen logger outlives any later configure (tests run commands
    # in-process), and the per-call line is cheap enough without it.
    configure_logging(log_level, log_format)
    # Check the URL (scheme, options, driver installed) now; workers open it at the first call.
    usable(open_backend, store)
    models = _import_models()
    keys = load_keyring(keyring)
    app = usable(lambda: make_app(store, queue=queue, keyring=keys, models=models,
                                   allow=_access_rules(allow, "--allow"),
                                   allow_read=_access_rules(allow_read, "--allow-read")))
    url = resolve_broker(broker)
    log.info("starting storage service", store=mask_url(store) if store else "default",
             workers=workers, broker=mask_url(url), pid=os.getpid())
    target = Target("storage", sys.modules[make_app.__module__], app, app.service_class,
                    Path.cwd())
    serve(target, url, workers=workers, concurrency=None, exchange=exchange, graceful_timeout=None)


def _import_models() -> list[str]:
    """Import the modules ``$BUSAPP_STORAGE_MODELS`` names, from the current directory too (as
    ``busapp run`` finds its module); return their dotted names. A missing one is an error
    of one line (exit 2)."""
    names = []
    for spec in config.get("storage_models"):
        try:
            names.append(import_module(spec).__name__)
        except click.UsageError as exc:  # one line: no usage text for an environment setting
            raise Unusable(f"${MODELS_ENV}: {exc.message}") from None
    return names


def _access_rules(rules: tuple[str, ...], option: str) -> dict[str, list[str]]:
    """``("HostCreds=a,b", ...)`` -> ``{"HostCreds": ["a", "b"]}`` (a usage error otherwise)."""
    table: dict[str, list[str]] = {}
    for rule in rules:
        type_name, sep, ids = rule.partition("=")
        names = [i.strip() for i in ids.split(",") if i.strip()]
        if not sep or not type_name.strip() or not names:
            raise click.BadParameter(f"{rule!r}: want TYPE=ID[,ID...], e.g. HostCreds=ops",
                                     param_hint=option)
        table.setdefault(type_name.strip(), []).extend(names)
    return table
