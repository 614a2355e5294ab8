"""``busapp shell``: a Python shell connected to the bus, as ``flask shell`` and ``celery shell``.

Its namespace holds ``bus`` (a :class:`~busapp.Client` on the broker), ``storage`` (a
:class:`~busapp.storage.client.StorageClient` over it), every model of
:mod:`busapp.models`, and, given ``MODULE[:APP]``, the module's Apps and models (``app``:
the one named, or the module's only App). IPython is used when it is installed.
"""

from __future__ import annotations

import code
import importlib
import inspect
import sys
from types import ModuleType
from typing import Any

import click

import busapp
from busapp import models
from busapp.app import App
from busapp.cli.locate import import_module, load_target
from busapp.cli.options import broker_option, exchange_option, running_embedded
from busapp.client.sync import Client
from busapp.log import configure_logging
from busapp.storage.client import StorageClient
from busapp.transport import mask_url


@click.command()
@click.argument("target", metavar="MODULE[:APP]", required=False)
@broker_option
@exchange_option
@click.option("--plain", is_flag=True,
              help="Python's own shell, even when IPython is installed.")
def shell(target: str | None, broker: str | None, exchange: str | None, plain: bool) -> None:
    """A Python shell with `bus` and `storage` connected, and the models imported.

    With MODULE[:APP], the module's Apps and models are there too (`app`: the
    App named, or the module's only App), and `bus` uses the App's exchange.

    \b
      busapp shell examples/simpleservice.py
      >>> bus.call("simple.add", 1, 2)
      3
      >>> storage.list(Host)
    """
    configure_logging("warning")
    namespace: dict[str, Any] = dict(_models(models))
    if target:
        namespace.update(_from_module(target))
    app = namespace.get("app")
    if exchange is None and isinstance(app, App):
        exchange = app.exchange
    url = broker or running_embedded()
    with Client(url, exchange) as bus:
        namespace.update(bus=bus, storage=StorageClient(bus))
        _interact(namespace, _banner(namespace, url, bus.exchange_name), plain)


def _models(module: ModuleType) -> dict[str, type]:
    """The model classes ``module`` holds, by name (declared there or imported into it)."""
    return {name: obj for name, obj in vars(module).items()
            if inspect.isclass(obj) and issubclass(obj, models.Model)
            and getattr(obj, "__attrs_attrs__", None) is not None}


def _from_module(target: str) -> dict[str, Any]:
    """The Apps and models of ``target``'s module, and ``app`` (see the module docstring)."""
    module = import_module(target.partition(":")[0])
    found: dict[str, Any] = {**_models(module),
                             **{n: v for n, v in vars(module).items() if isinstance(v, App)}}
    apps = {id(v) for v in found.values() if isinstance(v, App)}
    if ":" in target or len(apps) == 1:
        loaded = load_target(target)
        found["app"] = loaded.app if loaded.app is not None else loaded.service_class
    return found


def _banner(namespace: dict[str, Any], url: str, exchange: str) -> str:
    names = sorted(n for n, v in namespace.items() if inspect.isclass(v)
                   and issubclass(v, models.Model))
    lines = [f"busapp {busapp.__version__} shell on {mask_url(url)}, exchange {exchange!r}",
             "  bus      a Client: bus.call(\"service.method\", ...), bus.notify(...)",
             "  storage  a StorageClient: storage.get(Host.new(address=...)), "
             "storage.list(Host)"]
    apps = sorted(n for n, v in namespace.items() if isinstance(v, App) and n != "app")
    if "app" in namespace:
        lines.append(f"  app      {namespace['app']!r}")
    if apps:
        lines.append(f"  Apps     {', '.join(apps)}")
    lines.append(f"  models   {', '.join(names)}")
    return "\n".join(lines)


def _interact(namespace: dict[str, Any], banner: str, plain: bool) -> None:
    """IPython when it is installed (and not ``plain``), else Python's own shell."""
    if not plain:
        try:
            ipython = importlib.import_module("IPython")
        except ImportError:
            pass
        else:
            click.echo(banner, err=True)
            ipython.start_ipython(argv=["--no-banner"], user_ns=namespace)
            return
    if sys.stdin.isatty():
        sys.ps1, sys.ps2 = ">>> ", "... "
        code.interact(banner=banner, local=namespace, exitmsg="")
    else:  # lines piped in (a script, a test): just their output
        sys.ps1 = sys.ps2 = ""
        _Piped(namespace).interact(banner=banner, exitmsg="")


class _Piped(code.InteractiveConsole):
    """Python's shell fed by a pipe: no prompts, and no newline after the last line."""

    def write(self, data: str) -> None:
        if data != "\n":  # what interact() writes at the end of input, for a terminal
            super().write(data)
