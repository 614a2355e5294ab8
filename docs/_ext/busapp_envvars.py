"""The ``busapp-envvars`` directive: tables of the environment variables busapp reads.

The ``settings`` table is made from :func:`busapp.config.describe`, so it lists every
``BUSAPP_*`` variable busapp reads, as :class:`busapp.config.Settings` declares it. The
other groups are written here: variables busapp reads that are not its own settings, and
those of busapp's test suite (``tests/test_docs.py`` checks the tests read them).

Usage in a page::

    ```{busapp-envvars} settings
    ```
"""

from __future__ import annotations

from typing import NamedTuple

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


class Variable(NamedTuple):
    """One environment variable that is not a busapp setting."""

    name: str
    default: str
    meaning: str


#: Read by busapp, not its own settings.
OTHER: tuple[Variable, ...] = (
    Variable("PROMETHEUS_MULTIPROC_DIR", "a temporary directory",
             "prometheus_client's multiprocess directory for `busapp run --metrics-port`; one "
             "you set is used and kept."),
)

#: Read by busapp's own test suite.
TESTS: tuple[Variable, ...] = (
    Variable("BUSAPP_TEST_REDIS_URL", "`redis://127.0.0.1:6379/0`",
             "The Redis server the tests use."),
    Variable("BUSAPP_TEST_AMQP_URL", "`amqp://guest:guest@127.0.0.1:5672//`",
             "The RabbitMQ server the tests use."),
    Variable("BUSAPP_TEST_PG_URL", "`postgresql://postgres@127.0.0.1:5432/test`",
             "The PostgreSQL database the tests use."),
    Variable("BUSAPP_REQUIRE_SERVICES", "unset",
             "`1`: a server that is down fails its tests instead of skipping them."),
    Variable("BUSAPP_CHAOS_SECONDS", "`10`", "How long the kill-a-worker soak test runs."),
)


def rows(group: str) -> list[tuple[str, ...]]:
    """``(variable, default, meaning)`` rows of ``group``: settings, other or tests."""
    if group == "settings":
        from busapp import config

        return [(f"`{row['variable']}`", f"`{row['default']}` ({row['kind']})"
                 if row["default"] != "unset" else f"unset ({row['kind']})", row["description"])
                for row in config.describe()]
    table = {"other": OTHER, "tests": TESTS}[group]
    return [(f"`{v.name}`", v.default, v.meaning) for v in table]


def _table(found: list[tuple[str, ...]]) -> list[str]:
    """A MyST list-table of ``found`` (the directive is used in Markdown pages)."""
    lines = ["```{list-table}", ":header-rows: 1", ":widths: 30 25 45", "",
             "* - Variable", "  - Default", "  - Meaning"]
    for name, default, meaning in found:
        lines += [f"* - {name}", f"  - {default}", f"  - {meaning}"]
    return [*lines, "```"]


class EnvVarsDirective(SphinxDirective):
    """Renders the table of one group of variables."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        try:
            found = rows(self.arguments[0])
        except KeyError:
            raise self.error(f"no group {self.arguments[0]!r}: settings, other or tests") from None
        container = nodes.container()
        self.state.nested_parse(StringList(_table(found), source="busapp_envvars"), 0, container)
        return container.children


def setup(app: Sphinx) -> dict[str, bool]:
    app.add_directive("busapp-envvars", EnvVarsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
