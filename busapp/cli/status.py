"""``busapp status`` and ``busapp probe``: every live worker answers for itself."""

from __future__ import annotations

import json
import socket
from typing import Any

import click

from busapp import names
from busapp.cli.options import (
    NoReply,
    broker_option,
    exchange_option,
    key_option,
    running_embedded,
    table,
)
from busapp.entrypoints.control import FIELDS
from busapp.errors import BrokerUnavailable
from busapp.log import configure_logging
from busapp.ops import status as control


# -- status, probe ---------------------------------------------------------------


class ProbeFailed(click.ClickException):
    """No worker answered the probe (or the broker could not be reached)."""

    exit_code = 1


def _status_options(default_timeout: float) -> Any:
    def apply(func: Any) -> Any:
        func = click.option("--local", is_flag=True,
                            help="Only workers on this host (a container's own).")(func)
        func = click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True),
                            default=default_timeout, show_default=True, metavar="SECONDS",
                            help="How long to wait for answers.")(func)
        return broker_option(exchange_option(key_option(func)))

    return apply


def _gather(name: str | None, broker: str | None, exchange: str | None, timeout: float,
            local: bool, first: bool, key: Any) -> list[dict]:
    return control.gather(broker or running_embedded(), names.default_exchange(exchange), name,
                          timeout=timeout, first=first,
                          host=socket.gethostname() if local else None, key=key)


@click.command()
@click.argument("name", required=False)
@_status_options(1.0)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per worker.")
def status(name: str | None, broker: str | None, exchange: str | None, key: Any, timeout: float,
           local: bool, as_json: bool) -> None:
    """List every live worker (of service NAME, or all): each answers for itself.

    Workers of a service with a keyring answer only a signed request (--key or
    $BUSAPP_KEY); with a key, answers not signed with it are left out.

    \b
      busapp status
      busapp status simple --json
      BUSAPP_KEY=ops:9a1e... busapp status billing
    """
    configure_logging("warning")
    try:
        workers = _gather(name, broker, exchange, timeout, local, first=False, key=key)
    except BrokerUnavailable as exc:
        raise NoReply(str(exc)) from None
    if as_json:
        click.echo(json.dumps(workers, indent=2))
    elif workers:
        rows = [tuple(str(w.get(f, "")) for f in FIELDS) for w in workers]
        click.echo("\n".join(table(tuple(f.upper().replace("_", " ") for f in FIELDS), rows)))
        timers = timer_rows(workers)
        if timers:
            click.echo("")
            click.echo("\n".join(table(("SERVICE", "TIMER", "SCHEDULE", "LAST RUN", "OUTCOME",
                                         "NEXT RUN", "RUN BY"), timers)))
    else:
        hint = "" if key else " (a service with a keyring answers only signed requests: --key)"
        click.echo(f"no worker{' of ' + repr(name) if name else ''} answered within "
                   f"{timeout:g}s{hint}", err=True)


def timer_rows(workers: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per timer of the services that answered: its last run (by any worker), and
    its next one with the worker that holds the timers (``-`` when none does now)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for worker in workers:
        for name, timer in (worker.get("timers") or {}).items():
            row = merged.setdefault((str(worker.get("service")), name), {
                "schedule": timer.get("schedule"), "last": None, "outcome": None,
                "next": timer.get("next"), "by": "-"})
            if timer.get("last") and (row["last"] is None or timer["last"] > row["last"]):
                row["last"], row["outcome"] = timer["last"], timer.get("outcome")
            if timer.get("holder"):
                row["next"] = timer.get("next")
                row["by"] = f"{worker.get('host')}:{worker.get('pid')}"
    return [(service, name, str(r["schedule"]), r["last"] or "-", r["outcome"] or "-",
             r["next"] or "-", r["by"]) for (service, name), r in sorted(merged.items())]


@click.command()
@click.argument("name")
@_status_options(5.0)
def probe(name: str, broker: str | None, exchange: str | None, key: Any, timeout: float,
          local: bool) -> None:
    """Exit 0 if a worker of service NAME answers in time, else 1 (a liveness/readiness probe).

    A service with a keyring answers only a signed probe (--key or $BUSAPP_KEY).

    \b
      busapp probe simple --local --timeout 3
    """
    configure_logging("warning")
    try:
        workers = _gather(name, broker, exchange, timeout, local, first=True, key=key)
    except (BrokerUnavailable, NoReply) as exc:
        raise ProbeFailed(str(exc.message if isinstance(exc, NoReply) else exc)) from None
    if not workers:
        where = " on this host" if local else ""
        hint = "" if key else " (a service with a keyring answers only signed probes: --key)"
        raise ProbeFailed(f"no worker of {name!r}{where} answered within {timeout:g}s{hint}")
    click.echo(f"{name}: worker {workers[0].get('pid')} on {workers[0].get('host')} answered")
