"""Storage models: Commissaire's records as attrs classes, and the decorator to declare your own.

A model is an attrs class declared with :func:`model`, registered by its class
name so the storage service and storage events can name it on the wire::

    from busapp.models import Model, model, field, one_of

    @model(primary_key="name")
    class Widget(Model):
        name: str
        colour: str = field(default="red", rule=one_of("red", "blue"))

    w = Widget.new(name="w1")          # from keywords (JSON-shaped values)
    w.to_dict()                        # {'name': 'w1', 'colour': 'red'}
    Widget.from_dict({"name": 3})      # ValidationError: Widget.name: expected a string ...

Values are checked when an instance is built: types through busapp's one
cattrs converter (strict JSON scalars), then each field's ``rule``. An
``int`` field holds a signed 64-bit integer (what PostgreSQL's BIGINT,
SQLite's INTEGER and most JSON readers keep exactly); a larger value is a
:class:`ValidationError`. Unknown
keys are refused (Commissaire silently dropped them, hiding typos). A list
model (``Hosts``) wraps one list field and serialises to a JSON array, as
Commissaire's did.
"""

from __future__ import annotations

import datetime
from typing import ClassVar

from busapp.core.model import (
    DATE_FORMAT,
    ListModel,
    Model,
    SecretModel,
    date_format,
    field,
    formatted_dt,
    get_model_class,
    list_model_for,
    model,
    model_names,
    non_empty,
    one_of,
)
from busapp.errors import UnknownModelError, ValidationError

__all__ = [
    "CLUSTER_STATUSES", "DATE_FORMAT", "HOST_STATUSES", "OPERATION_STATUSES", "Cluster",
    "ClusterDeploy", "ClusterRestart", "ClusterUpgrade", "Clusters",
    "ContainerManagerConfig", "ContainerManagerConfigs", "Host", "HostCreds", "HostStatus",
    "Hosts", "ListModel", "Model", "Network", "Networks", "SecretModel", "UnknownModelError",
    "ValidationError", "WatcherRecord", "date_format", "field", "formatted_dt", "get_model_class",
    "list_model_for", "model", "model_names", "non_empty", "one_of",
]


HOST_STATUSES = ("investigating", "bootstrapping", "disassociated", "active", "failed")
CLUSTER_STATUSES = ("ok", "degraded", "failed")
OPERATION_STATUSES = ("in_process", "finished", "failed")


# -- Commissaire's models ---------------------------------------------------------------

def _zero_hosts() -> dict[str, int]:
    return {"total": 0, "available": 0, "unavailable": 0}


@model(primary_key="address")
class Host(Model):
    """A managed host. ``source`` names a store handler in Commissaire."""

    address: str
    status: str = ""
    os: str = ""
    cpus: int = 0
    memory: int = 0
    space: int = 0
    last_check: str = ""
    source: str = ""


@model(primary_key="address", hidden=("ssh_priv_key",))
class HostCreds(SecretModel):
    """SSH credentials of a host; ``ssh_priv_key`` is the base64 of the key (never in events)."""

    _key_container: ClassVar[str | None] = "hosts"
    address: str
    ssh_priv_key: str = ""
    remote_user: str = "root"


@model
class HostStatus(Model):
    """A host's status report (not stored: it has no primary key)."""

    type: str = ""
    host: dict = field(factory=dict)
    container_manager: dict = field(factory=dict)


@model(primary_key="name", hidden=("hostset",))
class Cluster(Model):
    """A cluster; ``hostset`` (member addresses) is hidden, ``hosts`` is computed, never stored."""

    name: str
    status: str = ""
    network: str = "default"
    hostset: list[str] = field(factory=list)
    container_manager: str = ""
    hosts: dict = field(factory=_zero_hosts, transient=True)


@model(primary_key="name")
class ClusterDeploy(Model):
    """A deploy operation on a cluster."""

    name: str
    status: str = ""
    version: str = field(default="", save_rule=non_empty)
    deployed: list[str] = field(factory=list)
    in_process: list[str] = field(factory=list)
    started_at: str = ""
    finished_at: str = ""


@model(primary_key="name")
class ClusterRestart(Model):
    """A restart operation on a cluster."""

    name: str
    status: str = ""
    restarted: list[str] = field(factory=list)
    in_process: list[str] = field(factory=list)
    started_at: str = ""
    finished_at: str = ""


@model(primary_key="name")
class ClusterUpgrade(Model):
    """An upgrade operation on a cluster."""

    name: str
    status: str = ""
    upgraded: list[str] = field(factory=list)
    in_process: list[str] = field(factory=list)
    started_at: str = ""
    finished_at: str = ""


@model(primary_key="name")
class Network(Model):
    """A cluster network."""

    name: str
    type: str = field(default="flannel_etcd", rule=one_of("flannel_etcd", "flannel_server"))
    options: dict = field(factory=dict)


@model(primary_key="name")
class ContainerManagerConfig(Model):
    """How to reach a container manager."""

    name: str
    type: str = field(default="openshift", rule=one_of("openshift", "trivial"))
    options: dict = field(factory=dict)


@model
class WatcherRecord(Model):
    """An item of the watcher's ring (not stored)."""

    address: str = ""
    last_check: str = field(default=datetime.datetime.max.isoformat(), rule=date_format())


@model
class Hosts(ListModel):
    """A list of Host; a JSON array on the wire."""

    hosts: list[Host] = field(factory=list)


@model
class Clusters(ListModel):
    """A list of Cluster; a JSON array on the wire."""

    clusters: list[Cluster] = field(factory=list)


@model
class Networks(ListModel):
    """A list of Network; a JSON array on the wire."""

    networks: list[Network] = field(factory=list)


@model
class ContainerManagerConfigs(ListModel):
    """A list of ContainerManagerConfig; a JSON array on the wire."""

    container_managers: list[ContainerManagerConfig] = field(factory=list)
