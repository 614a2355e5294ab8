"""The ``busapp`` command: run, call, routes, storage, status, probe, shell.

Exit codes: 0 success; 1 an error reply or a failed run; 2 a usage error
(including an app that cannot be found, a URL with an unknown scheme, or a
missing optional dependency), a timeout, or no broker.

Each command lives in a module of its own and is imported only when it runs, so
``busapp --help`` and a bad URL answer at once.

Example::

    busapp run examples/simpleservice.py:app --workers 3
    busapp call simple.add 1 2
"""

from __future__ import annotations

import importlib

import click

import busapp

#: ``{command: "module:function"}``: each command's home.
COMMANDS = {
    "run": "busapp.cli.run:run", "call": "busapp.cli.call:call",
    "routes": "busapp.cli.routes:routes", "storage": "busapp.cli.storage:storage",
    "status": "busapp.cli.status:status", "probe": "busapp.cli.status:probe",
    "shell": "busapp.cli.shell:shell",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, name = target.split(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(busapp.__version__, "-V", "--version", prog_name="busapp")
def cli() -> None:
    """busapp: JSON-RPC services on a message bus (Redis, RabbitMQ, or an embedded Redis).

    \b
    Start a service, then call it from a second terminal:
      busapp run examples/simpleservice.py:app --workers 3
      busapp call simple.add 1 2
    """


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``busapp`` console script and ``python -m busapp``."""
    cli.main(args=argv, prog_name="busapp")

