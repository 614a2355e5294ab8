"""Storage events and StorageClient without a broker: wire helpers, NotifyCallback,
the service in memory."""

from __future__ import annotations

import json

import pytest

from busapp.errors import InvalidParams, StorageLookupError
from busapp.models import Cluster, ClusterDeploy, Host, HostCreds, Hosts, ValidationError
from busapp.storage.client import NotifyCallback, StorageClient, get_uniform_model_type
from busapp.storage.events import binding_key, decode_event, encode_event, routing_key
from busapp.storage.service import make_app
from busapp.testing import TestClient


def test_routing_and_binding_keys():
    """Events go to notify.storage.<Class>.<event>; bindings use * for any."""
    assert routing_key(Host, "created") == "notify.storage.Host.created"
    assert routing_key(Host.new(address="a"), "deleted") == "notify.storage.Host.deleted"
    assert binding_key() == "notify.storage.*.*"
    assert binding_key(Cluster, None) == "notify.storage.Cluster.*"
    assert binding_key(None, "updated") == "notify.storage.*.updated"
    with pytest.raises(ValueError, match="created"):
        routing_key(Host, "renamed")


def test_event_body_round_trip_leaves_hidden_fields_out():
    """encode_event writes Commissaire's body without hidden fields; decode_event reads it back."""
    body = encode_event("updated", Cluster.new(name="c", hostset=["10.0.0.1"]))
    assert body == {"event": "updated", "class": "Cluster",
                    "model": {"name": "c", "status": "", "network": "default",
                              "container_manager": ""}}
    event, model = decode_event(json.dumps(body).encode())
    assert event == "updated" and model == Cluster.new(name="c")
    creds = HostCreds.new(address="a", ssh_priv_key="S")
    assert "ssh_priv_key" not in encode_event("created", creds)["model"]


@pytest.mark.parametrize("body", [
    b"not json at all",
    {"event": "created", "class": "Host"},
    {"event": "exploded", "class": "Host", "model": {"address": "a"}},
    {"event": "created", "class": "Nope", "model": {"address": "a"}},
    {"event": "created", "class": "Host", "model": {"address": "a", "cpus": "x"}},
    ["created"],
])
def test_decode_event_rejects_bad_bodies(body):
    """A body that is not a valid storage event raises ValueError."""
    with pytest.raises(ValueError):
        decode_event(body)


def test_notify_callback_decodes_for_a_method():
    """@NotifyCallback on a method turns (body, message) into (self, event, model, message)."""
    class Service:
        def __init__(self):
            self.seen = []

        @NotifyCallback
        def host_cb(self, event, model, message):
            self.seen.append((event, model.address, message))

    service = Service()
    assert service.host_cb.__name__ == "host_cb"
    service.host_cb(encode_event("created", Host.new(address="a")), "msg")
    assert service.seen == [("created", "a", "msg")]


def test_register_callback_needs_a_subscribing_bus():
    """register_callback on a plain Client-like bus says to use a service or on_storage_event."""
    with pytest.raises(TypeError, match="on_storage_event"):
        StorageClient(object()).register_callback(lambda body, message: None, Host)


def test_uniform_model_type():
    """get_many/save_many refuse a mix of model classes."""
    assert get_uniform_model_type([Host.new(address="a")]) is Host
    with pytest.raises(TypeError, match="one Model class"):
        get_uniform_model_type([Host.new(address="a"), Cluster.new(name="c")])


@pytest.fixture
def client():
    """The storage service on memory://, served in memory (no broker)."""
    with TestClient(make_app("memory://"), storage=False) as test_client:
        yield test_client


def test_events_published_for_changes_only(client):
    """created, updated and deleted are published after the write;
    an unchanged save publishes nothing."""
    storage = StorageClient(client)
    storage.save(Host.new(address="a"))
    storage.save(Host.new(address="a"))
    storage.save(Host.new(address="a", os="fedora"))
    storage.delete(Host.new(address="a"))
    events = [(b["event"], b["model"]["address"])
              for b in client.published("notify.storage.Host.*")]
    assert events == [("created", "a"), ("updated", "a"), ("deleted", "a")]


def test_list_takes_list_or_item_name(client):
    """storage.list takes 'Hosts' (as Commissaire sent it) or 'Host';
    save refuses a list model name."""
    StorageClient(client).save(Host.new(address="a"))
    assert client.call("storage.list", model_type_name="Hosts") == client.call(
        "storage.list", model_type_name="Host") == [Host.new(address="a").to_dict()]
    assert StorageClient(client).list(Hosts).hosts == [Host.new(address="a")]
    with pytest.raises(InvalidParams, match="list model"):
        client.call("storage.save", model_type_name="Hosts", model_json_data=[{"address": "a"}])


def test_delete_of_a_list_names_the_missing(client):
    """Deleting a list removes what exists and raises StorageLookupError naming the rest."""
    storage = StorageClient(client)
    storage.save(Host.new(address="a"))
    with pytest.raises(StorageLookupError, match="'b'"):
        storage.delete_many([Host.new(address="a"), Host.new(address="b")])
    assert storage.list(Host) == []


def test_client_validates_before_sending(client):
    """StorageClient.save runs save rules before anything is sent."""
    with pytest.raises(ValidationError, match="version"):
        StorageClient(client).save(ClusterDeploy.new(name="c"))
    assert client.published() == []


def test_user_models_from_named_modules(monkeypatch, tmp_path, unique):
    """make_app imports the model modules named in $BUSAPP_STORAGE_MODELS,
    so their types are storable."""
    (tmp_path / f"models_{unique}.py").write_text(
        "from busapp.models import Model, model\n"
        "@model(primary_key='name')\n"
        f"class Gadget{unique}(Model):\n"
        "    name: str\n"
        "    size: int = 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BUSAPP_STORAGE_MODELS", f"models_{unique}")
    with TestClient(make_app("memory://"), storage=False) as client:
        saved = client.call("storage.save", model_type_name=f"Gadget{unique}",
                            model_json_data={"name": "g1"})
    assert saved == {"name": "g1", "size": 0}
    with pytest.raises(ImportError, match="no_such_models_module"):
        make_app("memory://", models=["no_such_models_module"])
