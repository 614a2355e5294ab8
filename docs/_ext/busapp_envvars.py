"""The ``busapp-envvars`` directive: the table of environment variables busapp reads.

The rows come from :data:`VARIABLES`, one :class:`Variable` per name, written from what the
code reads (``os.environ`` lookups under ``busapp/``); ``tests/test_docs.py`` checks that
every ``BUSAPP_*`` name the package mentions is listed here and the other way round. When
busapp gains one settings object listing its variables, :func:`variables` reads that
object instead and this list goes.

Usage in a page (``group`` picks the rows)::

    ```{busapp-envvars} user
    ```
"""

from __future__ import annotations

from typing import NamedTuple

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


class Variable(NamedTuple):
    """One environment variable: its name, default, who reads it, and what it does."""

    name: str
    default: str
    read_by: str
    meaning: str
    group: str = "user"


VARIABLES: tuple[Variable, ...] = (
    Variable("BUSAPP_BROKER_URL", "the embedded broker in `./.busapp/`",
             "every command (`--broker`), `Client`, `AsyncClient`, `App.run`",
             "Broker URL: `redis://`, `rediss://`, `redis+socket://`, `sentinel://`, "
             "`amqp://`, `amqps://`, `pyamqp://`, `librabbitmq://` or `memory://`; "
             "several RabbitMQ nodes separated by `;`."),
    Variable("BUSAPP_EXCHANGE", "`commissaire`",
             "every command (`--exchange`), `App`, `Client`, `AsyncClient`",
             "The topic exchange requests and events are published on. On another exchange "
             "than `commissaire` a queue's default name is `<exchange>.<service>`."),
    Variable("BUSAPP_STORE_URL", "`sqlite:///./.busapp/storage.sqlite3`",
             "`busapp storage` (`--store`)",
             "The storage service's backend: `sqlite:///PATH`, `memory://`, "
             "`postgresql://...` (`busapp[postgres]`), `redis://...` or `sentinel://...`."),
    Variable("BUSAPP_STORAGE_MODELS", "none", "`busapp storage`",
             "Comma-separated modules the storage service imports, declaring your own models."),
    Variable("BUSAPP_QUEUE_TYPE", "`classic`", "`App`, `busapp run`, `busapp storage`",
             "`quorum` declares the RPC, storage-event and dead-letter queues as RabbitMQ "
             "quorum queues (for a cluster); an `App(queue_type=...)` wins."),
    Variable("BUSAPP_KEY", "unset (unsigned calls)", "`Client`, `AsyncClient`, `busapp call`",
             "`ID:SECRET`: the key calls are signed with."),
    Variable("BUSAPP_KEYRING", "unset (no checks)", "`busapp run`, `busapp storage` "
             "(`--keyring`)",
             "A keyring file (`id:secret` lines): callers must sign with one of its keys."),
    Variable("BUSAPP_DELIVERY_KEY", "a random key in a file private to the user",
             "workers",
             "The key signing the redelivery count carried in each message. Workers on "
             "several hosts sharing queues must all have the same value."),
    Variable("BUSAPP_REPLY_TO", "unset", "workers",
             "Comma-separated glob patterns of further queue names a service may reply to "
             "(besides `busapp.reply.*` and Commissaire's `response-<uuid>`)."),
    Variable("BUSAPP_EMBEDDED_IDLE", "`30`", "the embedded broker",
             "Seconds the embedded broker lives with no client connected."),
    Variable("BUSAPP_VISIBILITY_TIMEOUT", "`60`", "Redis transports",
             "Seconds before a message left unacknowledged by a worker that died outside "
             "`busapp run` is delivered again."),
    Variable("BUSAPP_BINDING_CACHE_TTL", "`0` (off)", "Redis transports",
             "Seconds to cache the exchange's bindings when publishing requests; a queue bound "
             "meanwhile can miss requests."),
    Variable("BUSAPP_REPLICA_WAIT_MS", "`500`", "`sentinel://` transports",
             "Milliseconds each publish waits for the master's replicas (`WAIT`); `0` "
             "turns it off."),
    Variable("BUSAPP_CONFIRM_PUBLISH", "on for a URL listing several nodes, else off",
             "RabbitMQ transports",
             "`1` makes every publish wait for the broker's confirm, `0` never."),
    Variable("BUSAPP_EVENT_QUEUE_EXPIRES", "`604800` (a week)", "RabbitMQ, storage events",
             "Seconds a storage-event queue outlives its last consumer; `0` keeps it forever."),
    Variable("PROMETHEUS_MULTIPROC_DIR", "a temporary directory", "`busapp run --metrics-port`",
             "prometheus_client's multiprocess directory; one you set is used and kept."),
    Variable("BUSAPP_UNACKED_OWNER", "set by `busapp run`", "worker processes",
             "Internal: names the worker owning its unacknowledged Redis messages, so the "
             "manager can requeue them when the worker dies. Do not set it.", "internal"),
    Variable("BUSAPP_TEST_REDIS_URL", "`redis://127.0.0.1:6379/0`", "busapp's test suite",
             "The Redis server the tests use.", "tests"),
    Variable("BUSAPP_TEST_AMQP_URL", "`amqp://guest:guest@127.0.0.1:5672//`",
             "busapp's test suite", "The RabbitMQ server the tests use.", "tests"),
    Variable("BUSAPP_TEST_PG_URL", "`postgresql://postgres@127.0.0.1:5432/test`",
             "busapp's test suite", "The PostgreSQL database the tests use.", "tests"),
    Variable("BUSAPP_REQUIRE_SERVICES", "unset", "busapp's test suite",
             "`1`: a server that is down fails its tests instead of skipping them.", "tests"),
    Variable("BUSAPP_CHAOS_SECONDS", "`10`", "busapp's test suite",
             "How long the kill-a-worker soak test runs.", "tests"),
)


def variables(group: str) -> list[Variable]:
    """The variables of ``group`` (``user``, ``internal`` or ``tests``), in table order."""
    return [v for v in VARIABLES if v.group == group]


def _table(rows: list[Variable]) -> list[str]:
    """A MyST list-table of ``rows`` (the directive is used in Markdown pages)."""
    lines = ["```{list-table}", ":header-rows: 1", ":widths: 25 20 20 35", "",
             "* - Variable", "  - Default", "  - Read by", "  - Meaning"]
    for v in rows:
        lines += [f"* - `{v.name}`", f"  - {v.default}", f"  - {v.read_by}", f"  - {v.meaning}"]
    return [*lines, "```"]


class EnvVarsDirective(SphinxDirective):
    """Renders the table of one group of :data:`VARIABLES`."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        rows = variables(self.arguments[0])
        if not rows:
            raise self.error(f"no environment variables in group {self.arguments[0]!r}")
        container = nodes.container()
        self.state.nested_parse(StringList(_table(rows), source="busapp_envvars"), 0, container)
        return container.children


def setup(app: Sphinx) -> dict[str, bool]:
    app.add_directive("busapp-envvars", EnvVarsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
